"""The arrays a later pass writes a block of units at a time (visualize's pictures, optimised
images), each block committed by the layer's claim attribute with the checksums of the blocks
written so far: RunStore's part for them."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sketchmine.store import attr_sums, schema, verify
from sketchmine.store.io import io_errors, put_rows


class BlockWrites:
    """RunStore's block writes (a mixin: `layer_group` and `path` are RunStore's)."""

    path: Path
    layer_group: Callable[[str], Any]

    # ---- arrays a pass writes a block of units at a time, committed by a claim attribute --------
    def block_state(self, layer: str, claim: str, specs: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """(the layer's `claim` attribute or None, whether all the arrays of `specs` exist)."""
        g = self.layer_group(layer)
        attrs = g.attrs.get(claim)
        return (dict(attrs) if isinstance(attrs, dict) else None), all(key in g for key in specs)

    @io_errors
    def reset_blocks(self, layer: str, claim: str, specs: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                     attrs: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
        """Drop the layer's arrays of `specs` (and `drop`) and its `claim`, then create them empty with
        `shapes` and set the claim to `attrs`. The claim goes first, so an interruption leaves no claim
        on missing arrays."""
        g = self.layer_group(layer)
        if claim in g.attrs:
            kept = dict(g.attrs)
            del kept[claim]
            g.attrs.put(kept)
        for key in (*specs, *drop):
            if key in g:
                del g[key]
        for key, spec in specs.items():
            shape = shapes[key]
            g.create_array(key, shape=shape, dtype=spec.dtype, chunks=spec.chunks(shape, shape[0]),
                           fill_value=spec.fill_value, chunk_key_encoding=schema.CHUNK_KEY_ENCODING,
                           dimension_names=schema.dimension_names(schema.layer_array(layer, key), len(shape)))
        g.attrs[claim] = attr_sums.sealed(attrs)

    def write_blocks(self, layer: str, claim: str, units: slice, values: dict[str, np.ndarray],
                     attrs: dict[str, Any] | None) -> None:
        """A block of units' arrays, then (the commit) the `claim` attribute unless None. OSError
        passes through: the caller says what is kept."""
        g = self.layer_group(layer)
        if values:
            put_rows({key: g[key] for key in values}, units, values)
        if attrs is not None:  # with the checksums of the blocks written so far and of this one
            attrs = verify.add_block({**attrs, verify.SUMS: (g.attrs.get(claim) or {}).get(verify.SUMS) or {}},
                                     {key: g[key] for key in values}, values, units, int(attrs["block_units"]))
            g.attrs[claim] = attr_sums.sealed(attrs)

    # ---- a visualize pass's arrays (schema.VISUAL_ARRAYS) and its `visualized` attribute -----
    def visual_state(self, layer: str) -> tuple[dict[str, Any] | None, bool]:
        """(the layer's `visualized` attribute or None, whether all its visualize arrays exist)."""
        g = self.layer_group(layer)
        have = g.attrs.get(schema.VISUALIZED)
        return have, all(key in g for key in schema.visual_arrays((have or {}).get("method")))

    def reset_visual(self, layer: str, units: int, k: int, size: tuple[int, int], channels: int,
                     visualized: dict[str, Any]) -> None:
        """Empty visualize arrays for `units` units of `k` entries (patches/deconv (units, k, *size,
        channels), boxes/inside (units, k, 4)), claimed by `visualized` (see reset_blocks): those its
        method writes (no deconv for patches only; an earlier pass's is dropped with the rest)."""
        keys = schema.visual_arrays(visualized.get("method"))
        shapes = {key: (units, k, *size, channels) if key in ("patches", "deconv") else (units, k, 4) for key in keys}
        self.reset_blocks(layer, schema.VISUALIZED, {key: schema.VISUAL_ARRAYS[key] for key in keys}, shapes, visualized,
                          drop=tuple(schema.VISUAL_ARRAYS))

    def write_visual(self, layer: str, units: slice, values: dict[str, np.ndarray],
                     visualized: dict[str, Any] | None) -> None:
        """A block of units' visualize arrays, then the `visualized` attribute (see write_blocks)."""
        self.write_blocks(layer, schema.VISUALIZED, units, values, visualized)
