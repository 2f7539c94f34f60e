"""Activation over time: for layers whose position is time (recurrent outputs, per-step linears,
time-distributed CNNs), each top-k entry's unit over every step of the entry's sequence.

A pass after mining (run by `visualize`, which has the model and the dataset at hand), so
that the report only reads the store:

    layers/<name>/traces/activation  float32 (C, k, T)  unit c's activation at each step of
                                     its r-th top-k sequence (the maximum over the frame's
                                     positions for time-distributed convs); NaN: empty slot
    attrs: steps T, images (distinct top-k images), complete

Layers whose top-k hold more than MAX_TRACE_IMAGES distinct images get no traces (the report
says so).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SketchmineError
from .run import Run

if TYPE_CHECKING:  # torch stays unimported for the report, which only reads stored traces
    from torch import nn

    from .data import MinerDataset
    from .store import RunStore

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


def is_timed(run: Run, layer: str) -> bool:
    """True when `layer`'s position is time (its entries have a step, so traces apply)."""
    attrs = run.layer_attrs(layer)
    return entry_steps(attrs, np.zeros((0, 0, 2), np.int32)) is not None


def compute(net: nn.Module, name: str, attrs: dict[str, Any], images: list[int], ds: MinerDataset,
            batch: int = 64, device: Any = "cpu") -> dict[int, np.ndarray]:
    """Per image, the layer's activation per unit and step (units, T) float32. One forward pass
    over `images` only, in batches of `batch` (ds[i][1] is image i's model input)."""
    import torch

    from .taps import Taps

    if not isinstance(net, torch.nn.Module):
        raise SketchmineError("activation over time needs the torch model")
    was_training = net.training
    net.eval()
    got: list[torch.Tensor] = []

    def keep(layer: str, t: torch.Tensor) -> None:
        t = t.detach().float()
        if attrs.get("position") == "time-stacked" and (t.ndim > 3 or (t.ndim == 3 and attrs.get("frame"))):
            n, c = t.shape[:2]
            t = t.reshape(n, c, int(attrs["time_steps"]), -1).amax(-1)
        got.append(t.cpu().clone())

    out: dict[int, np.ndarray] = {}
    try:
        with torch.no_grad(), Taps(net, [name], keep):
            for b in range(0, len(images), batch):
                chunk = images[b:b + batch]
                x = torch.stack([ds[i][1].float() for i in chunk]).to(device)
                got.clear()
                net(x)
                if len(got) != 1:
                    raise SketchmineError(f"layer {name!r} was not called exactly once")
                arr = got[0].numpy()
                for j, i in enumerate(chunk):
                    out[i] = arr[j]
    finally:
        net.train(was_training)
    return out


def layer_traces(run: Run, name: str, net: nn.Module, ds: MinerDataset,
                 device: Any = "cpu") -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(arrays, attrs) of one time layer's traces as the store holds them, or None when the
    layer has no time position or too many distinct top-k images."""
    attrs = run.layer_attrs(name)
    _, index, yx = run.topk(name)
    steps = entry_steps(attrs, yx)
    if steps is None:
        return None
    uniq = sorted({int(i) for i in np.unique(index) if i >= 0})
    if len(uniq) > MAX_TRACE_IMAGES:
        return None
    per_image = compute(net, name, attrs, uniq, ds, device=device)
    c, k = index.shape
    t = next((len(v[0]) for v in per_image.values()), steps[1])
    act = np.full((c, k, t), np.nan, dtype=np.float32)
    for u in range(c):
        for r in range(k):
            i = int(index[u, r])
            if i >= 0:
                act[u, r] = per_image[i][u]
    return {ARRAY: act}, {"steps": int(t), "images": len(uniq)}


def write_traces(store: RunStore, run: Run, layers: list[str], net: nn.Module, ds: MinerDataset,
                 device: Any = "cpu") -> list[str]:
    """Compute and store the traces of every time layer among `layers` (the caller holds the
    run's RunLock); returns the layers written."""
    written = []
    for name in layers:
        result = layer_traces(run, name, net, ds, device)
        if result is not None:
            store.write_result(name, "traces", *result)
            written.append(name)
    return written


def read_traces(run: Run, layer: str) -> np.ndarray | None:
    """The stored (C, k, T) float32 traces of `layer`, or None when the pass has not written them."""
    got = run.layer_result(layer, "traces", (ARRAY,))
    return None if got is None else got[0][ARRAY]
