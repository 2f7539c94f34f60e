"""Deconvolution on receptive-field windows: exact where the cone is local, the whole image
where an op in the cone reads the input's size or statistics over positions; and units read
in the layout the layer was mined in (a time-first per-step Linear)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import sketchmine
from sketchmine import receptive_fields
from sketchmine.model.coupling import position_coupled
from sketchmine.model.taps import TIME_FIRST
from sketchmine.passes.deconv import Deconvolver
from sketchmine.stats.ops import crop_patches
from tests.test_time_first import Drawings, TimeFirst, T


class Middle(nn.Module):
    """conv → `middle` → two 3×3 convs → global pool → fc, on 28-px drawings: `middle` keeps
    the 28×28 grid at the mined size, so the receptive fields are those of the convs."""

    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.middle = middle
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.middle(F.relu(self.conv1(x)))
        x = F.relu(self.conv3(F.relu(self.conv2(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MIDDLES = {
    "adaptive avg pool, identity at 28 px": lambda: nn.AdaptiveAvgPool2d(28),
    "adaptive max pool, identity at 28 px": lambda: nn.AdaptiveMaxPool2d(28),
    "group norm": lambda: nn.GroupNorm(2, 8),
    "batch norm without running statistics": lambda: nn.BatchNorm2d(8, track_running_stats=False),
    "softmax over x": lambda: nn.Softmax(dim=3),
}


@pytest.fixture(scope="module")
def drawings(demo_test_set):
    return torch.stack([demo_test_set[i][1] for i in (0, 250, 600, 1111, 1500, 1999)])


def _whole_image_crops(decon, x, index, layer, channels, yx, f):
    whole = decon(x[index], layer, channels, yx)
    corners = torch.stack([f.offset[0] + yx[:, 0] * f.stride[0], f.offset[1] + yx[:, 1] * f.stride[1]], 1)
    return crop_patches(whole, torch.arange(len(index)), corners, *f.size)


@pytest.mark.parametrize("middle", MIDDLES)
@pytest.mark.parametrize("method", ["deconvnet", "gradient"])
def test_a_unit_behind_a_size_or_statistics_op_is_deconvolved_on_the_whole_image(drawings, middle, method):
    model = Middle(MIDDLES[middle]()).eval()
    f = receptive_fields(model, 28)["conv3"]
    assert f.size == (7, 7) and f.stride == (1, 1)  # local for the field: the op is pointwise at 28 px
    decon = Deconvolver(model, method)
    gen = torch.Generator().manual_seed(1)
    yx = torch.randint(0, 28, (10, 2), generator=gen)
    yx[0], yx[1], yx[2] = torch.tensor([0, 0]), torch.tensor([27, 27]), torch.tensor([14, 9])
    channels, index = torch.randint(0, 8, (10,), generator=gen), torch.arange(10) % len(drawings)
    want = _whole_image_crops(decon, drawings, index, "conv3", channels, yx, f)
    got = decon.field_crops(drawings, index, "conv3", channels, yx, f)
    assert want.abs().amax(dim=(1, 2, 3)).min() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    assert not decon.windowable("conv3") and decon.windowable("conv1")


def test_local_layers_stay_windowed_and_exact(demo_model, drawings):
    """The demo model's convs (BatchNorm with running statistics, max pools, ReLUs) keep their
    windows; its FC and softmax layers see the whole image."""
    net = demo_model.module
    decon = Deconvolver(net, "guided")
    fields = receptive_fields(net, 28)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(decon.windowable(n) for n in convs)
    assert not decon.windowable("softmax")
    layer, shape = convs[-1], {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: shape.setdefault("s", o.shape) and None)
    with torch.no_grad():
        net(drawings[:1])
    handle.remove()
    c, h, w = shape["s"][1:]
    yx = torch.stack([torch.arange(6) % h, (torch.arange(6) * 5) % w], 1)
    channels, index = torch.arange(6) % c, torch.arange(6)
    want = _whole_image_crops(decon, drawings, index, layer, channels, yx, fields[layer])
    got = decon.field_crops(drawings, index, layer, channels, yx, fields[layer])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def _cone(fn) -> list[str]:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gn, self.bn, self.lrn = nn.GroupNorm(1, 4), nn.BatchNorm2d(4), nn.LocalResponseNorm(2)
            self.up, self.soft = nn.Upsample(size=(9, 9)), nn.Softmax(dim=1)

        def forward(self, x):
            return fn(self, x)

    return position_coupled(fx.symbolic_trace(Net()))


@pytest.mark.parametrize("fn, coupled", [
    (lambda m, x: m.lrn(m.soft(m.bn(x.relu()))) + torch.softmax(x, 1) + x.mean(1, keepdim=True), []),
    (lambda m, x: m.gn(x), ["gn (GroupNorm)"]),
    (lambda m, x: m.up(x), ["up (Upsample)"]),
    (lambda m, x: F.interpolate(x, size=(5, 5)), ["interpolate (interpolate)"]),
    (lambda m, x: F.adaptive_max_pool2d(x, 3), ["adaptive_max_pool2d (adaptive_max_pool2d)"]),
    (lambda m, x: torch.softmax(x, -1), ["softmax (softmax)"]),
    (lambda m, x: x - x.mean((2, 3), keepdim=True), ["mean (.mean())"]),
    (lambda m, x: F.instance_norm(x), ["instance_norm (instance_norm)"]),
    (lambda m, x: F.batch_norm(x, None, None, training=True), ["batch_norm (batch_norm)"]),
])
def test_position_coupled_names_the_ops_that_read_other_positions(fn, coupled):
    assert _cone(fn) == coupled


# ---- a per-step Linear after a time-first GRU: (T, N, F) with as many images as steps ----------

@pytest.fixture(scope="module")
def sequences():
    torch.manual_seed(0)
    from sketchmine.data import animal_shape

    images = animal_shape("test").images[:3 * T * T].astype(np.float32) / 255  # real silhouettes as frames
    return TimeFirst().eval(), torch.from_numpy(images).view(3 * T, T, 1, 28, 28)[..., ::3, ::3].contiguous()


def _autograd(net, x, units, steps):
    out = []
    for n in range(len(x)):
        xi = x[n:n + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net.steps(xi)[int(steps[n]), 0, int(units[n])], xi)
        out.append(g[0])
    return torch.stack(out)


@pytest.mark.parametrize("layouts", [None, {"head": {"layout": TIME_FIRST}}], ids=["probed", "recorded"])
def test_a_time_first_linear_is_deconvolved_per_image_with_as_many_images_as_steps(sequences, layouts):
    net, x = sequences
    x = x[:T]  # a batch of exactly T images: (T, N, F) has the same shape as (N, T, F)
    units, steps = torch.arange(T) % 3, (torch.arange(T) * 3) % T
    yx = torch.stack([torch.zeros(T, dtype=torch.long), steps], 1)
    decon = Deconvolver(net, "gradient", layouts=layouts)
    want = _autograd(net, x, units, steps)
    torch.testing.assert_close(decon(x, "head", units, yx), want)
    torch.testing.assert_close(decon.shared(x, torch.arange(T), "head", units, yx), want)


def test_visualize_stores_a_time_first_linear_per_image(tmp_path, sequences):
    """End to end: entries grouped T at a time (batch_size T) are stored as autograd gives them."""
    from sketchmine.passes.images import signal_to_uint8

    net, x = sequences
    run = sketchmine.mine(net, Drawings(x), layers=["head"], k=3, out=tmp_path / "r.zarr", batch_size=5)
    run = sketchmine.visualize(run, batch_size=T, data=Drawings(x), model=net, method="gradient")
    _, index, yx = run.topk("head")
    stored = np.asarray(run.layer_array("head", "deconv")).astype(int)
    for u in range(3):
        want = _autograd(net, x[torch.from_numpy(index[u])], [u] * 3, yx[u, :, 1]).sum(1)  # frames summed
        want = signal_to_uint8(want).permute(0, 2, 3, 1).numpy().astype(int)
        err = int(np.abs(stored[u] - want).max())
        assert err <= 1, f"unit {u}: stored deconvolutions differ from autograd by up to {err}/255"
