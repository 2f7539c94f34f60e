"""One protocol for every statistic of the mining pass, and the registry of them.

The mining loop knows the verbs, not the statistics (the way dissect's tally.py relates to
runningstats): for each batch it calls `start_batch` before the forward, `update` per tapped
layer during it, then `end_batch`; at a
flush it takes `state()` of each; on resume it calls `restore`; across ranks `merge`; at
the end it writes `results()`. The checkpoint stores each state under its accumulator's
`key` (store.RunStore.write_checkpoint), the distributed merge gathers and folds them in
rank order, and nothing there names a statistic.

Adding a statistic = one module with a class meeting `Accumulator` and a factory, plus one
line in `REGISTRY` (see moments.py).

Dependency: the top-k accumulator is the one that computes the (N, C) image maxima (the
spatial max of each map, NaN for an all-NaN map) while ranking them; it is first in the
registry and puts them on the batch (`Batch.maxima`), where the later accumulators read
them (`Batch.maxima_of`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sketchmine.lazy import lazy
from sketchmine.stats.held import SharedBlocks
from sketchmine.store.columns import Columns

if TYPE_CHECKING:
    import torch
else:  # imported on first use: reading a run does not need it (sketchmine/lazy.py)
    torch = lazy("torch", globals())


@dataclass(frozen=True)
class LayerSpec:
    """One mined layer as the statistics see it: channels and grid ((H, W); () for FC/softmax)."""

    name: str
    channels: int
    spatial: tuple[int, ...] = ()


@dataclass(frozen=True)
class Setup:
    """What a factory may use to build its accumulator for one mining pass.

    num_classes: classes of the labels (0: none); mean/std: the input normalisation (empty:
    inputs in [0, 1]), for statistics of the input images."""

    layers: tuple[LayerSpec, ...]
    k: int
    device: torch.device
    num_classes: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    log_odds: frozenset[str] = frozenset()
    """Layers the top-k ranks by the log-odds of the logits they were fed (`Batch.fed`) rather than
    by their values (topk.py): softmax modules, and the virtual softmax over the model's logits."""
    distributions: bool = False
    """Keep each unit's whole distribution (histogram, quantile sketch, examples per bin, bottom-k).
    Opt-in: mine's default is the run's recorded setting, else off (their cost: docs/analysis.md)."""
    blocks: SharedBlocks = field(default_factory=SharedBlocks, compare=False)
    """The pass's held blocks of image maxima, concatenated once for every statistic that holds them."""


@dataclass
class Batch:
    """One batch of readable images as every accumulator sees it, all on the mining device.

    index (N,) int64 global image indices; labels (N,) int64 (-1: unknown); x the model's input
    (N, ch, H, W), normalised, as the dataset gave it only until the forward (the model may change
    its input in place: read it in `start_batch`); logits (N, classes) once the forward pass returned
    them (None before, or when the model gives none); maxima: per layer (N, C) float32 image maxima,
    put there by the top-k accumulator (first in the registry) as each layer arrives: tensors of their
    own, never a tapped output, which the forward may change in place after its module returned."""

    index: torch.Tensor
    labels: torch.Tensor
    x: torch.Tensor
    logits: torch.Tensor | None = None
    maxima: dict[str, torch.Tensor] = field(default_factory=dict)
    fed: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per layer ranked by log-odds (`Setup.log_odds`) the logits it was fed this batch: a softmax
    module's input (taps.RANKED_BY_INPUT), the model's logits for the virtual softmax."""
    keys: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per layer ranked by log-odds the (N, C) key the top-k ranked it by (the bottom-k's too)."""

    def maxima_of(self, layer: str) -> torch.Tensor:
        """(N, C) image maxima of `layer` in this batch; the top-k must have seen it first."""
        try:
            return self.maxima[layer]
        except KeyError:
            raise RuntimeError(f"no image maxima for layer {layer!r} in this batch: the top-k accumulator computes "
                               "them and must come first in accumulators.REGISTRY") from None


class Accumulator(Protocol):
    """A mergeable running statistic of the mining pass.

    key: its namespace in the checkpoint (unique, a plain name); title: how errors name it."""

    key: str
    title: str

    def start_batch(self, batch: Batch) -> None:
        """The batch before the forward pass: what reads the input images (`batch.x`), which the
        model may change in place."""

    def update(self, layer: str, acts: torch.Tensor, batch: Batch) -> None:
        """One layer of a batch: acts (N, C, *spatial) float32, contiguous, on the device; the
        module's own output, valid only during this call (the forward may change it in place later)."""

    def end_batch(self, batch: Batch) -> None:
        """Every layer of the batch was seen (batch.logits is set): batch-level work."""

    def state(self) -> dict[str, np.ndarray]:
        """A copy of the whole state as flat arrays (written on a thread while later batches
        change this object)."""

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Become exactly the object whose `state()` this was; ValueError when it does not fit."""

    def merge(self, other: Any) -> None:
        """Fold in the same statistic over disjoint images (another rank), in a fixed order."""

    def results(self) -> Mapping[str, np.ndarray | Columns]:
        """Final arrays by store path (schema.layer_array / schema.dataset_array); a table that is
        mostly its fill value may come as its data columns (store.columns.Columns)."""


Factory = Callable[[Setup], "Accumulator | None"]
"""Builds a pass's accumulator, or None when it does not apply (no labels for class statistics)."""


def _registry() -> list[Factory]:
    from sketchmine.stats import bottomk, classstats, examples, histogram, moments, sketch, topk

    return [
        topk.accumulator,  # first: computes the image maxima the others read (Batch.maxima)
        classstats.accumulator,
        moments.accumulator,
        histogram.accumulator,  # each unit's whole distribution and examples at every level
        sketch.accumulator,
        examples.accumulator,
        bottomk.accumulator,
    ]


REGISTRY: list[Factory] = _registry()


def build(setup: Setup, registry: Sequence[Factory] | None = None) -> list[Accumulator]:
    """The accumulators of one pass, in registry order (keys checked unique)."""
    made = [acc for acc in (f(setup) for f in (REGISTRY if registry is None else registry)) if acc is not None]
    keys = [a.key for a in made]
    if len(set(keys)) != len(keys) or any("/" in k or not k for k in keys):
        raise ValueError(f"accumulator keys must be unique plain names, got {keys}")
    return made
