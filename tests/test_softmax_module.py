"""A model's own nn.Softmax / nn.LogSoftmax layer, and every softmax's bottom-k, follow the
images' float64 log-odds, not their float32 probabilities.

Past a logit margin of about 17 float32 p is 1.0 (log p 0.0), and past a gap of about 104 it
is 0.0: ranked by it, those images tie and go in dataset order. A Caffe-style network ends in
a softmax module (its "prob" layer); the virtual softmax already ranked its top-k by log-odds
(test_softmax_rank.py). Here: the demo network with its logits scaled by 20 (over-confident)
and a softmax module on top, against a plain torch forward and float64 log-odds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.model.taps import RANKED_BY_INPUT
from tests.helpers import StopAfter, log_odds64

TOL = 4 * 2.0**-24  # float32 rounding of a log-odds: closer images may tie and go by index


class Prob(nn.Module):
    """The demo network, its logits scaled by 20, then a softmax module ("prob")."""

    def __init__(self, net: nn.Module, log: bool = False) -> None:
        super().__init__()
        self.net = net
        self.prob = nn.LogSoftmax(dim=1) if log else nn.Softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prob(self.logits(x))


def _reference(model: Prob, ds, batch: int = 64) -> np.ndarray:
    """The logits the softmax module is fed, by a plain forward in the run's batches."""
    with torch.no_grad():
        return np.concatenate([model.logits(torch.stack([ds[i][1] for i in range(a, min(a + batch, len(ds)))])).numpy()
                               for a in range(0, len(ds), batch)])


def _check(values: np.ndarray, index: np.ndarray, z: np.ndarray, shown: np.ndarray, least: bool = False) -> None:
    """Each class's k entries rank by float64 log-odds `z` (most, or `least`, first) up to float32
    near-ties, none left out ranks past the k-th, and the values are the module's output `shown`."""
    key = -z if least else z
    for c in range(z.shape[1]):
        got = key[index[c], c]
        tol = TOL * (1 + np.abs(got))
        assert (got[1:] <= got[:-1] + tol[1:]).all(), c
        assert (np.delete(key[:, c], index[c]) <= got[-1] + tol[-1]).all(), c
    np.testing.assert_allclose(values, np.take_along_axis(shown.T, index, 1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("log", [False, True])
def test_a_softmax_module_ranks_by_the_log_odds_of_its_input(tmp_path, demo_model, small_test_set, log):
    model = Prob(demo_model.module, log).eval()
    run = sketchmine.mine(model, small_test_set, layers=["prob", "net.classifier.6"], out=tmp_path / "run.zarr",
                          batch_size=64, distributions=True)
    assert run.layer_attrs("prob")["ranked_by"] == RANKED_BY_INPUT
    assert "ranked_by" not in run.layer_attrs("net.classifier.6")
    logits = _reference(model, small_test_set)
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert (p == 1.0).sum(0).max() > run.k and (p == 0.0).sum(0).min() > run.k  # ties at both ends in float32
    shown = torch.log_softmax(torch.from_numpy(logits), 1).numpy() if log else p
    z = log_odds64(logits)
    _check(*run.topk("prob")[:2], z, shown)
    _check(*run.bottomk("prob")[:2], z, shown, least=True)
    # the layer it is fed from ranks by its own values, and the virtual softmax would agree
    first = [np.lexsort((np.arange(len(p)), -logits[:, c]))[0] for c in range(p.shape[1])]
    assert run.topk("net.classifier.6")[1][:, 0].tolist() == first


def test_the_virtual_softmax_bottom_k_ranks_by_least_log_odds(tmp_path, demo_model, small_test_set):
    """Its top-k ranked by log-odds already; its bottom-k ranked p, 0.0 for most images here."""
    scaled = Prob(demo_model.module)  # for its logits
    model = _Times20(demo_model.module).eval()  # the same logits, no softmax module: the virtual layer
    run = sketchmine.mine(model, small_test_set, layers=["softmax"], out=tmp_path / "run.zarr", batch_size=64,
                          distributions=True)
    logits = _reference(scaled, small_test_set)
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    _check(*run.bottomk("softmax")[:2], log_odds64(logits), p, least=True)


class _Times20(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 20


def test_a_softmax_module_survives_resume_and_reads_partially(tmp_path, demo_model, small_test_set):
    model = Prob(demo_model.module).eval()
    kwargs = dict(layers=["prob"], batch_size=32, flush_every=1, distributions=True)
    ref = sketchmine.mine(model, small_test_set, out=tmp_path / "ref.zarr", **kwargs)
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(model, small_test_set, out=out, progress=StopAfter(150), **kwargs)
    partial = sketchmine.open_run(out)
    done = partial.images_done
    assert not partial.complete and 0 < done < len(small_test_set)
    logits = _reference(model, small_test_set, 32)[:done]
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    _check(*partial.topk("prob")[:2], log_odds64(logits), p)
    _check(*partial.bottomk("prob")[:2], log_odds64(logits), p, least=True)
    run = sketchmine.mine(model, small_test_set, out=out, **kwargs)
    for a, b in zip(run.topk("prob") + run.bottomk("prob"), ref.topk("prob") + ref.bottomk("prob")):
        np.testing.assert_array_equal(a, b)


def test_an_onnx_softmax_node_ranks_by_the_log_odds_of_its_input(tmp_path, demo_model, small_test_set):
    pytest.importorskip("onnxruntime")
    from tests.test_onnx import export

    model = Prob(demo_model.module).eval()
    path = export(model, tmp_path / "prob.onnx")
    run = sketchmine.mine(str(path), small_test_set, out=tmp_path / "run.zarr", batch_size=64, distributions=True)
    prob = next(l for l in run.layers if run.layer_attrs(l).get("kind") == "softmax" and l != "softmax")
    assert run.layer_attrs(prob)["ranked_by"] == RANKED_BY_INPUT, run.layers
    logits = _reference(model, small_test_set)
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    _check(*run.topk(prob)[:2], log_odds64(logits), p)
    _check(*run.bottomk(prob)[:2], log_odds64(logits), p, least=True)
