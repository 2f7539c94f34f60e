"""Verified access to a run's nodes beyond the root checksums (RunStore's helpers): metadata that
does not parse is an error naming the file, and the arrays written after mining (a visualize or
feature visualisation pass's blocks of units, a later pass's groups) carry checksums of their own,
so a lost or damaged chunk file is an error instead of fill values read as pictures or numbers."""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from sketchmine.errors import RunDamaged, RunUnreadable, SketchmineError, machine_fix, out_of_resources
from sketchmine.store import checksums, schema
from sketchmine.store.access import run_unreadable
from sketchmine.store.checksums import block_sums, digest, dtype_name, matches

SUMS = "checksums"
"""Key of the per-array checksums in a claim attribute (`visualized`, `optimized`) or in the
attributes of a group written as a unit: {array: {rows, sums, dtype}}."""

BLOCK_CLAIMS = {**{key: schema.VISUALIZED for key in schema.VISUAL_ARRAYS},
                **{key: schema.OPTIMIZED for key in schema.OPTIMIZED_ARRAYS}}
"""Arrays written a block of units at a time, by name, and the layer attribute that commits them."""


def check_metadata(root: Path) -> None:
    """Refuse a run to resume whose group or array metadata (a zarr.json below the root) does not
    parse, naming the file. Why: Zarr parses a group's metadata before writing into it, so a
    power cut's or a copy's truncated `eval/zarr.json` failed `mine` with a JSONDecodeError
    traceback at its very end, after every image was mined again. Mining's checkpoint is left out:
    a damaged slot is found by its checksums, and both are written again (checkpoint.py)."""
    for folder, names, files in os.walk(root):
        if Path(folder) == root / schema.CHECKPOINT:
            names.clear()  # its slots and its own group (no attributes): rewritten by the next flush
            continue
        if "zarr.json" not in files or Path(folder) == root:  # the root's: RunStore.open's
            continue
        meta = Path(folder) / "zarr.json"
        try:
            json.loads(meta.read_bytes())
        except ValueError as exc:
            raise RunDamaged(f"run {root} is damaged: {meta.relative_to(root)} does not parse as JSON ("
                             f"{'empty' if not meta.stat().st_size else exc}); restore the run's files from a copy, "
                             "or mine it again with a new --out") from None


def damaged(root: Path, name: str, what: str) -> RunDamaged:
    """The error for array `name` of the run at `root` found damaged (`what`: how)."""
    return RunDamaged(f"run {root} is damaged: array {name!r} {what}; restore the run's files "
                      "from a copy, or mine it again with a new --out")


def unreadable(root: Path, name: str, exc: Exception) -> RunDamaged:
    """The error for array `name` whose chunks do not decode (`exc`: what the codec said), or
    whose file this user may not read (`access.run_unreadable`: not damage), or that the machine
    could not read for want of memory, threads or open files (not damage either; like it, never
    taken for a result that is absent)."""
    said = f"{type(exc).__name__}: {str(exc)[:80]}"
    if out_of_resources(exc):
        fix = machine_fix(exc) if isinstance(exc, OSError) else "free memory (or raise ulimit -v)"
        return RunUnreadable(f"cannot read array {name!r} of run {root}: the machine ran out ({said}); the run is "
                             f"not at fault: {fix}, and run the command again")
    return run_unreadable(root, exc) or damaged(root, name, f"cannot be read ({said})")


def node(group: Any, name: str, root: Path, label: str | None = None) -> Any:
    """group[name]; KeyError when absent, a RunDamaged naming the metadata file when it does not
    parse (not JSON, a field missing, an unknown dtype, a fill value the dtype cannot hold, ...).
    `label`: the node's path in the run when `group` is not its root."""
    label = label or name
    try:
        return group[name]
    except KeyError:
        if not (root / label / "zarr.json").is_file():
            raise
        exc: Exception = KeyError("not a Zarr node: a required field is missing")
    except Exception as error:
        exc = error
    if denied := run_unreadable(root, exc):  # its permissions, not damage
        raise denied from None
    raise RunDamaged(f"run {root} is damaged: the metadata of {label!r} ({label}/zarr.json) cannot be read "
                     f"({type(exc).__name__}: {str(exc)[:80]}); restore the run's files from a copy, or "
                     "mine it again with a new --out") from None


def has(group: Any, name: str, root: Path, sums: dict[str, Any]) -> bool:
    """Whether the run holds `name`: an array whose checksums the run recorded is there by record
    (reading it then says it is missing), so a lost array never reads as one never written; so is a
    group holding such arrays (eval/, whose attributes hold the accuracy)."""
    if name in sums or any(key.startswith(f"{name}/") for key in sums) or block_entry(group, name) is not None:
        return True
    try:
        node(group, name, root)
        return True
    except KeyError:
        return False


def check_dtype(arr: Any, entry: dict[str, Any], name: str, root: Path) -> None:
    """Refuse an array whose metadata names another dtype than it was written with (an edit
    of the same width reads the same bytes as other numbers, and their checksum still matches)."""
    want = entry.get("dtype")
    if want is not None and want != dtype_name(arr.dtype):
        raise damaged(root, name, f"has dtype {dtype_name(arr.dtype)} in its metadata, but was written as {want}")


def block_entry(group: Any, name: str) -> dict[str, Any] | None:
    """The checksums of a block-written array (layers/<layer>/<key>, see BLOCK_CLAIMS) kept in its
    layer's claim attribute, or None (other arrays; a pass from before they were kept)."""
    parent, _, key = name.rpartition("/")
    if key not in BLOCK_CLAIMS or not parent.startswith(f"{schema.LAYERS}/") or parent.count("/") != 1:
        return None
    try:
        claim = group[parent].attrs.get(BLOCK_CLAIMS[key])
    except Exception:
        return None
    entry = claim.get(SUMS, {}).get(key) if isinstance(claim, dict) and isinstance(claim.get(SUMS), dict) else None
    return entry if isinstance(entry, dict) and isinstance(entry.get("rows"), int) and entry["rows"] > 0 else None


class BlockCache:
    """Verified blocks of block-written arrays, newest last, at most `limit` bytes: a reader of one
    unit's pictures reads and checks its whole block (up to a few hundred units, a chunk file
    each), so the report's montages of neighbouring units read it once. A block is keyed by
    its recorded checksum, extent, row shape and dtype, so one rewritten or extended reads anew.
    It keeps a complete run's checked final arrays too (`final_key`)."""

    def __init__(self, limit: int = 64 << 20) -> None:
        self.limit, self.size = limit, 0
        self.blocks: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> np.ndarray | None:
        with self.lock:
            block = self.blocks.get(key)
            if block is not None:
                self.blocks.move_to_end(key)
            return block

    def put(self, key: tuple[Any, ...], block: np.ndarray, owned: bool = False) -> None:
        """Keep `block` under `key`: a copy, or, `owned` (the caller's own array, which it will
        not change: what it just wrote), a read-only view of it where it is no view of more."""
        if block.nbytes > self.limit // 4:  # a block this large is read whole anyway: not kept
            return
        block = block.view() if owned and block.base is None else block.copy()  # a view keeps no larger read alive
        block.flags.writeable = False
        with self.lock:
            self.size += block.nbytes - (old.nbytes if (old := self.blocks.pop(key, None)) is not None else 0)
            self.blocks[key] = block
            while self.size > self.limit:
                self.size -= self.blocks.popitem(last=False)[1].nbytes


TEXT_KEPT = 4096
"""Text arrays of at most this many entries are kept (class names, not a dataset's paths)."""


def final_key(name: str, entry: dict[str, Any] | None, rows: slice | None) -> tuple[Any, ...] | None:
    """The key under which a checked read of `name` is kept, or None for reads not kept: arrays
    without root checksums (a partial run's, which mining still writes) and row reads of a text
    array (`image_path`: one row at a time). Keyed by the recorded checksums themselves, so the
    final arrays of another run at the same path, or recorded anew, are read anew."""
    if entry is None or (rows is not None and entry.get("dtype") == "str"):
        return None
    where = None if rows is None else (rows.start, rows.stop, rows.step)
    return ("final", name, where, int(entry["rows"]), tuple(map(str, entry["sums"])), entry.get("dtype"))


def read_checked(arr: Any, entry: dict[str, Any] | None, part: bool, start: int, stop: int, name: str, root: Path
                 ) -> np.ndarray:
    """Rows [start, stop) of `arr` (all when not `part`), checked against its run's recorded
    checksums `entry` (whole blocks read; None: read as they are)."""
    check_dtype(arr, entry or {}, name, root)
    n = arr.shape[0] if arr.ndim else 1
    try:
        if entry is None:
            return np.asarray(arr[start:stop] if part else arr[...])
        first, last, step = checksums.covering(entry, n, start, stop)
        data = np.asarray(arr[first * step:min((last + 1) * step, n)] if arr.ndim else arr[...])
    except SketchmineError:
        raise
    except Exception as exc:  # a chunk file that does not decode
        raise unreadable(root, name, exc) from None
    where = checksums.mismatch(data, entry, first, last, n)
    if where is not None:
        raise damaged(root, name, f"does not match the checksum recorded when the run was written "
                                  f"({where}: a chunk file is missing or corrupt)")
    return data if not part or not arr.ndim else data[start - first * step:stop - first * step]


def read_blocks(arr: Any, entry: dict[str, Any], start: int, stop: int, name: str, root: Path,
                cache: BlockCache | None = None) -> np.ndarray:
    """Rows [start, stop) of a block-written array, every recorded block they touch read whole
    (up to the units written: `stop` of the entry) and checked (or taken from `cache`, where
    checked blocks are kept); rows past the recorded blocks (units not done yet) are read as
    they are."""
    check_dtype(arr, entry, name, root)
    step, sums, n = int(entry["rows"]), list(entry.get("sums") or []), arr.shape[0]
    done = min(int(entry.get("stop", n)), n)
    first, last = start // step, min(max(start, stop - 1) // step, len(sums) - 1)
    keys = {b: (name, b * step, min((b + 1) * step, done), str(sums[b]), arr.shape[1:], arr.dtype.str)
            for b in range(first, last + 1) if sums[b] is not None and min((b + 1) * step, done) > b * step}
    if cache is not None and first == last and stop <= done and first in keys:
        if (kept := cache.get(keys[first])) is not None:
            return kept[start - first * step:stop - first * step].copy()
    lo, hi = min(start, first * step), max(stop, min((last + 1) * step, done))
    try:
        data = np.asarray(arr[lo:hi])
    except Exception as exc:
        raise unreadable(root, name, exc) from None
    for key in keys.values():
        _, b_lo, b_hi, want, *_ = key
        if not matches(data[b_lo - lo:b_hi - lo], want):
            raise damaged(root, name, f"does not match the checksum recorded when it was written (units "
                                      f"{b_lo}-{b_hi - 1}: a chunk file is missing or corrupt)")
        if cache is not None:
            cache.put(key, data[b_lo - lo:b_hi - lo])
    return data[start - lo:stop - lo]


def add_block(claim: dict[str, Any], arrays: dict[str, Any], values: dict[str, np.ndarray], units: slice,
              rows: int) -> dict[str, Any]:
    """`claim` with the checksums of the block of `values` (units `units`) added: each block of
    `rows` units gets one digest, of what the array holds there (a block finished in two calls,
    after `max_units` stopped a pass inside it, is read back from its start)."""
    sums = {k: dict(v) for k, v in (claim.get(SUMS) or {}).items()} if isinstance(claim.get(SUMS), dict) else {}
    if not values or not isinstance(rows, int) or rows < 1:
        return {**claim, SUMS: sums}
    b, start = units.start // rows, units.start
    for key, block in values.items():
        if start % rows:
            block = np.concatenate([np.asarray(arrays[key][b * rows:start]), block])
        entry = sums.get(key) if isinstance(sums.get(key), dict) and sums[key].get("rows") == rows else None
        listed = list((entry or {}).get("sums") or [])[:b] if entry else []
        listed += [None] * (b - len(listed)) + [digest(block)]
        sums[key] = {"rows": rows, "sums": listed, "stop": units.stop, "dtype": dtype_name(block.dtype)}
    return {**claim, SUMS: sums}


def group_sums(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Checksums of a group's arrays (written whole, one chunk each), for its attributes."""
    return {key: block_sums(np.asarray(arr)) for key, arr in arrays.items()}


def check_group(arrays: dict[str, Any], sums: dict[str, Any], path: str, root: Path) -> dict[str, np.ndarray]:
    """The group's arrays read and checked against their recorded checksums `sums`."""
    out = {}
    for key, arr in arrays.items():
        name, entry = f"{path}/{key}", sums.get(key)
        if not isinstance(entry, dict) or not entry.get("sums"):
            raise damaged(root, name, "has no checksum in its group's attributes")
        check_dtype(arr, entry, name, root)
        try:
            data = np.asarray(arr[...])
        except Exception as exc:
            raise unreadable(root, name, exc) from None
        if not matches(data, entry["sums"][0]) or len(entry["sums"]) != 1:
            raise damaged(root, name, "does not match the checksum recorded when it was written "
                                      "(a chunk file is missing or corrupt)")
        out[key] = data
    return out
