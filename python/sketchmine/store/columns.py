"""A final (rows, K) array that is its fill value outside a few columns, written without being
made whole.

A 1,000-way head mined over a 10-class probe set has per-class tables (class_mean, class_count)
that are 99 % NaN and 0: AlexNet's were 165 MB, and allocating, transposing, hashing and
compressing them was most of a run's final write (issue 20). `Columns` carries only the columns
that hold data; the store writes them into an array chunked by column blocks whose other chunks
are never written (Zarr reads an unwritten chunk as the fill value), and checksums the whole array
as a reader will see it, a block of rows at a time in one reused buffer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sketchmine.store.checksums import digest, dtype_name

COLUMN_CHUNK = 64
"""Columns per chunk: a 1,000-column table is 16 chunks, of which a 10-class run writes one."""

HASH_BLOCK_BYTES = 4 << 20
"""Bytes per checksummed block of rows: the reused buffer stays in cache."""


@dataclass(frozen=True)
class Columns:
    """A (rows, K) array equal to `fill` except in columns `at` (sorted, unique), which hold
    `values` (rows, len(at)), of the array's dtype."""

    shape: tuple[int, int]
    fill: Any
    at: np.ndarray
    values: np.ndarray

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def ndim(self) -> int:
        return 2

    def whole(self, rows: slice = slice(None)) -> np.ndarray:
        """The array (or a block of its rows) made whole."""
        n = len(range(*rows.indices(self.shape[0])))
        out = np.full((n, self.shape[1]), self.fill, dtype=self.dtype)
        out[:, self.at] = self.values[rows]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.whole()
        return out if dtype is None else out.astype(dtype)

    def chunk_blocks(self) -> list[tuple[slice, np.ndarray]]:
        """(columns, whole block) of each column chunk that holds data: one write per chunk, as
        concurrent writes of two column runs into one chunk would each rewrite it."""
        width = self.chunks()[1]
        out = []
        for j in sorted({int(a) // width for a in self.at}):
            cols = slice(j * width, min((j + 1) * width, self.shape[1]))
            inside = (self.at >= cols.start) & (self.at < cols.stop)
            block = np.full((self.shape[0], cols.stop - cols.start), self.fill, dtype=self.dtype)
            block[:, self.at[inside] - cols.start] = self.values[:, inside]
            out.append((cols, block))
        return out

    def chunks(self) -> tuple[int, int]:
        return max(self.shape[0], 1), max(min(self.shape[1], COLUMN_CHUNK), 1)

    def block_sums(self) -> dict[str, Any]:
        """checksums.block_sums of the whole array, computed a block of rows at a time."""
        rows, k = self.shape
        step = max(1, HASH_BLOCK_BYTES // max(k * self.dtype.itemsize, 1))
        buffer = np.full((min(step, max(rows, 1)), k), self.fill, dtype=self.dtype)
        sums = []
        for lo in range(0, max(rows, 1), step):
            hi = min(lo + step, rows)
            block = buffer[:hi - lo]
            if len(self.at):
                block[:, self.at] = self.values[lo:hi]  # the other columns keep the fill
            sums.append(digest(block))
        return {"rows": step, "sums": sums, "dtype": dtype_name(self.dtype)}
