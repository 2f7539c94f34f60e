"""Readers of each unit's whole distribution: histogram, quantiles, examples at every level,
bottom-k, firing density and mean (issue 16), as functions over a `Run`.

They read the final arrays of a complete run, or rebuild the statistic from the last
committed checkpoint of an unfinished one (the same accumulator, restored, asked for its
results). A run mined before sketchmine kept a statistic is refused with what is missing and
how to get it (mine again into a new directory). See docs/analysis.md for the guarantees.
"""
from __future__ import annotations

import decimal
import numbers
import re
import shlex

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from sketchmine.errors import SketchmineError
from sketchmine.lazy import lazy
from sketchmine.names import layer_arg
from sketchmine.stats import accumulators, bottomk, examples, histogram, moments, sketch, topk
from sketchmine.store import schema

if TYPE_CHECKING:
    import torch

    from sketchmine.results.run import Run
else:  # imported on first use: reading a run does not need it (sketchmine/lazy.py)
    torch = lazy("torch", globals())

_FACTORIES: dict[str, Callable[[accumulators.Setup], Any]] = {
    histogram.KEY: histogram.accumulator, sketch.KEY: sketch.accumulator, examples.KEY: examples.accumulator,
    bottomk.KEY: bottomk.accumulator, moments.KEY: moments.accumulator}


def layer_arrays(run: Run, layer: str, key: str, names: Sequence[str], what: str) -> list[np.ndarray]:
    """Arrays `names` of the statistic under checkpoint key `key` for `layer`: the final arrays of
    a complete run, else rebuilt from its last committed checkpoint."""
    run.layer_attrs(layer)
    return run.store.committed(lambda: _read(run, layer, key, names, what))


def mine_again(run: Run) -> str:
    """The call that mines `run`'s model and images again with distributions, filled in from what the
    run records: a `sketchmine mine` command for a folder of images, the Python call for the embedded
    set, the generic form where the run holds neither (an in-memory model or a torch Dataset)."""
    attrs = run.attrs
    spec = (attrs.get("model_spec") or {}).get("spec")
    data = attrs.get("dataset") or {}
    seq = data.get("sequence") or {}
    pre = attrs.get("preprocessing") or {}
    if isinstance(spec, str) and data.get("kind") == "image_folder":
        weights = (attrs.get("model_spec") or {}).get("weights")
        size = pre.get("size")
        options = run.forward_options  # the same forward, so the numbers are comparable
        q = shlex.quote
        parts = [f"sketchmine mine --model {q(spec)}", f"--weights {q(str(weights))}" if weights else "",
                 f"--data {q(str(data.get('root')))}", f"--layers {q(layer_arg(run.layers))}", f"-k {run.k}",
                 f"--preprocessing {pre['preset']}" if pre.get("preset") not in (None, "model") else "",
                 f"--image-size {size[0]}" if size and len(set(size)) == 1 else "",
                 f"--steps {seq['steps']} --ink {seq.get('ink', 'light')}" if seq else "",
                 f"--autocast {options['autocast']}" if options.get("autocast") else "",
                 "--channels-last" if options.get("channels_last") else "",
                 "--no-logits" if attrs.get("logits", True) is False else "",
                 "--distributions --out NEW_DIR"]
        return f"`{' '.join(p for p in parts if p)}`"
    if isinstance(spec, str) and data.get("kind") == "embedded" and not seq:
        images, note = embedded_images(run)
        call = (f"`sketchmine.mine({spec!r}, {images}, layers={list(run.layers)!r}, k={run.k}, distributions=True, "
                "out=NEW_DIR)`")
        return f"{call} ({note})" if note else call
    return "`sketchmine mine --distributions --model ... --data ... --out NEW_DIR` (distributions=True in Python)"


SUBSET_OF_SPLIT = re.compile(r"\d+ of \d+ images(, then \d+ of \d+ images)*")
"""How `ArrayDataset.subset` records the images it took, once or again (their numbers in the split
are in the paths either way)."""


def embedded_images(run: Run) -> tuple[str, str]:
    """(the Python expression of the embedded images `run` was mined from, a note or ""): the whole
    split when the run holds as many images as the split records; a subset taken with `.subset`
    rebuilt from the run's paths (they keep the images' numbers in the split); else DATASET, the
    note saying which images the run records (a subset named by its maker), or that it cannot say."""
    data = run.attrs.get("dataset") or {}
    split = str(data.get("split", "test"))
    whole = f"sketchmine.data.animal_shape({split!r})"
    subset, n, of = data.get("subset"), int(data.get("size") or len(run.labels)), data.get("split_size")
    if subset is not None and SUBSET_OF_SPLIT.fullmatch(str(subset)) \
            and all(re.fullmatch(r".*/\d+", str(p)) for p in run.paths):
        return (f"{whole}.subset([int(p.rsplit('/', 1)[1]) for p in sketchmine.open_run({str(run.path)!r}).paths])",
                f"the {n:,} images the run took, by their numbers in the split: {subset}")
    if subset is not None:
        return "DATASET", f"DATASET: the {n:,} images of {whole} the run records as the subset {str(subset)!r}"
    if of == n:
        return whole, ""
    if of is not None:
        return "DATASET", (f"DATASET: the same {n:,} of the split's {of:,} images; the dataset they were mined from "
                           "carried the split's description without saying which images it took")
    return whole, (f"if the run holds the whole split: it was written by an older sketchmine, which recorded neither "
                   f"a subset nor the split's size, so whether its {n:,} images are all of {whole} or a subset, and "
                   "which, cannot be known from the run")


def without(run: Run) -> str:
    """Why a run mined without distributions has none, and the call that adds them."""
    return ("was mined without distributions (they are opt-in: docs/analysis.md, \"Why opt-in\", gives their "
            f"cost); mine it again into a new directory to add them: {mine_again(run)}")


def older(run: Run) -> str:
    """Why a run lacks arrays every run of this sketchmine has (the unit moments): an older version
    wrote it; --distributions, which `without` names, would not be the reason or the remedy."""
    version = run.attrs.get(schema.VERSION_ATTR)
    release = schema.RELEASED_VERSIONS.get(version) if isinstance(version, int) else None
    return (f"it was written by an older sketchmine (schema version {version}" + (f", sketchmine {release}" if release
            else "") + ") that did not keep them; the run is not damaged: mine it again into a new --out to have them")


def _read(run: Run, layer: str, key: str, names: Sequence[str], what: str) -> list[np.ndarray]:
    again = f"it {without(run)}" if any(n in schema.DISTRIBUTION_ARRAYS for n in names) else older(run)
    if run.complete:
        missing = [n for n in names if not run.has_array(layer, n)]
        if missing:
            raise SketchmineError(f"run {run.path} has no {what} for layer {layer!r} (missing "
                                  f"{', '.join(schema.layer_array(layer, n) for n in missing)}): {again}")
        return [run.layer_array(layer, n) for n in names]
    state = run.store.read_checkpoint_state(key)
    if state is None:
        raise SketchmineError(f"run {run.path} has no {what} for layer {layer!r} yet: nothing flushed, or {again}")
    shapes = {l: run.layer_shape(l) for l in run.layers}
    specs = tuple(accumulators.LayerSpec(l, s[0], tuple(s[1:])) for l, s in shapes.items())
    keyed = topk.keyed_layers(state, list(shapes)) if "channels" in state else frozenset()  # as it was ranked
    acc = _FACTORIES[key](accumulators.Setup(specs, run.k, torch.device("cpu"), log_odds=keyed, distributions=True))
    try:
        acc.restore(state)
    except (ValueError, KeyError) as exc:
        raise SketchmineError(f"{run.path}: the {what} in its checkpoint do not fit the run ({exc})") from None
    arrays = acc.results()
    return [arrays[schema.layer_array(layer, n)] for n in names]


def histogram_of(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(edges (C, 65) float64, counts (C, 64) int64): see stats/histogram.py."""
    edges, counts = layer_arrays(run, layer, histogram.KEY, ("hist_edges", "hist_counts"), "histograms")
    return edges, counts


def max_range(run: Run, layer: str) -> np.ndarray:
    """(C, 2) float32 exact [min, max] of each unit's non-NaN image maxima (NaN: none)."""
    return layer_arrays(run, layer, histogram.KEY, ("max_range",), "histograms")[0]


def quantiles(run: Run, layer: str, q: Sequence[float] | np.ndarray | float) -> np.ndarray:
    """(C, len(q)) float64 estimates of the q-quantiles of each unit's non-NaN image maxima.

    The q-quantile is x_r, r = floor(q·(n-1)), of the n sorted maxima (numpy's method="lower").
    Guarantee for the estimate x̂: exact when r = 0 or n-1 (the exact min/max) and when x_r is
    0 or ±inf; always within the exact histogram bin holding x_r (|x̂ - x_r| < that bin's
    width); and |x̂ - x_r| <= |x_r|/65 (sketch.ALPHA) when x_r is a normal float32 whose
    magnitude is at least 2^-15 of the largest finite magnitude of its sign. NaN: no maxima.
    Below that floor the estimate can be far off (a softmax output of 1e-7 read as 3e-6):
    `quantile_bounds` says which estimates those are and the bound they obey."""
    return quantile_bounds(run, layer, q).values


class QuantileBounds(NamedTuple):
    """Quantile estimates and where they fall below the sketch's resolution.

    values  (C, Q) float64: the estimates (`quantiles`).
    coarse  (C, Q) bool: x_r lies in the lowest bucket of its sign, where the sketch collapses
            every magnitude below its floor, or among float32 subnormals (|x| < 2^-126, where
            the buckets are linear): the estimate is no 1/65-accurate value there, only the
            bound below holds (never set at q's exact ends, 0 or ±inf).
    bound   (C, Q) float64 where coarse (NaN elsewhere): 0 < x_r < bound for a positive x_r,
            bound < x_r < 0 for a negative one (the upper edge of x_r's bucket, the floor for
            the lowest, tightened by the exact histogram bin and the exact min / max).
    floor   (C, 2) float64 per sign [negative, positive]: the magnitude below which the sketch
            keeps no resolution (the upper edge of its lowest bucket); 0 where no value can be
            collapsed (the sign's magnitudes span under 16 octaves) or the sign has no value."""

    values: np.ndarray
    coarse: np.ndarray
    bound: np.ndarray
    floor: np.ndarray


def _numbers(q: Any) -> bool:
    """Numbers only: bools and strings converted would read as a guess of q; Fractions and
    Decimals (an object array) are numbers."""
    given = np.asarray(q)
    return given.dtype.kind in "iuf" or given.dtype.kind == "O" and all(
        isinstance(v, (numbers.Real, decimal.Decimal)) and not isinstance(v, bool) for v in given.ravel())


def quantile_bounds(run: Run, layer: str, q: Sequence[float] | np.ndarray | float) -> QuantileBounds:
    """`quantiles` with, per estimate, whether it is below the sketch's resolution floor and the
    bound that holds there (see QuantileBounds): a reader must show those as "< bound", not
    as a value."""
    try:
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    except (TypeError, ValueError):
        qs = np.array([np.nan])
    if qs.ndim != 1 or not _numbers(q) or not np.all((qs >= 0) & (qs <= 1)):
        raise SketchmineError(f"quantiles are numbers from 0 to 1, got {q!r}")
    counts, top, special = layer_arrays(run, layer, sketch.KEY, ("sketch_counts", "sketch_top", "sketch_special"),
                                        "quantile sketches")
    edges, hist = histogram_of(run, layer)
    return estimate_bounds(counts, top, special, edges, hist, max_range(run, layer), qs)


def estimate(counts: np.ndarray, top: np.ndarray, special: np.ndarray, edges: np.ndarray, hist: np.ndarray,
             bounds: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The quantile estimates of `quantiles` from the stored arrays (sketch, histogram, range)."""
    return estimate_bounds(counts, top, special, edges, hist, bounds, q).values


def resolution_floor(top: np.ndarray) -> np.ndarray:
    """(C, 2) float64 per sign the magnitude under which the sketch collapses values: the lower
    edge of key top - (BUCKETS - 2), read off the float32 bits; 0 where top < BUCKETS - 1
    (no key can fall under the window)."""
    key = np.asarray(top, dtype=np.int64) - (sketch.BUCKETS - 2)
    bits = (np.maximum(key, 0) << sketch.SHIFT).astype(np.uint32)
    return np.where(key > 0, bits.view(np.float32).astype(np.float64), 0.0)


def estimate_bounds(counts: np.ndarray, top: np.ndarray, special: np.ndarray, edges: np.ndarray,
                    hist: np.ndarray, bounds: np.ndarray, q: np.ndarray) -> QuantileBounds:
    """`estimate` with the resolution of each estimate (QuantileBounds)."""
    c = len(counts)
    est = sketch.estimates(top)
    col = np.ones((c, 1))
    ordered = np.concatenate([special[:, :1], counts[:, 0, ::-1], special[:, 1:2], counts[:, 1], special[:, 2:]],
                             axis=1).astype(np.int64)
    reps = np.concatenate([-np.inf * col, -est[:, 0, ::-1], 0 * col, est[:, 1], np.inf * col], axis=1)
    n = ordered.sum(1)
    r = np.floor(q[None, :] * np.maximum(n - 1, 0)[:, None]).astype(np.int64)
    hold = _holding(ordered, r)
    val = np.take_along_axis(reps, hold, 1)
    hb = _holding(hist, r)
    bin_lo, bin_hi = np.take_along_axis(edges, hb, 1), np.take_along_axis(edges, hb + 1, 1)
    # a bin is [lo, hi): x_r is below hi (the last bin's +inf edge takes +inf maxima)
    val = np.clip(val, bin_lo, np.where(np.isinf(bin_hi), bin_hi, np.nextafter(bin_hi, -np.inf)))
    lo, hi = bounds[:, :1].astype(np.float64), bounds[:, 1:].astype(np.float64)
    val = np.clip(val, lo, hi)
    ends = (r == 0) | (r == (n - 1)[:, None])
    val = np.where(r == 0, lo, np.where(r == (n - 1)[:, None], hi, val))
    floor = resolution_floor(top)
    neg_low, pos_low = sketch.BUCKETS, sketch.BUCKETS + 2  # the lowest bucket of each sign in `ordered`
    has = (n > 0)[:, None]
    positive = (hold >= pos_low) & (hold < pos_low + sketch.BUCKETS)
    negative = (hold >= 1) & (hold <= neg_low)
    # the held bucket's key, and the magnitude its bucket ends at (its upper edge, read off the bits)
    key = np.where(positive, top[:, 1:] - (sketch.BUCKETS - 1) + (hold - pos_low),
                   top[:, :1] - (sketch.BUCKETS - 1) + (neg_low - hold)).astype(np.int64)
    edge = ((np.clip(key, 0, None) + 1) << sketch.SHIFT).astype(np.uint32).view(np.float32).astype(np.float64)
    collapsed = ((hold == neg_low) & (floor[:, :1] > 0)) | ((hold == pos_low) & (floor[:, 1:] > 0))
    # below 2^-126 (float32 subnormals) the keys are linear, not 32 per octave: no 1/65 there either
    subnormal = (positive | negative) & (key < 1 << sketch.SUB_BITS)
    coarse = has & ~ends & (collapsed | subnormal)
    with np.errstate(invalid="ignore"):
        pos_bound = np.minimum(np.minimum(edge, bin_hi), hi)
        neg_bound = np.maximum(np.maximum(-edge, bin_lo), lo)
    bound = np.where(coarse, np.where(positive, pos_bound, neg_bound), np.nan)
    return QuantileBounds(np.where(has, val, np.nan), coarse, bound, floor)


def _holding(counts: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per row the bucket holding rank r (0-based) of counts (C, B) → (C, Q) int64, within [0, B)."""
    cum = np.cumsum(counts, axis=1)
    span = int(cum[:, -1].max(initial=0)) + 1
    offs = np.arange(len(cum), dtype=np.int64)[:, None] * span
    at = np.searchsorted((cum + offs).ravel(), (r + offs).ravel(), side="right").reshape(r.shape)
    return np.clip(at - np.arange(len(cum))[:, None] * counts.shape[1], 0, counts.shape[1] - 1)


def quantile_examples(run: Run, layer: str) -> np.ndarray:
    """(C, 17, 8) int64 image indices, per example bin the 8 of smallest hash (-1: fewer)."""
    return layer_arrays(run, layer, examples.KEY, ("example_index",), "quantile examples")[0]


def example_edges(run: Run, layer: str) -> np.ndarray:
    """(C, 18) float64 edges of the example bins; bin b is [edges[b], edges[b+1])."""
    return layer_arrays(run, layer, examples.KEY, ("example_edges",), "quantile examples")[0]


def bottom_k(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values (C, k) float32, image_index (C, k) int64, yx (C, k, 2) int32), least first."""
    v, i, yx = layer_arrays(run, layer, bottomk.KEY, ("bottom_values", "bottom_image_index", "bottom_yx"),
                            "bottom-k")
    return v, i, yx


def firing_density(run: Run, layer: str) -> np.ndarray:
    """(C,) float64 share of the images with a non-NaN maximum whose maximum is > 0 (NaN: none)."""
    firing, count = layer_arrays(run, layer, moments.KEY, ("firing", "max_count"), "unit moments")
    return np.where(count > 0, firing / np.maximum(count, 1), np.nan)


def max_mean(run: Run, layer: str) -> np.ndarray:
    """(C,) float64 mean of each unit's non-NaN image maxima (NaN: none)."""
    return layer_arrays(run, layer, moments.KEY, ("max_mean",), "unit moments")[0]
