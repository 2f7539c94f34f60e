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


class MissingTarget(RuntimeError):
    """A step the profile times is gone from sketchmine (renamed or moved): retarget it here."""


@contextmanager
def instrumented(dataset_type: type):
    """Patch the miner's steps with timers; yields the Timers. Raises MissingTarget, patching
    nothing, when a step is no longer where this expects it (a silently skipped step would leave
    its time in "other (unattributed)")."""
    from sketchmine.mining import loop, miner
    from sketchmine.model.forward import TorchForward
    from sketchmine.stats import ops
    from sketchmine.store.checkpoint import Checkpoints
    from sketchmine.store.runstore import RunStore

    timers = Timers()
    undo: list[tuple[Any, str, Any]] = []
    patches: list[tuple[Any, str, Any]] = []

    def patch_func(module, attr: str, label: str) -> None:
        orig = getattr(module, attr, None)
        if not callable(orig):
            raise MissingTarget(f"{module.__name__}.{attr} is gone: benchmarks/profile_mine.py times it ({label!r})")
        timers.order.append(label)
        undo.append((module, attr, orig))
        patches.append((module, attr, _wrap(orig, label, timers)))

    def patch_method(cls, attr: str, label: str) -> None:
        raw = cls.__dict__.get(attr)  # defined on cls itself: patched and restored there
        if raw is None:
            raise MissingTarget(f"{cls.__qualname__}.{attr} is not defined on {cls.__qualname__}: "
                                f"benchmarks/profile_mine.py times it ({label!r})")
        timers.order.append(label)
        undo.append((cls, attr, raw))
        patches.append((cls, attr, classmethod(_wrap(raw.__func__, label, timers)) if isinstance(raw, classmethod)
                        else _wrap(raw, label, timers)))

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
    # The functions are looked up through their modules' globals at each call (miner.load_model,
    # loop._flush, ...), so patching the module attribute times every call.
    patch_func(miner, "load_model", "setup: load_model")
    patch_method(TorchForward, "weights_hash", "setup: weights hash (xxh3 of every weight)")
    if "fingerprint" in dataset_type.__dict__:  # a dataset type may inherit it: then it is not timed apart
        patch_method(dataset_type, "fingerprint", "setup: dataset fingerprint")
    patch_func(miner, "_first_readable", "setup: _first_readable")
    patch_func(miner, "probe", "setup: probe (layer shapes)")
    patch_method(RunStore, "create", "setup: RunStore.create (zarr layout, layer groups, paths, labels)")
    timers.order.append(topk_label)
    undo.append((ops, "topk_update", orig_topk))
    patches.append((ops, "topk_update", topk_update))
    patch_func(loop, "_flush", "finish: loop._flush (periodic: rows + checkpoint of every state)")
    patch_method(Checkpoints, "write_checkpoint", "  of which RunStore.write_checkpoint")
    patch_func(loop, "_write_rows", "finish: loop._write_rows (logits, predictions, labels of the tail)")
    patch_method(RunStore, "write_rows", "  of which RunStore.write_rows")
    patch_func(loop, "_finalize", "finish: loop._finalize (layer arrays, accuracy, commit)")
    patch_method(RunStore, "write_results", "  of which RunStore.write_results (every final array, one call)")
    patch_method(RunStore, "finish", "  of which RunStore.finish (commit, drop checkpoint)")
    for obj, attr, wrapped in patches:  # every target found: only now is anything patched
        setattr(obj, attr, wrapped)
    try:
        yield timers
    finally:
        for obj, attr, orig in reversed(undo):
            setattr(obj, attr, orig)
