"""Exact per-unit histogram of the image maxima, the same for any batching, resume or merge.

Why exact and not a sketch: a unit page draws the histogram, and a sketch whose bins
depend on arrival order would draw another picture after a resume or on two GPUs. Bins sit
on the aligned power-of-two grid of grid.py (64 bins of width 2^e; e fixed by the final
min/max alone), so rebinning as the range grows is exact. An accumulator (accumulators.py)
under the key "histogram", fed `Batch.maxima_of`. Final arrays per layer:

    layers/<name>/hist_edges  (C, 65) float64  bin edges; bin b is [edges[b], edges[b+1])
    layers/<name>/hist_counts (C, 64) int64    images per bin
    layers/<name>/max_range   (C, 2)  float32  exact [min, max] of the non-NaN maxima (NaN: none)

NaN maxima (all-NaN maps) are not counted: counts sum to max_count (moments.py), the images
seen minus those. -inf maxima are counted in bin 0 and +inf in bin 63, whose outer edge is
then -inf / +inf; the finite edges come from the finite min/max. Bins above the maximum are
empty (the range spans 33-64 of the 64 bins). A unit with no finite maximum gets the
placeholder edges 0..64.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sketchmine.lazy import lazy
from sketchmine.stats.grid import BINS, AlignedGrid, bin_of, rebin
from sketchmine.stats.held import HeldMaxima, HeldStatistic, SharedBlocks
from sketchmine.store import schema

if TYPE_CHECKING:
    import torch

    from sketchmine.stats import ops
    from sketchmine.stats.accumulators import Setup
else:  # imported on first use: reading a run needs neither (sketchmine/lazy.py)
    torch, ops = lazy("torch", globals()), lazy("sketchmine.stats.ops", globals())

KEY = "histogram"


def columns(layers: dict[str, int]) -> tuple[dict[str, slice], int]:
    """Each layer's block of columns when all units are packed in one array, and the total."""
    out, at = {}, 0
    for name, c in layers.items():
        out[name] = slice(at, at + c)
        at += c
    return out, at


def finite_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of x (N, C) float64: min and max of the finite entries (inf / -inf: none)."""
    finite = torch.isfinite(x)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    return torch.where(finite, x, inf).amin(0), torch.where(finite, x, -inf).amax(0)


class RunningHistogram(HeldStatistic):
    """Per unit: the grid (exact finite min/max, exponent), 64 counts on it, and the ±inf counts."""

    key, title = KEY, "unit histograms"

    def __init__(self, layers: dict[str, int], device: torch.device | str = "cpu",
                 blocks: SharedBlocks | None = None) -> None:
        self.layers, self.device = dict(layers), torch.device(device)
        self._columns, units = columns(self.layers)
        self.grid = AlignedGrid(units, self.device)
        self.counts = torch.zeros(units, BINS, dtype=torch.int64, device=self.device)
        self.inf = torch.zeros(units, 2, dtype=torch.int64, device=self.device)  # [-inf, +inf]
        self._held = HeldMaxima(units, self.add, with_index=False, blocks=blocks)  # updates in blocks of images (held.py)

    def add(self, layer: str, maxima: torch.Tensor) -> None:
        """One layer's (N, C) image maxima (NaN: left out): the compiled kernel on the CPU."""
        if not len(maxima):
            return
        if not ops.compiled_here(self.counts):
            return self.add_reference(layer, maxima)
        cols = self._columns[layer]
        x = maxima.reshape(len(maxima), -1).float()
        ops.histogram_update(x, self.grid.lo[cols], self.grid.hi[cols], self.grid.e[cols], self.counts[cols],
                             self.inf[cols])

    def add_reference(self, layer: str, maxima: torch.Tensor) -> None:
        """`add` in pure torch: the specification of the kernel, and the path on other devices."""
        if not len(maxima):
            return
        cols = self._columns[layer]
        x = maxima.reshape(len(maxima), -1).double()
        self.inf[cols, 0] += (x == float("-inf")).sum(0)
        self.inf[cols, 1] += (x == float("inf")).sum(0)
        old_first, old_e = self.grid.advance(cols, *finite_range(x))
        first, e = self.grid.first_bin(cols), self.grid.e[cols]
        moved = ((old_first != first) | (old_e != e)).nonzero().squeeze(1)
        if len(moved):
            block = self.counts[cols]
            block[moved] = rebin(block[moved], old_first[moved], old_e[moved], first[moved], e[moved])
        finite = torch.isfinite(x)
        j = (bin_of(torch.where(finite, x, 0.0), e[None, :]) - first[None, :]).clamp(0, BINS - 1)
        flat = torch.arange(x.shape[1], device=x.device)[None, :] * BINS + j
        self.counts[cols].view(-1).scatter_add_(0, flat.view(-1), finite.view(-1).long())  # no compaction

    # ---- the accumulator protocol --------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        self._held.release()
        g = self.grid.state()
        return {"range": torch.cat([g["lo"], g["hi"]]).cpu().numpy().copy(),
                "counts": torch.cat([g["e"], self.inf.ravel(), self.counts.ravel()]).cpu().numpy().copy()}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        self._held.clear()  # the state restored is the whole of it
        units = self.counts.shape[0]
        r, c = np.asarray(state["range"]), np.asarray(state["counts"])
        if r.shape != (2 * units,) or c.shape != (units * (3 + BINS),):
            raise ValueError(f"histogram of shape {r.shape}/{c.shape} does not fit {units} units")
        r_t, c_t = torch.from_numpy(r).to(self.device), torch.from_numpy(c).to(self.device)
        self.grid.restore(r_t[:units], r_t[units:], c_t[:units])
        self.inf.copy_(c_t[units:3 * units].view(units, 2))
        self.counts.copy_(c_t[3 * units:].view(units, BINS))

    def merge(self, other: RunningHistogram) -> None:
        self._held.release()
        other._held.release()
        mine_first, mine_e, their_first, their_e = self.grid.merge(other.grid)
        first, e = self.grid.first_bin(), self.grid.e
        self.counts = (rebin(self.counts, mine_first, mine_e, first, e)
                       + rebin(other.counts.to(self.device), their_first, their_e, first, e))
        self.inf += other.inf.to(self.device)

    def results(self) -> dict[str, np.ndarray]:
        self._held.release()
        arrays: dict[str, np.ndarray] = {}
        for name, cols in self._columns.items():
            edges = self.grid.edges(cols).cpu().numpy().copy()
            counts = self.counts[cols].cpu().numpy().copy()
            ninf, pinf = (self.inf[cols, i].cpu().numpy() for i in (0, 1))
            counts[:, 0] += ninf
            counts[:, -1] += pinf
            edges[ninf > 0, 0], edges[pinf > 0, -1] = -np.inf, np.inf
            arrays.update({schema.layer_array(name, "hist_edges"): edges,
                           schema.layer_array(name, "hist_counts"): counts,
                           schema.layer_array(name, "max_range"): self.range(cols)})
        return arrays

    def range(self, cols: slice) -> np.ndarray:
        """(C, 2) float32 exact [min, max] of the non-NaN maxima, ±inf included; NaN where none.
        A zero bound reads +0.0: min and max keep whichever of -0.0 and +0.0 came first, and ranks
        merge in another order than one process sees the images (+ 0.0 turns -0.0 into +0.0)."""
        lo, hi = self.grid.lo[cols].cpu().numpy() + 0.0, self.grid.hi[cols].cpu().numpy() + 0.0
        ninf, pinf = (self.inf[cols, i].cpu().numpy() > 0 for i in (0, 1))
        some = np.isfinite(lo) | ninf | pinf
        low = np.where(ninf, -np.inf, np.where(np.isfinite(lo), lo, np.inf))
        high = np.where(pinf, np.inf, np.where(np.isfinite(hi), hi, -np.inf))
        return np.where(some[:, None], np.stack([low, high], axis=1), np.nan).astype(np.float32)


def accumulator(setup: Setup) -> RunningHistogram | None:
    """The registry's factory: passes that asked for distributions (Setup.distributions)."""
    if not setup.distributions:
        return None
    return RunningHistogram({l.name: l.channels for l in setup.layers}, setup.device, blocks=setup.blocks)
