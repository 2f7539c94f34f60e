"""Checksums of a run's arrays: what `RunStore.finish` records and `verify` checks on every
read, so a lost or damaged chunk file is an error instead of fill values read as results."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash


PREFIX = "xxh3_128:"
"""Marks an xxh3-128 digest, what runs record now; "sha256:" (its first 128 bits) and a bare hex
digest (blake2b-128) are what older runs recorded, still verified as such."""
_SHA256 = "sha256:"


def digest(arr: np.ndarray) -> str:
    """xxh3-128 of an array's bytes (strings: of their text, whatever dtype holds them). A
    checksum guards against lost or damaged files, not an adversary, so a non-cryptographic hash:
    sha256 took 0.15 s over a 768-image AlexNet run's 70 MB of final arrays, as long as writing
    them (issue 20); xxh3 takes a few ms."""
    return PREFIX + _hash(arr, xxhash.xxh3_128).hexdigest()


def matches(arr: np.ndarray, want: str) -> bool:
    """Whether `arr` has the recorded digest `want` (any form a run has recorded: see PREFIX)."""
    if want.startswith(PREFIX):
        return digest(arr) == want
    if want.startswith(_SHA256):
        return _SHA256 + _hash(arr, hashlib.sha256).hexdigest()[:32] == want
    return _hash(arr, lambda: hashlib.blake2b(digest_size=16)).hexdigest() == want


def _hash(arr: np.ndarray, new: Callable[[], Any]) -> Any:
    arr, h = np.asarray(arr), new()
    if arr.dtype.kind in "UOT":  # strings: their text, whatever width or string dtype holds them
        h.update("\x00".join(map(str, arr.ravel())).encode("utf-8", "surrogatepass"))
    else:
        h.update(np.ascontiguousarray(arr))  # the buffer itself: no copy into bytes
    return h


def block_sums(arr: np.ndarray, rows: int | None = None) -> dict[str, Any]:
    """Checksums of `arr` in blocks of `rows` along its first axis (its chunks; None: one)."""
    rows = max(1, int(rows or (arr.shape[0] if arr.ndim else 1)))
    n = arr.shape[0] if arr.ndim else 1
    return {"rows": rows, "sums": [digest(arr[i:i + rows] if arr.ndim else arr) for i in range(0, max(n, 1), rows)],
            "dtype": dtype_name(arr.dtype)}


def pieces(arr: Any, budget: int = 64 << 20) -> list[slice | None]:
    """Whole chunks of rows of a stored array, about `budget` bytes a piece (None: a 0-d array):
    a dataset's logits (images × classes) are read a piece at a time, not all at once."""
    if not arr.ndim:
        return [None]
    rows, n = max(1, int(arr.chunks[0])), arr.shape[0]
    step = rows * max(1, budget // max(1, arr.dtype.itemsize * int(np.prod(arr.shape[1:])) * rows))
    return [slice(start, start + step) for start in range(0, max(n, 1), step)]


def stored_sums(arr: Any) -> dict[str, Any]:
    """block_sums of a stored array by its chunks of rows, read a piece at a time (`pieces`)."""
    rows = max(1, int(arr.chunks[0])) if arr.ndim else 1
    sums = [s for piece in pieces(arr) for s in block_sums(np.asarray(arr[piece or ...]), rows)["sums"]]
    return {"rows": rows, "sums": sums, "dtype": dtype_name(arr.dtype)}


def dtype_name(dtype: np.dtype) -> str:
    """How a checksum entry records the dtype its array was written with ("str" for text, whatever
    string dtype holds it): a read refuses an array whose metadata names another (same-width
    edits read the same bytes, and their digest, as other numbers)."""
    return "str" if dtype.kind in "UOT" else dtype.str


def covering(entry: dict[str, Any], n: int, start: int, stop: int) -> tuple[int, int, int]:
    """(first block, last block, rows per block) of the checksummed blocks holding rows
    [start, stop) of an array of `n` rows: a partial read is verified a whole block at a time."""
    step = int(entry["rows"])
    return start // step, max(start, stop - 1) // step, step


def mismatch(data: np.ndarray, entry: dict[str, Any], first: int, last: int, n: int) -> str | None:
    """Where `data` (blocks first..last of the array, 0-d: the whole) differs from the recorded
    checksums `entry`, or None when it matches."""
    step, sums = int(entry["rows"]), list(entry["sums"])
    for b in range(first, last + 1):
        lo = (b - first) * step
        if b >= len(sums) or not matches(data[lo:lo + step] if data.ndim else data, sums[b]):
            return f"rows {b * step}-{min((b + 1) * step, n) - 1}" if data.ndim and len(sums) > 1 else "its data"
    return None
