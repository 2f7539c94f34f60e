"""Progress under torch.distributed (distributed.py): rank 0 reports for every rank, the others
say nothing and hand their notes to rank 0 at each gather, where it says those it has not said."""
from __future__ import annotations

from typing import Any


class Muted:
    """Progress of ranks other than 0: they say nothing (rank 0 reports for everyone); their notes
    are kept until the next gather, where rank 0 says those it has not said itself."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...

    def note(self, message: str) -> None:
        self.notes.append(message)


def note_key(message: str) -> str:
    """What makes two ranks' notes one: a conversion note names each rank's first image."""
    return message.split(" (first: ", 1)[0]


class Counted:
    """Rank 0's progress counting every rank's images (all ranks mine one batch per step)."""

    def __init__(self, inner: Any, size: int) -> None:
        self.inner, self.size, self.total, self.done = inner, size, 0, 0
        self.said: set[str] = set()  # note_key of every note said

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.inner.start(total, done)

    def advance(self, n: int) -> None:
        step = max(min(n * self.size, self.total - self.done), 0)
        self.done += step
        self.inner.advance(step)

    def note(self, message: str) -> None:
        self.said.add(note_key(message))
        self.inner.note(message)

    def note_theirs(self, message: str) -> None:
        """Another rank's note, said unless this rank said it (or another rank's like it) already."""
        if note_key(message) not in self.said:
            self.note(message)
