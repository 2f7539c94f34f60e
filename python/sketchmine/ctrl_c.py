"""Ctrl-C held back while code that must not be interrupted half-way runs, then answered.

A KeyboardInterrupt raised inside a C extension's initialisation leaves it half-loaded (the
next import failed with an ImportError or ValueError traceback, or a segmentation fault: 9 of
20 Ctrl-Cs in a command's first 3 s did); one raised in a fork handler (a DataLoader starting
its worker processes) is dropped ("Exception ignored"), and one in logging's left its lock
taken, so the interrupted `mine` waited forever, deaf to further Ctrl-Cs. A Ctrl-C ignored by
whoever started the process (`cmd &` in a script) stays ignored.
"""
from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """Hold Ctrl-C back for the block; the list yielded says whether one came (the caller
    answers it). Nothing is held off the main thread (only it receives signals), nor when
    Ctrl-C is ignored or left to the system."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread() or not callable(signal.getsignal(signal.SIGINT)):
        yield came
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield came
    finally:
        signal.signal(signal.SIGINT, previous)


def started(iterable: Iterable[T]) -> Iterator[T]:
    """iter(iterable) with Ctrl-C held (a DataLoader forks its worker processes there), then a
    Ctrl-C that came delivered to the handler in place (Python's raises KeyboardInterrupt),
    after the iterator, its workers with it, is let go."""
    with held() as came:
        items = iter(iterable)
    if came:
        handler = signal.getsignal(signal.SIGINT)
        try:
            if callable(handler):
                handler(signal.SIGINT, None)
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
        raise KeyboardInterrupt
    if error is not None:
        raise error
    return module


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
