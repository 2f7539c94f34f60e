"""`mine`'s default --out across versions: it was MODEL.zarr whatever --weights said, and is
MODEL-WEIGHTS.zarr with --weights now (parser.default_run_out), so the command a user re-runs to
resume an interrupted run, as the interruption told them to, would start a new run beside it."""
from __future__ import annotations

import os
from pathlib import Path

from sketchmine.cli.parser import default_run_out
from sketchmine.errors import SketchmineError


def unfinished_at_the_old_default(model: str, weights: str | None, out: str) -> str | None:
    """A note when no --out was given and MODEL.zarr, the default before it named the weights,
    holds an unfinished run of this model with these weights: the way to resume it. None else."""
    old = default_run_out(model)
    if not weights or old == out or Path(out).exists() or not Path(old).is_dir():
        return None
    from sketchmine.results.run import open_run

    try:
        run = open_run(old)
        spec = run.attrs.get("model_spec") or {}
        complete = run.complete
    except (SketchmineError, OSError):  # no run there, or one not to be read: nothing to resume
        return None
    if complete or spec.get("weights") not in (weights, os.path.abspath(weights)):
        return None
    return (f"{old}, where mine put runs of --model {model} before the default --out named the weights, holds an "
            f"unfinished run with --weights {weights}: this command starts a new one at {out}; stop it and give "
            f"--out {old} to resume that one")
