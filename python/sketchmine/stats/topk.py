"""Running per-channel top-k of one layer: a small mergeable statistics object.

Knows nothing about models: `add` takes activations, `merge` combines two states
(workers, ranks), `state_dict`/`load_state_dict` save and resume. The heavy lifting is
the compiled op `topk_update`. `TopK` is the mining pass's accumulator (accumulators.py)
over every layer: one `RunningTopK` each, and the image maxima for the other statistics.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from sketchmine.stats import ops
from sketchmine.store import schema

if TYPE_CHECKING:
    from sketchmine.stats.accumulators import Batch, Setup

KEY = "topk"
"""The top-k's namespace in the checkpoint (RunStore.read_checkpoint_state(KEY))."""
_PER_ENTRY = ("values", "index", "position")  # (C, k) per layer; nan_count is (C,)


class RunningTopK:
    """The k best (value, image, position) entries per channel of one layer.

    Entries are sorted best-first; empty slots have image index -1. `spatial` is the
    layer's grid (H, W), () for layers without one (FC, softmax).
    """

    def __init__(self, channels: int, k: int, spatial: tuple[int, ...] = (),
                 device: torch.device | str = "cpu") -> None:
        self.channels, self.k, self.spatial = channels, k, tuple(spatial)
        self.state = ops.new_state(channels, k, device)

    def add(self, acts: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Merge a batch: acts (N, C, *spatial), image_index (N,) int64 global ids. Returns the
        (N, C) float32 image maxima it ranked (NaN: an all-NaN map), for the class statistics."""
        return ops.topk_update(acts, image_index, **self.state)

    def merge(self, other: RunningTopK) -> None:
        """Fold another state over disjoint images into this one (same tie-break)."""
        theirs = {key: t.to(self.state["values"].device) for key, t in other.state.items()}
        v, i, p = ops.merge_reference(
            self.state["values"], self.state["index"], self.state["position"],
            theirs["values"], theirs["index"], theirs["position"],
        )
        self.state["values"].copy_(v)
        self.state["index"].copy_(i)
        self.state["position"].copy_(p)
        self.state["nan_count"].add_(theirs["nan_count"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of the state tensors."""
        return {key: t.detach().cpu().clone() for key, t in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, t in self.state.items():
            src = torch.as_tensor(state[key])
            if src.shape != t.shape:
                raise ValueError(f"state {key!r} has shape {tuple(src.shape)}, expected {tuple(t.shape)}")
            t.copy_(src)

    def yx(self) -> torch.Tensor:
        """(C, k, 2) int32 grid coordinates of each entry; -1 for empty slots and grid-less layers."""
        return torch.from_numpy(flat_to_yx(self.state["position"].cpu().numpy(),
                                           self.state["index"].cpu().numpy(), self.spatial))


def flat_to_yx(position: np.ndarray, index: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """Flat spatial positions (C, k) → (C, k, 2) int32 (y, x); a 1-D grid gives y = 0;
    -1 for empty slots (index < 0) and for layers without a grid (FC, softmax)."""
    if len(spatial) == 2:
        yx = np.stack([position // spatial[1], position % spatial[1]], axis=-1)
    elif len(spatial) == 1:
        yx = np.stack([np.zeros_like(position), position], axis=-1)
    else:
        yx = np.full(position.shape + (2,), -1)
    yx = yx.astype(np.int32)
    yx[index < 0] = -1
    return yx


class TopK:
    """The top-k of every mined layer, as the pass's first accumulator: `update` ranks a
    layer's batch and puts the (N, C) image maxima it computed on the batch, for the
    statistics after it (class statistics, moments).

    State: all layers packed, one flat array per key (four checkpoint writes whatever the
    depth): values, index, position (C*k per layer, in layer order), nan_count (C per layer),
    channels (per layer, so a reader can unpack it, see `unpack`)."""

    key, title = KEY, "top-k"

    def __init__(self, layers: Sequence[tuple[str, int, tuple[int, ...]]], k: int,
                 device: torch.device | str = "cpu") -> None:
        self.k = k
        self.layers = {name: RunningTopK(c, k, spatial, device) for name, c, spatial in layers}

    def update(self, layer: str, acts: torch.Tensor, batch: Batch) -> None:
        batch.maxima[layer] = self.layers[layer].add(acts, batch.index)

    def end_batch(self, batch: Batch) -> None:
        return None

    def state(self) -> dict[str, np.ndarray]:
        parts = {name: s.state_dict() for name, s in self.layers.items()}
        out = {key: np.concatenate([p[key].numpy().ravel() for p in parts.values()])
               for key in (*_PER_ENTRY, "nan_count")}
        out["channels"] = np.array([s.channels for s in self.layers.values()], dtype=np.int64)
        return out

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        channels = [s.channels for s in self.layers.values()]
        if list(np.asarray(state.get("channels", []))) != channels:
            raise ValueError(f"layer channels {list(state.get('channels', []))} are not the run's {channels}")
        for s, st in zip(self.layers.values(), unpack(state, list(self.layers)).values()):
            s.load_state_dict({key: torch.from_numpy(v) for key, v in st.items()})

    def merge(self, other: TopK) -> None:
        for name, s in self.layers.items():
            s.merge(other.layers[name])

    def results(self) -> dict[str, np.ndarray]:
        """layers/<name>/{values (C, k) float32, image_index (C, k) int64, yx (C, k, 2) int32,
        nan_count (C,) int64}."""
        arrays: dict[str, np.ndarray] = {}
        for name, s in self.layers.items():
            st = s.state_dict()
            arrays.update({schema.layer_array(name, "values"): st["values"].numpy(),
                           schema.layer_array(name, "image_index"): st["index"].numpy(),
                           schema.layer_array(name, "yx"): s.yx().numpy(),
                           schema.layer_array(name, "nan_count"): st["nan_count"].numpy()})
        return arrays


def unpack(state: Mapping[str, np.ndarray], layers: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """A `TopK.state()` as per-layer {values, index, position (C, k); nan_count (C,)} copies;
    `layers` in the order of the run's layer_names. ValueError when the arrays do not fit."""
    channels = np.asarray(state["channels"], dtype=np.int64)
    if len(channels) != len(layers):
        raise ValueError(f"the top-k state holds {len(channels)} layers, the run {len(layers)}")
    total = int(channels.sum())
    k = len(state["values"]) // total if total else 0
    if any(len(state[key]) != total * k for key in _PER_ENTRY) or len(state["nan_count"]) != total:
        raise ValueError(f"top-k arrays of lengths {[len(state[key]) for key in (*_PER_ENTRY, 'nan_count')]} "
                         f"do not fit {total} units")
    out: dict[str, dict[str, np.ndarray]] = {}
    at = 0
    for name, c in zip(layers, channels.tolist()):
        st = {key: np.asarray(state[key][at * k:(at + c) * k]).reshape(c, k).copy() for key in _PER_ENTRY}
        st["nan_count"] = np.asarray(state["nan_count"][at:at + c]).copy()
        out[name] = st
        at += c
    return out


def accumulator(setup: Setup) -> TopK:
    """The registry's factory (accumulators.REGISTRY): always present, first."""
    return TopK([(l.name, l.channels, l.spatial) for l in setup.layers], setup.k, setup.device)
