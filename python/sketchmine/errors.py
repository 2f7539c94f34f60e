"""The one exception type users see: a message that says what was expected, what was
found and what to do. The CLI prints it as one line, without a traceback."""
from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class SketchmineError(Exception):
    """A user-facing error: sketchmine refused the input as given (a bad dataset or option, an
    unknown layer, a run it cannot resume). The CLI exits with `exit_code` (3)."""

    exit_code = 3


class RunDamaged(SketchmineError):
    """A run's files are damaged (a chunk file missing or corrupt, metadata that does not parse,
    attributes edited into nonsense): never read as a result that is merely absent, so readers
    that fall back when a result is missing let it through."""


class SketchmineFailure(SketchmineError):
    """A user-facing error where the input was fine but running failed (the disk filled, a write
    or a compiler failed): re-running after fixing the machine goes on. CLI exit code 1."""

    exit_code = 1


class RunUnreadable(RunDamaged, SketchmineFailure):
    """A run's file or folder that this user may not read (its permissions): not damage, so the
    message says what to make readable instead of "restore from a copy", but, like damage, never
    read as a result that is merely absent. CLI exit code 1 (the machine's settings, not the input)."""


def permission_denied(exc: BaseException) -> OSError | None:
    """The PermissionError behind `exc` (itself, or what it was raised from), else None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, PermissionError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1  # type: ignore[assignment]
    return None


class SaidOnRankZero(SketchmineError):
    """An error every rank of a process group stops with: one they all found, or rank 0's, which
    the others raise as "rank 0 stopped: ..." with its exit code. The command line says it on rank
    0 only (torchrun gathers every rank's stderr into one terminal); the API raises it on every rank."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code


MACHINE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
"""An OSError with these says the machine ran out (open files, memory), not that a file is bad."""


def out_of_resources(exc: BaseException) -> bool:
    """Whether `exc` says the machine ran out of memory, threads or open files: never a sign that
    what was being read is damaged or unreadable (under `ulimit -v` a run read as "damaged:
    restore it from a copy" because Zarr could not start a thread)."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in MACHINE_ERRNOS
    text = str(exc)  # a thread not started; torch's allocators and sketchmine's own (csrc/cpu/block_cache.cpp)
    return isinstance(exc, RuntimeError) and any(s in text for s in ("can't start new thread", "out of memory",
                                                                     "can't allocate memory", "not enough memory"))


def machine_fix(exc: OSError) -> str:
    """What to do about an OSError that stopped a read or a write, by its errno ("" when the
    errno names no remedy). Why: a full disk, a process's file-size or open-file limit and a
    read-only file system need different fixes, and "make room" sent the user of a `ulimit -f`
    or `ulimit -n` to free a disk that had room."""
    import resource

    size, files = resource.getrlimit(resource.RLIMIT_FSIZE)[0], resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fixes = {
        errno.ENOSPC: "the disk is full: make room",
        errno.EDQUOT: "the disk quota is used up: make room",
        errno.EFBIG: ("a file outgrew the largest its file system holds: write to another one"
                      if size == resource.RLIM_INFINITY else
                      f"a file outgrew the {size:,} bytes this process may write to one (ulimit -f): raise the limit"),
        errno.EMFILE: f"this process may open {files:,} files at once (ulimit -n): raise the limit, or use fewer --workers",
        errno.ENFILE: "the system's table of open files is full: close other programs' files",
        errno.ENOMEM: "the machine is out of memory: free some",
        errno.EROFS: "the file system is read-only: mount it writable, or work on a copy elsewhere",
        errno.EACCES: "make it writable by this user",
        errno.EPERM: "make it writable by this user",
    }
    return fixes.get(exc.errno or 0, "")


def unless_damaged(exc: SketchmineError) -> None:
    """Re-raise `exc` when it says the run is damaged: for a reader that falls back (NaN, a
    missing section) when a result is absent, which damage must not pass for."""
    if isinstance(exc, RunDamaged):
        raise exc


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, for a one-line error (a library's message may run to a
    traceback of its own); the exception type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices most similar to `name`, for 'did you mean' hints."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)


def whole_number(value: object, name: str, low: int | None = 1, none: str | None = None) -> int:
    """`value` as an int when it is a whole number (a Python or numpy integer, not a bool) of at
    least `low` (None: any); else a SketchmineError naming the parameter (a float or bool would
    otherwise be truncated, or fail deep inside torch). `none`: what None means where the
    parameter takes it (said in the refusal; `optional_whole_number` passes None through)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        raise SketchmineError(f"{name} must be a whole number" + (f" of at least {low}" if low is not None else "")
                              + (f" (or None {none})" if none else "") + f", got {value!r}")
    return int(value)


def flag(value: object, name: str, none: str | None = None) -> bool | None:
    """`value` as a bool when it is one (numpy's too); None where `none` says what None means;
    else a SketchmineError naming the parameter (None, 0 or "no" would otherwise be taken for
    False, and 1 or "yes" for True, without a word)."""
    import numpy as np

    if value is None and none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise SketchmineError(f"{name} must be True or False" + (f" (or None {none})" if none else "") + f", got {value!r}")


def optional_whole_number(value: object, name: str, none: str, low: int = 1) -> int | None:
    """None, or `whole_number(value, name, low)`; `none` says what None means."""
    return None if value is None else whole_number(value, name, low, none)


def optional_positive(value: object, name: str, none: str) -> float | None:
    """None, or `value` as a float when it is a real number above 0 (a NaN cap compares False with
    every size, so it capped nothing; a string failed as a TypeError deep in the pass)."""
    import numbers

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise SketchmineError(f"{name} must be a number above 0 (or None {none}), got {value!r}")
    return float(value)


def layer_list(layers: object, verb: str, none: str) -> list[str] | None:
    """`layers=` of a pass as a list of names, read once (a generator or other one-shot iterable
    checked for emptiness with list() would be used up, and the pass would do nothing); one name
    is that layer, None stays None (`none` says what it means); an empty list or an item that is
    no string is refused, naming the parameter."""
    if layers is None:
        return None
    try:
        names = [layers] if isinstance(layers, str) else list(layers)  # type: ignore[call-overload]
    except TypeError:  # not iterable: 3, a module
        names = [layers]
    if not names:
        raise SketchmineError(f"layers=[] names no layer to {verb}; pass layer names, or None {none}")
    for bad in (n for n in names if not isinstance(n, str)):  # 0 and None among them
        raise SketchmineError(f"layers are named by strings (qualified module names such as 'features.0'), "
                              f"got {type(bad).__name__} {bad!r}")
    return [str(n) for n in names]  # numpy's str_ as str (stored as attributes)
