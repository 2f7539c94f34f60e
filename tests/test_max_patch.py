"""Patches and deconvolutions shrunk by `--max-patch`, recomputed independently of passes/.

docs/visualize.md says how a crop larger than `max_patch` is made: the box cut from the image
as the model saw it (normalisation undone, 0 outside the image), or from the unit's signal on
the whole image (0 outside), shrunk by area interpolation (each output pixel the mean of its
window, rows [⌊i·n/m⌋, ⌈(i+1)·n/m⌉)) to round(side · max_patch / longest side) pixels, then
rounded to the nearest whole grey level (patches) or quantised per shrunk crop as
128 + 127 · s / max|s| (deconvolutions). Here that is numpy on a float64 reference; the signal
is plain autograd's input gradient of the unit, whole image, no hooks: the `gradient` method on
MobileNet-v2, which has no max pool (no switch tie rule to rewrite) and whose ReLU6 derivative
is autograd's. The shrink is one function for every method; the rules are checked unshrunk in
tests/test_zoo_deconv.py.

Layers: `features.3` (19-px boxes at 64 px, deconvolved on windows, shrunk 19 → 12 where the
ratio is not whole, so area windows overlap), `features.10` (171-px boxes past every border of
the 64-px image: whole-image signal, most of the box padding) and `classifier.1` (the whole
image). Every stored entry of the top-k, bottom-k and bin pictures (`examples="all"`) of the
first units.

Tolerances: each patch pixel is a nearest whole level to its window's exact mean of the
image's levels (at most 0.5 off; a pixel of the image within HALF of a half-level, where float32
and float64 round apart, taken either way): a mean of whole levels that is not a half lies at least 1/count from one, far beyond
float32's rounding, but torch's float32 mean of a window whose exact mean is a half comes out an
ulp above or below it (measured on 19 → 12 px crops: up to 1.2e-5 off at 255), so there either
neighbour is stored; deconvolutions within 2 grey levels, as test_zoo_deconv.py measures: 1 for a rounding
boundary crossed by float32 sums in another order (a window's conv blocking, another batch), 1
for a ReLU6 input that rounding puts across 0 in another batch.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

import sketchmine

LAYERS = ["features.3", "features.10", "classifier.1"]
MAX_PATCH = 12  # under every box: features.3's 19 px, features.10's 171, the 64-px image
UNITS = 2
HALF = 1e-3  # of a grey level: float32's error undoing the normalisation is ~3e-5 (module docstring)
GREY_LEVELS = 2  # deconvolutions (module docstring)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the rgb_sketches' ImageNet normalisation


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory, rgb_sketches):
    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v2", weights=None, num_classes=10).eval()
    out = tmp_path_factory.mktemp("maxpatch") / "run.zarr"
    run = sketchmine.mine(model, rgb_sketches, layers=LAYERS, k=3, out=out, batch_size=6, distributions=True)
    sketchmine.visualize(run, LAYERS, model=model, data=rgb_sketches, method="gradient", max_units=UNITS,
                         max_patch=MAX_PATCH, examples="all")
    return model, sketchmine.open_run(out)


def area(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) → (h, w, C) float64: output pixel (i, j) the mean of rows ⌊i·H/h⌋ … ⌈(i+1)·H/h⌉ − 1
    and the columns alike (adaptive average pooling, the docs' `area`)."""
    (hh, ww), (h, w) = a.shape[:2], size
    out = np.empty((h, w, a.shape[2]))
    for i in range(h):
        r0, r1 = i * hh // h, math.ceil((i + 1) * hh / h)
        for j in range(w):
            c0, c1 = j * ww // w, math.ceil((j + 1) * ww / w)
            out[i, j] = a[r0:r1, c0:c1].reshape(-1, a.shape[2]).mean(axis=0)
    return out


def cut(a: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W, C) inside box (top, left, bottom, right) inclusive, 0 outside the image."""
    top, left, bottom, right = box
    out = np.zeros((bottom - top + 1, right - left + 1, a.shape[2]))
    y0, y1, x0, x1 = max(top, 0), min(bottom + 1, a.shape[0]), max(left, 0), min(right + 1, a.shape[1])
    out[y0 - top:y1 - top, x0 - left:x1 - left] = a[y0:y1, x0:x1]
    return out


def signal(model, x: torch.Tensor, layer: str, unit: int, yx) -> np.ndarray:
    """(H, W, C) float64 input gradient of the unit at yx (ignored for a vector layer) on image x."""
    held = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: held.update(out=o))
    try:
        x = x[None].clone().requires_grad_(True)
        model(x)
    finally:
        handle.remove()
    out = held["out"][0, unit]
    value = out[int(yx[0]), int(yx[1])] if out.ndim == 2 else out
    (grad,) = torch.autograd.grad(value, x)
    return grad[0].permute(1, 2, 0).double().numpy()


def entries(run, layer: str) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Each picture set's (image index (U, n), positions (U, n, 2)) and its group ("" for the top-k's)."""
    _, index, yx = run.topk(layer)
    _, bottom, bottom_yx = run.bottomk(layer)
    bins = np.asarray(run.quantile_examples(layer)).reshape(run.layer_shape(layer)[0], -1)
    bins_yx = run.layer_group(layer)["bin_pictures"]["yx"][:]
    return {"": (index, yx), "bottom_pictures": (bottom, bottom_yx), "bin_pictures": (bins, bins_yx)}


def test_shrunk_patches_and_deconvolutions_equal_a_reference(shrunk, rgb_sketches):
    model, run = shrunk
    images = [rgb_sketches[i][1] for i in range(len(rgb_sketches))]
    # the levels the model saw: the 64-px input is a bilinear resize, not whole levels, and a value
    # within float32's error of a half (the pass undoes the normalisation in float32) may round either way
    levels = [(x.double().permute(1, 2, 0).numpy() * STD + MEAN) * 255 for x in images]
    low, high = ([np.clip(np.round(v + d), 0, 255) for v in levels] for d in (-HALF, HALF))
    hw = images[0].shape[-2:]
    seen = {"shrunk": 0, "past the border": 0}
    for layer in LAYERS:
        rf = run.layer_attrs(layer).get("receptive_field")
        grid = rf is not None and len(run.layer_shape(layer)) == 3
        source = tuple(rf["size"]) if grid else tuple(hw)
        scale = MAX_PATCH / max(source)
        size = tuple(max(1, round(s * scale)) for s in source)
        assert run.layer_attrs(layer)["visualized"]["patch_size"] == list(size), layer
        for group, (index, yx) in entries(run, layer).items():
            g = run.layer_group(layer)[group] if group else run.layer_group(layer)
            stored_p, stored_d, boxes = g["patches"][:UNITS], g["deconv"][:UNITS], g["boxes"][:UNITS]
            for u in range(UNITS):
                for j, i in enumerate(index[u]):
                    if i < 0:  # an empty slot
                        continue
                    where = f"{layer} {group or 'top-k'} unit {u} entry {j}"
                    if grid:
                        top, left = (int(o + s * p) for o, s, p in zip(rf["offset"], rf["stride"], yx[u, j]))
                        box = (top, left, top + source[0] - 1, left + source[1] - 1)
                    else:
                        box = (0, 0, hw[0] - 1, hw[1] - 1)
                    assert tuple(boxes[u, j]) == box, where
                    seen["past the border"] += box[0] < 0 or box[2] >= hw[0]
                    seen["shrunk"] += size != source
                    lo, hi = (area(cut(a[i], box), size) for a in (low, high))  # exact means of whole levels
                    p = stored_p[u, j].astype(float)
                    off = float(np.maximum(lo - 0.5 - p, p - hi - 0.5).max())
                    assert off <= 0, f"{where}: a stored patch pixel is {off + 0.5:.3f} levels from its window's mean"
                    s = area(cut(signal(model, images[i], layer, u, yx[u, j]), box), size)
                    peak = np.abs(s).max()
                    assert peak > 0, where
                    want_d = np.clip(np.round(128 + 127 * s / peak), 0, 255)
                    levels = int(np.abs(stored_d[u, j].astype(int) - want_d).max())
                    assert levels <= GREY_LEVELS, f"{where}: the stored deconvolution is off by {levels} grey levels"
    assert seen["shrunk"] and seen["past the border"], seen
