"""What this user may do with a run's files, said before the work: a run it may not read is
unreadable, not damaged (`run_unreadable`); a pass that stores its results in a run refuses one it
may not write before it computes (`check_run_writable`); a lock file another user made is still
a lock (`open_lock`). Root reads and writes anything, so only the file modes of other users (or of
root without CAP_DAC_OVERRIDE) reach here. No Zarr: paths and modes only."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from sketchmine.errors import RunUnreadable, SketchmineError, permission_denied


def run_unreadable(root: str | os.PathLike, exc: BaseException) -> RunUnreadable | None:
    """The error for a file or folder of the run at `root` that this user may not read, when
    `exc` was caused by its permissions (None for anything else: damage, a missing file)."""
    denied = permission_denied(exc)
    if denied is None:
        return None
    where = denied.filename or root
    return RunUnreadable(f"cannot read run {root}: {where} is not readable by this user ({denied.strerror or denied}); "
                         f"the run is not damaged: make its files readable (as their owner: chmod -R u+rX {root}, or "
                         "g+rX for a group) and run the command again")


def check_run_writable(run: str | os.PathLike, why: str) -> None:
    """Refuse, before any work, a run with a folder this user may not write (a run made read-only,
    one of another user's): Zarr writes each file aside and renames it into its folder, so a
    folder's mode decides, not its files'. `why`: what would write there ("importance stores its
    results in the run"). Folders only: a few per array, read without opening a file."""
    root = Path(run)

    def unlisted(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):  # a checkpoint slot another writer just replaced: not ours
            raise run_unreadable(root, exc) or exc

    for folder, _, _ in os.walk(root, onerror=unlisted):
        if not os.access(folder, os.W_OK | os.X_OK) and os.path.isdir(folder):
            if read_only_file_system(folder):  # a snapshot or a read-only mount: no chmod helps
                raise SketchmineError(f"cannot write to run {root}: it is on a read-only file system, and {why}; copy "
                                      "the run to a writable folder and run the command on the copy (nothing was changed)")
            shown = "its folder" if Path(folder) == root else f"its folder {folder}"
            raise SketchmineError(f"cannot write to run {root}: {shown} is not writable by this user, and {why}; "
                                  f"make the run writable (as its owner: chmod -R u+w {root}) and run the command "
                                  "again (nothing was changed)")


def read_only_file_system(path: str | os.PathLike) -> bool:
    """Whether `path` lies on a file system mounted read-only (os.access says "not writable" for it
    as for a folder's mode, but the advice to chmod would not help)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_lock(path: Path) -> int:
    """A descriptor of the lock file at `path`, created if missing. flock needs no write access,
    so a lock file this user may only read (another user's, created with their umask in a
    shared folder) is opened read-only rather than refused."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not os.path.lexists(path):
            raise
        return os.open(path, os.O_RDONLY)
