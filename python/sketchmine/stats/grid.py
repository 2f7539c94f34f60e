"""The aligned power-of-two grid under the exact histogram and the quantile examples.

Why this grid: a streaming histogram whose bins depend on the order the data came in
(first batch's range, merge order) gives different counts for another batch size, resume
point or world size. Here bin j of width w = 2^e covers [j·w, (j+1)·w), and per unit e is
the smallest exponent (not below `exponent_floor`) at which the finite range [min, max]
spans at most `BINS` bins. That e depends only on the final min and max, and going from e
to e+d maps bin j to j >> d exactly (aligned bins nest), so counts rebinned as the range
grows are the counts a one-shot histogram on the final grid would give, under any order or
merge.

`exponent_floor`: bins no finer than one float32 ulp of the largest magnitude (values are
float32, so a finer bin could not hold two distinct values), and never below 2^-149 (the
smallest float32 step); so every edge j·w is exact in float64 and |j| < 2^25.

A unit with no finite value yet has lo = 0 and e = E_MIN (its bins are empty); its final
edges are the placeholder grid 0..BINS (width 1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sketchmine.lazy import lazy

if TYPE_CHECKING:
    import torch
else:  # imported on first use: reading a run does not need it (sketchmine/lazy.py)
    torch = lazy("torch", globals())


BINS = 64
"""Bins of the histogram grid per unit (the range spans more than BINS/2 of them, save at the floor)."""
E_MIN = -149
"""The smallest bin exponent: 2^-149 is the smallest float32 step."""
_MANTISSA = 23


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2.0**e as float64, exactly (built from the exponent bits); e int64 in [-1022, 1023]."""
    return ((e.long() + 1023) << 52).view(torch.float64)


def exponent_floor(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The smallest allowed exponent for a finite range [lo, hi] (float64, inf where empty)."""
    big = torch.maximum(lo.abs(), hi.abs())
    big = torch.where(torch.isfinite(big), big, torch.zeros_like(big))
    _, ex = torch.frexp(big)  # big = m·2^ex, m in [0.5, 1)
    return torch.where(big > 0, ex.long() - 1 - _MANTISSA, torch.full_like(ex, E_MIN, dtype=torch.int64)
                       ).clamp_min(E_MIN)


def bin_of(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """floor(x / 2^e) as int64 (x float64 finite, e broadcast against it): exact."""
    return torch.floor(x * pow2(-e)).long()


def required_exponent(lo: torch.Tensor, hi: torch.Tensor, at_least: torch.Tensor) -> torch.Tensor:
    """Per unit the smallest e >= max(at_least, exponent_floor) with bin_of(hi) - bin_of(lo) < BINS;
    lo/hi float64 (inf/-inf: no finite value, e unchanged). A function of (lo, hi) alone once
    `at_least` is a previous answer for a sub-range (the minimum is monotone in the range)."""
    empty = ~(torch.isfinite(lo) & torch.isfinite(hi))
    lo0 = torch.where(empty, torch.zeros_like(lo), lo)
    hi0 = torch.where(empty, torch.zeros_like(hi), hi)
    span = (hi0 - lo0).clamp_min(0)
    _, ex = torch.frexp(span)  # span < 2^ex: e = ex - 7 gives span / w < 64 bins but for alignment
    guess = torch.where(span > 0, ex.long() - 8, torch.full_like(ex, E_MIN, dtype=torch.int64))
    e = torch.maximum(torch.maximum(at_least, exponent_floor(lo0, hi0)), guess)
    # span >= 2^(ex-1): e = ex-7 is the least that can fit; span < 2^ex: e = ex-5 gives < 32 bins,
    # always fits. So from ex-8 three conditional steps reach the minimum (one spare; float64
    # rounding of the span never crosses a power of two downwards). No host sync on CUDA.
    for _ in range(4):
        e = e + ((bin_of(hi0, e) - bin_of(lo0, e) >= BINS) & ~empty).long()
    return torch.where(empty, at_least, e)


class AlignedGrid:
    """Per unit (C columns): exact finite min/max (float64 holding float32 values, +inf/-inf
    while none) and the grid exponent e; `advance` folds in a batch's finite range."""

    def __init__(self, units: int, device: torch.device) -> None:
        self.lo = torch.full((units,), float("inf"), dtype=torch.float64, device=device)
        self.hi = torch.full((units,), float("-inf"), dtype=torch.float64, device=device)
        self.e = torch.full((units,), E_MIN, dtype=torch.int64, device=device)

    def first_bin(self, cols: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """The lowest bin j = floor(min / w) per unit (0 where no finite value)."""
        lo = self.lo[cols]
        return torch.where(torch.isfinite(lo), bin_of(torch.where(torch.isfinite(lo), lo, 0.0), self.e[cols]),
                           torch.zeros_like(self.e[cols]))

    def advance(self, cols: slice, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Widen columns `cols` to include [lo, hi] (per unit, float64); returns the old
        (first_bin, e) of those columns, for rebinning what was counted on the old grid."""
        old_first, old_e = self.first_bin(cols), self.e[cols].clone()
        new_lo, new_hi = torch.minimum(self.lo[cols], lo), torch.maximum(self.hi[cols], hi)
        self.e[cols] = required_exponent(new_lo, new_hi, old_e)
        self.lo[cols], self.hi[cols] = new_lo, new_hi
        return old_first, old_e

    def merge(self, other: AlignedGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Widen to the union with `other`; returns (old first_bin, old e) of self and of other."""
        mine = (self.first_bin(), self.e.clone())
        theirs = (other.first_bin().to(self.e.device), other.e.to(self.e.device))
        self.advance(slice(None), other.lo.to(self.lo.device), other.hi.to(self.hi.device))
        return (*mine, *theirs)

    def edges(self, cols: slice, scale: int = 1, bins: int = BINS) -> torch.Tensor:
        """(C, bins+1) float64 edges of the grid coarsened `scale` times (blocks of `scale` bins,
        aligned: block J = j // scale); units with no finite value get 0..bins."""
        w = pow2(self.e[cols]) * scale
        start = torch.div(self.first_bin(cols), scale, rounding_mode="floor")
        steps = torch.arange(bins + 1, device=w.device, dtype=torch.float64)
        edges = (start.double()[:, None] + steps) * w[:, None]
        none = ~torch.isfinite(self.lo[cols])
        return torch.where(none[:, None], steps.expand_as(edges), edges)

    def state(self) -> dict[str, torch.Tensor]:
        return {"lo": self.lo, "hi": self.hi, "e": self.e}

    def restore(self, lo: torch.Tensor, hi: torch.Tensor, e: torch.Tensor) -> None:
        for mine, theirs in ((self.lo, lo), (self.hi, hi), (self.e, e)):
            if tuple(theirs.shape) != tuple(mine.shape):
                raise ValueError(f"grid state of shape {tuple(theirs.shape)} does not fit {tuple(mine.shape)} units")
            mine.copy_(theirs)


def rebin(counts: torch.Tensor, old_first: torch.Tensor, old_e: torch.Tensor, new_first: torch.Tensor,
          new_e: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Counts (C, B) on the old grid (bin b = block old_first//scale + b of `scale` bins) as
    counts on the new one: block J → J >> (new_e - old_e), exact (aligned blocks nest)."""
    idx = slots(old_first, old_e, new_first, new_e, counts.shape[1], scale)
    return torch.zeros_like(counts).scatter_add_(1, idx, counts)


def slots(old_first: torch.Tensor, old_e: torch.Tensor, new_first: torch.Tensor, new_e: torch.Tensor,
          b: int, scale: int = 1) -> torch.Tensor:
    """(C, b) new index of each old bin (as in `rebin`), clamped to [0, b)."""
    base_old = torch.div(old_first, scale, rounding_mode="floor")
    base_new = torch.div(new_first, scale, rounding_mode="floor")
    shift = (new_e - old_e).clamp(0, 62)
    j = base_old[:, None] + torch.arange(b, device=old_first.device)
    return ((j >> shift[:, None]) - base_new[:, None]).clamp(0, b - 1)
