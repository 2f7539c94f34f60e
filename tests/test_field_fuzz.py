"""Receptive fields of random stacks of windows and pads, checked unit by unit against what the
model computes: an impulse at each input pixel in turn shows which pixels reach each unit. Every
unit's pixels lie in its box (the crop `visualize` takes), and a unit whose box lies inside the
image reaches its box's four edges; the centre units of torchvision models are checked in
test_receptive_field.py. A stack the analysis cannot vouch for is refused, never given a box that
misses pixels (a circular pad wraps the far side of the image into the border units). A reflection
or replication pad is followed into the conv that reads it when the copies stay in its units' boxes;
the pad's own border units are copies that no box holds, so it has no field."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from sketchmine import ReceptiveField, SketchmineError, receptive_fields
from sketchmine.model.receptive_field import field_analysis
from sketchmine.passes.deconv import Deconvolver
from sketchmine.stats.ops import crop_patches


class FunctionalPad(nn.Module):
    """`F.pad`, as models call it in forward (traced as a function, not a module): with a
    constant, or copying pixels (mode "reflect", "replicate")."""

    def __init__(self, pad: tuple[int, ...], value: float = 0.0, mode: str = "constant") -> None:
        super().__init__()
        self.pad, self.value, self.mode = pad, value, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "constant":
            return F.pad(x, self.pad, value=self.value)
        return F.pad(x, self.pad, mode=self.mode)


def _copying(m: nn.Module) -> str | None:
    """The mode of a pad that copies pixels, None for any other module."""
    if isinstance(m, (nn.ReflectionPad2d, FunctionalPad)) and getattr(m, "mode", "reflect") != "constant":
        return getattr(m, "mode", "reflect")
    return "replicate" if isinstance(m, nn.ReplicationPad2d) else None


@st.composite
def conv(draw: st.DrawFn, padded: bool = True, reach: tuple[int, int] | None = None) -> nn.Conv2d:
    """A conv; `padded=False`: without padding of its own, as one reading a copying pad;
    `reach`: at least that reach (a reader that holds the pad's copies)."""
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if reach is None:
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    else:
        k = tuple(-(-reach[a] // d[a]) + 1 + draw(st.integers(0, 1)) for a in range(2))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                         st.sampled_from(["valid", "same"] if s == (1, 1) else ["valid"]))) if padded else 0
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate"]))
    return nn.Conv2d(2, 2, k, s, pad, d, padding_mode=mode)


@st.composite
def window(draw: st.DrawFn) -> list[nn.Module]:
    """A window or a pad; a copying pad mostly with a conv reading it (at times through a ReLU),
    whose reach may or may not hold the copies, else alone (read by whatever comes next)."""
    kind = draw(st.sampled_from(["conv", "conv", "max", "avg", "zeropad", "constpad", "fpad", "copypad", "copypad"]))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if kind == "conv":
        return [draw(conv())]
    if kind in ("max", "avg"):
        p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
        if kind == "max":
            return [nn.MaxPool2d(k, s, p, draw(st.integers(1, 2)), ceil_mode=draw(st.booleans()))]
        return [nn.AvgPool2d(k, s, p, ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()))]
    if kind == "copypad":
        pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
        mode = draw(st.sampled_from(["reflect", "replicate"]))
        pad = draw(st.sampled_from([nn.ReflectionPad2d(pads) if mode == "reflect" else nn.ReplicationPad2d(pads),
                                    FunctionalPad(pads, mode=mode)]))
        holds = tuple(max(pads[2 - 2 * a:4 - 2 * a]) * (2 if mode == "reflect" else 1) for a in range(2))
        reader = draw(st.sampled_from(["holds", "holds", "relu", "any", "none"]))
        if reader == "none":
            return [pad]
        read = draw(conv(padded=False, reach=None if reader == "any" else holds))
        return [pad, nn.ReLU(), read] if reader == "relu" else [pad, read]
    pads = tuple(draw(st.integers(-2, 3)) for _ in range(4))
    if kind == "zeropad":
        return [nn.ZeroPad2d(pads)]
    if kind == "constpad":
        return [nn.ConstantPad2d(pads, 0.5)]
    return [FunctionalPad(pads[:draw(st.sampled_from([2, 4]))], 0.25)]


def stack() -> st.SearchStrategy[list[nn.Module]]:
    """1 to 4 windows or pads (a copying pad with its reader counts as one)."""
    return st.lists(window(), min_size=1, max_size=4).map(lambda ws: [m for w in ws for m in w])


def _positive(model: nn.Module) -> nn.Module:
    """Weights (and norms' scales) in [0.1, 1.1), no bias: an impulse reaches a unit iff the unit's
    value changes."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.1)
    return model.double().eval()


def _reached(model: nn.Module, h: int, w: int, channels: int = 2, names: list[str] | None = None
             ) -> dict[str, torch.Tensor]:
    """{layer: (h*w, oh, ow) bool}: whether an impulse at input pixel i changes unit (y, x), on a
    positive image (`names`: the modules to read, default the children)."""
    outs: dict[str, list[torch.Tensor]] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outs.setdefault(n, []).append(o[:, 0].clone()))
             for n in (names if names is not None else [n for n, _ in model.named_children()])]
    base = torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    x = base.repeat(h * w + 1, 1, 1, 1)
    x.view(h * w + 1, channels, h * w)[torch.arange(h * w), :, torch.arange(h * w)] += 1e3  # the last: no impulse
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {n: (o[0][:-1] - o[0][-1:]).abs() > 0 for n, o in outs.items()}


def _conv_sides(m: nn.Conv2d, a: int) -> tuple[int, tuple[int, int]]:
    """(reach, (before, after)) of a conv along axis a: "same" pads the rest after."""
    reach = (m.kernel_size[a] - 1) * m.dilation[a]
    return reach, (reach // 2, reach - reach // 2) if m.padding == "same" else (
        (0, 0) if m.padding == "valid" else (m.padding[a],) * 2)


def _copies_past(mode: str, sides: tuple[int, int], reach: int) -> bool:
    """A reflection wider than half the dilated kernel's reach, or a replication wider than the
    reach, on either side, copies pixels past the box."""
    return max(sides) * (2 if mode == "reflect" else 1) > reach


def _pad_sides(m: nn.Module, a: int) -> tuple[int, int]:
    """A copying pad's (before, after) along axis a (0: y, 1: x), from (left, right, top, bottom)."""
    pads = m.padding if isinstance(m, (nn.ReflectionPad2d, nn.ReplicationPad2d)) else m.pad
    return (pads[2], pads[3]) if a == 0 else (pads[0], pads[1])


def _refused_by_design(model: nn.Sequential) -> bool:
    """A conv that copies pixels from past its box by its own padding; a copying pad whose reader
    (past ReLUs) is not a conv without padding whose reach holds the copies on every side."""
    layers = list(model)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            if any(_copies_past(m.padding_mode, _conv_sides(m, a)[1], _conv_sides(m, a)[0]) for a in range(2)):
                return True
        if (mode := _copying(m)) is not None:
            reader = next((r for r in layers[i + 1:] if not isinstance(r, nn.ReLU)), None)
            if not isinstance(reader, nn.Conv2d) or any(any(_conv_sides(reader, a)[1]) for a in range(2)):
                return True
            if any(_copies_past(mode, _pad_sides(m, a), _conv_sides(reader, a)[0]) for a in range(2)):
                return True
    return False


def _copy_carriers(model: nn.Sequential) -> set[str]:
    """The children whose border units are copies: each copying pad and the ReLUs after it."""
    out, copying = set(), False
    for name, m in model.named_children():
        copying = _copying(m) is not None or copying and isinstance(m, nn.ReLU)
        if copying:
            out.add(name)
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(stack(), st.integers(6, 20), st.integers(6, 20))
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
    assert set(reached) - set(fields) == _copy_carriers(model)  # no box holds a copying pad's border units
    _check_boxes(model, reached, fields, h, w)


def _check_boxes(model: nn.Module, reached: dict[str, torch.Tensor], fields: dict, h: int, w: int) -> None:
    """Every unit of every layer with a field reads only pixels of its box; one whose box lies
    inside the image reads its box's four edges, unless a crop comes before it."""
    rows, cols = (torch.arange(h * w) // w).view(-1, 1, 1), (torch.arange(h * w) % w).view(-1, 1, 1)
    # a negative pad crops: the box keeps the pixels it cropped, which reach nothing (as padding)
    crops = any(min(getattr(m, "padding", None) or getattr(m, "pad", None) or (0,)) < 0
                for m in model.modules() if isinstance(m, (nn.ConstantPad2d, FunctionalPad)))
    for name, r in reached.items():
        if name not in fields:
            continue
        f = fields[name]
        top = f.offset[0] + torch.arange(r.shape[1]).view(-1, 1) * f.stride[0]
        left = f.offset[1] + torch.arange(r.shape[2]).view(1, -1) * f.stride[1]
        bottom, right = top + f.size[0] - 1, left + f.size[1] - 1
        reads = (torch.where(r, rows, h).amin(0), torch.where(r, cols, w).amin(0),  # none: (h, w, -1, -1)
                 torch.where(r, rows, -1).amax(0), torch.where(r, cols, -1).amax(0))
        outside = r.any(0) & ((reads[0] < top) | (reads[1] < left) | (reads[2] > bottom) | (reads[3] > right))
        assert not outside.any(), (name, torch.nonzero(outside)[0].tolist(), f)
        if not crops:  # inside the image: tight
            inside = (top >= 0) & (left >= 0) & (bottom < h) & (right < w)
            loose = inside & ((reads[0] != top) | (reads[1] != left) | (reads[2] != bottom) | (reads[3] != right))
            assert not loose.any(), (name, torch.nonzero(loose)[0].tolist(), f)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
    nn.Conv2d(2, 2, 3, padding=2, padding_mode="reflect"),
    nn.Conv2d(2, 2, (1, 3), padding=(1, 1), padding_mode="replicate"),
])
def test_a_pad_that_copies_pixels_from_past_the_box_is_refused_naming_the_conv(conv):
    model = nn.Sequential(nn.Conv2d(2, 2, 3), conv)
    with pytest.raises(SketchmineError, match=r"receptive fields: 1 pads"):
        receptive_fields(model, (12, 12), channels=2)


class RunTimePad(nn.Module):
    """A reflection by an amount the traced graph knows only at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (x.shape[-1] % 2 + 1, 1, 1, 1), mode="reflect")


@pytest.mark.parametrize("pad,reader,said", [
    (RunTimePad(), nn.Conv2d(2, 2, 3), r"pad at \w+ \(mode 'reflect'.*known only at run time"),
    (FunctionalPad((1, 1, 1, 1), mode="circular"), nn.Conv2d(2, 2, 3), r"pad at \w+ \(mode 'circular'.*wraps"),
    (nn.CircularPad2d(1), nn.Conv2d(2, 2, 3), r"CircularPad2d '1' pads circularly"),
    (nn.ReflectionPad3d(1), nn.Conv2d(4, 2, 3), r"ReflectionPad3d '1' pads another grid than \(H, W\)"),
    (nn.ReflectionPad2d(2), nn.Conv2d(2, 2, 3), r"ReflectionPad2d\(2\) '1' feeds a 3×3 conv '2' \(reach \(2, 2\)\): "
                                                r"the reflected pixels lie outside the unit's field"),
    (nn.ReplicationPad2d((0, 3, 0, 0)), nn.Conv2d(2, 2, 3), r"ReplicationPad2d\(\(0, 3, 0, 0\)\) '1' feeds a 3×3 "
                                                            r"conv '2'.*replicated pixels lie outside"),
    (nn.ReflectionPad2d((2, 1, 2, 1)), nn.Conv2d(2, 2, 3, dilation=(2, 1)),
     r"feeds a 3×3 conv '2' \(reach \(4, 2\)\)"),
    (FunctionalPad((2, 0, 0, 0), mode="reflect"), nn.Conv2d(2, 2, 3), r"F.pad '\w+' \(mode 'reflect'.*feeds a 3×3"),
    (nn.ReflectionPad2d(1), nn.Conv2d(2, 2, 3, padding=1), r"ReflectionPad2d\(1\) '1' feeds conv '2', which pads"),
    (nn.ReflectionPad2d(1), nn.MaxPool2d(3), r"ReflectionPad2d\(1\) '1' feeds MaxPool2d '2': after a pad that copies"),
    (nn.ReplicationPad2d(1), nn.Flatten(), r"ReplicationPad2d\(1\) '1' feeds Flatten '2'"),
    (nn.ReflectionPad2d(1), nn.Identity(), r"ReflectionPad2d\(1\) '1' feeds the model's output"),
    (nn.ReflectionPad2d((1, -1, 1, 1)), nn.Conv2d(2, 2, 3), r"crops a side"),
])
def test_a_pad_the_analysis_cannot_follow_is_refused_naming_it(pad, reader, said):
    """Run-time and circular pads; a copying pad that is not read by a conv without padding of its
    own (directly or through pointwise ops) whose reach keeps the copies in the box, on each side."""
    with pytest.raises(SketchmineError, match=f"receptive fields: .*{said}"):
        receptive_fields(nn.Sequential(nn.Conv2d(2, 2, 3), pad, reader), (12, 12), channels=2)


@pytest.mark.parametrize("pad", [nn.ReflectionPad2d(1), nn.ReplicationPad2d((2, 0, 1, 2)),
                                 FunctionalPad((1, 0, 1, 1), mode="reflect"),
                                 FunctionalPad((0, 2, 2, 1), mode="replicate")])
def test_a_copying_pad_read_by_a_conv_whose_reach_holds_the_copies_has_the_conv_a_field(pad):
    """The conv's field is that of the same conv padding by itself; the pad has none (its border
    units are copies), and a ReLU between them neither."""
    model = nn.Sequential(nn.Conv2d(2, 2, 3), pad, nn.ReLU(), nn.Conv2d(2, 2, 3))
    analysis = field_analysis(model, (12, 12), channels=2)
    left, right, top, bottom = pad.pad if isinstance(pad, FunctionalPad) else pad.padding
    plain = receptive_fields(nn.Sequential(nn.Conv2d(2, 2, 3), nn.ZeroPad2d((left, right, top, bottom)),
                                           nn.Conv2d(2, 2, 3)), (12, 12), channels=2)
    assert analysis.fields["3"] == plain["2"] and analysis.fields["0"] == plain["0"]
    assert set(analysis.missing) == set(analysis.copies) == {"1", "2"}
    assert "copies pixels into its border units" in analysis.missing["1"]
    assert receptive_fields(model, (12, 12), channels=2) == analysis.fields


@pytest.mark.parametrize("middle", [nn.ZeroPad2d((2, 0, 1, 3)), nn.ConstantPad2d((-1, 2, 2, -1), 0.5),
                                    FunctionalPad((1, 2, 0, 1), 0.25),
                                    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                                    nn.ReflectionPad2d(1), nn.ReplicationPad2d((2, 1, 0, 2)),
                                    FunctionalPad((1, 0, 1, 1), mode="reflect")])
def test_deconvolutions_through_pads_are_exact_on_windows(drawings_28, middle):
    """A unit behind a pad or a reflecting conv is deconvolved on a window of its box, as exactly
    as on the whole image (the pads sit at the window's border only for units outside the cone: a
    reflection at a window's edge copies other pixels than at the image's, into units whose boxes
    reach past the window); behind a crop (a negative pad, which a window would take from its own
    border) on the whole image."""
    torch.manual_seed(0)  # the weights, not the test order, decide which units are live
    if isinstance(middle, nn.Conv2d):  # built at collection, from whatever the generator held then
        middle.reset_parameters()
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), middle, nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(4, 4, 3, padding=1)).eval()
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
@given(stack(), st.integers(6, 20), st.integers(6, 20),
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


class ResnetBlock(nn.Module):
    """CycleGAN's residual block: reflection pads read by valid 3×3 convs."""

    def __init__(self, c: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c), nn.ReLU(True),
                                        nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def cyclegan_encoder(norm: type[nn.Module]) -> nn.Sequential:
    """The encoder of CycleGAN's ResNet generator, narrow: a 7×7 conv behind a reflection pad, two
    downsampling convs, two residual blocks."""
    return nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 4, 7), norm(4), nn.ReLU(True),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), norm(8), nn.ReLU(True),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), norm(8), nn.ReLU(True),
                         ResnetBlock(8, norm), ResnetBlock(8, norm))


def test_every_unit_of_a_cyclegan_encoder_reads_only_its_box():
    """Every layer but the reflection pads has a field (theirs hold copies), with an InstanceNorm as
    with a BatchNorm; every unit of each reads only its box, and its box's edges when inside the image."""
    model, h = _positive(cyclegan_encoder(nn.BatchNorm2d)), 36  # room for the first block's 29-px boxes
    analysis = field_analysis(model, h)
    pads = {n for n, m in model.named_modules() if isinstance(m, nn.ReflectionPad2d)}
    assert set(analysis.missing) == set(analysis.copies) == pads and len(pads) == 5
    assert set(analysis.fields) == {n for n, _ in model.named_modules()} - pads - {""}
    assert receptive_fields(cyclegan_encoder(nn.InstanceNorm2d), h) == analysis.fields
    assert analysis.fields["11"] == ReceptiveField((45, 45), (4, 4), (-22, -22))
    reached = _reached(model, h, h, channels=3, names=list(analysis.fields))
    _check_boxes(model, reached, analysis.fields, h, h)


@pytest.mark.parametrize("layer", ["1", "10.conv_block.1", "10"])
def test_windowed_deconvolutions_of_a_cyclegan_encoder_equal_the_whole_images(layer):
    """Windows of 7, 24 and 32 px on a 40-px image: their edges cut the reflection pads' maps
    mid-image, where a reflection copies other pixels than the whole image holds there; the units
    whose value that changes lie outside the cone of the unit the window is for."""
    torch.manual_seed(0)
    model, h = cyclegan_encoder(nn.BatchNorm2d).eval(), 40
    images = torch.rand(2, 3, h, h) + 0.05
    f = receptive_fields(model, h)[layer]
    decon = Deconvolver(model, "guided")
    assert decon.windowable(layer)
    shapes: list[torch.Size] = []
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model(images[:1])
    hook.remove()
    _, c, oh, ow = shapes[0]
    yx = torch.cartesian_prod(torch.arange(oh), torch.arange(ow))
    index, channels = torch.arange(len(yx)) % 2, torch.arange(len(yx)) % c
    whole = decon(images[index], layer, channels, yx)
    corners = torch.stack([f.offset[0] + yx[:, 0] * f.stride[0], f.offset[1] + yx[:, 1] * f.stride[1]], 1)
    want = crop_patches(whole, torch.arange(len(yx)), corners, *f.size)
    got = decon.field_crops(images, index, layer, channels, yx, f)
    assert want.abs().amax(dim=(1, 2, 3)).min() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
