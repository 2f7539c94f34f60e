"""The statistics on hostile activations, against references computed here from plain forward
hooks: maps that are NaN in places or whole, maxima of ±inf, over the embedded real images and a
real (seeded) convolution. Each test pins a number that was wrong on one code path."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.stats.classstats import RunningClassStats
from tests.helpers import all_activations


class Hostile(nn.Module):
    """A real convolution's maps, some made hostile by the image's mean ink (so which images get
    them follows the data): unit 1 +inf at one position of the inkiest twentieth, unit 2 whole maps
    of -inf for the faintest twentieth, unit 3 NaN at one position of every image and whole maps of
    NaN for the inkiest twentieth; unit 0 is left as it is. A linear head reads the maps, the non-finite values as 0."""

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 5, stride=4)
        self.maps = nn.Identity()
        self.head = nn.Linear(4, 10)
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(1, 2, 3))[:, None, None]
        b = self.conv(x)
        u1 = b[:, 1].clone()
        u1[:, 2, 3] = torch.where(s[:, 0, 0] > self.hi, float("inf"), u1[:, 2, 3])
        u2 = torch.where(s < self.lo, float("-inf"), b[:, 2])
        u3 = b[:, 3].clone()
        u3[:, 0, 0] = float("nan")
        u3 = torch.where(s > self.hi, float("nan"), u3)
        maps = self.maps(torch.stack([b[:, 0], u1, u2, u3], 1))
        return self.head(torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).amax(dim=(2, 3)))


@pytest.fixture(scope="module")
def hostile():
    """The model and 20 real test images a class, each an image of its own (in [0, 1])."""
    base = animal_shape("test", Preprocessing("model", 1, None, (0.0,), (1.0,)))
    labels = base.labels()
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:20] for c in range(len(base.class_names))]))
    ds = ArrayDataset(base.images[keep], labels[keep], base.class_names, base.preprocessing, {"kind": "python"})
    ink = np.array([float(ds[i][1].mean()) for i in range(len(ds))])
    model = Hostile(*np.quantile(ink, [0.05, 0.95]).tolist()).eval()
    return model, ds


def _maxima(model, ds, layer: str) -> np.ndarray:
    """(N, C) each map's maximum ignoring NaN, NaN for a map all NaN: the top-k's statistic."""
    a = all_activations(model, ds, [layer])[0][layer].float().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN maps
        return np.nanmax(a.reshape(a.shape[0], a.shape[1], -1), axis=2)


def test_device_class_sums_keep_infinite_maxima_in_their_class(hostile):
    """The device path (a one-hot GEMM, CUDA's; taken here on the CPU) multiplied every image's
    maximum by 0 for the other classes, and 0 * inf is NaN: one +inf maximum made the class mean
    of every class of that unit NaN, where the host gives those classes their finite means."""
    model, ds = hostile
    maxima, labels = _maxima(model, ds, "maps"), ds.labels()
    assert np.isposinf(maxima[:, 1]).any() and np.isneginf(maxima[:, 2]).any() and np.isnan(maxima[:, 3]).any()
    want_mean = np.full((4, 10), np.nan)
    for u in range(4):
        for k in range(10):
            col = maxima[(labels == k) & ~np.isnan(maxima[:, u]), u].astype(np.float64)
            want_mean[u, k] = col.mean() if len(col) else np.nan
    assert 3 <= np.isfinite(want_mean[1:3]).sum(1).min() < 10  # classes with and without an inf
    for host in (True, False):
        stats = RunningClassStats({"maps": 4}, 10)
        stats.host = host
        for s in range(0, len(ds), 64):  # as the miner feeds it: batch by batch
            stats.add("maps", torch.from_numpy(maxima[s:s + 64]), torch.from_numpy(labels[s:s + 64]))
            stats.end_batch()
        mean, count = stats.results("maps")
        np.testing.assert_array_equal(count, [[((labels == k) & ~np.isnan(maxima[:, u])).sum() for k in range(10)]
                                              for u in range(4)])
        np.testing.assert_allclose(mean, want_mean, rtol=1e-12, err_msg=f"host={host}")



def test_device_class_sums_multiply_each_value_once(hostile):
    """Keeping ±inf apart cost the device path a GEMM four times as wide as the values (the finite
    values, then +inf, -inf and NaN indicators: on the CPU 6.5x the time of a 64 x 8,000 batch of
    1,000 classes and 420 MB more): one (rows x N) @ (N x units) product again, the ±inf added
    by index_add, with the host's means."""
    from torch.utils.flop_counter import FlopCounterMode

    model, ds = hostile
    maxima, labels = torch.from_numpy(_maxima(model, ds, "maps")), torch.from_numpy(ds.labels())
    results = []
    for host in (True, False):
        stats = RunningClassStats({"maps": 4}, 10)
        stats.host = host
        with FlopCounterMode(display=False) as flops:
            for s in range(0, len(ds), 64):
                stats.add("maps", maxima[s:s + 64], labels[s:s + 64])
                stats.end_batch()
        results.append(stats.results("maps"))
    assert flops.get_total_flops() == 2 * 11 * len(ds) * 4  # (classes + the discard row) x images x units
    np.testing.assert_array_equal(results[1][1], results[0][1])
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12)
    assert np.isinf(results[1][0]).any() and np.isfinite(results[1][0]).any()  # classes with and without an inf

def test_importance_mean_activation_leaves_nan_out_as_the_top_k_does(hostile, tmp_path):
    """`mean_act_correct` / `mean_act_wrong` are documented as the mean of the unit's per-image
    maximum, the top-k's statistic: a map with one NaN position has a maximum (the rest's), and an
    all-NaN map has none and is left out, as `max_mean` leaves it. torch's amax spread the NaN:
    unit 3 read NaN for both although every image but the all-NaN ones has a maximum."""
    model, ds = hostile
    run = sketchmine.mine(model, ds, layers=["maps"], k=4, out=tmp_path / "r.zarr", batch_size=50)
    table = sketchmine.unit_importance(run, "maps", model=model, data=ds, batch_size=50).set_index("unit")
    maxima = _maxima(model, ds, "maps").astype(np.float64)
    logits = all_activations(model, ds, ["maps"])[1]
    ok = logits.argmax(1).numpy() == ds.labels()
    assert 0 < ok.sum() < len(ds)
    for u in range(4):
        for col, group in (("mean_act_correct", ok), ("mean_act_wrong", ~ok)):
            kept = maxima[group, u][~np.isnan(maxima[group, u])]
            assert len(kept) > 0
            assert table.loc[u, col] == pytest.approx(kept.mean(), rel=1e-12), (u, col)
        # the two groups together are the mined mean of the unit's maxima
        seen = ~np.isnan(maxima[:, u])
        both = (table.loc[u, "mean_act_correct"] * seen[ok].sum()
                + table.loc[u, "mean_act_wrong"] * seen[~ok].sum()) / seen.sum()
        assert both == pytest.approx(run.max_mean("maps")[u], rel=1e-9) or np.isinf(both)


class Towering(nn.Module):
    """A real convolution's unit 0 made negative (-|x| - 0.5), except on the images of more
    than `hi` mean ink, where its whole map reads 1e20; unit 1 is the convolution's own."""

    def __init__(self, hi: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 5, stride=4)
        self.maps = nn.Identity()
        self.head = nn.Linear(2, 10)
        self.hi = hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.conv(x)
        inky = (x.mean(dim=(1, 2, 3)) > self.hi)[:, None, None]
        u0 = torch.where(inky, torch.full_like(b[:, 0], 1e20), -b[:, 0].abs() - 0.5)
        maps = self.maps(torch.stack([u0, b[:, 1]], 1))
        return self.head(maps.amax(dim=(2, 3)) / 1e20)


def test_selectivity_of_a_towering_class_mean_keeps_the_others_sign(tmp_path):
    """mu_rest was the whole sum of the class means minus the largest: beside a class mean of
    1e20 the others' negative means vanished from that sum, mu_rest read 0 and the index 1.0,
    where the definition (docs/analysis.md) makes it NaN: mu_rest < 0. The images are real; the
    inkiest 20 of them are labelled as a class of their own (0), the rest keep theirs."""
    base = animal_shape("test", Preprocessing("model", 1, None, (0.0,), (1.0,)))
    labels = base.labels()
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:12] for c in range(1, 10)]))
    ink = np.array([float(base[i][1].mean()) for i in keep])
    hi = float(np.sort(ink)[-21])  # the 20 inkiest lie above it
    own = np.where(ink > hi, 0, labels[keep])
    ds = ArrayDataset(base.images[keep], own, base.class_names, base.preprocessing, {"kind": "python"})
    model = Towering(hi).eval()
    run = sketchmine.mine(model, ds, layers=["maps"], k=4, out=tmp_path / "r.zarr", batch_size=50)
    maxima = _maxima(model, ds, "maps").astype(np.float64)
    want = []
    for u in range(2):
        means = np.array([maxima[own == k, u].mean() for k in range(10)])
        top = int(np.argmax(means))
        rest = np.delete(means, top).mean()
        want.append((means[top] - rest) / (means[top] + rest) if means[top] > 0 and rest >= 0 else np.nan)
    assert np.isnan(want[0]) and (own == 0).sum() == 20
    np.testing.assert_allclose(run.selectivity("maps").to_numpy(), want, rtol=1e-12)
