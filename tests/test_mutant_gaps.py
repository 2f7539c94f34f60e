"""Behaviour that mutation testing (audit21) found unpinned: each test fails when the named code is
changed in a small, plausible way with the rest of the suite passing. The report's per-unit
maximum, the selectivity index of a run that saw only some classes, the resize (antialiased,
pixel centres) shrinking and enlarging, torch's normalisation path, and three CLI options that
must reach their call (`visualize --optimize-method`, `mine --ink`, `effects -n`). Real images of
the embedded data set and the trained demo models throughout; expected values are computed
here from plain torch / numpy."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sketchmine
from sketchmine.data import ArrayDataset, ImageFolderDataset, preset
from sketchmine.data.batchprep import prepare_uint8
from sketchmine.data.preprocess import Preprocessing
from sketchmine.model.models import load_model, preprocessing_for
from sketchmine.passes.visualize import visualize
from sketchmine.present.effects_table import effects_table
from sketchmine.present.report import write_report
from tests.helpers import all_activations, image_folder

cli = importlib.import_module("sketchmine.cli.main")

LAYER = "features.0"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, demo_test_set):
    """One small run for the report and CLI tests: the demo model's first conv layer (32 units)
    over an image folder of 40 real test images (4 per class), k = 3, with the folder it read."""
    base = tmp_path_factory.mktemp("gaps")
    root = image_folder(demo_test_set, base / "folder", per_class=4)
    run = sketchmine.mine("demo", str(root), layers=[LAYER], k=3, out=base / "run.zarr", batch_size=40)
    return run.path, root


def _page_data(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text[text.index("["):text.rindex("]") + 1])


# ---- the report's "max" ------------------------------------------------------------------------
def test_report_max_is_each_units_largest_activation(small_run, demo_model, tmp_path):
    """The report's "max" of a unit (its card's header and its dashboard's "max activation" row)
    is the unit's largest activation over all images and positions, computed here by brute
    force; not another top-k value, nor a neighbouring unit's."""
    path, root = small_run
    acts, _ = all_activations(demo_model.module, ImageFolderDataset(root, preprocessing_for(demo_model)), [LAYER])
    want = acts[LAYER].amax(dim=(0, 2, 3)).double().numpy()
    assert len(np.unique(want)) == len(want)  # every unit its own maximum: a neighbour's would show
    rep = write_report(path, tmp_path / "rep", montages=0).parent
    cards = [u for f in sorted((rep / "data").glob("*/page_*.js")) for u in _page_data(f)]
    dash = [u for f in sorted((rep / "dash").glob("*/unit_*.js")) for u in _page_data(f)]
    assert [c["unit"] for c in cards] == [d["unit"] for d in dash] == list(range(len(want)))
    values = sketchmine.open_run(path).topk(LAYER)[0]
    assert (values[:, 0] > values[:, -1]).any()  # the k-th value is another number
    for c, d in zip(cards, dash):
        u = c["unit"]
        assert c["max"] == pytest.approx(want[u], rel=1e-6), u
        assert d["max"] == pytest.approx(want[u], rel=1e-6), u
        assert c["max"] == max(e["value"] for e in c["entries"])


# ---- selectivity over the classes a run saw ----------------------------------------------------
def test_selectivity_ignores_classes_without_images(demo_model, demo_test_set, tmp_path):
    """A run over 7 of the 10 classes has no class mean for the other 3 (NaN). The selectivity
    index (mu_max - mu_rest) / (mu_max + mu_rest) takes mu_rest over the 6 other classes seen
    (a divisor of 6, not 9), from the class means of brute-force image maxima."""
    lab = demo_test_set.labels()
    pick = np.concatenate([np.nonzero(lab == c)[0][:10] for c in range(7)])
    sub = ArrayDataset(demo_test_set.images[pick], lab[pick], demo_test_set.class_names,
                       demo_test_set.preprocessing, demo_test_set.describe())
    layer = "features.8"
    run = sketchmine.mine(demo_model.module, sub, layers=[layer], k=3, out=tmp_path / "r.zarr", batch_size=70)
    acts, _ = all_activations(demo_model.module, sub, [layer])
    maxima = acts[layer].amax(dim=(2, 3)).double().numpy()  # (images, units)
    means = np.stack([maxima[lab[pick] == c].mean(axis=0) for c in range(7)], axis=1)  # (units, 7 seen)
    assert np.isnan(run.class_stats(layer)[0][:, 7:]).all()  # the classes not seen: no mean
    best = means.max(axis=1)
    rest = (means.sum(axis=1) - best) / 6
    defined = (best > 0) & (rest >= 0)
    want = np.where(defined, (best - rest) / (best + rest), np.nan)
    got = run.selectivity(layer).to_numpy()
    assert defined.sum() > len(want) // 2
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    over_all = (best - (means.sum(axis=1) - best) / 9) / (best + (means.sum(axis=1) - best) / 9)
    assert np.abs(over_all - want)[defined].min() > 1e-3  # a divisor of 9 is told apart


# ---- the resize: antialiased bilinear at pixel centres -----------------------------------------
@pytest.mark.parametrize("size", [(14, 14), (11, 9), (40, 33)])
def test_resize_of_real_images_is_antialiased_bilinear(demo_test_set, size):
    """Real 28×28 images shrunk or enlarged, per image (the dataset) and per batch (the device
    route): torch's antialiased bilinear computed in float64, to float32 rounding. Corner-aligned
    bilinear, and (shrinking) bilinear without antialiasing, are far from it: the test tells."""
    images = demo_test_set.images[:8]
    pre = preset("none", 1, size)
    ds = ArrayDataset(images, demo_test_set.labels()[:8], demo_test_set.class_names, pre, {})
    x = torch.from_numpy(images).double()[:, None] / 255
    want = F.interpolate(x, size=size, mode="bilinear", antialias=True)
    per_image = torch.stack([ds[i][1] for i in range(len(images))])
    batched = prepare_uint8(torch.from_numpy(images[..., None]), pre)
    for got in (per_image, batched):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    others = [F.interpolate(x, size=size, mode="bilinear", align_corners=True)]
    if size[0] < images.shape[1]:
        others.append(F.interpolate(x, size=size, mode="bilinear", antialias=False))
    for other in others:
        assert (other - want).abs().max() > 0.02


# ---- torch's normalisation path ---------------------------------------------------------------
def test_normalisation_off_the_compiled_op_is_per_channel_mean_and_std(demo_test_set):
    """What the compiled op does not take (a float64 batch, one (C, H, W) image, a batch that
    needs a gradient: feature visualisation) torch's ops normalise: (x - mean) / std per channel,
    the compiled op's numbers, with gradient 1 / std. Colour made of real images; each channel
    its own mean and std, so a swap or a skipped step shows."""
    grey = demo_test_set.images[:6]
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.9, 0.15)
    pre = Preprocessing("dataset", 3, None, mean, std)
    want = (x.double() - torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    compiled = pre.normalise(x)  # a float32 CPU batch: the compiled op
    torch.testing.assert_close(compiled.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pre.normalise(x.double()), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pre.normalise(x[2]), compiled[2], rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    out = pre.normalise(xg)
    torch.testing.assert_close(out.detach(), compiled, rtol=0, atol=0)
    out.sum().backward()
    torch.testing.assert_close(xg.grad, (1 / torch.tensor(std)).view(3, 1, 1).expand_as(x))


# ---- CLI options reach their call --------------------------------------------------------------
def test_visualize_optimize_method_reaches_the_pass(small_run, tmp_path):
    """`visualize --optimize --optimize-method pixel`: the CLI's feature visualisations equal the
    API's with method "pixel" and differ from the default method's (fourier)."""
    src, root = small_run
    by_cli, by_api, default = (shutil.copytree(src, tmp_path / n) for n in ("cli.zarr", "api.zarr", "default.zarr"))
    assert cli.main(["visualize", str(by_cli), "--layers", LAYER, "--optimize", "--optimize-method", "pixel",
                     "--optimize-steps", "2"]) == 0
    visualize(by_api, [LAYER], data=str(root), optimize=True, optimize_method="pixel", optimize_steps=2)
    visualize(default, [LAYER], data=str(root), optimize=True, optimize_steps=2)
    got, want, plain = (sketchmine.open_run(p) for p in (by_cli, by_api, default))
    assert got.layer_attrs(LAYER)["optimized"]["method"] == want.layer_attrs(LAYER)["optimized"]["method"] == "pixel"
    assert plain.layer_attrs(LAYER)["optimized"]["method"] == "fourier"
    np.testing.assert_array_equal(got.optimized(LAYER), want.optimized(LAYER))
    assert not np.array_equal(got.optimized(LAYER), plain.optimized(LAYER))


def test_visualize_optimize_regularizers_reach_the_pass(small_run, tmp_path, capsys):
    """`--optimize-regularizers '{"lr": 0.2}'` (JSON) reaches the pass as the API's; a malformed
    value is a usage error."""
    src, root = small_run
    by_cli, by_api, default = (shutil.copytree(src, tmp_path / n) for n in ("cli.zarr", "api.zarr", "default.zarr"))
    assert cli.main(["visualize", str(by_cli), "--layers", LAYER, "--optimize", "--optimize-steps", "2",
                     "--optimize-regularizers", '{"lr": 0.2}']) == 0
    visualize(by_api, [LAYER], data=str(root), optimize=True, optimize_steps=2, optimize_regularizers={"lr": 0.2})
    visualize(default, [LAYER], data=str(root), optimize=True, optimize_steps=2)
    got, want, plain = (sketchmine.open_run(p) for p in (by_cli, by_api, default))
    assert got.layer_attrs(LAYER)["optimized"]["regularizers"]["lr"] == 0.2
    np.testing.assert_array_equal(got.optimized(LAYER), want.optimized(LAYER))
    assert not np.array_equal(got.optimized(LAYER), plain.optimized(LAYER))
    for bad, said in (('{"lr": 0.', "expected a preset name or a JSON object"), ('["none"]', "a JSON object of settings")):
        with pytest.raises(SystemExit) as e:
            cli.main(["visualize", str(by_cli), "--optimize", "--optimize-regularizers", bad])
        assert e.value.code == 2 and said in capsys.readouterr().err


def test_mine_ink_reaches_the_drawing(demo_test_set, tmp_path):
    """`mine --steps 3 --ink dark` over light-on-black images: drawn as dark ink (background
    white), the API's run with ink="dark", not the default's (auto, which sees light ink)."""
    root = image_folder(demo_test_set, tmp_path / "folder", per_class=2)
    out = tmp_path / "cli.zarr"
    assert cli.main(["mine", "--model", "demo-gru", "--data", str(root), "--out", str(out), "--steps", "3",
                     "--ink", "dark", "--layers", "gru", "--workers", "0"]) == 0
    got = sketchmine.open_run(out)
    gru = load_model("demo-gru")
    kw = dict(steps=3, layers=["gru"], batch_size=20)
    api = sketchmine.mine(gru, str(root), ink="dark", out=tmp_path / "api.zarr", **kw)
    auto = sketchmine.mine(gru, str(root), out=tmp_path / "auto.zarr", **kw)
    assert got.attrs["dataset"]["sequence"]["ink"] == "dark" != auto.attrs["dataset"]["sequence"]["ink"]
    for a, b in zip(got.topk("gru"), api.topk("gru")):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got.topk("gru")[0], auto.topk("gru")[0])


def test_effects_n_reaches_the_table(small_run, tmp_path):
    """`effects -n 2` lists the 2 units that move the output most, the units of the API's table
    with n=2; the default (10) would list 10."""
    src, root = small_run
    path = shutil.copytree(src, tmp_path / "run.zarr")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["effects", str(path), "--layers", LAYER, "-n", "2", "--data", str(root),
                         "--batch-size", "40"]) == 0
    listed = re.findall(r"^│\s*(\d+)\s*│", out.getvalue(), flags=re.M)
    run = sketchmine.open_run(path)
    assert listed == list(effects_table(run, LAYER, 2).columns[0].cells)
    assert len(listed) == 2 and len(list(effects_table(run, LAYER, 10).columns[0].cells)) == 10
    from sketchmine.results.unit_summary import unit_summary  # the sign and digits `unit` shows (UX audit)

    table = effects_table(run, LAYER, 2)
    effects = unit_summary(run, LAYER, int(listed[0]))["effects"]
    assert effects["kind"] == "prob"
    for column, side in ((2, "up"), (3, "down")):
        first = effects[side][0]
        points = first["effect"] * 100  # in pt, 4 decimals, as the importance table's drop
        assert list(table.columns[column].cells)[0] == f"{first['class']} {points:+.4f}"
