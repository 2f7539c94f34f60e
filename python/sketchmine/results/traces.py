"""Reading the activation traces the traces pass (passes/traces.py) stores for layers whose
position is time: layers/<name>/traces/activation, float32 (C, k, T), each top-k entry's
unit over every step of its sequence (NaN: empty slot). Here so that the report reads them
without importing the pass.
"""
from __future__ import annotations

import numpy as np

from sketchmine.results.run import Run
from sketchmine.store import schema

MAX_TRACE_IMAGES = 4000
"""Traces are computed (one forward pass over the layer's top-k images) only when the layer's
top-k hold at most this many distinct images."""

ARRAY = "activation"


def read_traces(run: Run, layer: str) -> np.ndarray | None:
    """The stored (C, k, T) float32 traces of `layer`, or None when the pass has not written them."""
    got = run.layer_result(layer, schema.TRACES, (ARRAY,))
    return None if got is None else got[0][ARRAY]
