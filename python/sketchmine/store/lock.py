"""Who may write a run, and how a new run comes into being whole.

`RunLock` serialises writers (mine, visualize, importance) on one run; `stage` lays a new run
out in a marked sibling folder and renames it into place, so a run folder is either absent or
whole. No Zarr here: the layout itself is `store.RunStore.create`'s.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sketchmine.errors import SketchmineError, SketchmineFailure, machine_fix
from sketchmine.store.access import open_lock
from sketchmine.store.attrs import root_json
from sketchmine.store.schema import VERSION_ATTR

CREATING = "creating"
MARKER = ".sketchmine-creating"
"""File inside a staging folder: it is ours, and the next creation may remove it."""
WRITE_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")
"""Zarr writes each file of a run as `<name>.<uuid hex>.partial` and renames it into place."""

_HELD: set[int] = set()
"""Descriptors of the locks this process holds. A flock belongs to the open file, which a fork
shares: a DataLoader worker would keep a killed run locked until it noticed its parent's death
(≈ 5 s), and the re-run the docs promise would be refused. Children close them at once."""


@dataclass
class _Shared:
    """This process's shared hold on one run: one open file for all its sharers (flock conflicts
    between two open files of one process as between two processes, so two passes of a notebook
    each with its own would refuse or wait on each other), how many share it, and who of them
    holds it whole for a write now."""

    fd: int
    count: int = 1
    writing: threading.Lock = field(default_factory=threading.Lock)


_SHARED: dict[Path, _Shared] = {}
_SHARED_LOCK = threading.Lock()


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
    _SHARED.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """Exclusive writer lock on a run: flock on `.<name>.lock`, a file beside the run folder,
    released by the OS if the holder dies.

    Beside, not inside: the lock is taken before the run folder exists, so it covers the run's
    creation (two `mine` started at once on a fresh --out: one creates, the other is refused)
    as well as every later write. The file stays (removing a lock file races with a process
    about to lock it). Where the folder above an existing run is not writable, the lock is
    `run/.lock` inside it, as sketchmine before 14 did (a run cannot be created there anyway)."""

    def __init__(self, path: str | os.PathLike) -> None:
        run = resolved(path, "run")
        self.run = run
        self.path = run.parent / f".{run.name}.lock"
        if not os.access(run.parent, os.W_OK) and run.is_dir():
            self.path = run / ".lock"
        self._fd: int | None = None
        self._shared: _Shared | None = None

    def acquire(self) -> None:
        """Take the lock, then remove what killed writes left in the run (`remove_write_temps`)."""
        self._flock()
        if is_run(self.run):  # no other writer lives now: what killed writes left is stale
            remove_write_temps(self.run)
            (self.run / MARKER).unlink(missing_ok=True)  # `stage`'s, left by a kill right after its rename

    def _flock(self, mode: int = fcntl.LOCK_EX) -> None:
        if self.path in _SHARED:
            raise SketchmineError(f"{self.run} is held by an importance or effects pass of this process that has not "
                                  "finished; iterate it to its end (or delete it) first")
        if (blocked := file_above(self.run)) is not None:
            raise SketchmineError(f"cannot write the run to {self.run}: {blocked} is a file, not a folder; "
                                  "choose another --out")
        try:
            self.run.parent.mkdir(parents=True, exist_ok=True)
            self._fd = open_lock(self.path)  # another user's lock file: read-only is enough for flock
        except OSError as exc:
            fix = "make it readable" if os.path.lexists(self.path) else f"make {self.path.parent} writable"
            raise SketchmineFailure(f"cannot lock {self.run} for writing ({self.path}: {exc.strerror or exc}); {fix}") from None
        try:
            fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            if not isinstance(exc, BlockingIOError):  # NFS locks a read-only descriptor of another's file: EBADF
                raise SketchmineFailure(f"cannot lock {self.run} ({self.path}: {exc.strerror or exc}); make the lock "
                                        "file writable by this user, or remove it while no one uses the run") from None
            raise SketchmineError(f"{self.run} is being written by another process; wait for it or stop it first") from None
        _HELD.add(self._fd)

    def check_shareable(self) -> None:
        """Refuse now, as `share` would, if a writer holds the run whole (mine, visualize): a pass
        that computes for minutes before it writes (importance, effects) checks before it loads
        the model rather than be refused after its work."""
        self.share().release()

    def share(self) -> RunLock:
        """Hold the run shared while a pass computes for minutes before it writes (importance,
        effects): a writer that holds the run whole (mine, visualize) is refused meanwhile, as it
        would refuse the pass, instead of taking the run and the pass's work being refused at its
        end; passes that share it may run side by side, in one process or several. Each write
        goes through `exclusive`."""
        with _SHARED_LOCK:
            held = _SHARED.get(self.path)
            if held is None:
                self._flock(fcntl.LOCK_SH)
                assert self._fd is not None
                held = _SHARED[self.path] = _Shared(self._fd)
                self._fd = None
            else:
                held.count += 1
            self._shared = held
        return self

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The shared hold made whole for one write, then shared again. Another sharer's write,
        or the sharer itself, may hold the run a while: this waits (Ctrl-C stops it) rather than
        lose the work already done, and says so."""
        held = self._shared
        assert held is not None, "exclusive() needs share() first"
        with held.writing:  # this process's sharers write one at a time, through their one open file
            try:
                fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logging.getLogger("sketchmine").info(f"waiting for another process that holds {self.run} to store "
                                                     "this pass's results")
                fcntl.flock(held.fd, fcntl.LOCK_EX)
            try:
                remove_write_temps(self.run)  # held whole: what killed writes left is stale
                yield
            finally:
                fcntl.flock(held.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._shared is not None:
            with _SHARED_LOCK:
                held, self._shared = self._shared, None
                held.count -= 1
                if held.count == 0:
                    del _SHARED[self.path]
                    self._fd = held.fd
        if self._fd is not None:
            _HELD.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def staging(path: Path) -> Path:
    """The sibling folder a new run is laid out in before it is renamed into place."""
    return path.parent / f".{path.name}.{CREATING}-{os.getpid()}"


def remove_stale_staging(path: Path) -> list[Path]:
    """Remove the staging folders of creations of `path` that died (the caller holds the run's
    lock, so no live process is creating it): only folders named as `staging` names them that
    carry our marker file, are still empty, or name a process that no longer lives and hold
    nothing but Zarr's metadata files (a Ctrl-C during creation can leave Zarr's last zarr.json
    there, unmarked, after `stage` removed the rest; anything else may be a user's). Returns
    what was removed."""
    removed = []
    for q in path.parent.glob(f".{path.name}.{CREATING}-*"):
        if q.is_dir() and not q.is_symlink() and ((q / MARKER).is_file() or not any(q.iterdir())
                                                  or (_dead(q) and _only_zarr_metadata(q))):
            shutil.rmtree(q)
            removed.append(q)
    return removed


def _only_zarr_metadata(folder: Path) -> bool:
    """True when every file under `folder` is a zarr.json and nothing is a link."""
    for root, dirs, files in os.walk(folder):
        if any(Path(root, d).is_symlink() for d in dirs) or any(f != "zarr.json" or Path(root, f).is_symlink()
                                                                for f in files):
            return False
    return True


def _dead(folder: Path) -> bool:
    """True when `folder` is named by `staging` for a process that no longer lives, or for this
    one (which holds the run's lock and is not creating it now)."""
    pid = folder.name.rpartition(f".{CREATING}-")[2]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # alive as another user's process, or not a PID at all
        return False
    return False


def settle_zarr_writes(timeout: float = 10.0) -> None:
    """Wait for Zarr's writes still running on its event loop (a Ctrl-C or a failed write stops
    the caller, not the other chunk writes of the same call), so that a folder removed after a
    failure is not written into again. No Zarr import: nothing to wait for if it is not loaded."""
    sync = sys.modules.get("zarr.core.sync")
    loop = (getattr(sync, "loop", None) or [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def drain() -> None:
        me = asyncio.current_task()
        for _ in range(100):
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=timeout)
    except BaseException:  # noqa: BLE001 - best effort: the caller is already failing
        pass


def check_writable(path: Path) -> None:
    """Refuse before anything is written when the nearest existing folder is read-only."""
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise SketchmineError(f"cannot write the run to {path}: {parent} is not writable")


def stage(path: Path, lay_out: Callable[[Path], None]) -> None:
    """Create a run at `path` atomically: `lay_out(folder)` writes it into a marked sibling
    folder, which is renamed into place when whole. `path` is either absent (or the empty
    folder it was) or a whole new run; a creation that died (disk full, killed) leaves only
    the marked folder, which the next creation removes. The caller holds the run's RunLock."""
    tmp = staging(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(path)
        tmp.mkdir()
        (tmp / MARKER).write_bytes(f"a sketchmine run being created at {path.name} by process {os.getpid()}; the next "
            "`sketchmine mine` on it removes this folder if that process died\n".encode("utf-8", "surrogateescape"))
        lay_out(tmp)
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_dir() else None
        os.rename(tmp, path)  # over an empty folder (checked by the caller) in one step: it is never gone
        if mode is not None:  # the user's folder keeps its permissions (a private one stays private)
            os.chmod(path, mode)
        (path / MARKER).unlink()  # a kill before this leaves it in the run: the next RunLock removes it
    except OSError as exc:
        _remove_staging(tmp)
        raise SketchmineFailure(f"cannot write the run to {path}: {exc.strerror or exc}; {machine_fix(exc) or 'fix that'}"
                                " and re-run the same command") from None  # nothing is left of it: it starts again
    except BaseException:
        _remove_staging(tmp)
        raise


def _remove_staging(tmp: Path) -> None:
    """Remove this process's staging folder after a failed creation, once Zarr's writes into it
    have stopped (else they recreate part of it, unmarked, after the removal)."""
    if tmp.exists() and (tmp / MARKER).is_file():
        settle_zarr_writes()
        shutil.rmtree(tmp, ignore_errors=True)  # what a write outliving the wait leaves: `remove_stale_staging`'s


def remove_write_temps(run: Path) -> list[Path]:
    """Remove the temporary files of writes into `run` that a kill cut short (a SIGKILL between
    Zarr's write and its rename leaves `zarr.<uuid>.partial` beside the file it was replacing).
    They are this run's own, nothing reads them, and the caller holds the run's lock (taking
    it calls this), so no live write owns one. Returns what was removed."""
    removed = []
    for folder, _, files in os.walk(run):
        for name in files:
            if WRITE_TEMP.search(name):
                (Path(folder) / name).unlink(missing_ok=True)
                removed.append(Path(folder) / name)
    return removed


def file_above(path: str | os.PathLike) -> Path | None:
    """The nearest path above `path` that exists and is not a folder (a file): no folder can be
    made there, and a write would fail only after the work that filled it (exit 1, not a refusal)."""
    return next((p for p in Path(path).absolute().parents if p.exists() and not p.is_dir()), None)


def enclosing_run(path: str | os.PathLike, itself: bool = True) -> Path | None:
    """The sketchmine run folder at `path` (when `itself`) or above it, else None: what is written
    there becomes part of that run (its readers list it), so every writer outside the run's own
    files refuses such a place."""
    p = resolved(path)
    return next((q for q in ((p, *p.parents) if itself else p.parents) if is_run(q)), None)


def resolved(path: str | os.PathLike, what: str = "path") -> Path:
    """`path` made absolute with its symbolic links followed (`Path.resolve`), or a one-line
    SketchmineError naming it (`what`: how the message calls it, "out", "report folder") when
    following them leads back to a link already followed (a loop), rather than Python's
    `RuntimeError: Symlink loop`. Nothing is created."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise
        raise SketchmineError(f"{what} {path} is or goes through a symbolic link loop (its links lead back to "
                              "themselves); fix or remove the link, or choose another path") from None


def refuse_dangling_links(given: Path, what: str, option: str) -> None:
    """A one-line SketchmineError when `given` or a folder above it is a symbolic link whose target
    does not exist: following it would create folders where it points (perhaps an unmounted disk's
    mount point). `what`: how the message names the path ("out"), `option`: what to choose instead."""
    parts = given.absolute().parts
    for i in range(1, len(parts) + 1):
        q = Path(*parts[:i])
        if not os.path.lexists(q):
            return
        if q.is_symlink() and not q.exists():
            where = f"{what} {given} is" if q == given.absolute() else f"{what} {given}: its folder {q} is"
            raise SketchmineError(f"{where} a symbolic link to {os.readlink(q)}, which does not exist (nothing was "
                                  f"created); create the folder it points to, or choose another {option}")


def out_path(out: str | os.PathLike) -> Path:
    """`mine --out` as the path the run is written to, or a one-line SketchmineError before
    anything is created: a symbolic link loop; a symbolic link (the run folder, or a folder
    above it) whose target does not exist (following it would create folders where it points,
    perhaps an unmounted disk's mount point); a filesystem root; the current folder, empty
    (a new run is renamed into place, which would leave the shell, and this process, in a
    removed folder). A name without a folder name of its own (".", "..") and a symbolic link
    to an existing folder are resolved, so that the run's lock, its staging folder and the
    run itself are all beside the real folder; any other path is returned as given."""
    given = Path(out)
    real = resolved(given, "out")
    refuse_dangling_links(given, "out", "--out")
    if real == Path(real.anchor):
        raise SketchmineError(f"out {given} is a filesystem root; give the run folder's own name (--out DIR/run.zarr)")
    try:
        here = Path.cwd().resolve()
    except OSError:
        here = None
    if real == here and not is_run(real) and not any(real.iterdir()):
        raise SketchmineError(f"out {given} is the current folder: a new run is laid out beside it and renamed into "
                              f"place, which would leave this shell in a removed folder; from the folder above, "
                              f"give --out {real.name}")
    return real if given.name in ("", "..") or given.is_symlink() else given


def runs_in(folder: Path, shown: int = 5) -> str:
    """"; it holds the runs a.zarr, b.zarr" for a folder of runs given where one run was meant, else ""."""
    try:
        runs = sorted(p.name for p in folder.iterdir() if p.is_dir() and is_run(p))
    except OSError:
        return ""
    if not runs:
        return ""
    return f"; it holds the run{'s' if len(runs) > 1 else ''} " + ", ".join(runs[:shown]) + (", …" if len(runs) > shown else "")


def is_run(path: Path) -> bool:
    """True when `path` is a directory holding a sketchmine run: its root zarr.json is a group's
    and carries the schema version (read as JSON: no Zarr needed to tell)."""
    meta = root_json(path)
    try:
        return meta.get("node_type") == "group" and VERSION_ATTR in meta.get("attributes", {})
    except TypeError:  # attributes that are no mapping
        return False
