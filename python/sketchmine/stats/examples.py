"""Example images at every activation level of a unit, picked the same way under any batching.

Why: the top-9 show what a unit does at its extreme, which can mislead; a dashboard shows
images from every level. Levels are the coarse bins of grid.py's aligned power-of-two grid
(blocks of 4 histogram bins, so they rebin exactly as the range grows): 17 bins, of which the
8-17 between the unit's min and max are used. Per bin the pick is the `PER_BIN` (8) images
with the smallest `image_hash` of their global index: a bottom-m-by-hash sample, uniform over
the bin's images, which merges exactly (bottom-m of a union = bottom-m of the parts'
bottom-m) and depends on no order or RNG state. -inf / +inf maxima are kept in two extra
slots and joined to the first / last bin at the end (whose outer edge is then -inf / +inf,
as in the histogram). An accumulator under the key "examples". Final arrays per layer:

    layers/<name>/example_edges (C, 18) float64   bin edges; bin b is [edges[b], edges[b+1])
    layers/<name>/example_index (C, 17, 8) int64  image indices by ascending hash, -1: none

Per-batch cost: an entry is considered only if its hash is below the current 8th smallest
of its bin (a gather and a compare); the survivors (all at first, rare later) are merged
with the touched bins' tables by one sort.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sketchmine.lazy import lazy
from sketchmine.stats.grid import AlignedGrid, bin_of, slots
from sketchmine.stats.held import HeldMaxima, HeldStatistic, SharedBlocks
from sketchmine.stats.histogram import columns, finite_range
from sketchmine.store import schema

if TYPE_CHECKING:
    import torch

    from sketchmine.stats import ops
    from sketchmine.stats.accumulators import Setup
else:  # imported on first use: reading a run needs neither (sketchmine/lazy.py)
    torch, ops = lazy("torch", globals()), lazy("sketchmine.stats.ops", globals())

KEY = "examples"
PER_BIN = 8
SCALE = 4
"""Histogram bins per example bin."""
LEVELS = 17
"""Example bins per unit: 64 histogram bins in aligned blocks of 4 touch at most 17 blocks."""
SLOTS = LEVELS + 2  # 0: -inf, 1..17: the bins, 18: +inf
HASH_BITS = 40
"""Hashes are a bijection of [0, 2^40): global image indices must stay below 2^40 (10^12)."""
EMPTY = 1 << HASH_BITS
"""The hash of an empty place (above every image's)."""
_MASK = (1 << HASH_BITS) - 1
_GROUPS = 1 << (63 - HASH_BITS)


def image_hash(index: torch.Tensor) -> torch.Tensor:
    """A fixed bijective mix of [0, 2^40) (splitmix64-style steps modulo 2^40) of global image
    indices: distinct images never tie, and no RNG state is involved."""
    x = (index.long() + 0x9E3779B97F) & _MASK
    x = x ^ (x >> 20)
    x = (x * 0xBF58476D1D) & _MASK
    x = x ^ (x >> 17)
    x = (x * 0x94D049BB13) & _MASK
    return x ^ (x >> 20)


def bottom(group: torch.Tensor, h: torch.Tensor, index: torch.Tensor, groups: int, m: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group 0..groups-1 the m entries of smallest hash, ascending: (groups, m) hashes and
    indices (EMPTY / -1 where fewer). Entries with index < 0 are ignored. One sort of the
    packed key group·2^40 + hash (unique: an image is in a group at most once)."""
    if groups > _GROUPS:
        raise ValueError(f"{groups} example bins in one sort exceed {_GROUPS}")
    keep = index >= 0
    key, order = torch.sort((group[keep] << HASH_BITS) | h[keep])
    index = index[keep][order]
    group = key >> HASH_BITS
    rank = torch.arange(len(group), device=group.device) - torch.searchsorted(group, group)
    sel = rank < m
    out_h = torch.full((groups, m), EMPTY, dtype=torch.int64, device=group.device)
    out_i = torch.full((groups, m), -1, dtype=torch.int64, device=group.device)
    out_h[group[sel], rank[sel]] = key[sel] & _MASK
    out_i[group[sel], rank[sel]] = index[sel]
    return out_h, out_i


class QuantileExamples(HeldStatistic):
    """Per unit: the grid and, per slot, the PER_BIN (hash, image) pairs of smallest hash."""

    key, title = KEY, "quantile examples"

    def __init__(self, layers: dict[str, int], device: torch.device | str = "cpu", m: int = PER_BIN,
                 blocks: SharedBlocks | None = None) -> None:
        self.layers, self.device, self.m = dict(layers), torch.device(device), m
        self._columns, units = columns(self.layers)
        self.grid = AlignedGrid(units, self.device)
        self.hashes = torch.full((units, SLOTS, m), EMPTY, dtype=torch.int64, device=self.device)
        self.index = torch.full((units, SLOTS, m), -1, dtype=torch.int64, device=self.device)
        self._held = HeldMaxima(units, self.add, blocks=blocks)  # updates in blocks of images (held.py)

    def add(self, layer: str, maxima: torch.Tensor, image_index: torch.Tensor) -> None:
        """One layer's (N, C) image maxima (NaN: left out) of images `image_index` (N,): the
        compiled kernel on the CPU."""
        if not len(maxima):
            return
        if not ops.compiled_here(self.hashes):
            return self.add_reference(layer, maxima, image_index)
        if int(image_index.max()) > _MASK or int(image_index.min()) < 0:
            raise ValueError(f"image indices must lie in [0, 2^{HASH_BITS}) for the example hash")
        cols = self._columns[layer]
        ops.examples_update(maxima.reshape(len(maxima), -1).float(), image_index.long().cpu(), self.grid.lo[cols],
                            self.grid.hi[cols], self.grid.e[cols], self.hashes[cols], self.index[cols])

    def add_reference(self, layer: str, maxima: torch.Tensor, image_index: torch.Tensor) -> None:
        """`add` in pure torch: the specification of the kernel, and the path on other devices."""
        if not len(maxima):
            return
        cols = self._columns[layer]
        x = maxima.reshape(len(maxima), -1).double()
        old_first, old_e = self.grid.advance(cols, *finite_range(x))
        first, e = self.grid.first_bin(cols), self.grid.e[cols]
        hashes, index = self.hashes[cols], self.index[cols]
        moved = ((old_first // SCALE != first // SCALE) | (old_e != e)).nonzero().squeeze(1)
        if len(moved):
            new = slots(old_first[moved], old_e[moved], first[moved], e[moved], LEVELS, SCALE) + 1
            where = torch.cat([torch.zeros_like(new[:, :1]), new, torch.full_like(new[:, :1], SLOTS - 1)], 1)
            group = (torch.arange(len(moved), device=x.device)[:, None] * SLOTS + where)[:, :, None]
            h, i = bottom(group.expand(-1, -1, self.m).reshape(-1), hashes[moved].reshape(-1),
                          index[moved].reshape(-1), len(moved) * SLOTS, self.m)
            hashes[moved], index[moved] = h.view(-1, SLOTS, self.m), i.view(-1, SLOTS, self.m)
        finite = torch.isfinite(x)
        coarse = torch.div(bin_of(torch.where(finite, x, 0.0), e[None, :]), SCALE, rounding_mode="floor")
        slot = coarse - torch.div(first, SCALE, rounding_mode="floor")[None, :] + 1
        slot = torch.where(finite, slot, torch.where(x > 0, SLOTS - 1, 0))
        if int(image_index.max()) > _MASK or int(image_index.min()) < 0:
            raise ValueError(f"image indices must lie in [0, 2^{HASH_BITS}) for the example hash")
        h = image_hash(image_index.to(x.device))
        self._insert(hashes, index, slot.masked_fill(torch.isnan(x), SLOTS), h, image_index.to(x.device).long())

    def _insert(self, hashes: torch.Tensor, index: torch.Tensor, slot: torch.Tensor, h: torch.Tensor,
                ids: torch.Tensor) -> None:
        """Merge a batch into one layer's tables without a global sort: the batch's images in hash
        order (one small sort, shared by all units); per unit a stable sort by slot gives each
        entry its rank among the batch's entries of its bin; only ranks < m whose hash beats the
        bin's current m-th smallest are candidates; each touched bin's m table entries and its
        candidates are then sorted as one short row. slot (N, C), SLOTS marking NaN (none)."""
        m, n = self.m, len(h)
        order = torch.argsort(h)
        h, ids, slot = h[order], ids[order], slot[order]
        pos = torch.arange(n, device=h.device)
        key = torch.sort((slot.t() * n + pos[None, :]).contiguous(), dim=1).values  # per unit: bins in turn, hash order within
        seq = torch.div(key, n, rounding_mode="floor")
        rank = (pos[None, :] - torch.searchsorted(seq, seq)).t()
        by_slot, row = seq.t(), (key - seq * n).t()
        threshold = hashes[:, :, m - 1].t().gather(0, by_slot.clamp_max(SLOTS - 1))
        cand = (rank < m) & (by_slot < SLOTS) & (h[row] < threshold)
        r, c = cand.nonzero(as_tuple=True)
        if not len(r):
            return
        group = c * SLOTS + by_slot[r, c]
        touched, local = torch.unique(group, return_inverse=True)
        new_h = torch.full((len(touched), m), EMPTY, dtype=torch.int64, device=h.device)
        new_i = torch.full((len(touched), m), -1, dtype=torch.int64, device=h.device)
        new_h[local, rank[r, c]] = h[row[r, c]]
        new_i[local, rank[r, c]] = ids[row[r, c]]
        flat_h, flat_i = hashes.view(-1, m), index.view(-1, m)
        both_h = torch.cat([flat_h[touched], new_h], 1)
        both_h, pick = torch.sort(both_h, dim=1)
        flat_h[touched] = both_h[:, :m]
        flat_i[touched] = torch.cat([flat_i[touched], new_i], 1).gather(1, pick[:, :m])

    # ---- the accumulator protocol --------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        self._held.release()
        g = self.grid.state()
        return {"range": torch.cat([g["lo"], g["hi"]]).cpu().numpy().copy(),
                "picks": torch.cat([g["e"], self.hashes.ravel(), self.index.ravel()]).cpu().numpy().copy()}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        self._held.clear()  # the state restored is the whole of it
        units, size = self.index.shape[0], self.index.numel()
        r, p = np.asarray(state["range"]), np.asarray(state["picks"])
        if r.shape != (2 * units,) or p.shape != (units + 2 * size,):
            raise ValueError(f"quantile examples of shape {r.shape}/{p.shape} do not fit {units} units")
        r_t, p_t = torch.from_numpy(r).to(self.device), torch.from_numpy(p).to(self.device)
        self.grid.restore(r_t[:units], r_t[units:], p_t[:units])
        self.hashes.copy_(p_t[units:units + size].view_as(self.hashes))
        self.index.copy_(p_t[units + size:].view_as(self.index))

    def merge(self, other: QuantileExamples) -> None:
        self._held.release()
        other._held.release()
        parts = self.grid.merge(other.grid)
        first, e = self.grid.first_bin(), self.grid.e
        for cols in self._columns.values():  # one sort per layer keeps the packed groups small
            groups, hs, idx = [], [], []
            for (old_first, old_e), h, i in (((parts[0], parts[1]), self.hashes, self.index),
                                             ((parts[2], parts[3]), other.hashes, other.index)):
                new = slots(old_first[cols], old_e[cols], first[cols], e[cols], LEVELS, SCALE) + 1
                where = torch.cat([torch.zeros_like(new[:, :1]), new, torch.full_like(new[:, :1], SLOTS - 1)], 1)
                g = torch.arange(len(new), device=self.device)[:, None] * SLOTS + where
                groups.append(g[:, :, None].expand(-1, -1, self.m).reshape(-1))
                hs.append(h[cols].to(self.device).reshape(-1))
                idx.append(i[cols].to(self.device).reshape(-1))
            h, i = bottom(torch.cat(groups), torch.cat(hs), torch.cat(idx), len(new) * SLOTS, self.m)
            self.hashes[cols] = h.view(-1, SLOTS, self.m)
            self.index[cols] = i.view(-1, SLOTS, self.m)

    def results(self) -> dict[str, np.ndarray]:
        self._held.release()
        arrays: dict[str, np.ndarray] = {}
        for name, cols in self._columns.items():
            h, i = self.hashes[cols], self.index[cols]
            ends = []
            for inner, outer in ((1, 0), (LEVELS, SLOTS - 1)):  # join ±inf to the first / last bin
                end = i[:, inner].clone()  # a bin alone is its picks as kept (ascending hash)
                u = (i[:, outer, 0] >= 0).nonzero().squeeze(1)  # the few units that saw ±inf
                if len(u):
                    group = torch.arange(len(u), device=h.device)[:, None].expand(-1, 2 * self.m).reshape(-1)
                    end[u] = bottom(group, torch.cat([h[u, inner], h[u, outer]], 1).reshape(-1),
                                    torch.cat([i[u, inner], i[u, outer]], 1).reshape(-1), len(u), self.m)[1]
                ends.append(end)
            picks = torch.cat([ends[0][:, None], i[:, 2:LEVELS], ends[1][:, None]], 1)
            edges = self.grid.edges(cols, SCALE, LEVELS)
            edges[:, 0] = torch.where(i[:, 0, 0] >= 0, float("-inf"), edges[:, 0])
            edges[:, -1] = torch.where(i[:, -1, 0] >= 0, float("inf"), edges[:, -1])
            arrays.update({schema.layer_array(name, "example_edges"): edges.cpu().numpy().copy(),
                           schema.layer_array(name, "example_index"): picks.cpu().numpy().copy()})
        return arrays


def accumulator(setup: Setup) -> QuantileExamples | None:
    """The registry's factory: passes that asked for distributions (Setup.distributions)."""
    if not setup.distributions:
        return None
    return QuantileExamples({l.name: l.channels for l in setup.layers}, setup.device, blocks=setup.blocks)
