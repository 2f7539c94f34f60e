"""Class summaries of a run, as functions: per-unit class lists, unbiased class preferences,
class selectivity, ink density and its correlation with what a layer prefers.

Imports go one way (analysis → run → summaries): the computations are summaries.py's pure
functions over arrays, which `Run`'s methods of the same names feed with the run's arrays;
these functions are those methods for callers that prefer `f(run, layer)`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError, unless_damaged
from sketchmine.results.numbers import percent
from sketchmine.results.run import Run
from sketchmine.results.summaries import spearman

__all__ = ["accuracy_by_class", "class_preference", "class_stats", "has_class_stats", "ink_correlation",
           "ink_density", "performance_line", "selectivity", "spearman", "unit_classes", "unit_table"]


def accuracy_by_class(run: Run) -> pd.Series:
    """Per-class accuracy (fraction) by class name; NaN when the run has no predictions."""
    return run.class_accuracy_series()


def unit_table(run: Run, layer: str) -> pd.DataFrame:
    """One row per (unit, rank) of the layer's top-k, best first: image, value, (y, x), label,
    class and that class's accuracy. Empty slots (fewer images than k) are left out."""
    return run.unit_table(layer)


def unit_classes(run: Run, layer: str, unit: int) -> pd.DataFrame:
    """The seed's "Classes with performance" for one unit: its top-k images, best first, with
    class, class accuracy, activation value and image path."""
    return run.unit_classes(layer, unit)


def performance_line(df: pd.DataFrame) -> str:
    """'zebra 92.86 mouse 71.43 …' from `unit_classes` (accuracy in percent, '-' unknown)."""
    return " ".join(f"{'?' if pd.isna(c) else c} {percent(a, 2)}"
                    for c, a in zip(df["class"], df["accuracy"]))


def class_stats(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(class_mean (C, K) float64, class_count (C, K) int64) over all labelled images."""
    return run.class_stats(layer)


def selectivity(run: Run, layer: str) -> pd.Series:
    """Class-selectivity index per unit (Morcos et al. 2018); see `Run.selectivity`."""
    return run.selectivity(layer)


def class_preference(run: Run, layer: str) -> pd.DataFrame:
    """A layer's class preference over ALL images, most preferred first; see `Run.class_preference`."""
    return run.class_preference(layer)


def ink_density(run: Run) -> pd.Series:
    """Mean ink density of each class's images; see `Run.ink_density`."""
    return run.ink_density()


def ink_correlation(run: Run) -> pd.DataFrame:
    """Per layer: Spearman correlation of class preference with class ink density."""
    return run.ink_correlation()


def accuracy_correlation(run: Run) -> pd.DataFrame | None:
    """Per layer, Spearman ρ of class accuracy with the class preference (`Run.accuracy_correlation`);
    None for a run without predictions (--no-logits), whose views leave the correlation out. A
    damaged run still raises."""
    try:
        return run.accuracy_correlation()
    except SketchmineError as exc:
        unless_damaged(exc)
        return None


def has_class_stats(run: Run) -> bool:
    """True when the unbiased statistics can be read (final arrays or a partial checkpoint)."""
    return run.has_class_stats()
