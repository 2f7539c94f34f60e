"""Per-unit moments of the image maxima over the whole dataset: how many images, their mean,
and how often the unit fires. The top-k shows a unit's best 9 images; these say whether
those are typical (mean) and whether the unit is alive at all (firing).

An accumulator (accumulators.py) under the key "moments", fed the (N, C) image maxima the
top-k computed (`Batch.maxima_of`); it knows nothing about models. Final arrays per layer:

    layers/<name>/max_count   (C,) int64    images whose map was not all NaN
    layers/<name>/max_mean    (C,) float64  mean of those images' maxima (NaN: none)
    layers/<name>/firing      (C,) int64    images whose maximum is > 0 (the unit fired)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sketchmine.lazy import lazy
from sketchmine.stats.held import HeldMaxima, HeldStatistic, SharedBlocks
from sketchmine.store import schema

if TYPE_CHECKING:
    import torch

    from sketchmine.stats import ops
    from sketchmine.stats.accumulators import Setup
else:  # imported on first use: reading a run needs neither (sketchmine/lazy.py)
    torch, ops = lazy("torch", globals()), lazy("sketchmine.stats.ops", globals())

KEY = "moments"


class RunningMoments(HeldStatistic):
    """Per unit (all layers in one column block): the float64 sum and count of non-NaN image
    maxima, and the count of maxima > 0.

    On the host one compiled pass (`ops.moments_update`) adds the batch image by image in global
    order, so the sum does not depend on batch size or resume point, without short parallel
    regions (each costs several times its work on a busy machine: issue 20); elsewhere (CUDA)
    the torch path `add_reference` (a per-batch column sum)."""

    key, title = KEY, "unit moments"

    def __init__(self, layers: dict[str, int], device: torch.device | str = "cpu",
                 blocks: SharedBlocks | None = None) -> None:
        self.layers, self.device = dict(layers), torch.device(device)
        self._columns: dict[str, slice] = {}
        at = 0
        for name, c in self.layers.items():
            self._columns[name] = slice(at, at + c)
            at += c
        self._sum = torch.zeros(1, at, dtype=torch.float64, device=self.device)
        self._count = torch.zeros(at, dtype=torch.int64, device=self.device)
        self._firing = torch.zeros(at, dtype=torch.int64, device=self.device)
        self._host = self.device.type == "cpu"
        self._held = HeldMaxima(at, self.add, with_index=False, blocks=blocks)  # updates in blocks of images (held.py)

    def add(self, layer: str, maxima: torch.Tensor) -> None:
        """One layer's (N, C) image maxima (NaN: an all-NaN map, left out)."""
        if not self._host or maxima.dtype != torch.float32:
            self.add_reference(layer, maxima)
            return
        cols = self._columns[layer]
        ops.moments_update(maxima.reshape(len(maxima), cols.stop - cols.start), self._sum[0, cols], self._count[cols],
                           self._firing[cols])

    def add_reference(self, layer: str, maxima: torch.Tensor) -> None:
        """`add` in torch ops (the path on CUDA; on the host the spec the kernel equals bit for bit):
        on the host the rows are added one vector add per image, in order."""
        cols = self._columns[layer]
        m = maxima.reshape(len(maxima), cols.stop - cols.start).double()
        nan = torch.isnan(m)
        m = m.masked_fill(nan, 0.0)
        if self._host:
            total = self._sum[0, cols]
            for row in m:
                total += row
        else:
            self._sum[0, cols] += m.sum(dim=0)
        self._count[cols] += len(m) - nan.sum(dim=0)
        self._firing[cols] += (m > 0).sum(dim=0)

    # ---- the accumulator protocol --------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        self._held.release()
        return {"sum": self._sum[0].cpu().numpy().copy(),
                "counts": torch.cat([self._count, self._firing]).cpu().numpy()}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        self._held.clear()  # the state restored is the whole of it
        units = self._sum.shape[1]
        s, c = np.asarray(state["sum"]), np.asarray(state["counts"])
        if s.shape != (units,) or c.shape != (2 * units,):
            raise ValueError(f"moments of shape {s.shape}/{c.shape} do not fit {units} units")
        self._sum[0].copy_(torch.from_numpy(s))
        self._count.copy_(torch.from_numpy(c[:units]))
        self._firing.copy_(torch.from_numpy(c[units:]))

    def merge(self, other: RunningMoments) -> None:
        self._held.release()
        other._held.release()
        for mine, theirs in ((self._sum, other._sum), (self._count, other._count), (self._firing, other._firing)):
            mine.add_(theirs.to(self.device))

    def results(self) -> dict[str, np.ndarray]:
        self._held.release()
        total, count, firing = (t.cpu().numpy() for t in (self._sum[0], self._count, self._firing))
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        arrays: dict[str, np.ndarray] = {}
        for name, cols in self._columns.items():
            arrays.update({schema.layer_array(name, "max_count"): count[cols].copy(),
                           schema.layer_array(name, "max_mean"): mean[cols].copy(),
                           schema.layer_array(name, "firing"): firing[cols].copy()})
        return arrays


def accumulator(setup: Setup) -> RunningMoments:
    """The registry's factory: every pass."""
    return RunningMoments({l.name: l.channels for l in setup.layers}, setup.device, blocks=setup.blocks)
