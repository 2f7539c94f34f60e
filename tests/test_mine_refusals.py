"""What `mine` refuses or counts instead of mining a silently different answer: images of two
sizes in different batches, labels outside the classes, model outputs with NaN, channel
counts no rule defines, a Preprocessing that does not fit the model; and the class axis of a
dataset without class names."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from sketchmine.errors import SketchmineError
from sketchmine.progress import Silent
from sketchmine.store import schema


class Notes(Silent):
    def __init__(self) -> None:
        self.said: list[str] = []

    def note(self, message: str) -> None:
        self.said.append(message)


class Tensors(torch.utils.data.Dataset):
    """Real test images as a plain torch Dataset (labels streamed), optionally changed."""

    def __init__(self, base, labels=None, nan_every: int = 0) -> None:
        self.base, self.labels, self.nan_every = base, labels, nan_every

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        _, x, y, _ = self.base[i]
        if self.nan_every and i % self.nan_every == 0:
            x = x.clone()
            x[0, 0, 0] = float("nan")  # one pixel: the conv spreads it to every logit
        return x, int(y if self.labels is None else self.labels[i])


@pytest.mark.parametrize("route", ["cpu", "device"])
def test_two_image_sizes_are_refused_whatever_the_batches(tmp_path, demo_test_set, route):
    """4 images of 28 px then 4 of 36 px per class: batches of 4 never mix them, and the
    demo ResNet takes either size, yet the layers' grids are the first image's."""
    root = tmp_path / "mixed"
    labels = demo_test_set.labels()
    for c, name in enumerate(demo_test_set.class_names[:3]):
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == c)[:8]):
            im = Image.fromarray(demo_test_set.images[i])
            (im if j < 4 else im.resize((36, 36), Image.BILINEAR)).save(root / name / f"{j:02d}.png")
    for batch_size in (4, 24):
        out = tmp_path / f"run{batch_size}.zarr"
        with pytest.raises(SketchmineError, match=r"images differ in size: .*00\.png is .*28.*, .*04\.png is .*36"):
            sketchmine.mine("demo-resnet", str(root), layers=["conv1"], k=3, out=out, batch_size=batch_size,
                            preprocess=route, logits=False)


def test_a_nan_output_counts_as_a_wrong_prediction(tmp_path, small_test_set, demo_model):
    notes = Notes()
    data = Tensors(small_test_set, nan_every=4)
    run = sketchmine.mine(demo_model.module, data, layers=["features.0"], k=3, out=tmp_path / "r.zarr",
                          batch_size=32, progress=notes)
    with torch.no_grad():
        logits = demo_model.module(torch.stack([data[i][0] for i in range(len(data))]))
    labels = small_test_set.labels()
    nan = torch.isnan(logits).any(1).numpy()
    assert nan.sum() == 75  # every 4th of 300
    right = (logits.argmax(1).numpy() == labels) & ~nan
    assert run.accuracy() == pytest.approx(right.mean())
    table = run.class_accuracy()
    assert table["count"].sum() == 300
    np.testing.assert_array_equal(table["correct"], np.bincount(labels[right], minlength=10))
    np.testing.assert_array_equal(run.store.read(schema.PREDICTIONS)[nan], schema.NAN_PREDICTION)
    assert any(n.startswith("75 image(s) gave a model output with NaN") for n in notes.said)


def test_a_skipped_image_still_has_no_prediction(tmp_path, demo_test_set, demo_model):
    """An unreadable image's NaN row is no prediction (-1), not a NaN output (-2)."""
    from tests.helpers import image_folder

    root = image_folder(demo_test_set, tmp_path / "f", per_class=3)
    broken = sorted(root.glob("*/*.png"))[4]
    broken.write_bytes(b"not a png")
    run = sketchmine.mine("demo", str(root), layers=["features.0"], k=3, out=tmp_path / "r.zarr",
                          batch_size=8, skip_bad_images=True)
    pred = run.store.read(schema.PREDICTIONS)
    (bad,) = run.attrs["bad_images"]
    assert pred[bad["index"]] == schema.NO_PREDICTION
    assert (np.delete(pred, bad["index"]) >= 0).all()
    assert run.class_accuracy()["count"].sum() == len(pred) - 1


def test_labels_outside_the_classes_are_refused(tmp_path, small_test_set, demo_model):
    labels = small_test_set.labels().copy()
    labels[37] = 10  # the demo model has 10 outputs; a torch Dataset has no class names
    with pytest.raises(SketchmineError, match=r"image #37 has label 10; labels are class numbers 0 to 9"):
        sketchmine.mine(demo_model.module, Tensors(small_test_set, labels), layers=["features.0"],
                        out=tmp_path / "a.zarr", batch_size=16)
    arrays = ArrayDataset(small_test_set.images, labels, [], small_test_set.preprocessing, {})  # no class names
    with pytest.raises(SketchmineError, match=r"image \S*00037 has label 10; .*or -1 for an unknown class"):
        sketchmine.mine("demo", arrays, layers=["features.0"], out=tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()  # known labels are checked before the run is made


def test_a_dataset_without_class_names_gets_the_output_numbers(tmp_path, small_test_set, demo_model):
    xr = pytest.importorskip("xarray")
    run = sketchmine.mine(demo_model.module, Tensors(small_test_set), layers=["features.0"],
                          out=tmp_path / "r.zarr", batch_size=64)
    assert run.class_names == [str(i) for i in range(10)]
    tree = xr.open_datatree(tmp_path / "r.zarr", engine="zarr", consolidated=False)
    assert list(tree["layers/features.0"].dataset["class_mean"].coords["class"].values) == run.class_names


@pytest.mark.parametrize("channels", [2, 4])
def test_models_taking_other_channel_counts_are_refused(tmp_path, small_test_set, channels):
    net = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10))
    with pytest.raises(SketchmineError, match=rf"takes {channels}-channel input: .*1-channel \(grey\) or 3-channel"):
        sketchmine.mine(net, small_test_set, out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


class DoubleProjection(nn.Module):
    """A float32 net whose head multiplies by a float64 buffer: an error of the model's own dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.register_buffer("proj", torch.ones(4, 10, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).amax((2, 3)) @ self.proj


class Uncalibrated(nn.Module):
    """A net that refuses to run before its calibration step, with a RuntimeError of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)
        self.register_buffer("scale", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).amax((2, 3))
        if not torch.is_nonzero(self.scale):
            raise RuntimeError("Uncalibrated: call calibrate() on sample images before inference")
        return self.fc(h * self.scale)


def test_a_model_error_not_about_the_input_is_quoted_without_resize_advice(tmp_path, small_test_set):
    net = Uncalibrated().eval()
    with pytest.raises(RuntimeError) as torch_said:
        net(small_test_set[0][1][None])
    with pytest.raises(SketchmineError, match=r"^the model failed on the first image \(one image: channels, height, "
                                              r"width: \(1, 28, 28\)\): ") as got:
        sketchmine.mine(net, small_test_set, layers=["conv"], out=tmp_path / "r.zarr")
    assert str(torch_said.value).splitlines()[0] in str(got.value)
    assert "--image-size" not in str(got.value) and not (tmp_path / "r.zarr").exists()


def test_torchs_shape_errors_keep_the_input_advice():
    """The shape errors of torch's own layers, as torch words them now, are taken as the input's."""
    from sketchmine.model.input_words import about_input

    x = torch.zeros(1, 1, 8, 8)
    shaped = [lambda: nn.Conv2d(3, 4, 3)(x), lambda: nn.Linear(10, 2)(x.flatten(1)), lambda: nn.MaxPool2d(16)(x),
              lambda: nn.BatchNorm2d(3).eval()(x), lambda: nn.Conv2d(1, 4, 3)(x[0, 0])]
    other = [lambda: DoubleProjection()(x), lambda: nn.Conv2d(1, 4, 3).half()(x)]
    for calls, expected in ((shaped, True), (other, False)):
        for call in calls:
            with pytest.raises((RuntimeError, ValueError)) as said:
                call()
            assert about_input(str(said.value).splitlines()[0]) is expected, said.value


def test_a_preprocessing_that_does_not_fit_is_refused(tmp_path, small_test_set):
    arrays = ArrayDataset(small_test_set.images, small_test_set.labels(), small_test_set.class_names,
                          small_test_set.preprocessing, {})
    with pytest.raises(SketchmineError, match=r"makes 3-channel input but model demo:\S+ takes 1 channels"):
        sketchmine.mine("demo", arrays, preprocessing=Preprocessing("imagenet", 3, None, IMAGENET_MEAN, IMAGENET_STD),
                        out=tmp_path / "r.zarr")
    with pytest.raises(SketchmineError, match=r"need one number per channel \(1\)"):
        Preprocessing("imagenet", 1, None, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(SketchmineError, match=r"'imagenet' without its mean and std would normalise nothing"):
        Preprocessing("imagenet", 1, None)
    assert not (tmp_path / "r.zarr").exists()


def test_a_folder_of_unreadable_images_names_the_first_and_why(tmp_path, small_test_set):
    """It said only "none of the first 64 images can be read", without a file or a reason."""
    for c in ("bird", "cat"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / c / f"{i}.png").write_bytes(bytes(small_test_set.images[i].ravel()[:300]))
    with pytest.raises(SketchmineError, match=r"none of the first 6 images of the dataset can be read \(the first, "
                                              r"bird/0\.png: .+\)"):
        sketchmine.mine("demo", tmp_path / "data", out=tmp_path / "r.zarr", skip_bad_images=True, logits=False)


def test_distributions_over_more_images_than_a_sketch_counts_are_refused():
    """The quantile sketch counts in int32: 2^31 images in one bucket would wrap (found by an
    audit at LAION scale); refused before anything is mined."""
    from sketchmine.mining.checks import SKETCH_IMAGES, check_sketch_size

    check_sketch_size(SKETCH_IMAGES, True)
    check_sketch_size(SKETCH_IMAGES + 1, False)
    with pytest.raises(SketchmineError, match="2,147,483,648 images; distributions=True"):
        check_sketch_size(SKETCH_IMAGES + 1, True)


def test_a_model_returning_a_map_is_refused_unless_mined_without_logits(tmp_path, small_test_set):
    """A model whose forward returns a feature map (a dense-prediction net) mined with layers named
    made a run with no predictions or accuracy, said by nothing (by default it was refused as
    "layer 'softmax' needs (N, classes) logits; the model returns (1, 8, 26, 26)"). It is refused
    naming the output and logits=False, with which the layer's top-k is the map's own."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU()).eval()
    ds = ArrayDataset(small_test_set.images[:20], small_test_set.labels()[:20], small_test_set.class_names,
                      preprocessing=small_test_set.preprocessing)
    for layers in (None, ["0"]):
        with pytest.raises(SketchmineError, match=r"the model returns float32 of shape \(N, 8, 26, 26\), not "
                                                  r"\(N, classes\) logits.* logits=False \(--no-logits\)"):
            sketchmine.mine(net, ds, layers=layers, out=tmp_path / "r.zarr")
        assert not (tmp_path / "r.zarr").exists()
    run = sketchmine.mine(net, ds, layers=["1"], logits=False, out=tmp_path / "r.zarr", k=2)
    with torch.no_grad():
        maps = net(torch.stack([ds[i][1] for i in range(len(ds))]))
    values, _, _ = run.topk("1")
    np.testing.assert_allclose(values[:, 0], maps.amax(dim=(0, 2, 3)).numpy(), rtol=1e-6)


def test_a_run_of_a_model_without_logits_mined_before_the_refusal_resumes_with_logits_false(tmp_path, small_test_set,
                                                                                          demo_model):
    """Such a run (layers named, logits left on, so no predictions and no `logits` attribute) is
    now refused on resume as the model returns no logits, and the refusal says to pass
    logits=False, which the resume check refused as "logits (run: True, now: False)": it could
    not be resumed at all. It resumes with logits=False now, to the top-k of a run mined whole;
    a run that has predictions is still refused a resume without logits."""
    import zarr

    from tests.helpers import StopAfter

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU()).eval()
    ds = ArrayDataset(small_test_set.images[:40], small_test_set.labels()[:40], small_test_set.class_names,
                      preprocessing=small_test_set.preprocessing)
    out = tmp_path / "old.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(net, ds, layers=["0"], logits=False, out=out, batch_size=8, flush_every=1, progress=StopAfter(24))
    del zarr.open_group(str(out), mode="r+").attrs["logits"]  # as recorded before: no `logits`, num_classes None
    with pytest.raises(SketchmineError, match=r"logits=False \(--no-logits\)"):
        sketchmine.mine(net, ds, layers=["0"], out=out, batch_size=8, flush_every=1)
    run = sketchmine.mine(net, ds, layers=["0"], logits=False, out=out, batch_size=8, flush_every=1)
    whole = sketchmine.mine(net, ds, layers=["0"], logits=False, out=tmp_path / "whole.zarr", batch_size=8)
    assert run.complete and not run.has_predictions()
    for got, want in zip(run.topk("0"), whole.topk("0")):
        np.testing.assert_array_equal(got, want)
    demo = tmp_path / "demo.zarr"
    sketchmine.mine(demo_model, ds, layers=["features.0"], out=demo, batch_size=8)
    with pytest.raises(SketchmineError, match=r"logits \(run: True, now: False\)"):
        sketchmine.mine(demo_model, ds, layers=["features.0"], logits=False, out=demo, batch_size=8)


def test_without_logits_a_head_that_cannot_take_the_size_does_not_stop_its_convs(tmp_path, small_test_set):
    """logits=False mines up to the last tapped layer, but the probe ran the whole model on the
    first image: at a size only the head's Linear cannot take, the convs before it were refused
    ("mat1 and mat2 shapes cannot be multiplied"). They are mined now, fields included; the head
    itself, named or a default layer, and the logits are refused as before."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 24 * 24, 10))
    wider = np.pad(small_test_set.images[:20], ((0, 0), (2, 2), (2, 2)), mode="edge")  # 32 px: 8 x 28 x 28 maps
    ds = ArrayDataset(wider, small_test_set.labels()[:20], small_test_set.class_names,
                      preprocessing=small_test_set.preprocessing)
    kw = dict(k=3, batch_size=8)
    run = sketchmine.mine(net.eval(), ds, layers=["0", "2"], logits=False, out=tmp_path / "r.zarr", **kw)
    with torch.no_grad():
        maps = net[:3](torch.stack([ds[i][1] for i in range(len(ds))]))
    values, index, _ = run.topk("2")
    per_image = maps.amax(dim=(2, 3))
    np.testing.assert_allclose(values, per_image.sort(dim=0, descending=True).values[:3].T.numpy(), rtol=1e-6)
    assert run.store.group["layers"]["2"].attrs["receptive_field"] == {"size": [5, 5], "stride": [1, 1],
                                                                      "offset": [0, 0]}
    for layers, logits in ((["2", "4"], False), (None, False), (["2"], True)):
        with pytest.raises(SketchmineError, match="cannot take input of shape"):
            sketchmine.mine(net, ds, layers=layers, logits=logits, out=tmp_path / "x.zarr", **kw)
        assert not (tmp_path / "x.zarr").exists()
