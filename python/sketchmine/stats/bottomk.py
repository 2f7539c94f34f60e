"""The k least-activating images of every unit (lucid's "negative" view), exact.

Ranks the (N, C) image maxima negated with the compiled top-k op, so it is the top-k with
the order reversed: smaller maximum first, ties to the smaller image index, NaN (an all-NaN
map) never ranked. The op's positions refer to the (N, C) input, so the position of each new
entry's maximum in its map is found afterwards: the first position holding the maximum, as
the top-k records it. An accumulator under the key "bottomk" (state, restore and merge are
the top-k's). A softmax layer is ranked by least log-odds (as the top-k ranks it by most: float32
p is 0.0 for every image past a logit gap of ~104, and would tie), showing p. Final arrays per
layer, mirroring the top-k's values / image_index / yx:

    layers/<name>/bottom_values      (C, k) float32   the maxima, least first (+inf: empty slot)
    layers/<name>/bottom_image_index (C, k) int64     -1: empty slot (fewer than k images)
    layers/<name>/bottom_yx          (C, k, 2) int32  where in the map the maximum lies
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sketchmine.lazy import lazy
from sketchmine.stats.topk import TopK, batch_entries, shown_values
from sketchmine.store import schema

if TYPE_CHECKING:
    import torch

    from sketchmine.stats import ops
    from sketchmine.stats.accumulators import Batch, Setup
else:  # imported on first use: reading a run needs neither (sketchmine/lazy.py)
    torch, ops = lazy("torch", globals()), lazy("sketchmine.stats.ops", globals())

KEY = "bottomk"


def first_position(acts: torch.Tensor, rows: torch.Tensor, chans: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Flat position of the first element equal to `value` in each map acts[rows, chans]."""
    maps = acts.reshape(acts.shape[0], acts.shape[1], -1)[rows, chans]
    length = maps.shape[1]
    ar = torch.arange(length, device=maps.device).expand_as(maps)
    return torch.where(maps == value[:, None], ar, length).amin(1).clamp_max(max(length - 1, 0))


class BottomK(TopK):
    """The top-k of the negated image maxima, with each entry's position in its map."""

    key, title = KEY, "bottom-k"

    def update(self, layer: str, acts: torch.Tensor, batch: Batch) -> None:
        if layer in self._keyed:  # a softmax: least log-odds first (float32 p is 0.0 for many images)
            self.layers[layer].add_keyed(-batch.keys[layer], acts, batch.index)  # the top-k's key (it comes first)
            return
        maxima = batch.maxima_of(layer)
        if not ops.compiled_here(maxima) or acts.dtype != torch.float32 or not len(maxima):
            return self.update_reference(layer, acts, maxima, batch.index)
        maps = acts.reshape(acts.shape[0], acts.shape[1], -1) if acts.dim() > 2 else maxima[:, :, None]
        ops.bottomk_update(maxima.float(), maps.contiguous(), batch.index, **self.layers[layer].state)

    def update_reference(self, layer: str, acts: torch.Tensor, maxima: torch.Tensor, image_index: torch.Tensor
                         ) -> None:
        """`update` in pure torch (the top-k op on the negated maxima, then each new entry's
        position): the specification of the kernel, and the path on other devices."""
        s = self.layers[layer]
        ops.topk_update((-maxima).contiguous(), image_index, **s.state)
        if acts.dim() <= 2 or not len(maxima):
            return
        rows, new = batch_entries(image_index, s.state["index"])
        chans, slots = new.nonzero(as_tuple=True)
        if len(chans):
            rows = rows[chans, slots]
            s.state["position"][chans, slots] = first_position(acts, rows, chans, maxima[rows, chans])

    def results(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for (name, s), keyed in zip(self.layers.items(), self.log_odds):
            st = s.state_dict()
            shown = (-st["values"]).numpy() if not keyed else np.where(
                st["index"].numpy() < 0, np.float32(np.inf),
                shown_values(st["values"].numpy(), st["index"].numpy(), st["position"].numpy(), True))
            arrays.update({schema.layer_array(name, "bottom_values"): shown,
                           schema.layer_array(name, "bottom_image_index"): st["index"].numpy(),
                           schema.layer_array(name, "bottom_yx"): s.yx().numpy()})
        return arrays


def accumulator(setup: Setup) -> BottomK | None:
    """The registry's factory: passes that asked for distributions (Setup.distributions)."""
    if not setup.distributions:
        return None
    return BottomK([(l.name, l.channels, l.spatial) for l in setup.layers], setup.k, setup.device, setup.log_odds)
