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

from sketchmine.errors import SketchmineError
from sketchmine.results.run import Run
from sketchmine.results.summaries import entry_steps
from sketchmine.results.traces import ARRAY, MAX_TRACE_IMAGES
from sketchmine.store import schema

if TYPE_CHECKING:  # torch stays unimported for the report, which only reads stored traces
    from torch import nn

    from sketchmine.data import MinerDataset
    from sketchmine.store.runstore import RunStore

def compute(net: nn.Module, name: str, attrs: dict[str, Any], images: list[int], ds: MinerDataset,
            batch: int = 64, device: Any = "cpu") -> dict[int, np.ndarray]:
    """Per image, the layer's activation per unit and step (units, T) float32. One forward pass
    over `images` only, in batches of `batch` (ds[i][1] is image i's model input)."""
    import torch

    from sketchmine.model.modes import eval_mode, input_dtype
    from sketchmine.model.taps import Taps

    if not isinstance(net, torch.nn.Module):
        raise SketchmineError("activation over time needs the torch model")
    dtype = input_dtype(net)  # a half model refuses a float32 input
    got: list[torch.Tensor] = []

    def keep(layer: str, t: torch.Tensor) -> None:
        t = t.detach().float()
        if attrs.get("position") == "time-stacked" and (t.ndim > 3 or (t.ndim == 3 and attrs.get("frame"))):
            n, c = t.shape[:2]
            t = t.reshape(n, c, int(attrs["time_steps"]), -1).amax(-1)
        got.append(t.cpu().clone())

    out: dict[int, np.ndarray] = {}
    # the run's layout: top-k images as many as steps cannot tell a time-first (T, N) output from (N, T)
    with eval_mode(net), torch.no_grad(), Taps(net, [name], keep, known={name: attrs}):
        for b in range(0, len(images), batch):
            chunk = images[b:b + batch]
            x = torch.stack([ds[i][1] for i in chunk]).to(device, dtype)
            got.clear()
            net(x)
            if len(got) != 1:
                raise SketchmineError(f"layer {name!r} was not called exactly once")
            arr = got[0].numpy()
            for j, i in enumerate(chunk):
                out[i] = arr[j]
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
            store.write_result(name, schema.TRACES, *result)
            written.append(name)
    return written
