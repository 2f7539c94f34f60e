"""One unit's dashboard, read from a run: its maximum, distribution (histogram, quantiles,
firing density, mean), examples at every level (top-k, bottom-k, images per activation bin),
the classes it prefers and pushes, the units it moves with, and its importance.

`LayerSummary(run, layer)` reads the layer's arrays once and answers `unit(u)` with a
JSON-ready dict (floats, ints, strings, None; never NaN), which the console (`sketchmine
unit`), the report's unit dashboard and the montage all show. A section whose data the run
lacks (a run mined before the distribution sketch, no `effects` pass, no labels) is None, and
`missing[section]` says why and how to add it: nothing raises for missing data. Only a layer
the run does not have or a unit outside it is an error."""
from __future__ import annotations

from typing import Any

import numpy as np

from sketchmine.errors import SketchmineError, unless_damaged
from sketchmine.names import command, layer_arg
from sketchmine.stats import moments
from sketchmine.results.distribution import layer_arrays, quantile_bounds, without
from sketchmine.results.effects import missing_note, not_ablatable, uncorrelated_notes
from sketchmine.results import importance_store
from sketchmine.results.numbers import column
from sketchmine.results.run import Run, unit_of
from sketchmine.results.summaries import entry_steps, no_classes

QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
"""The quantiles the dashboard lists (0 and 1: the sketch's minimum and maximum)."""
CLASSES_SHOWN = 5
"""Classes listed per side (preferred, pushed up, pushed down)."""

SECTIONS = ("bottom", "moments", "quantiles", "histogram", "bins", "class_means", "effects", "correlated",
            "importance", "classes_top")

_MINE_AGAIN = "mine the run again into a new --out (with --distributions for the histogram, quantiles, bins, bottom-k)"


def pictures_current(pictures: dict[str, Any], visualized: dict[str, Any] | None) -> bool:
    """Whether a layer's bottom-k / bin pictures (their group's attrs) were made with the settings
    of its top-k pictures (`visualized`): a `visualize --redo` with another method or patch size
    replaces the top-k pictures only, and the older example pictures must not be shown beside them."""
    if not visualized:
        return False
    return (pictures.get("method") == visualized.get("method")
            and list(pictures.get("patch_size") or []) == list(visualized.get("patch_size") or []))


def num(v: Any) -> float | None:
    """A float for JSON: None for NaN and the infinities."""
    f = float(v)
    return f if np.isfinite(f) else None


def infinite(v: Any) -> str | None:
    """"inf" / "-inf" for an infinite value, else None (NaN stays "no value")."""
    f = float(v)
    return ("inf" if f > 0 else "-inf") if np.isinf(f) else None


def _reader(run: Run, method: str, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """(result, None), or (None, why) when the run lacks that data (its reader raises a
    SketchmineError)."""
    fn = getattr(run, method)
    try:
        return fn(*args, **kwargs), None
    except SketchmineError as exc:
        unless_damaged(exc)  # a damaged run is an error, not a section shown as missing
        return None, str(exc)


class LayerSummary:
    """A layer's dashboard data, read once; `unit(u)` gives one unit's."""

    def __init__(self, run: Run, layer: str, quantiles: tuple[float, ...] = QUANTILES) -> None:
        self.run, self.layer = run, run.check_layer(layer)
        self.attrs = run.layer_attrs(layer)
        self.units = int(self.attrs["shape"][0])
        self.missing: dict[str, str] = {}
        self.names = run.class_names
        self.labels = run.labels
        self.paths = run.paths
        self.precision = run.precision  # what the values were computed in ("float32", "bfloat16 autocast")
        acc, why = _reader(run, "class_accuracy")
        self.acc = acc["accuracy"].to_numpy() if acc is not None else np.full(len(self.names), np.nan)
        self.top = run.topk(layer)
        self.bottom = self._get("bottom", "bottomk", layer)
        self.quantiles = tuple(float(q) for q in quantiles)
        self.q_values = self._get("quantiles", "quantiles", layer, np.asarray(self.quantiles))
        # where an estimate falls below the sketch's resolution, only a bound holds (a softmax
        # quantile of 1e-16 reads as 1.6e-5): every view shows those as "< bound"
        self.q_bounds = None if self.q_values is None else quantile_bounds(run, layer, np.asarray(self.quantiles))
        self.hist = self._get("histogram", "histogram", layer)
        self.bins = self._get("bins", "quantile_examples", layer)
        self.bin_edges = self._get("bins", "example_edges", layer) if self.bins is not None else None
        self.effects = self._get("effects", "unit_effects", layer)
        self.correlated = self._get("correlated", "correlated_units", layer)
        self.uncorrelated = uncorrelated_notes(run, layer) if self.correlated is not None else {}
        self.moments = self._moments()
        self.class_means = self._get("class_means", "class_stats", layer)
        if run.has_importance(layer):
            df = run.unit_importance(layer)
            ranked = importance_store.ranks(df)
            self.importance: dict[int, dict[str, Any]] | None = {
                int(r["unit"]): {**ranked[int(r["unit"])], **{c: num(r[c]) for c in df.columns if c != "unit"}}
                for _, r in df.iterrows()}
        else:
            self.importance = None
            blocked = not_ablatable(run, layer)  # not `why`: that one says why the class accuracy is missing
            self.missing["importance"] = (f"run {run.path} has no unit importance for {layer!r}" + (
                f": {blocked}" if blocked else f"; compute it with `{command('sketchmine', 'importance', run.path, '--layers', layer_arg([layer]))}` "
                "(or sketchmine.unit_importance)"))
        if "effects" in self.missing and "correlated" in self.missing:  # one pass computes both: one note
            self.missing["effects"] = self.missing["correlated"] = missing_note(run, layer)
        if run.complete and run.attrs.get("distributions") is False:  # one reason and one remedy for the four
            self.missing.update({k: f"run {run.path} {without(run)}"
                                 for k in ("bottom", "quantiles", "histogram", "bins") if k in self.missing})
        if not run.has_labels():
            self.missing["classes_top"] = (no_classes(run) + (f": {why}" if why else "")
                                           + "; the classes of the top images need labelled images")

    def _get(self, section: str, method: str, *args: Any) -> Any:
        value, why = _reader(self.run, method, *args)
        if why is not None:
            self.missing[section] = why
        return value

    def _moments(self) -> dict[str, np.ndarray] | None:
        """Image count, mean of maxima and firing count per unit: the final arrays of a complete
        run, else rebuilt from an unfinished one's checkpoint (with its counts so far, which the
        dashboard shows beside the density as for a complete run)."""
        names = ("max_count", "max_mean", "firing")
        try:
            return dict(zip(names, layer_arrays(self.run, self.layer, moments.KEY, names, "unit moments")))
        except SketchmineError as exc:
            unless_damaged(exc)  # a damaged run is an error, not a section shown as missing
            why = str(exc)
        self.missing["moments"] = (f"run {self.run.path} has no firing density or mean for {self.layer!r} "
                                   f"({why or 'mined before sketchmine kept them'}): {_MINE_AGAIN}")
        return None

    def check_unit(self, unit: Any) -> int:
        return unit_of(self.run, self.layer, unit, self.units)

    def image(self, i: int) -> dict[str, Any]:
        """One image of the run: image_index, path, class and label (None when unlabelled), that
        class's accuracy; named as the DataFrames name them (`Run.unit_classes`)."""
        lab = int(self.labels[i])
        ok = 0 <= lab < len(self.names)
        return {"image_index": int(i), "path": str(self.paths[i]), "class": self.names[lab] if ok else None,
                "label": lab if ok else None, "accuracy": num(self.acc[lab]) if ok else None}

    def _entries(self, ranked: tuple[np.ndarray, np.ndarray, np.ndarray], u: int) -> list[dict[str, Any]]:
        values, index, yx = ranked
        steps = entry_steps(self.attrs, yx[u:u + 1])  # a layer over time: each entry's step, 0-based
        return [{"rank": int(r), **self.image(int(index[u, r])), "value": num(values[u, r]),
                 "y": int(yx[u, r, 0]), "x": int(yx[u, r, -1]),
                 **({"step": int(steps[0][0, r]), "steps": steps[1]} if steps else {})}
                for r in range(index.shape[1]) if index[u, r] >= 0]

    def unit(self, unit: Any, infinities: bool = False, infinite_bins: bool = True) -> dict[str, Any]:
        """Unit `unit`'s dashboard as a JSON-ready dict (see the module docstring). With
        `infinities`, for text: a value that is +inf / -inf (a unit that overflowed) is the string
        "inf" / "-inf" instead of None, which says "no value" (top and bottom values, the
        maximum, the quantiles, the mean, the class means and, unless `infinite_bins` is False,
        the bins' bounds: the report's dashboard places bins on its axis and skips unbounded ones)."""
        out = self._unit(self.check_unit(unit))
        return self._infinities(out, infinite_bins) if infinities else out

    def _infinities(self, d: dict[str, Any], bins: bool) -> dict[str, Any]:
        u = d["unit"]
        for key, ranked in (("top", self.top), ("bottom", self.bottom)):
            for e in d.get(key) or []:
                e["value"] = e["value"] if e["value"] is not None else infinite(ranked[0][u, e["rank"]])
        d["max"] = d["top"][0]["value"] if d["top"] else None
        if d["quantiles"] is not None:
            d["quantiles"]["values"] = [v if v is not None else infinite(x)
                                        for v, x in zip(d["quantiles"]["values"], np.asarray(self.q_values)[u])]
        m = d["moments"]
        if m is not None and m["mean"] is None and self.moments is not None:
            m["mean"] = infinite(self.moments["max_mean"][u])
        if d["class_means"] is not None and self.class_means is not None:
            row = np.asarray(self.class_means[0][u], dtype=np.float64)
            for c in d["class_means"]:
                if c["mean"] is None:
                    c["mean"] = infinite(row[c["label"]])
        if bins and d["bins"] is not None and self.bin_edges is not None:
            edges = np.asarray(self.bin_edges)[u]
            for b in d["bins"]:
                b["lo"] = b["lo"] if b["lo"] is not None else infinite(edges[b["bin"]])
                b["hi"] = b["hi"] if b["hi"] is not None else infinite(edges[b["bin"] + 1])
        return d

    def _unit(self, u: int) -> dict[str, Any]:
        run = self.run
        top = self._entries(self.top, u)
        rf = self.attrs.get("receptive_field")
        out: dict[str, Any] = {
            "layer": self.layer, "unit": u, "units": self.units, "kind": str(self.attrs.get("kind", "")),
            "shape": [int(s) for s in self.attrs["shape"]], "images": run.images_done, "complete": run.complete,
            "precision": self.precision, "k": run.k, "receptive_field": list(rf["size"]) if rf and rf.get("size") else None,
            "receptive_field_varies": bool(rf and rf.get("spans")),  # behind an upsampling: the largest box, "up to"
            "max": top[0]["value"] if top else None, "top": top,
            "bottom": self._entries(self.bottom, u) if self.bottom is not None else None,
            "classes_top": self._classes_top(top),
            "classes_top_unlabelled": sum(e["class"] is None for e in top), "moments": self._unit_moments(u),
            "quantiles": None if self.q_values is None else self._quantiles(u),
            "histogram": None if self.hist is None else
            {"edges": [num(v) for v in self.hist[0][u]], "counts": [int(c) for c in self.hist[1][u]]},
            "bins": self._bins(u), "class_means": self._class_means(u), "effects": self._effects(u),
            "correlated": self._correlated(u), "correlated_none": self.uncorrelated.get(u),  # why the list is empty
            "importance": None if self.importance is None else self.importance.get(u),
        }
        out["missing"] = {s: why for s, why in self.missing.items() if out.get(s) is None}
        if self.importance is not None and out["importance"] is None:
            out["missing"]["importance"] = "this unit is not in the stored importance result"
        return out

    def _quantiles(self, u: int) -> dict[str, Any]:
        """q, the estimates, and per quantile its bound (None where the estimate is 1/65-accurate;
        else x < bound, or x > bound when negative) and the sketch's floor per sign."""
        b = self.q_bounds
        assert b is not None
        return {"q": list(self.quantiles), "values": [num(v) for v in np.asarray(self.q_values)[u]],
                "bound": [float(x) if c else None for c, x in zip(b.coarse[u], b.bound[u])],
                "floor": [float(f) for f in b.floor[u]]}

    def _classes_top(self, top: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The classes among the unit's labelled top-k images, most frequent first (ties in class
        order), with each class's accuracy: the seed's "classes with performance". Unlabelled
        images are left out (counted in "classes_top_unlabelled"); None when the run has no labels."""
        if not top or "classes_top" in self.missing:
            return None
        labels = [e["label"] for e in top if e["label"] is not None]  # by position: a name may repeat
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(self.names))
        order = sorted(set(labels), key=lambda c: (-counts[c], c))
        return [{"class": self.names[c], "label": c, "count": int(counts[c]), "accuracy": num(self.acc[c])} for c in order]

    def _unit_moments(self, u: int) -> dict[str, Any] | None:
        m = self.moments
        if m is None:
            return None
        n, fired = int(m["max_count"][u]), int(m["firing"][u])
        return {"images": n, "firing": fired, "density": fired / n if n else None, "mean": num(m["max_mean"][u])}

    def _bins(self, u: int) -> list[dict[str, Any]] | None:
        """Examples per activation bin: `Run.quantile_examples` (C, bins, m) image indices (-1:
        none) within the bins `Run.example_edges` (C, bins + 1) bound, lowest bin first."""
        if self.bins is None:
            return None
        index = np.asarray(self.bins)
        edges = None if self.bin_edges is None else np.asarray(self.bin_edges)[u]
        return [{"bin": b, "lo": None if edges is None else num(edges[b]),
                 "hi": None if edges is None else num(edges[b + 1]),
                 "examples": [{**self.image(int(i)), "slot": j} for j, i in enumerate(index[u, b]) if i >= 0]}
                for b in range(index.shape[1])]

    def _class_means(self, u: int) -> list[dict[str, Any]] | None:
        """Classes by the unit's mean image maximum over all their images, highest first; a class
        none of whose maps held a number (NaN mean) is no preference and is left out."""
        if self.class_means is None:
            return None
        mean, count = self.class_means
        row = np.asarray(mean[u], dtype=np.float64)
        ranked = np.argsort(-np.nan_to_num(row, nan=-np.inf), kind="stable")
        order = [int(c) for c in ranked if not np.isnan(row[c])][:CLASSES_SHOWN]
        return [{"class": self.names[c], "label": c, "mean": num(row[c]), "images": int(count[u, c]),
                 "accuracy": num(self.acc[c])} for c in order if c < len(self.names)]

    def _effects(self, u: int) -> dict[str, Any] | None:
        """The classes the unit pushes up and down most. `Run.unit_effects` stores ablated minus
        clean (the change when the unit is zeroed); the unit's own effect is its negative:
        positive when the unit raises the class."""
        if self.effects is None:
            return None
        df = self.effects
        row = df.loc[u] if u in df.index else df.iloc[u]
        vals = -row.to_numpy(dtype=np.float64)
        cls = [str(c) for c in row.index]
        up = [int(i) for i in np.argsort(-np.nan_to_num(vals, nan=-np.inf), kind="stable")[:CLASSES_SHOWN]]
        down = [int(i) for i in np.argsort(np.nan_to_num(vals, nan=np.inf), kind="stable")[:CLASSES_SHOWN]]
        return {"kind": str(df.attrs.get("kind", "prob")),
                "up": [{"class": cls[i], "effect": num(vals[i])} for i in up if np.isfinite(vals[i]) and vals[i] > 0],
                "down": [{"class": cls[i], "effect": num(vals[i])} for i in down
                         if np.isfinite(vals[i]) and vals[i] < 0]}

    def _correlated(self, u: int) -> list[dict[str, Any]] | None:
        if self.correlated is None:
            return None
        units, r = self.correlated
        return [{"unit": int(v), "r": num(c)} for v, c in zip(np.asarray(units)[u], np.asarray(r)[u]) if v >= 0]


def unit_summary(run: Run, layer: str, unit: int) -> dict[str, Any]:
    """One unit's dashboard (`LayerSummary(run, layer).unit(unit)`)."""
    return LayerSummary(run, layer).unit(unit)


def activation_text(d: dict[str, Any]) -> dict[str, list[str]]:
    """Every activation of a `LayerSummary.unit` dict that its dashboard shows, written as one
    column (`numbers.column`): "max", "mean" (of the image maxima), "quantiles", the "top" and
    "bottom" images' values and the "class_means". They are values of one quantity in one view,
    and some are one number: the least-activating image's value is the 0 % quantile ("-0.025"
    beside "-0.02454" when each part had its own decimals). As the dashboard's unit.js writes them."""
    parts = {"max": [d["max"]], "mean": [d["moments"]["mean"] if d.get("moments") is not None else None],
             "quantiles": d["quantiles"]["values"] if d.get("quantiles") is not None else [],
             "top": [e["value"] for e in d.get("top") or []], "bottom": [e["value"] for e in d.get("bottom") or []],
             "class_means": [c["mean"] for c in d.get("class_means") or []]}
    written = iter(column([v for values in parts.values() for v in values]))
    return {key: [next(written) for _ in values] for key, values in parts.items()}


def maxima_text(d: dict[str, Any]) -> list[str]:
    """A `LayerSummary.unit` dict's maximum, mean of the image maxima and quantiles, as its
    dashboard and `sketchmine unit` write them (`activation_text`); the slide writes its mean so
    too ("1.986" in each, not "1.99" on the slide)."""
    t = activation_text(d)
    return [*t["max"], *t["mean"], *t["quantiles"]]
