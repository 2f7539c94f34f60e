"""Reading a run another process may be mining: every answer from one committed state.

A writer commits by rewriting the root attributes (atomically); a reader's handle caches them.
`committed` runs a read against one commit (the handle refreshed first where the writer moved
on, the commit's checkpoint read into memory before the read, so that a read longer than the
writer's next commits still answers from it; the read repeated where the writer committed
during it before it was pinned, patiently while the writer goes on), and a reader's handle between
reads follows the writer (`follow`), so `complete`, `images_done` and the layers it reports
are those of the commit its next answer comes from, not of the moment it was opened. Where
the run folder changed at all (a commit, or a run deleted and mined again at the handle's
path: its inode may be the old one's, its modification time is not), the handle opens it
afresh (`reopen`) rather than answer with an old run's attributes over a new run's arrays. A reader
that must answer from one run throughout (a report) holds it `pinned`: a run replaced meanwhile
is then refused, not followed.

A mixin of RunStore (its group, path and `refresh`), kept apart because the protocol is its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sketchmine.errors import RunDamaged, RunUnreadable, SketchmineError
from sketchmine.store.access import run_unreadable


class CommittedReads:
    """Committed reads of a RunStore (see the module docstring)."""

    path: Path
    refresh: Callable[[], None]  # RunStore's: the root attributes read again
    cached_progress: Callable[[], dict[str, Any]]  # RunStore's: the progress this handle holds
    reopen: Callable[[], None]  # RunStore's: the run at this path opened again, as `open` does
    group: Any  # RunStore's Zarr group: read-only for a reader's handle
    pin_checkpoint: Callable[[dict[str, Any]], Any]  # Checkpoints': a commit's slot read into memory
    _folder: tuple[int, int, int] | None = None  # the run folder as this handle opened it (`folder_identity`)
    _reading = 0  # > 0 inside `committed`: the handle holds still, nested reads join the outer one
    _pin: tuple[Any, ...] | None = None  # inside `pinned`: the run it answers from (`run_identity`)
    _kept: dict[str, dict[str, Any]] | None = None  # `per_commit`'s reads, by commit (`commit_key`)

    def committed(self, read: Callable[[], Any], tries: int = 10, patience: float = 5.0) -> Any:
        """`read()` against one committed state of a run another process may be mining.

        A writer only rewrites the checkpoint slot its last commit does not name, commits by
        rewriting the root attributes (atomically), and never rewrites per-image rows below a
        commit; a reader pins the slot of the commit this handle holds before the read (every
        accumulator's state, read and checked at once: `Checkpoints.pin_checkpoint`), so a read
        that takes longer than the writer's next commits still answers from its own. A read that
        fails while the committed progress changed is repeated against the newer commit (this
        store refreshed); an error during a read the writer did not disturb is the run's real
        error, said at once. A read within a read is part of it (the handle refreshes only
        between whole reads: one answer, one commit). While the writer keeps committing, it is
        tried again for `patience` seconds and at least `tries` times, then given up with a
        clear "retry". A complete run's read that fails with damage is repeated twice (a later
        pass rewrote what it read, or another run took its place at the path: then read) before
        the damage is said; a refusal (no such layer) is its answer at once."""
        if self._reading:
            return read()
        self._follow_folder()
        self._reading += 1
        try:
            return self._committed(read, tries, time.monotonic() + patience)
        finally:
            self._reading -= 1

    def _committed(self, read: Callable[[], Any], tries: int, deadline: float) -> Any:
        attempt = 0
        while True:
            before = self.progress_on_disk()
            if before != self.cached_progress():
                self.refresh()
            if before.get("complete"):  # final arrays, written before the commit and never again
                try:
                    return read()
                except Exception as exc:
                    # another run took its place during the read, or a later pass rewrote what it read
                    # (visualize --redo resets a layer's pictures): again; real damage fails each time.
                    # A refusal (no such layer, nothing visualized yet) is the answer: not repeated
                    refusal = isinstance(exc, SketchmineError) and not isinstance(exc, RunDamaged)
                    if refusal or attempt >= tries - 1 or not (self._follow_folder() or attempt < 2):
                        raise
                    time.sleep(0.05 * (attempt + 1))
                    attempt += 1
                    continue
            try:
                if self.group.read_only:  # the commit's state in memory first: the read needs no more of its slot
                    self.pin_checkpoint(self.cached_progress())
                return read()
            except Exception as exc:
                error = exc
            if self.progress_on_disk() == before:
                if isinstance(error, SketchmineError):
                    raise error
                if denied := run_unreadable(self.path, error):  # its permissions, not damage
                    raise denied from None
                raise RunDamaged(f"run {self.path} is damaged: {type(error).__name__}: {str(error)[:120]}; "
                                 "mine it again with a new --out") from error
            attempt += 1
            if attempt >= tries and time.monotonic() >= deadline:
                raise SketchmineError(f"run {self.path} is being written by another process, which committed newer "
                                      f"results during each of {attempt} attempts to read it; retry in a moment")
            time.sleep(min(0.005 * 2 ** attempt, 0.05))  # the writer commits again: read its newest commit

    def per_commit(self, commit: str, name: str, read: Callable[[], Any]) -> Any:
        """`read()` of `name` as kept for `commit` (`commit_key` of the progress it is read under),
        read once: a reader of a partial run (the report, a notebook's dashboard) asks for the same
        labels and checkpoint state dozens of times between two of the writer's commits, and a
        writer never rewrites what a commit names (its slot, the rows below it). The newest two commits are kept
        (the handle's and the one on disk, which differ only while it refreshes); a newer commit
        is read afresh. `read` must give what that commit holds; callers copy what they hand out.
        A None answer (a slot that cannot be pinned) is not kept: read again, it says so again."""
        kept = self._kept
        if kept is None or commit not in kept:
            kept = {key: kept[key] for key in list(kept or {})[-1:]}  # a new dict: readers of the old one go on
            kept[commit] = {}
            self._kept = kept
        held = kept[commit]
        if name in held:
            return held[name]
        value = read()
        if value is not None:
            held[name] = value
        return value

    def follow(self) -> None:
        """Between reads, take the writer's newest commit (a notebook's handle on a run being
        mined says "complete" once it is). A complete run's handle keeps its state: nothing
        commits after the last commit."""
        if self._reading:
            return
        if self._follow_folder():
            return
        known = self.cached_progress()
        if not known.get("complete") and self.progress_on_disk() != known:
            self.refresh()

    def _follow_folder(self) -> bool:
        """Open a reader's run afresh where its folder changed (True), or say it is gone; inside
        `pinned`, refuse another run in its place."""
        if not self.group.read_only or self._folder == folder_identity(self.path):
            return False
        self.check_pinned()
        self.reopen()  # "does not exist" where it is gone
        return True

    def run_identity(self) -> tuple[Any, ...] | None:
        """(device, inode, completion time) of the run at this path now (its folder's, and the
        time its last commit completed it; None while partial), None where it is gone."""
        folder = folder_identity(self.path)
        if folder is None:
            return None
        progress = self.progress_on_disk()
        return *folder[:2], progress.get("updated") if progress.get("complete") else None

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Reads inside answer from the run at this path as it is at the start (followed while it is
        mined), or refuse, on the read or at the end: a run deleted and mined again, or replaced,
        meanwhile is not followed."""
        if self._pin is not None:  # within an outer pin: one run throughout the outer one
            yield
            self.check_pinned()
            return
        self._pin = self.run_identity()
        try:
            yield
            self.check_pinned()
        finally:
            self._pin = None

    def check_pinned(self) -> None:
        """Inside `pinned`, refuse where the run at this path is not the one the pin began with."""
        pin = self._pin
        if pin is None:
            return
        try:
            now = self.run_identity()
        except RunUnreadable:  # this user may not read them now: said so, not "deleted"
            raise
        except RunDamaged:  # its root attributes gone: the run is being deleted
            now = None
        if now is None or now[:2] != pin[:2] or (pin[2] is not None and now[2] != pin[2]):
            raise SketchmineError(f"run {self.path} changed while it was read (deleted, mined again at its path, "
                                  "or replaced); read it again")

    def progress_on_disk(self) -> dict[str, Any]:
        """The committed progress as on disk now (zarr writes zarr.json atomically)."""
        try:
            return dict(json.loads((self.path / "zarr.json").read_bytes())["attributes"]["progress"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if denied := run_unreadable(self.path, exc):  # this user may not read it: not damage
                raise denied from None
            raise RunDamaged(f"run {self.path} is damaged: its root attributes cannot be read "
                             f"({type(exc).__name__}: {exc})") from None


def commit_key(progress: dict[str, Any]) -> str:
    """A commit's key among a run's commits: its progress (images done, slot, time of the commit)."""
    return json.dumps(progress, sort_keys=True, default=str)


def folder_identity(path: Path) -> tuple[int, int, int] | None:
    """The run folder's (device, inode, modification time) now, None where it is gone. A run
    mined again at the same path is a new folder (`lock.stage` renames it into place), which may
    reuse the deleted one's inode; a commit renames the root zarr.json into place. The time is
    the kernel's coarse clock, so two commits may share it: `follow` compares the progress too."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_mtime_ns
