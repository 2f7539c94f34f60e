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

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.group import GroupMetadata

from sketchmine.errors import RunDamaged, SketchmineError
from sketchmine.store import attr_sums, schema, verify
from sketchmine.store.attrs import check_layer_attrs, check_root_attrs, root_attrs_guessed
from sketchmine.store.blocks import BlockWrites
from sketchmine.store.checkpoint import Checkpoints
from sketchmine.store.checksums import block_sums, digest, pieces, stored_sums
from sketchmine.store.columns import Columns
from sketchmine.store.commits import CommittedReads, commit_key, folder_identity
from sketchmine.store.groups import read_unit, write_unit
from sketchmine.store.io import BulkWriter, io_errors, lay_out_run, new_arrays, put_rows, put_slices
from sketchmine.store.access import check_run_writable, run_unreadable
from sketchmine.store.lock import RunLock, check_writable, is_run, runs_in, stage

__all__ = ["RunLock", "RunStore", "check_layer_attrs", "check_new_out", "check_root_attrs", "is_run", "put_rows",
           "root_attrs_guessed"]

SCHEMA_VERSION = schema.SCHEMA_VERSION
_ROW_CHUNK = schema.ROW_CHUNK


def _layer_groups(layers: dict[str, dict[str, Any]]) -> dict[str, GroupMetadata]:
    """One group per layer, its attributes its shape and kind (RunStore.create)."""
    return {schema.layer_group(name): GroupMetadata(attributes=meta) for name, meta in layers.items()}


def damaged_root(path: Path) -> str | None:
    """Why `path`'s root zarr.json, a file, cannot be read as JSON (None where it can, or is no
    file): a run whose root metadata a copy or a sync cut short is damaged, not "no run", and
    nothing may take it for a foreign folder to choose away or remove."""
    root = Path(path) / "zarr.json"
    try:
        if not root.is_file():
            return None
        json.loads(root.read_bytes())
        return None
    except ValueError as exc:
        return f"{root} does not parse as JSON ({'empty' if not root.stat().st_size else exc})"
    except OSError as exc:
        if denied := run_unreadable(path, exc):  # this user may not read it: not damage
            raise denied from None
        return f"{root} cannot be read ({exc.strerror or exc})"


def check_new_out(path: Path) -> None:
    """Refuse `path` as the folder of a new run where it holds something else: a file, or a folder
    with files that is not a run (nothing is written into what sketchmine did not create). `mine`
    asks before it takes the run's lock (whose file beside the folder would be left there), reads
    the dataset or probes the model; `RunStore.create` asks again under the lock."""
    if path.exists() and not is_run(path) and (not path.is_dir() or any(path.iterdir())):
        if path.is_dir() and (why := damaged_root(path)):
            raise RunDamaged(f"{path} may be a damaged run: {why}; restore it from a copy, or choose another --out "
                             "(nothing there was changed)")
        raise SketchmineError(f"{path} exists and is not a sketchmine run; choose another --out or remove it")


class RunStore(Checkpoints, CommittedReads, BlockWrites):
    """Read and write one run directory."""

    def __init__(self, path: str | os.PathLike, group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group
        self._written: list[list[Any]] = []   # [array, start, stop, digest] since the last checkpoint
        self._before: list[list[Any]] | None = None  # ... and before it (checkpoint.rows_before)
        self._intact: tuple[str | None, int, dict[str, Any]] | None = None
        self._override: dict[str, Any] = {}   # see resume_from_intact
        self._final_sums: dict[str, dict[str, Any]] = {}  # checksums of write_results' arrays, for finish
        self._blocks = verify.BlockCache()  # checked blocks of pictures, for readers of one unit at a time
        self._folder = folder_identity(self.path)
        self._kept = None  # a partial run's reads kept per commit (commits.py): not a run reopened meanwhile

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", checked: RunStore | None = None) -> RunStore:
        """Open an existing run; refuse anything that is not one, or a newer schema. `checked`: a
        handle this run was opened with before (mine's, ahead of its lock), whose check that this
        user may write the run stands while the run folder is the one it opened (not walked again)."""
        p = Path(path)
        if not p.exists():
            raise SketchmineError(f"{p} does not exist")
        if not is_run(p):
            if why := damaged_root(p):
                raise RunDamaged(f"{p} may be a damaged run: {why}; restore it from a copy, or mine again with a "
                                 "new --out")
            raise SketchmineError(f"{p} is not a sketchmine run " + (
                f"(no sketchmine run attributes in {p / 'zarr.json'})" if (p / "zarr.json").is_file() else
                f"(no zarr.json){runs_in(p)}"))
        folder = folder_identity(p)  # before its attributes: a run put there meanwhile is followed by the next read
        try:
            group = zarr.open_group(str(p), mode=mode)
        except FileNotFoundError:  # zarr's GroupNotFoundError too: removed since it was found a run
            raise SketchmineError(f"{p} was removed while it was opened") from None
        version = group.attrs.get(schema.VERSION_ATTR)
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
            raise SketchmineError(
                f"{p} has schema version {version!r}; this sketchmine reads up to {SCHEMA_VERSION}: upgrade sketchmine"
            )
        if version < SCHEMA_VERSION and version not in schema.RELEASED_VERSIONS:
            raise SketchmineError(f"{p} has schema version {version}, which no released sketchmine wrote; "
                                  "mine it again with a new --out")
        check_root_attrs(p, dict(group.attrs))
        if version < SCHEMA_VERSION and not group.attrs[schema.PROGRESS].get("complete"):
            raise SketchmineError(
                f"{p} is an unfinished run of sketchmine {schema.RELEASED_VERSIONS[version]} (schema version {version}); "
                f"this sketchmine (schema version {SCHEMA_VERSION}) reads its complete runs but cannot resume or read "
                f"its checkpoints: finish it with sketchmine {schema.RELEASED_VERSIONS[version]} (re-run the same "
                "`sketchmine mine` command), or mine it again with a new --out")
        if (mode != "r" and not group.attrs[schema.PROGRESS].get("complete")  # refused before, not at, the first flush
                and (checked is None or checked._folder is None or checked._folder != folder)):
            check_run_writable(p, "mining resumes it in place")
        store = cls(p, group)
        store._folder = folder
        return store

    @classmethod
    def create(cls, path: str | os.PathLike, attrs: dict[str, Any], n_images: int, class_names: list[str],
               path_of: Callable[[int], str], labels: np.ndarray | None, row_chunk: int | None = None,
               layers: dict[str, dict[str, Any]] | None = None, digests: list[str] | None = None) -> RunStore:
        """Lay out a new run: dataset arrays, empty eval arrays, the layers' groups (`layers`,
        each a group with its shape and kind), root attributes. The caller holds the run's RunLock.

        Atomic: the run is laid out in a sibling folder `.<name>.creating-<pid>` (marked as
        ours) and renamed into place when whole, so `path` is either absent (or the empty
        folder it was) or a whole new run; a creation that died (disk full, killed) leaves only
        that folder, which the next creation removes.

        digests: each image's content digest (`MinerDataset.content_digests`), kept where given.
        row_chunk: rows per chunk of the per-image arrays; the miner passes the rows of one
        flush, so each flush writes new chunk files and never rewrites an older one (a power
        cut can then only damage the newest flush, which resume detects and redoes)."""
        p = Path(path)
        if is_run(p):
            raise SketchmineError(f"{p} is a sketchmine run; choose another --out or remove it")
        check_new_out(p)
        check_writable(p)

        def lay_out(tmp: Path) -> None:
            group = zarr.open_group(str(tmp), mode="a")  # "w" would clear the folder, marker included
            lay_out_run(group, attrs, n_images, class_names, path_of, labels, row_chunk, _layer_groups(layers or {}),
                        digests)

        stage(p, lay_out)
        return cls(p, zarr.open_group(str(p), mode="r+"))

    # ---- verified reads ----------------------------------------------------------------
    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """The array at `name` (rows `rows` of it, or all), checked against the checksums its
        run recorded (see finish): a missing or damaged chunk file is a SketchmineError naming
        the run and the array, never the fill values Zarr would return in its place.

        A read of an array checked once is answered from the checked copy while the recorded
        checksums are the same (`verify.final_key`): the report and the summaries read a run's
        class names, labels and top-k dozens of times, each a metadata file and a chunk file; a
        partial run's labels and predictions are kept per commit (`per_commit`)."""
        entry = (self.attrs.get(schema.CHECKSUMS) or {}).get(name)
        if entry is None and rows is None and name in schema.COMMITTED_ROWS and self.group.read_only:
            # a partial run's (no checksums yet), kept per commit: a writer never rewrites the rows below one
            commit = commit_key(self.cached_progress())
            return self.per_commit(commit, name, lambda: self._read(name, None, None)).copy()
        key = verify.final_key(name, entry, rows)
        if key is not None and (kept := self._blocks.get(key)) is not None:
            return kept.copy()
        data = self._read(name, entry, rows)
        if key is not None and (data.dtype.kind not in "OUT" or data.size <= verify.TEXT_KEPT):
            self._blocks.put(key, data)  # not a whole dataset's paths: the cache counts a text's bytes short
        return data

    def _read(self, name: str, entry: dict[str, Any] | None, rows: slice | None) -> np.ndarray:
        arr = self._array(name)
        n = arr.shape[0] if arr.ndim else 1
        start, stop = (0, n) if rows is None else rows.indices(n)[:2]
        if entry is None and (blocks := verify.block_entry(self.group, name)) is not None:
            return verify.read_blocks(arr, blocks, start, stop, name, self.path, self._blocks)  # a pass's blocks
        return verify.read_checked(arr, entry, rows is not None, start, stop, name, self.path)

    def verify_results(self) -> None:
        """Read every array the run recorded checksums for, and the attributes it recorded sums of
        (the root's are checked on opening): a RunDamaged naming the first damaged one."""
        for name, entry in (self.attrs.get(schema.CHECKSUMS) or {}).items():
            self.verify_array(name, entry)
        for node in filter(None, self.attrs.get(schema.ATTRIBUTE_SUMS) or {}):
            self.group_attrs(node)

    def verify_array(self, name: str, entry: dict[str, Any]) -> int:
        """Read array `name` from its files (not a copy checked earlier), a piece at a time (flat
        memory: a dataset's logits), checked against its recorded checksums `entry`; bytes read."""
        return sum(self._read(name, entry, rows).nbytes for rows in pieces(self._array(name)))

    def refresh(self) -> None:
        """Read the run's attributes afresh (a writer committed since this handle opened it)."""
        group = zarr.open_group(str(self.path), mode="r" if self.group.read_only else "r+")
        check_root_attrs(self.path, dict(group.attrs))
        self.group, self._intact = group, None

    def reopen(self) -> None:
        """This handle made a new one on the run now at its path (commits.py: a commit, or a reader's
        run mined again there): the old cached attributes go; the checked blocks stay, keyed by
        their recorded checksums (a block the run there now does not hold is never looked up)."""
        blocks = self._blocks
        self.__dict__.update(type(self).open(self.path, mode="r" if self.group.read_only else "r+").__dict__)
        self._blocks = blocks

    def reader(self) -> RunStore:
        """A read-only handle on the run at this path sharing this one's checked blocks, the final
        arrays this handle wrote among them: the run `mine` returns answers its first reads of
        them as it answers a checked read's second."""
        other = type(self).open(self.path)
        other._blocks = self._blocks
        return other

    def cached_progress(self) -> dict[str, Any]:
        """The progress as this handle last read it (`refresh`), the writer's own state included."""
        return dict(self.group.attrs.get("progress") or {})

    # ---- attributes ------------------------------------------------------------------
    def has(self, name: str) -> bool:
        """True when the run holds the array or group at `name` (a schema path), or recorded its checksums."""
        return verify.has(self.group, name, self.path, self.attrs.get(schema.CHECKSUMS) or {})

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of the array at `name`, without reading it."""
        return tuple(self._array(name).shape)

    def group_attrs(self, name: str) -> dict[str, Any]:
        """The attributes of the group at `name` (e.g. schema.EVAL); {} when it is absent."""
        attrs = dict(self._array(name).attrs) if self.has(name) else {}
        attr_sums.check(self.path, self.attrs, name, attrs)
        return attrs

    def layer_group(self, layer: str) -> zarr.Group:
        """The layer's Zarr group (store modules only; readers use `layer_attrs` / `read`)."""
        try:
            return verify.node(self.group, schema.layer_group(layer), self.path)
        except KeyError:
            raise RunDamaged(f"run {self.path} is damaged: layer {layer!r} is listed but has no group") from None

    def layer_attrs(self, layer: str) -> dict[str, Any]:
        """The layer's attributes, checked (a damaged run is refused clearly)."""
        attrs = dict(self.layer_group(layer).attrs)
        check_layer_attrs(self.path, layer, attrs, self.attrs)
        return attrs

    def _array(self, name: str) -> zarr.Array:
        try:
            return verify.node(self.group, name, self.path)
        except KeyError:
            raise RunDamaged(f"run {self.path} is damaged: array {name!r} is missing; "
                             "mine the run again with a new --out") from None

    @property
    def attrs(self) -> dict[str, Any]:
        if self.group.read_only:
            self.follow()  # a reader's handle follows its writer between reads (commits.py)
        return {**self.group.attrs, **self._override}

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.attrs["progress"])

    def resume_from_intact(self) -> str | None:
        """Make this handle treat the newest intact checkpoint as the committed one. Nothing is
        written: the next flush goes into the other slot (the damaged one) and commits over it.
        Returns a note to show when the committed checkpoint was damaged."""
        verify.check_metadata(self.path)  # a group's that does not parse: refused now, not after mining
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

    # ---- streaming writes ----------------------------------------------------------------
    @io_errors
    def write_rows(self, start: int, logits: np.ndarray | None, labels: np.ndarray | None,
                   skipped: Iterable[int] = ()) -> None:
        """Logits and labels of images [start, start + rows); `skipped`: global indices of
        images that were not read (their NaN logits mean no prediction, not a NaN output)."""
        values: dict[str, np.ndarray] = {}
        arrays: dict[str, zarr.Array] = {}
        if logits is not None and len(logits):
            arrays[schema.LABELS] = self._array(schema.LABELS)
            n = arrays[schema.LABELS].shape[0]
            missing: dict[str, tuple[int, ...]] = {}
            for key, shape in ((schema.LOGITS, (n, logits.shape[1])), (schema.PREDICTIONS, (n,))):
                try:
                    arrays[key] = self.group[key]
                except KeyError:
                    missing[key] = shape
            if missing:  # the first rows: made in one call
                arrays.update(new_arrays(self.group, missing, int(self.group.attrs.get(schema.ROW_CHUNK_ATTR,
                                                                                     _ROW_CHUNK))))
            pred = np.where(np.isnan(logits).any(axis=1), schema.NAN_PREDICTION,
                            np.nan_to_num(logits, nan=-np.inf).argmax(axis=1))
            rows = np.array([i - start for i in skipped if start <= i < start + len(logits)], dtype=np.int64)
            pred[rows] = schema.NO_PREDICTION
            values[schema.LOGITS] = logits
            values[schema.PREDICTIONS] = pred
        if labels is not None and len(labels):
            if schema.LABELS not in arrays:
                arrays[schema.LABELS] = self._array(schema.LABELS)
            values[schema.LABELS] = labels
        if values:  # every array's rows in one call
            put_slices(arrays, {key: (slice(start, start + len(v)), v) for key, v in values.items()})
        self._written += [[key, start, start + len(v), digest(v)] for key, v in values.items()]

    @io_errors
    def commit(self, progress: dict[str, Any], extra: dict[str, Any]) -> None:
        self.group.update_attributes({**extra, "progress": progress})  # one write: the commit is atomic

    @io_errors
    def write_group(self, path: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        """Replace the group at `path` (schema.layer_result) as a unit: see groups.write_unit."""
        write_unit(self.path, path, arrays, attrs)

    def write_result(self, layer: str, name: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        """A later pass's result `name` on `layer` (importance, traces), replacing the earlier one whole."""
        self.write_group(schema.layer_result(layer, name), arrays, attrs)

    def read_group(self, path: str, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """(arrays `keys`, attributes) of a group `write_group` wrote, or None when it is absent
        or not whole (see groups.read_unit)."""
        return read_unit(self.group, path, keys, self.path)

    # ---- final results -------------------------------------------------------------------
    @io_errors
    def write_results(self, parts: Iterable[Mapping[str, np.ndarray | Columns]], accuracy: float | None = None) -> None:
        """The final arrays of every layer (each statistic's results, a part at a time: a part's
        files are written while the next is computed) and of eval/; the overall accuracy when
        there are predictions. Their checksums are recorded for `finish`."""
        with BulkWriter(self.group) as writer:
            for arrays in parts:
                writer.put(arrays)
                for name, arr in arrays.items():
                    self._final_sums[name] = sums = arr.block_sums() if isinstance(arr, Columns) else block_sums(arr)
                    if isinstance(arr, np.ndarray) and arr.dtype.kind not in "OUT":  # as a checked read keeps it
                        self._blocks.put(verify.final_key(name, sums, None), arr, owned=True)
        if schema.PER_CLASS_ACCURACY in self._final_sums:
            self.group[schema.EVAL].update_attributes({schema.ACCURACY: accuracy})

    @io_errors
    def finish(self, n_images: int, extra: dict[str, Any]) -> None:
        """Mark the run complete and drop the checkpoint slots. The commit records checksums of
        the final arrays and of the per-image labels and predictions (as on disk, chunk by
        chunk), which `read` verifies: a chunk file lost or damaged later is an error, not
        fill values read as results."""
        created = dict(self.attrs.get(schema.CHECKSUMS, {}))  # by lay_out_run
        self.check_rows(created)  # what the sums below are taken from holds what was written
        sums = {**created, **self._final_sums}
        for name in (schema.LABELS, schema.PREDICTIONS, schema.LOGITS):
            if name in self.group and name not in created:
                sums[name] = stored_sums(self.group[name])
        self.commit({"images_done": n_images, "slot": self.progress.get("slot"), "complete": True,
                     "updated": time.time()}, {**extra, schema.CHECKSUMS: sums})
        self.record_attribute_sums()
        self.drop_checkpoints()

    @io_errors
    def record_attribute_sums(self) -> None:
        """The sums of a complete run's attributes (attr_sums.py), as its files read back: after the
        completing commit, and by `mine` run again on a complete run a kill left without them."""
        self.group.update_attributes({schema.ATTRIBUTE_SUMS: attr_sums.of_run(zarr.open_group(str(self.path), mode="r"))})

    @io_errors
    def drop_checkpoints(self) -> None:
        """Remove the checkpoint slots of a complete run (ours; by path, so that one a kill left
        half removed goes too): finish does it after the commit, and a re-run of a complete
        run whose process died between the two does it then."""
        shutil.rmtree(self.path / schema.CHECKPOINT, ignore_errors=True)
