"""Image maxima held for a few batches before a per-unit statistic takes them.

Why: each unit's histogram, quantile sketch and example picks is a few KB of state (about
70 MB over AlexNet's 10,344 units), and a batch of 64 images touched every unit's state for
only 64 values, so those updates were bound by cache misses: 33 ms a batch of 64 on AlexNet,
8 % of its forward. Given 512 images at a time, a unit's state is touched once per 512 values:
2.3x less time per image (benchmarks/held_maxima.py). These statistics give the same result for
any grouping of the images in order (their contract: the same for any batch size, resume
point or world size), so holding changes no result. The rows held are bounded in elements
(MAX_ELEMENTS), not in dataset size.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from sketchmine.lazy import lazy

if TYPE_CHECKING:
    import torch

    from sketchmine.stats.accumulators import Batch
else:  # imported on first use: reading a run does not need it (sketchmine/lazy.py)
    torch = lazy("torch", globals())


MAX_ROWS = 512
"""Images held at most: past ~512 the per-image time stops falling (measured on AlexNet)."""
MAX_ELEMENTS = 1 << 24
"""Held maxima at most, over all layers (64 MiB of float32): wide models hold fewer images."""

Sink = Callable[..., None]
"""The statistic's own update, a bound method (so a deep copy of the statistic feeds the copy):
(layer, maxima (R, C), image_index (R,)), or (layer, maxima) with with_index=False."""


class SharedBlocks:
    """The last block released per layer, shared by the statistics of one pass that hold the same
    batches: moments, histogram, sketch and examples all hold the top-k's maxima tensors and
    release them at the same rows, so the first to release concatenates and the others reuse it
    (four concatenations of the same block were ~40 ms of a 768-image AlexNet run). A block is
    reused only when its parts are the very same tensors (nothing writes to them: held.add)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[list[weakref.ref], torch.Tensor]] = {}

    def cat(self, key: str, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0]
        hit = self._last.get(key)
        if hit is not None and len(hit[0]) == len(parts) and all(r() is p for r, p in zip(hit[0], parts)):
            return hit[1]
        out = torch.cat(parts)
        self._last[key] = ([weakref.ref(p) for p in parts], out)  # the parts themselves may go
        return out


class HeldMaxima:
    """Per layer, the (maxima, image_index) of the batches since the last release, handed to
    `sink` as one block of rows, in arrival order, once `rows` images are held and at `release`.

    A statistic that holds calls `release()` before anything reads or copies its state
    (state, results, merge), so what it reports always includes every image it was given."""

    def __init__(self, units: int, sink: Sink, rows: int | None = None, with_index: bool = True,
                 blocks: SharedBlocks | None = None) -> None:
        self.rows = rows if rows is not None else max(1, min(MAX_ROWS, MAX_ELEMENTS // max(units, 1)))
        self._sink, self._with_index = sink, with_index
        self._blocks = blocks if blocks is not None else SharedBlocks()
        self._held: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def add(self, layer: str, maxima: torch.Tensor, image_index: torch.Tensor) -> None:
        """Hold one batch of `layer` (kept by reference: the top-k makes a new maxima tensor per
        batch, never the tapped output the forward may still change, and nothing writes to it later)."""
        if not len(maxima):
            return
        parts = self._held.setdefault(layer, [])
        parts.append((maxima, image_index))
        if sum(len(m) for m, _ in parts) >= self.rows:
            self._release(layer)

    def release(self) -> None:
        """Hand every held row to the statistic."""
        for layer in list(self._held):
            self._release(layer)

    def clear(self) -> None:
        """Drop every held row (the statistic's state is being replaced as a whole)."""
        self._held.clear()

    def _release(self, layer: str) -> None:
        parts = self._held.pop(layer, [])
        if not parts:
            return
        maxima = self._blocks.cat(layer, [m for m, _ in parts])
        if self._with_index:
            self._sink(layer, maxima, self._blocks.cat(f"{layer}\0index", [i for _, i in parts]))
        else:
            self._sink(layer, maxima)


class HeldStatistic:
    """The accumulator protocol's batch steps of a statistic fed the image maxima the top-k computed
    (`Batch.maxima_of`), through its `_held` rows: nothing at a batch's start or end, the layer's
    maxima held at `update`. Moments, histogram, quantile sketch and examples share them."""

    _held: HeldMaxima

    def start_batch(self, batch: Batch) -> None:
        return None

    def update(self, layer: str, acts: torch.Tensor, batch: Batch) -> None:
        self._held.add(layer, batch.maxima_of(layer), batch.index)

    def end_batch(self, batch: Batch) -> None:
        return None
