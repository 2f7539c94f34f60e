"""visualize and feature_visualization refuse before they reset or write anything, apply
max_units to every picture they make, and read a layer as mining did; on the embedded real
data and the demo models."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torchvision

import sketchmine
from sketchmine import SketchmineError
from sketchmine.passes.featvis import feature_visualization
from sketchmine.passes.visualize import visualize
from tests.helpers import assert_same_store, per_class_subset


def _layer_attrs(path, layers):
    run = sketchmine.open_run(path)
    return {name: run.layer_attrs(name) for name in layers}


def test_a_refused_optimize_with_redo_keeps_the_finished_patches(tmp_path):
    from sketchmine.data import animal_shape
    from sketchmine.data.sequences import SequenceDataset, recorded_steps
    from sketchmine.model.models import load_model, preprocessing_for

    loaded = load_model("demo-gru")
    base = per_class_subset(animal_shape("test", preprocessing_for(loaded)), 2, "refusal")
    ds = SequenceDataset(base, recorded_steps(loaded.sequence, "demo-gru"))
    out = tmp_path / "gru.zarr"
    sketchmine.mine(loaded, ds, layers=["gru"], k=2, out=out, batch_size=20)
    visualize(out, model=loaded, data=ds, batch_size=16)
    shutil.copytree(out, tmp_path / "before.zarr")
    with pytest.raises(SketchmineError, match="sequences of drawings"):
        visualize(out, model=loaded, data=ds, batch_size=16, redo=True, optimize=True, optimize_steps=2)
    assert_same_store(out, tmp_path / "before.zarr")  # the finished patches are all still there
    assert _layer_attrs(out, ["gru"]) == _layer_attrs(tmp_path / "before.zarr", ["gru"])


class _Tensors(torch.utils.data.Dataset):
    """A plain torch Dataset of the demo's real test tensors (no preprocessing recorded)."""

    def __init__(self, ds, n: int) -> None:
        self.ds, self.n = ds, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        _, x, y, _ = self.ds[i]
        return x.clone(), int(y)


def test_optimize_on_a_run_without_preprocessing_is_refused_before_any_work(tmp_path, demo_test_set):
    ds = _Tensors(demo_test_set, 40)
    out = tmp_path / "plain.zarr"
    sketchmine.mine("demo", ds, layers=["classifier.6"], k=2, out=out, batch_size=40)
    shutil.copytree(out, tmp_path / "before.zarr")
    with pytest.raises(SketchmineError, match="does not record how pixels become the model's input"):
        visualize(out, data=ds, optimize=True, optimize_steps=2)
    assert_same_store(out, tmp_path / "before.zarr")
    assert "visualized" not in sketchmine.open_run(out).layer_attrs("classifier.6")
    visualize(out, data=ds)  # without --optimize it goes on: patches min-max scaled for display


def test_a_module_called_twice_per_forward_is_refused():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()  # layer1.0.relu runs after bn1 and after the add
    with pytest.raises(SketchmineError, match="called more than once per forward pass"):
        feature_visualization(net, "layer1.0.relu", [0, 1], steps=1, size=32)
    fv = feature_visualization(net, "layer1.0.conv1", [0], steps=1, size=32)  # its neighbours are fine
    assert fv.images.shape == (1, 3, 32, 32)


def test_a_layer_before_a_size_bound_head_still_optimises_at_another_size(demo_model):
    # the counting forward cannot reach the classifier at 40 px; the conv before it is called once
    fv = feature_visualization(demo_model, "features.0", [0, 1], steps=1, size=40)
    assert fv.pixels.shape == (2, 40, 40, 1)


@pytest.fixture(scope="module")
def distribution_run(tmp_path_factory, small_test_set):
    ds = per_class_subset(small_test_set, 6, "examples")
    out = tmp_path_factory.mktemp("examples") / "run.zarr"
    sketchmine.mine("demo", ds, layers=["classifier.6"], k=3, out=out, batch_size=60, distributions=True)
    return out, ds


def test_max_units_limits_the_example_pictures_too(tmp_path, distribution_run):
    src, ds = distribution_run
    shutil.copytree(src, tmp_path / "part.zarr")
    shutil.copytree(src, tmp_path / "whole.zarr")
    part = visualize(tmp_path / "part.zarr", data=ds, batch_size=16, examples="all", max_units=3)
    whole = visualize(tmp_path / "whole.zarr", data=ds, batch_size=16, examples="all")
    assert part.layer_attrs("classifier.6")["visualized"]["units_done"] == 3
    for group in ("bottom_pictures", "bin_pictures"):
        for key in ("patches", "deconv", "boxes", "inside"):  # read one at a time: their shapes differ
            got, attrs = part.layer_result("classifier.6", group, (key,))
            want, all_attrs = whole.layer_result("classifier.6", group, (key,))
            assert attrs["units_done"] == 3 and all_attrs["units_done"] == 10
            assert got[key].shape[0] == 3, (group, key)
            np.testing.assert_array_equal(got[key], want[key][:3], err_msg=f"{group}/{key}")
    again = visualize(part, data=ds, batch_size=16, examples="all")  # a later call makes them for every unit
    got, attrs = again.layer_result("classifier.6", "bottom_pictures", ("patches",))
    assert attrs["units_done"] == 10 and got["patches"].shape[0] == 10


def test_bin_positions_of_a_time_first_layer_are_read_as_mined(tmp_path):
    from sketchmine.data import animal_shape
    from tests.test_time_first import Drawings, T, TimeFirst

    torch.manual_seed(0)
    net = TimeFirst().eval()
    n = 12
    images = animal_shape("test").images[:n * T].astype(np.float32) / 255  # real silhouettes as frames
    x = torch.from_numpy(images).view(n, T, 1, 28, 28)[..., ::3, ::3].contiguous()
    run = sketchmine.mine(net, Drawings(x), layers=["head"], k=3, out=tmp_path / "r.zarr", batch_size=5,
                          distributions=True)
    # batches of exactly T images: (T, N, F) and (N, T, F) have the same shape
    run = visualize(run, model=net, data=Drawings(x), batch_size=T, examples="all")
    found = run.layer_result("head", "bin_pictures", ("yx",))
    assert found is not None
    yx = found[0]["yx"]
    index = np.asarray(run.quantile_examples("head")).reshape(3, -1)
    with torch.no_grad():
        steps = net.steps(x).argmax(0).T.numpy()  # (units, images): the step of each maximum
    filled = index >= 0
    assert filled.sum() > 0
    want = np.take_along_axis(steps, np.where(filled, index, 0), 1)
    np.testing.assert_array_equal(yx[..., 1][filled], want[filled])


def test_a_first_pass_stopped_in_its_first_block_says_to_continue(tmp_path, distribution_run, monkeypatch):
    """Ctrl-C during the first block leaves the pass begun with no unit done: the readers say so
    and how to continue it, as for a pass stopped later (not that the layer has no patches)."""
    from sketchmine.passes import visualize as pass_module
    from sketchmine.passes.visualize import patches_of
    from sketchmine.present.montage import montage_pixels

    src, ds = distribution_run
    shutil.copytree(src, tmp_path / "run.zarr")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pass_module, "_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        visualize(tmp_path / "run.zarr", data=ds, batch_size=16)
    run = sketchmine.open_run(tmp_path / "run.zarr")
    assert run.patches_done("classifier.6") == 0
    for read in (patches_of, montage_pixels):
        with pytest.raises(SketchmineError, match=r"unit 2 of layer 'classifier.6' .* has no patches yet \(0 of 10 "
                                                  r"units done\); run `sketchmine visualize .*` to continue"):
            read(run, "classifier.6", 2)
        with pytest.raises(SketchmineError, match="unit 10 is not"):
            read(run, "classifier.6", 10)
