"""Ablation mechanics: zeroing units of one layer, batched, and the pass that measures what
that does to the correct class over a dataset (`ablation_importance`). importance.py runs it
for a mined run and stores the results; this module knows nothing of runs or stores.

Batched two ways, chosen per layer (recorded as `method`):

- "split": the network cut at the layer (cut.py); the head runs once per image chunk, and
  only the tail runs for the ablations, G units at a time on a G-times replicated chunk
  (each replica zeroes another unit). The cut is checked against the full model's logits
  before it is used.
- "replicate" (when the model cannot be traced or cut): the whole model runs on a
  G-times replicated chunk, a forward hook zeroing a different unit in each replica.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sketchmine.data import MinerDataset, collate
from sketchmine.errors import SketchmineError
from sketchmine.mining.allocator import kept_freed_memory_on
from sketchmine.model import cut
from sketchmine.model.modes import eval_mode, input_dtype
from sketchmine.model.layouts import CHANNELS_LAST, FEATURES_LAST
from sketchmine.model.taps import (SOFTMAX, TIME_FIRST, Taps, ablation_dims, final_hidden,
                                   probe_layouts, replace_element, replace_hidden, tapped_element, to_units)
from sketchmine.model.output_softmax import softmax_logits
from sketchmine.passes.ablation_checks import (check_before_softmax, check_finite, check_images_apart,
                                               check_not_probabilities, logits_of)
from sketchmine.stats.correlation import image_maxima

_BUDGET = 1 << 23  # elements of one replicated activation tensor (32 MB float32)
ABLATION = ("unit zeroed at every position (a recurrent unit: in the layer's output at every step and in the last "
            "layer's final hidden state h_n; an LSTM's cell state c_n is left as it is)")


# ---- ablation plumbing --------------------------------------------------------------------
def zero_units(t: torch.Tensor, batch_dim: int, unit_dim: int, units: list[int],
               replicate: bool = False) -> torch.Tensor:
    """A new tensor of G = len(units) replicas stacked along `batch_dim` (replica-major), where
    replica g has unit `units[g]` zeroed along `unit_dim` (every position). `t` holds the G
    replicas already, or (replicate=True) one copy that is replicated in the same single pass.
    No units: a plain copy."""
    if not units:
        return t.clone()
    bd, ud = batch_dim % t.ndim, unit_dim % t.ndim
    g = len(units)
    v = t.unsqueeze(bd) if replicate else t.unflatten(bd, (g, -1))
    ud = ud + 1 if ud > bd else ud
    mask = torch.zeros(g, t.shape[unit_dim], dtype=torch.bool, device=t.device)
    mask[torch.arange(g), torch.as_tensor(units)] = True
    shape = [1] * v.ndim
    shape[bd], shape[ud] = g, t.shape[unit_dim]
    return torch.where(mask.view(shape), torch.zeros((), dtype=t.dtype, device=t.device), v).flatten(bd, bd + 1)


def batch_dims(small: Any, large: Any, sizes: tuple[int, int]) -> Any:
    """Where each value of two runs of the head (on batches of `sizes` images) holds the batch:
    the one dim whose size follows the batch (B or B·T folded rows), None where the batch does not
    reach the value (a time embedding of arange(T)), nested as the values are. Told by how the
    value depends on the batch, not by whether a dim divides by one chunk's size: a (T, F)
    tensor does for a chunk of T images. A value it cannot tell raises SketchmineError."""
    a, b = sizes
    if isinstance(small, torch.Tensor) and isinstance(large, torch.Tensor) and small.ndim == large.ndim:
        moved = [d for d in range(small.ndim) if small.shape[d] != large.shape[d]]
        if not moved:
            return None
        if len(moved) == 1 and small.shape[moved[0]] * b == large.shape[moved[0]] * a:
            return moved[0]
    elif (isinstance(small, (tuple, list)) and isinstance(large, (tuple, list))
          and type(small) is type(large) and len(small) == len(large)):
        return [batch_dims(s, v, sizes) for s, v in zip(small, large)]
    elif not isinstance(small, torch.Tensor) and not isinstance(large, torch.Tensor) and type(small) is type(large):
        try:
            if bool(small == large):
                return None
        except Exception:  # no plain equality: cannot tell
            pass
    raise SketchmineError("cannot tell which dim of a value computed before the layer holds the batch")


def replicate_along(obj: Any, dims: Any, g: int) -> Any:
    """G replicas of each tensor in `obj` stacked along its batch dim (`batch_dims`, replica-major,
    as zero_units stacks the layer's output); values the batch does not reach copied as they are.
    Always new tensors: the tail may change a value of the head in place (`x.add_(branch(x))`), and
    the head's values serve every tail run of the chunk."""
    if isinstance(dims, list):
        return type(obj)(replicate_along(o, d, g) for o, d in zip(obj, dims))
    if not isinstance(obj, torch.Tensor):
        return obj
    return obj.clone() if dims is None or g == 1 else torch.cat([obj] * g, dim=dims)


class Replicate:
    """Whole-model forward on a replicated batch; a hook zeroes one unit per replica.

    `known`: the layer's recorded attributes (`Run.layer_attrs`, or `layer_layout`); they fix
    the layout of a chunk that cannot tell it (a per-step Linear after a time-first recurrent
    layer, on a chunk of as many images as steps). Without them the first chunk's layout is kept.
    """

    method = "replicate"

    def __init__(self, net: nn.Module, layer: str, known: Mapping[str, Any] | None = None) -> None:
        self.net, self.layer = net, layer
        self.target, self.module = cut.cut_module(net, layer)
        self.dims = ablation_dims(layer, self.module)
        self.known: dict[str, Any] = {}
        self._keep(dict(known or {}))
        self.fed: bool | None = None  # the output is the model's final softmax: found on the first forward

    def logits(self, forward: Callable[[], Any]) -> torch.Tensor:
        """The (N, classes) logits of `forward()`: the model's output, or, where that output is its
        final softmax (`softmax_logits`), the logits that softmax was fed, as mining takes such a
        model (the passes take a softmax of what this returns; one of probabilities is not the model's)."""
        if self.fed is False:
            return logits_of(forward())
        out, fed = softmax_logits(forward)
        if self.fed is None:
            self.fed = fed is not None
        elif fed is None:
            raise SketchmineError(f"ablating layer {self.layer!r}: the model's final softmax, found on its first "
                                  "forward pass, is not where its output comes from on a later one")
        return fed if fed is not None else logits_of(out)

    def prepare(self, x: torch.Tensor) -> Any:
        return x

    def base(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Unablated logits (B, classes) and the layer's (B, units, *positions) output."""
        act: dict[str, torch.Tensor] = {}
        with Taps(self.net, [self.layer], lambda n, t: act.__setitem__("t", t.clone()),  # before in-place ops
                  known={self.layer: self.known}) as taps:
            logits = self.logits(lambda: self.net(x.clone()))  # a model may change its input in place
        self._keep(taps.layouts.get(self.layer, {}))
        check_before_softmax(self.layer, act["t"], logits, self.fed)
        return logits, act["t"]

    def _keep(self, layout: Mapping[str, Any]) -> None:
        """Keep the first layout seen for every later chunk; a per-step Linear after a time-first
        recurrent layer holds the batch in dim 1, a module held channels last its units in the last."""
        if not self.known:
            self.known = dict(layout)
        if self.known.get("layout") == TIME_FIRST:
            self.dims = (1, self.dims[1])
        elif self.known.get("layout") in (CHANNELS_LAST, FEATURES_LAST):
            self.dims = (self.dims[0], -1)

    def _zeroed(self, output: Any, t: torch.Tensor, units: list[int]) -> Any:
        """`output` (replicated) with element 0 replaced by `t` (units zeroed already) and, for a
        recurrent module, the same units zeroed in the last layer's h_n: it holds the same
        hidden state, and a model reading h_n[-1] would otherwise see no ablation at all."""
        output = replace_element(output, t)
        hidden = final_hidden(self.module, output)
        if hidden is None or not units:
            return output
        return replace_hidden(self.module, output, zero_units(hidden, 0, 1, units))

    def run(self, x: Any, units: list[int], replicas: int) -> torch.Tensor:
        """(replicas * B, classes) logits; replica g zeroes units[g] (none when units is empty)."""
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
            t = tapped_element(self.layer, module, output)
            return self._zeroed(output, zero_units(t, *self.dims, units), units)

        handle = self.module.register_forward_hook(hook)
        try:
            return self.logits(lambda: self.net(torch.cat([x] * replicas)))
        finally:
            handle.remove()


class Split(Replicate):
    """The network cut at the layer (cut.split over cut.trace_at): the head once per chunk,
    the tail per ablation group."""

    method = "split"

    def __init__(self, net: nn.Module, layer: str, known: Mapping[str, Any] | None = None) -> None:
        super().__init__(net, layer, known)
        self.prefix, self.suffix = cut.split(*cut.trace_at(net, layer))
        self.dims_of: Any = None  # batch dims of the head's outputs after the layer's element 0

    def prepare(self, x: torch.Tensor) -> tuple:
        """The chunk size, the layer's output and every earlier value the rest of the network reads.
        The first chunk also finds which of those hold the batch: the head run on its first image
        two and three times over (sizes 1 or a chunk's could leave a squeezed or coincident dim)."""
        if self.dims_of is None:
            sizes = (2, 3)
            small, large = (self.prefix(torch.cat([x[:1]] * n)) for n in sizes)
            self.dims_of = [batch_dims(_rest(small[0]), _rest(large[0]), sizes),
                            batch_dims(list(small[1:]), list(large[1:]), sizes)]
        return (len(x), *self.prefix(x.clone()))  # a model may change its input in place: x serves every run

    def base(self, state: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        t = tapped_element(self.layer, self.module, state[1])
        units, layout = to_units(self.layer, self.module, t, state[0], known=self.known)
        self._keep(layout)
        return self.run(state, [], 1), units

    def run(self, state: tuple, units: list[int], replicas: int) -> torch.Tensor:
        _, tapped, *live = state
        t = tapped_element(self.layer, self.module, tapped)
        zeroed = (zero_units(t, *self.dims, units, replicate=True) if units
                  else torch.cat([t] * replicas, dim=self.dims[0]))
        rest = tapped
        if isinstance(tapped, (tuple, list)):  # element 0 is replaced; the rest (h_n, c_n) by where they hold the batch
            rest = type(tapped)((tapped[0], *replicate_along(_rest(tapped), self.dims_of[0], replicas)))
        rep = self._zeroed(rest, zeroed, units)
        return self.logits(lambda: self.suffix(rep, *replicate_along(live, self.dims_of[1], replicas)))


def _rest(tapped: Any) -> list[Any]:
    """The layer's outputs after element 0 (h_n and c_n of a recurrent layer); none for one tensor."""
    return list(tapped[1:]) if isinstance(tapped, (tuple, list)) else []


def layer_layout(net: nn.Module, layer: str, x: torch.Tensor) -> dict[str, Any]:
    """How the layer's output is read, from a forward pass of one image (`probe_layouts`, as the
    miner's probe: (T, 1, F) cannot be mistaken for (1, T, F)), for callers without the run's attributes."""
    return dict(probe_layouts(net, [layer], x[:1].clone()).get(layer, {}))  # x[:1] a view: the input kept as it is


def choose_ablator(net: nn.Module, layer: str, x: torch.Tensor,
                   known: Mapping[str, Any] | None = None, check_batch: bool = True) -> Replicate:
    """The split ablator when the model can be cut at the layer and the cut reproduces the
    model's logits (two replicas, nothing zeroed), else whole-model replication. `known`: the
    layer's recorded attributes; None probes them with one image (`layer_layout`). `check_batch`:
    run `check_images_apart` on `x` (False: the caller has, for this model, on this dataset)."""
    known = layer_layout(net, layer, x) if known is None else known
    replicate = Replicate(net, layer, known)
    reference = replicate.base(x)[0]
    if check_batch:
        check_images_apart(lambda t: replicate.logits(lambda: net(t)), layer, x, reference)
    try:
        split = Split(net, layer, known)
        with torch.inference_mode():
            got = split.run(split.prepare(x), [], 2)
        if got.shape == (2 * len(x), reference.shape[1]) and torch.allclose(
                got, torch.cat([reference] * 2), rtol=1e-4, atol=1e-5):
            return split
    except Exception:  # untraceable or uncuttable model: replication (which raises what is wrong, if anything)
        pass
    return replicate


def unit_groups(act_shape: torch.Size | tuple[int, ...], units_per_pass: int | None) -> list[list[int]]:
    """The layer's units (act_shape: (B, units, *positions) of one chunk) in groups ablated
    together: `units_per_pass` each, or as many as keep one replicated activation tensor
    within _BUDGET elements."""
    units, per = act_shape[1], max(1, math.prod(act_shape[1:]))
    g = units_per_pass or max(1, min(units, _BUDGET // (per * act_shape[0])))
    return [list(range(s, min(s + g, units))) for s in range(0, units, g)]


def image_batches(dataset: MinerDataset, batch_size: int, left_out: Collection[int] = ()
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(global image indices, images) of `dataset` in order, `batch_size` at a time, without the
    images `left_out` (those the run's `mine --skip-bad-images` left out for good: the passes
    average over the run's images, as its statistics do). Any other unreadable image is refused
    (an ablation pass averages over every image of the run)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for idx, x, _, notes in loader:
        bad = [int(i) for i, n in zip(idx, notes) if n.startswith("error:") and int(i) not in left_out]
        if bad:
            raise SketchmineError(f"cannot read image {dataset.path(bad[0])}, which the run mined: ablation averages "
                                  "over every image of the run; restore the file as it was mined")
        keep = [j for j, i in enumerate(idx) if int(i) not in left_out]
        if len(keep) < len(idx):
            idx, x = idx[keep], x[keep]
        if len(idx):
            yield idx, x


@dataclass
class AblatedBatch:
    """One batch of an ablation pass: its images, the clean logits and activations, and the unit
    groups it zeroes (`outputs` runs them)."""

    idx: Any
    x: torch.Tensor
    logits: torch.Tensor
    act: torch.Tensor
    groups: list[list[int]]
    method: str  # how the ablator zeroes the units (Replicate.method)
    _run: Callable[[list[int]], torch.Tensor]

    def outputs(self) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Each group and the model's output with its units zeroed, (group, images, outputs) float64."""
        for group in self.groups:
            yield group, self._run(group).double().view(len(group), len(self.x), -1)


def ablated_batches(net: nn.Module, dataset: MinerDataset, layer: str, batch_size: int, device: torch.device,
                    units_per_pass: int | None, known: Mapping[str, Any] | None, left_out: Collection[int],
                    check_batch: bool) -> Generator[AblatedBatch, None, None]:
    """The batches of `dataset` (but `left_out`) through `net` on `device` in eval and inference mode,
    `layer`'s units zeroed a group at a time; every output checked finite, the logits checked not
    probabilities. Importance and effects share this loop; the caller's flags come back after (a
    caller closes it, `contextlib.closing`, so they come back when its own step fails too)."""
    ablator, groups = None, list[list[int]]()
    with eval_mode(net), torch.inference_mode(), kept_freed_memory_on(device):
        for idx, x in image_batches(dataset, batch_size, left_out):
            x = x.to(device, input_dtype(net))  # a half model takes half input
            if ablator is None:
                ablator = choose_ablator(net, layer, x, known, check_batch)
            state = ablator.prepare(x)
            logits, act = ablator.base(state)
            check_finite(logits, idx, dataset, layer)
            check_not_probabilities(logits, layer)
            groups = groups or unit_groups(act.shape, units_per_pass)

            def run(group: list[int], ablator: Replicate = ablator, state: Any = state, idx: Any = idx) -> torch.Tensor:
                out = ablator.run(state, group, len(group))
                check_finite(out, idx, dataset, layer, group)
                return out

            yield AblatedBatch(idx, x, logits, act, groups, ablator.method, run)


@dataclass
class Importance:
    """Per-unit results (arrays of length units) and the facts they were computed under."""

    prob_drop: np.ndarray
    acc_drop: np.ndarray
    mean_act_correct: np.ndarray
    mean_act_wrong: np.ndarray
    attrs: dict[str, Any]


def ablation_importance(net: nn.Module, dataset: MinerDataset, layer: str, labels: np.ndarray,
                        batch_size: int = 256, device: str | torch.device = "cpu",
                        units_per_pass: int | None = None, known: Mapping[str, Any] | None = None,
                        left_out: Collection[int] = (), check_batch: bool = True) -> Importance:
    """Zero each unit of `layer` in turn over `dataset` (batched, see the module docstring).

    labels (N,) int64: the correct class of each image (all >= 0 but those `left_out`: the images
    the run skipped as unreadable). known: the layer's attributes as the run recorded them (its
    layout); None finds them with a one-image forward pass. check_batch: False where the caller
    checked the model with `check_images_apart` on this dataset already (a pass over many layers).
    """
    if layer == SOFTMAX:
        raise SketchmineError("layer 'softmax' is the model's output (virtual); ablate a module layer")
    device = torch.device(device)
    net = net.to(device)
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    sums: dict[str, torch.Tensor] = {}
    n_images = n_correct = 0
    prob_base_sum, method, groups = 0.0, None, list[list[int]]()
    # closed on a failure in this loop too, so the flags come back at once
    with contextlib.closing(ablated_batches(net, dataset, layer, batch_size, device, units_per_pass,
                                            known, left_out, check_batch)) as batches:
        for b in batches:
            y, groups, method = labels_t[b.idx].to(device), b.groups, b.method
            per_image = image_maxima(b.act)  # (B, units): the top-k's maxima, NaN inside a map ignored
            if not sums:
                sums = {k: torch.zeros(per_image.shape[1], dtype=torch.float64)
                        for k in ("prob", "correct", "act_ok", "act_bad", "seen_ok", "seen_bad")}
            base_p = torch.softmax(b.logits.double(), 1).gather(1, y[:, None])[:, 0]
            ok = b.logits.argmax(1) == y
            n_images += len(b.x)
            n_correct += int(ok.sum())
            prob_base_sum += float(base_p.sum())
            seen = ~torch.isnan(per_image)  # an all-NaN map has no maximum: left out, as the mined mean leaves it
            kept = per_image.double().masked_fill(~seen, 0.0)
            sums["act_ok"] += kept[ok].sum(0).cpu()
            sums["act_bad"] += kept[~ok].sum(0).cpu()
            sums["seen_ok"] += seen[ok].sum(0).double().cpu()
            sums["seen_bad"] += seen[~ok].sum(0).double().cpu()
            for group, out in b.outputs():
                p = torch.softmax(out, 2).gather(2, y[None, :, None].expand(len(group), -1, 1))[..., 0]
                sums["prob"][group] += (base_p[None] - p).sum(1).cpu()
                sums["correct"][group] += (out.argmax(2) == y[None]).sum(1).double().cpu()
    if not n_images:
        raise SketchmineError("the dataset is empty: no images to ablate over")
    return Importance(
        prob_drop=(sums["prob"] / n_images).numpy(),
        acc_drop=((n_correct - sums["correct"]) / n_images).numpy(),
        mean_act_correct=_mean(sums["act_ok"], sums["seen_ok"]),
        mean_act_wrong=_mean(sums["act_bad"], sums["seen_bad"]),
        attrs={"images": n_images, "base_accuracy": n_correct / n_images, "base_mean_prob": prob_base_sum / n_images,
               "method": method, "units_per_pass": len(groups[0]) if groups else 0,
               "ablation": ABLATION,
               "activation": "per-image maximum over the unit's positions"},
    )


def _mean(total: torch.Tensor, seen: torch.Tensor) -> np.ndarray:
    """Per unit the mean of the maxima summed in `total` over the `seen` images that have one;
    NaN for a unit without any (no image in the group, or all its maps all NaN)."""
    return np.where(seen.numpy() > 0, total.numpy() / np.maximum(seen.numpy(), 1), np.nan)
