"""Units read after a ReLU that is 0 where the objective reads it, from the start image on. By
default the ReLUs redirect the gradient to them (featvis_relu.py), so they are optimised like the
others, and units whose path is alive are optimised exactly as without it. Without the redirect
(regularizers "none" or redirect_relu False, or a layer an earlier version began) their objective
gives the input no gradient at any step and the optimisation never moves them: the API marks them
and the stored pass says so."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch import nn

import sketchmine
from sketchmine.passes.featvis import feature_visualization
from sketchmine.passes.featvis_relu import _RedirectedReLU
from sketchmine.passes.visualize import visualize
from sketchmine.store import attr_sums, schema
from tests.test_report import _open

PLAIN = {"redirect_relu": False}


def test_units_without_gradient_are_marked(demo_model):
    units = list(range(8))
    r = feature_visualization(demo_model, "features.7", units, steps=4, regularizers=PLAIN)  # the ReLU after features.6
    start = feature_visualization(demo_model, "features.7", units, steps=1, regularizers=PLAIN)
    flat = np.flatnonzero(r.no_gradient)
    assert 0 < len(flat) < len(units)
    for u in range(len(units)):  # marked exactly where the image never left the starting noise
        assert torch.equal(r.images[u], start.images[u]) == bool(r.no_gradient[u]), u
    conv = feature_visualization(demo_model, "features.6", units, steps=4, regularizers=PLAIN)  # the conv: all move
    assert not conv.no_gradient.any()
    none = feature_visualization(demo_model, "features.7", units, steps=4, regularizers="none")
    assert none.regularizers["redirect_relu"] is False and none.no_gradient.any()


def test_the_redirect_optimises_the_dead_units(demo_model):
    """The default redirects: every unit moves, and the units the plain gradient left as noise
    reach a positive peak (the plain pass leaves most of them at 0)."""
    units = list(range(16))
    plain = feature_visualization(demo_model, "features.7", units, steps=32, regularizers=PLAIN)
    redirected = feature_visualization(demo_model, "features.7", units, steps=32)
    assert redirected.regularizers["redirect_relu"] is True
    dead = plain.no_gradient
    assert dead.sum() >= 4 and not redirected.no_gradient.any()
    assert (redirected.peak[dead] > 0).all() and (redirected.objective[dead] > 0).all()
    assert (redirected.peak[dead] > plain.peak[dead]).all()
    pixel = feature_visualization(demo_model, "features.7", units, steps=8, method="pixel")
    assert not pixel.no_gradient.any()


@pytest.mark.parametrize("layer", ["features.6", "features.10", "classifier.4"])
def test_the_redirect_leaves_a_live_path_exactly_alone(demo_model, layer):
    """Units read before their ReLU (each element's gradient passes every earlier ReLU
    somewhere) get bit for bit the images of the plain gradient."""
    a = feature_visualization(demo_model, layer, list(range(8)), steps=16)
    b = feature_visualization(demo_model, layer, list(range(8)), steps=16, regularizers=PLAIN)
    assert torch.equal(a.images, b.images)


def test_the_redirected_backward_against_its_rule():
    """Per element: the ordinary ReLU gradient (torch's own, NaN-free where x <= 0) where it is
    not all zero, else the incoming gradient wherever it pushes the input up or x > 0."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    x[1] = -x[1].abs() - 0.1  # element 1: dead everywhere
    x[3, :, :2] = -1.0  # element 3: the gradient below reads only its dead part
    up = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    up[3, :, 2:] = 0
    up[0, 0, 0] = float("nan")
    x[0, 0, 0] = -0.5
    xr = x.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(_RedirectedReLU.apply(xr, False), xr, up)
    xt = x.clone().requires_grad_(True)
    (torch_grad,) = torch.autograd.grad(torch.relu(xt), xt, up)
    for e in (0, 2):  # alive: exactly torch's gradient (0, not NaN, at the dead NaN entry)
        assert torch.equal(got[e], torch_grad[e])
    assert got[0, 0, 0] == 0
    for e in (1, 3):  # dead to this gradient: the upward-pushing entries pass
        assert not torch_grad[e].any()
        want = torch.where((x[e] > 0) | (up[e] > 0), up[e], torch.zeros(()))
        assert torch.equal(got[e], want) and got[e].any()


@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (6, 7), (4, 2, 9)])
def test_both_redirect_routes_agree(shape):
    """The CPU's route (dead elements gathered on the host) and the GPU's (no host sync: the rule
    built whole, selected per element) give the same gradient, bit for bit."""
    from sketchmine.passes.featvis_relu import redirect_dead

    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g)
    x[1] = -x[1].abs()  # a dead element
    up = torch.randn(shape, generator=g)
    up[0].view(-1)[0], x[0].view(-1)[0] = float("nan"), -1.0  # a NaN gradient where x <= 0: 0 on both routes
    out = torch.ops.aten.threshold_backward(up, x, 0)
    a, b = redirect_dead(out.clone(), up, x, gather=True), redirect_dead(out.clone(), up, x, gather=False)
    assert torch.equal(a, b) and not torch.equal(a[1], out[1])


class _Functional(nn.Module):
    """Convs whose rectifiers are functions, in three spellings (GoogLeNet's convs call
    F.relu(x, inplace=True)), not modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 4, 3, padding=1)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x), inplace=True)
        return self.out(self.head(x).relu_() + torch.relu(self.head(x)))


class _Discarding(nn.Module):
    """A conv rectified in place by a call whose result is discarded (research code does it)."""

    def __init__(self, spelling: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Identity()
        self.spelling = spelling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        (lambda: h.relu_(), lambda: F.relu(h, True), lambda: torch.relu_(h), lambda: F.relu(h, inplace=True),
         lambda: F.relu_(h))[self.spelling]()
        return self.out(h)


@pytest.mark.parametrize("spelling", range(5))
def test_in_place_relus_stay_in_place(spelling):
    """The forward under the redirect computes what the model computes without it, also where
    an in-place ReLU's result is discarded; and its dead units are optimised."""
    from sketchmine.passes.featvis import LayerReader
    from sketchmine.passes.featvis_relu import redirected_relus

    torch.manual_seed(1)
    net = _Discarding(spelling).eval()
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    reader = LayerReader(net, "out")
    with torch.no_grad():
        want = reader(x)
    with redirected_relus():
        got = reader(x)
    assert torch.equal(got, want) and (want >= 0).all() and (want == 0).any()
    with torch.no_grad():
        net.conv.bias.fill_(-4.0)
    plain = feature_visualization(net, "out", [0, 1], steps=6, size=8, regularizers=PLAIN)
    redirected = feature_visualization(net, "out", [0, 1], steps=6, size=8)
    assert plain.no_gradient.all() and not redirected.no_gradient.any()


def test_functional_relus_are_redirected():
    torch.manual_seed(0)
    net = _Functional()
    with torch.no_grad():
        net.head.bias.fill_(-3.0)  # every head unit dead at the start image
    plain = feature_visualization(net, "out", list(range(4)), steps=8, size=12, regularizers=PLAIN)
    redirected = feature_visualization(net, "out", list(range(4)), steps=8, size=12)
    assert plain.no_gradient.all() and not redirected.no_gradient.any()


def _as_an_earlier_version_claimed(path: Path, layer: str) -> None:
    """The layer's optimize claim as a sketchmine before the redirect wrote it: no redirect_relu
    setting, nothing done yet."""
    group = zarr.open_group(str(path / "layers" / layer), mode="r+")
    claim = dict(group.attrs[schema.OPTIMIZED])
    regs = {k: v for k, v in claim["regularizers"].items() if k != "redirect_relu"}
    group.update_attributes({schema.OPTIMIZED: attr_sums.sealed({**claim, "regularizers": regs, "units_done": 0})})


def test_the_stored_pass_says_which_units_were_not_optimised(small_test_set, tmp_path, caplog):
    """A layer an earlier version began resumes by its rule (plain gradients), says so, and
    notes the units that got none."""
    run = sketchmine.mine("demo", small_test_set, layers=["features.7"], k=1, out=tmp_path / "r.zarr")
    visualize(run, data=small_test_set, batch_size=48, optimize=True, optimize_steps=2, max_units=1)
    _as_an_earlier_version_claimed(tmp_path / "r.zarr", "features.7")
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        run = visualize(run, data=small_test_set, batch_size=48, optimize=True, optimize_steps=2, max_units=8)
    want = feature_visualization("demo", "features.7", list(range(48)), steps=2, regularizers=PLAIN)
    np.testing.assert_array_equal(run.optimized("features.7", key="optimized")[:8], want.pixels[:8])
    notes = [r.getMessage() for r in caplog.records if "no gradient" in r.getMessage()]
    assert want.no_gradient[:8].any() and len(notes) == 1, notes
    assert f"units {', '.join(str(u) for u in np.flatnonzero(want.no_gradient[:8]))} " in notes[0]
    assert "starting noise" in notes[0] and "redirected ReLU gradients (redirect_relu, on by default" in notes[0]
    older = [r.getMessage() for r in caplog.records if "earlier version" in r.getMessage()]
    assert len(older) == 1 and "redirect_relu False" in older[0] and "--redo" in older[0], older
    claim = run.layer_attrs("features.7")[schema.OPTIMIZED]
    assert "redirect_relu" not in claim["regularizers"] and claim["units_done"] == 8
    assert not sketchmine.verify_run(run.path).damaged
    run = visualize(run, data=small_test_set, batch_size=48, optimize=True, optimize_steps=2, redo=True,
                    max_units=8)  # --redo: this version's settings, every unit optimised
    assert run.layer_attrs("features.7")[schema.OPTIMIZED]["regularizers"]["redirect_relu"] is True
    assert (run.optimized("features.7", key="optimized_stopped")[:8] == -1).all()


def test_the_stored_mark_reaches_the_slide_and_the_report(small_test_set, tmp_path, browser):
    """optimized_stopped holds NO_GRADIENT for those units (-1 for the others), and the slide and
    the report's card (in Chromium) say so instead of showing the noise as an optimised input."""
    from sketchmine.present.montage import slide_content
    from sketchmine.present.report import write_report
    from sketchmine.store import schema

    run = sketchmine.mine("demo", small_test_set, layers=["features.7"], k=1, out=tmp_path / "r.zarr")
    run = visualize(run, data=small_test_set, batch_size=8, optimize=True, optimize_steps=2, max_units=1)
    _as_an_earlier_version_claimed(tmp_path / "r.zarr", "features.7")
    run = visualize(run, data=small_test_set, batch_size=8, optimize=True, optimize_steps=2, max_units=8)
    want = feature_visualization("demo", "features.7", list(range(8)), steps=2, regularizers=PLAIN).no_gradient
    stopped = run.optimized("features.7", key="optimized_stopped")
    np.testing.assert_array_equal(stopped, np.where(want, schema.NO_GRADIENT, -1))
    flat, moved = int(np.flatnonzero(want)[0]), int(np.flatnonzero(~want)[0])
    assert slide_content(run, "features.7", flat, None).peak is None
    assert slide_content(run, "features.7", flat, None).made == "fourier, 2 steps, plain ReLU gradients"
    assert slide_content(run, "features.7", moved, None).peak == float(run.optimized("features.7", moved,
                                                                                     key="optimized_peak"))
    index = write_report(run, tmp_path / "report", montages=0)
    page, problems = _open(browser, (index.parent / "layers" / "00-features.7.html").as_uri())
    page.wait_for_selector(".card")
    rows = page.evaluate("""() => [...document.querySelectorAll('.card')].slice(0, 8).map(c =>
        [...c.querySelectorAll('.row')].map(r => [r.querySelector('.label')?.textContent,
                                                  r.querySelector('.tile')?.title || '']))
        .map(rs => rs.find(r => r[0] && r[0].includes('optimised')))""")
    assert rows[flat][0] == "not optimised" and rows[flat][1].startswith("no gradient at any step")
    assert rows[moved][0] == "optimised"  # and how it was made: this layer by the earlier rule
    assert rows[moved][1].startswith("feature visualisation (fourier, 2 steps, plain ReLU gradients)"), rows[moved]
    assert not problems, problems
