"""The arrays of a feature visualisation pass (schema.OPTIMIZED_ARRAYS) and its `optimized`
attribute, written a block of units at a time like the visualize pass's patches: a block's
arrays first, then the commit of `units_done` in the attribute, so a killed pass resumes at a
block boundary. Functions on a RunStore (the caller holds its RunLock)."""
from __future__ import annotations

from typing import Any

import numpy as np

from sketchmine.store import schema
from sketchmine.store.io import io_errors, put_rows
from sketchmine.store.runstore import RunStore


def optimized_state(store: RunStore, layer: str) -> tuple[dict[str, Any] | None, bool]:
    """(the layer's `optimized` attribute or None, whether all its arrays exist)."""
    g = store.layer_group(layer)
    attrs = g.attrs.get(schema.OPTIMIZED)
    return (dict(attrs) if isinstance(attrs, dict) else None), all(key in g for key in schema.OPTIMIZED_ARRAYS)


@io_errors
def reset_optimized(store: RunStore, layer: str, units: int, size: tuple[int, int], channels: int,
                    attrs: dict[str, Any]) -> None:
    """Drop the layer's optimised arrays and claim, then create them empty (`units` images of
    `size` × `channels`) and set the claim `attrs`. The claim goes first, so an interruption
    leaves no claim on missing arrays."""
    g = store.layer_group(layer)
    if schema.OPTIMIZED in g.attrs:
        kept = dict(g.attrs)
        del kept[schema.OPTIMIZED]
        g.attrs.put(kept)
    for key in schema.OPTIMIZED_ARRAYS:
        if key in g:
            del g[key]
    for key, spec in schema.OPTIMIZED_ARRAYS.items():
        shape = (units, *size, channels) if key == "optimized" else (units,)
        g.create_array(key, shape=shape, dtype=spec.dtype, chunks=spec.chunks(shape, units),
                       fill_value=spec.fill_value)
    g.attrs[schema.OPTIMIZED] = attrs


def write_optimized(store: RunStore, layer: str, units: slice, values: dict[str, np.ndarray],
                    attrs: dict[str, Any]) -> None:
    """A block of units' arrays, then (the commit) the `optimized` attribute. OSError passes
    through: the caller says what is kept."""
    g = store.layer_group(layer)
    if values:
        put_rows({key: g[key] for key in values}, units, values)  # type: ignore[misc]
    g.attrs[schema.OPTIMIZED] = attrs
