"""A mined run read back from its store: top-k per layer, labels, accuracy, the seed's class summaries.

`Run` is the readers' only door to the store: every array and attribute is read through its accessors
(paths from schema.py, names checked by checks.py, reads verified by RunStore), so presentation code
never spells a store path. The summaries are computed by summaries.py from the arrays read here."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError, closest, unless_damaged
from sketchmine.results import summaries
from sketchmine.results.correlations import ClassCorrelations
from sketchmine.results.checks import (absent_read, check_array_name, check_count, check_dataset_array_name,
                                       check_result_name, check_rows)
from sketchmine.results.notebook import UnitCard, run_html, run_repr
from sketchmine.results.precision import Precision
from sketchmine.results.unit_views import UnitViews
from sketchmine.stats import topk
from sketchmine.stats.classstats import RunningClassStats, num_classes_for, restore
from sketchmine.store import schema
from sketchmine.store.runstore import RunStore

__all__ = ["Run", "open_run"]

T = TypeVar("T")


class Run(UnitViews, ClassCorrelations, Precision):
    """Read access to one run directory (complete or, clearly labelled, partial)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._fixed: dict[Any, Any] = {}

    def once(self, key: Any, compute: Callable[[], T]) -> T:
        """`compute()`, read once per Run: for what mining fixed for good (a layer's shape, which
        layer computes the logits), which no later pass or commit changes. The report asked
        for the logits layer once per slide, each time opening every layer's attributes."""
        if key not in self._fixed:
            self._fixed[key] = compute()
        return self._fixed[key]

    @property
    def path(self) -> os.PathLike:
        return self.store.path

    @property
    def attrs(self) -> dict[str, Any]:
        return self.store.attrs

    @property
    def layers(self) -> list[str]:
        """Mined layer names, in forward order."""
        return list(self.attrs[schema.LAYER_NAMES])

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
        names = [str(s) for s in self.store.read(schema.CLASS_NAMES)]
        n = self.attrs.get("num_classes") or 0
        return names or [str(i) for i in range(n)]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 label per image; -1 where not yet known."""
        return self.store.read(schema.LABELS)

    @property
    def paths(self) -> np.ndarray:
        return self.store.read(schema.PATHS)

    def image_path(self, i: int) -> str:
        """The path (or dataset-relative name) of global image `i`, as recorded in dataset/paths."""
        n = self.store.shape(schema.PATHS)[0]
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise SketchmineError(f"image index should be an integer from 0 to {n - 1}, got {i!r}")
        if not 0 <= int(i) < n:
            raise SketchmineError(f"image {int(i)} is not in run {self.path}: its images are numbered 0 to {n - 1}")
        return str(self.store.read(schema.PATHS, slice(int(i), int(i) + 1))[0])

    def layer_shape(self, layer: str) -> tuple[int, ...]:
        return self.once(("shape", layer), lambda: tuple(self.layer_attrs(layer)["shape"]))

    def layer_group(self, layer: str) -> Any:
        """The layer's Zarr group, its attributes checked: direct Zarr access for a user who wants
        the raw group (sketchmine's own readers use `layer_attrs` / `layer_array` / `has_array`)."""
        self.layer_attrs(layer)
        return self.store.layer_group(layer)

    def layer_attrs(self, layer: str) -> dict[str, Any]:
        """The layer's attributes (shape, kind, receptive_field, visualized, ...), checked: a
        damaged run is refused clearly."""
        return self.store.layer_attrs(self.check_layer(layer))

    def has_array(self, layer: str, name: str) -> bool:
        """True when the layer holds array `name` (class_mean, nan_count, patches, ...). A partial
        run holds none: its results are its checkpoint's, and the arrays its final write laid
        down before a kill (or before the commit that completes the run) are not committed."""
        name = schema.layer_array(self.check_layer(layer), check_array_name(name))
        return self.complete and self.store.has(name)

    def layer_array(self, layer: str, name: str, rows: slice | None = None) -> np.ndarray:
        """Array `name` of the layer (rows `rows` of its first axis, or all), verified against
        the run's checksums where it has them; read as `committed` reads (a later pass's rewrite
        of a layer's pictures during the read is read again, not called damage)."""
        name = schema.layer_array(self.check_layer(layer), check_array_name(name))
        rows = check_rows(rows)
        return absent_read(self, name, lambda: self.store.committed(lambda: self.store.read(name, rows)))

    def array_shape(self, layer: str, name: str) -> tuple[int, ...]:
        name = schema.layer_array(self.check_layer(layer), check_array_name(name))
        return absent_read(self, name, lambda: self.store.shape(name))

    def layer_result(self, layer: str, name: str, keys: tuple[str, ...]
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """(arrays `keys`, attributes) of a later pass's result on the layer (importance, traces),
        or None when there is no whole one (read keys of different shapes one call each)."""
        return self.store.read_group(schema.layer_result(self.check_layer(layer), check_result_name(name)), keys)

    def has_dataset_array(self, name: str) -> bool:
        return self.store.has(schema.dataset_array(check_dataset_array_name(name)))

    def dataset_array(self, name: str) -> np.ndarray:
        """A per-dataset array, e.g. "class_ink_density" (verified)."""
        path = schema.dataset_array(check_dataset_array_name(name))
        return absent_read(self, path, lambda: self.store.read(path))

    def eval_attrs(self) -> dict[str, Any]:
        """Attributes of eval/ (accuracy)."""
        return self.store.group_attrs(schema.EVAL)

    def has_predictions(self) -> bool:
        return self.store.has(schema.PREDICTIONS)

    def check_layer(self, layer: str) -> str:
        """`layer` when it names a mined layer; else a clear error with the closest names (also
        what keeps a layer name from reaching outside the store as a path)."""
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
        self.layer_attrs(layer)
        return self.store.committed(lambda: self._topk(layer))

    def _topk(self, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.complete:
            values, index, yx = (self.store.read(schema.layer_array(layer, key)) for key in ("values", "image_index", "yx"))
            return values, index, yx
        s = self._checkpoint_topk(layer)
        idx = s["index"]
        return s["shown"], idx, topk.flat_to_yx(s["position"], idx, self.layer_shape(layer)[1:])

    def _checkpoint_topk(self, layer: str) -> dict[str, np.ndarray]:
        """A partial run's top-k state of `layer` in its last committed checkpoint (topk.unpack)."""
        state = self.store.read_checkpoint_state(topk.KEY)
        if state is None:
            raise SketchmineError(f"run {self.path} has no results for {layer!r} yet: {summaries.not_yet(self)}")
        try:
            return topk.unpack(state, self.layers)[layer]
        except (ValueError, KeyError) as exc:
            raise SketchmineError(f"{self.path}: the top-k in its checkpoint does not fit the run ({exc})") from None

    def class_accuracy(self) -> pd.DataFrame:
        """Per-class accuracy: columns accuracy (fraction), correct, count. For an unfinished run it
        covers the images mined so far (check `Run.complete`)."""
        return self.store.committed(self._class_accuracy)

    def _class_accuracy(self) -> pd.DataFrame:
        if self.store.attrs.get("logits", True) is False:
            raise SketchmineError(f"run {self.path} was mined with logits=False (--no-logits): the forward pass "
                                  "stopped after the deepest mined layer, so it has no predictions or accuracy")
        if not self.has_predictions():
            raise SketchmineError(f"run {self.path} has no predictions yet (the model output is not (N, classes) "
                                  "logits, or nothing was flushed)")
        pred = self.store.read(schema.PREDICTIONS)
        return summaries.accuracy_table(np.where(np.arange(len(pred)) < self.images_done, pred, -1), self.labels,
                                        self.class_names)

    def accuracy(self) -> float | None:
        """Overall accuracy over all readable images (None until the run is complete: the final
        write records it just before the commit that completes the run)."""
        return self.eval_attrs().get(schema.ACCURACY) if self.complete else None

    def has_labels(self) -> bool:
        """True when some image of the run has a known label (class histograms need one)."""
        return bool(len(self.class_names)) and bool((self.labels >= 0).any())

    def class_histogram(self, layer: str, per_image: bool = False) -> pd.Series:
        """Counts of each class among the top-k images of all units of `layer` (all classes); with
        `per_image`, each divided by the class's labelled images (`class_sizes`; NaN for a class
        without any): raw counts favour larger classes when the classes differ in size.

        Only labelled images count: a dataset may leave some images unlabelled (-1), and one of
        them among the top-k must not hide the other entries' classes. attrs["unlabelled"]: the
        top-k entries left out for that. A run with no labels at all is refused."""
        _, idx, labels = self.store.committed(lambda: (*self.topk(layer)[:2], self.labels))
        found = labels[idx[idx >= 0]]
        if not len(self.class_names) or not (labels >= 0).any():
            raise SketchmineError(summaries.no_histogram(self, layer, len(found)))
        known = found[(found >= 0) & (found < len(self.class_names))]
        counts = np.bincount(known, minlength=len(self.class_names))
        hist = pd.Series(counts, index=pd.Index(self.class_names, name="class"), name="count")
        if per_image:
            sizes = self.class_sizes().to_numpy()
            hist = (hist / np.where(sizes > 0, sizes, np.nan)).rename("per_image")
        hist.attrs["unlabelled"] = int(len(found) - len(known))
        return hist

    def class_sizes(self) -> pd.Series:
        """Labelled images per class that the layers saw: dataset/class_image_count, else (a
        partial run, or one mined before it was kept) the labels of the readable images mined so far."""
        return self.store.committed(self._class_sizes)

    def _class_sizes(self) -> pd.Series:
        if self.complete and self.has_dataset_array("class_image_count"):
            sizes = self.dataset_array("class_image_count")
        else:  # the images mined so far, less the unreadable ones (skipped: in no statistic, as in class_image_count)
            labels = self.labels[:self.images_done].copy()
            labels[[b["index"] for b in self.attrs.get("bad_images") or [] if b["index"] < len(labels)]] = -1
            sizes = np.bincount(labels[labels >= 0], minlength=len(self.class_names))
        return pd.Series(sizes[:len(self.class_names)], index=pd.Index(self.class_names, name="class"), name="images")

    def _ranked(self, layer: str) -> pd.DataFrame:
        """`summaries.ranked_classes` of the layer's class histogram, over the classes that have
        images (mined images: a partial run's unmined classes are "no_images", not ranked at 0)."""
        def read() -> pd.DataFrame:  # the sizes, counts and accuracy of one commit
            sizes = self.class_sizes().to_numpy()  # a partial run's: the images mined so far
            return summaries.ranked_classes(self.class_histogram(layer), self.class_accuracy_series().to_numpy(),
                                            sizes, sizes > 0)
        return self.store.committed(read)

    def top_classes(self, layer: str, n: int = 5) -> pd.DataFrame:
        """The n classes most frequent among the layer's top-k images (raw counts), with accuracy and
        per_image. attrs: "unlabelled" (top-k entries without a label), "no_images" (classes left
        out), and where the cut falls (`summaries.cut_at`): "cut_count", "tied_out" (classes left
        out with the count at the cut: ties are listed in class order) and "all_tied"."""
        return summaries.cut_at(self._ranked(layer), check_count(n), top=True)

    def bottom_classes(self, layer: str, n: int = 5) -> pd.DataFrame:
        """The n least frequent classes among those with images in the run (zero counts
        included), least frequent last; attrs as `top_classes` (the cut is the first row)."""
        return summaries.cut_at(self._ranked(layer), check_count(n), top=False)

    # ---- summaries over all images and per unit: summaries.py over this run's arrays ----------
    def class_accuracy_series(self) -> pd.Series:
        """Per-class accuracy (fraction) by class name; NaN when the run has no predictions."""
        try:
            return self.class_accuracy()["accuracy"]
        except SketchmineError as exc:
            unless_damaged(exc)  # damaged predictions or labels are an error, not "no accuracy"
            return pd.Series(np.nan, index=pd.Index(self.class_names, name="class"), name="accuracy")

    def unit_table(self, layer: str) -> pd.DataFrame:
        """Every unit's top-k as one long table: unit, rank, image_index, value, y, x, (step, where the
        layer's position is time: 0-based, as `x` or `y` holds it), label, class, accuracy, path
        (the image's file, or its name in the dataset, as `image_path` gives it). One commit's."""
        return self.store.committed(lambda: self._unit_table(layer))

    def _unit_table(self, layer: str) -> pd.DataFrame:
        values, index, yx = self.topk(layer)
        steps = summaries.entry_steps(self.layer_attrs(layer), yx)
        df = summaries.unit_rows(values, index, yx, self.labels, self.class_names,
                                 self.class_accuracy_series().to_numpy(), None if steps is None else steps[0])
        df["path"] = self.paths[df["image_index"].to_numpy()] if len(df) else np.zeros(0, dtype=object)
        df.attrs["partial"] = not self.complete
        return df

    def check_unit(self, layer: str, unit: Any) -> int:
        """`unit` as an int when it is a unit of `layer`; else a clear error. One check for every
        reader taking a unit: a float (1.5, 2.7), a bool or a string is refused, not truncated,
        compared or matched to no row; numpy integers are fine."""
        return unit_of(self, layer, unit, int(self.layer_shape(layer)[0]))

    def unit_classes(self, layer: str, unit: int) -> pd.DataFrame:
        """One unit's top-k, best first, with class, class accuracy, value and image path (the
        seed's "Classes with performance")."""
        unit = self.check_unit(layer, unit)
        df = self.unit_table(layer)
        return df[df["unit"] == unit].drop(columns="unit").set_index("rank")

    def class_stats(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(class_mean (C, K) float64, class_count (C, K) int64) of the image maxima over all
        labelled images. A partial run reads its last committed checkpoint (another process may
        be mining it: see RunStore.committed)."""
        self.check_layer(layer)
        return self.store.committed(lambda: self._class_stats(layer))

    def _class_stats(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        if self.has_array(layer, "class_mean"):  # a complete run's final arrays, checked against the checksums
            return self.layer_array(layer, "class_mean"), self.layer_array(layer, "class_count")
        stats = self._checkpoint_stats()
        if stats is None:
            raise SketchmineError(f"run {self.path} has no class statistics for {layer!r}: " + summaries.no_classes(
                self, "the dataset has no labels, or the run was mined before sketchmine kept them (mine it again)"))
        return stats.results(layer)

    def _checkpoint_stats(self) -> RunningClassStats | None:
        if self.complete:
            return None
        k = num_classes_for(self.class_names, self.attrs.get("num_classes"))
        if k == 0:
            return None
        stats = RunningClassStats({l: self.layer_shape(l)[0] for l in self.layers}, k)
        return stats if restore(self.store, stats) else None

    def selectivity(self, layer: str) -> pd.Series:
        """Class-selectivity index per unit (Morcos et al. 2018) of its class means of image maxima;
        NaN where it does not apply (a negative class mean: the tap is before its ReLU), see
        `summaries.selectivity_index`. attrs["partial"]: over the images mined so far, as
        `class_preference` says."""
        def read() -> pd.Series:
            si = summaries.selectivity_index(self.class_stats(layer)[0])
            si.attrs["partial"] = not self.complete
            return si
        return self.store.committed(read)

    def class_preference(self, layer: str) -> pd.DataFrame:
        """The layer's class preference over ALL images, per class, most preferred first: the mean
        over units of the unit's z-scored class means (why this measure: `summaries.preference`);
        columns preference, units_preferring, accuracy, label; attrs units, no_images, partial."""
        def read() -> pd.DataFrame:  # the statistics, accuracy and state of one commit
            mean, count = self.class_stats(layer)
            df = summaries.preference(mean, self.class_accuracy_series().to_numpy(), self.class_names, count)
            df.attrs["partial"] = not self.complete
            return df
        return self.store.committed(read)

    def has_class_stats(self) -> bool:
        """True when the unbiased statistics can be read (final arrays or a partial checkpoint)."""
        try:
            return self.class_stats(self.layers[0]) is not None  # (a tuple: True)
        except SketchmineError as exc:
            unless_damaged(exc)
            return False

    # ---- notebooks: results/notebook.py ---------------------------------------------------------
    def unit(self, layer: str, unit: int) -> UnitCard:
        """One unit's card: top-k images, top classes, patches and their --method's signal (inline in a notebook)."""
        return UnitCard(self, layer, unit)

    def __repr__(self) -> str:
        return run_repr(self)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """A run goes to another process (a pool's worker, joblib, dask) or a deep copy as its
        path, opened there for reading: a handle holds locks and caches that stay with it."""
        return open_run, (os.fspath(self.path),)

    def _repr_html_(self) -> str:
        return run_html(self)


def open_run(path: str | os.PathLike) -> Run:
    """Open a run directory for reading."""
    return Run(RunStore.open(path, mode="r"))


def unit_of(run: Run, layer: str, unit: Any, units: int) -> int:
    """`Run.check_unit` for a reader that holds the layer's unit count already (a dashboard asks
    for each of thousands of units; the count is read once)."""
    if isinstance(unit, (bool, np.bool_)) or not isinstance(unit, (int, np.integer)) or not 0 <= int(unit) < units:
        raise SketchmineError(f"unit {unit!r} is not in layer {layer!r} of run {run.path}: its units are "
                              f"0 to {units - 1} (integers)")
    return int(unit)
