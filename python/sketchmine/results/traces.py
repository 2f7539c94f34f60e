"""Reading the activation traces the traces pass (passes/traces.py) stores for layers whose
position is time: layers/<name>/traces/activation, float32 (C, k, T), each top-k entry's
unit over every step of its sequence (NaN: empty slot). Here so that the report reads them
without importing the pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sketchmine.results.run import Run
from sketchmine.store import schema

MAX_TRACE_IMAGES = 4000
"""Traces are computed (one forward pass over the layer's top-k images) only when the layer's
top-k hold at most this many distinct images."""

ARRAY = "activation"


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


def read_traces(run: Run, layer: str) -> np.ndarray | None:
    """The stored (C, k, T) float32 traces of `layer`, or None when the pass has not written them."""
    got = run.layer_result(layer, schema.TRACES, (ARRAY,))
    return None if got is None else got[0][ARRAY]
