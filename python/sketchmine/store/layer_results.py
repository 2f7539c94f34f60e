"""Storing what a pass after mining computed for a layer (importance, effects and correlated
units): the pass holds the run's lock shared while it computes for minutes (`RunLock.share`: a
writer that would hold the run whole is refused meanwhile, so the pass's work is never refused
at its end), and whole only to write its groups (`RunLock.exclusive`)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from sketchmine.store.lock import RunLock
from sketchmine.store.runstore import RunStore


def write_layer_results(path: str | os.PathLike, layer: str,
                        results: Mapping[str, tuple[dict[str, np.ndarray], dict[str, Any]]],
                        lock: RunLock | None = None) -> None:
    """Write `results` ({group name: (arrays, attrs)}, in order) on `layer` of the run at `path`,
    holding its RunLock whole (`lock`: the pass's shared hold, made whole for the write; None: the
    lock taken now); each group replaces the earlier one whole (RunStore.write_result), so an
    interrupted write leaves the earlier result, or none."""
    with RunLock(path) if lock is None else lock.exclusive():
        store = RunStore.open(path, mode="r+")
        for name, (arrays, attrs) in results.items():
            store.write_result(layer, name, arrays, attrs)
