"""The things being timed: a bare batched forward, `sketchmine.mine`, and two
one-image-at-a-time loops in the way of the Deep Visualization Toolbox.

Every method reads the same dataset through a DataLoader and taps the same conv and
linear layers; all run under torch.inference_mode on the CPU. The reference forwards keep freed
memory as `mine` does on the CPU (sketchmine.mining.allocator), so a ratio measures mining, not
malloc; `glibc=True` runs them with glibc's own thresholds instead (what a plain script gets).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .common import PhaseClock, loader


def malloc_as(glibc: bool) -> contextlib.AbstractContextManager:
    """The allocator setting of a reference forward: mine's (freed memory kept), or glibc's own."""
    from sketchmine.mining.allocator import kept_freed_memory

    return contextlib.nullcontext() if glibc else kept_freed_memory()


# ---- (a) the floor: forward only ---------------------------------------------------------------
def bare_forward(model: nn.Module, ds, batch_size: int, num_workers: int, glibc: bool = False) -> float:
    """Iterate the same DataLoader mine iterates and run the model, no hooks: data + forward."""
    t0 = time.perf_counter()
    with torch.inference_mode(), malloc_as(glibc):
        for _idx, x, _y, _notes in loader(ds, batch_size, num_workers):
            model(x)
    return time.perf_counter() - t0


def read_forward(model: nn.Module, ds, layers: list[str], batch_size: int, num_workers: int) -> float:
    """bare_forward plus the least any miner does: each tapped output read once in its forward
    hook (the max over its positions, kept until the next batch). Its ratio to the bare forward
    is the floor under `mine`'s on this machine."""
    modules = dict(model.named_modules())
    kept: list[torch.Tensor] = []

    def read(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        kept.append(out.flatten(2).amax(2) if out.ndim > 2 else out.clone())

    handles = [modules[name].register_forward_hook(read) for name in layers]
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), malloc_as(False):
            for _idx, x, _y, _notes in loader(ds, batch_size, num_workers):
                kept.clear()
                model(x)
    finally:
        for h in handles:
            h.remove()
    return time.perf_counter() - t0


def stack_batches(ds, batch_size: int) -> list[torch.Tensor]:
    """The dataset pre-loaded as batches, for the forward-only reference."""
    return [x for _idx, x, _y, _notes in loader(ds, batch_size, 0)]


def pure_forward(model: nn.Module, batches: list[torch.Tensor], glibc: bool = False) -> float:
    """Forward over pre-stacked tensors: no data loading at all."""
    t0 = time.perf_counter()
    with torch.inference_mode(), malloc_as(glibc):
        for x in batches:
            model(x)
    return time.perf_counter() - t0


# ---- (b) sketchmine ------------------------------------------------------------------------------
def mine_once(model: nn.Module, ds, layers: list[str], batch_size: int, num_workers: int, k: int = 9,
              keep: Path | None = None, distributions: bool = False,
              preprocess: str | None = None,
              timed: contextlib.AbstractContextManager | None = None) -> tuple[dict[str, float], Path | None]:
    """One `sketchmine.mine` call into a fresh temporary directory (preprocess: mine's; "cpu" makes
    the loader the bare loop's, per image).

    Returns the phase times (total / setup / loop / finish, from PhaseClock) and, when
    `keep` is given, the run directory moved there (for the correctness cross-check). `timed`
    (a Meter) is entered around the `mine` call alone: making the temporary folder, measuring
    the store's bytes and removing the run are the benchmark's work, not mining's (removing
    AlexNet's run took 0.03 s, 0.7 % of a 768-image call, on a 2-core VM in session 46).
    """
    import sketchmine

    tmp = Path(tempfile.mkdtemp(prefix="sketchmine-bench-"))
    clock = PhaseClock()
    try:
        with timed if timed is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            sketchmine.mine(model, ds, layers=layers, k=k, out=tmp / "run.zarr", batch_size=batch_size,
                            device="cpu", num_workers=num_workers, progress=clock, distributions=distributions,
                            preprocess=preprocess)
            t1 = time.perf_counter()
        phases = clock.phases(t0, t1)
        phases["store_bytes"] = float(sum(f.stat().st_size for f in (tmp / "run.zarr").rglob("*") if f.is_file()))
        kept = None
        if keep is not None:
            if keep.exists():
                shutil.rmtree(keep)
            shutil.move(str(tmp / "run.zarr"), keep)
            kept = keep
        return phases, kept
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- (c) the Deep Visualization Toolbox way ---------------------------------------------------------
class DVTMaxTracker:
    """Running top-k of one layer as DVT's find_maxes does it: numpy arrays kept in
    ascending order per channel, updated by a Python loop over channels (searchsorted,
    then shift the lower entries down and write the new one)."""

    def __init__(self, channels: int, k: int) -> None:
        self.vals = np.full((channels, k), -np.inf, dtype=np.float32)  # ascending: worst first
        self.image = np.full((channels, k), -1, dtype=np.int64)
        self.pos = np.full((channels, k), -1, dtype=np.int64)  # flat spatial index

    def update(self, best: np.ndarray, argbest: np.ndarray, image_idx: int) -> None:
        vals, image, pos = self.vals, self.image, self.pos
        for c in range(best.shape[0]):
            v = best[c]
            i = int(np.searchsorted(vals[c], v))  # entries strictly below v
            if i == 0:
                continue
            vals[c, :i - 1] = vals[c, 1:i]
            image[c, :i - 1] = image[c, 1:i]
            pos[c, :i - 1] = pos[c, 1:i]
            vals[c, i - 1] = v
            image[c, i - 1] = image_idx
            pos[c, i - 1] = argbest[c]

    def best_first(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vals[:, ::-1].copy(), self.image[:, ::-1].copy()


class TorchTopK:
    """Running top-k of one layer, vectorised over channels: topk over cat(old, new)."""

    def __init__(self, channels: int, k: int) -> None:
        self.k = k
        self.vals = torch.full((channels, k), float("-inf"))
        self.image = torch.full((channels, k), -1, dtype=torch.int64)
        self.pos = torch.full((channels, k), -1, dtype=torch.int64)

    def update(self, best: torch.Tensor, argbest: torch.Tensor, image_idx: int) -> None:
        v = torch.cat([self.vals, best[:, None]], dim=1)
        im = torch.cat([self.image, torch.full_like(self.image[:, :1], image_idx)], dim=1)
        p = torch.cat([self.pos, argbest[:, None]], dim=1)
        top = torch.topk(v, self.k, dim=1)
        self.vals, self.image, self.pos = top.values, im.gather(1, top.indices), p.gather(1, top.indices)

    def best_first(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vals.numpy().copy(), self.image.numpy().copy()


def one_at_a_time(model: nn.Module, ds, layers: list[str], k: int = 9, num_workers: int = 0,
                  vectorised: bool = False) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """For each image: a batch-1 forward with forward hooks on `layers`; in each hook the
    per-channel spatial max (and its position) and a running top-k update.

    vectorised=False: the DVT loop (numpy, one Python iteration per channel).
    vectorised=True: one torch.topk over cat(old, new) per layer (a tidier researcher script).
    The update runs inside the hook, before an in-place ReLU can overwrite the output, so
    both see the same pre-activation values as sketchmine.
    """
    modules = dict(model.named_modules())
    trackers: dict[str, DVTMaxTracker | TorchTopK] = {}
    current = {"image": -1}

    def make_hook(name: str):
        def hook(_module, _inputs, out):
            a = out[0].reshape(out.shape[1], -1)  # (C, H*W) or (C, 1)
            best, arg = a.max(dim=1)
            if name not in trackers:
                trackers[name] = (TorchTopK if vectorised else DVTMaxTracker)(a.shape[0], k)
            if vectorised:
                trackers[name].update(best, arg, current["image"])
            else:
                trackers[name].update(best.numpy(), arg.numpy(), current["image"])

        return hook

    handles = [modules[n].register_forward_hook(make_hook(n)) for n in layers]
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for idx, x, _y, _notes in loader(ds, 1, num_workers):
                current["image"] = int(idx[0])
                model(x)
        elapsed = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return elapsed, {n: t.best_first() for n, t in trackers.items()}


# what a correctness check accepts (compare_with_run, passes): the same image, or one tied with it, in this
# share of the top-k slots, and values within this difference relative to the layer's largest |value|
MIN_INDEX_MATCH = 0.99
MAX_REL_DIFF = 1e-4


def compare_with_run(run_path: Path, reference: dict[str, tuple[np.ndarray, np.ndarray]],
                     activations: dict[str, np.ndarray] | None = None, tolerance: float = MAX_REL_DIFF) -> dict:
    """How close mine's top-k is to a reference's (batch-1 vs batched conv arithmetic differs in the
    last bits, so values are compared with a tolerance and image identity as a match fraction).

    image_index_match: slots holding the reference's image. tie_aware_match: also counting a slot
    whose image differs but is as good: with `activations` ({layer: (images, channels)} the reference's
    per-channel maxima), when the reference's value of mine's image is within `tolerance` of the slot's
    reference value; without, when the reference kept mine's image elsewhere in the unit's top-k with
    the same value (a tie ordered the other way), or mine's value is the reference's k-th (a tie at
    the edge, the reference kept another image). With
    `activations`, max_rel_value_diff also covers mine's value against its own image's reference value.
    duplicate_images: an image kept twice for one unit."""
    import sketchmine

    run = sketchmine.open_run(run_path)
    worst_rel, matches, tied, total, empty_mismatch, duplicates = 0.0, 0, 0, 0, 0, 0
    for name, (ref_v, ref_i) in reference.items():
        v, i, _yx = run.topk(name)
        # mine keeps k = the image count when there are fewer images; a loop's tracker leaves its slots empty
        width = max(i.shape[1], ref_i.shape[1])
        v, i, ref_v, ref_i = (np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)
                              for a, fill in ((v, -np.inf), (i, -1), (ref_v, -np.inf), (ref_i, -1)))
        filled = (i >= 0) & (ref_i >= 0)
        empty_mismatch += int(((i >= 0) != (ref_i >= 0)).sum())
        scale = max(float(np.abs(ref_v[filled]).max()), 1e-12) if filled.any() else 1.0
        if filled.any():
            worst_rel = max(worst_rel, float(np.abs(v[filled] - ref_v[filled]).max()) / scale)
        same = i == ref_i
        if activations is not None:
            act = activations[name]
            own = act[np.clip(i, 0, len(act) - 1), np.arange(i.shape[0])[:, None]]  # each slot's image, its channel
            if filled.any():
                worst_rel = max(worst_rel, float(np.abs(own[filled] - v[filled]).max()) / scale)
            as_good = np.abs(own - ref_v) <= tolerance * scale
        else:  # mine's image elsewhere in the reference's top-k with its value, or its value equal to the k-th
            close = np.abs(v[:, :, None] - ref_v[:, None, :]) <= tolerance * scale
            as_good = ((i[:, :, None] == ref_i[:, None, :]) & close).any(2) | close[:, :, -1]
        matches += int(same.sum())
        tied += int((same | (filled & as_good)).sum())
        total += i.size
        duplicates += sum(len(row) - len(set(row)) for row in (r[r >= 0].tolist() for r in i))
    return {"max_rel_value_diff": worst_rel, "image_index_match": matches / max(total, 1),
            "tie_aware_match": tied / max(total, 1), "empty_slot_mismatches": empty_mismatch,
            "duplicate_images": duplicates}


def passes(c: dict) -> bool:
    """A compare_with_run result within MIN_INDEX_MATCH (tie-aware) and MAX_REL_DIFF, no slot
    filled on one side only, no image twice in a unit."""
    return (c["tie_aware_match"] >= MIN_INDEX_MATCH and c["max_rel_value_diff"] <= MAX_REL_DIFF
            and c["empty_slot_mismatches"] == 0 and c["duplicate_images"] == 0)
