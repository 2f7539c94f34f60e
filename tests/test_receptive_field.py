"""Receptive fields from the graph: the seed's table, and agreement with the empirical field
(non-zero input gradient of one unit) on plain, residual and Inception models."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from sketchmine import receptive_fields
from sketchmine.errors import SketchmineError


def convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_seed_table_alexnet_and_vgg19():
    alex = torchvision.models.alexnet()
    rf = receptive_fields(alex, 224)
    assert [rf[n].size for n in convs(alex)] == [(s, s) for s in (11, 51, 99, 131, 163)]
    vgg = torchvision.models.vgg19()
    rf = receptive_fields(vgg, 224)
    want = (3, 5, 10, 14, 24, 32, 40, 48, 68, 84, 100, 116, 156, 188, 220, 252)
    assert [rf[n].size[0] for n in convs(vgg)] == list(want)
    assert rf["classifier.6"].size == (224, 224) and rf["classifier.6"].stride == (0, 0)


def _linearised(model: nn.Module) -> nn.Module:
    """Same geometry, every path passes gradient: positive weights, no bias, no norm,
    max-pooling swapped for average pooling of the same window; positive inputs keep every
    ReLU in its linear part."""
    m = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(0)
    for _, mod in list(m.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(mod, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                      ceil_mode=child.ceil_mode, count_include_pad=True))
            elif isinstance(child, nn.BatchNorm2d):
                setattr(mod, child_name, nn.Identity())
    for p_name, p in m.named_parameters():
        with torch.no_grad():
            if p_name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.rand(p.shape, generator=g) + 0.1)
    return m


def _empirical_box(model: nn.Module, layer: str, size: int, channel: int = 0) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Bounding box of the input pixels with non-zero gradient for the centre unit of `layer`."""
    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    x = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) + 0.1).requires_grad_()
    try:
        model(x)
    finally:
        handle.remove()
    o = out["o"]
    y, xx = o.shape[2] // 2, o.shape[3] // 2
    o[0, channel, y, xx].backward()
    rows, cols = np.nonzero(x.grad[0].abs().sum(0).numpy())
    return (rows.min(), cols.min(), rows.max(), cols.max()), (y, xx)


@pytest.mark.parametrize("name,layers", [
    ("vgg19", ["features.5", "features.19", "features.34"]),
    ("resnet18", ["layer1.0.conv2", "layer2.1.conv1", "layer3.0.downsample.0", "layer4.1.conv2"]),
    ("resnet50", ["layer2.0.conv3", "layer3.2.conv2"]),
    ("googlenet", ["inception3a.branch3.1.conv", "inception4c.branch4.1.conv", "inception5b.branch2.1.conv"]),
    # pools called as functions (F.max_pool2d, F.avg_pool2d) and a channel shuffle's transpose:
    # both had no fields at all (the first unknown op dropped every layer's)
    ("inception_v3", ["Conv2d_1a_3x3.conv", "Mixed_5b.branch_pool.conv", "Mixed_6a.branch3x3.conv"]),
    ("shufflenet_v2_x0_5", ["conv1.0", "stage2.0.branch1.0", "stage3.1.branch2.3"]),
])
def test_graph_field_equals_empirical_field(name, layers, monkeypatch):
    kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kw).eval()
    size = 160
    rf = receptive_fields(model, size)
    lin = _linearised(model)
    # the empirical field needs every window position to pass gradient: functional max pools too
    monkeypatch.setattr(torch.nn.functional, "max_pool2d", lambda x, kernel_size, stride=None, padding=0, **_:
                        torch.nn.functional.avg_pool2d(x, kernel_size, stride, padding, count_include_pad=True))
    for layer in layers:
        (t, l, b, r), (y, x) = _empirical_box(lin, layer, size)
        top, left, bottom, right = rf[layer].box(y, x)
        want = (max(top, 0), max(left, 0), min(bottom, size - 1), min(right, size - 1))
        assert (t, l, b, r) == want, f"{name} {layer}: empirical {(t, l, b, r)} vs graph {want}"


def test_untraceable_model_is_named():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not traceable
                return self.conv(x)
            return x

    with pytest.raises(SketchmineError, match="cannot trace Branchy"):
        receptive_fields(Branchy(), 32)


class _Pixels(nn.Module):
    """Two convs with an op between them that may move pixels along H or W."""

    def __init__(self, between, padding: int | str = 0):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=padding)
        self.c2 = nn.Conv2d(4, 4, 3, padding=padding if isinstance(padding, str) else 2 * padding, dilation=2)
        self.between = between

    def forward(self, x):
        return self.c2(self.between(self.c1(x)))


@pytest.mark.parametrize("between", [lambda y: y[:, :, 4:, 4:], lambda y: torch.cat([y, y], dim=2),
                                     lambda y: y.chunk(2, dim=-1)[1]])
def test_ops_that_move_pixels_along_h_or_w_are_refused(between):
    with pytest.raises(SketchmineError, match=r"indexes, joins or splits the height or width"):
        receptive_fields(_Pixels(between), 24)


@pytest.mark.parametrize("between", [lambda y: y.transpose(2, 3), lambda y: y.permute(0, 1, 3, 2),
                                     lambda y: torch.transpose(y, -1, -2)])
def test_transposes_that_move_the_grid_are_refused(between):
    """A transpose or permute is pointwise only when H and W stay the last two dims in order
    (a square map transposed keeps its shape, not its pixels)."""
    with pytest.raises(SketchmineError, match="not supported"):
        receptive_fields(_Pixels(between), 24)


def test_ops_that_keep_the_grid_are_pointwise():
    """Channels indexed, joined or split: each output pixel is still the input pixel at the
    same place, so the field is the plain stack's (checked against the empirical field)."""
    plain = receptive_fields(_Pixels(lambda y: y), 24)["c2"]
    for between in (lambda y: torch.cat([y[:, 2:], y[:, :2]], dim=1), lambda y: torch.cat([y, y], dim=1)[:, 2:6],
                    lambda y: torch.cat(y.chunk(2, dim=1)[::-1], dim=1),
                    lambda y: y.unflatten(1, (2, 2)).transpose(1, 2).flatten(1, 2),  # a channel shuffle
                    lambda y: y.unflatten(1, (2, 2)).permute(0, 2, 1, 3, 4).flatten(1, 2)):
        model = _Pixels(between)
        assert receptive_fields(model, 24)["c2"] == plain
        (t, l, b, r), (y, x) = _empirical_box(_linearised(model), "c2", 24)
        assert (t, l, b, r) == plain.box(y, x)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_and_valid_padding_are_their_numbers():
    for word, number in (("same", 1), ("valid", 0)):
        assert receptive_fields(_Pixels(lambda y: y, word), 24) == receptive_fields(_Pixels(lambda y: y, number), 24)
    asym = nn.Sequential(nn.Conv2d(3, 4, (4, 3), padding="same"))  # even kernel: torch pads 1 above, 2 below
    assert receptive_fields(asym, 16)["0"].offset == (-1, -1)
    (t, l, b, r), (y, x) = _empirical_box(_linearised(asym), "0", 16)
    top, left, bottom, right = receptive_fields(asym, 16)["0"].box(y, x)
    assert (t, l, b, r) == (max(top, 0), max(left, 0), min(bottom, 15), min(right, 15))


def test_each_module_keeps_its_own_training_flag():
    model = torchvision.models.resnet18(weights=None).train()
    model.bn1.eval()  # a frozen BatchNorm inside a model being trained
    receptive_fields(model, 64)
    assert model.training and not model.bn1.training and model.layer1[0].bn1.training


def test_a_module_called_twice_has_no_single_field():
    rf = receptive_fields(torchvision.models.resnet18(weights=None), 64)
    assert "layer1.0.relu" not in rf  # applied after bn1 and after the addition: two fields
    assert "layer1.0.bn1" in rf and "layer1.0" in rf


class _Gated(nn.Module):
    """conv, a squeeze-excitation gate spelled three ways (or its expand_as), conv."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, stride=2)
        self.fc = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        s = torch.sigmoid(self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 1)))
        if self.spelling == "mul":
            h = s * h
        elif self.spelling == "method":
            h = h.mul(s) + s  # a scale and a shift
        elif self.spelling == "div":
            h = torch.div(h, s + 1)
        else:  # the gate's own values over the map: whole-image features, not a gate
            h = s.expand_as(h) * h
        return self.conv2(h)


@pytest.mark.parametrize("spelling", ["mul", "method", "div", "expand_as"])
def test_a_gate_from_the_whole_image_is_not_part_of_the_field(spelling):
    """A per-channel gate (one value per channel from a global pooling) scales a whole map alike, as a
    GroupNorm's statistics do: the conv after it has the window of the convs, not the whole image
    (every layer after EfficientNet's first block had the whole image). An expand_as of the gate
    holds the gate's values at every position: that product stays whole-image."""
    fields = receptive_fields(_Gated(spelling), (1, 24, 24))
    if spelling == "expand_as":
        assert fields["conv2"].stride == (0, 0)
    else:
        assert (fields["conv2"].size, fields["conv2"].stride) == ((5, 5), (2, 2))
