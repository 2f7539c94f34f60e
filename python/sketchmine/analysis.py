"""Class summaries of a run: per-unit class lists, unbiased class preferences, class
selectivity, ink density and its correlation with what a layer prefers.

Reads only what the run store holds (data flows store → analysis → report). The `Run`
methods of the same names are thin wrappers over these functions.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .classstats import RunningClassStats, num_classes_for, restore
from .errors import SketchmineError
from .run import Run


def _accuracy(run: Run) -> pd.Series:
    """Per-class accuracy (fraction) by class name; NaN when the run has no predictions."""
    try:
        return run.class_accuracy()["accuracy"]
    except SketchmineError:
        return pd.Series(np.nan, index=pd.Index(run.class_names, name="class"), name="accuracy")


def unit_table(run: Run, layer: str) -> pd.DataFrame:
    """One row per (unit, rank) of the layer's top-k, best first: image, value, (y, x), label,
    class and that class's accuracy. Empty slots (fewer images than k) are left out."""
    values, index, yx = run.topk(layer)
    c, k = index.shape
    unit, rank = np.meshgrid(np.arange(c), np.arange(k), indexing="ij")
    keep = index.ravel() >= 0
    img = index.ravel()[keep]
    labels = run.labels[img] if len(img) else np.zeros(0, np.int64)
    names = np.array(run.class_names + [""], dtype=object)
    known = (labels >= 0) & (labels < len(names) - 1)
    acc = _accuracy(run).to_numpy()
    df = pd.DataFrame({
        "unit": unit.ravel()[keep], "rank": rank.ravel()[keep], "image_index": img,
        "value": values.ravel()[keep], "y": yx[..., 0].ravel()[keep], "x": yx[..., 1].ravel()[keep],
        "label": labels, "class": np.where(known, names[np.where(known, labels, -1)], None),
        "accuracy": np.where(known, acc[np.where(known, labels, 0)] if len(acc) else np.nan, np.nan),
    })
    df.attrs["partial"] = not run.complete
    return df


def unit_classes(run: Run, layer: str, unit: int) -> pd.DataFrame:
    """The seed's "Classes with performance" for one unit: its top-k images, best first, with
    class, class accuracy, activation value and image path."""
    c = run.layer_shape(layer)[0]
    if not 0 <= unit < c:
        raise SketchmineError(f"unit {unit} is not in layer {layer!r} of run {run.path}: it has units 0..{c - 1}")
    df = unit_table(run, layer)
    df = df[df["unit"] == unit].drop(columns="unit").set_index("rank")
    df["path"] = run.paths[df["image_index"].to_numpy()] if len(df) else []
    return df


def performance_line(df: pd.DataFrame) -> str:
    """'zebra 92.86 mouse 71.43 …' from `unit_classes` (accuracy in percent, '-' unknown)."""
    return " ".join(f"{c if c is not None else '?'} {'-' if np.isnan(a) else f'{a * 100:.2f}'}"
                    for c, a in zip(df["class"], df["accuracy"]))


# ---- unbiased statistics (all images) --------------------------------------------------------
def class_stats(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(class_mean (C, K) float64, class_count (C, K) int64) over all labelled images: the mean
    image-level maximum of each unit per class. A partial run reads its last committed
    checkpoint (another process may be mining it: see RunStore.committed)."""
    run._check_layer(layer)
    return run.store.committed(lambda: _class_stats(run, layer))


def _class_stats(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray]:
    g = run.store.group[f"layers/{layer}"]
    if run.complete and "class_mean" in g:  # final arrays, checked against the run's checksums
        return run.store.read(f"layers/{layer}/class_mean"), run.store.read(f"layers/{layer}/class_count")
    stats = _checkpoint_stats(run)
    if stats is None:
        raise SketchmineError(f"run {run.path} has no class statistics for {layer!r}: the dataset has no labels, "
                              "or the run was mined before sketchmine kept them (mine it again)")
    return stats.results(layer)


def _checkpoint_stats(run: Run):
    if run.complete:
        return None
    k = num_classes_for(run.class_names, run.attrs.get("num_classes"))
    if k == 0:
        return None
    stats = RunningClassStats({l: run.layer_shape(l)[0] for l in run.layers}, k)
    return stats if restore(run.store, stats) else None


def selectivity(run: Run, layer: str) -> pd.Series:
    """Class-selectivity index per unit (Morcos et al. 2018, "On the importance of single
    directions for generalization"): (mu_max - mu_rest) / (mu_max + mu_rest), mu_max the largest
    class mean of the unit's image maxima, mu_rest the mean of the other class means. 0: the
    same for every class; 1: responds to one class only. Morcos define it on non-negative
    (post-ReLU) activity, where the index lies in [0, 1]; our taps may be pre-ReLU (negative
    class means), so a unit gets NaN unless mu_max > 0 and mu_rest >= 0."""
    mean, _ = class_stats(run, layer)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_max = np.nanmax(mean, axis=1) if mean.shape[1] else np.full(len(mean), np.nan)
        n = np.sum(~np.isnan(mean), axis=1)
        mu_rest = (np.nansum(mean, axis=1) - mu_max) / (n - 1)
        den = mu_max + mu_rest
        defined = (mu_max > 0) & (mu_rest >= 0) & (n > 1)
        si = np.where(defined, (mu_max - mu_rest) / np.where(den > 0, den, 1), np.nan)
    return pd.Series(si, index=pd.RangeIndex(len(si), name="unit"), name="selectivity")


def class_preference(run: Run, layer: str) -> pd.DataFrame:
    """A layer's class preference over ALL images, per class, most preferred first.

    preference: the mean over units of the unit's z-scored class means (each unit's K class
    means minus their mean, over their std). Chosen over "units whose argmax class is c"
    (kept as column units_preferring) because it uses every unit's whole profile, weighs
    units equally whatever their activation scale (the seed's maxima range 10^2..10^4), is
    sign-safe for pre-ReLU taps, and is continuous (no ties for the rank correlation).
    Units with no spread over classes (dead units) are left out (column units in attrs).
    """
    mean, _ = class_stats(run, layer)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # classes without images yet (partial runs)
        mu = np.nanmean(mean, axis=1, keepdims=True)
        sd = np.nanstd(mean, axis=1, keepdims=True)
        live = (sd[:, 0] > 0) & np.isfinite(sd[:, 0])
        z = (mean[live] - mu[live]) / sd[live]
        pref = np.nanmean(z, axis=0) if live.any() else np.full(mean.shape[1], np.nan)
    best = np.nanargmax(np.where(np.isnan(mean[live]), -np.inf, mean[live]), axis=1) if live.any() else []
    df = pd.DataFrame({"preference": pref,
                       "units_preferring": np.bincount(np.asarray(best, dtype=np.int64), minlength=mean.shape[1]),
                       "accuracy": _accuracy(run).to_numpy()},
                      index=pd.Index(run.class_names, name="class"))
    df["order"] = np.arange(len(df))
    df = df.sort_values(["preference", "order"], ascending=[False, True], kind="stable").drop(columns="order")
    df.attrs.update({"units": int(live.sum()), "partial": not run.complete})
    return df


def ink_density(run: Run) -> pd.Series:
    """Mean ink density of each class's images (fraction of pixels differing from the image's
    background by more than half the range, measured on the model's input; see
    `classstats.ink_density`)."""
    g = run.store.group["dataset"]
    if "class_ink_density" in g:
        ink = np.asarray(g["class_ink_density"][...])
    else:
        stats = _checkpoint_stats(run)
        if stats is None:
            raise SketchmineError(f"run {run.path} has no per-class ink density: the dataset has no labels, "
                                  "or the run was mined before sketchmine measured it (mine it again)")
        ink = stats.ink_results()[0]
    return pd.Series(ink, index=pd.Index(run.class_names, name="class"), name="ink_density")


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (scipy; NaN pairs dropped)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), float("nan")
    try:
        from scipy.stats import spearmanr
    except ImportError:  # rank correlation in numpy (average ranks for ties), no p-value
        ra, rb = (pd.Series(v[ok]).rank().to_numpy() for v in (a, b))
        return float(np.corrcoef(ra, rb)[0, 1]), float("nan")
    res = spearmanr(a[ok], b[ok])
    return float(res.statistic), float(res.pvalue)


def ink_correlation(run: Run) -> pd.DataFrame:
    """Per layer: Spearman correlation between the layer's unbiased class preference and the
    classes' ink density (the seed's "conv layers prefer classes of high stroke density")."""
    ink = ink_density(run)
    rows = []
    for layer in run.layers:
        pref = class_preference(run, layer)["preference"].reindex(ink.index)
        rho, p = spearman(pref.to_numpy(), ink.to_numpy())
        rows.append({"layer": layer, "kind": run.store.group[f"layers/{layer}"].attrs.get("kind", ""),
                     "spearman": rho, "p_value": p, "classes": int(np.isfinite(pref.to_numpy()).sum())})
    df = pd.DataFrame(rows).set_index("layer")
    df.attrs["partial"] = not run.complete
    return df


def has_class_stats(run: Run) -> bool:
    """True when the unbiased statistics can be read (final arrays or a partial checkpoint)."""
    try:
        class_stats(run, run.layers[0])
        return True
    except SketchmineError:
        return False
