"""Receptive fields against the support of autograd gradients, on random branched graphs.

An independent reference: for every unit of every layer with a field, the input pixels whose
gradient is non-zero, on random non-zero weights and inputs (three draws, so that a cancellation
or a max-pool switch does not hide a pixel), must lie in the unit's box. The graphs mix what the
sequential fuzz (test_field_fuzz.py) does not: residual additions and concatenations of branches
with other kernels, depthwise and grouped convs, functional pools with ceil_mode, adaptive pools,
constant and copying pads, transposed convs and upsamplings (each unit's own box: field_tables.py),
at odd sizes; a graph is refused only for a copying pad the analysis cannot follow (past a global
pooling every unit sees the whole image, which holds whatever they do).

And an index that keeps the grid's size but not its order (rows reversed by a tensor index) moved
pixels to units whose box did not hold them, silently: now refused.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sketchmine import SketchmineError, receptive_fields
from tests.helpers import pixels_reached


class Pool(nn.Module):
    """F.max_pool2d / F.avg_pool2d in forward (traced as functions)."""

    def __init__(self, kind: str, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], ceil: bool) -> None:
        super().__init__()
        self.kind, self.k, self.s, self.p, self.ceil = kind, k, s, p, ceil

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, self.k, self.s, self.p, 1, self.ceil)
        return F.avg_pool2d(x, self.k, self.s, self.p, self.ceil)


class Branches(nn.Module):
    """Two branches joined by an addition or a channel concatenation."""

    def __init__(self, a: nn.Module, b: nn.Module, join: str) -> None:
        super().__init__()
        self.a, self.b, self.join = a, b, join

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        return a + b if self.join == "add" else torch.cat([a, b], 1)[:, :a.shape[1]]


def _block(r: random.Random, c: int) -> nn.Module:
    kind = r.choice(["conv", "conv", "depthwise", "max", "avg", "pool", "adaptive", "add", "cat", "pad", "copy",
                     "relu", "transposed", "upsample"])
    if kind == "conv":
        s = (r.randint(1, 3), r.randint(1, 3))
        pad = r.choice([0, 1, 2, (r.randint(0, 2), r.randint(0, 2))] + (["same", "valid"] if s == (1, 1) else []))
        return nn.Conv2d(c, c, (r.randint(1, 4), r.randint(1, 4)), s, pad, (r.randint(1, 2), r.randint(1, 2)),
                         groups=r.choice([1, c]), padding_mode=r.choice(["zeros", "zeros", "reflect", "replicate"]))
    if kind == "depthwise":
        return nn.Conv2d(c, c, r.randint(2, 5), r.randint(1, 2), r.randint(0, 2), groups=c)
    if kind in ("max", "avg", "pool"):
        k, s = (r.randint(1, 4), r.randint(1, 4)), (r.randint(1, 3), r.randint(1, 3))
        p, ceil = (r.randint(0, k[0] // 2), r.randint(0, k[1] // 2)), r.random() < 0.5
        if kind == "max":
            return nn.MaxPool2d(k, s, p, r.randint(1, 2), ceil_mode=ceil)
        if kind == "avg":
            return nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=r.random() < 0.5)
        return Pool(r.choice(["max", "avg"]), k, s, p, ceil)
    if kind == "adaptive":
        return r.choice([nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d])(r.choice([1, 2, 3, (2, 3)]))
    if kind in ("add", "cat"):
        s, ka, kb = r.randint(1, 2), r.choice([1, 3, 5]), r.choice([1, 3, 5, 7])
        return Branches(nn.Sequential(nn.Conv2d(c, c, ka, s, ka // 2), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1)),
                        nn.Conv2d(c, c, kb, s, kb // 2), kind)
    if kind == "pad":
        return nn.ZeroPad2d(tuple(r.randint(-1, 2) for _ in range(4)))
    if kind == "copy":
        pads = tuple(r.randint(0, 2) for _ in range(4))
        pad = nn.ReflectionPad2d(pads) if r.random() < 0.5 else nn.ReplicationPad2d(pads)
        return nn.Sequential(pad, nn.Conv2d(c, c, r.randint(3, 5)))
    if kind == "relu":
        return nn.ReLU()
    if kind == "transposed":
        return nn.ConvTranspose2d(c, c, r.randint(2, 4), r.randint(1, 2))
    return nn.Upsample(scale_factor=2, mode=r.choice(["nearest", "bilinear"]))


def _support(model: nn.Module, names: list[str], h: int, w: int, c: int) -> dict[str, torch.Tensor]:
    """{layer: (oh, ow, h, w) bool}: the pixels whose gradient of the layer's unit (y, x), summed
    over channels, is non-zero, for any of three draws of weights and input."""
    out: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for draw in range(3):
        g = torch.Generator().manual_seed(draw)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        x = (torch.randn(1, c, h, w, generator=g, dtype=torch.float64) + 0.3).requires_grad_(True)
        for n, s in pixels_reached({n: modules[n] for n in names}, model, x).items():
            out[n] = s | out[n] if n in out else s
    return out


@pytest.mark.parametrize("seed", range(24))
def test_every_unit_of_a_random_branched_graph_reads_only_its_box(seed):
    r = random.Random(seed)
    c = 2
    model = nn.Sequential(*[_block(r, c) for _ in range(r.randint(2, 4))]).double().eval()
    h, w = r.randint(7, 21), r.randint(7, 21)
    try:
        with torch.no_grad():
            model(torch.ones(1, c, h, w, dtype=torch.float64))
    except RuntimeError:
        pytest.skip("torch refuses the graph at this size")
    try:
        fields = receptive_fields(model, (h, w), channels=c)
    except SketchmineError as exc:
        assert "pads by" in str(exc) or "feeds" in str(exc), exc  # copying pads past the kernel's reach
        return
    modules = dict(model.named_modules())
    names = [n for n in fields if n in modules and n]
    rows, cols = torch.arange(h), torch.arange(w)
    for name, support in _support(model, names, h, w, c).items():
        f = fields[name]
        for y in range(support.shape[0]):
            for x in range(support.shape[1]):
                reached = support[y, x]
                if not reached.any():
                    continue
                top, left, bottom, right = f.box(y, x) if f.stride != (0, 0) else (0, 0, h - 1, w - 1)
                ys, xs = rows[reached.any(1)], cols[reached.any(0)]
                assert top <= ys.min() and ys.max() <= bottom and left <= xs.min() and xs.max() <= right, \
                    (name, (y, x), f, (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())))


class Reorder(nn.Module):
    """A conv, an index on its output, a conv: the index given as in forward."""

    def __init__(self, index) -> None:
        super().__init__()
        self.a, self.b, self.index = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), index
        self.register_buffer("rows", torch.arange(10).flip(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.index(self, self.a(x)))


@pytest.mark.parametrize("index", [lambda m, x: x[:, :, m.rows], lambda m, x: x[..., m.rows],
                                   lambda m, x: x[:, :, :, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]],
                         ids=["rows", "columns after ...", "a list"])
def test_an_index_that_reorders_rows_or_columns_is_refused(index):
    model = Reorder(index).eval()
    x = torch.randn(1, 1, 12, 12, requires_grad=True)
    acts: dict[str, torch.Tensor] = {}
    model.b.register_forward_hook(lambda m, i, o: acts.__setitem__("b", o))
    model(x)
    (grad,) = torch.autograd.grad(acts["b"][0, 0, 0, 0], x)
    assert grad[0, 0, 7:].abs().sum() > 0 or grad[0, 0, :, 7:].abs().sum() > 0  # unit (0, 0) reads the far side
    with pytest.raises(SketchmineError, match=r"receptive fields: getitem at \w+ indexes the height or width"):
        receptive_fields(model, (12, 12), channels=1)


@pytest.mark.parametrize("index", [lambda m, x: x[:, [1, 0]], lambda m, x: x[..., 0:, :], lambda m, x: x[:, None][:, 0]],
                         ids=["channels", "whole rows", "a new dim"])
def test_an_index_that_keeps_the_grid_keeps_the_field(index):
    plain = receptive_fields(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)), (12, 12), channels=1)
    fields = receptive_fields(Reorder(index), (12, 12), channels=1)
    assert (fields["a"], fields["b"]) == (plain["0"], plain["1"])
