"""Every CLI option reaches the call it names: each test runs the command with non-default
values and checks what the run holds (pictures, model, columns, stored settings) against the
Python API called with the same values. Dropping an option on the way (replacing it by its
default) fails here; the help texts alone are tested elsewhere."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil

import numpy as np
import pytest

import sketchmine
from sketchmine.passes.visualize import visualize
from tests.helpers import image_folder

cli = importlib.import_module("sketchmine.cli.main")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, demo_test_set):
    """A run mined from an image folder of real test images (distributions on, so every
    example set can be cut), with the folder it read."""
    base = tmp_path_factory.mktemp("reach")
    root = image_folder(demo_test_set, base / "folder", per_class=10)
    run = sketchmine.mine("demo", str(root), layers=["features.3"], k=3, out=base / "run.zarr", batch_size=50,
                          distributions=True)
    return run.path, root


def test_visualize_options_reach_the_pass(folder_run, tmp_path):
    """--max-patch, --method and --examples: the CLI's pictures equal the API's with the same values,
    and differ from the defaults' (so the comparison can tell them apart)."""
    src, root = folder_run
    by_cli, by_api, default = (shutil.copytree(src, tmp_path / n) for n in ("cli.zarr", "api.zarr", "default.zarr"))
    assert cli.main(["visualize", str(by_cli), "--layers", "features.3", "--max-patch", "8", "--method", "guided",
                     "--examples", "all"]) == 0
    visualize(by_api, ["features.3"], data=str(root), max_patch=8, method="guided", examples="all")
    visualize(default, ["features.3"], data=str(root))
    got, want, plain = (sketchmine.open_run(p) for p in (by_cli, by_api, default))
    for key in ("patches", "deconv"):
        a, b = got.layer_array("features.3", key), want.layer_array("features.3", key)
        assert a.shape == b.shape and max(a.shape[2:4]) <= 8
        np.testing.assert_array_equal(a, b)
    assert plain.layer_array("features.3", "patches").shape != got.layer_array("features.3", "patches").shape
    for group in ("bottom_pictures", "bin_pictures"):  # --examples all: every example set cut
        assert (by_cli / "layers" / "features.3" / group).is_dir()
        assert not (default / "layers" / "features.3" / group).exists()
    assert got.layer_attrs("features.3")["visualized"]["method"] == "guided"
    guided = visualize(shutil.copytree(src, tmp_path / "g.zarr"), ["features.3"], data=str(root), max_patch=8)
    assert not np.array_equal(guided.layer_array("features.3", "deconv"), got.layer_array("features.3", "deconv"))


def test_mine_seed_reaches_the_model(demo_test_set, tmp_path):
    """--seed initialises a model named by architecture: two seeds give two models (other
    activations), the same seed the API's."""
    root = image_folder(demo_test_set, tmp_path / "folder", per_class=2)
    values = {}
    for seed in (1, 2):
        out = tmp_path / f"s{seed}.zarr"
        assert cli.main(["mine", "--model", "resnet18", "--seed", str(seed), "--data", str(root), "--out", str(out),
                         "--layers", "conv1", "--no-logits", "--workers", "0"]) == 0
        values[seed] = sketchmine.open_run(out).topk("conv1")[0]
    assert not np.array_equal(values[1], values[2])
    api = sketchmine.mine("resnet18", str(root), seed=2, layers=["conv1"], logits=False, out=tmp_path / "api.zarr")
    np.testing.assert_array_equal(api.topk("conv1")[0], values[2])


def test_summary_n_and_effects_units_per_pass(folder_run, tmp_path):
    """`summary -n N` lists N classes a side on the console; `effects --units-per-pass U` runs
    (and records) U units a pass, not what memory would choose."""
    src, root = folder_run
    path = shutil.copytree(src, tmp_path / "run.zarr")
    for n in (2, 4):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["summary", str(path), "-n", str(n)]) == 0
        assert f"top {n}" in out.getvalue() and f"bottom {n}" in out.getvalue()
    assert cli.main(["effects", str(path), "--layers", "features.3", "--units-per-pass", "4", "--data", str(root),
                     "--batch-size", "50"]) == 0
    assert sketchmine.open_run(path).unit_effects("features.3").attrs["units_per_pass"] == 4


def test_mine_image_size_and_preprocessing_reach_the_loader(folder_run, tmp_path):
    """--image-size and --preprocessing: the CLI's run equals the API's with the same values and
    differs from the defaults' (other pixels reach the model; demo-resnet pools adaptively, so it
    takes 40 px)."""
    _, root = folder_run
    out = tmp_path / "cli.zarr"
    assert cli.main(["mine", "--model", "demo-resnet", "--data", str(root), "--out", str(out), "--layers", "conv1",
                     "--image-size", "40", "--preprocessing", "imagenet", "--workers", "0"]) == 0
    got = sketchmine.open_run(out)
    kw = dict(layers=["conv1"], batch_size=50)
    api = sketchmine.mine("demo-resnet", str(root), image_size=40, preprocessing="imagenet", out=tmp_path / "a.zarr", **kw)
    sized = sketchmine.mine("demo-resnet", str(root), image_size=40, out=tmp_path / "s.zarr", **kw)
    for a, b in zip(got.topk("conv1"), api.topk("conv1")):
        np.testing.assert_array_equal(a, b)
    assert got.layer_attrs("conv1")["shape"][1:] == api.layer_attrs("conv1")["shape"][1:]
    plain = sketchmine.mine("demo-resnet", str(root), out=tmp_path / "p.zarr", **kw)
    assert got.layer_attrs("conv1")["shape"] != plain.layer_attrs("conv1")["shape"]  # 40 px, not 28
    assert not np.array_equal(sized.topk("conv1")[0], got.topk("conv1")[0])  # ImageNet's mean/std, not the model's


def test_compare_n_reaches_both_outputs(folder_run, tmp_path):
    src, _ = folder_run
    b = shutil.copytree(src, tmp_path / "b.zarr")
    for n in (2, 3):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["compare", str(src), str(b), "-n", str(n)]) == 0
        assert f"top {n} A" in out.getvalue()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["compare", str(src), str(b), "-n", str(n), "--json"]) == 0
        assert json.loads(out.getvalue())["n"] == n
