"""Class summaries as pure functions of arrays: per-unit class tables, class preference,
class selectivity, rank correlation. `Run` feeds them its arrays (run.py); `analysis` offers
them per run. No store access, no model: data flows store → run → these → presentation."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sketchmine.stats.accuracy import per_class_accuracy

if TYPE_CHECKING:
    from sketchmine.results.run import Run


def entry_steps(attrs: dict[str, Any], yx: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(step (C, k) 0-based, steps T) of each top-k entry when the layer's position is time;
    None for every other layer. `attrs`: the layer's attributes, `yx` (C, k, 2) its top-k positions."""
    pos, shape = attrs.get("position"), list(attrs.get("shape") or [])
    if pos in ("time", "sequence") and len(shape) == 2:
        return yx[..., 1].astype(np.int64), int(shape[1])
    if pos == "time-stacked" and attrs.get("time_steps"):
        frame, steps = list(attrs.get("frame") or []), int(attrs["time_steps"])
        if len(frame) == 2:
            return yx[..., 0].astype(np.int64) // max(1, int(frame[0])), steps
        if len(frame) == 1:
            return yx[..., 1].astype(np.int64) // max(1, int(frame[0])), steps
        return yx[..., 1].astype(np.int64), steps
    return None


def ranked_by_log_odds(layer: str, attrs: dict[str, Any]) -> bool:
    """True for a layer whose top-k ranks images by each class's log-odds, not by the probabilities
    it shows (the virtual softmax; a model's softmax over units, attribute `ranked_by`:
    stats/topk.py): probabilities that read alike (1.0 several times) are no ties there, and their
    order is the log-odds', not the dataset's. `attrs`: the layer's attributes."""
    return layer == "softmax" or "ranked_by" in attrs


def unit_rows(values: np.ndarray, index: np.ndarray, yx: np.ndarray, labels: np.ndarray,
              class_names: Sequence[str], accuracy: np.ndarray, steps: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (unit, rank) of a top-k (values (C, k), index (C, k), yx (C, k, 2)), best
    first: image, value, (y, x), label, class and that class's accuracy (`accuracy` (K,) by
    class; `labels` (N,) per image). Empty slots (index -1) are left out. `steps` (C, k): each
    entry's step where the layer's position is time (`entry_steps`), a column after x."""
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
        **({"step": steps.ravel()[keep]} if steps is not None else {}),
        "label": labels, "class": np.where(known, names[np.where(known, labels, -1)], None),
        "accuracy": np.where(known, accuracy[np.where(known, labels, 0)] if len(accuracy) else np.nan, np.nan),
    })


def selectivity_index(mean: np.ndarray) -> pd.Series:
    """Class-selectivity index per unit (Morcos et al. 2018, "On the importance of single
    directions for generalization") from class means (C, K): (mu_max - mu_rest) / (mu_max +
    mu_rest), mu_max the largest class mean, mu_rest the mean of the others; 0: the same for
    every class, 1: one class only. Defined for non-negative (post-ReLU) responses, where it
    lies in [0, 1]; a layer read before its ReLU has negative class means, where it does not
    apply: NaN unless mu_max > 0 and mu_rest >= 0."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a unit of all-NaN maps: NaN, said by the readers
        mu_max = np.nanmax(mean, axis=1) if mean.shape[1] else np.full(len(mean), np.nan)
        n = np.sum(~np.isnan(mean), axis=1)
        # the others summed without the largest, not the whole sum minus it: beside a mean of
        # 1e17 the others' -2 and 0.5 vanish from the whole sum, and mu_rest read 0 (defined) for -1/3
        rest = np.where(np.isnan(mean), 0.0, mean)
        if mean.shape[1]:
            rest[np.arange(len(mean)), np.argmax(np.where(np.isnan(mean), -np.inf, mean), axis=1)] = 0.0
        mu_rest = rest.sum(axis=1) / (n - 1)
        den = mu_max + mu_rest
        defined = (mu_max > 0) & (mu_rest >= 0) & (n > 1)
        si = np.where(defined, (mu_max - mu_rest) / np.where(den > 0, den, 1), np.nan)
    return pd.Series(si, index=pd.RangeIndex(len(si), name="unit"), name="selectivity")


def preference(mean: np.ndarray, accuracy: np.ndarray, class_names: Sequence[str],
               count: np.ndarray | None = None) -> pd.DataFrame:
    """A layer's class preference from class means (C, K), most preferred first: the mean over
    live units of their z-scored class means (each unit's K class means minus their mean, over
    their std). Chosen over "units whose argmax class is c" (kept as column units_preferring)
    because it uses every unit's whole profile, weighs units equally whatever their activation
    scale (the seed's maxima range 10^2..10^4), is sign-safe for pre-ReLU taps, and is
    continuous (no ties for the rank correlation). attrs["units"]: the live units (with spread
    over classes; dead units are left out). Classes without images (`count` (C, K) all 0, or
    without `count` a column of NaN means) have no preference and are left out, not ranked last
    as NaN: attrs["no_images"] names them. Column label: the class's position, as in `top_classes`."""
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
    df["label"] = np.arange(len(df))  # the class's position: two classes may share a name
    empty = (np.asarray(count).sum(axis=0) == 0) if count is not None else np.isnan(mean).all(axis=0)
    no_images = [str(c) for c in df.index[empty]]
    df = df[~empty].sort_values(["preference", "label"], ascending=[False, True], kind="stable")
    df.attrs.update(units=int(live.sum()), no_images=no_images, no_images_at=np.flatnonzero(empty).tolist())
    return df


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (NaN pairs dropped), computed as
    scipy.stats.spearmanr computes them (average ranks, Pearson's r of the ranks, Student's t with
    n - 2 degrees of freedom), to the last bit. Why not spearmanr itself: importing scipy.stats takes
    about a second, a sixth of a `sketchmine summary`; scipy.special's stdtr is a third of that."""
    from scipy.special import stdtr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), float("nan")
    ranks = np.column_stack([pd.Series(v[ok]).rank(method="average").to_numpy() for v in (a, b)])
    rho = np.corrcoef(ranks, rowvar=False)[1, 0]
    dof = int(ok.sum()) - 2
    with np.errstate(divide="ignore"):  # |rho| = 1: t is infinite, p is 0
        t = rho * np.sqrt(np.clip(dof / ((rho + 1.0) * (1.0 - rho)), 0, None))
    return float(rho), float(2 * stdtr(dof, -np.abs(t)))


def accuracy_table(pred: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class (index class): accuracy (fraction; NaN for a class without images), correct, count."""
    acc, correct, count = per_class_accuracy(pred, labels, len(class_names))
    return pd.DataFrame({"class": list(class_names), "accuracy": acc, "correct": correct, "count": count}).set_index("class")


# ---- the top-k class histogram as ranked lists ------------------------------------------------
def ranked_classes(hist: pd.Series, accuracy: np.ndarray, sizes: np.ndarray, has: np.ndarray) -> pd.DataFrame:
    """The class histogram `hist` (K,) as a table, most frequent first, over the classes that have
    images (`has` (K,) bool: a class without any is no "least preferred" class). Ranked by the raw
    count, the deck's measure on its balanced test set; per_image (count over the class's
    labelled images, `sizes` (K,): column images) is the fair one when classes differ in size.
    Ties go to class order only to be deterministic: `cut_at` says where a list cuts through one.
    attrs: unlabelled (top-k entries without a label), no_images (the classes left out)."""
    df = hist.to_frame()
    df["accuracy"] = accuracy
    with np.errstate(invalid="ignore", divide="ignore"):
        df["per_image"] = np.where(sizes > 0, hist.to_numpy() / np.maximum(sizes, 1), np.nan)
    df["images"] = np.asarray(sizes, dtype=np.int64)
    df["label"] = np.arange(len(df))  # the class's position: views match classes by it (a name may repeat)
    df = df[has].sort_values(["count", "label"], ascending=[False, True], kind="stable")
    df.attrs.update(unlabelled=hist.attrs.get("unlabelled", 0), no_images=list(hist.index[~has]),
                    no_images_at=np.flatnonzero(~has).tolist())
    return df


def cut_at(ranked: pd.DataFrame, n: int, top: bool) -> pd.DataFrame:
    """The first (`top`) or last n rows of `ranked` (see `ranked_classes`), and where the cut falls.

    A count shared across the cut makes the choice among those classes arbitrary (class order),
    so attrs say it: cut_count, the count of the listed class at the cut (the last row of a top
    list, the first of a bottom list; None for an empty list); tied_out, the classes left out with
    that count, in class order; all_tied, every ranked class has one count (no class stands
    out, so the views say so instead of listing n). Existing attrs are kept."""
    listed = ranked.head(n) if top else ranked.tail(n)
    rest = ranked.iloc[n:] if top else ranked.iloc[:max(len(ranked) - n, 0)]
    cut = int(listed["count"].iloc[-1 if top else 0]) if len(listed) else None
    out = listed.copy()
    out.attrs.update(ranked.attrs)
    tied = rest[rest["count"] == cut]
    out.attrs.update(cut_count=cut, tied_out=[str(c) for c in tied.index], tied_out_labels=tied["label"].tolist(),
                     all_tied=len(ranked) > 1 and ranked["count"].nunique() == 1)
    return out


def class_set(listed: pd.DataFrame) -> set[int] | None:
    """The classes (positions) of a `cut_at` list with those tied at its cut (a set that does not
    depend on class order); None when all classes tie (no top or bottom classes to overlap)."""
    if listed.attrs.get("all_tied"):
        return None
    return {int(c) for c in listed["label"]} | {int(c) for c in listed.attrs.get("tied_out_labels", [])}


def ties_words(listed: pd.DataFrame) -> str:
    """What a `cut_at` list leaves out: "all 10 classes tied at 9" when every class ties (said
    instead of the list), "+ 3 more tied at 15" when the cut splits a tie, else ""."""
    a = listed.attrs
    if a.get("all_tied"):
        return f"all {len(listed) + len(a.get('tied_out', []))} classes tied at {a.get('cut_count')}"
    tied = len(a.get("tied_out", []))
    return f"+ {tied} more tied at {a.get('cut_count')}" if tied else ""


def sides(classes: int, n: int) -> tuple[int, int]:
    """How many classes a view's top and bottom lists hold: `n` each or, where fewer than 2n
    classes have images (a partial run that has reached one class, a 3-class dataset), each
    class once, the top list the one more: a class is not both most and least preferred."""
    bottom = min(n, max(classes, 0) // 2)
    return min(n, max(classes, 0) - bottom), bottom


def sides_note(classes: int, n: int, partial: bool) -> str | None:
    """Why a view's top and bottom lists hold fewer than `n` classes each (`sides`); None where
    they hold `n`."""
    top, bottom = sides(classes, n)
    if (top, bottom) == (n, n):
        return None
    have = f"{classes} class{'' if classes == 1 else 'es'} {'has' if classes == 1 else 'have'} images"
    return (f"only {have}{' so far' if partial else ''}: {'it is' if classes == 1 else 'each is'} listed once ({top} "
            f"under top {n}, {bottom} under bottom {n}), not as both most and least preferred")


def no_images_words(classes: Sequence[str]) -> str:
    """The classes a view leaves out because no image of theirs was mined."""
    return f"classes without images, left out: {', '.join(classes)}"


def class_sides(run: Run, n: int) -> tuple[int, int, list[str]]:
    """How many classes every layer's top-n and bottom-n lists of top-k counts hold in a view of the
    run (`sides` over the classes with images), and the notes that say why fewer than n (`sides_note`)
    and which classes have no images: one reading for `summary`, the report's table and its plot,
    so they list the same classes and say the same."""
    if not run.layers:
        return 0, 0, []
    sizes = run.class_sizes()  # a partial run's: the images mined so far, as `Run.top_classes` ranks them
    classes = int((sizes > 0).sum())
    notes = [few] if (few := sides_note(classes, n, not run.complete)) else []
    if empty := [str(c) for c, size in zip(sizes.index, sizes.to_numpy()) if size == 0]:
        notes.append(no_images_words(empty))
    return (*sides(classes, n), notes)


def one_class_note(run: Run) -> str | None:
    """Why a run whose images are all of one class has no class preference, selectivity or rank
    correlation (each sets classes against each other: a z-score over one class, a best class
    against no other, a ranking of one), said once where those views would read "-" or "0 classes";
    None for any other run."""
    if not run.layers or not run.has_labels():
        return None
    sizes = run.class_sizes()  # a partial run's: the images mined so far
    have = [str(c) for c, size in zip(sizes.index, sizes.to_numpy()) if size > 0]
    if len(have) != 1:
        return None
    return (f"only 1 class ({have[0]}) has images{'' if run.complete else ' so far'}: a class preference, the class "
            "selectivity index and the rank correlations with ink density and accuracy set classes against each "
            "other, so none is defined")


def size_note(sizes: pd.Series) -> str | None:
    """A note when the classes (with images) differ in size, naming the smallest and largest;
    None when they are the same size. Raw top-k counts favour the larger classes."""
    n = sizes[sizes > 0]
    if n.empty or n.min() == n.max():
        return None
    return (f"classes differ in size ({int(n.min())} to {int(n.max())} labelled images): counts are raw top-k "
            "entries, which favour larger classes; per image of the class: class_histogram(layer, per_image=True)")


def layer_table(rows: list[dict], partial: bool) -> pd.DataFrame:
    """Per-layer rows (each with its "layer") as a table indexed by layer; attrs["partial"]."""
    df = pd.DataFrame(rows).set_index("layer")
    df.attrs["partial"] = partial
    return df


def rank_correlations(measures: dict[str, np.ndarray], target: np.ndarray) -> dict[str, float | int]:
    """Spearman ρ and p of each measure (K,) against `target` (K,), as columns spearman_<name>
    and p_value_<name>; classes: those with a finite target and a finite first measure."""
    out: dict[str, float | int] = {}
    for name, values in measures.items():
        out[f"spearman_{name}"], out[f"p_value_{name}"] = spearman(np.asarray(values, float), target)
    first = np.asarray(next(iter(measures.values())), float)
    out["classes"] = int((np.isfinite(first) & np.isfinite(np.asarray(target, float))).sum())
    return out


def not_yet(run: Run) -> str:
    """Why a run being mined has nothing to read yet: created, no checkpoint committed (readers
    see committed checkpoints only, the first after `--flush-every` batches)."""
    size = (run.attrs.get("dataset") or {}).get("size", "?")
    return (f"mining started and nothing is committed yet (0 of {size} images; the first checkpoint comes "
            "after --flush-every batches)")


NO_LABELS = "no image of this run has a label (the dataset gave none)"
"""What the views say of a run without labels (no class table, no accuracy)."""


def no_classes(run: Run, unlabelled: str = "the dataset has no labels") -> str:
    """Why a run has no per-class results, in words that fit its case: labelled images in a run
    that names no classes (a dataset naming none, mined with logits=False: the class count was
    unknown, so no class statistics were kept) are not "no labels"."""
    if len(run.class_names) or not (run.labels >= 0).any():
        return unlabelled
    return ("its images have labels, but the run names no classes: the dataset names none (no `classes` or "
            "`class_to_idx`) and logits=False (--no-logits) left the model's output count unknown, so no per-class "
            "statistics were kept; mine again with the logits, or with `classes` set on the dataset")


def no_histogram(run: Run, layer: str, entries: int) -> str:
    """Why `layer` has no class histogram: no image has a label, or (labels without class names)
    `no_classes`'s case."""
    nameless = no_classes(run, "")
    if nameless:
        return f"run {run.path}: {nameless}; class histograms of layer {layer!r} need the class names"
    return (f"run {run.path}: no image has a label (the dataset has no labels), so the {entries} top-k images of layer "
            f"{layer!r} have no label; class histograms need labelled images")
