"""Where the command line's diagnostics go: the `sketchmine` logger, drawn on stderr.

The library reports notes (random weights, skipped images, resumed runs) through
`logging.getLogger("sketchmine")`; the CLI shows them on stderr above the progress bars, so
stdout carries only results (tables, JSON, the paths written). `-q` keeps errors only and no
bars, and the notes at level FILES: what happened to the user's files (a report folder that held
another run's report, replaced); `-v` adds debug lines and the traceback of an error.
"""
from __future__ import annotations

import logging
import sys

from rich.console import Console

from sketchmine.progress import FILES

LOGGER = "sketchmine"
"""The library's logger name (the Python API's notes go there, not to `warnings`)."""

LABELS = {logging.DEBUG: "[dim]debug:[/] ", logging.INFO: "", logging.WARNING: "[yellow]note:[/] ",
          FILES: "[yellow]note:[/] "}

_ERR: list[Console] = []


class ConsoleHandler(logging.Handler):
    """A log record as one line on a rich Console (so it prints above a live progress bar)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        from sketchmine.present.console import safe

        try:
            label = LABELS.get(record.levelno, "[red]error:[/] ")
            self.console.print(f"{label}{safe(record.getMessage())}", soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def verbosity_level(verbosity: int) -> int:
    """-q (-1) → FILES (notes about the user's files, and errors), default (0) → INFO, -v (1 or
    more) → DEBUG."""
    return FILES if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG


def setup(verbosity: int) -> Console:
    """Route the `sketchmine` logger to a stderr console for this process; returns that console
    (quiet with -q: no progress bars). Called once by the CLI's main."""
    err = Console(stderr=True, quiet=verbosity < 0)
    logger = logging.getLogger(LOGGER)
    for h in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(h)
    # -q's console prints nothing: the notes it keeps (FILES) go to one that does (no bar to print above)
    logger.addHandler(ConsoleHandler(err if verbosity >= 0 else Console(stderr=True)))
    logger.setLevel(verbosity_level(verbosity))
    _ERR[:] = [err]
    return err


def err_console() -> Console:
    """The diagnostics console `setup` made (a plain stderr console before it is called)."""
    return _ERR[0] if _ERR else Console(file=sys.stderr)
