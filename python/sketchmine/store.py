"""The run store: a Zarr v3 directory any Zarr reader can open.

    run.zarr/   attrs: schema_version, model, preprocessing, k, layers, dataset, progress, versions
      dataset/{labels, paths, class_names}
      eval/{logits, predictions, per_class_accuracy}
      layers/<name>/{values, image_index, yx, nan_count}   attrs: shape, kind, receptive_field
      _checkpoint/slot0|slot1/<accumulator>/<array>   (while mining: each accumulator's state,
                                                       see accumulators.py)

Crash safety: a flush writes the whole state into the slot not named by the committed
progress, then commits by rewriting the root attributes (zarr writes each file through a
temporary file and a rename, so the commit is atomic). A crash at any moment leaves the
previously committed slot intact; rows of logits/labels past the commit point are simply
rewritten on resume.
"""
from __future__ import annotations

import asyncio
import copy
import fcntl
import hashlib
import os
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import zarr
from zarr.api.asynchronous import create_hierarchy
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync

from . import schema
from .errors import SketchmineError

SCHEMA_VERSION = 1
_ROW_CHUNK = 8192


def is_run(path: Path) -> bool:
    """True when `path` is a directory holding a sketchmine run."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return "schema_version" in zarr.open_group(str(path), mode="r").attrs
    except Exception:
        return False


class RunLock:
    """Exclusive writer lock on a run: flock on `.<name>.lock`, a file beside the run folder,
    released by the OS if the holder dies.

    Beside, not inside: the lock is taken before the run folder exists, so it covers the run's
    creation (two `mine` started at once on a fresh --out: one creates, the other is refused)
    as well as every later write. The file stays (removing a lock file races with a process
    about to lock it). Where the folder above an existing run is not writable, the lock is
    `run/.lock` inside it, as sketchmine before 14 did (a run cannot be created there anyway)."""

    def __init__(self, path: str | os.PathLike) -> None:
        run = Path(path).resolve()
        self.run = run
        self.path = run.parent / f".{run.name}.lock"
        if not os.access(run.parent, os.W_OK) and run.is_dir():
            self.path = run / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        blocked = next((p for p in (self.run.parent, *self.run.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise SketchmineError(f"cannot write the run to {self.run}: {blocked} is a file, not a folder; "
                                  "choose another --out")
        try:
            self.run.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SketchmineError(f"cannot lock {self.run} for writing ({self.path}: {exc.strerror or exc}); "
                                  "make its folder writable") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise SketchmineError(
                f"{self.run} is being written by another process; wait for it or stop it first"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


_CREATING = "creating"
_MARKER = ".sketchmine-creating"


def _staging(path: Path) -> Path:
    """The sibling folder a new run is laid out in before it is renamed into place."""
    return path.parent / f".{path.name}.{_CREATING}-{os.getpid()}"


def _remove_stale_staging(path: Path) -> list[Path]:
    """Remove the staging folders of creations of `path` that died (the caller holds the run's
    lock, so no live process is creating it): only folders named as `_staging` names them that
    carry our marker file, or are still empty. Returns what was removed."""
    import shutil

    removed = []
    for q in path.parent.glob(f".{path.name}.{_CREATING}-*"):
        if q.is_dir() and not q.is_symlink() and ((q / _MARKER).is_file() or not any(q.iterdir())):
            shutil.rmtree(q)
            removed.append(q)
    return removed


def _io_errors(method: Callable) -> Callable:
    """A failed write (disk full, directory made read-only, quota) becomes a clear error; the
    committed state is untouched, so re-running the same command resumes from it."""
    import functools

    @functools.wraps(method)
    def wrapper(self: RunStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise SketchmineError(
                f"cannot write to {self.path}: {exc.strerror or exc}; nothing committed is lost — "
                "make room (or make it writable) and re-run the same command to resume") from None

    return wrapper


def _check_writable(path: Path) -> None:
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise SketchmineError(f"cannot write the run to {path}: {parent} is not writable")


class RunStore:
    """Read and write one run directory."""

    def __init__(self, path: str | os.PathLike, group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group
        self._written: list[list[Any]] = []   # [array, start, stop, digest] since the last checkpoint
        self._intact: tuple[str | None, int, dict[str, Any]] | None = None
        self._override: dict[str, Any] = {}   # see resume_from_intact
        self._final_sums: dict[str, dict[str, Any]] = {}  # checksums of write_results' arrays, for finish

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> RunStore:
        """Open an existing run; refuse anything that is not one, or a newer schema."""
        p = Path(path)
        if not p.exists():
            raise SketchmineError(f"{p} does not exist")
        if not is_run(p):
            raise SketchmineError(f"{p} is not a sketchmine run (no run.zarr attributes found)")
        group = zarr.open_group(str(p), mode=mode)
        version = group.attrs.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SketchmineError(
                f"{p} has schema version {version!r}; this sketchmine reads up to {SCHEMA_VERSION}: upgrade sketchmine"
            )
        check_root_attrs(p, dict(group.attrs))
        return cls(p, group)

    @classmethod
    def create(cls, path: str | os.PathLike, attrs: dict[str, Any], n_images: int, class_names: list[str],
               path_of: Callable[[int], str], labels: np.ndarray | None, row_chunk: int | None = None,
               layers: dict[str, dict[str, Any]] | None = None) -> RunStore:
        """Lay out a new run: dataset arrays, empty eval arrays, the layers' groups (`layers`,
        see declare_layers), root attributes. The caller holds the run's RunLock.

        Atomic: the run is laid out in a sibling folder `.<name>.creating-<pid>` (marked as
        ours) and renamed into place when whole, so `path` is either absent (or the empty
        folder it was) or a whole new run; a creation that died (disk full, killed) leaves only
        that folder, which the next creation removes.

        row_chunk: rows per chunk of the per-image arrays; the miner passes the rows of one
        flush, so each flush writes new chunk files and never rewrites an older one (a power
        cut can then only damage the newest flush, which resume detects and redoes)."""
        import shutil

        p = Path(path)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            what = "is a sketchmine run" if is_run(p) else "exists and is not a sketchmine run"
            raise SketchmineError(f"{p} {what}; choose another --out or remove it")
        _check_writable(p)
        tmp = _staging(p)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(p)
            tmp.mkdir()
            (tmp / _MARKER).write_text(f"a sketchmine run being created at {p.name} by process {os.getpid()}; "
                                       "the next `sketchmine mine` on it removes this folder if that process died\n")
            group = zarr.open_group(str(tmp), mode="a")  # "w" would clear the folder, marker included
            cls._layout(tmp, group, attrs, n_images, class_names, path_of, labels, row_chunk)
            if layers:
                cls(tmp, group).declare_layers(layers)
            if p.exists():
                p.rmdir()  # empty (checked above): the rename takes its place
            os.rename(tmp, p)
            (p / _MARKER).unlink()
        except OSError as exc:
            if tmp.exists() and (tmp / _MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            raise SketchmineError(f"cannot write the run to {p}: {exc.strerror or exc}") from None
        except BaseException:
            if tmp.exists() and (tmp / _MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(p, zarr.open_group(str(p), mode="r+"))

    @classmethod
    def _layout(cls, p: Path, group: zarr.Group, attrs: dict[str, Any], n_images: int, class_names: list[str],
                path_of: Callable[[int], str], labels: np.ndarray | None, row_chunk: int | None) -> RunStore:
        ds = group.create_group("dataset")
        chunk = (min(max(n_images, 1), row_chunk or _ROW_CHUNK),)
        lab = ds.create_array("labels", shape=(n_images,), dtype="int64", chunks=chunk, fill_value=-1)
        if labels is not None:
            lab[:] = labels
        pa = ds.create_array("paths", shape=(n_images,), dtype=str, chunks=chunk)
        path_sums = []
        for start in range(0, n_images, chunk[0]):  # a chunk at a time: flat memory for any size
            stop = min(start + chunk[0], n_images)
            block = np.array([path_of(i) for i in range(start, stop)], dtype=str)
            pa[start:stop] = block
            path_sums.append(_digest(block))
        cn = ds.create_array("class_names", shape=(len(class_names),), dtype=str, chunks=(max(len(class_names), 1),))
        names = np.array(class_names, dtype=str)
        if class_names:
            cn[:] = names
        sums = {"dataset/paths": {"rows": chunk[0], "sums": path_sums},
                "dataset/class_names": _block_sums(names)}
        group.create_group("eval")
        group.create_group("layers")
        group.attrs.update({**attrs, "schema_version": SCHEMA_VERSION, "row_chunk": chunk[0], "checksums": sums,
                            "progress": {"images_done": 0, "slot": None, "complete": False,
                                         "updated": time.time()}})
        return cls(p, group)

    # ---- verified reads ----------------------------------------------------------------
    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """The array at `name` (rows `rows` of it, or all), checked against the checksums its
        run recorded (see finish): a missing or damaged chunk file is a SketchmineError naming
        the run and the array, never the fill values Zarr would return in its place."""
        try:
            arr = self.group[name]
        except KeyError:
            raise SketchmineError(f"run {self.path} is damaged: array {name!r} is missing; "
                                  "mine the run again with a new --out") from None
        entry = (self.attrs.get("checksums") or {}).get(name)
        n = arr.shape[0] if arr.ndim else 1
        start, stop = (0, n) if rows is None else rows.indices(n)[:2]
        try:
            if entry is None:
                return np.asarray(arr[start:stop] if rows is not None else arr[...])
            step, sums = int(entry["rows"]), list(entry["sums"])
            first, last = start // step, max(start, stop - 1) // step  # the checksummed blocks covering the rows
            data = np.asarray(arr[first * step:min((last + 1) * step, n)] if arr.ndim else arr[...])
        except SketchmineError:
            raise
        except Exception as exc:  # a chunk file that does not decode
            raise self._damaged(name, f"cannot be read ({type(exc).__name__}: {str(exc)[:80]})") from None
        for b in range(first, last + 1):
            lo = (b - first) * step
            if b >= len(sums) or _digest(data[lo:lo + step] if arr.ndim else data) != sums[b]:
                where = f"rows {b * step}-{min((b + 1) * step, n) - 1}" if arr.ndim and len(sums) > 1 else "its data"
                raise self._damaged(name, f"does not match the checksum recorded when the run was written "
                                          f"({where}: a chunk file is missing or corrupt)")
        return data if rows is None or not arr.ndim else data[start - first * step:stop - first * step]

    def committed(self, read: Callable[[], Any], tries: int = 10) -> Any:
        """`read()` against one committed state of a run another process may be mining.

        A writer only rewrites the checkpoint slot its last commit does not name, commits by
        rewriting the root attributes (atomically), and never rewrites per-image rows below a
        commit; a reader's checkpoint reads are pinned to one commit (`_pinned`). A read that
        fails while the committed progress changed is repeated against the newer commit (this
        store refreshed); an error during a read the writer did not disturb is the run's real
        error. Gives up after `tries` with a clear "retry"."""
        for attempt in range(tries):
            before = self._progress_on_disk()
            if before != self.group.attrs.get("progress"):
                self.refresh()
            if before.get("complete"):  # final arrays, written before the commit and never again
                return read()
            try:
                return read()  # checkpoint reads are pinned to one commit (`_pinned`); rows below it do not change
            except Exception as exc:
                error = exc
            if self._progress_on_disk() == before:
                if isinstance(error, SketchmineError):
                    raise error
                raise SketchmineError(f"run {self.path} is damaged: {type(error).__name__}: {str(error)[:120]}; "
                                      "mine it again with a new --out") from error
            time.sleep(min(0.01 * 2 ** attempt, 0.2))
        raise SketchmineError(f"run {self.path} is being written by another process, which committed newer results "
                              f"during each of {tries} attempts to read it; retry in a moment")

    def _progress_on_disk(self) -> dict[str, Any]:
        """The committed progress as on disk now (zarr writes zarr.json atomically)."""
        import json

        try:
            return dict(json.loads((self.path / "zarr.json").read_bytes())["attributes"]["progress"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SketchmineError(f"run {self.path} is damaged: its root attributes cannot be read "
                                  f"({type(exc).__name__}: {exc})") from None

    def refresh(self) -> None:
        """Read the run's attributes afresh (a writer committed since this handle opened it)."""
        group = zarr.open_group(str(self.path), mode="r" if self.group.read_only else "r+")
        check_root_attrs(self.path, dict(group.attrs))
        self.group, self._intact = group, None

    def _damaged(self, name: str, what: str) -> SketchmineError:
        return SketchmineError(f"run {self.path} is damaged: array {name!r} {what}; restore the run's files "
                               "from a copy, or mine it again with a new --out")

    # ---- attributes ------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return {**self.group.attrs, **self._override}

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.attrs["progress"])

    def resume_from_intact(self) -> str | None:
        """Make this handle treat the newest intact checkpoint as the committed one.

        Nothing is written: the next flush goes into the other slot (the damaged one) and
        commits over it. Returns a note to show when the committed checkpoint was damaged."""
        slot, done, extra = self.checkpoint()
        committed = self.progress
        if slot == committed.get("slot"):
            return None
        self._override = {**extra, "progress": {"images_done": done, "slot": slot, "complete": False,
                                                "updated": committed.get("updated")}}
        if slot is None:
            self._override.update({"bad_images": [], "converted_images": {}})
        return (f"the newest checkpoint of {self.path} is damaged or incomplete (image {committed.get('images_done')}; "
                f"a crash or power cut before it reached the disk); resuming from image {done}")

    @_io_errors
    def declare_layers(self, layers: dict[str, dict[str, Any]]) -> None:
        """Create one group per layer with its shape and kind (once, at run creation)."""
        nodes = {f"layers/{name}": GroupMetadata(attributes=meta) for name, meta in layers.items()}
        sync(_create(self.group, nodes))

    # ---- streaming writes ----------------------------------------------------------------
    @_io_errors
    def write_rows(self, start: int, logits: np.ndarray | None, labels: np.ndarray | None) -> None:
        """Logits and labels of images [start, start + rows)."""
        if logits is not None and len(logits):
            ev = self.group["eval"]
            rows = int(self.group.attrs.get("row_chunk", _ROW_CHUNK))
            if "logits" not in ev:
                n = self.group["dataset/labels"].shape[0]
                ev.create_array("logits", shape=(n, logits.shape[1]), dtype="float32",
                                chunks=(min(n, rows), logits.shape[1]), fill_value=float("nan"))
            ev["logits"][start:start + len(logits)] = logits
            if "predictions" not in ev:
                n = self.group["dataset/labels"].shape[0]
                ev.create_array("predictions", shape=(n,), dtype="int64", chunks=(min(n, rows),), fill_value=-1)
            valid = ~np.isnan(logits).any(axis=1)
            pred = np.where(valid, np.nan_to_num(logits, nan=-np.inf).argmax(axis=1), -1)
            ev["predictions"][start:start + len(logits)] = pred
            self._written += [["eval/logits", start, start + len(logits), _digest(logits)],
                              ["eval/predictions", start, start + len(pred), _digest(pred)]]
        if labels is not None and len(labels):
            self.group["dataset/labels"][start:start + len(labels)] = labels
            self._written.append(["dataset/labels", start, start + len(labels), _digest(labels)])

    @_io_errors
    def write_checkpoint(self, states: dict[str, dict[str, np.ndarray]], images_done: int,
                         extra: dict[str, Any]) -> None:
        """Write every accumulator's state into the free slot, then commit (atomic attribute
        rewrite). `states`: accumulator key -> its flat arrays, stored as `<key>/<array>`; the
        store does not know what they are (accumulators.py)."""
        prog = self.progress
        slot = "slot1" if prog.get("slot") == "slot0" else "slot0"
        ck = self.group.require_group(schema.CHECKPOINT)
        if slot in ck:
            del ck[slot]
        sg = ck.create_group(slot)
        packed = {f"{key}/{name}": np.asarray(arr) for key, state in states.items() for name, arr in state.items()}
        _put_all(sg, packed)
        # what resume needs to check this slot and to restart from it alone: the checksums of
        # its arrays and of the rows written since the previous slot, and the committed extras
        sg.attrs.update({"accumulators": {key: list(state) for key, state in states.items()},
                         "images_done": images_done, "extra": extra, "rows": self._written,
                         "checksums": {key: _digest(arr) for key, arr in packed.items()}})
        self.commit({"images_done": images_done, "slot": slot, "complete": False,
                     "updated": time.time()}, extra)
        self._written, self._intact, self._override = [], None, {}

    @_io_errors
    def commit(self, progress: dict[str, Any], extra: dict[str, Any]) -> None:
        self.group.attrs.update({**extra, "progress": progress})

    def checkpoint(self) -> tuple[str | None, int, dict[str, Any]]:
        """(slot, images done, committed extras) of the newest intact checkpoint.

        Normally the committed slot. If its files (or the rows written with it) fail their
        checksums — a power cut loses the newest writes — the slot before it, whose rows are in
        older chunk files; if neither is intact, (None, 0, {}): start again from the first image.
        """
        if self._intact is not None:
            return self._intact
        progress = dict(self.group.attrs["progress"])  # as committed on disk
        committed = progress.get("slot")
        self._intact = (None, 0, {})
        if committed is not None:
            other = "slot1" if committed == "slot0" else "slot0"
            done = int(progress.get("images_done", 0))
            for slot in (committed, other):
                meta = self._verified(slot)
                if meta is not None and (slot == committed or int(meta.get("images_done", -1)) < done):
                    self._intact = (slot, int(meta.get("images_done", done)), dict(meta.get("extra") or {}))
                    break
        return self._intact

    def _verified(self, slot: str) -> dict[str, Any] | None:
        """The slot's attributes when its arrays and rows match their checksums, else None."""
        try:
            sg = self.group[f"_checkpoint/{slot}"]
            meta = dict(sg.attrs)
            sums = meta.get("checksums")
            if sums is None:  # a run written before checksums: trust the committed slot as before
                return meta if slot == self.group.attrs["progress"].get("slot") else None
            if any(_digest(np.asarray(sg[key][...])) != digest for key, digest in sums.items()):
                return None
            for name, start, stop, digest in meta.get("rows", []):
                if _digest(np.asarray(self.group[name][start:stop])) != digest:
                    return None
            return meta
        except Exception:  # unreadable, truncated or missing files
            return None

    def _pinned(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """For a reader (read-only handle): the committed slot's attributes and the arrays of
        accumulator `key` (by their own names), read once each and checked against the slot's
        own checksums and the committed progress. A writer rewrites a slot only after committing
        the other one, so arrays that match the checksums of a slot whose images_done is the
        committed one are that commit's state, whatever the writer did meanwhile. None when the
        slot cannot be pinned although the run did not move on (damaged: the caller's
        `checkpoint` path decides); a SketchmineError when the writer moved on
        (RunStore.committed retries)."""
        progress = self._progress_on_disk()
        slot = progress.get("slot")
        if slot is None:
            return None
        try:
            sg = zarr.open_group(str(self.path / schema.CHECKPOINT / slot), mode="r")
            meta = dict(sg.attrs)
            sums = meta["checksums"]
            if meta.get("images_done") != progress.get("images_done"):
                raise ValueError("the slot is not the committed one")
            names = (meta.get("accumulators") or {}).get(key, [])
            flat = {name: np.asarray(sg[f"{key}/{name}"][...]) for name in names}
            if any(_digest(arr) != sums.get(f"{key}/{name}") for name, arr in flat.items()):
                raise ValueError("the slot's arrays do not match its checksums")
            return meta, flat
        except Exception as exc:
            if self._progress_on_disk() != progress:
                raise SketchmineError(f"{self.path}: the checkpoint moved on while it was read ({exc})") from None
            return None

    def read_checkpoint_state(self, key: str) -> dict[str, np.ndarray] | None:
        """The state accumulator `key` saved in the newest intact checkpoint (see `checkpoint`;
        a reader's is pinned to the committed one), or None when there is no checkpoint or it
        holds no state under `key`. A checkpoint of the layout before accumulators (one set of
        top-k arrays for all layers) is a clear error: such a run is finished by the version
        that started it."""
        pinned = self._pinned(key) if self.group.read_only else None
        if pinned is not None:
            meta, flat = pinned
            self._check_checkpoint_layout(meta)
            return flat if key in meta["accumulators"] else None
        slot = self.checkpoint()[0]
        if slot is None:
            return None
        try:
            sg = self.group[f"{schema.CHECKPOINT}/{slot}"]
            meta = dict(sg.attrs)
            self._check_checkpoint_layout(meta)
            names = meta["accumulators"].get(key)
            return None if names is None else {name: np.asarray(sg[f"{key}/{name}"][...]) for name in names}
        except SketchmineError:
            raise
        except Exception as exc:  # vanished or rewritten meanwhile (a reader's RunStore.committed retries)
            raise SketchmineError(f"{self.path}: the committed checkpoint ({slot}) cannot be read "
                                  f"({type(exc).__name__}: {exc}); if it persists, mine it again with a new --out"
                                  ) from None

    def _check_checkpoint_layout(self, meta: dict[str, Any]) -> None:
        if not isinstance(meta.get("accumulators"), dict):
            raise SketchmineError(f"{self.path}: this run's checkpoint was written by an earlier sketchmine; finish it "
                                  "with that version or mine again with a new --out")

    @_io_errors
    def write_arrays(self, group: str, arrays: dict[str, np.ndarray]) -> None:
        """Whole arrays under `group` ("" for the root; keys may hold "/", e.g.
        "layers/conv1/values"), one chunk each, replacing earlier ones, in one Zarr call."""
        _put_all(self.group[group] if group else self.group, arrays)

    @_io_errors
    def write_group(self, path: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        """Replace the group at `path` (e.g. "layers/conv1/importance") by `arrays` (one chunk
        each) and `attrs`, as a unit: they are written into the sibling group `<path>.writing`
        with the marker attribute "complete" last, which is then renamed into place. An
        interrupted write leaves only that sibling (removed by the next write), so readers see
        the previous group or the new one, never part of one. The caller holds the RunLock."""
        import shutil

        target = self.path / path
        staging = target.with_name(target.name + ".writing")
        old = target.with_name(target.name + ".old")
        for leftover in (staging, old):  # ours, by name, from an interrupted write
            if leftover.is_dir():
                shutil.rmtree(leftover)
        try:
            group = zarr.open_group(str(staging), mode="w")
            _put_all(group, arrays)
            group.attrs.update({**attrs, "complete": True})
            if target.exists():
                os.rename(target, old)
            os.rename(staging, target)
        except Exception:
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            if old.is_dir() and target.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def read_group(self, path: str, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """(arrays `keys`, attributes) of a group `write_group` wrote, or None when it is absent or
        incomplete: no "complete" marker (nor, written before the marker, its attributes), or an
        array missing or unreadable (a write interrupted by a sketchmine before 14)."""
        try:
            group = self.group[path]
            attrs = dict(group.attrs)
            if not (attrs.get("complete") is True or ("complete" not in attrs and attrs)):
                return None
            arrays = {key: np.asarray(group[key][...]) for key in keys}
        except Exception:
            return None
        if len({arr.shape for arr in arrays.values()}) > 1:
            return None
        return arrays, attrs

    # ---- final results -------------------------------------------------------------------
    @_io_errors
    def write_results(self, arrays: dict[str, np.ndarray], accuracy: float | None = None) -> None:
        """The final arrays of every layer (top-k, class statistics) and of eval/, in one Zarr
        call; the overall accuracy when there are predictions."""
        _put_all(self.group, arrays)
        self._final_sums.update({name: _block_sums(arr) for name, arr in arrays.items()})
        if "eval/per_class_accuracy" in arrays:
            self.group["eval"].attrs.update({"accuracy": accuracy})

    @_io_errors
    def finish(self, n_images: int, extra: dict[str, Any]) -> None:
        """Mark the run complete and drop the checkpoint slots. The commit records checksums of
        the final arrays and of the per-image labels and predictions (as on disk, chunk by
        chunk), which `read` verifies: a chunk file lost or damaged later is an error, not
        fill values read as results."""
        sums = {**self.attrs.get("checksums", {}), **self._final_sums}
        for name in ("dataset/labels", "eval/predictions"):
            if name in self.group:
                arr = self.group[name]
                sums[name] = _block_sums(np.asarray(arr[...]), arr.chunks[0])
        self.commit({"images_done": n_images, "slot": self.progress.get("slot"), "complete": True,
                     "updated": time.time()}, {**extra, "checksums": sums})
        if "_checkpoint" in self.group:
            del self.group["_checkpoint"]


_TEMPLATES: dict[str, dict[str, Any]] = {}
_METADATA: dict[tuple[str, tuple[int, ...]], ArrayV3Metadata] = {}


def _metadata(arr: np.ndarray) -> ArrayV3Metadata:
    """The metadata `create_array(data=arr)` would write (Zarr's default codecs for the dtype),
    as one chunk. Built from a per-dtype template instead of Zarr's creation path, which costs
    ~2 ms per array, and kept per (dtype, shape): metadata objects are immutable."""
    key = (arr.dtype.str, tuple(arr.shape))
    if key not in _METADATA:
        if arr.dtype.str not in _TEMPLATES:
            probe = zarr.create_array(zarr.storage.MemoryStore(), shape=(1,), dtype=arr.dtype)
            _TEMPLATES[arr.dtype.str] = probe.metadata.to_dict()
        doc = copy.deepcopy(_TEMPLATES[arr.dtype.str])
        doc["shape"] = list(arr.shape)
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [max(n, 1) for n in arr.shape]
        _METADATA[key] = ArrayV3Metadata.from_dict(doc)
    return _METADATA[key]


async def _create(group: zarr.Group, nodes: dict[str, GroupMetadata | ArrayV3Metadata]) -> dict[str, Any]:
    """Create `nodes` (paths relative to `group`) concurrently, replacing any there; returns the
    created async nodes by the same relative paths."""
    base = f"{group.path}/" if group.path else ""
    made = {path: node async for path, node in
            create_hierarchy(store=group.store, nodes={base + k: v for k, v in nodes.items()}, overwrite=True)}
    return {k: made[base + k] for k in nodes}


def _put_all(group: zarr.Group, arrays: dict[str, np.ndarray]) -> None:
    """Each of `arrays` as the whole array at its path under `group`, one chunk, replacing an
    earlier one. One event-loop call for all: Zarr's per-call overhead (~3 ms an array, ten times
    the file I/O) was most of a ResNet-50 run's fixed cost with one call per array."""
    if not arrays:
        return

    nodes = {k: _metadata(a) for k, a in arrays.items()}

    async def write() -> None:
        made = await _create(group, nodes)
        await asyncio.gather(*(made[k].setitem(..., a) for k, a in arrays.items()))

    sync(write())


def put_rows(arrays: dict[str, zarr.Array], rows: slice, values: dict[str, np.ndarray]) -> None:
    """values[k] into arrays[k][rows] for every k, in one event-loop call (one Zarr call per
    array costs a round trip to Zarr's loop thread each, more than these small writes)."""
    async def write() -> None:
        await asyncio.gather(*(arrays[k].async_array.setitem(rows, v) for k, v in values.items()))

    sync(write())


def _digest(arr: np.ndarray) -> str:
    arr = np.asarray(arr)
    if arr.dtype.kind in "UOT":  # strings: their text, whatever width or string dtype holds them
        return hashlib.blake2b("\x00".join(map(str, arr.ravel())).encode("utf-8", "surrogatepass"),
                               digest_size=16).hexdigest()
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).hexdigest()


def _block_sums(arr: np.ndarray, rows: int | None = None) -> dict[str, Any]:
    """Checksums of `arr` in blocks of `rows` along its first axis (its chunks; None: one)."""
    rows = max(1, int(rows or (arr.shape[0] if arr.ndim else 1)))
    n = arr.shape[0] if arr.ndim else 1
    return {"rows": rows, "sums": [_digest(arr[i:i + rows] if arr.ndim else arr) for i in range(0, max(n, 1), rows)]}


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_pair(v: Any, low: int) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_int(x, low) for x in v)


_ROOT_CHECKS: dict[str, tuple[bool, str, Callable[[Any], bool]]] = {
    # key: (required, what is expected, check)
    "layer_names": (True, "a non-empty list of distinct layer names (no '/' or '..')",
                    lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x and "/" not in x and ".." not in x
                                                                for x in v)
                    and len(set(v)) == len(v)),
    "k": (True, "a positive integer", lambda v: _is_int(v, 1)),
    "progress": (True, "{images_done: int, slot: null|slot0|slot1, complete: bool}",
                 lambda v: isinstance(v, dict) and _is_int(v.get("images_done"), 0)
                 and v.get("slot") in (None, "slot0", "slot1") and isinstance(v.get("complete"), bool)),
    "num_classes": (False, "null or a non-negative integer", lambda v: v is None or _is_int(v, 0)),
    "dataset": (False, "an object", lambda v: isinstance(v, dict)),
    "preprocessing": (False, "null or {preset, channels, size, mean, std}",
                      lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("preset"), str)
                                              and _is_int(v.get("channels"), 1)
                                              and (v.get("size") is None or _is_pair(v.get("size"), 1))
                                              and all(isinstance(v.get(key, []), list) and
                                                      all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in v.get(key, [])) for key in ("mean", "std")))),
    "model_spec": (False, "{spec: str|null, weights: str|null}",
                   lambda v: isinstance(v, dict) and all(v.get(key) is None or isinstance(v.get(key), str)
                                                         for key in ("spec", "weights"))),
    "weights_sha256": (False, "a string", lambda v: isinstance(v, str)),
    "bad_images": (False, "a list of {index, path, error}", lambda v: isinstance(v, list)
                   and all(isinstance(b, dict) and _is_int(b.get("index"), 0) and isinstance(b.get("path"), str)
                           for b in v)),
    "checksums": (False, "{array path: {rows: int, sums: [str]}}", lambda v: isinstance(v, dict)
                  and all(isinstance(e, dict) and _is_int(e.get("rows"), 1) and isinstance(e.get("sums"), list)
                          and all(isinstance(x, str) for x in e["sums"]) for e in v.values())),
    "converted_images": (False, "an object of counts", lambda v: isinstance(v, dict)
                         and all(isinstance(key, str) and _is_int(n, 0) for key, n in v.items())),
}


def check_root_attrs(path: Path, attrs: dict[str, Any]) -> None:
    """Refuse a run whose root attributes a reader would trust but cannot (edited, damaged)."""
    for key, (required, expected, ok) in _ROOT_CHECKS.items():
        if key not in attrs:
            if required:
                raise SketchmineError(f"run {path} is damaged: attribute {key!r} is missing")
            continue
        if not ok(attrs[key]):
            raise SketchmineError(f"run {path} is damaged: attribute {key!r} should be {expected}, "
                                  f"found {str(attrs[key])[:60]!r}")


def check_layer_attrs(path: Path, layer: str, attrs: dict[str, Any]) -> None:
    """The per-layer attributes a reader uses: shape, kind, receptive field."""
    shape, kind, rf = attrs.get("shape"), attrs.get("kind"), attrs.get("receptive_field")
    problems = []
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(_is_int(x, 0) for x in shape)):
        problems.append(f"'shape' should be a list of 1 to 4 sizes, found {str(shape)[:40]!r}")
    if kind is not None and not isinstance(kind, str):
        problems.append(f"'kind' should be a string, found {str(kind)[:40]!r}")
    if rf is not None and not (isinstance(rf, dict) and _is_pair(rf.get("size"), 1)
                               and _is_pair(rf.get("stride"), 0) and isinstance(rf.get("offset"), list)
                               and len(rf["offset"]) == 2 and all(_is_int(x, -10**9) for x in rf["offset"])):
        problems.append(f"'receptive_field' should be {{size, stride, offset}} pairs, found {str(rf)[:60]!r}")
    if problems:
        raise SketchmineError(f"run {path} is damaged: layer {layer!r} attribute " + "; ".join(problems))
