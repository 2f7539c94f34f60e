"""The virtual softmax layer's top-k follows the images' float64 log-odds, not float32 p.

A confident image's float32 probability rounds to exactly 1.0 (a margin of about 17 over the
runner-up); ranked by it, every such image ties and the top-k became the first confident
images in dataset order. The trained demo model does this on its own test images (class 0),
and a model with its logits scaled by 20 on nearly all of them. The values stay the
probabilities torch.softmax gives, bit for bit, through checkpoints, resume and merges.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.stats.accumulators import Batch
from sketchmine.stats.topk import LOG_ODDS, TopK, log_odds, unpack
from sketchmine.store import schema
from tests.helpers import StopAfter, assert_same_store, log_odds64, ranked64


class Scaled(nn.Module):
    """The demo network with its logits multiplied by `scale` (an over-confident network)."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


TOL = 4 * 2.0**-24
"""Relative float32 rounding of a log-odds (a few operations): images whose float64 log-odds
are closer than this may tie in float32 and be ranked by image index (227.221170 and
227.221187 are both 227.22118 in float32)."""


def _check_against_float64(run, upto: int | None = None) -> None:
    """The run's softmax top-k: the float64 log-odds ranking of the images mined so far, up to
    float32 near-ties, and the values torch.softmax gives for those images' logits, exactly."""
    logits = run.store.read(schema.LOGITS)[:upto]
    values, index, yx = run.topk("softmax")
    z = log_odds64(logits)
    want = ranked64(z, run.k)
    for c in range(z.shape[1]):
        got = z[index[c], c]
        tol = TOL * (1 + np.abs(got))
        assert (got[1:] <= got[:-1] + tol[1:]).all(), c  # best first
        rest = np.delete(z[:, c], index[c])
        assert (rest <= got[-1] + tol[-1]).all(), c  # no image left out ranks above the k-th
        differs = index[c] != want[c]
        assert np.allclose(got[differs], z[want[c][differs], c], rtol=TOL, atol=TOL), c  # only near-ties differ
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_array_equal(values, np.take_along_axis(p.T, index, 1))
    assert (yx == -1).all()


@pytest.mark.parametrize("scale", [1, 20])
def test_softmax_topk_follows_float64_log_odds(tmp_path, demo_model, demo_test_set, scale):
    net = Scaled(demo_model.module, scale).eval()
    run = sketchmine.mine(net, demo_test_set, layers=["softmax"], out=tmp_path / "run.zarr", batch_size=64,
                          distributions=False)
    p = torch.softmax(torch.from_numpy(run.store.read(schema.LOGITS)), 1).numpy()
    saturated = (p == 1.0).sum(0)
    assert saturated.max() > run.k  # images that tie at 1.0 in float32 compete for the top-k
    _check_against_float64(run)


def test_softmax_ranking_survives_checkpoints_and_resume(tmp_path, demo_model, small_test_set):
    net = Scaled(demo_model.module, 20).eval()
    kwargs = dict(layers=["softmax", "net.classifier.6"], batch_size=32, flush_every=1, distributions=True)
    ref = sketchmine.mine(net, small_test_set, out=tmp_path / "ref.zarr", **kwargs)
    _check_against_float64(ref)
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(net, small_test_set, out=out, progress=StopAfter(150), **kwargs)
    partial = sketchmine.open_run(out)
    assert not partial.complete and 0 < partial.images_done < len(small_test_set)
    _check_against_float64(partial, partial.images_done)  # read from the checkpoint's state
    run = sketchmine.mine(net, small_test_set, out=out, **kwargs)
    assert run.complete
    assert_same_store(out, ref.path)


def _topk(batches: list[tuple[torch.Tensor, torch.Tensor]], classes: int, k: int) -> TopK:
    acc = TopK([("softmax", classes, ())], k, log_odds={"softmax"})
    for index, logits in batches:
        acc.update("softmax", torch.softmax(logits, 1), Batch(index, index, index, logits, fed={"softmax": logits}))
    return acc


def test_merged_ranks_keep_each_entrys_probability():
    """Two ranks' states over disjoint images fold into the one-process result, values included."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(96, 7, generator=gen) * 40
    index = torch.arange(96)
    whole = _topk([(index[s:s + 16], logits[s:s + 16]) for s in range(0, 96, 16)], 7, 5)
    a = _topk([(index[s:s + 16], logits[s:s + 16]) for s in range(0, 96, 32)], 7, 5)
    b = _topk([(index[s:s + 16], logits[s:s + 16]) for s in range(16, 96, 32)], 7, 5)
    a.merge(b)
    got, want = a.results(), whole.results()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(want[schema.layer_array("softmax", "image_index")], ranked64(log_odds64(logits), 5))


def test_a_checkpoint_ranked_by_probability_is_refused():
    """A state written when the softmax was ranked by p (no log_odds array) does not resume:
    its heaps hold probabilities, which cannot be mixed with log-odds. Readers show its values."""
    old = TopK([("fc", 3, ()), ("softmax", 3, ())], 2).state()
    del old[LOG_ODDS]
    with pytest.raises(ValueError, match="'softmax' ranked by probability there, by log-odds now"):
        TopK([("fc", 3, ()), ("softmax", 3, ())], 2, log_odds={"softmax"}).restore(old)
    shown = unpack(old, ["fc", "softmax"])["softmax"]
    np.testing.assert_array_equal(shown["shown"], shown["values"])


def test_log_odds_are_finite_and_accurate_far_past_saturation():
    gen = torch.Generator().manual_seed(1)
    for classes in (2, 10, 250):
        logits = torch.randn(300, classes, generator=gen) * torch.logspace(-1, 2.5, 300)[:, None]
        z = log_odds(logits).double().numpy()
        want = log_odds64(logits.numpy())
        assert np.isfinite(z).all()
        np.testing.assert_allclose(z, want, rtol=1e-6, atol=1e-6)
    edge = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf"), float("-inf"), 3.0]])
    assert log_odds(edge)[0, 1] == float("-inf") and log_odds(edge)[1, 2] == float("inf")
    assert log_odds(torch.tensor([[4.0], [-2.0]])).tolist() == [[1.0], [1.0]]  # one class: p = 1, all tie
