"""What long passes (mine, visualize) report, and the default that shows no bar.

Kept out of the passes' logic: they call `Progress` only; the CLI draws it with rich
(present/progress_bar.py: a bar on a terminal, lines elsewhere), benchmarks time it, the API may pass None.
"""
from __future__ import annotations

import logging
from typing import Protocol

FILES = logging.WARNING + 5
"""The level of a note that the user's files were replaced or removed (a report folder that held
another run's report): the CLI shows it under -q too, which hides progress and notes, not what
was done to files (below ERROR: it is no error)."""
logging.addLevelName(FILES, "FILES")


class Progress(Protocol):
    """What the miner reports; the CLI draws it with rich, the API may pass None."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...


class Silent:
    """No bar; notes go to the `sketchmine` logger at WARNING level (the API's default:
    Python shows warnings of an unconfigured logger on stderr, so nothing is lost unseen, and
    `logging.getLogger("sketchmine").setLevel(logging.ERROR)` silences them)."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None:
        logging.getLogger("sketchmine").warning(message)
