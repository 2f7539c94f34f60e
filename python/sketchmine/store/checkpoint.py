"""The mining checkpoint: two slots under _checkpoint/, each holding every accumulator's state
(`<accumulator>/<array>`) with checksums of its arrays and of the rows written since the
previous slot. A flush writes the free slot, then commits by rewriting the root attributes
(atomic), so a crash at any moment leaves the committed slot intact; a slot that fails its
checksums (a power cut loses the newest writes) falls back to the other one.

A mixin of RunStore (it uses the store's group, path and row log), kept apart because the
checkpoint's protocol is its own: writers flush and resume, readers pin the committed slot.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr

from sketchmine.errors import SketchmineError
from sketchmine.store import schema
from sketchmine.store.checksums import digest, matches
from sketchmine.store.commits import commit_key
from sketchmine.store.io import io_errors, put_all
from sketchmine.store.verify import damaged


def resumed_stretches(record: list[list[Any]] | None, first: Any, done: int, value: Any
                      ) -> tuple[list[list[Any]] | None, Any]:
    """A pass resumed at item `done` with a setting `value` it began with as `first`: (the record of
    its stretches, [first item, value] each, or None while it has had one value throughout; the
    value so far where it differs from `value`, else None). Stretches from `done` on go: their
    items are made again. Used for a run's batch sizes and devices and a layer's optimisation."""
    stretches = [list(s) for s in record or [[0, first]] if s[0] < done]
    was = stretches[-1][1] if stretches else None
    if was != value:
        stretches.append([done, value])
    return (None if stretches == [[0, first]] else stretches), (None if was in (None, value) else was)


def _drop_if_damaged(meta: Any) -> None:
    """Remove the checkpoint group's own metadata where it does not parse (a power cut's): it is
    mining's, holds no attributes, and Zarr's require_group would fail parsing it (a
    JSONDecodeError traceback at the first flush of a resume); the group is then made again."""
    try:
        json.loads(meta.read_bytes())
    except ValueError:
        meta.unlink()
    except FileNotFoundError:
        pass


class Checkpoints:
    """Checkpoint slots of a RunStore (see the module docstring)."""

    group: zarr.Group
    path: Any
    _written: list[list[Any]]
    _before: list[list[Any]] | None
    _intact: tuple[str | None, int, dict[str, Any]] | None
    _override: dict[str, Any]
    _reading: int
    progress_on_disk: Callable[[], dict[str, Any]]
    cached_progress: Callable[[], dict[str, Any]]
    per_commit: Callable[[str, str, Callable[[], Any]], Any]
    verify_array: Callable[[str, dict[str, Any]], int]

    @io_errors
    def write_checkpoint(self, states: dict[str, dict[str, np.ndarray]], images_done: int,
                         extra: dict[str, Any]) -> None:
        """Write every accumulator's state into the free slot, then commit (atomic attribute
        rewrite). `states`: accumulator key -> its flat arrays, stored as `<key>/<array>`; the
        store does not know what they are (accumulators.py)."""
        prog = self.progress
        slot = "slot1" if prog.get("slot") == "slot0" else "slot0"
        # the free slot is ours and never committed: removed by path, as a power cut may have left
        # its metadata damaged (zarr would fail to parse it before deleting it)
        shutil.rmtree(self.path / schema.CHECKPOINT / slot, ignore_errors=True)
        _drop_if_damaged(self.path / schema.CHECKPOINT / "zarr.json")
        ck = self.group.require_group(schema.CHECKPOINT)
        sg = ck.create_group(slot)
        packed = {f"{key}/{name}": np.asarray(arr) for key, state in states.items() for name, arr in state.items()}
        put_all(sg, packed)
        # what resume needs to check this slot and to restart from it alone: the checksums of
        # its arrays and of the rows written since the previous slot, and the committed extras
        before = self.rows_before()  # and of every older slot's rows, which `check_rows` reads at the end
        sg.update_attributes({"accumulators": {key: list(state) for key, state in states.items()},
                              "images_done": images_done, "extra": extra, "rows": self._written,
                              "rows_before": before, "checksums": {key: digest(arr) for key, arr in packed.items()}})
        self.commit({"images_done": images_done, "slot": slot, "complete": False,
                     "updated": time.time()}, extra)
        self._before = before + self._written
        self._written, self._intact, self._override = [], None, {}

    def rows_before(self) -> list[list[Any]]:
        """[array, start, stop, digest] of the rows written with the newest intact slot and every
        slot before it (runs from before this record: those of the newest slot only)."""
        if self._before is None:
            slot = self.checkpoint()[0]
            meta = dict(self.group[f"{schema.CHECKPOINT}/{slot}"].attrs) if slot is not None else {}
            self._before = [*meta.get("rows_before", []), *meta.get("rows", [])]
        return list(self._before)

    def check_rows(self, created: dict[str, Any]) -> None:
        """Before the run is marked complete: the arrays its creation recorded checksums of
        (`created`: paths, class names, labels known then) and every range of per-image rows
        any session wrote still hold what was written. Why: the final checksums of labels,
        predictions and logits are taken from the files, so a chunk file deleted (or changed)
        between two sessions was read as fill values, the accuracy computed from them, and
        `verify` passed the run."""
        for name, entry in created.items():
            self.verify_array(name, entry)
        for name, start, stop, want in self.rows_before() + self._written:
            if not matches(np.asarray(self.group[name][start:stop]), want):
                raise damaged(self.path, name, f"rows {start} to {stop - 1} no longer hold what an earlier session of "
                                               "`mine` wrote there (a chunk file deleted or changed since)")

    def extras(self, bad: list[dict[str, Any]], converted: dict[str, int]) -> dict[str, Any]:
        """The run's record a commit writes beside its progress: unreadable images (`bad`), per-mode
        conversion counts (committed plus `converted` since), a resumed run's batch sizes and devices."""
        attrs = self.attrs
        previous = attrs.get("converted_images", {})
        return {"bad_images": bad, "converted_images": {m: previous.get(m, 0) + converted.get(m, 0)
                                                        for m in {*previous, *converted}},
                **{key: attrs[key] for key in schema.STRETCHES.values() if attrs.get(key)}}

    def resume_batch_size(self, batch_size: int) -> int | None:
        """Record that a partial run goes on from its committed image at `batch_size` (`batch_sizes`:
        [first image, batch size] for each stretch mined at one size). Returns the size the run was
        mined at so far where it differs (CPU matrix products round the last bit by batch size: a
        resume at another size is allowed, and said), else None."""
        return self._resume_stretch("batch_size", batch_size)

    def resume_device(self, device: str) -> str | None:
        """Record that a partial run goes on from its committed image on a `device` ("cpu", "cuda";
        `devices`: [first image, device] for each stretch). Returns the device the run was mined on
        so far where it differs (devices round otherwise: allowed, and said), else None."""
        return self._resume_stretch("device", device)

    def _resume_stretch(self, key: str, value: Any) -> Any:
        """The stretches of root attribute `key`'s record (schema.STRETCHES) with `value` from the committed
        image on, kept with the next commit's extras (images past the commit are mined again, so
        their stretches go); the value so far where it differs from `value`, else None. A run that
        did not record `key` when it was created records nothing."""
        attrs, record = self.attrs, schema.STRETCHES[key]
        first = attrs.get(key)
        if first is None:
            return None
        stretches, was = resumed_stretches(attrs.get(record), first, int(self.progress.get("images_done", 0)), value)
        if stretches is not None:
            self._override[record] = stretches
        return was

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
            sums = meta["checksums"]
            if any(not matches(np.asarray(sg[key][...]), want) for key, want in sums.items()):
                return None
            for name, start, stop, want in meta.get("rows", []):
                if not matches(np.asarray(self.group[name][start:stop]), want):
                    return None
            return meta
        except Exception:  # unreadable, truncated or missing files
            return None

    def _pinned(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """For a reader (read-only handle): the committed slot's attributes and the arrays of
        accumulator `key` (by their own names), copies of `pin_checkpoint`'s. Inside a committed
        read, the slot of the commit the read answers from (the handle's); else the newest."""
        pinned = self.pin_checkpoint(self.cached_progress() if self._reading else None)
        if pinned is None:
            return None
        meta, states = pinned
        return meta, {name: arr.copy() for name, arr in states.get(key, {}).items()}

    def pin_checkpoint(self, progress: dict[str, Any] | None = None
                       ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]] | None:
        """The slot commit `progress` names (None: the commit on disk now), its attributes and
        every accumulator's arrays (accumulator -> {array: values}), read once per commit
        (`per_commit`) and checked against the slot's own checksums and the commit's images_done.

        A writer rewrites a slot only after committing the other one, so arrays that match the
        checksums of a slot whose images_done is the commit's are that commit's state, whatever
        the writer did meanwhile; and once they are read, the commit's answer needs no more of
        its slot: a read that takes longer than the writer's next commits still answers from
        its own (RunStore.committed pins the commit's slot before the read, for that). None
        when the slot cannot be pinned although the run did not move on (damaged: the caller's
        `checkpoint` path decides); a SketchmineError when the writer moved on past the commit
        (RunStore.committed retries)."""
        progress = self.progress_on_disk() if progress is None else progress
        if progress.get("slot") is None:
            return None
        return self.per_commit(commit_key(progress), schema.CHECKPOINT, lambda: self._pin_slot(progress))

    def _pin_slot(self, progress: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]] | None:
        """`pin_checkpoint`'s read of the slot `progress` commits."""
        try:
            sg = zarr.open_group(str(self.path / schema.CHECKPOINT / progress["slot"]), mode="r")
            meta = dict(sg.attrs)
            sums = meta["checksums"]
            if meta.get("images_done") != progress.get("images_done"):
                raise ValueError("the slot is not the committed one")
            states = {key: {name: np.asarray(sg[f"{key}/{name}"][...]) for name in names}
                      for key, names in (meta.get("accumulators") or {}).items()}
            if any(not matches(arr, sums.get(f"{key}/{name}", ""))
                   for key, state in states.items() for name, arr in state.items()):
                raise ValueError("the slot's arrays do not match its checksums")
            return meta, states
        except Exception as exc:
            if self.progress_on_disk() != progress:
                raise SketchmineError(f"{self.path}: the checkpoint moved on while it was read ({exc})") from None
            return None

    def read_checkpoint_state(self, key: str) -> dict[str, np.ndarray] | None:
        """The state accumulator `key` saved in the newest intact checkpoint (see `checkpoint`;
        a reader's is pinned to the committed one), or None when there is no checkpoint or it
        holds no state under `key`. (Unfinished runs of an older schema never get here:
        RunStore.open refuses them.)"""
        pinned = self._pinned(key) if self.group.read_only else None
        if pinned is not None:
            meta, flat = pinned
            return flat if key in meta["accumulators"] else None
        slot = self.checkpoint()[0]
        if slot is None:
            return None
        try:
            sg = self.group[f"{schema.CHECKPOINT}/{slot}"]
            meta = dict(sg.attrs)
            names = meta["accumulators"].get(key)
            return None if names is None else {name: np.asarray(sg[f"{key}/{name}"][...]) for name in names}
        except SketchmineError:
            raise
        except Exception as exc:  # vanished or rewritten meanwhile (a reader's RunStore.committed retries)
            raise SketchmineError(f"{self.path}: the committed checkpoint ({slot}) cannot be read "
                                  f"({type(exc).__name__}: {exc}); if it persists, mine it again with a new --out"
                                  ) from None
