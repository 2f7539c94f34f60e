"""The second pass: patches and deconvolutions of every top-k entry, on the real demo model
and real Animal-Shape images, checked against independent computations."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import sketchmine
from sketchmine import SketchmineError
from sketchmine.data import ArrayDataset, export_image_folder
from sketchmine.stats.ops import crop_patches_reference
from sketchmine.passes.visualize import visualize
from tests.helpers import StopAfter, per_class_subset

LAYERS = ["features.3", "features.10", "classifier.4", "softmax"]


@pytest.fixture(scope="module")
def tiny_set(small_test_set):
    """120 real test images (12 per class)."""
    return per_class_subset(small_test_set, 12, "tiny")


@pytest.fixture(scope="module")
def visualized(tmp_path_factory, demo_model, tiny_set):
    out = tmp_path_factory.mktemp("vis") / "run.zarr"
    sketchmine.mine(demo_model.module, tiny_set, layers=LAYERS, k=4, out=out, batch_size=50)
    run = visualize(out, model=demo_model.module, data=tiny_set, batch_size=16)
    return run, tiny_set


def _pixels(ds: ArrayDataset, i: int) -> torch.Tensor:
    """The image as stored (uint8, (1, H, W)): the demo's input size is the data's own."""
    return torch.from_numpy(np.asarray(ds.images[i]))[None]


def test_patches_are_the_receptive_field_crops(visualized, demo_model):
    run, ds = visualized
    fields = sketchmine.receptive_fields(demo_model.module, 28)
    for layer in LAYERS:
        g = run.store.group[f"layers/{layer}"]
        patches, boxes, inside = (np.asarray(g[k][...]) for k in ("patches", "boxes", "inside"))
        _, index, yx = run.topk(layer)
        assert g.attrs["visualized"]["complete"]
        for c in range(index.shape[0]):
            for s in range(index.shape[1]):
                i = int(index[c, s])
                if i < 0:
                    assert (patches[c, s] == 0).all() and (boxes[c, s] == -1).all()
                    continue
                if layer in fields and len(run.layer_shape(layer)) == 3:
                    top, left, bottom, right = fields[layer].box(*yx[c, s])
                else:  # FC and softmax units: the whole image
                    top, left, bottom, right = 0, 0, 27, 27
                assert tuple(boxes[c, s]) == (top, left, bottom, right)
                want = crop_patches_reference(_pixels(ds, i)[None], torch.tensor([0]), torch.tensor([[top, left]]),
                                              bottom - top + 1, right - left + 1)[0]
                assert np.array_equal(patches[c, s], want.permute(1, 2, 0).numpy())
                clipped = (max(top, 0), max(left, 0), min(bottom, 27), min(right, 27))
                assert tuple(inside[c, s]) == clipped


def test_borders_are_clipped_and_recorded(visualized):
    run, _ = visualized
    g = run.store.group["layers/features.10"]  # 36-px field on 28-px images: always clipped
    boxes, inside = np.asarray(g["boxes"][...]), np.asarray(g["inside"][...])
    filled = boxes[..., 0] >= -100
    assert (boxes[filled][:, 0] < 0).any() or (boxes[filled][:, 2] > 27).any()
    assert (inside[filled] >= 0).all() and (inside[filled] <= 27).all()


def test_deconvolutions_equal_single_unit_deconvolve(visualized, demo_model):
    run, ds = visualized
    for layer in ("features.3", "classifier.4"):
        g = run.store.group[f"layers/{layer}"]
        deconv, boxes = np.asarray(g["deconv"][...]), np.asarray(g["boxes"][...])
        _, index, yx = run.topk(layer)
        for c in (0, 5, index.shape[0] - 1):
            i = int(index[c, 0])
            x = ds[i][1][None]
            sig = sketchmine.deconvolve(demo_model.module, x, layer, [c], yx[c, :1], method="deconvnet")
            top, left, bottom, right = boxes[c, 0]
            crop = crop_patches_reference(sig, torch.tensor([0]), torch.tensor([[top, left]]),
                                          bottom - top + 1, right - left + 1)[0]
            want = (128 + 127 * crop / crop.abs().max()).round().clamp(0, 255).permute(1, 2, 0).numpy()
            assert np.abs(deconv[c, 0].astype(int) - want.astype(int)).max() <= 1
            assert len(np.unique(deconv[c, 0])) > 3  # a real signal, not a constant


@pytest.mark.parametrize("stop_after", [1, 9])
def test_interrupted_pass_resumes_identical(tmp_path, visualized, demo_model, stop_after):
    run, ds = visualized
    copy = tmp_path / "copy.zarr"
    shutil.copytree(run.path, copy)
    for layer in LAYERS:  # back to a run without patches
        del zarr.open_group(str(copy / "layers" / layer), mode="r+").attrs["visualized"]
    with pytest.raises(KeyboardInterrupt):
        visualize(copy, model=demo_model.module, data=ds, batch_size=16, progress=StopAfter(stop_after, calls=True))
    resumed = visualize(copy, model=demo_model.module, data=ds, batch_size=16)
    for layer in LAYERS:
        a, b = run.store.group[f"layers/{layer}"], resumed.store.group[f"layers/{layer}"]
        for key in ("patches", "deconv", "boxes", "inside"):
            assert np.array_equal(np.asarray(a[key][...]), np.asarray(b[key][...])), (layer, key)


def test_reloads_recorded_model_and_moved_image_folder(tmp_path, tiny_set):
    root = export_image_folder(tiny_set, tmp_path / "images")
    out = tmp_path / "run.zarr"
    sketchmine.mine("demo", root, layers=["features.6", "classifier.6"], k=3, out=out, batch_size=40)
    moved = tmp_path / "moved"
    root.rename(moved)
    with pytest.raises(SketchmineError, match="does not exist.*--data"):
        visualize(out)
    run = visualize(out, data=moved)
    assert run.store.group["layers/features.6"].attrs["visualized"]["complete"]
    # a top-k image deleted from the dataset: named, with the hint
    victim = moved / str(run.paths[int(run.topk("classifier.6")[1][0, 0])])
    victim.unlink()
    with pytest.raises(SketchmineError, match=rf"missing.*{victim.name}.*--data"):
        visualize(out, data=moved, redo=True)


def test_bad_input(tmp_path, demo_model, tiny_set, visualized):
    run, _ = visualized
    with pytest.raises(SketchmineError, match="not in run"):
        visualize(run.path, ["features.99"], model=demo_model.module, data=tiny_set)
    with pytest.raises(SketchmineError, match="in-memory model"):
        visualize(run.path, ["features.3"], data=tiny_set)
    with pytest.raises(SketchmineError, match="other settings"):
        visualize(run.path, ["features.3"], model=demo_model.module, data=tiny_set, method="guided")
    with pytest.raises(SketchmineError, match="not the one"):
        visualize(run.path, ["features.3"], model=demo_model.module, data=ArrayDataset(
            tiny_set.images[:50], tiny_set.labels()[:50], tiny_set.class_names, tiny_set.preprocessing, {}))


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)  # one output per class of tiny_set (mine checks the width)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.amax(dim=(2, 3)))


def test_untraceable_model_and_runs_without_receptive_fields(tmp_path, tiny_set, caplog):
    model = _Branchy()
    out = tmp_path / "run.zarr"
    with caplog.at_level("WARNING", logger="sketchmine"):
        sketchmine.mine(model, tiny_set, layers=["conv", "fc"], k=2, out=out, batch_size=60)
    assert any("no receptive fields" in r.getMessage() for r in caplog.records)
    with pytest.raises(SketchmineError, match="no receptive field for layer 'conv'"):
        visualize(out, ["conv"], model=model, data=tiny_set)
    with pytest.raises(SketchmineError, match="cannot trace _Branchy"):
        visualize(out, ["fc"], model=model, data=tiny_set)


def test_partial_run_is_refused(tmp_path, demo_model, tiny_set):
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, tiny_set, layers=["features.3"], out=out, batch_size=30, flush_every=1,
                        progress=StopAfter(1, calls=True))
    with pytest.raises(SketchmineError, match="still being mined"):
        visualize(out, model=demo_model.module, data=tiny_set)


def test_a_resume_on_another_device_is_said_and_recorded(tmp_path, demo_model, tiny_set, caplog):
    """The pictures' claim records the device kind; a pass begun on a GPU and resumed on the CPU
    says so and records each stretch, and what it stores equals a CPU pass (the CPU made every
    unit here). No GPU here: the partial claim is set to the GPU's, sealed as a GPU pass seals it."""
    import logging

    from sketchmine.store import attr_sums, schema

    out = tmp_path / "run.zarr"
    sketchmine.mine(demo_model.module, tiny_set, layers=["features.3"], k=4, out=out, batch_size=50)
    shutil.copytree(out, tmp_path / "whole.zarr")
    whole = visualize(tmp_path / "whole.zarr", model=demo_model.module, data=tiny_set, batch_size=16)
    part = visualize(out, model=demo_model.module, data=tiny_set, batch_size=16, max_units=8)
    group = zarr.open_group(str(out / "layers" / "features.3"), mode="r+")
    claim = dict(group.attrs[schema.VISUALIZED])
    assert claim["device"] == "cpu" and claim["units_done"] == 8 and "devices" not in claim
    group.update_attributes({schema.VISUALIZED: attr_sums.sealed({**claim, "device": "cuda"})})
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        part = visualize(part, model=demo_model.module, data=tiny_set, batch_size=16)
    said = [r.getMessage() for r in caplog.records if "resumes its patches and deconvolutions on" in r.getMessage()]
    assert len(said) == 1 and "on cpu, begun on cuda" in said[0] and "units from 8 on" in said[0], said
    done = part.layer_attrs("features.3")[schema.VISUALIZED]
    assert done["complete"] and done["device"] == "cuda" and done["devices"] == [[0, "cuda"], [8, "cpu"]]
    assert not sketchmine.verify_run(part.path).damaged
    for key in schema.VISUAL_ARRAYS:
        np.testing.assert_array_equal(part.layer_array("features.3", key), whole.layer_array("features.3", key))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sketchmine"):  # complete: nothing to resume, nothing said
        visualize(part, model=demo_model.module, data=tiny_set, batch_size=16)
    assert not [r for r in caplog.records if "resumes its patches" in r.getMessage()]
