"""Ctrl-C held back while code that must not be interrupted half-way runs, then answered.

A KeyboardInterrupt raised inside a C extension's initialisation leaves it half-loaded (the
next import failed with an ImportError or ValueError traceback, or a segmentation fault: 9 of
20 Ctrl-Cs in a command's first 3 s did); one raised in a fork handler (a DataLoader starting
its worker processes) is dropped ("Exception ignored"), and one in logging's left its lock
taken, so the interrupted `mine` waited forever, deaf to further Ctrl-Cs. A Ctrl-C ignored by
whoever started the process (`cmd &` in a script) stays ignored. A command line's SIGTERM and
SIGHUP (a `kill`, a closed terminal, a scheduler's stop) are answered as Ctrl-C is: they ended
`mine` by the signal, nothing said, in the middle of whatever it wrote.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType, ModuleType
from typing import TypeVar

T = TypeVar("T")

ENDING = (signal.SIGTERM, signal.SIGHUP)
"""Signals that ask a command line to stop, answered as Ctrl-C where nobody set them otherwise."""
_ANSWERER: list[int] = []
"""The process that answers them (a forked child, not held, dies by them as before)."""
_CAME: list[int] = []
"""The last ending signal answered, so the one line and the exit code can name it."""
_FOR_GOOD: list[bool] = []
"""Set while `ending_as_ctrl_c(for_good=True)` runs: this process is a command line (`ended` acts)."""
_ENDED: list[bool] = []
"""Set by `ended`: the handlers `held` replaced are not put back."""


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGTERM / SIGHUP: what Ctrl-C does now (held: noted; else a KeyboardInterrupt), or a
    KeyboardInterrupt where Ctrl-C is ignored (`cmd &`), which a termination must still end."""
    if os.getpid() not in _ANSWERER:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _CAME[:] = [signum]
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


@contextlib.contextmanager
def ending_as_ctrl_c(for_good: bool = False) -> Iterator[None]:
    """SIGTERM and SIGHUP answered as Ctrl-C while the block runs (a command line's command): the
    same one line, an exit code of 128 + the signal, a run that resumes. Only a signal left at the
    system's default is taken, on the main thread (`nohup` keeps SIGHUP ignored). After the block
    the default is put back (main() called in-process), or, `for_good` (the process's command
    line), the signal is ignored, as `ignored_from_now` ignores Ctrl-C, and for the same reason."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [sig for sig in ENDING if signal.getsignal(sig) == signal.SIG_DFL]
    _ANSWERER[:] = [os.getpid()]
    _CAME.clear()
    _FOR_GOOD[:] = [True] if for_good else []
    for sig in taken:
        signal.signal(sig, _as_ctrl_c)
    try:
        yield
    finally:
        _FOR_GOOD.clear()
        for sig in taken:
            signal.signal(sig, signal.SIG_IGN if for_good else signal.SIG_DFL)


def ending_signal() -> int:
    """The signal that interrupted the command: SIGTERM or SIGHUP when one of them did, else SIGINT."""
    return _CAME[-1] if _CAME else int(signal.SIGINT)


def interrupted(signum: int) -> str:
    """"interrupted", naming a SIGTERM or SIGHUP (a Ctrl-C was seen by whoever pressed it)."""
    return "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """Hold Ctrl-C (and SIGTERM / SIGHUP where answered as it) back for the block; the list
    yielded says whether one came (the caller answers it). Nothing is held off the main thread
    (only it receives signals), nor a signal ignored or left to the system."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *ENDING)}
    for sig, handler in previous.items():
        if callable(handler):
            signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield came
    finally:
        for sig, handler in previous.items():
            if callable(handler) and not _ENDED:
                signal.signal(sig, handler)


def started(iterable: Iterable[T]) -> Iterator[T]:
    """iter(iterable) with Ctrl-C held (a DataLoader forks its worker processes there), then a
    Ctrl-C that came delivered to the handler in place (Python's raises KeyboardInterrupt),
    after the iterator, its workers with it, is let go."""
    with held() as came:
        items = iter(iterable)
    if came:
        handler = signal.getsignal(came[0])
        try:
            if callable(handler):
                handler(came[0], None)
        except BaseException:
            del items  # its workers are shut down before the interrupt goes on
            raise
    return items


def imported(name: str) -> ModuleType:
    """importlib.import_module(name) with Ctrl-C held, a Ctrl-C that came raised after it as a
    KeyboardInterrupt: one inside onnxruntime's initialisation came out as an ImportError, said as
    "onnxruntime is not installed" (exit 3; 1 of 8 Ctrl-Cs about 1.9 s into `sketchmine probe`)."""
    error: ImportError | None = None
    with held() as came:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            error = exc
    if came:
        _answer(came[0])
        raise KeyboardInterrupt
    if error is not None:
        raise error
    return module


def _answer(signum: int) -> None:
    """Record a held SIGTERM / SIGHUP as the one that interrupted (a held Ctrl-C needs nothing)."""
    if signum in ENDING:
        _CAME[:] = [signum]


def ignored_from_now() -> None:
    """Ctrl-C ignored for the rest of the process: called when a command line's command has ended
    and said so, before Python's own shutdown (its atexit calls, then torch and the other modules
    freed: 0.1-0.6 s after `report` here). Why: a Ctrl-C there ended the process by the signal
    (exit 130, nothing said, the report written) or printed a KeyboardInterrupt traceback from an
    atexit call; the exit code is now the command's own. Python's finalization puts a handler of
    its own back to the default, but leaves an ignored signal ignored. Only Python's default
    handler is replaced, on the main thread (a Ctrl-C ignored or handled by whoever started the
    process stays so). What it costs: a shutdown that hung would need Ctrl-\\ or a kill."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def ended() -> None:
    """A command line's command has ended, its exit status decided: Ctrl-C, SIGTERM and SIGHUP are
    ignored from now (where this process handles them: a signal its starter ignored stays so), and
    `held` puts none of their handlers back. Why: after the one line, the frames of a failed
    command are freed, the folder it ran from is left and a temporary cache folder removed, and a
    second Ctrl-C there raised KeyboardInterrupt out of main(): a traceback after the line, and the
    process ended by SIGINT (exit -2). Nothing for main() called in-process (tests, notebooks)."""
    if not _FOR_GOOD or threading.current_thread() is not threading.main_thread():
        return
    _ENDED[:] = [True]
    for sig in (signal.SIGINT, *ENDING):
        if callable(signal.getsignal(sig)):  # this process's own: Python's default, ours, held's
            signal.signal(sig, signal.SIG_IGN)


def forget_caught_interrupts() -> None:
    """Clear CPython's note that a KeyboardInterrupt left code run from a string: call when the
    command has ended, its exit code decided, and the signals are ignored. Why: CPython notes a
    KeyboardInterrupt leaving `exec("…")` / `eval("…")` (dataclasses and namedtuple make their methods
    so, at import) in a flag of the whole process, though a caller then handled it, and `python -m`
    ends a process whose flag is set by SIGINT: a SIGTERM landing while a module imported on first use
    made a dataclass ended `mine` by SIGINT (exit -2) after it said "interrupted by SIGTERM". Every
    run of code from a string clears the flag first: this one runs an empty string."""
    exec("")
