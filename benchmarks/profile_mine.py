"""Where does `mine`'s time go? Simple wall-clock timers wrapped (monkeypatched, and
always restored) around the miner's internal steps for one instrumented call.

This run is separate from the timed ones, so the timers cannot bias the ratios.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.topk_by_shape: dict[tuple[int, ...], float] = defaultdict(float)
        self.order: list[str] = []

    def steps(self) -> dict[str, float]:
        return {label: self.seconds[label] for label in self.order if label in self.seconds}


def _wrap(fn, label: str, timers: Timers):
    def wrapped(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers.seconds[label] += time.perf_counter() - t0
            timers.calls[label] += 1

    return wrapped


@contextmanager
def instrumented(dataset_type: type):
    """Patch the miner's steps with timers; yields the Timers."""
    from sketchmine.model import forward
    from sketchmine.mining import miner
    from sketchmine.stats import ops
    from sketchmine import store

    timers = Timers()
    undo: list[tuple[Any, str, Any]] = []

    def patch_func(module, attr: str, label: str) -> None:
        orig = getattr(module, attr, None)
        if orig is None:  # the miner changed; time what still exists
            return
        timers.order.append(label)
        undo.append((module, attr, orig))
        setattr(module, attr, _wrap(orig, label, timers))

    def patch_method(cls, attr: str, label: str) -> None:
        raw = cls.__dict__.get(attr)
        if raw is None:
            return
        timers.order.append(label)
        undo.append((cls, attr, raw))
        if isinstance(raw, classmethod):
            setattr(cls, attr, classmethod(_wrap(raw.__func__, label, timers)))
        else:
            setattr(cls, attr, _wrap(raw, label, timers))

    orig_topk = ops.topk_update
    topk_label = "loop: topk_update op (all layers)"

    def topk_update(acts, image_index, *state, **kw):
        t0 = time.perf_counter()
        try:
            return orig_topk(acts, image_index, *state, **kw)
        finally:
            dt = time.perf_counter() - t0
            timers.seconds[topk_label] += dt
            timers.calls[topk_label] += 1
            timers.topk_by_shape[tuple(acts.shape[1:])] += dt

    # Registration order is the display order: setup, loop, finish (children after parents).
    patch_func(miner, "load_model", "setup: load_model")
    patch_func(forward, "weights_hash", "setup: weights_hash (sha256 of every weight)")
    if "fingerprint" in dataset_type.__dict__:
        patch_method(dataset_type, "fingerprint", "setup: dataset fingerprint")
    patch_func(miner, "_first_readable", "setup: _first_readable")
    patch_func(miner, "probe", "setup: probe (layer shapes)")
    patch_method(store.RunStore, "create", "setup: RunStore.create (zarr layout, layer groups, paths, labels)")
    timers.order.append(topk_label)
    undo.append((ops, "topk_update", orig_topk))
    ops.topk_update = topk_update
    patch_func(miner, "_flush", "finish: _flush (periodic: rows + checkpoint of every state)")
    patch_method(store.RunStore, "write_checkpoint", "  of which RunStore.write_checkpoint")
    patch_func(miner, "_write_rows", "finish: _write_rows (logits, predictions, labels of the tail)")
    patch_method(store.RunStore, "write_rows", "  of which RunStore.write_rows")
    patch_func(miner, "_finalize", "finish: _finalize (layer arrays, accuracy, commit)")
    patch_method(store.RunStore, "write_results", "  of which RunStore.write_results (every final array, one call)")
    patch_method(store.RunStore, "finish", "  of which RunStore.finish (commit, drop checkpoint)")
    try:
        yield timers
    finally:
        for obj, attr, orig in reversed(undo):
            setattr(obj, attr, orig)
