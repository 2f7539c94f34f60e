"""The max-pool tie rule (passes/deconv_pools.py): every spelling of a max pool sends the signal to
the first input in raster order among those within the tolerance of the window's maximum, so an
ulp of rounding no longer moves a switch; the forward values stay torch's own.

The pools read the demo drawings' pixels directly: their white background holds exact ties in
every window, and nudging each pixel by one ulp up or down (another rounding of the same image)
breaks them at random, which moves autograd's switches (checked, so the test can fail)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sketchmine.passes.deconv import Deconvolver
from sketchmine.passes.deconv_rules import METHODS, with_rule

SIZE = 28  # the demo model's input
ADAPTIVE = 20  # an adaptive pool's output: windows of 2 and 3 pixels, overlapping
SPELLINGS = ("module", "module return_indices", "F.max_pool2d", "F.max_pool2d return_indices", "torch.max_pool2d",
             "F.max_pool2d_with_indices", "adaptive module", "F.adaptive_max_pool2d",
             "F.adaptive_max_pool2d return_indices", "F.adaptive_max_pool2d_with_indices")


class PooledDemo(nn.Module):
    """A max pool of one spelling on the image, then the demo model's trained features (shared)."""

    def __init__(self, features: nn.Sequential, spelling: str) -> None:
        super().__init__()
        self.spelling, self.body = spelling, features
        self.pool = {"module": nn.MaxPool2d(3, 1, 1), "module return_indices": nn.MaxPool2d(3, 1, 1, return_indices=True),
                     "adaptive module": nn.AdaptiveMaxPool2d(ADAPTIVE)}.get(spelling, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spelling
        if s == "module return_indices":
            h = self.pool(x)[0]
        elif s in ("module", "adaptive module"):
            h = self.pool(x)
        elif s == "F.max_pool2d":
            h = F.max_pool2d(x, 3, 1, 1)
        elif s == "F.max_pool2d return_indices":
            h, _ = F.max_pool2d(x, 3, stride=1, padding=1, return_indices=True)
        elif s == "torch.max_pool2d":
            h = torch.max_pool2d(x, 3, 1, 1)
        elif s == "F.max_pool2d_with_indices":
            h = F.max_pool2d_with_indices(x, 3, 1, 1)[0]
        elif s == "F.adaptive_max_pool2d":
            h = F.adaptive_max_pool2d(x, ADAPTIVE)
        elif s == "F.adaptive_max_pool2d return_indices":
            h = F.adaptive_max_pool2d(x, (ADAPTIVE, ADAPTIVE), return_indices=True)[0]
        else:
            h = F.adaptive_max_pool2d_with_indices(x, ADAPTIVE)[0]
        return self.body(h)


def _nudged(images: torch.Tensor) -> torch.Tensor:
    """Each pixel one ulp up or down, at random: the same image rounded otherwise."""
    up = torch.rand(images.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    return torch.nextafter(images, torch.where(up, torch.inf, -torch.inf))


@pytest.fixture(scope="module")
def drawings(small_test_set):
    return torch.stack([small_test_set[i][1] for i in range(0, 300, 30)])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_takes_the_tie_rule(demo_model, drawings, spelling):
    model = PooledDemo(demo_model.module.features, spelling).eval()
    # the first conv's units: their signal meets no other pool (a later pool's inputs over the
    # background can be a conv's cancellation, 1e-3 of its terms, which an ulp moves past any
    # relative tolerance; /work/scratch/ties/FINDINGS.md)
    layer, n = "body.0", len(drawings)
    channels = torch.arange(n) % 32
    grid = ADAPTIVE if "adaptive" in spelling else SIZE
    yx = torch.randint(0, grid, (n, 2),
                       generator=torch.Generator().manual_seed(2))
    nudged = _nudged(drawings)
    for method in METHODS:
        decon = Deconvolver(model, method)
        with torch.no_grad():  # the forward is torch's own
            assert torch.equal(with_rule(model, method)(drawings), model(drawings)), (spelling, method)
        got, again = decon(drawings, layer, channels, yx), decon(nudged, layer, channels, yx)
        err = float(((got - again).abs().amax(dim=(1, 2, 3)) / got.abs().amax(dim=(1, 2, 3))).max())
        assert err < 1e-5, f"{spelling} ({method}): an ulp of rounding moved the signal by {err:.2e} of its peak"
        shared = decon.shared(drawings, torch.arange(n), layer, channels, yx)  # the batched backward
        assert torch.allclose(shared, got, rtol=0, atol=1e-6 * float(got.abs().max())), (spelling, method)
    # autograd's own switches follow the ulp: the nudge did break ties
    x, y = drawings.clone().requires_grad_(True), nudged.clone().requires_grad_(True)
    plain = [torch.autograd.grad(model.body[:1](F.max_pool2d(v, 3, 1, 1) if "adaptive" not in spelling else
                                                F.adaptive_max_pool2d(v, ADAPTIVE))[:, 0, 5, 5].sum(), v)[0]
             for v in (x, y)]
    assert float((plain[0] - plain[1]).abs().max()) > 0.1 * float(plain[0].abs().max()), spelling
    # an adaptive pool still couples positions (its layers are deconvolved on the whole image)
    assert Deconvolver(model, "deconvnet").windowable(layer) == ("adaptive" not in spelling), spelling
