"""Unit importance results in the run store: stored as schema.layer_result(layer,
"importance") = layers/<name>/importance/{prob_drop, acc_drop, mean_act_correct,
mean_act_wrong} (float64, one per unit) with attrs (images, base accuracy, method, ...),
written and read as a unit (RunStore.write_group; Run.layer_result reads it back).

Kept apart from importance.py (the pass that runs a model, its plot and CLI) so that
run.py can read results without importing the pass: it imports no module above the store.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError

if TYPE_CHECKING:  # annotations only: run.py imports this module
    from sketchmine.passes.ablation import Importance
    from sketchmine.results.run import Run

COLUMNS = ("prob_drop", "acc_drop", "mean_act_correct", "mean_act_wrong")


def write_importance(run: Run, layer: str, result: Importance) -> None:
    """layers/<layer>/importance/<column> arrays plus attrs; replaces an earlier result as a
    unit (RunStore.write_group): an interrupted write leaves the earlier result, or none."""
    from sketchmine.store.runstore import RunLock, RunStore

    run.layer_attrs(layer)  # a layer the run does not have is refused with the run's layers
    lock = RunLock(run.path)
    lock.acquire()
    try:
        RunStore.open(run.path, mode="r+").write_result(
            layer, "importance",
            {col: np.asarray(getattr(result, col), dtype=np.float64) for col in COLUMNS}, dict(result.attrs))
    finally:
        lock.release()


def has_importance(run: Run, layer: str) -> bool:
    """True when `layer` has a whole stored importance result (see write_importance)."""
    return run.layer_result(layer, "importance", COLUMNS) is not None


def read_importance(run: Run, layer: str) -> pd.DataFrame:
    """(unit, prob_drop, acc_drop, mean_act_correct, mean_act_wrong), one row per unit,
    most important (largest prob_drop) first. A result whose write was interrupted counts
    as not computed."""
    found = run.layer_result(layer, "importance", COLUMNS)
    if found is None:
        raise SketchmineError(f"run {run.path} has no unit importance for {layer!r}; compute it with "
                              f"sketchmine importance {run.path} --layers {layer}")
    arrays, attrs = found
    df = pd.DataFrame(arrays)
    df.insert(0, "unit", np.arange(len(df)))
    attrs.pop("complete", None)
    df.attrs.update(attrs)
    return df.sort_values(["prob_drop", "unit"], ascending=[False, True], kind="stable").reset_index(drop=True)
