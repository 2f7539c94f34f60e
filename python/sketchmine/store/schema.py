"""The run store's schema: every path, attribute, dtype and chunking of a run, in one place.

A run is a Zarr v3 directory (see docs/store.md). Passes write through `store.RunStore` and
readers read through `run.Run`; both name arrays with these functions and constants, so no
other module spells a store path. A new per-layer statistic declares its arrays by name
(`layer_array(layer, name)`), and its accumulator says which (see accumulators.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 2
"""2: the checkpoint holds every accumulator's state under one namespace per accumulator."""

DATASET = "dataset"
EVAL = "eval"
LAYERS = "layers"
CHECKPOINT = "_checkpoint"

LABELS = f"{DATASET}/labels"
PATHS = f"{DATASET}/paths"
DIGESTS = f"{DATASET}/content_digests"
"""Each image file's blake2b-128 (hex) as the dataset fingerprint hashed it: a folder's runs only
(`MinerDataset.content_digests`), so that a resume refused for changed content names the files."""
CLASS_NAMES = f"{DATASET}/class_names"
IMAGE_COORD = "image"
CLASS_COORD = "class"
OUTPUT_COORD = "output"
"""Root copies of dataset/paths and dataset/class_names, each named as its axis: xarray's
DataTree takes a root array named as a dimension for that dimension's coordinate and hands it
down to every group, so class_mean's class axis reads class names and the logits' image axis
reads paths in any group. The copies cost the paths once more; Run reads dataset/. `output`: the
class each model output is scored against (the class names again), written when the run completes
with logits, whose outputs are then the classes (mining refuses other counts), so the logits' and
the effects' output axes read class names; a run without logits has none (its effects may have more
outputs than classes)."""
LOGITS = f"{EVAL}/logits"
PREDICTIONS = f"{EVAL}/predictions"
NO_PREDICTION = -1
"""eval/predictions of an image that was not mined: unreadable and skipped, or not reached yet."""
NAN_PREDICTION = -2
"""eval/predictions of a mined image whose model output holds a NaN: a prediction that is wrong
whatever the label, so the image counts in its class's accuracy instead of leaving it."""
PER_CLASS_ACCURACY = f"{EVAL}/per_class_accuracy"
COMMITTED_ROWS = (LABELS, PREDICTIONS)
"""Per-image arrays a reader of a partial run reads whole and keeps per commit (one number an image:
a commit never rewrites the rows below it; not the logits, a number per class)."""


def dataset_array(name: str) -> str:
    """A per-dataset array, e.g. dataset_array("class_ink_density")."""
    return f"{DATASET}/{name}"


def layer_group(layer: str) -> str:
    """The group of one mined layer (attrs: shape, kind, receptive_field, ...)."""
    return f"{LAYERS}/{layer}"


def layer_array(layer: str, name: str) -> str:
    """One array of a layer: values, image_index, yx, nan_count, class_mean, patches, ..."""
    return f"{LAYERS}/{layer}/{name}"


def layer_result(layer: str, name: str) -> str:
    """A multi-array result of a later pass on a layer (importance, traces): a group
    committed as a unit (RunStore.write_group / read_group)."""
    return f"{LAYERS}/{layer}/{name}"


# ---- attributes ------------------------------------------------------------------------------
# root: schema_version, layer_names, k, progress {images_done, slot, complete, updated},
# row_chunk, checksums {array path: {rows, sums}}, dataset, dataset_fingerprint, preprocessing,
# model_spec, weights_hash (older runs: weights_sha256), num_classes, bad_images, converted_images, versions, logits,
# attribute_sums, batch_size, batch_sizes, device, devices
VERSION_ATTR = "schema_version"
PROGRESS = "progress"
ROW_CHUNK_ATTR = "row_chunk"
CHECKSUMS = "checksums"
ATTRIBUTE_SUMS = "attribute_sums"
"""root attribute of a complete run: checksums of its attributes as completed (store/attr_sums.py)."""
LAYER_NAMES = "layer_names"
ACCURACY = "accuracy"
"""eval/ attribute: overall accuracy over the readable images (set by write_results)."""
VISUALIZED = "visualized"
"""layers/<name>/ attribute of a visualize pass: {method, patch_size, source_size, block_units,
device, units_done, complete, devices (a resume on another kind of device)}; units below
units_done have committed patches."""
COMPLETE = "complete"
"""Marker attribute of a group written as a unit (write_group), set last."""
PREPROCESS = "preprocess"
"""Root attribute: where the mining pass made its images model input, "device" (a batch at a
time on the mining device) or "cpu" (per image in the loader); absent in runs made before it
(per image). A resume must agree."""
DEVICE = "device"
"""Root attribute: the kind of device the mining pass began on ("cpu", "cuda"); absent in runs made
before it. A resume on another kind is allowed and recorded (STRETCHES): devices round otherwise."""
STRETCHES = {"batch_size": "batch_sizes", DEVICE: "devices"}
"""Root attributes a resume may change, each with the attribute that records its stretches
([first image, value] each) once it did: readers say where a run's last bits come from."""
FORWARD_OPTIONS = "forward_options"
PLAIN_FORWARD_OPTIONS: dict[str, Any] = {"autocast": None, "channels_last": False, "compile": False}
"""Root attribute: the forward options the mining pass ran with (mining.options.SpeedOptions);
a run without the record was mined with the plain pass, these."""

RELEASED_VERSIONS = {1: "0.1.0"}
"""Schema versions of released sketchmine, by version: their complete runs are read as they are
(the final arrays' layout did not change); their unfinished runs cannot be resumed here."""


# ---- arrays: dtype, fill value, chunking -----------------------------------------------------
ROW_CHUNK = 8192
"""Default rows per chunk of the per-image arrays (the miner passes the rows of one flush)."""


CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
"""Every array's chunk keys: `c.0.0` in the array's own folder, not `c/0/0` two folders below it
(Zarr v3's default encoding with its other separator; any Zarr reads either, per array). Most
arrays here are one chunk, so "/" made two folders per array, each a file-system metadata write
(docs/store.md has the times). Runs written with "/" before read and resume as they are: each
array's metadata names its encoding."""


@dataclass(frozen=True)
class ArraySpec:
    """How one kind of array is stored; `chunks(shape, rows)` gives its chunk shape (`rows`: the
    run's row chunk, or the units of a block)."""

    dtype: Any
    fill_value: Any
    chunks: Callable[[tuple[int, ...], int], tuple[int, ...]]


def _by_rows(shape: tuple[int, ...], rows: int) -> tuple[int, ...]:
    return (min(max(shape[0], 1), rows), *shape[1:])


ARRAYS: dict[str, ArraySpec] = {
    LABELS: ArraySpec("int64", -1, _by_rows),
    PATHS: ArraySpec(str, None, _by_rows),
    DIGESTS: ArraySpec(str, None, _by_rows),
    CLASS_NAMES: ArraySpec(str, None, lambda shape, rows: (max(shape[0], 1),)),
    IMAGE_COORD: ArraySpec(str, None, _by_rows),
    CLASS_COORD: ArraySpec(str, None, lambda shape, rows: (max(shape[0], 1),)),
    OUTPUT_COORD: ArraySpec(str, None, lambda shape, rows: (max(shape[0], 1),)),
    LOGITS: ArraySpec("float32", float("nan"), _by_rows),
    PREDICTIONS: ArraySpec("int64", -1, _by_rows),
}
"""The per-image arrays, written row block by row block while mining. Every other final array
(layers/<name>/{values, image_index, yx, nan_count, class_*}, eval/per_class_accuracy,
dataset/class_*) is written whole as one chunk with the dtype its accumulator gives, except
layers/<name>/{class_mean, class_count}: chunks of 64 classes (store/columns.py), fill NaN and 0,
only the chunks of classes the layer saw written."""

VISUAL_ARRAYS: dict[str, ArraySpec] = {
    "patches": ArraySpec("uint8", 0, lambda shape, rows: (1, *shape[1:])),  # one chunk per unit
    "deconv": ArraySpec("uint8", 128, lambda shape, rows: (1, *shape[1:])),
    "boxes": ArraySpec("int32", -1, lambda shape, rows: (min(shape[0], 4096), *shape[1:])),
    "inside": ArraySpec("int32", -1, lambda shape, rows: (min(shape[0], 4096), *shape[1:])),
}
"""layers/<name>/{patches, deconv} (C, k, h, w, channels) and {boxes, inside} (C, k, 4) of a
visualize pass, written a block of units at a time."""
PATCHES_ONLY = "none"
"""The `visualize --method` that crops patches and makes no deconvolutions (an ONNX run's: ONNX
Runtime gives no gradients): its pass writes no `deconv` array."""


def visual_arrays(method: str | None) -> tuple[str, ...]:
    """The arrays a visualize pass with `method` writes."""
    return tuple(key for key in VISUAL_ARRAYS if key != "deconv" or method != PATCHES_ONLY)


# ---- each unit's whole distribution (the distribution accumulators, mine --distributions) --------
DISTRIBUTION_ARRAYS: dict[str, str] = {
    "hist_edges": "(C, 65) float64 edges of the exact histogram of the image maxima (stats/histogram.py)",
    "hist_counts": "(C, 64) int64 images per histogram bin (±inf in the edge bins, NaN left out)",
    "max_range": "(C, 2) float32 exact [min, max] of the non-NaN image maxima",
    "sketch_counts": "(C, 2, 512) int32 quantile-sketch buckets [negative, positive] (stats/sketch.py)",
    "sketch_top": "(C, 2) int64 largest bucket key per sign (-1: none)",
    "sketch_special": "(C, 3) int64 counts of -inf, exact-zero and +inf maxima",
    "example_edges": "(C, 18) float64 edges of the example bins (stats/examples.py)",
    "example_index": "(C, 17, 8) int64 images per example bin, smallest hash first (-1: fewer)",
    "bottom_values": "(C, k) float32 the k least image maxima, least first (stats/bottomk.py)",
    "bottom_image_index": "(C, k) int64 their images (-1: empty slot)",
    "bottom_yx": "(C, k, 2) int32 where in the map each maximum lies",
}
"""layers/<name>/<array> of the distribution accumulators, written whole by the mining pass
(layer_array(layer, name)). Runs mined before them lack these arrays; readers say so."""
# ---- unit effects and correlated units (sketchmine effects), layer_result groups ------------
EFFECTS = "effects"
EFFECT_ARRAYS = {"logit": "logit_delta", "prob": "prob_delta"}
"""layers/<name>/effects/{logit_delta, prob_delta}: float64 (C, K), the mean change of each
class's logit / softmax probability when the unit is zeroed (ablated minus clean, mean over
all the run's images). attrs: images, method, units_per_pass, ablation, delta."""
CORRELATED = "correlated"
CORRELATED_ARRAYS = {"unit": "int32", "r": "float32"}
"""layers/<name>/correlated/{unit, r}: (C, m) the m units of the same layer whose image maxima
correlate most with each unit (Pearson r, largest first; unit -1 and r NaN pad). attrs: m,
images, nonfinite, constant_units, constant (which units are constant: none listed, and the views
say why), block_units, order."""
IMPORTANCE = "importance"
"""layers/<name>/importance/{prob_drop, acc_drop, mean_act_correct, mean_act_wrong}: float64 (C,)
per-unit ablation importance (passes/importance.py). attrs: images, base accuracy, method, ..."""
TRACES = "traces"
"""layers/<name>/traces/activation: float32 (C, k, T) each top-k entry's activation over time
(passes/traces.py)."""
PICTURE_GROUPS = {"bottom": "bottom_pictures", "bins": "bin_pictures"}
"""layers/<name>/<group>/{patches, deconv, boxes, inside}: the pictures of the bottom-k and of the
bin examples that `visualize(..., examples="all")` writes (passes/example_pictures.py)."""
# ---- dimension names (Zarr v3 `dimension_names`: xarray and other readers name the axes) -----
DIMENSIONS: dict[str, tuple[str, ...]] = {
    LABELS: ("image",), PATHS: ("image",), DIGESTS: ("image",), CLASS_NAMES: ("class",),
    IMAGE_COORD: ("image",), CLASS_COORD: ("class",), OUTPUT_COORD: ("output",),
    dataset_array("class_image_count"): ("class",), dataset_array("class_ink_density"): ("class",),
    LOGITS: ("image", "output"), PREDICTIONS: ("image",), PER_CLASS_ACCURACY: ("class",),
}
"""dataset/ and eval/ arrays. The logits' second axis is the model's outputs ("output"), which
may be more than the dataset's classes (a 1000-way head over 10 named classes)."""

LAYER_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "values": ("unit", "rank"), "image_index": ("unit", "rank"), "yx": ("unit", "rank", "axis"),
    "nan_count": ("unit",), "firing": ("unit",), "max_count": ("unit",), "max_mean": ("unit",),
    "class_nan_count": ("unit",), "class_mean": ("unit", "class"), "class_count": ("unit", "class"),
    "patches": ("unit", "rank", "patch_y", "patch_x", "channel"),
    "deconv": ("unit", "rank", "patch_y", "patch_x", "channel"),
    "boxes": ("unit", "rank", "box"), "inside": ("unit", "rank", "box"),
    "hist_edges": ("unit", "hist_edge"), "hist_counts": ("unit", "hist_bin"), "max_range": ("unit", "range"),
    "sketch_counts": ("unit", "sign", "bucket"), "sketch_top": ("unit", "sign"), "sketch_special": ("unit", "special"),
    "example_edges": ("unit", "example_edge"), "example_index": ("unit", "example_bin", "example"),
    "bottom_values": ("unit", "rank"), "bottom_image_index": ("unit", "rank"), "bottom_yx": ("unit", "rank", "axis"),
    "optimized": ("unit", "optimized_y", "optimized_x", "channel"), "optimized_peak": ("unit",),
    "optimized_stopped": ("unit",),
}
"""layers/<name>/<array>, by array name; results of later passes by their group's name below.
The (y, x) pairs' last axis is "axis" (0: y, 1: x), not "yx": xarray takes an array named as one
of its dimensions for that dimension's coordinate, so `yx` left the data variables and was
attached to bottom_yx. Runs written before keep "yx" there; sketchmine reads them by array name."""

RESULT_DIMENSIONS: dict[str, tuple[str, ...]] = {
    IMPORTANCE: ("unit",),              # layers/<name>/importance/<column>
    TRACES: ("unit", "rank", "step"),   # layers/<name>/traces/activation
    EFFECTS: ("unit", "output"),        # layers/<name>/effects/{logit_delta, prob_delta}
    CORRELATED: ("unit", "neighbour"),  # layers/<name>/correlated/{unit, r}
}


GROUP_DIMENSIONS: dict[str, dict[str, str]] = {PICTURE_GROUPS["bins"]: {"rank": "bin_entry"}}
"""Picture groups whose arrays are laid out as the top-k's (by array name above) but along
another entry axis: layers/<name>/bin_pictures/* hold bins × examples entries per unit, not k.
xarray's DataTree requires a dimension shared with a parent group to have the parent's size."""


def dimension_names(path: str, ndim: int) -> tuple[str, ...]:
    """The axis names stored with the array at `path` (relative to the run's root). Every array
    gets names, so a generic Zarr v3 reader (xarray) can open the whole run: an array not
    declared above (the checkpoint's state) gets names of its own, `<array>_0`, `<array>_1`, ..."""
    parent, _, name = path.rpartition("/")
    dims = DIMENSIONS.get(path)
    if dims is None and path.startswith(f"{LAYERS}/"):
        group = parent.rpartition("/")[2]
        dims = RESULT_DIMENSIONS.get(group) or LAYER_DIMENSIONS.get(name)
        if dims is not None and group in GROUP_DIMENSIONS:
            dims = tuple(GROUP_DIMENSIONS[group].get(d, d) for d in dims)
    if dims is None or len(dims) != ndim:
        return tuple(f"{name}_{i}" for i in range(ndim))
    return dims
OPTIMIZED = "optimized"
"""layers/<name>/ attribute of a feature visualisation pass (visualize --optimize): {method, steps,
seed, regularizers, size, block_units, units_done, complete}; units below units_done are committed."""

OPTIMIZED_ARRAYS: dict[str, ArraySpec] = {
    "optimized": ArraySpec("uint8", 0, lambda shape, rows: (1, *shape[1:])),  # one chunk per unit
    "optimized_peak": ArraySpec("float32", float("nan"), lambda shape, rows: (min(max(shape[0], 1), 4096),)),
    "optimized_stopped": ArraySpec("int64", -1, lambda shape, rows: (min(max(shape[0], 1), 4096),)),
}
"""layers/<name>/optimized (C, H, W, channels) uint8: each unit's optimised input image;
optimized_peak (C,): the unit's spatial maximum at that image; optimized_stopped (C,): the step a
non-finite value stopped the unit at, -1 none, NO_GRADIENT where its objective gave the input no
gradient at any step. Written a block of units at a time."""
NO_GRADIENT = -2
"""optimized_stopped of a unit the optimisation never moved (0 where its objective reads it, as after
a ReLU): its image is the starting noise as the regularisers left it, not an optimised input."""
