"""The one exception type users see: a message that says what was expected, what was
found and what to do. The CLI prints it as one line, without a traceback."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class SketchmineError(Exception):
    """A user-facing error (bad input, incompatible run, unwritable output)."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices most similar to `name`, for 'did you mean' hints."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)
