"""Per-axis tables of unit boxes, apart from any graph: where no stride describes a field (behind an
op that resamples the grid), each unit's first and last input pixel per axis, and how windows, pads,
joins and resamplings act on such a table. The torch analysis (field_tables.py, receptive_field.py)
and the ONNX one (onnx_resample.py) both compose it; field_tables.py says why a table is needed.

A position that reads only padding adds no pixel (the table holds the positions a unit reads, not a
stride's extension past the grid); a unit that reads no position at all (a transposed conv's gap, a
pad's border) has an empty box.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from sketchmine.errors import SketchmineError

Table = np.ndarray
"""(n, 2) int64: per unit along an axis, its box's first and last input pixel; empty: (EMPTY, -EMPTY)."""

EMPTY = 2 ** 62


def strided(jump: int, lo: int, hi: int, n: int) -> Table:
    """The table of a strided field's n units: unit i sees [lo + i·jump, hi + i·jump]."""
    i = np.arange(n, dtype=np.int64) * jump
    return np.stack([lo + i, hi + i], axis=1)


def read(table: Table, reach: np.ndarray) -> Table:
    """The table after an op whose output position o reads the input positions `reach[o]`
    ((n_out, n_in) bool): each unit's box is the union of theirs."""
    lo = np.where(reach, table[None, :, 0], EMPTY).min(axis=1)
    hi = np.where(reach, table[None, :, 1], -EMPTY).max(axis=1)
    return np.stack([lo, hi], axis=1)


def copied(at: np.ndarray, n_in: int, mode: str) -> np.ndarray:
    """Positions `at` along an axis of n_in, where a pad by `mode` reads them: "replicate" the edge's,
    "reflect" the mirrored ones (a dilated window can read a copy without the position copied);
    "zeros" (or a constant) leaves them outside, holding no pixel."""
    if mode == "replicate":
        return np.clip(at, 0, n_in - 1)
    if mode == "reflect" and n_in > 1:
        at = np.abs(at)
        return np.where(at > n_in - 1, 2 * (n_in - 1) - at, at)
    return at


def window_reach(n_in: int, n_out: int, k: int, s: int, before: int, d: int, mode: str = "zeros") -> np.ndarray:
    """(n_out, n_in) bool: the positions a sliding window (conv, pool) reads, padding left out but
    for what a conv's copying `mode` puts there (`copied`)."""
    reach = np.zeros((n_out, n_in), dtype=bool)
    at = copied(np.arange(n_out)[:, None] * s - before + np.arange(k)[None, :] * d, n_in, mode)
    rows = np.broadcast_to(np.arange(n_out)[:, None], at.shape)
    inside = (at >= 0) & (at < n_in)
    reach[rows[inside], at[inside]] = True
    return reach


def transposed_reach(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """(n_out, n_in) bool: the input positions a transposed conv scatters into each output
    position: input i reaches i·s - p + t·d for t < k (output padding adds positions at the end)."""
    reach = np.zeros((n_out, n_in), dtype=bool)
    at = np.arange(n_in)[:, None] * s - p + np.arange(k)[None, :] * d
    cols = np.broadcast_to(np.arange(n_in)[:, None], at.shape)
    inside = (at >= 0) & (at < n_out)
    reach[at[inside], cols[inside]] = True
    return reach


def shifted(table: Table, before: int, n_out: int, mode: str = "constant") -> Table:
    """The table after a pad of `before` positions (negative: a crop) that leaves n_out: a constant
    pad's positions hold no pixel, a copying pad's the boxes of the positions it copies (`copied`)."""
    at = copied(np.arange(n_out) - before, len(table), mode)
    inside = (at >= 0) & (at < len(table))
    out = np.full((n_out, 2), [EMPTY, -EMPTY], dtype=np.int64)
    out[inside] = table[at[inside]]
    return out


def union(tables: list[Table], where: str) -> Table:
    """Branches joined position by position (an addition, a channel concatenation)."""
    if len({len(t) for t in tables}) > 1:
        raise SketchmineError(f"cannot merge receptive fields at {where}: branches have {sorted({len(t) for t in tables})} "
                              "units along an axis")
    return np.stack([np.min([t[:, 0] for t in tables], axis=0), np.max([t[:, 1] for t in tables], axis=0)], axis=1)


def spans(table: Table) -> tuple[tuple[int, int], ...]:
    """The public record of a table: (first, last) pixel per unit; an empty box as (0, -1)."""
    return tuple((int(lo), int(hi)) if lo <= hi else (0, -1) for lo, hi in table)


def summary(table: Table) -> tuple[int, Fraction, int]:
    """(largest box, mean spacing of the boxes' starts, first unit's start) of a table: the size,
    stride and offset a tabled ReceptiveField reports beside its boxes."""
    full = np.nonzero(table[:, 0] <= table[:, 1])[0]
    if len(full) == 0:
        return 0, Fraction(0), 0
    size = int((table[full, 1] - table[full, 0]).max()) + 1
    first, last = int(full[0]), int(full[-1])
    stride = Fraction(int(table[last, 0] - table[first, 0]), last - first) if last > first else Fraction(0)
    return size, stride, int(table[full[0], 0])
