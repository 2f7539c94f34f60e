"""The class-level correlations of a run: each class's ink density, and per layer the rank
correlation of its class preference with ink density and with class accuracy (the seed's
"conv layers prefer classes of high stroke density" and "do layers prefer the classes the
network classifies well?"). A base class of `Run`, as unit_views.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError
from sketchmine.results import summaries
from sketchmine.results.run_part import RunPart


class ClassCorrelations(RunPart):
    """Ink density and the layers' class-preference correlations (methods of `Run`)."""

    def ink_density(self) -> pd.Series:
        """Mean ink density of each class's images (fraction of pixels differing from the image's
        background by more than half the range, measured on the model's input; see
        `ink.ink_density`)."""
        run = self._as_run
        if run.has_dataset_array("class_ink_density"):
            ink = run.dataset_array("class_ink_density")
        else:
            stats = run._checkpoint_stats()
            if stats is None:
                raise SketchmineError(f"run {run.path} has no per-class ink density: " + summaries.no_classes(
                    run, "the dataset has no labels, or the run was mined before sketchmine measured it (mine it again)"))
            ink = stats.ink_results()[0]
        return pd.Series(ink, index=pd.Index(run.class_names, name="class"), name="ink_density")

    def ink_correlation(self) -> pd.DataFrame:
        """Per layer: Spearman correlation between the layer's unbiased class preference and the
        classes' ink density (the seed's "conv layers prefer classes of high stroke density")."""
        run = self._as_run
        ink = run.ink_density().to_numpy()
        rows = []
        for layer in run.layers:
            pref = run._preference_in_class_order(layer)
            rho, p = summaries.spearman(pref, ink)
            rows.append({"layer": layer, "kind": run.layer_attrs(layer).get("kind", ""),
                         "spearman": rho, "p_value": p, "classes": int(np.isfinite(pref).sum())})
        return summaries.layer_table(rows, partial=not run.complete)

    def accuracy_correlation(self) -> pd.DataFrame:
        """Per layer, as `ink_correlation`: Spearman ρ (and p) between per-class accuracy and the
        layer's class preference by its top-k (`class_histogram(per_image=True)`: the raw counts'
        order when classes are the same size; NaN where every class with images has one raw count,
        as `top_classes`' all_tied), columns *_topk, and over all images
        (`class_preference`; NaN without class statistics), *_preference. Does a layer prefer
        the classes the network classifies well? A run without predictions is refused."""
        run = self._as_run
        acc, stats = run.class_accuracy()["accuracy"].to_numpy(), run.has_class_stats()
        rows = []
        for layer in run.layers:
            topk = run.class_histogram(layer, per_image=True).to_numpy()  # class order, as acc
            pref = run._preference_in_class_order(layer) if stats else topk * np.nan
            row = summaries.rank_correlations({"topk": topk, "preference": pref}, acc)
            counts = run.class_histogram(layer).to_numpy()[np.isfinite(topk)]  # of the classes with images
            if len(counts) > 1 and (counts == counts[0]).all():  # all tied (`cut_at`): k over each class's size
                row.update(spearman_topk=np.nan, p_value_topk=np.nan)  # the sizes' order, nothing of the layer
            rows.append({"layer": layer, "kind": run.layer_attrs(layer).get("kind", ""), **row})
        return summaries.layer_table(rows, partial=not run.complete)

    def _preference_in_class_order(self, layer: str) -> np.ndarray:
        """(K,) `class_preference` by class number (NaN: no images): two classes may share a name."""
        run = self._as_run
        mean, count = run.class_stats(layer)
        k = [str(c) for c in range(mean.shape[1])]
        return summaries.preference(mean, np.full(len(k), np.nan), k, count)["preference"].reindex(k).to_numpy()
