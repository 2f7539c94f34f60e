"""Class summaries as pure functions of arrays: per-unit class tables, class preference,
class selectivity, rank correlation. `Run` feeds them its arrays (run.py); `analysis` offers
them per run. No store access, no model: data flows store → run → these → presentation."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sketchmine.store import schema


def unit_rows(values: np.ndarray, index: np.ndarray, yx: np.ndarray, labels: np.ndarray,
              class_names: Sequence[str], accuracy: np.ndarray) -> pd.DataFrame:
    """One row per (unit, rank) of a top-k (values (C, k), index (C, k), yx (C, k, 2)), best
    first: image, value, (y, x), label, class and that class's accuracy (`accuracy` (K,) by
    class; `labels` (N,) per image). Empty slots (index -1) are left out."""
    c, k = index.shape
    unit, rank = np.meshgrid(np.arange(c), np.arange(k), indexing="ij")
    keep = index.ravel() >= 0
    img = index.ravel()[keep]
    labels = labels[img] if len(img) else np.zeros(0, np.int64)
    names = np.array(list(class_names) + [""], dtype=object)
    known = (labels >= 0) & (labels < len(names) - 1)
    return pd.DataFrame({
        "unit": unit.ravel()[keep], "rank": rank.ravel()[keep], "image_index": img,
        "value": values.ravel()[keep], "y": yx[..., 0].ravel()[keep], "x": yx[..., 1].ravel()[keep],
        "label": labels, "class": np.where(known, names[np.where(known, labels, -1)], None),
        "accuracy": np.where(known, accuracy[np.where(known, labels, 0)] if len(accuracy) else np.nan, np.nan),
    })


def selectivity_index(mean: np.ndarray) -> pd.Series:
    """Class-selectivity index per unit (Morcos et al. 2018) from class means (C, K):
    (mu_max - mu_rest) / (mu_max + mu_rest). Pre-ReLU taps can have negative class means, where
    the index is undefined: NaN unless mu_max > 0 and mu_rest >= 0."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a unit of all-NaN maps: NaN, said by the readers
        mu_max = np.nanmax(mean, axis=1) if mean.shape[1] else np.full(len(mean), np.nan)
        n = np.sum(~np.isnan(mean), axis=1)
        mu_rest = (np.nansum(mean, axis=1) - mu_max) / (n - 1)
        den = mu_max + mu_rest
        defined = (mu_max > 0) & (mu_rest >= 0) & (n > 1)
        si = np.where(defined, (mu_max - mu_rest) / np.where(den > 0, den, 1), np.nan)
    return pd.Series(si, index=pd.RangeIndex(len(si), name="unit"), name="selectivity")


def preference(mean: np.ndarray, accuracy: np.ndarray, class_names: Sequence[str],
               count: np.ndarray | None = None) -> pd.DataFrame:
    """A layer's class preference from class means (C, K), most preferred first: the mean over
    live units of their z-scored class means (see Run.class_preference for why); attrs["units"]:
    the live units (with spread over classes). Classes without images (`count` (C, K) all 0, or
    without `count` a column of NaN means) have no preference and are left out, not ranked last
    as NaN: attrs["no_images"] names them."""
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
                       "accuracy": accuracy},
                      index=pd.Index(list(class_names), name="class"))
    df["order"] = np.arange(len(df))
    empty = (np.asarray(count).sum(axis=0) == 0) if count is not None else np.isnan(mean).all(axis=0)
    no_images = [str(c) for c in df.index[empty]]
    df = df[~empty].sort_values(["preference", "order"], ascending=[False, True], kind="stable")
    df = df.drop(columns="order")
    df.attrs.update(units=int(live.sum()), no_images=no_images)
    return df


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


def class_counts(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: images predicted correctly, and mined images with a label (pred -1:
    unreadable or not mined yet; pred -2: a NaN output, never correct; label -1: unknown)."""
    valid = (pred != schema.NO_PREDICTION) & (labels >= 0)
    count = np.bincount(labels[valid], minlength=num_classes)[:num_classes]
    correct = np.bincount(labels[valid & (pred == labels)], minlength=num_classes)[:num_classes]
    return correct.astype(np.int64), count.astype(np.int64)
