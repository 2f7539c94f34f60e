"""Per-unit quantile sketch of the image maxima: log-linear buckets read off the float bits.

Why this sketch: KLL and t-digest keep different summaries for another arrival order, so a
resumed or two-GPU run would answer differently. A DDSketch-style sketch with a fixed bucket
map and counts only is order-independent and merges by adding counts. The bucket map here
is exact integer arithmetic on the float32 bits (no log, which may round differently in
vectorised and scalar code): key = |bits| >> 18, i.e. 32 linear sub-buckets per octave, so
a bucket [a, b) has (b - a) / (b + a) <= 1/65 and its estimate 2ab/(a+b) is within a
relative 1/65 (about 1.5%) of every value in it (normal floats).

Bounded memory: per unit and sign, `BUCKETS` (512) int32 counts of the keys top-511..top,
top the largest key of that sign seen; smaller keys are clamped into the lowest bucket
(collapsed). The final counts are those of clamp(key, top_final - 511) whatever the order,
since the clamp only rises. 512 buckets = 16 octaves: magnitudes down to 2^-15 of the
sign's largest are never collapsed. Zeros, -inf and +inf are counted exactly on their own.
4 KiB + 40 bytes per unit. An accumulator under the key "quantiles". Final arrays per layer:

    layers/<name>/sketch_counts  (C, 2, 512) int32  [negative, positive] bucket counts
    layers/<name>/sketch_top     (C, 2) int64       largest key per sign (-1: none)
    layers/<name>/sketch_special (C, 3) int64       counts of -inf, exact zeros, +inf
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sketchmine.lazy import lazy
from sketchmine.stats.held import HeldMaxima, HeldStatistic, SharedBlocks
from sketchmine.stats.histogram import columns
from sketchmine.store import schema

if TYPE_CHECKING:
    import torch

    from sketchmine.stats import ops
    from sketchmine.stats.accumulators import Setup
else:  # imported on first use: reading a run needs neither (sketchmine/lazy.py)
    torch, ops = lazy("torch", globals()), lazy("sketchmine.stats.ops", globals())

KEY = "quantiles"
SUB_BITS = 5
"""32 sub-buckets per octave."""
SHIFT = 23 - SUB_BITS
BUCKETS = 512
"""Buckets per unit and sign."""
ALPHA = 1 / 65
"""Relative value accuracy of a bucket's estimate: (b - a) / (b + a) <= 1 / (2 * 2^SUB_BITS + 1)."""


def keys(x: torch.Tensor) -> torch.Tensor:
    """The bucket key of each float32 magnitude: its bits >> SHIFT (monotone in |x|), int64."""
    return ((x.float().contiguous().view(torch.int32) & 0x7FFFFFFF) >> SHIFT).long()


class QuantileSketch(HeldStatistic):
    """Per unit: counts (C, 2, BUCKETS) by sign and key - (top - BUCKETS + 1) (clamped at 0),
    top (C, 2), and the exact counts of -inf, 0 and +inf."""

    key, title = KEY, "quantile sketches"

    def __init__(self, layers: dict[str, int], device: torch.device | str = "cpu",
                 blocks: SharedBlocks | None = None) -> None:
        self.layers, self.device = dict(layers), torch.device(device)
        self._columns, units = columns(self.layers)
        self.counts = torch.zeros(units, 2, BUCKETS, dtype=torch.int32, device=self.device)
        self.top = torch.full((units, 2), -1, dtype=torch.int64, device=self.device)
        self.special = torch.zeros(units, 3, dtype=torch.int64, device=self.device)
        self._held = HeldMaxima(units, self.add, with_index=False, blocks=blocks)  # updates in blocks of images (held.py)

    def add(self, layer: str, maxima: torch.Tensor) -> None:
        """One layer's (N, C) image maxima (NaN: left out): the compiled kernel on the CPU."""
        if not len(maxima):
            return
        if not ops.compiled_here(self.counts):
            return self.add_reference(layer, maxima)
        cols = self._columns[layer]
        ops.sketch_update(maxima.reshape(len(maxima), -1).float(), self.counts[cols], self.top[cols],
                          self.special[cols])

    def add_reference(self, layer: str, maxima: torch.Tensor) -> None:
        """`add` in pure torch: the specification of the kernel, and the path on other devices."""
        if not len(maxima):
            return
        cols = self._columns[layer]
        x = maxima.reshape(len(maxima), -1).float()
        for i, v in enumerate((float("-inf"), 0.0, float("inf"))):
            self.special[cols, i] += (x == v).sum(0)
        valid = torch.isfinite(x) & (x != 0)
        key = torch.where(valid, keys(x), -1)
        sign = (x > 0).long()  # 0 negative, 1 positive
        batch_top = torch.stack([torch.where(sign == s, key, -1).amax(0) for s in (0, 1)], dim=1)
        self._raise_top(cols, torch.maximum(self.top[cols], batch_top))
        top = self.top[cols]
        base = torch.where(sign == 1, top[None, :, 1], top[None, :, 0]) - (BUCKETS - 1)
        slot = (key - base).clamp_min(0)
        flat = (torch.arange(x.shape[1], device=x.device)[None, :] * 2 + sign) * BUCKETS + slot.clamp_max(BUCKETS - 1)
        self.counts[cols].view(-1).scatter_add_(0, flat.view(-1), valid.view(-1).int())  # invalid entries add 0

    def _raise_top(self, cols: slice, new_top: torch.Tensor) -> None:
        """Move columns `cols` to the larger tops, collapsing buckets that fall below the window."""
        block, top = self.counts[cols], self.top[cols]
        rows = (new_top != top).any(1).nonzero().squeeze(1)
        if len(rows):
            block[rows] = shifted(block[rows], new_top[rows] - top[rows])
            top[rows] = new_top[rows]

    # ---- the accumulator protocol --------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        self._held.release()
        return {"counts": self.counts.ravel().cpu().numpy().copy(),
                "top": torch.cat([self.top.ravel(), self.special.ravel()]).cpu().numpy().copy()}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        self._held.clear()  # the state restored is the whole of it
        units = self.top.shape[0]
        c, t = np.asarray(state["counts"]), np.asarray(state["top"])
        if c.shape != (units * 2 * BUCKETS,) or t.shape != (5 * units,):
            raise ValueError(f"quantile sketch of shape {c.shape}/{t.shape} does not fit {units} units")
        self.counts.copy_(torch.from_numpy(c).view(units, 2, BUCKETS))
        t_t = torch.from_numpy(t)
        self.top.copy_(t_t[:2 * units].view(units, 2))
        self.special.copy_(t_t[2 * units:].view(units, 3))

    def merge(self, other: QuantileSketch) -> None:
        self._held.release()
        other._held.release()
        theirs, their_top = other.counts.to(self.device), other.top.to(self.device)
        top = torch.maximum(self.top, their_top)
        self._raise_top(slice(None), top)
        self.counts += shifted(theirs, top - their_top)
        self.special += other.special.to(self.device)

    def results(self) -> dict[str, np.ndarray]:
        self._held.release()
        arrays: dict[str, np.ndarray] = {}
        for name, cols in self._columns.items():
            arrays.update({schema.layer_array(name, "sketch_counts"): self.counts[cols].cpu().numpy().copy(),
                           schema.layer_array(name, "sketch_top"): self.top[cols].cpu().numpy().copy(),
                           schema.layer_array(name, "sketch_special"): self.special[cols].cpu().numpy().copy()})
        return arrays


def shifted(counts: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Counts (R, 2, B) re-indexed for tops raised by delta (R, 2) >= 0: slot s → max(s - delta, 0)."""
    b = counts.shape[-1]
    idx = (torch.arange(b, device=counts.device) - delta.clamp(0, b)[..., None]).clamp_min(0)
    return torch.zeros_like(counts).scatter_add_(2, idx, counts)


def estimates(top: np.ndarray) -> np.ndarray:
    """(C, 2, BUCKETS) float64 magnitude estimate 2ab/(a+b) of each bucket [a, b) (the lowest,
    collapsed bucket included: its values lie in (0, b)); NaN for keys below 0."""
    k = top[..., None] - (BUCKETS - 1) + np.arange(BUCKETS)
    ok = k >= 0
    kk = np.where(ok, k, 0)
    a = ((kk << SHIFT).astype(np.int64).astype(np.uint32).view(np.float32)).astype(np.float64)
    b = (((kk + 1) << SHIFT).astype(np.int64).astype(np.uint32).view(np.float32)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = 2.0 / (1.0 / a + 1.0 / b)
    return np.where(ok, est, np.nan)


def accumulator(setup: Setup) -> QuantileSketch | None:
    """The registry's factory: passes that asked for distributions (Setup.distributions)."""
    if not setup.distributions:
        return None
    return QuantileSketch({l.name: l.channels for l in setup.layers}, setup.device, blocks=setup.blocks)
