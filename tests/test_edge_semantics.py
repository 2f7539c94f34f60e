"""Semantics no other test pinned (found by mutation testing: each could be broken with the
suite passing). Real data throughout: the embedded models and test images; every expected
value is computed here independently, not copied from a run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, preprocess
from sketchmine.errors import SketchmineError
from sketchmine.model.models import load_model
from sketchmine.stats.topk import RunningTopK
from tests.helpers import StopAfter, all_activations, per_class_subset


@pytest.fixture(scope="module")
def subset(demo_test_set):
    return per_class_subset(demo_test_set, 30, "0:300")


def _stopped(model, ds, out, n=30, layer="features.0"):
    """A run of `ds` interrupted after `n` images (a crash stand-in)."""
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(model, ds, out=out, layers=[layer], batch_size=10, flush_every=1, progress=StopAfter(n))


# ---- resume: the fingerprints cover labels and buffers ---------------------------------------
def test_resume_with_other_labels_is_refused(demo_model, subset, tmp_path):
    """The same images under other labels are another dataset, for arrays and torch Datasets:
    resuming would mix two labelings in one run's class statistics."""
    lab = subset.labels()
    swapped = np.where(lab == 0, 1, np.where(lab == 1, 0, lab))
    relabelled = ArrayDataset(subset.images, swapped, subset.class_names, subset.preprocessing, subset.describe())
    _stopped(demo_model.module, subset, tmp_path / "a.zarr")
    with pytest.raises(SketchmineError, match="other settings: dataset"):
        sketchmine.mine(demo_model.module, relabelled, out=tmp_path / "a.zarr", layers=["features.0"], batch_size=10)

    class Plain(torch.utils.data.Dataset):
        def __init__(self, labels):
            self.labels = labels

        def __len__(self):
            return len(subset)

        def __getitem__(self, i):
            return subset[i][1], int(self.labels[i])

    _stopped(demo_model.module, Plain(lab), tmp_path / "b.zarr")
    with pytest.raises(SketchmineError, match="other settings: dataset"):
        sketchmine.mine(demo_model.module, Plain(swapped), out=tmp_path / "b.zarr", layers=["features.0"],
                        batch_size=10)


def test_resume_with_other_batchnorm_statistics_is_refused(demo_test_set, tmp_path):
    """BatchNorm's running statistics are part of the model: re-calibrated buffers (no parameter
    changed) give other activations, so resuming with them is refused."""
    model = load_model("demo-resnet")
    ds = per_class_subset(demo_test_set, 30, "0:300")
    _stopped(model.module, ds, tmp_path / "r.zarr", layer="conv1")
    bn = next(m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_mean += 0.5
    with pytest.raises(SketchmineError, match="weights"):
        sketchmine.mine(model.module, ds, out=tmp_path / "r.zarr", layers=["conv1"], batch_size=10)


# ---- partial runs count the images mined so far ----------------------------------------------
def test_partial_run_class_sizes_count_mined_images(demo_model, subset, tmp_path):
    _stopped(demo_model.module, subset, tmp_path / "r.zarr", n=100)
    run = sketchmine.open_run(tmp_path / "r.zarr")
    done = run.images_done
    assert not run.complete and 0 < done < len(subset)
    want = np.bincount(subset.labels()[:done], minlength=len(run.class_names))
    assert (subset.labels()[done:] >= 0).any()  # labels of images not mined yet are known
    np.testing.assert_array_equal(run.class_sizes().to_numpy(), want)


# ---- ranking: overflowed logits, merged NaN counts, tied preferences -------------------------
def test_softmax_of_overflowed_logits_is_counted_not_ranked(demo_model, demo_test_set, tmp_path):
    """Logits that overflow to +inf give p = NaN while their log-odds need not be NaN: such an
    image must be counted as NaN, never ranked first with a NaN value."""
    class Overflow(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * 1e38  # float32: every logit above ~3.4 becomes +inf

    net = Overflow(demo_model.module).eval()
    ds = per_class_subset(demo_test_set, 10, "0:100")
    with torch.no_grad():
        p = torch.softmax(torch.cat([net(ds[i][1][None]) for i in range(len(ds))]), 1)
    nan_images = int(torch.isnan(p).any(1).sum())
    assert nan_images > 0
    run = sketchmine.mine(net, ds, layers=["softmax"], k=5, out=tmp_path / "r.zarr", batch_size=50)
    values = run.topk("softmax")[0]
    assert not np.isnan(values).any()
    assert run.nan_total("softmax") == int(torch.isnan(p).sum())


def test_merged_top_k_adds_the_other_part_nan_count(demo_model, demo_test_set):
    """What rank 0 does with another rank's top-k: the merge equals one pass over all images,
    NaN count included."""
    ds = per_class_subset(demo_test_set, 10, "0:100")
    acts = all_activations(demo_model.module, ds, ["features.0"])[0]["features.0"]
    acts[::7] = float("nan")
    n, c = acts.shape[:2]
    index = torch.arange(n)

    def ranked(lo, hi):
        t = RunningTopK(c, 9, tuple(acts.shape[2:]))
        t.add(acts[lo:hi], index[lo:hi])
        return t

    one, a = ranked(0, n), ranked(0, 50)
    a.merge(ranked(50, n))
    assert int(one.state["nan_count"].sum()) == int(torch.isnan(acts).sum()) > 0  # NaN positions
    for key in ("values", "index", "position", "nan_count"):
        assert torch.equal(a.state[key], one.state[key]), key


def test_tied_class_preferences_are_listed_in_class_order(demo_model, demo_test_set, tmp_path):
    """Classes 2 and 3 given the same images have equal preferences: listed in class order."""
    labels = demo_test_set.labels()
    n = 20
    rows = [np.nonzero(labels == c)[0][:n] for c in range(len(demo_test_set.class_names))]
    images = np.concatenate([demo_test_set.images[rows[2] if c == 3 else r] for c, r in enumerate(rows)])
    lab = np.repeat(np.arange(len(demo_test_set.class_names)), n)
    ds = ArrayDataset(images, lab, demo_test_set.class_names, demo_test_set.preprocessing,
                      {**demo_test_set.describe(), "subset": "class 3 = class 2's images"})
    run = sketchmine.mine(demo_model.module, ds, layers=["features.3"], out=tmp_path / "r.zarr", batch_size=50)
    pref = run.class_preference("features.3")
    names = run.class_names
    assert pref.loc[names[2], "preference"] == pref.loc[names[3], "preference"]
    order = list(pref.index)
    assert order.index(names[2]) < order.index(names[3])


# ---- receptive fields and preprocessing presets ----------------------------------------------
def test_functional_pool_without_stride_strides_by_its_kernel():
    """`F.max_pool2d(x, 2)` (the PyTorch MNIST example's style) strides by 2, as torch does:
    conv2's unit (y, x) sees rows 2y … 2y + 7 (3 + 1 + 2 · 2 pixels)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)

        def forward(self, x):
            return self.conv2(F.max_pool2d(F.relu(self.conv1(x)), 2))

    field = sketchmine.receptive_fields(Net().eval(), (1, 28, 28))["conv2"]
    for y, x in ((0, 0), (5, 3), (10, 10)):
        assert field.box(y, x) == (2 * y, 2 * x, 2 * y + 7, 2 * x + 7)


def test_adaptive_pool_of_its_own_size_keeps_the_field():
    """AlexNet's avgpool at 224 px maps 6 × 6 to 6 × 6: the identity, so its units keep the
    field of the layer before it (not the whole image)."""
    net = torchvision.models.alexnet(weights=None).eval()
    fields = sketchmine.receptive_fields(net, 224)
    assert fields["avgpool"] == fields["features.12"]
    assert fields["avgpool"].size[0] < 224


def test_imagenet_preset_for_grey_models_averages_the_channels():
    """A one-channel model under the "imagenet" preset gets the mean of ImageNet's three channel
    means and stds (not the red channel's)."""
    rgb_mean, rgb_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ImageNet constants
    grey = preprocess.preset("imagenet", 1, (28, 28))
    assert grey.mean == pytest.approx((float(np.mean(rgb_mean)),))
    assert grey.std == pytest.approx((float(np.mean(rgb_std)),))


# ---- a partial run's views: classes not mined yet ---------------------------------------------
def test_partial_run_leaves_unmined_classes_out_and_prints_no_nan(demo_model, demo_test_set, tmp_path):
    """Stopped inside its first class (images sorted by class, as a folder is read): the class
    lists rank only classes with mined images and name the others as without images; the
    report's tables write "-" for statistics over one class, never "nan"."""
    from sketchmine.present.report import write_report

    labels = demo_test_set.labels()
    order = np.concatenate([np.nonzero(labels == c)[0][:30] for c in range(len(demo_test_set.class_names))])
    ds = ArrayDataset(demo_test_set.images[order], labels[order], demo_test_set.class_names,
                      demo_test_set.preprocessing, {**demo_test_set.describe(), "subset": "sorted by class"})
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, ds, out=tmp_path / "r.zarr", layers=["features.6", "classifier.6"],
                        batch_size=5, flush_every=1, progress=StopAfter(20))
    run = sketchmine.open_run(tmp_path / "r.zarr")
    assert not run.complete and 0 < run.images_done <= 30
    names = run.class_names
    for listed in (run.top_classes("features.6", 5), run.bottom_classes("features.6", 5)):
        assert list(listed.index) == [names[0]]
        assert list(listed.attrs["no_images"]) == names[1:]
    out = write_report(run, tmp_path / "rep", montages=0)
    pages = [out, *sorted((tmp_path / "rep" / "layers").glob("*.html"))]
    assert len(pages) > 1
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert ">nan<" not in text.lower() and " nan<" not in text.lower(), page.name


def test_report_cards_show_importance_ranks_from_one(demo_model, demo_test_set, tmp_path):
    """The unit cards' importance rank is the unit's place in `unit_importance` counted from 1
    (the most important unit reads "rank 1")."""
    import json
    import re

    from sketchmine.present.report import write_report

    ds = per_class_subset(demo_test_set, 3, "0:30")
    run = sketchmine.mine(demo_model.module, ds, layers=["features.0"], k=3, out=tmp_path / "r.zarr", batch_size=30)
    table = sketchmine.unit_importance(run, "features.0", model=demo_model.module, data=ds, batch_size=30)
    write_report(run, tmp_path / "rep", montages=0)
    pages = sorted((tmp_path / "rep" / "data").glob("*/page_*.js"))
    cards = [u for p in pages for u in json.loads(re.search(r"page\(\d+, (.*)\);", p.read_text()).group(1))]
    shown = {int(c["unit"]): c["importance"]["rank"] for c in cards}
    assert len(shown) == len(table)
    for place, unit in enumerate(table["unit"].astype(int), start=1):
        assert shown[unit] == place


def test_a_resume_refused_for_its_dataset_says_which_images_differ(demo_model, demo_test_set, tmp_path):
    """"other settings: dataset (run: 3f2a…, now: 9c1e…)" said two fingerprints and nothing a user
    could act on; the run records every image's path, label and content digest, so the refusal
    names the images gone, new, under another class, or rewritten."""
    import shutil

    from PIL import Image

    from tests.helpers import image_folder

    root = image_folder(demo_test_set, tmp_path / "images", per_class=3)
    out = tmp_path / "run.zarr"
    _stopped(demo_model.module, root, out, n=10)
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.png"))

    def refused() -> str:
        with pytest.raises(SketchmineError, match=r"other settings: dataset \(run: [0-9a-f]{16}…, now: [0-9a-f]{16}…: ") as e:
            sketchmine.mine(demo_model.module, root, out=out, layers=["features.0"], batch_size=10)
        return str(e.value)

    (root / files[4]).rename(root / files[4].replace(".png", "b.png"))
    assert f"images: 1 gone ({files[4]}), 1 new ({files[4].replace('.png', 'b.png')})" in refused()
    (root / files[4].replace(".png", "b.png")).rename(root / files[4])
    pixels = np.asarray(Image.open(root / files[7])).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(root / files[7])
    assert f"the content of 1 image(s) changed since the run was made ({files[7]})" in refused()
    first = files[0].split("/")[0]
    shutil.move(root / first, root / "zz")
    said = refused()
    assert f"classes: 1 gone ({first}), 1 new (zz)" in said and f"images: 3 gone ({files[0]}, " in said

    lab = demo_test_set.labels()[::50]
    arrays = ArrayDataset(demo_test_set.images[::50], lab, demo_test_set.class_names, demo_test_set.preprocessing,
                          demo_test_set.describe())
    _stopped(demo_model.module, arrays, tmp_path / "a.zarr", n=10)
    relabelled = ArrayDataset(arrays.images, np.where(lab == 0, 1, np.where(lab == 1, 0, lab)), arrays.class_names,
                              arrays.preprocessing, arrays.describe())
    moved = int(np.isin(lab, [0, 1]).sum())
    with pytest.raises(SketchmineError, match=rf"dataset \(run: .*: {moved} image\(s\) under another class \(animal_shape/test/"):
        sketchmine.mine(demo_model.module, relabelled, out=tmp_path / "a.zarr", layers=["features.0"], batch_size=10)
    done = sketchmine.mine(demo_model.module, arrays, out=tmp_path / "done.zarr", layers=["features.0"], batch_size=10)
    with pytest.raises(SketchmineError, match=rf"is not the one run .*done.zarr was mined on \(40 images, fingerprint "
                                              rf"[0-9a-f]{{12}}…\): {moved} image\(s\) under another class"):
        sketchmine.visualize(done.path, ["features.0"], model=demo_model.module, data=relabelled)


def test_a_resume_with_another_model_names_both_whole(subset, tmp_path):
    """Model ids were cut at 16 characters like hashes: "demo:sketchnet_a… vs demo:sketchresne…".
    A name is shown whole; a hash is still cut."""
    out = tmp_path / "a.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", subset, out=out, layers=["softmax"], batch_size=10, flush_every=1,
                        progress=StopAfter(30))
    with pytest.raises(SketchmineError) as said:
        sketchmine.mine("demo-resnet", subset, out=out, layers=["softmax"], batch_size=10)
    message = str(said.value)
    assert "model id (run: demo:sketchnet_animal, now: demo:sketchresnet_animal)" in message
    assert "model weights (run: xxh3_128:" in message and "…" in message.split("model weights")[1]
