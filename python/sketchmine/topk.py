"""Running per-channel top-k of one layer: a small mergeable statistics object.

Knows nothing about models: `add` takes activations, `merge` combines two states
(workers, ranks), `state_dict`/`load_state_dict` save and resume. The heavy lifting is
the compiled op `topk_update`.
"""
from __future__ import annotations

import numpy as np
import torch

from . import ops


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
