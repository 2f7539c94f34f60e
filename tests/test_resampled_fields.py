"""Receptive fields through upsampling (nn.Upsample, F.interpolate) and transposed convs, checked
unit by unit against the support of autograd's input gradient (field_tables.py).

The reference knows nothing of the analysis: for every unit of every layer, the input pixels whose
gradient is non-zero for one of three draws of weights and input (one with positive weights, on
which a linear stack's gradient reaches every pixel a path joins, two with signed ones). Every
pixel found must lie in the unit's box; on a stack without max pools (whose gradient reaches the
window's maximum only) and without padding before its first resampling op (a strided field's
padding units extend their boxes past the pixels read, as they always have), the box clipped to
the image is exactly the hull of those pixels. A U-Net mined and visualized end to end:
test_unet_pictures.py.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

from sketchmine import SketchmineError, receptive_fields
from tests.helpers import pixels_reached


class Interpolate(nn.Module):
    """F.interpolate in forward (traced as a function, not a module), with the call's arguments."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, **self.kwargs)

    def extra_repr(self) -> str:
        return str(self.kwargs)


MODES = [("nearest", None), ("nearest-exact", None), ("bilinear", False), ("bilinear", True), ("bicubic", False),
         ("bicubic", True), ("area", None)]


@st.composite
def resampling(draw: st.DrawFn) -> nn.Module:
    """An upsampling (module or function) by an integer or fractional factor, or to a size; a
    downsampling by interpolation at times; or a transposed conv."""
    kind = draw(st.sampled_from(["module", "function", "transposed"]))
    if kind == "transposed":
        k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        p = draw(st.integers(0, (k - 1) * d))
        return nn.ConvTranspose2d(2, 2, k, s, p, draw(st.integers(0, max(s, d) - 1)), dilation=d)
    mode, corners = draw(st.sampled_from(MODES))
    how = draw(st.sampled_from(["scale", "scales", "size"]))
    kwargs: dict = {"mode": mode}
    if corners is not None:
        kwargs["align_corners"] = corners
    if how == "size":
        kwargs["size"] = (draw(st.integers(3, 24)), draw(st.integers(3, 24)))
    else:
        factor = st.sampled_from([2, 3, 1.5, 2.5, 1.3, 0.75])
        kwargs["scale_factor"] = draw(factor) if how == "scale" else (draw(factor), draw(factor))
        if mode != "area" and draw(st.booleans()):
            kwargs["recompute_scale_factor"] = True
    if kind == "function":
        if mode in ("bilinear", "bicubic") and draw(st.booleans()):
            kwargs["antialias"] = True  # a wider kernel where it shrinks the grid
        return Interpolate(**kwargs)
    return nn.Upsample(**kwargs)


@st.composite
def window(draw: st.DrawFn, padded: bool) -> nn.Module:
    """A conv, a pool or a constant pad; `padded=False`: valid windows only."""
    kind = draw(st.sampled_from(["conv", "conv", "max", "avg", "pad"] if padded else ["conv", "conv", "avg"]))
    k, s, d = (draw(st.integers(1, 3)), draw(st.integers(1, 3))), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if kind == "pad":
        return draw(st.sampled_from([nn.ZeroPad2d, lambda p: nn.ConstantPad2d(p, 0.5)]))(
            tuple(draw(st.integers(-1, 2)) for _ in range(4)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))) if padded else 0
    if kind == "conv":
        return nn.Conv2d(2, 2, k, s, p, d, padding_mode=draw(st.sampled_from(["zeros", "zeros", "replicate"]))
                         if padded and k[0] > 1 and k[1] > 1 else "zeros")
    if kind == "max":
        return nn.MaxPool2d(k, s, p, d, ceil_mode=draw(st.booleans()))
    return nn.AvgPool2d(k, s, p, ceil_mode=padded and draw(st.booleans()))


@st.composite
def stack(draw: st.DrawFn) -> list[nn.Module]:
    """Windows before a resampling op (valid ones only at times), then windows and resamplings."""
    padded = draw(st.booleans())
    before = draw(st.lists(window(padded), max_size=2))
    after = draw(st.lists(st.one_of(window(True), resampling()), max_size=3))
    return [*before, draw(resampling()), *after]


def _support(model: nn.Module, h: int, w: int) -> dict[str, torch.Tensor]:
    """{child: (oh, ow, h, w) bool}: the pixels whose input gradient of unit (y, x), summed over
    channels, is non-zero for one of three draws (the first with positive weights)."""
    out: dict[str, torch.Tensor] = {}
    # in the dtype the analysis takes the model to run in (its parameters'; float32 without any): which
    # source positions an interpolation's weights reach by rounding differs between float32 and float64
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    for draw in range(3):
        g = torch.Generator().manual_seed(draw)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.1 if draw == 0
                        else torch.randn(p.shape, generator=g, dtype=p.dtype))
        x = (torch.rand(1, 2, h, w, generator=g, dtype=dtype) + 0.5).requires_grad_(True)
        for n, s in pixels_reached(dict(model.named_children()), model, x).items():
            out[n] = s | out[n] if n in out else s
    return out


def _check(model: nn.Sequential, fields: dict, support: dict[str, torch.Tensor], h: int, w: int, tight: bool) -> None:
    """Every unit's pixels lie in its box; `tight`: its box clipped to the image is their hull
    (empty where no pixel reaches it)."""
    rows, cols = torch.arange(h), torch.arange(w)
    for name, s in support.items():
        f = fields[name]
        for y in range(s.shape[0]):
            for x in range(s.shape[1]):
                top, left, bottom, right = f.box(y, x)
                clipped = (max(top, 0), max(left, 0), min(bottom, h - 1), min(right, w - 1))
                reached = s[y, x]
                if not reached.any():
                    assert not tight or clipped[0] > clipped[2] or clipped[1] > clipped[3], (name, (y, x), f.box(y, x))
                    continue
                ys, xs = rows[reached.any(1)], cols[reached.any(0)]
                hull = (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
                assert top <= hull[0] and left <= hull[1] and hull[2] <= bottom and hull[3] <= right, \
                    (name, (y, x), (top, left, bottom, right), hull, model)
                assert not tight or clipped == hull, (name, (y, x), clipped, hull, model)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(stack(), st.integers(4, 12), st.integers(4, 12))
@example([nn.Upsample(scale_factor=1.5), nn.Conv2d(2, 2, 2, padding=(0, 1), dilation=2, padding_mode="replicate")], 4, 4)
def test_every_unit_after_a_resampling_reads_its_box_exactly(layers, h, w):
    """CI's profile found a dilated conv padding by replication after an upsampling whose border unit
    read, through the copy of an edge pixel, a pixel outside its box: a copying pad's positions are
    the positions they copy (field_tables.copied), not padding that holds no pixel."""
    model = nn.Sequential(*layers).double().eval()
    try:
        with torch.no_grad():
            shapes = [o.shape for o in _outputs(model, torch.ones(1, 2, h, w, dtype=torch.float64))]
    except (RuntimeError, ValueError):  # a stack torch itself refuses at this size
        assume(False)
    assume(all(0 < s[-1] * s[-2] <= 400 for s in shapes))
    fields = receptive_fields(model, (h, w), channels=2)
    assert set(fields) == {n for n, _ in model.named_children()}
    first = next(i for i, m in enumerate(layers) if isinstance(m, (nn.Upsample, Interpolate, nn.ConvTranspose2d)))
    valid = all(isinstance(m, (nn.Conv2d, nn.AvgPool2d)) and m.padding in (0, (0, 0)) and not getattr(m, "ceil_mode", 0)
                for m in layers[:first])
    tight = valid and not any(isinstance(m, nn.MaxPool2d) for m in layers)
    _check(model, fields, _support(model, h, w), h, w, tight)


def _outputs(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for m in model:
        x = m(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("mode,corners", MODES[:4])
@pytest.mark.parametrize("how", [{"scale_factor": 2}, {"scale_factor": 3}, {"scale_factor": 1.5},
                                 {"scale_factor": (2.5, 1.75)}, {"size": (17, 10)}, {"size": (7, 23)}])
def test_nearest_and_bilinear_upsamplings_give_each_unit_its_exact_box(mode, corners, how):
    """A conv, a stride-2 pool, the upsampling, a padded conv: after the first two every box is
    whole and inside the image (valid windows), so each unit's box is the hull of its pixels."""
    up = nn.Upsample(**how, mode=mode, **({} if corners is None else {"align_corners": corners}))
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.AvgPool2d(2), up, nn.Conv2d(2, 2, 3, padding=1)).double().eval()
    fields = receptive_fields(model, (15, 13), channels=2)
    assert fields["2"].spans is not None and fields["3"].spans is not None
    _check(model, fields, _support(model, 15, 13), 15, 13, tight=True)


def test_a_transposed_conv_reads_what_it_scatters():
    """U-Net's 2×2 stride-2 up-convolution: each output unit reads one input position (the boxes of
    a pair of units are the same box); a stride wider than the kernel leaves units that read none."""
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.ConvTranspose2d(2, 2, 2, stride=2), nn.ConvTranspose2d(2, 2, 1, 3),
                          nn.Conv2d(2, 2, 3, padding=1)).double().eval()
    fields = receptive_fields(model, (9, 8), channels=2)
    up = fields["1"]
    assert [up.box(y, 0) for y in (0, 1)] == [fields["0"].box(0, 0)] * 2
    gaps = fields["2"]
    assert gaps.box(1, 1)[2] < gaps.box(1, 1)[0]  # a unit between the scattered ones: no pixel
    _check(model, fields, _support(model, 9, 8), 9, 8, tight=True)


def test_a_tabled_field_says_its_mean_stride_as_a_fraction():
    """Upsampling 10 units by 2 puts 20 units over the starts 0..9: 9/19 of a pixel apart on average."""
    f = receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2)), 12)["1"]
    assert f.stride == (Fraction(9, 19), Fraction(9, 19)) and f.size == (3, 3) and f.offset == (0, 0)
    assert len(f.spans[0]) == len(f.spans[1]) == 20


class RunTimeScale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=x.shape[-1] / 4, mode="nearest")


class Volume(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[:, None], scale_factor=(1, 2, 2), mode="trilinear")[:, 0]


class Warp(nn.Module):
    """A sheared sampling grid (for a batch of one 14×14 map): where it reads depends on the grid's values."""

    def __init__(self) -> None:
        super().__init__()
        theta = torch.tensor([[[1.0, 0.2, 0.0], [0.0, 1.0, 0.0]]])
        self.register_buffer("grid", F.affine_grid(theta, [1, 2, 14, 14], align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, self.grid, align_corners=False)


@pytest.mark.parametrize("op,said", [
    (RunTimeScale(), r"interpolate at \w+ resamples by a scale factor known only at run time"),
    (Volume(), r"interpolate at \w+ resamples a 5-D tensor \(mode 'trilinear'\), another grid than \(H, W\)"),
    (Warp(), r"function grid_sample at \w+ is not supported"),
])
def test_a_resampling_whose_reach_cannot_be_bounded_is_refused_naming_it(op, said):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), op, nn.Conv2d(2, 2, 3))
    with pytest.raises(SketchmineError, match=f"receptive fields: {said}"):
        receptive_fields(model, 16, channels=1)


@pytest.mark.parametrize("pad", [nn.ReflectionPad2d((1, 1, 1, 1)), nn.ReplicationPad2d((1, 1, 1, 1)),
                                 nn.ReplicationPad2d((2, 2, 0, 0))], ids=["reflect", "replicate", "replicate-2"])
@pytest.mark.parametrize("dilation", [2, 3])
def test_a_copying_pad_module_behind_an_upsampling_puts_its_copies_in_the_boxes(pad, dilation):
    """A reflection or replication pad after an upsampling, read by a dilated conv: the pad's
    positions held no pixel in the tables, so a border unit reading a copy of a pixel its window
    skips had a box without it (48-58 of the conv's units here)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Upsample(scale_factor=2), pad, nn.Conv2d(2, 2, 2, dilation=dilation)).double()
    field = receptive_fields(model, (4, 4), channels=2)["2"]
    x = (torch.rand(1, 2, 4, 4, dtype=torch.float64) + 0.5).requires_grad_(True)
    reached = pixels_reached({"2": model[2]}, model, x)["2"]
    for y in range(reached.shape[0]):
        for xx in range(reached.shape[1]):
            top, left, bottom, right = field.box(y, xx)
            pixels = reached[y, xx].nonzero()
            assert ((pixels[:, 0] >= top) & (pixels[:, 0] <= bottom) & (pixels[:, 1] >= left)
                    & (pixels[:, 1] <= right)).all(), ((y, xx), (top, left, bottom, right), pixels.tolist())
