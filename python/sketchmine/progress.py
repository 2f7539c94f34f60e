"""What long passes (mine, visualize) report, and the default that shows no bar.

Kept out of the passes' logic: they call `Progress` only; the CLI draws it with rich
(console.RichProgress), benchmarks time it, the API may pass None.
"""
from __future__ import annotations

import logging
from typing import Protocol


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
