"""The deconvolution of a softmax unit on its most confident images, against a float64 reference
written from the methods' definitions (a rule at every ReLU, autograd elsewhere).

A softmax's top-k images are its most confident: p_c within a few float32 steps of 1 (1.0 past a
logit margin of about 17). torch's softmax backward computes p_c · (1 - p_c) there from a rounded
p_c, so the signal's largest term, through the unit's own logit, was rounding noise: the demo
model's top image of class 0 came back pointing the other way (cosine -0.9 with the float64
signal). Checked on the virtual softmax (deconvolve and the shared backward visualize uses) and on
a model's own nn.Softmax / nn.LogSoftmax module.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sketchmine import deconvolve
from sketchmine.passes.deconv import Deconvolver


class _Rule(torch.autograd.Function):
    """Zeiler & Fergus: rectify the backward signal; Springenberg: rectify and mask by x > 0;
    gradient: mask by x > 0."""

    @staticmethod
    def forward(ctx, x, method):
        ctx.method = method
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.method == "deconvnet":
            return torch.relu(g), None
        if ctx.method == "guided":
            return torch.relu(g) * (x > 0), None
        return g * (x > 0), None


class _RuleModule(nn.Module):
    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method

    def forward(self, x):
        return _Rule.apply(x, self.method)


def _ruled64(net: nn.Module, method: str) -> nn.Module:
    """A float64 copy of `net` with every nn.ReLU doing the method's rule."""
    m = copy.deepcopy(net).double().eval()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _RuleModule(method))
    return m


class Prob(nn.Module):
    """The demo network, then its own softmax module."""

    def __init__(self, net: nn.Module, log: bool) -> None:
        super().__init__()
        self.net, self.prob = net, (nn.LogSoftmax(dim=1) if log else nn.Softmax(dim=1))

    def forward(self, x):
        return self.prob(self.net(x))


@pytest.fixture(scope="module")
def confident(demo_model, demo_test_set):
    """For classes 0-3, the test image the demo model is surest of (what the top-1 of the
    softmax holds), with its probability."""
    net = demo_model.module.eval()
    x = torch.stack([demo_test_set[i][1] for i in range(len(demo_test_set))])
    with torch.no_grad():
        p = torch.softmax(net(x), 1)
    best = p[:, :4].argmax(0)
    return x[best], p[best, torch.arange(4)]


def _reference(net: nn.Module, images: torch.Tensor, method: str, log: bool = False) -> torch.Tensor:
    x = images.double().requires_grad_(True)
    out = torch.log_softmax(_ruled64(net, method)(x), 1) if log else torch.softmax(_ruled64(net, method)(x), 1)
    (g,) = torch.autograd.grad(out[torch.arange(len(x)), torch.arange(len(x))].sum(), x)
    return g.float()


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Each image's signal within 1 % of the float64 one (float32 against float64 arithmetic)."""
    err = (got - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)
    assert want.flatten(1).norm(dim=1).min() > 0
    assert err.max() < 1e-2, err


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_a_confident_softmax_unit_is_deconvolved_as_in_float64(demo_model, confident, method):
    images, p = confident
    assert (1 - p.double()).min() < 1e-6  # saturated in float32: the case torch's backward rounds away
    net = demo_model.module.eval()
    want = _reference(net, images, method)
    _close(deconvolve(net, images, "softmax", list(range(4)), method=method), want)
    shared = Deconvolver(net, method).shared(images, torch.arange(4), "softmax", torch.arange(4))  # visualize's path
    _close(shared, want)


@pytest.mark.parametrize("log", [False, True])
def test_a_softmax_module_is_deconvolved_as_in_float64(demo_model, confident, log):
    images, _ = confident
    model = Prob(demo_model.module, log).eval()
    want = _reference(demo_model.module.eval(), images, "guided", log)
    _close(deconvolve(model, images, "prob", list(range(4)), method="guided"), want)
