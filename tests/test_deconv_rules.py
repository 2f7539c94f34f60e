"""deconvolve: in-place ReLUs whose result goes unused keep their rectification, the rules
match a reference built from ReLU hooks, and the caller's modules keep their training flags."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sketchmine import deconvolve
from sketchmine.errors import SketchmineError
from sketchmine.passes.deconv import Deconvolver

SPELLINGS = ("method", "functional", "module")


class SideEffectNet(nn.Module):
    """The demo model's features (shared, trained weights) with every ReLU applied in place
    for its side effect, its result unused: `h.relu_()`, `F.relu(h, inplace=True)`, or the
    model's own nn.ReLU(inplace=True) called as `relu(h)`."""

    def __init__(self, features: nn.Sequential, spelling: str) -> None:
        super().__init__()
        self.features, self.spelling = features, spelling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for m in self.features:
            if isinstance(m, nn.ReLU):
                if self.spelling == "method":
                    h.relu_()
                elif self.spelling == "functional":
                    F.relu(h, inplace=True)
                else:
                    m(h)
            else:
                h = m(h)
        return h


class _Stop(Exception):
    pass


def _derivative(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The elementwise activation's derivative at x (its forward called without hooks)."""
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        (d,) = torch.autograd.grad(mod.forward(xi).sum(), xi)
    return d


def hooked_reference(model: nn.Module, images: torch.Tensor, layer: str, channels, yx, method: str,
                     rectifiers: tuple[type[nn.Module], ...] = (nn.ReLU,)) -> torch.Tensor:
    """The rules applied by backward hooks on the rectifier modules of a copy of the model
    (made out of place), the unit's value read by a forward hook on its layer (Captum's way);
    guided multiplies the rectified signal by the activation's derivative ([x > 0] for ReLU)."""
    m = copy.deepcopy(model).eval()
    handles = []
    for mod in m.modules():
        if isinstance(mod, rectifiers):
            if hasattr(mod, "inplace"):
                mod.inplace = False
            if method != "gradient":
                slopes: list[torch.Tensor] = []  # one module may run more than once (ResNet blocks)

                def keep(mod, args, out, slopes=slopes):
                    slopes.append(_derivative(mod, args[0]))

                def rule(mod, grad_in, grad_out, slopes=slopes):
                    g = grad_out[0].clamp_min(0)
                    return (g * slopes.pop() if method == "guided" else g,)

                handles += [mod.register_forward_hook(keep), mod.register_full_backward_hook(rule)]
    seen = {}

    def stop(mod, args, out):
        seen["out"] = out
        raise _Stop

    handles.append(m.get_submodule(layer).register_forward_hook(stop))
    x = images.detach().clone().requires_grad_(True)
    try:
        m(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    out, n = seen["out"], torch.arange(len(x))
    ch = torch.as_tensor(channels)
    unit = out[n, ch, yx[:, 0], yx[:, 1]] if out.ndim == 4 else out[n, ch]
    (grad,) = torch.autograd.grad(unit.sum(), x)
    return grad


@pytest.fixture(scope="module")
def net(demo_model):
    return demo_model.module


@pytest.fixture(scope="module")
def images(demo_test_set):
    return torch.stack([demo_test_set[i][1] for i in (3, 420, 777, 1630)])


UNITS = {"features.6": ([9, 40, 2, 77], [[3, 2], [0, 6], [6, 0], [4, 4]]),
         "features.12": ([5, 17, 33, 60], [[1, 1], [0, 2], [2, 0], [2, 2]])}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("layer,upto", [("features.6", 7), ("features.12", 13)])
def test_gradient_of_in_place_relu_equals_autograd(net, images, spelling, layer, upto):
    channels, yx = torch.tensor(UNITS[layer][0]), torch.tensor(UNITS[layer][1])
    x = images.clone().requires_grad_(True)
    out = SideEffectNet(net.features[:upto], spelling)(x)  # the in-place model itself, eagerly
    (want,) = torch.autograd.grad(out[torch.arange(len(x)), channels, yx[:, 0], yx[:, 1]].sum(), x)
    assert want.abs().max() > 0
    got = deconvolve(SideEffectNet(net.features, spelling), images, layer, channels, yx, method="gradient")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_rules_of_in_place_relu_equal_hooked_reference(net, images, spelling, method):
    channels, yx = torch.tensor(UNITS["features.12"][0]), torch.tensor(UNITS["features.12"][1])
    want = hooked_reference(net, images, "features.12", channels, yx, method)
    assert want.abs().max() > 0
    got = deconvolve(SideEffectNet(net.features, spelling), images, "features.12", channels, yx, method=method)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    plain = deconvolve(net, images, "features.12", channels, yx, method=method)  # ReLUs used the ordinary way
    torch.testing.assert_close(plain, want, rtol=1e-5, atol=1e-6)


def test_in_place_relu_reaches_readers_of_its_input_only_after_it():
    """`z = relu_(y)` with y read both before and after: the earlier reader sees y unrectified."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            y = self.c1(x)
            before = 0.5 * y  # (autograd's own check refuses a reader that saves y before relu_)
            z = F.relu(y, inplace=True)
            return before + self.c3(y) * z

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(3, 1, 9, 9)
    channels, yx = torch.tensor([0, 2, 3]), torch.tensor([[4, 4], [0, 3], [8, 1]])
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(model(xr)[torch.arange(3), channels, yx[:, 0], yx[:, 1]].sum(), xr)
    forward = Deconvolver(model, "gradient").graph(x)  # the rule-aware graph computes the model's forward
    torch.testing.assert_close(forward, model(x.clone()))
    wrapped = nn.Sequential(model, nn.Identity())  # the model's output as a layer
    got = deconvolve(wrapped, x, "1", channels, yx, method="gradient")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["guided", "deconvnet", "gradient"])
def test_resnet18_equals_hooked_reference(method):
    """torchvision's nn.ReLU(inplace=True), used the ordinary way and twice per block."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    for layer, channels, yx in [("layer2.0.conv2", [1, 7], [[3, 3], [0, 7]]), ("layer3.1", [4, 200], [[2, 1], [0, 3]])]:
        yx_t = torch.tensor(yx)
        want = hooked_reference(model, x, layer, channels, yx_t, method)
        got = deconvolve(model, x, layer, channels, yx_t, method=method)
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


@pytest.fixture()
def training_resnet():
    """A ResNet-18 in train mode with two BatchNorms frozen in eval, as fine-tuning leaves it."""
    torch.manual_seed(2)
    model = torchvision.models.resnet18().train()
    model.bn1.eval()
    model.layer2[0].bn2.eval()
    return model


def test_training_flags_survive(training_resnet):
    model = training_resnet
    before = _flags(model)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    got = deconvolve(model, x, "layer2.0.conv1", [0, 5], [[0, 0], [3, 2]], method="gradient")
    assert _flags(model) == before
    assert not model.bn1.training and model.layer1[0].bn1.training and model.training
    for k, v in model.state_dict().items():  # ran in eval mode: no BatchNorm statistics updated
        assert torch.equal(v, stats[k]), k
    want = deconvolve(copy.deepcopy(model).eval(), x, "layer2.0.conv1", [0, 5], [[0, 0], [3, 2]], method="gradient")
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want)
    deconv = Deconvolver(model, "guided")  # a reused Deconvolver, a batched shared call too
    assert _flags(model) == before
    deconv.shared(x, [0, 1, 1], "fc", [3, 4, 5])
    assert _flags(model) == before


def test_training_flags_survive_errors(training_resnet):
    model = training_resnet
    before = _flags(model)
    deconv = Deconvolver(model, "gradient")
    with pytest.raises(SketchmineError, match="unknown layer"):
        deconv(torch.randn(1, 3, 64, 64), "layer9", [0], [[0, 0]])
    assert _flags(model) == before

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else x  # data-dependent: torch.fx refuses it

    wrapper = Untraceable().train()
    before = _flags(wrapper)
    with pytest.raises(SketchmineError, match="cannot trace"):
        Deconvolver(wrapper, "gradient")
    assert _flags(wrapper) == before


def test_units_outside_the_layer_are_refused(demo_model, images):
    """A top-k's empty slot holds position (-1, -1) and image -1: passed on, -1 would address
    the last row and column without a word."""
    net = demo_model.module
    n = len(images)
    good = deconvolve(net, images, "features.3", [1] * n, [[2, 3]] * n)
    assert good.abs().sum() > 0
    for channels, yx, match in (([1] * n, [[-1, -1]] * n, r"yx's y must lie in \[0, 14\)"),
                                ([1] * n, [[2, 14]] * n, r"yx's x must lie in \[0, 14\)"),
                                ([64] * n, [[2, 3]] * n, r"channels must lie in \[0, 64\)"),
                                ([1] * n, None, r"yx is needed: the layer's output has a 14×14 grid")):
        with pytest.raises(SketchmineError, match=match):
            deconvolve(net, images, "features.3", channels, yx)
    with pytest.raises(SketchmineError, match=r"channels must lie in \[0, 10\)"):
        deconvolve(net, images, "classifier.6", [-1] * n)


OTHER_RECTIFIERS = (lambda: nn.ReLU6(inplace=True), lambda: nn.LeakyReLU(0.1), lambda: nn.GELU(),
                    lambda: nn.SiLU(inplace=True), lambda: nn.Hardswish(), lambda: nn.ELU())


def _with_other_rectifiers(net: nn.Module) -> nn.Module:
    """The demo model (trained weights, copied) with its ReLUs swapped for other rectifiers."""
    other = copy.deepcopy(net)
    relus = [name for name, m in other.named_modules() if isinstance(m, nn.ReLU)]
    assert len(relus) >= 4
    for i, name in enumerate(relus):
        parent, _, child = name.rpartition(".")
        setattr(other.get_submodule(parent), child, OTHER_RECTIFIERS[i % len(OTHER_RECTIFIERS)]())
    return other


@pytest.mark.parametrize("method", ["guided", "deconvnet", "gradient"])
def test_rules_of_other_rectifiers_equal_hooked_reference(net, images, method):
    """ReLU6, LeakyReLU, GELU, SiLU, Hardswish, ELU get the method's rule with their own
    derivative: deconvnet and guided differ from the gradient (before, they were silently it)."""
    other = _with_other_rectifiers(net)
    channels, yx = torch.tensor(UNITS["features.12"][0]), torch.tensor(UNITS["features.12"][1])
    kinds = (nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU)
    want = hooked_reference(other, images, "features.12", channels, yx, method, kinds)
    got = deconvolve(other, images, "features.12", channels, yx, method=method)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    gradient = hooked_reference(other, images, "features.12", channels, yx, "gradient", kinds)
    assert (method == "gradient") == bool(torch.allclose(got, gradient, atol=1e-6))


def test_rules_of_other_rectifiers_in_the_shared_backward(net, images):
    """`Deconvolver.shared` (one forward per image, a batched backward) gives what one
    backward per unit gives, through the other rectifiers' rule too."""
    other = _with_other_rectifiers(net)
    layer = next(name for name, m in other.named_modules() if isinstance(m, nn.Linear))
    d = Deconvolver(other, "guided")
    image_of, units = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([1, 4, 2, 0, 7, 9])
    want = d(images[image_of], layer, units)
    assert want.abs().max() > 0
    torch.testing.assert_close(d.shared(images, image_of, layer, units), want, rtol=1e-5, atol=1e-6)


def test_saturating_activations_pass_the_gradient():
    """Sigmoid and Tanh have no deconvnet rule: every method gives the gradient there."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Sigmoid(), nn.Conv2d(6, 6, 3), nn.Tanh(), nn.Conv2d(6, 4, 3))
    x = torch.rand(2, 1, 12, 12)
    channels, yx = torch.tensor([1, 3]), torch.tensor([[2, 2], [0, 5]])
    grads = [deconvolve(net, x, "4", channels, yx, method=m) for m in ("gradient", "deconvnet", "guided")]
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])
