"""A mined run, read back from its store: top-k per layer, labels, accuracy, and the
class summaries the seed's tables are built from."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import zarr

from .errors import SketchmineError, closest
from .store import RunStore, check_layer_attrs
from . import topk
from .topk import flat_to_yx


class Run:
    """Read access to one run directory (complete or, clearly labelled, partial)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    @property
    def path(self) -> os.PathLike:
        return self.store.path

    @property
    def attrs(self) -> dict[str, Any]:
        return self.store.attrs

    @property
    def layers(self) -> list[str]:
        """Mined layer names, in forward order."""
        return list(self.attrs["layer_names"])

    @property
    def k(self) -> int:
        return int(self.attrs["k"])

    @property
    def complete(self) -> bool:
        return bool(self.store.progress.get("complete"))

    @property
    def images_done(self) -> int:
        return int(self.store.progress.get("images_done", 0))

    @property
    def class_names(self) -> list[str]:
        names = [str(s) for s in self.store.read("dataset/class_names")]
        n = self.attrs.get("num_classes") or 0
        return names or [str(i) for i in range(n)]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 label per image; -1 where not yet known."""
        return self.store.read("dataset/labels")

    @property
    def paths(self) -> np.ndarray:
        return self.store.read("dataset/paths")

    def image_path(self, i: int) -> str:
        """The path (or dataset-relative name) of global image `i`, as recorded in dataset/paths."""
        n = int(self.store.group["dataset/paths"].shape[0])
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise SketchmineError(f"image index should be an integer from 0 to {n - 1}, got {i!r}")
        if not 0 <= int(i) < n:
            raise SketchmineError(f"image {int(i)} is not in run {self.path}: its images are numbered 0 to {n - 1}")
        return str(self.store.read("dataset/paths", slice(int(i), int(i) + 1))[0])

    def layer_shape(self, layer: str) -> tuple[int, ...]:
        return tuple(self.layer_group(layer).attrs["shape"])

    def layer_group(self, layer: str) -> zarr.Group:
        """The layer's Zarr group, its attributes checked (a damaged run is refused clearly)."""
        try:
            g = self.store.group[f"layers/{self._check_layer(layer)}"]
        except KeyError:
            raise SketchmineError(f"run {self.path} is damaged: layer {layer!r} is listed but has no group") from None
        check_layer_attrs(self.store.path, layer, dict(g.attrs))
        return g

    def _check_layer(self, layer: str) -> str:
        if not isinstance(layer, str):
            raise SketchmineError(f"a layer is named by a string (one of {', '.join(self.layers)}), got "
                                  f"{type(layer).__name__} {layer!r}")
        if "/" in layer or "\\" in layer or ".." in layer or layer in ("", "."):
            raise SketchmineError(f"{layer!r} is not a layer name (it holds a path separator or '..'); "
                                  f"mined layers of run {self.path}: {', '.join(self.layers)}")
        if layer not in self.layers:
            hint = closest(layer, self.layers)
            raise SketchmineError(f"layer {layer!r} is not in run {self.path}"
                                  + (f"; closest: {', '.join(hint)}" if hint else "")
                                  + f". Mined layers: {', '.join(self.layers)}")
        return layer

    def topk(self, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values (C, k) float32, image_index (C, k) int64, yx (C, k, 2) int32), best first.

        Empty slots have image index -1. For an unfinished run the last committed checkpoint
        is read (another process may be writing it: see RunStore.committed).
        """
        self.layer_group(layer)
        return self.store.committed(lambda: self._topk(layer))

    def _topk(self, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.complete:
            base = f"layers/{layer}/"
            return self.store.read(base + "values"), self.store.read(base + "image_index"), self.store.read(base + "yx")
        state = self.store.read_checkpoint_state(topk.KEY)
        if state is None:
            raise SketchmineError(f"run {self.path} has no results for {layer!r} yet (nothing flushed)")
        try:
            s = topk.unpack(state, self.layers)[layer]
        except (ValueError, KeyError) as exc:
            raise SketchmineError(f"{self.path}: the top-k in its checkpoint does not fit the run ({exc})") from None
        idx = s["index"]
        return s["values"], idx, flat_to_yx(s["position"], idx, self.layer_shape(layer)[1:])

    def class_accuracy(self) -> pd.DataFrame:
        """Per-class accuracy: columns accuracy (fraction), correct, count.

        For an unfinished run it covers the images mined so far (check `Run.complete`).
        """
        return self.store.committed(self._class_accuracy)

    def _class_accuracy(self) -> pd.DataFrame:
        ev = self.store.group["eval"]
        if self.store.attrs.get("logits", True) is False:
            raise SketchmineError(f"run {self.path} was mined with logits=False (--no-logits): the forward pass "
                                  "stopped after the deepest mined layer, so it has no predictions or accuracy")
        if "predictions" not in ev:
            raise SketchmineError(f"run {self.path} has no predictions yet (the model output is not (N, classes) "
                                  "logits, or nothing was flushed)")
        pred, labels = self.store.read("eval/predictions"), self.labels
        pred = np.where(np.arange(len(pred)) < self.images_done, pred, -1)
        names = self.class_names
        correct, count = class_counts(pred, labels, len(names))
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
        return pd.DataFrame({"class": names, "accuracy": acc, "correct": correct, "count": count}).set_index("class")

    def accuracy(self) -> float | None:
        """Overall accuracy over all readable images (None until the run is complete)."""
        return self.store.group["eval"].attrs.get("accuracy")

    def class_histogram(self, layer: str) -> pd.Series:
        """Counts of each class among the top-k images of all units of `layer` (all classes)."""
        _, idx, labels = self.store.committed(lambda: (*self.topk(layer)[:2], self.labels))
        found = labels[idx[idx >= 0]]
        if (found < 0).any() or not len(self.class_names):
            raise SketchmineError(f"run {self.path}: {int((found < 0).sum())} top-k images of layer {layer!r} have no "
                                  "label (the dataset has no labels?); class histograms need labelled images")
        counts = np.bincount(found, minlength=len(self.class_names))
        return pd.Series(counts, index=pd.Index(self.class_names, name="class"), name="count")

    def _ranked(self, layer: str) -> pd.DataFrame:
        hist = self.class_histogram(layer).to_frame()
        try:
            hist["accuracy"] = self.class_accuracy()["accuracy"]
        except SketchmineError:
            hist["accuracy"] = np.nan
        hist["order"] = np.arange(len(hist))
        # most frequent first; ties in class order (deterministic)
        return hist.sort_values(["count", "order"], ascending=[False, True], kind="stable").drop(columns="order")

    def top_classes(self, layer: str, n: int = 5) -> pd.DataFrame:
        """The n classes most frequent among the layer's top-k images, with accuracy."""
        return self._ranked(layer).head(check_count(n))

    def bottom_classes(self, layer: str, n: int = 5) -> pd.DataFrame:
        """The n least frequent classes (zero counts included), least frequent last."""
        return self._ranked(layer).tail(check_count(n))

    def unit_importance(self, layer: str) -> pd.DataFrame:
        """Per-unit ablation importance stored by `sketchmine.unit_importance`: columns unit,
        prob_drop, acc_drop, mean_act_correct, mean_act_wrong; most important first."""
        from .importance import read_importance

        return read_importance(self, layer)

    def has_importance(self, layer: str) -> bool:
        """True when `unit_importance(layer)` has a whole stored result to read (a write that
        was interrupted counts as none)."""
        from .importance import has_importance

        return has_importance(self, layer)

    # ---- summaries over all images and per unit: computed in analysis.py ----------------------
    def unit_classes(self, layer: str, unit: int) -> pd.DataFrame:
        """One unit's top-k, best first, with class and class accuracy (the seed's "Classes with performance")."""
        from .analysis import unit_classes
        return unit_classes(self, layer, unit)

    def unit_table(self, layer: str) -> pd.DataFrame:
        """Every unit's top-k as one long table: unit, rank, image_index, value, y, x, label, class, accuracy."""
        from .analysis import unit_table
        return unit_table(self, layer)

    def class_stats(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(class_mean (C, K), class_count (C, K)) of the image maxima over all labelled images."""
        from .analysis import class_stats
        return class_stats(self, layer)

    def selectivity(self, layer: str) -> pd.Series:
        """Class-selectivity index per unit (Morcos et al. 2018)."""
        from .analysis import selectivity
        return selectivity(self, layer)

    def class_preference(self, layer: str) -> pd.DataFrame:
        """The layer's class preference over all images, most preferred first."""
        from .analysis import class_preference
        return class_preference(self, layer)

    def ink_density(self) -> pd.Series:
        """Mean ink density of each class's images."""
        from .analysis import ink_density
        return ink_density(self)

    def ink_correlation(self) -> pd.DataFrame:
        """Per layer: Spearman correlation of class preference with class ink density."""
        from .analysis import ink_correlation
        return ink_correlation(self)


def class_counts(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: images predicted correctly, and images with a prediction and a label
    (pred -1: unreadable or not mined yet; label -1: unknown)."""
    valid = (pred >= 0) & (labels >= 0)
    count = np.bincount(labels[valid], minlength=num_classes)[:num_classes]
    correct = np.bincount(labels[valid & (pred == labels)], minlength=num_classes)[:num_classes]
    return correct.astype(np.int64), count.astype(np.int64)


def check_count(n: int) -> int:
    """A number of rows asked for: at least 1 (pandas would read 0 and -1 as "none" and "all but one")."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SketchmineError(f"n must be a whole number of at least 1, got {n!r}")
    return int(n)


def open_run(path: str | os.PathLike) -> Run:
    """Open a run directory for reading."""
    return Run(RunStore.open(path, mode="r"))
