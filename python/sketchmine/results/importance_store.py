"""Unit importance results in the run store, read back: schema.layer_result(layer,
schema.IMPORTANCE) = layers/<name>/importance/{prob_drop, acc_drop, mean_act_correct,
mean_act_wrong} (float64, one per unit) with attrs (images, base accuracy, method, ...),
written as a unit by the pass (passes/importance.py, `write_importance`).

Kept apart from the pass that runs a model so that run.py reads results without importing
it: it imports no module above the store.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError
from sketchmine.names import command, layer_arg
from sketchmine.results.numbers import column, percents
from sketchmine.store import schema

if TYPE_CHECKING:  # annotations only: run.py imports this module
    from sketchmine.results.run import Run

COLUMNS = ("prob_drop", "acc_drop", "mean_act_correct", "mean_act_wrong")
LABELS = {"unit": "unit", "prob_drop": "prob. drop (pt)", "acc_drop": "acc. drop (pt)",
          "mean_act_correct": "mean act. right", "mean_act_wrong": "mean act. wrong"}
"""The columns as the console's and the report's tables name them (the console's fits 80 columns)."""


def written(df: pd.DataFrame) -> dict[str, list[str]]:
    """Each value column of `read_importance` as people read it, in the console as in the
    report: both drops in percentage points (a probability's as an accuracy's: 0.0057 beside
    "0.45 pt" read as two units), the probability's as `points` writes it wherever it is shown
    (4 decimals: units that differ in the fourth digit do not read as tied), the accuracy's as
    `percent` writes it (a count of images), each drop column with one count of decimals, an
    exact 0 too (`percents`: "0.00" beside "1.00", not "0"), the mean activations with one count
    of decimals a column (`column`)."""
    return {"prob_drop": percents([float(v) for v in df["prob_drop"]], 4),
            "acc_drop": percents([float(v) for v in df["acc_drop"]], 2),
            "mean_act_correct": column(df["mean_act_correct"].tolist()),
            "mean_act_wrong": column(df["mean_act_wrong"].tolist())}


def ranks(df: pd.DataFrame) -> dict[int, dict[str, int]]:
    """unit → {"rank", "tied"} for `read_importance`'s table: units with one probability drop
    share the best rank among them ("tied" counts them, the unit itself included), so the units
    that never change a prediction (a drop of exactly 0) do not read as ranked 78, 79, … 86 by
    their numbers alone."""
    drop = df["prob_drop"].to_numpy(dtype=np.float64)
    key = np.where(np.isnan(drop), -np.inf, drop)  # a unit without a drop (none stored) ranks last
    above = len(key) - np.searchsorted(np.sort(key), key, side="right")  # units with a larger drop
    same = np.unique(key, return_inverse=True, return_counts=True)
    tied = same[2][same[1]]
    return {int(u): {"rank": int(a) + 1, "tied": int(t)} for u, a, t in zip(df["unit"], above, tied)}


def rank_text(rank: int, tied: int, units: int) -> str:
    """"78 of 86" or, where units tie, "78 of 86 (tied with 8 units)" (dom.js: rankText)."""
    others = tied - 1
    return f"{rank} of {units}" + (f" (tied with {others} unit{'s' if others > 1 else ''})" if others else "")


def has_importance(run: Run, layer: str) -> bool:
    """True when `layer` has a whole stored importance result (see passes.importance.write_importance)."""
    return run.layer_result(layer, schema.IMPORTANCE, COLUMNS) is not None


def read_importance(run: Run, layer: str) -> pd.DataFrame:
    """(unit, prob_drop, acc_drop, mean_act_correct, mean_act_wrong), one row per unit,
    most important (largest prob_drop) first, indexed by the unit as every per-unit reader is
    (`selectivity`, `unit_effects`): `.loc[u]` is unit u's row, a join pairs each unit with its
    own (an index of places in the order would pair them with other units' rows, silently). A
    result whose write was interrupted counts as not computed."""
    found = run.layer_result(layer, schema.IMPORTANCE, COLUMNS)
    if found is None:
        raise SketchmineError(f"run {run.path} has no unit importance for {layer!r}; compute it with "
                              f"`{command('sketchmine', 'importance', run.path, '--layers', layer_arg([layer]))}`")
    arrays, attrs = found
    df = pd.DataFrame(arrays)
    df.insert(0, "unit", np.arange(len(df)))
    attrs.pop(schema.COMPLETE, None)
    df.attrs.update(attrs)
    return df.sort_values(["prob_drop", "unit"], ascending=[False, True], kind="stable")  # the index: the unit
