"""cut.py: the graph cut (head / split) reproduces the network, and the early stop ends a
forward right after the layer, also on a model torch.fx cannot trace."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sketchmine.model import cut
from sketchmine.errors import SketchmineError
from sketchmine.model.graph import module_outputs, trace
from sketchmine.model.zoo import SketchResNet


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return SketchResNet(num_classes=5, in_channels=1).eval()


def test_split_reproduces_the_network(resnet):
    x = torch.randn(2, 1, 32, 32)
    layer = next(n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d))
    head, tail = cut.split(*cut.trace_at(resnet, layer))
    with torch.no_grad():
        out = head(x)
        assert torch.equal(tail(*out), resnet(x))
        assert torch.equal(out[0], dict(resnet.named_modules())[layer](x))


def test_head_returns_the_layer_output(resnet):
    x = torch.randn(2, 1, 32, 32)
    gm = trace(resnet, "test")
    layer = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)][-1]
    seen = {}
    handle = dict(resnet.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.setdefault("t", o))
    with torch.no_grad():
        resnet(x)
        handle.remove()
        assert torch.equal(cut.head(gm, module_outputs(gm)[layer])(x), seen["t"])


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 1e9:
            h = h * 2
        return self.b(h)


def test_stop_after_works_untraced_and_cleans_up():
    net, calls = Branchy(), []
    net.b.register_forward_pre_hook(lambda m, i: calls.append("b"))
    with cut.stop_after(net, "a") as run:
        assert run(torch.randn(3, 4)) is None
    assert calls == [] and not net.a._forward_hooks
    with pytest.raises(SketchmineError, match="unknown layer"):
        with cut.stop_after(net, "c"):
            pass
