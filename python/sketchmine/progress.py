"""What long passes (mine, visualize) report, and the default that shows no bar.

Kept out of the passes' logic: they call `Progress` only; the CLI draws it with rich
(console.RichProgress), benchmarks time it, the API may pass None.
"""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What the miner reports; the CLI draws it with rich, the API may pass None."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...


class Silent:
    """No bar; notes become warnings (the API's default, so nothing is lost unseen)."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None:
        import warnings

        warnings.warn(message, stacklevel=3)
