"""The run store's schema: every path of a run, in one place.

A run is a Zarr v3 directory (see docs/store.md). Passes write through `store.RunStore` and
readers read through `run.Run`; both name arrays with these functions and constants, so no
other module spells a store path. A new per-layer statistic declares its arrays by name
(`layer_array(layer, name)`), and its accumulator says which (see accumulators.py).
"""
from __future__ import annotations

SCHEMA_VERSION = 2
"""2: the checkpoint holds every accumulator's state under one namespace per accumulator."""

DATASET = "dataset"
EVAL = "eval"
LAYERS = "layers"
CHECKPOINT = "_checkpoint"

LABELS = f"{DATASET}/labels"
PATHS = f"{DATASET}/paths"
CLASS_NAMES = f"{DATASET}/class_names"
LOGITS = f"{EVAL}/logits"
PREDICTIONS = f"{EVAL}/predictions"
PER_CLASS_ACCURACY = f"{EVAL}/per_class_accuracy"


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
