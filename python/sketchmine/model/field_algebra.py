"""The arithmetic of receptive fields, apart from any graph: how a sliding window, a pad and a union of
branches change a field, one a stride describes or one kept unit by unit behind a resampling op
(`field_spans`), and the field as the public record. The torch analysis (receptive_field.py, over
torch.fx) and the ONNX one (onnx_fields.py, onnx_resample.py) both compose it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sketchmine.errors import SketchmineError
from sketchmine.model.field_record import ReceptiveField
from sketchmine.model.field_spans import read, shifted, spans, strided, summary, union, window_reach


@dataclass(frozen=True)
class Field:
    """Per axis: jump (input pixels between neighbouring units) and unit 0's window [lo, hi]; `grid`: the
    dims of the node's tensor that hold H and W, from the end ((-3, -2) channels-last). `table`: per axis
    every unit's box (field_spans.Table) where no jump describes them (behind a resampling op). A jump of
    (0, 0) is the whole image (`whole_image`)."""

    jump: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]
    grid: tuple[int, int] = (-2, -1)
    table: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, compare=False)

    @property
    def whole(self) -> bool:
        """Whether every unit sees the whole image (after flatten, a linear layer, global pooling)."""
        return self.jump == (0, 0)


PIXELS = Field((1, 1), (0, 0), (0, 0))
"""The image itself: unit (y, x) is pixel (y, x)."""


def whole_image(h: int, w: int) -> Field:
    """The field of units that see the whole h×w image."""
    return Field((0, 0), (0, 0), (h - 1, w - 1))


def tabled(tables: tuple[np.ndarray, np.ndarray], grid: tuple[int, int] = (-2, -1)) -> Field:
    """A field kept unit by unit: per axis (y, x) every unit's box (`field_spans.Table`)."""
    return Field((1, 1), (0, 0), (0, 0), grid, tables)


def as_tables(f: Field, n: tuple[int, int] | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A field as tables over a grid of n units per axis (y, x)."""
    if f.table is not None:
        return f.table
    if n is None:
        raise SketchmineError(f"receptive fields: the grid at {where} has no known size; not supported")
    return strided(f.jump[0], f.lo[0], f.hi[0], n[0]), strided(f.jump[1], f.lo[1], f.hi[1], n[1])


def windowed(f: Field, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int],
             n_out: tuple[int, int] | None = None, mode: str = "zeros") -> Field:
    """Field after a sliding window (conv or pool) over the grid with kernel k, stride s, padding p
    before the first unit (top, left) and dilation d, per axis (y, x). A tabled `f` is read position by
    position over the window's `n_out` units (a conv's copying padding `mode`: `field_spans.copied`)."""
    if f.table is not None:
        if n_out is None:
            raise SketchmineError("receptive fields: a window's output grid has no known size; not supported")
        return tabled(tuple(read(f.table[a], window_reach(len(f.table[a]), n_out[a], k[a], s[a], p[a], d[a], mode))
                            for a in range(2)), f.grid)  # type: ignore[arg-type]
    return Field(tuple(f.jump[a] * s[a] for a in range(2)),  # type: ignore[arg-type]
                 tuple(f.lo[a] - p[a] * f.jump[a] for a in range(2)),  # type: ignore[arg-type]
                 tuple(f.hi[a] + ((k[a] - 1) * d[a] - p[a]) * f.jump[a] for a in range(2)),  # type: ignore[arg-type]
                 f.grid)


def shifted_by(f: Field, top: int, left: int, n_out: tuple[int, int] | None = None, mode: str = "constant") -> Field:
    """Field after a pad of `top` rows and `left` columns before the grid (negative: a crop): unit i
    of the result is unit i - left of its input along x (top along y). A tabled `f` becomes `n_out`
    units, those of a constant pad's border empty, a copying pad's (`mode` "reflect", "replicate") the
    boxes of the positions they copy."""
    if f.table is not None:
        if n_out is None:
            raise SketchmineError("receptive fields: a pad's output grid has no known size; not supported")
        return tabled((shifted(f.table[0], top, n_out[0], mode), shifted(f.table[1], left, n_out[1], mode)), f.grid)
    jy, jx = f.jump
    return Field(f.jump, (f.lo[0] - top * jy, f.lo[1] - left * jx), (f.hi[0] - top * jy, f.hi[1] - left * jx),
                 f.grid)


def check_grids(fields: Sequence[Field], where: str) -> None:
    """Branches to merge must hold the height and width at the same dims."""
    if len(grids := {f.grid for f in fields}) > 1:
        raise SketchmineError(f"cannot merge receptive fields at {where}: branches hold the height and width at "
                              f"different dims {sorted(grids)}")


def merged(fields: Sequence[Field], where: str, n: tuple[int, int] | None = None) -> Field:
    """The union of branches (a residual addition, a concatenation): unit i of the result sees what unit
    i of any branch sees. Where one branch is tabled, all are joined position by position as tables over
    the grid of `n` units they share; otherwise branches of different strides or grids are refused
    naming `where`."""
    check_grids(fields, where)
    jumps = {f.jump for f in fields}
    if len(fields) == 1:
        return fields[0]
    if any(f.table is not None for f in fields):
        tables = [as_tables(f, n, where) for f in fields]
        return tabled((union([t[0] for t in tables], where), union([t[1] for t in tables], where)), fields[0].grid)
    if len(jumps) > 1:
        raise SketchmineError(f"cannot merge receptive fields at {where}: branches have strides {sorted(jumps)}")
    return Field(fields[0].jump, tuple(min(f.lo[a] for f in fields) for a in range(2)),  # type: ignore[arg-type]
                 tuple(max(f.hi[a] for f in fields) for a in range(2)), fields[0].grid)  # type: ignore[arg-type]


def as_record(f: Field, h: int, w: int) -> ReceptiveField:
    """A field as the public record (the whole h×w image, stride 0, when its units see everything)."""
    if f.whole:
        return ReceptiveField((h, w), (0, 0), (0, 0))
    if f.table is not None:
        (sy, jy, oy), (sx, jx, ox) = summary(f.table[0]), summary(f.table[1])
        return ReceptiveField((sy, sx), (jy, jx), (oy, ox), (spans(f.table[0]), spans(f.table[1])))
    return ReceptiveField(tuple(f.hi[a] - f.lo[a] + 1 for a in range(2)), f.jump, f.lo)  # type: ignore[arg-type]
