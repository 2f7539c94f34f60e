"""Ranks' statistics merged on hostile activations: two gloo processes give the store of one, bit for bit.

A real conv over the embedded images feeds units with every hard case at once (NaN positions and
whole NaN maps on some images, +inf and -inf, a constant, heavy ties, 1e29 and 1e-30, negative-only,
signed zeros), classes of uneven sizes, one of them on one rank only; `distributions=True`, so every
accumulator of the registry is merged. The one-process run is the reference (docs/backends.md)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.stats.histogram import RunningHistogram
from tests.helpers import store_arrays
from tests.test_distributed import SUMMED, rendezvous

SIZES = (30, 12, 12, 0, 8, 8, 8, 1, 3, 8)  # images per class: an empty class, a class of one image


class Hostile(nn.Module):
    """(N, 1, 28, 28) → (N, 10, 6, 6): a seeded conv's four maps and units built to be hard."""

    def __init__(self, low: float, high: float, split: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 5, stride=4)
        self.low, self.high, self.split = low, high, split
        corner = torch.zeros(6, 6, dtype=torch.bool)
        corner[0, 0] = True
        self.register_buffer("corner", corner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.conv(x)
        s = x.mean(dim=(1, 2, 3))[:, None, None]  # ink: the faintest and inkiest images get the extremes
        lo, hi = (s < self.low), (s > self.high)
        one, nan = torch.ones_like(b[:, 0]), torch.full_like(b[:, 0], float("nan"))
        spotted = torch.where(self.corner, nan, b[:, 0])
        units = [3.0 * one,                                                    # constant
                 torch.where(hi, nan, spotted),                                # a NaN position; whole NaN maps
                 torch.where(lo, torch.full_like(one, float("inf")), b[:, 1]),  # +inf on some images
                 torch.where(hi, torch.full_like(one, float("-inf")), b[:, 2]),  # -inf maps
                 torch.clamp(torch.round(b[:, 3] * 2) / 2, -1, 1),             # ties
                 b[:, 1] * 1e29, b[:, 2].abs() * 1e-30 + 1e-31,                # huge, tiny
                 -b[:, 3].abs() - 1,                                           # negative only
                 torch.where(hi, -0.0 * one, 0.0 * one),                       # signed zeros
                 torch.where(s > self.split, -0.0 * one, 0.0 * one)]
        return torch.stack(units, 1)


class Net(nn.Module):
    def __init__(self, low: float, high: float, split: float) -> None:
        super().__init__()
        self.act = Hostile(low, high, split)
        self.fc = nn.Linear(10 * 36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(x)
        return self.fc(torch.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0).flatten(1))


def hostile() -> tuple[Net, ArrayDataset]:
    """The model and the 90 images (classes of SIZES), the same in every process; the last unit's zero
    is -0.0 on one of images 0 and 8 (the first of rank 0 and of rank 1) and +0.0 on the other."""
    full = animal_shape("test", Preprocessing("model", 1, None, (0.0,), (1.0,)))
    labels = full.labels()
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:n] for c, n in enumerate(SIZES)]))
    ds = ArrayDataset(full.images[keep], labels[keep], full.class_names, full.preprocessing,
                      {"kind": "python", "subset": "hostile"})
    ink = np.array([float(ds[i][1].mean()) for i in range(len(ds))])
    return Net(float(np.quantile(ink, 0.2)), float(np.quantile(ink, 0.8)), float(ink[[0, 8]].mean())).eval(), ds


def mine(out: Path) -> None:
    model, ds = hostile()
    sketchmine.mine(model, ds, layers=["act", "fc", "softmax"], k=9, out=out, batch_size=8, flush_every=2,
                    distributions=True, num_workers=0)


def _rank(rank: int, meet: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=2)
    try:
        mine(Path(out))
    finally:
        dist.destroy_process_group()


def bits(a: np.ndarray) -> np.ndarray:
    """The array's bytes, so -0.0 and +0.0 (and NaN payloads) count as different."""
    return np.ascontiguousarray(a).view(np.uint8) if a.dtype.kind == "f" else a


def test_two_ranks_merge_hostile_statistics_into_the_one_process_store(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same GEMM code paths
    try:
        mine(tmp_path / "one.zarr")
    finally:
        torch.set_num_threads(threads)
    torch.multiprocessing.spawn(_rank, args=(rendezvous(tmp_path), str(tmp_path / "two.zarr")), nprocs=2, join=True)
    got, want = store_arrays(tmp_path / "two.zarr"), store_arrays(tmp_path / "one.zarr")
    assert set(got) == set(want)
    assert (want["layers/act/nan_count"][1] > 0 and np.isinf(want["layers/act/max_mean"][2:4]).all()
            and np.signbit(want["layers/act/max_range"]).any())  # the hard cases are there
    for key in want:
        if key.rsplit("/", 1)[-1] in SUMMED:  # float64 sums in another order: rounding (docs/backends.md)
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=0, err_msg=key)
        else:
            assert np.array_equal(bits(got[key]), bits(want[key])), key


def test_a_zero_bound_of_the_range_reads_alike_whatever_zero_came_first(demo_test_set):
    """max_range's min and max keep whichever of -0.0 and +0.0 they met first: a rank's merge met
    them in another order than one process, and stored -0.0 where the one process stored +0.0."""
    ink = demo_test_set.images[:40].reshape(40, -1).mean(1).astype(np.float32) / 255
    first = np.arange(40) == 0
    maxima = np.stack([ink, np.where(first, -0.0, 0.0), np.where(first, 0.0, -0.0)], 1).astype(np.float32)

    def fed(*parts: np.ndarray) -> RunningHistogram:
        h = RunningHistogram({"l": 3})
        for rows in parts:
            h.add("l", torch.from_numpy(maxima[rows]))
        return h

    one, backwards = fed(np.arange(40)), fed(np.arange(40)[::-1])
    rank0, rank1 = fed(np.arange(0, 8), np.arange(16, 24), np.arange(32, 40)), fed(np.arange(8, 16), np.arange(24, 32))
    merged, other = copy.deepcopy(rank0), copy.deepcopy(rank0)  # as distributed.Group.gather folds rank 1 in
    other.restore(rank1.state())
    merged.merge(other)
    want = one.range(slice(None))
    assert want[0].tolist() == [ink.min(), ink.max()]
    assert not np.signbit(want[1:]).any()  # the zero units: +0.0, whichever zero came first
    for h in (backwards, merged):
        assert np.array_equal(bits(h.range(slice(None))), bits(want))
