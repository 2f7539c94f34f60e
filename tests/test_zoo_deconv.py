"""`visualize`'s deconvolutions of torchvision architectures against an independent reference.

The reference (tests/deconv_reference.py) is plain torch and shares no code with
passes/deconv*.py: a TorchFunctionMode catches every rectifier call (nn modules reach it through their functional call: nn.ReLU →
F.relu, nn.ReLU6 → F.hardtanh, nn.SiLU → F.silu, nn.Hardswish → F.hardswish; DenseNet's own
F.relu; ResNeXt's one ReLU module called three times) and runs it out of place through an
autograd.Function whose backward is the method's rule with the derivative written out by hand
(docs/visualize.md: deconvnet rectifies the signal, guided rectifies it and multiplies by f'(x),
gradient multiplies by f'(x)); it catches nn.MaxPool2d's F.max_pool2d too, whose switch takes
the documented tie rule (below). The gates (Sigmoid, Hardsigmoid), BatchNorm in eval and the
convs' transposed filters are autograd's. The unit's value at its stored
position on its own top-k image (whole image, forward stopped at the layer) is the seed; the
signal is cropped to the stored box, 0 outside the image.

Checked for the top-3 entries of the first unit of 4 layers spread over depth in each model
(windowed grid layers, whole-image ones behind a squeeze-excitation gate or with boxes larger
than the 64-px image, the head), every method:
- the reference's unit value is the stored top-k value (the seed is the unit the run ranked);
- where the layer is deconvolved on windows, `Deconvolver.field_crops` (visualize's path) gives
  the whole-image reference inside the box within 1e-4 of the crop's largest magnitude: the same
  ops in another order (a window of another size gets another conv blocking) round otherwise,
  measured at most 4e-7 here;
- the stored uint8 picture is the reference quantised as docs/visualize.md says (128 + 127 · s /
  max|s|) within 2 grey levels: 1 for a rounding boundary crossed, 1 for a rectifier's input
  that float32 rounding puts on the other side of 0 in another batch (plain autograd on one
  ResNeXt-50 image alone and in a batch of 3 differs by 5.8e-3 of the peak, 0.74 grey levels;
  measured here at most 1 level).
Max pools take the documented tie rule (the first input in raster order within 10⁻⁵ · |max| of
a window's maximum), written here with F.unfold: over a blank background a window's inputs are
tied, and which one autograd picks follows the rounding of the conv before it, which a window cut
by the border rounds otherwise (the SqueezeNet corner test).
A wrong rule (a rectifier left as the gradient, guided without f'), windows not aligned to the
stride, a gated layer computed on windows, a crop moved by a row, or another scale each fail
this test (each tried once on the source).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import sketchmine
from sketchmine.model.field_record import recorded_field
from sketchmine.passes.deconv import Deconvolver
from tests.deconv_reference import Rules

SIZE = 64  # the rgb_sketches fixture's (conftest.py)
K, UNITS = 3, 1  # the top-3 of the first unit of each layer
MAX_PATCH = 256  # no crop shrunk: a deep layer's box at 64 px is larger than the image
TOLERANCE = 1e-4  # of a window's largest magnitude: float32 sums in another order (docstring)
GREY_LEVELS = 2  # the stored picture's rounding, and a rectifier's input rounded across 0 (docstring)

# per model: layers spread over depth, the last its linear head
CASES = {
    # concatenations, a max pool in the stem, DenseNet's functional F.relu before the head
    "densenet121": ["features.conv0", "features.denseblock1.denselayer2.conv1", "features.transition1.conv",
                    "classifier"],
    # ReLU6 (a Hardtanh), inverted residuals
    "mobilenet_v2": ["features.1.conv.0.0", "features.3", "features.10", "classifier.1"],
    # Hardswish, squeeze-excitation gates (ReLU + Hardsigmoid), an in-place residual add
    "mobilenet_v3_small": ["features.1.block.0.0", "features.2.block.2.0", "features.4", "classifier.3"],
    # SiLU, squeeze-excitation gates (SiLU + Sigmoid), stochastic depth in eval
    "efficientnet_b0": ["features.1.0.block.0.0", "features.2.1", "features.4.0.block.0.0", "classifier.1"],
    # grouped convs, squeeze-excitation gates (ReLU + Sigmoid)
    "regnet_y_400mf": ["trunk_output.block1.block1-0.f.a.0", "trunk_output.block1.block1-0.f.c.0",
                       "trunk_output.block2.block2-1", "fc"],
    # fire modules (concatenations), ceil-mode max pools, a conv read before its in-place ReLU
    "squeezenet1_1": ["features.0", "features.3.expand3x3", "features.6", "features.9.expand1x1"],
    # each block's one ReLU module called three times, grouped convs
    "resnext50_32x4d": ["layer1.0.conv2", "layer1.2", "layer2.0.conv1", "fc"],
}
METHODS = ("deconvnet", "guided", "gradient")
# the rectifiers and max pools each model's layers above reach through (nn.ReLU6 is a Hardtanh)
RECTIFIERS = {"densenet121": {"relu", "max_pool2d"}, "mobilenet_v2": {"hardtanh"},
              "mobilenet_v3_small": {"relu", "hardswish"}, "efficientnet_b0": {"silu"}, "regnet_y_400mf": {"relu"},
              "squeezenet1_1": {"relu", "max_pool2d"}, "resnext50_32x4d": {"relu", "max_pool2d"}}


# ---- the reference (tests/deconv_reference.py) ----------------------------------------------

class _Stop(Exception):
    pass


def reference(model: torch.nn.Module, images: torch.Tensor, layer: str, units, yx, method: str
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """(N, C, H, W) whole-image signal of unit units[n] at yx[n] on images[n] (one forward: the
    images of a batch do not meet in eval mode), the units' values, the rectifier calls the
    rules took."""
    held = {}

    def stop(module, args, out):
        held["out"] = out
        raise _Stop

    handle = model.get_submodule(layer).register_forward_hook(stop)
    x = images.clone().requires_grad_(True)
    rules = Rules(method)
    try:
        with torch.enable_grad(), rules:
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    out, n = held["out"], torch.arange(len(x))
    values = out[n, units, yx[:, 0], yx[:, 1]] if out.ndim == 4 else out[n, units]
    (grad,) = torch.autograd.grad(values.sum(), x)
    return grad, values.detach(), rules.calls


def crop(signal: torch.Tensor, box) -> torch.Tensor:
    """signal (C, H, W) inside box (top, left, bottom, right) inclusive, 0 outside the image."""
    top, left, bottom, right = (int(v) for v in box)
    h, w = signal.shape[-2:]
    out = signal.new_zeros((signal.shape[0], bottom - top + 1, right - left + 1))
    y0, y1, x0, x1 = max(top, 0), min(bottom + 1, h), max(left, 0), min(right + 1, w)
    out[:, y0 - top:y1 - top, x0 - left:x1 - left] = signal[:, y0:y1, x0:x1]
    return out


def quantised(signal: torch.Tensor) -> np.ndarray:
    """(H, W, C) uint8 as the docs store a crop: 128 + 127 · s / max|s| (128 where s is all 0)."""
    peak = float(signal.abs().max())
    scaled = signal / peak if peak > 0 else signal * 0
    return (128 + 127 * scaled).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ---- the comparison ------------------------------------------------------------------------

_MINED: dict[str, tuple] = {}


def _mined(arch: str, sketches, root) -> tuple:
    """(model, run) of `arch`, mined once for its three methods."""
    if arch not in _MINED:
        _MINED.clear()
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
        run = sketchmine.mine(model, sketches, layers=CASES[arch], k=K, out=root / f"{arch}.zarr", batch_size=6)
        _MINED[arch] = model, run
    return _MINED[arch]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(CASES))
def test_stored_deconvolutions_equal_the_reference(tmp_path_factory, rgb_sketches, arch, method):
    model, run = _mined(arch, rgb_sketches, tmp_path_factory.getbasetemp())
    layers = CASES[arch]
    sketchmine.visualize(run, layers, model=model, data=rgb_sketches, method=method, max_units=UNITS, redo=True,
                         max_patch=MAX_PATCH)
    decon = Deconvolver(model, method)
    images = torch.stack([rgb_sketches[i][1] for i in range(len(rgb_sketches))])
    units = torch.arange(UNITS).repeat_interleave(K)
    windowed, whole, met = [], [], set()
    for layer in layers:
        values, index, yx = run.topk(layer)
        image_of = torch.from_numpy(index[:UNITS].reshape(-1))
        at = torch.from_numpy(yx[:UNITS].reshape(-1, 2).astype(np.int64))
        boxes = run.layer_array(layer, "boxes", slice(0, UNITS)).reshape(-1, 4)
        stored = run.layer_array(layer, "deconv", slice(0, UNITS)).reshape(-1, *run.array_shape(layer, "deconv")[2:])
        want, got_values, calls = reference(model, images[image_of], layer, units, at, method)
        where = f"{arch} {layer} ({method})"
        met |= set(calls)
        np.testing.assert_allclose(got_values.numpy(), values[:UNITS].reshape(-1), rtol=1e-4, atol=1e-5,
                                   err_msg=f"{where}: the seed is not the unit the run ranked")
        want = torch.stack([crop(w, b) for w, b in zip(want, boxes)])
        peaks = want.abs().amax(dim=(1, 2, 3))
        assert peaks.min() > 0, where
        window = len(run.layer_shape(layer)) == 3 and decon.windowable(layer)
        field = recorded_field(run.layer_attrs(layer)["receptive_field"]) if window else None
        if window and max(field.size) < SIZE:  # the claim: a window gives the whole image's signal in the box
            windowed.append(layer)
            got = decon.field_crops(images, image_of, layer, units, at, field)
            err = float(((got - want).abs().amax(dim=(1, 2, 3)) / peaks).max())
            assert err <= TOLERANCE, f"{where}: the window's signal is off by {err:.2e} of its peak"
        else:
            whole.append(layer)
        levels = max(int(np.abs(s.astype(int) - quantised(w).astype(int)).max()) for s, w in zip(stored, want))
        assert levels <= GREY_LEVELS, f"{where}: the stored picture is off by {levels} grey levels"
    # both paths were taken (windows of the image, the whole image cropped), and every rectifier's rule
    assert windowed and whole, (arch, windowed, whole)
    assert met == RECTIFIERS[arch], (arch, met)


@pytest.mark.parametrize("method", METHODS)
def test_a_window_cut_by_the_border_breaks_pool_ties_as_the_whole_image(rgb_sketches, method):
    """SqueezeNet 1.1's `features.3.expand1x1` unit 57 at the far corner (14, 14) of sketch 8: the
    border cuts its window to 8 px, whose 3x3 stem conv rounds about 30 % of its outputs an ulp off
    the whole image's, and its last max pool's exact ties over the blank background with them.
    Autograd's switches followed that ulp (0.43 of the peak apart, gradient; 0.07 deconvnet); the
    tie rule gives the window the whole image's switches, and the reference's."""
    torch.manual_seed(0)
    model = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=10).eval()
    layer, unit, at = "features.3.expand1x1", torch.tensor([57]), torch.tensor([[14, 14]])
    field = sketchmine.receptive_fields(model, (3, SIZE, SIZE))[layer]
    images = torch.stack([rgb_sketches[i][1] for i in range(len(rgb_sketches))])
    decon = Deconvolver(model, method)
    got = decon.field_crops(images, torch.tensor([8]), layer, unit, at, field)[0]
    box = field.box(14, 14)
    want = crop(reference(model, images[[8]], layer, unit, at, method)[0][0], box)
    whole = crop(decon(images[[8]], layer, unit, at)[0], box)
    peak = float(want.abs().max())
    assert peak > 0
    for name, other in (("the reference", want), ("its own whole-image deconvolution", whole)):
        err = float((got - other).abs().max()) / peak
        assert err <= TOLERANCE, f"{method}: the corner window is off {name} by {err:.2e} of the peak"
