"""`sketchmine probe RUN --out DIR` (parsed in parser.py) and the probe step of `sketchmine report`: export the run's
model for the report's live probe page (passes.probe), or say why there is none."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sketchmine.errors import SketchmineError

if TYPE_CHECKING:
    from rich.console import Console


def report_probe(run: str, skip: bool = False) -> Mapping[str, bytes] | str:
    """The probe's files for `sketchmine report`, or why there are none (shown on the report's index)."""
    if skip:
        return "left out with --no-probe"
    from sketchmine.passes.probe import build_probe

    try:
        return build_probe(run)
    except SketchmineError as exc:
        return str(exc)


def run_probe(args: argparse.Namespace, console: Console) -> None:
    from sketchmine.passes.probe import build_probe
    from sketchmine.present.console import safe
    from sketchmine.present.report_probe import write_probe_folder

    page = write_probe_folder(args.out, build_probe(args.run, size=tuple(args.size) if args.size else None))
    console.print(f"probe written: open {safe(page)}")
