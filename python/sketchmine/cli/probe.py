"""`sketchmine probe RUN --out DIR` (parsed in parser.py) and the probe step of `sketchmine report` (and of the
demo's reports): export the run's model for the report's live probe page (passes.probe), or say why there is none."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sketchmine.errors import SketchmineError

if TYPE_CHECKING:
    from rich.console import Console

    from sketchmine.results.run import Run


def max_mb(option: float | None) -> float | None:
    """The probe's size cap from a `--probe-max-mb` / `--max-mb` value: None → the default, 0 → no cap."""
    from sketchmine.passes.probe import MAX_MODEL_MB

    return MAX_MODEL_MB if option is None else (None if option == 0 else option)


def report_probe(run: Run | str, skip: bool = False, cap: float | None = None) -> Mapping[str, bytes] | str:
    """The probe's files for `sketchmine report`, or why there are none (shown on the report's index);
    cap: the size cap in MB (None: the default, 0: none)."""
    if skip:
        if cap is not None:  # a cap of a probe left out would be taken and ignored
            raise SketchmineError(f"--probe-max-mb {cap:g} caps the live probe, which --no-probe leaves out; "
                                  "pass one of them")
        return "left out with --no-probe"
    from sketchmine.passes.probe import build_probe

    try:
        return build_probe(run, max_mb=max_mb(cap))
    except SketchmineError as exc:
        return str(exc)


def run_probe(args: argparse.Namespace, console: Console) -> None:
    from sketchmine.passes.probe import build_probe
    from sketchmine.present.console import safe
    from sketchmine.present.report_probe import check_probe_folder, write_probe_folder

    check_probe_folder(args.out)  # before the export (seconds): a folder the probe may not write is said at once
    files = build_probe(args.run, size=tuple(args.size) if args.size else None, max_mb=max_mb(args.max_mb))
    page = write_probe_folder(args.out, files)
    console.print(f"probe written: open {safe(page)}")
