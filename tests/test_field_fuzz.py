"""Receptive fields of random stacks of windows and pads, checked unit by unit against what the
model computes: an impulse at each input pixel in turn shows which pixels reach each unit. Every
unit's pixels lie in its box (the crop `visualize` takes), and a unit whose box lies inside the
image reaches its box's four edges; the centre units of torchvision models are checked in
test_receptive_field.py. A stack the analysis cannot vouch for is refused, never given a box that
misses pixels (a circular pad wraps the far side of the image into the border units)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from sketchmine import SketchmineError, receptive_fields
from sketchmine.passes.deconv import Deconvolver
from sketchmine.stats.ops import crop_patches


class FunctionalPad(nn.Module):
    """`F.pad` with a constant, as models call it in forward (traced as a function, not a module)."""

    def __init__(self, pad: tuple[int, ...], value: float) -> None:
        super().__init__()
        self.pad, self.value = pad, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad, value=self.value)


@st.composite
def window(draw: st.DrawFn) -> nn.Module:
    kind = draw(st.sampled_from(["conv", "conv", "max", "avg", "zeropad", "constpad", "fpad"]))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if kind == "conv":
        d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        pad = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.sampled_from(["valid", "same"] if s == (1, 1) else ["valid"])))
        mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate"]))
        return nn.Conv2d(2, 2, k, s, pad, d, padding_mode=mode)
    if kind in ("max", "avg"):
        p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
        if kind == "max":
            return nn.MaxPool2d(k, s, p, draw(st.integers(1, 2)), ceil_mode=draw(st.booleans()))
        return nn.AvgPool2d(k, s, p, ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()))
    pads = tuple(draw(st.integers(-2, 3)) for _ in range(4))
    if kind == "zeropad":
        return nn.ZeroPad2d(pads)
    if kind == "constpad":
        return nn.ConstantPad2d(pads, 0.5)
    return FunctionalPad(pads[:draw(st.sampled_from([2, 4]))], 0.25)


def _positive(model: nn.Module) -> nn.Module:
    """Weights in [0.1, 1.1), no bias: an impulse reaches a unit iff the unit's value changes."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.1 if p.ndim > 1 else torch.zeros_like(p))
    return model.double().eval()


def _reached(model: nn.Module, h: int, w: int) -> dict[str, torch.Tensor]:
    """{layer: (h*w, oh, ow) bool}: whether an impulse at input pixel i changes unit (y, x)."""
    outs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outs.setdefault(n, []).append(o[:, 0]))
             for n, m in model.named_children()]
    x = torch.zeros(h * w + 1, 2, h, w, dtype=torch.float64)
    x.view(h * w + 1, 2, h * w)[torch.arange(h * w), :, torch.arange(h * w)] = 1e3  # the last: no impulse
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {n: (o[0][:-1] - o[0][-1:]).abs() > 0 for n, o in outs.items()}


def _refused_by_design(model: nn.Module) -> bool:
    """A reflection pad wider than half its dilated kernel's reach, or a replication pad wider than
    the reach, on either side ("same" pads the rest after), copies pixels past the box."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            for a in range(2):
                reach = (m.kernel_size[a] - 1) * m.dilation[a]
                sides = (reach // 2, reach - reach // 2) if m.padding == "same" else (
                    (0, 0) if m.padding == "valid" else (m.padding[a],) * 2)
                if max(sides) * (2 if m.padding_mode == "reflect" else 1) > reach:
                    return True
    return False


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(window(), min_size=1, max_size=4), st.integers(6, 20), st.integers(6, 20))
def test_every_unit_of_a_random_stack_reads_only_its_box(layers, h, w):
    model = _positive(nn.Sequential(*layers))
    try:
        reached = _reached(model, h, w)
    except RuntimeError:  # a stack torch itself refuses at this size (output too small, pad too wide)
        assume(False)
    assume(all(r.shape[1] > 0 and r.shape[2] > 0 for r in reached.values()))
    try:
        fields = receptive_fields(model, (h, w), channels=2)
    except SketchmineError as exc:
        assert _refused_by_design(model), f"refused: {exc}"
        return
    assert not _refused_by_design(model)
    rows, cols = torch.arange(h * w) // w, torch.arange(h * w) % w
    # a negative pad crops: the box keeps the pixels it cropped, which reach nothing (as padding)
    crops = any(min(getattr(m, "padding", None) or getattr(m, "pad", None) or (0,)) < 0
                for m in model if isinstance(m, (nn.ConstantPad2d, FunctionalPad)))
    for name, r in reached.items():
        f = fields[name]
        for y in range(r.shape[1]):
            for x in range(r.shape[2]):
                top, left, bottom, right = f.box(y, x)
                hit = r[:, y, x]
                ys, xs = rows[hit], cols[hit]
                assert ((ys >= top) & (ys <= bottom) & (xs >= left) & (xs <= right)).all(), (name, y, x, f)
                if top >= 0 and left >= 0 and bottom < h and right < w and not crops:  # inside the image: tight
                    assert (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())) == (top, left, bottom, right), \
                        (name, y, x, f)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
    nn.Conv2d(2, 2, 3, padding=2, padding_mode="reflect"),
    nn.Conv2d(2, 2, (1, 3), padding=(1, 1), padding_mode="replicate"),
])
def test_a_pad_that_copies_pixels_from_past_the_box_is_refused_naming_the_conv(conv):
    model = nn.Sequential(nn.Conv2d(2, 2, 3), conv)
    with pytest.raises(SketchmineError, match=r"receptive fields: 1 pads"):
        receptive_fields(model, (12, 12), channels=2)


def test_a_run_time_pad_is_refused_and_a_reflection_pad_module_named():
    class RunTimePad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pad(x, (1, 1, 1, 1), mode="reflect")

    for pad in (RunTimePad(), nn.ReflectionPad2d(1)):
        with pytest.raises(SketchmineError, match="receptive fields: .*(pad|ReflectionPad2d)"):
            receptive_fields(nn.Sequential(nn.Conv2d(2, 2, 3), pad, nn.Conv2d(2, 2, 3)), (12, 12), channels=2)


@pytest.mark.parametrize("middle", [nn.ZeroPad2d((2, 0, 1, 3)), nn.ConstantPad2d((-1, 2, 2, -1), 0.5),
                                    FunctionalPad((1, 2, 0, 1), 0.25),
                                    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")])
def test_deconvolutions_through_pads_are_exact_on_windows(drawings_28, middle):
    """A unit behind a pad or a reflecting conv is deconvolved on a window of its box, as exactly
    as on the whole image (the pads sit at the window's border only for units outside the cone);
    behind a crop (a negative pad, which a window would take from its own border) on the whole image."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), middle, nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(4, 4, 3, padding=1)).eval()
    torch.manual_seed(0)
    f = receptive_fields(model, 28)["6"]
    decon = Deconvolver(model, "deconvnet")
    crops = isinstance(middle, nn.ConstantPad2d) and min(middle.padding) < 0  # a crop: on the whole image
    assert decon.windowable("6") != crops
    with torch.no_grad():
        _, _, oh, ow = model(drawings_28[:1]).shape
    yx = torch.tensor([[0, 0], [oh - 1, ow - 1], [oh // 2, ow // 2], [0, ow - 1], [oh - 1, 1], [1, 2]])
    channels, index = torch.arange(6) % 4, torch.arange(6) % len(drawings_28)
    whole = decon(drawings_28[index], "6", channels, yx)
    corners = torch.stack([f.offset[0] + yx[:, 0] * f.stride[0], f.offset[1] + yx[:, 1] * f.stride[1]], 1)
    want = crop_patches(whole, torch.arange(6), corners, *f.size)
    got = decon.field_crops(drawings_28, index, "6", channels, yx, f)
    assert want.abs().amax(dim=(1, 2, 3)).min() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


@pytest.fixture(scope="module")
def drawings_28(demo_test_set):
    return torch.stack([demo_test_set[i][1] for i in (3, 400, 900, 1700)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(window(), min_size=1, max_size=4), st.integers(6, 20), st.integers(6, 20),
       st.sampled_from(["gradient", "deconvnet", "guided"]))
def test_windowed_deconvolutions_of_random_stacks_equal_the_whole_images(layers, h, w, method):
    """`field_crops` on stride-aligned windows equals the whole image's deconvolution cropped to
    the box, for every unit of the last layer (border units: windows cut by the image's edge)."""
    model = nn.Sequential(*layers, nn.ReLU())
    torch.manual_seed(0)
    images = torch.rand(3, 2, h, w) + 0.05
    try:
        with torch.no_grad():
            _, c, oh, ow = model(images).shape
        f = receptive_fields(model, (h, w), channels=2)[str(len(layers) - 1)]
    except (RuntimeError, SketchmineError):  # torch refuses the stack at this size, or the analysis does
        assume(False)
    assume(oh * ow > 0)
    decon = Deconvolver(model, method)
    yx = torch.cartesian_prod(torch.arange(oh), torch.arange(ow))
    index, channels = torch.arange(len(yx)) % 3, torch.arange(len(yx)) % c
    name = str(len(layers) - 1)
    whole = decon(images[index], name, channels, yx)
    corners = torch.stack([f.offset[0] + yx[:, 0] * f.stride[0], f.offset[1] + yx[:, 1] * f.stride[1]], 1)
    want = crop_patches(whole, torch.arange(len(yx)), corners, *f.size)
    got = decon.field_crops(images, index, name, channels, yx, f)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * max(float(want.abs().max()), 1e-12))
