"""Running per-channel top-k of one layer: a small mergeable statistics object.

Knows nothing about models: `add` takes activations, `merge` combines two states
(workers, ranks), `state_dict`/`load_state_dict` save and resume. The heavy lifting is
the compiled op `topk_update`. `TopK` is the mining pass's accumulator (accumulators.py)
over every layer: one `RunningTopK` each, and the image maxima for the other statistics.

A softmax layer (the virtual one, or a model's own) is ranked by each class's log-odds of the
logits it was fed (`Batch.fed`), not its float32 probability: past a margin of about 17 over the
runner-up p rounds to exactly 1.0, every such image ties and the tie-break (smaller image index)
would rank confident images in dataset order. Its values stay the probabilities the layer gave
(see `RunningTopK`).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from sketchmine.errors import SketchmineError
from sketchmine.lazy import lazy
from sketchmine.store import schema

if TYPE_CHECKING:
    import torch

    from sketchmine.stats import ops
    from sketchmine.stats.accumulators import Batch, Setup
else:  # imported on first use: reading a run needs neither (sketchmine/lazy.py)
    torch, ops = lazy("torch", globals()), lazy("sketchmine.stats.ops", globals())

KEY = "topk"
"""The top-k's namespace in the checkpoint (RunStore.read_checkpoint_state(KEY))."""
_PER_ENTRY = ("values", "index", "position")  # (C, k) per layer; nan_count is (C,)
LOG_ODDS = "log_odds"
"""State array: per layer 1 where its top-k ranks log-odds (`log_odds`), 0 where its values."""


def log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) float32 z_c = logit_c - logsumexp_{j != c} logit_j, so p_c = sigmoid(z_c): the
    ranking key of the softmax layer, monotone in p, and still finite and apart where float32 p
    is 1.0 or 0.0. logits (N, C), any float dtype; z is ±inf only where -inf logits make p 0 or 1.

    Stable in float32: for a class other than the row's argmax the others' sum holds the
    argmax's exp(0) = 1, so it is at least 1 and subtracting the class's own term loses nothing;
    the argmax's own sum (tiny once confident) is taken over the others shifted by the runner-up.
    """
    x = logits.float()
    if x.shape[1] < 2:
        return torch.softmax(x, 1)  # one class: p = 1 for every image, nothing to tell apart
    top, arg = x.topk(2, dim=1)
    first, second, arg = top[:, :1], top[:, 1:], arg[:, :1]
    e = torch.exp(x - first)
    z = (x - first) - torch.log(e.sum(1, keepdim=True) - e)
    others = torch.exp(x.scatter(1, arg, float("-inf")) - second).sum(1, keepdim=True)
    z_top = torch.where(second == float("-inf"), float("inf"), (first - second) - torch.log(others))
    return z.scatter(1, arg, z_top)


def shown_values(values: np.ndarray, index: np.ndarray, position: np.ndarray, log_odds: bool) -> np.ndarray:
    """(C, k) float32 values a reader shows for a state's entries: the ranked values, or for a
    layer ranked by log-odds the probabilities its position slots hold (-inf in empty slots)."""
    if not log_odds:
        return values
    shown = np.asarray(position).astype(np.int32).view(np.float32)
    return np.where(np.asarray(index) < 0, np.float32(-np.inf), shown).astype(np.float32)


def batch_entries(image_index: torch.Tensor, heap_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which entries of a heap's (C, k) `heap_index` came from the batch just merged, whose global
    ids are `image_index` (N,), non-empty: (rows, new), each (C, k): the batch row of each entry's
    image (meaningless where not new) and whether it is from this batch (an image is in one batch)."""
    order = torch.argsort(image_index)
    ranked = image_index[order]
    at = torch.searchsorted(ranked, heap_index).clamp_max(len(ranked) - 1)
    return order[at], (ranked[at] == heap_index) & (heap_index >= 0)


class RunningTopK:
    """The k best (value, image, position) entries per channel of one layer.

    Entries are sorted best-first; empty slots have image index -1. `spatial` is the
    layer's grid (H, W), () for layers without one (FC, softmax).

    A layer ranked by a key other than the value it shows (the softmax: log-odds, showing p)
    has no grid, so its position slot, always 0 otherwise, holds the shown value's float32 bits:
    the op, the merge and the checkpoint carry it with its entry, and p stays exactly what
    torch.softmax gave (`shown_values` reads it back).
    """

    def __init__(self, channels: int, k: int, spatial: tuple[int, ...] = (),
                 device: torch.device | str = "cpu") -> None:
        self.channels, self.k, self.spatial = channels, k, tuple(spatial)
        self.state = ops.new_state(channels, k, device)

    def add(self, acts: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Merge a batch: acts (N, C, *spatial), image_index (N,) int64 global ids. Returns the
        (N, C) float32 image maxima it ranked (NaN: an all-NaN map), for the class statistics."""
        return ops.topk_update(acts, image_index, **self.state)

    def add_keyed(self, key: torch.Tensor, shown: torch.Tensor, image_index: torch.Tensor) -> None:
        """Merge a batch of a grid-less layer ranked by `key` (N, C) float32, NaN exactly where
        `shown` (N, C) is NaN; each new entry keeps its shown value in its position slot."""
        ops.topk_update(key, image_index, **self.state)
        if not len(image_index):
            return
        rows, new = batch_entries(image_index, self.state["index"])
        chans = torch.arange(rows.shape[0], device=rows.device)[:, None]
        bits = shown.float()[rows, chans].view(torch.int32).long()
        self.state["position"].copy_(torch.where(new, bits, self.state["position"]))

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

    State: all layers packed, one flat array per key (a few checkpoint writes whatever the
    depth): values, index, position (C*k per layer, in layer order), nan_count (C per layer),
    channels and log_odds (per layer, so a reader can unpack it, see `unpack`).

    `log_odds`: the layers ranked by the log-odds of the batch's logits (`log_odds`) while the
    statistics after it see the probabilities the layer was fed (the virtual softmax)."""

    key, title = KEY, "top-k"

    def __init__(self, layers: Sequence[tuple[str, int, tuple[int, ...]]], k: int,
                 device: torch.device | str = "cpu", log_odds: Collection[str] = ()) -> None:
        self.k = k
        self.layers = {name: RunningTopK(c, k, spatial, device) for name, c, spatial in layers}
        self.log_odds = [name in log_odds for name in self.layers]
        self._keyed = {name for name in self.layers if name in log_odds}

    def start_batch(self, batch: Batch) -> None:
        return None

    def update(self, layer: str, acts: torch.Tensor, batch: Batch) -> None:
        if len(acts) != len(batch.index):  # the probe's image passed; a model's rows that follow not the batch
            raise SketchmineError(f"layer {layer!r} returned {len(acts)} rows for a batch of {len(batch.index)} "
                                  "images, though one for the one image it was probed with: its first dimension does "
                                  "not follow the batch, so its positions cannot be credited to images; mine the "
                                  "modules before or after it")
        if layer not in self._keyed:
            batch.maxima[layer] = self.layers[layer].add(acts, batch.index)
            return
        logits = batch.fed.get(layer)
        if logits is None:
            raise RuntimeError(f"layer {layer!r} is ranked by the log-odds of the logits it was fed, and it has none")
        key = batch.keys[layer] = log_odds(logits).masked_fill(torch.isnan(acts), float("nan"))  # NaN (counted) where p is
        self.layers[layer].add_keyed(key, acts, batch.index)
        # a grid-less layer's maxima are its values, copied: `acts` may be the module's own output, which
        # the forward can still change in place (p.mul_) before the statistics holding the maxima read them
        batch.maxima[layer] = acts.to(torch.float32, copy=True)

    def end_batch(self, batch: Batch) -> None:
        return None

    def state(self) -> dict[str, np.ndarray]:
        parts = {name: s.state_dict() for name, s in self.layers.items()}
        out = {key: np.concatenate([p[key].numpy().ravel() for p in parts.values()])
               for key in (*_PER_ENTRY, "nan_count")}
        out["channels"] = np.array([s.channels for s in self.layers.values()], dtype=np.int64)
        out[LOG_ODDS] = np.array(self.log_odds, dtype=np.int64)
        return out

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        channels = [s.channels for s in self.layers.values()]
        if list(np.asarray(state.get("channels", []))) != channels:
            raise ValueError(f"layer channels {list(state.get('channels', []))} are not the run's {channels}")
        saved = _log_odds(state)
        if saved != self.log_odds:  # a checkpoint from before the softmax was ranked by log-odds
            names = ", ".join(repr(name) for name, a, b in zip(self.layers, saved, self.log_odds) if a != b)
            raise ValueError(f"{names} ranked by {'log-odds' if any(saved) else 'probability'} there, "
                             f"by {'log-odds' if any(self.log_odds) else 'probability'} now")
        for s, st in zip(self.layers.values(), unpack(state, list(self.layers)).values()):
            s.load_state_dict({key: torch.from_numpy(v) for key, v in st.items()})

    def merge(self, other: TopK) -> None:
        for name, s in self.layers.items():
            s.merge(other.layers[name])

    def results(self) -> dict[str, np.ndarray]:
        """layers/<name>/{values (C, k) float32, image_index (C, k) int64, yx (C, k, 2) int32,
        nan_count (C,) int64}."""
        arrays: dict[str, np.ndarray] = {}
        for (name, s), keyed in zip(self.layers.items(), self.log_odds):
            st = {key: t.numpy() for key, t in s.state_dict().items()}
            arrays.update({schema.layer_array(name, "values"): shown_values(st["values"], st["index"],
                                                                             st["position"], keyed),
                           schema.layer_array(name, "image_index"): st["index"],
                           schema.layer_array(name, "yx"): s.yx().numpy(),
                           schema.layer_array(name, "nan_count"): st["nan_count"]})
        return arrays


def keyed_layers(state: Mapping[str, np.ndarray], layers: Sequence[str]) -> frozenset[str]:
    """The layers a saved top-k (or bottom-k) state ranks by log-odds (`layers`: the run's order)."""
    return frozenset(name for name, keyed in zip(layers, _log_odds(state)) if keyed)


def _log_odds(state: Mapping[str, np.ndarray]) -> list[bool]:
    """Per layer whether the state ranks it by log-odds (a state from before: none)."""
    saved = state.get(LOG_ODDS)
    return [False] * len(state["channels"]) if saved is None else [bool(v) for v in np.asarray(saved)]


def unpack(state: Mapping[str, np.ndarray], layers: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """A `TopK.state()` as per-layer {values, index, position (C, k); nan_count (C,)} copies,
    plus `shown` (C, k): the values a reader shows (`shown_values`); `layers` in the order of
    the run's layer_names. ValueError when the arrays do not fit."""
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
    for name, c, keyed in zip(layers, channels.tolist(), _log_odds(state)):
        st = {key: np.asarray(state[key][at * k:(at + c) * k]).reshape(c, k).copy() for key in _PER_ENTRY}
        st["nan_count"] = np.asarray(state["nan_count"][at:at + c]).copy()
        st["shown"] = shown_values(st["values"], st["index"], st["position"], keyed)
        out[name] = st
        at += c
    return out


def accumulator(setup: Setup) -> TopK:
    """The registry's factory (accumulators.REGISTRY): always present, first; `setup.log_odds`
    ranked by log-odds."""
    return TopK([(l.name, l.channels, l.spatial) for l in setup.layers], setup.k, setup.device, setup.log_odds)
