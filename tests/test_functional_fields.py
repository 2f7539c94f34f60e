"""Convs, transposed convs and pools called as functions (`F.conv2d` on a model's own or a computed
weight, `F.conv_transpose2d`, `F.max_pool2d`, `F.avg_pool2d`) have the receptive fields of their
modules (model/field_calls.py): a model written with modules and its twin written with functions
give identical fields, every pixel that reaches a unit (autograd's input gradient) lies in its box,
and the functional twin is mined and visualized with crops cut at those boxes. Before, each call
was refused ("function conv2d ... is not supported") and every layer after it had no field, so
`visualize` refused them. Real data: the embedded Animal-Shape test sketches."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import sketchmine
from sketchmine import SketchmineError, receptive_fields
from sketchmine.passes.deconv import Deconvolver
from sketchmine.passes.visualize import visualize
from tests.helpers import fields_hold, per_class_subset, pictures_hold

ACTS = ["act1", "act2", "act3", "act4"]


class ModuleNet(nn.Module):
    """A conv, a max pool, a strided dilated grouped conv, an average pool, a transposed conv with
    output padding and a depthwise "same" conv, as modules; a ReLU module after each conv. Adaptive
    pools that keep the grid's size (the identity, as VGG's at 224 px) before and after the
    transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.pool2 = nn.AvgPool2d(3, stride=1, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding="same", groups=4)
        self.keep, self.most = nn.AdaptiveAvgPool2d(7), nn.AdaptiveMaxPool2d(14)
        self.act1, self.act2, self.act3, self.act4 = (nn.ReLU() for _ in range(4))
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.keep(self.pool2(self.act2(self.conv2(self.pool1(self.act1(self.conv1(x)))))))
        x = self.act4(self.most(self.dw(self.act3(self.up(x)))))
        return self.fc(x.mean((2, 3)))


class FunctionalNet(nn.Module):
    """ModuleNet's weights as parameters of its own, every window a function call, in positional,
    keyword and `torch.*` spellings."""

    def __init__(self, twin: ModuleNet) -> None:
        super().__init__()
        for i, conv in enumerate([twin.conv1, twin.conv2, twin.up, twin.dw], 1):
            setattr(self, f"w{i}", nn.Parameter(conv.weight.detach().clone()))
            setattr(self, f"b{i}", nn.Parameter(conv.bias.detach().clone()))
        self.act1, self.act2, self.act3, self.act4 = (nn.ReLU() for _ in range(4))
        self.fc = copy.deepcopy(twin.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.act1(F.conv2d(x, self.w1, self.b1, 1, 1)), 2)
        x = self.act2(F.conv2d(x, weight=self.w2, bias=self.b2, stride=2, padding=(2, 2), dilation=2, groups=2))
        x = F.adaptive_avg_pool2d(F.avg_pool2d(x, 3, 1, 1), 7)
        x = self.act3(F.conv_transpose2d(x, self.w3, self.b3, stride=2, padding=1, output_padding=1))
        x = self.act4(F.adaptive_max_pool2d(torch.conv2d(x, self.w4, self.b4, padding="same", groups=4), (14, 14)))
        return self.fc(x.mean((2, 3)))


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised conv: its forward standardises the weight (a batch norm over each
    filter) and calls F.conv2d, so torch.fx traces into it (a class outside torch.nn)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _stack(conv: type[nn.Conv2d]) -> nn.Sequential:
    return nn.Sequential(conv(1, 4, 5, stride=2, padding=1), nn.ReLU(), conv(4, 4, 3, dilation=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


class FunctionalConv(nn.Module):
    """A user's conv module written as F.conv2d on its own parameter, the call's arguments given."""

    def __init__(self, cin: int, cout: int, k: int, **call) -> None:
        super().__init__()
        self.weight, self.bias, self.call = nn.Parameter(torch.randn(cout, cin, k, k) * 0.3), None, call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, **self.call)


@pytest.fixture(scope="module")
def twins():
    torch.manual_seed(0)
    modules = ModuleNet().eval()
    return modules, FunctionalNet(modules).eval()


@pytest.fixture(scope="module")
def images(demo_test_set):
    """Two real test sketches of other classes, as pixels in [0, 1] (non-negative: with `_opened`'s
    positive weights every ReLU passes)."""
    return torch.from_numpy(np.asarray(demo_test_set.images[[3, 1500]])).float().div(255)[:, None]


def test_functional_windows_have_their_modules_fields(twins, images):
    """Refused before at the first F.conv2d: no field for any layer of the functional twin."""
    modules, functional = twins
    want, got = receptive_fields(modules, (1, 28, 28)), receptive_fields(functional, (1, 28, 28))
    assert {n: got[n] for n in ACTS} == {n: want[n] for n in ACTS}
    assert got["act3"].spans is not None  # behind the transposed conv: every unit's own box
    fields_hold(functional, ACTS, got, images[:1])  # one image: 1,225 units, each a backward


def test_a_standardised_weight_has_the_plain_convs_field(images):
    """timm's StdConv2d (a computed weight: the kernel from its propagated shape) as nn.Conv2d; its
    layers are deconvolved on windows (the batch norm over its weight holds no image position)."""
    std, plain = _stack(StdConv2d).eval(), _stack(nn.Conv2d).eval()
    got = receptive_fields(std, (1, 28, 28))
    assert {n: got[n] for n in ("0", "1", "2", "3")} == {n: receptive_fields(plain, (1, 28, 28))[n]
                                                          for n in ("0", "1", "2", "3")}
    fields_hold(std, ["0", "3"], got, images)
    assert Deconvolver(std).windowable("3")


def test_a_parametrised_functional_conv_has_the_plain_convs_field(images):
    """weight_norm and spectral_norm parametrisations of a user's F.conv2d module (its weight computed
    from the parameters they keep): torch makes its class in torch.nn.utils.parametrize, which fx
    took for a torch.nn leaf, and the analysis refused the opaque module."""
    net = _stack(nn.Conv2d)
    net[0] = parametrizations.weight_norm(FunctionalConv(1, 4, 5, stride=2, padding=1))
    net[2] = parametrizations.spectral_norm(FunctionalConv(4, 4, 3, dilation=2))
    got, want = receptive_fields(net.eval(), (1, 28, 28)), receptive_fields(_stack(nn.Conv2d).eval(), (1, 28, 28))
    assert {n: got[n] for n in ("0", "1", "2", "3")} == {n: want[n] for n in ("0", "1", "2", "3")}
    fields_hold(net, ["0", "2"], got, images)


def test_a_copying_pad_read_by_a_functional_conv_is_followed(images):
    """F.pad(reflect) read by F.conv2d is held to the rule a conv module reading it is."""
    def fn(pad: int) -> nn.Module:
        class Reflected(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.w, self.b, self.act = nn.Parameter(torch.randn(4, 1, 5, 5)), nn.Parameter(torch.randn(4)), nn.ReLU()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.act(F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), self.w, self.b))
        return Reflected().eval()

    fields = receptive_fields(fn(2), (1, 28, 28))
    assert fields["act"] == sketchmine.ReceptiveField((5, 5), (1, 1), (-2, -2))
    fields_hold(fn(2), ["act"], fields, images)
    with pytest.raises(SketchmineError, match=r"F.pad 'pad' \(mode 'reflect', pad \(3, 3, 3, 3\)\) feeds a 5×5 conv "
                                              r"'conv2d at conv2d'"):
        receptive_fields(fn(3), (1, 28, 28))


class _Switches(nn.Module):
    """A max pool that returns its switches (SegNet) behind a 2× upsampling: as a module, or as
    F.max_pool2d(return_indices=True), which torch runs as max_pool2d_with_indices."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional, self.conv, self.act = functional, nn.Conv2d(1, 2, 3), nn.ReLU()
        self.up, self.pool = nn.Upsample(scale_factor=2), nn.MaxPool2d(3, 2, 1, return_indices=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.functional:
            return self.act(F.max_pool2d(F.interpolate(x, scale_factor=2), 3, 2, 1, return_indices=True)[0])
        return self.act(self.pool(self.up(x))[0])


def test_a_max_pool_with_its_switches_keeps_every_units_box(images):
    """The module's table had no units (its output, a (values, indices) tuple, gave the window no grid
    size): a 0×0 field, said nowhere; the function was refused."""
    fields = [receptive_fields(_Switches(f).eval(), (1, 14, 14))["act"] for f in (False, True)]
    assert fields[0] == fields[1] and [len(axis) for axis in fields[0].spans] == [12, 12]
    fields_hold(_Switches(True), ["act"], {"act": fields[1]}, images[..., 7:21, 7:21])  # the sketches' middle


class _Call(nn.Module):
    def __init__(self, body) -> None:
        super().__init__()
        self.w, self.body, self.act = nn.Parameter(torch.randn(4, 1, 3, 3)), body, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(self, x))


@pytest.mark.parametrize(("body", "match"), [
    (lambda s, x: F.max_pool2d(x, x.shape[-1] // 7),  # a TypeError out of the analysis before
     r"max_pool2d at max_pool2d takes its kernel_size from a value known only at run time \(floordiv\)"),
    (lambda s, x: F.conv2d(x, s.w, stride=x.shape[-1] // 14),
     r"conv2d at conv2d takes its stride from a value known only at run time \(floordiv\)"),
    (lambda s, x: F.conv2d(x, F.avg_pool2d(x, 7)),  # a correlation with a map of the image
     r"conv2d at conv2d takes pixels of the image in another argument than its input \(avg_pool2d"),
])
def test_a_window_known_only_at_run_time_is_refused_naming_it(body, match):
    with pytest.raises(SketchmineError, match=match):
        receptive_fields(_Call(body).eval(), (1, 28, 28))


def test_the_functional_twin_is_mined_and_visualized_at_its_boxes(twins, small_test_set, tmp_path):
    """Each stored box is the layer's field at the unit's peak and its patch the image's pixels there;
    a windowed layer's deconvolution is the unit's whole-image one cropped to the box."""
    _, model = twins
    ds = per_class_subset(small_test_set, 3, "functional-fields")
    sketchmine.mine(model, ds, layers=ACTS, k=2, out=tmp_path / "r.zarr", batch_size=len(ds))
    run = visualize(tmp_path / "r.zarr", model=model, data=ds, batch_size=16)
    fields = receptive_fields(model, 28)
    pictures_hold(run, model, ds, {n: fields[n] for n in ACTS}, ["act1", "act2"])  # windows: the whole image's, cropped


class PowerPools(nn.Module):
    """Power-average pools (an LP pool: (sum x^p)^(1/p) over each window), as a module and called as
    a function (stride given, stride left to the kernel), between convs. Both were refused ("module
    'pool' (LPPool2d) is not supported", "function lp_pool2d ... is not supported")."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.pool = nn.LPPool2d(2, 3, stride=2)
        self.conv2, self.act2 = nn.Conv2d(4, 4, 3), nn.ReLU()
        self.conv3, self.act3 = nn.Conv2d(4, 4, 1), nn.ReLU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.pool(self.act1(self.conv1(x)))))
        x = self.act3(self.conv3(F.lp_pool2d(x, 2.0, 2)))
        return self.fc(x.mean((2, 3)))


def test_power_average_pools_have_their_windows_fields(images):
    torch.manual_seed(0)
    model = PowerPools().eval()
    fields = receptive_fields(model, (1, 28, 28))
    # conv1 3 px; the pool's 3 at stride 2 → 5 px; conv2's 3 → 9 px; lp_pool2d's 2 at stride 2 → 11 px, stride 4
    assert (fields["act2"].size, fields["act2"].stride, fields["act2"].offset) == ((9, 9), (2, 2), (-1, -1))
    assert (fields["act3"].size, fields["act3"].stride, fields["act3"].offset) == ((11, 11), (4, 4), (-1, -1))
    fields_hold(model, ["act1", "act2", "act3"], fields, images)


class SegNetDecoder(nn.Module):
    """SegNet's decoder: each max pool's switches unpool the map again (module and function), a conv
    after each unpooling. Both were refused ("function max_unpool2d ... is not supported"), so no layer
    of such a decoder had a field."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
        self.conv2, self.act2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.conv3, self.act3 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.conv4, self.act4 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, first = self.pool(self.act1(self.conv1(x)))
        x, second = F.max_pool2d(self.act2(self.conv2(x)), 2, return_indices=True)
        x = self.act3(self.conv3(F.max_unpool2d(x, second, 2)))
        x = self.act4(self.conv4(self.unpool(x, first)))
        return self.fc(x.mean((2, 3)))


def test_a_segnet_decoder_unpools_into_the_pools_windows(images):
    """Behind an unpooling, a unit holds the value its pooled unit's switch put there: the safe box
    is the union over the pooled units whose window holds it (a transposed window), kept unit by
    unit; every pixel reaching a unit lies in it."""
    torch.manual_seed(0)
    model = SegNetDecoder().eval()
    fields = receptive_fields(model, (1, 28, 28))
    assert fields["act3"].spans is not None and fields["act4"].spans is not None  # unit by unit
    # a pooled unit sees 10 px at stride 4; after both unpoolings and their 3x3 convs a unit reads at most
    # three neighbouring pooled units: 10 + 2 * 4 px
    assert fields["act4"].size == (18, 18)
    fields_hold(model, ["act2", "act3", "act4"], fields, images)
