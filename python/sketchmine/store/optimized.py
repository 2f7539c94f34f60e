"""The arrays of a feature visualisation pass (schema.OPTIMIZED_ARRAYS) and its `optimized`
attribute, written a block of units at a time like the visualize pass's patches: a block's
arrays first, then the commit of `units_done` in the attribute, so a killed pass resumes at a
block boundary. Functions on a RunStore (the caller holds its RunLock)."""
from __future__ import annotations

from typing import Any

import numpy as np

from sketchmine.store import schema
from sketchmine.store.runstore import RunStore


def optimized_state(store: RunStore, layer: str) -> tuple[dict[str, Any] | None, bool]:
    """(the layer's `optimized` attribute or None, whether all its arrays exist)."""
    return store.block_state(layer, schema.OPTIMIZED, schema.OPTIMIZED_ARRAYS)


def reset_optimized(store: RunStore, layer: str, units: int, size: tuple[int, int], channels: int,
                    attrs: dict[str, Any]) -> None:
    """Empty arrays for `units` images of `size` × `channels` (and per-unit peak and stop step),
    claimed by `attrs` (RunStore.reset_blocks: the claim goes first)."""
    shapes = {key: (units, *size, channels) if key == "optimized" else (units,) for key in schema.OPTIMIZED_ARRAYS}
    store.reset_blocks(layer, schema.OPTIMIZED, schema.OPTIMIZED_ARRAYS, shapes, attrs)


def write_optimized(store: RunStore, layer: str, units: slice, values: dict[str, np.ndarray],
                    attrs: dict[str, Any]) -> None:
    """A block of units' arrays, then (the commit) the `optimized` attribute. OSError passes
    through: the caller says what is kept."""
    store.write_blocks(layer, schema.OPTIMIZED, units, values, attrs)
