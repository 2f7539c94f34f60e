"""Storing what a pass after mining computed for a layer (importance, effects and correlated
units): the pass computes for minutes without the run's lock (it checks first that no other
process writes the run, `RunLock.check_free`), then takes the lock only to write its groups."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from sketchmine.store.lock import RunLock
from sketchmine.store.runstore import RunStore


def write_layer_results(path: str | os.PathLike, layer: str,
                        results: Mapping[str, tuple[dict[str, np.ndarray], dict[str, Any]]]) -> None:
    """Write `results` ({group name: (arrays, attrs)}, in order) on `layer` of the run at `path`,
    holding its RunLock; each group replaces the earlier one whole (RunStore.write_result), so
    an interrupted write leaves the earlier result, or none."""
    with RunLock(path):
        store = RunStore.open(path, mode="r+")
        for name, (arrays, attrs) in results.items():
            store.write_result(layer, name, arrays, attrs)
