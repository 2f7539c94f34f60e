"""The one exception type users see: a message that says what was expected, what was
found and what to do. The CLI prints it as one line, without a traceback."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class SketchmineError(Exception):
    """A user-facing error: sketchmine refused the input as given (a bad dataset or option, an
    unknown layer, a run it cannot resume). The CLI exits with `exit_code` (3)."""

    exit_code = 3


class SketchmineFailure(SketchmineError):
    """A user-facing error where the input was fine but running failed (the disk filled, a write
    or a compiler failed): re-running after fixing the machine goes on. CLI exit code 1."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, for a one-line error (a library's message may run to a
    traceback of its own); the exception type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices most similar to `name`, for 'did you mean' hints."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)
