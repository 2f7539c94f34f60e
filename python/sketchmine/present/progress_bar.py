"""The CLI's progress: a live rich bar on a terminal, a plain line now and then anywhere else.

A rich bar is transient and drawn only on a terminal, so a run under nohup, a batch scheduler or
`2> log` said nothing for hours (a `visualize` of 22 layers ran 82 minutes in silence). There the
same figures come as one line every `SKETCHMINE_PROGRESS_SECONDS` seconds (60 by default), on
stderr with the notes: a line a minute is what a log can hold, and a command that ends or fails
within the first minute still writes nothing but its result or its one error line.
"""
from __future__ import annotations

import logging
import os
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sketchmine.errors import SketchmineError
from sketchmine.present.console import safe

ENV = "SKETCHMINE_PROGRESS_SECONDS"
EVERY = 60.0
"""Seconds between two progress lines where stderr is no terminal, unless ENV says otherwise."""


def line_every() -> float:
    """The seconds between progress lines: ENV's number when it is set (0: a line at every
    advance), else EVERY."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return EVERY
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise SketchmineError(f"{ENV}={text!r} in the environment: expected the seconds between two progress "
                              f"lines, a number of 0 or more; unset it for one line every {EVERY:.0f} s")
    return seconds


def clock(seconds: float) -> str:
    """0:01:05 for 65 s (rich's own columns say elapsed and remaining time so)."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def per_second(rate: float) -> str:
    """"1,234" images a second; "0.05" layers (two significant digits below 10, not "0")."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


class RichProgress:
    """Progress with images/s and ETA on `console` (the CLI's stderr console). On a terminal, a
    live bar cleared when done (an error stays the one line on stderr); elsewhere, a line every
    `line_every()` seconds; with -q (a quiet console), neither. Notes go to the `sketchmine`
    logger, which the CLI prints above the bar (present/logs.py)."""

    def __init__(self, console: Console, label: str = "mining", unit: str = "images") -> None:
        self.console = console
        self.label, self.unit = label, unit
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._lines = not console.is_terminal and not console.quiet
        self._every = line_every() if self._lines else 0.0
        self._t0 = self._next_line = 0.0
        self._total = self._done = 0
        self.images = 0

    def start(self, total: int, done: int) -> None:
        self._t0, self._total, self._done, self.images = time.perf_counter(), total, done, 0
        self._next_line = self._t0 + self._every
        if not self._lines:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total, completed=done, rate="")
        if done and done < total:
            logging.getLogger("sketchmine").info(f"resuming at {self.unit[:-1]} {done} of {total}")

    def advance(self, n: int) -> None:
        self.images += n
        self._done += n
        now = time.perf_counter()
        rate = self.images / max(now - self._t0, 1e-9)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=n, rate=f"{per_second(rate)} {self._per()}/s")
        elif self._lines and now >= self._next_line:
            self._next_line = now + self._every
            self.console.print(self.line(now - self._t0, rate), markup=False, highlight=False, soft_wrap=True)

    def line(self, elapsed: float, rate: float) -> str:
        """"mining: 1,280 of 8,000 images (16 %), 21 img/s, 0:01:00 elapsed, ETA 0:05:20"."""
        total, done = self._total, min(self._done, self._total)
        eta = f", ETA {clock((total - done) / rate)}" if rate > 0 and done < total else ""
        return (f"{safe(self.label, markup=False)}: {done:,} of {total:,} {self.unit} "
                f"({100 * done / max(total, 1):.0f} %), {per_second(rate)} {self._per()}/s, {clock(elapsed)} elapsed{eta}")

    def _per(self) -> str:
        return "img" if self.unit == "images" else self.unit

    def note(self, message: str) -> None:
        logging.getLogger("sketchmine").warning(message)  # the CLI draws it on stderr (present/logs.py)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0
