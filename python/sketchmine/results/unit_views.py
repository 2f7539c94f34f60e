"""The per-unit views of a run beyond its top-k: each unit's whole distribution
(results/distribution.py), its ablation importance (results/importance_store.py), its effects
on the output and its correlated units (results/effects.py), its pictures. A base class of
`Run`, so the reader keeps one namespace while each family of readers lives in its own module.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError
from sketchmine.results import distribution, effects, importance_store
from sketchmine.results.run_part import RunPart
from sketchmine.store import schema


class UnitViews(RunPart):
    """Readers of the distribution and effects arrays (methods of `Run`)."""

    # ---- the layer's extremes, from its top-k (a partial run: its last checkpoint's) -------------
    def peak(self, layer: str) -> float | None:
        """The layer's largest top-k value (its best activation over all units), None when the
        top-k hold no entry yet."""
        values, idx, _ = self._as_run.topk(layer)
        return float(values[idx >= 0].max()) if (idx >= 0).any() else None

    def nan_total(self, layer: str) -> int:
        """NaN activations (elements, not maps: `class_nan_count`) its units met, summed (0: no count);
        a partial run's from its last checkpoint, whose top-k state counts them (the final array is
        written only when the run completes)."""
        run = self._as_run
        if run.complete:
            return int(run.layer_array(layer, "nan_count").sum()) if run.has_array(layer, "nan_count") else 0
        run.check_layer(layer)  # unknown: its closest names, not "the top-k does not fit the run"
        return run.store.committed(lambda: int(run._checkpoint_topk(layer)["nan_count"].sum()))

    # ---- each unit's whole distribution (mine --distributions): results/distribution.py ---
    def histogram(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(edges (C, 65) float64, counts (C, 64) int64) exact histogram of each unit's image
        maxima; counts sum to the images whose maximum is not NaN (stats/histogram.py)."""
        return distribution.histogram_of(self._as_run, layer)

    def quantiles(self, layer: str, q: Any) -> np.ndarray:
        """(C, len(q)) quantiles of each unit's image maxima, with the guarantee of
        `distribution.quantiles` (relative error <= 1/65; exact at q = 0 and 1)."""
        return distribution.quantiles(self._as_run, layer, q)

    def max_range(self, layer: str) -> np.ndarray:
        """(C, 2) float32 exact [min, max] of each unit's image maxima (NaN: none)."""
        return distribution.max_range(self._as_run, layer)

    def quantile_examples(self, layer: str) -> np.ndarray:
        """(C, 17, 8) int64 images per activation bin (`example_edges`), -1 where fewer."""
        return distribution.quantile_examples(self._as_run, layer)

    def example_edges(self, layer: str) -> np.ndarray:
        """(C, 18) float64 edges of the bins of `quantile_examples`."""
        return distribution.example_edges(self._as_run, layer)

    def bottomk(self, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `topk`, for the k least-activating images: least first (empty slots: index -1, value +inf)."""
        return distribution.bottom_k(self._as_run, layer)

    def firing_density(self, layer: str) -> np.ndarray:
        """(C,) share of images (with a non-NaN maximum) whose maximum is > 0."""
        return distribution.firing_density(self._as_run, layer)

    def max_mean(self, layer: str) -> np.ndarray:
        """(C,) mean of each unit's non-NaN image maxima."""
        return distribution.max_mean(self._as_run, layer)
    # ---- unit importance (sketchmine importance): results/importance_store.py ------------------
    def unit_importance(self, layer: str) -> pd.DataFrame:
        """Per-unit ablation importance stored by `sketchmine.unit_importance`: columns unit,
        prob_drop, acc_drop, mean_act_correct, mean_act_wrong; most important first, indexed by the unit."""
        return importance_store.read_importance(self._as_run, layer)

    def has_importance(self, layer: str) -> bool:
        """True when `unit_importance(layer)` has a whole stored result to read (a write that
        was interrupted counts as none)."""
        return importance_store.has_importance(self._as_run, layer)

    # ---- unit effects and correlated units: results/effects.py (sketchmine effects) -----------
    def unit_effects(self, layer: str, kind: str = "prob") -> pd.DataFrame:
        """unit × class: mean change of each class's probability (kind="prob") or logit
        ("logit") when the unit is zeroed, ablated minus clean, over all images."""
        return effects.read_effects(self._as_run, layer, kind)

    def correlated_units(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(unit (C, m) int32, r (C, m) float32): each unit's most correlated units in the layer."""
        return effects.read_correlated(self._as_run, layer)

    def has_unit_effects(self, layer: str) -> bool:
        return effects.has_effects(self._as_run, layer)

    # ---- pictures: patches (visualize), feature visualisation (visualize --optimize) ----------
    def patches_done(self, layer: str) -> int:
        """Units of `layer` whose patches a visualize pass committed (units 0 to this - 1); 0 when
        the layer has no patches."""
        run = self._as_run
        vis = run.layer_attrs(layer).get(schema.VISUALIZED) or {}
        return int(vis.get("units_done", 0)) if run.has_array(layer, "patches") else 0

    def visualized_unit(self, layer: str, unit: int, arrays: tuple[str, ...] = ("patches",)) -> int:
        """`unit` checked against the layer's units and against those a visualize pass committed
        (later units' arrays hold fill values); a SketchmineError saying how to add or continue the
        pass otherwise. One check for every reader of the pictures, so they refuse alike."""
        run = self._as_run
        unit = run.check_unit(layer, unit)
        from sketchmine.results.optimized import pictures_command

        hint = f"`{pictures_command(run, layer)}`"  # with the pass's --method: another is refused
        if schema.VISUALIZED not in run.layer_attrs(layer) or not all(run.has_array(layer, a) for a in arrays):
            raise SketchmineError(f"layer {layer!r} of {run.path} has no patches; run {hint}")
        done = self.patches_done(layer)
        if unit >= done:
            raise SketchmineError(f"unit {unit} of layer {layer!r} of {run.path} has no patches yet ({done} of "
                                  f"{run.layer_shape(layer)[0]} units done); run {hint} to continue")
        return unit

    def optimized(self, layer: str, unit: int | None = None, key: str = "optimized") -> np.ndarray:
        """Feature visualisation images of `visualize --optimize`: one unit's (H, W, channels) uint8,
        or (units done, H, W, channels); key "optimized_peak" / "optimized_stopped" for the unit's
        activation at its image and the step a non-finite value stopped it (results/optimized.py)."""
        from sketchmine.results import optimized

        return optimized.optimized(self._as_run, layer, unit, key)
