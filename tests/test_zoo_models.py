"""torchvision architectures no other test mines, handled through their graph alone: DenseNet's
concatenations, MobileNet-v2/v3's and EfficientNet's inverted residuals (squeeze-excitation gates,
stochastic depth in eval, an in-place residual add after the block), RegNet's and ResNeXt's grouped
convs, MNASNet, SqueezeNet's fire modules. Random init, eval mode, 64-px real sketches.

Each model: convs inside the blocks, block outputs and the gates are mined and equal plain forward
hooks + a brute top-k; the run's fields are `receptive_fields`' and hold every pixel that reaches
corner, border and centre units (autograd's input-gradient support); `visualize` cuts its patches
at those boxes. A squeeze-excitation gate (one value per channel from a global pooling) scales a
whole map alike: as a GroupNorm's statistics it is not part of a unit's field (receptive_field.py),
so the gradient that checks a box is taken with the gates' scale detached, and the layers behind a
gate have windows, not the whole image.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import sketchmine
from sketchmine.model.field_record import recorded_field
from torchvision.ops.misc import SqueezeExcitation
from tests.helpers import topk_equals_hooks

SIZE = 64  # the rgb_sketches fixture's (conftest.py)

# per model: (layers mined, the grid layers whose boxes the gradient checks, one grid layer visualized)
CASES = {
    "densenet121": (["features.conv0", "features.denseblock1", "features.denseblock2.denselayer1.conv2",
                     "features.transition2", "classifier"],
                    ["features.denseblock1", "features.denseblock2.denselayer1.conv2"],
                    "features.denseblock2.denselayer1.conv2"),
    "mobilenet_v2": (["features.3", "features.7.conv.1.0", "features.14.conv.0.0", "classifier.1"],
                     ["features.3", "features.7.conv.1.0"], "features.7.conv.1.0"),
    # features.1.block.1 is a squeeze-excitation block; features.4 adds its input in place
    "mobilenet_v3_small": (["features.0.0", "features.1.block.1", "features.4", "features.9.block.2.fc1",
                            "classifier.3"], ["features.0.0", "features.1.block.1", "features.4"], "features.4"),
    # features.2.1: stochastic depth (eval) and an in-place residual add; features.3.0.block.2: the gate
    "efficientnet_b0": (["features.1.0.block.0.0", "features.2.1", "features.3.0.block.2", "features.6.2.block.3.0",
                         "classifier.1"], ["features.1.0.block.0.0", "features.2.1", "features.6.2.block.3.0"],
                        "features.1.0.block.0.0"),
    "regnet_y_400mf": (["stem.0", "trunk_output.block1.block1-0.f.b.0", "trunk_output.block2.block2-1",
                        "trunk_output.block2.block2-1.f.se", "fc"],
                       ["trunk_output.block1.block1-0.f.b.0", "trunk_output.block2.block2-1"],
                       "trunk_output.block1.block1-0.f.b.0"),
    "mnasnet0_5": (["layers.3", "layers.9.1", "layers.10.0.layers.3", "classifier.1"],
                   ["layers.3", "layers.9.1", "layers.10.0.layers.3"], "layers.9.1"),
    # fire modules: a 1x1 and a 3x3 branch concatenated
    "squeezenet1_1": (["features.0", "features.3", "features.6.expand3x3", "classifier.1"],
                      ["features.3", "features.6.expand3x3", "classifier.1"], "features.3"),
    "resnext50_32x4d": (["layer1.0.conv2", "layer2.1", "fc"], ["layer1.0.conv2", "layer2.1"], "layer1.0.conv2"),
}


class _Reached(Exception):
    """Raised by the hook once the layer's output is held: the rest of the forward is not needed."""


def _reached(model: torch.nn.Module, layer: str, seed: int) -> dict[tuple[int, int], torch.Tensor]:
    """(y, x) → (H, W) bool: the pixels whose gradient of unit (y, x) of `layer` (its channels
    summed) is non-zero, for the corner, border-middle and centre units, on a random input; each
    squeeze-excitation gate's scale detached (the pattern's pixels, not the whole map's statistic)."""
    got: list[torch.Tensor] = []

    def hold(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        got.append(output)
        raise _Reached

    def gate_detached(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return module._scale(inputs[0]).detach() * inputs[0]

    handles = [m.register_forward_hook(gate_detached) for m in model.modules() if isinstance(m, SqueezeExcitation)]
    handle = dict(model.named_modules())[layer].register_forward_hook(hold)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_(True)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        for h in [handle, *handles]:
            h.remove()
    out = got[0]
    h, w = out.shape[-2:]
    units = [(y, xx) for y in sorted({0, h // 2, h - 1}) for xx in sorted({0, w // 2, w - 1})]
    picked = torch.stack([out[0, :, y, xx].sum() for y, xx in units])
    (grad,) = torch.autograd.grad(picked, x, torch.eye(len(units), dtype=x.dtype), is_grads_batched=True)
    return {u: g[0].abs().sum(0) > 0 for u, g in zip(units, grad)}


@pytest.mark.parametrize("arch", list(CASES))
def test_zoo_model_mined_fielded_and_visualized(tmp_path, rgb_sketches, arch):
    sketches = rgb_sketches
    layers, checked, shown = CASES[arch]
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    run = sketchmine.mine(model, sketches, layers=layers, k=3, out=tmp_path / "r.zarr", batch_size=6)
    assert run.complete and run.layers == layers

    topk_equals_hooks(run, model, sketches, layers)

    fields = sketchmine.receptive_fields(model, (3, SIZE, SIZE))
    stored = {n: recorded_field(run.layer_attrs(n)["receptive_field"]) for n in checked}
    assert stored == {n: fields[n] for n in checked}
    assert any(f.stride != (0, 0) and max(f.size) < SIZE for f in stored.values())  # some boxes are windows
    assert all(f.stride != (0, 0) for f in stored.values()), stored  # behind a squeeze-excitation gate too
    for name in checked:
        f = stored[name]
        for (y, x), support in _reached(model, name, 0).items():
            assert support.any(), (name, y, x)
            top, left, bottom, right = f.box(y, x) if f.stride != (0, 0) else (0, 0, SIZE - 1, SIZE - 1)
            rows, cols = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
            assert top <= rows.min() and rows.max() <= bottom and left <= cols.min() and cols.max() <= right, \
                (name, (y, x), f, (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())))

    sketchmine.visualize(run, [shown], model=model, data=sketches, max_units=2)
    g = run.store.group[f"layers/{shown}"]
    boxes = np.asarray(g["boxes"][:2])
    _, _, yx = run.topk(shown)
    f = fields[shown]
    for c in range(2):
        for s in range(run.k):
            want = f.box(*yx[c, s]) if f.stride != (0, 0) else (0, 0, SIZE - 1, SIZE - 1)
            assert tuple(boxes[c, s]) == tuple(want), (shown, c, s)
