"""Input-space visualisation of single units: deconvnet, guided backprop, gradient.

One function; the methods differ only in the rule applied where the signal passes back
through a rectifier (deconv_rules.py), in a traced, rule-aware copy of the model: the caller's
model is never changed (eval mode during a call, each module's training flag put back after)
and no hook outlives the call. Batched: one unit per image, one forward and one backward for
the whole batch.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from sketchmine.errors import SketchmineError
from sketchmine.model import coupling, cut
from sketchmine.model.backend import LoadedModel, first_tensor
from sketchmine.model.models import torch_model
from sketchmine.model.modes import eval_mode, input_dtype
from sketchmine.model.output_softmax import softmax_logits
from sketchmine.model.graph import module_outputs
from sketchmine.model.field_record import ReceptiveField, box_mask
from sketchmine.model.taps import SOFTMAX, probe_layouts, tapped_element, to_units
from sketchmine.passes.deconv_rules import METHODS, stable_softmax, with_rule
from sketchmine.stats.ops import crop_patches

__all__ = ["METHODS", "Deconvolver", "deconvolve", "shared_order"]


class Deconvolver:
    """One traced, rule-aware copy of a model, reused for many batches and layers.

    The forward pass stops at the visualised layer (the rest of the network cannot change
    the unit's signal), so visualising an early layer costs only the layers before it. A
    layer is found by its output node in the graph (`module_outputs`), so modules that
    tracing inlines (ResNet and Inception blocks) are visualised like leaf modules.
    `layouts`: each layer's attributes as mined (`Run.layer_attrs`: how a time-first output was
    read); a layer without them is probed once on one image, as the miner does (T images can't tell).
    `sample`: one input's shape, for a model whose forward computes with its input's size (timm's
    Conv2dSame): its graph is traced at that size, holds for it only, and is never run on windows.
    """

    def __init__(self, model: nn.Module, method: str = "deconvnet",
                 layouts: Mapping[str, Mapping[str, Any]] | None = None, sample: tuple[int, ...] | None = None) -> None:
        if method not in METHODS:
            raise SketchmineError(f"unknown deconvolution method {method!r}; expected one of {', '.join(METHODS)}")
        self.model, self.method = model, method
        self.graph = with_rule(model, method, sample)  # run in eval mode by `_unit_outputs`
        self._sample: tuple[int, ...] | None = self.graph.meta.get("sample")  # traced at one input size
        self._outputs = module_outputs(self.graph)
        self._upto: dict[str, fx.GraphModule] = {}
        self._layouts: dict[str, Mapping[str, Any]] = dict(layouts or {})
        self._windowable: dict[str, bool] = {}

    def __call__(self, images: torch.Tensor, layer: str, channels, yx=None, steps: bool = False) -> torch.Tensor:
        """(N, C, H, W) float32 input-space signal of one unit (channel, position) per image.
        steps: the model reads sequences, (N, T, C, H, W); each image is given to it as a
        one-step sequence (for the convs of a time-distributed CNN, which see one frame); to a graph
        traced at T steps (`sample`), which takes T only, the frame at every step, the unit read at the
        first (a frame's units see that frame alone: the others change nothing in its signal)."""
        if steps:
            seq = images.unsqueeze(1)
            if self._sample is not None and len(self._sample) == seq.ndim - 1 and self._sample[0] != 1:
                seq = seq.expand(-1, self._sample[0], *seq.shape[2:])
            return self(seq, layer, channels, yx)[:, 0]
        x = self._input(images)
        with torch.enable_grad(), _dtype_refusal(x.dtype):
            out = self._unit_outputs(x, layer)
            (grad,) = torch.autograd.grad(out[_unit_index(out, torch.arange(len(x), device=out.device),
                                                          channels, yx)].sum(), x)
        return grad.detach().float()

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        """A leaf copy of `images` in the dtype of the model's parameters (a half or double
        model refuses a float32 input), to take the gradient at."""
        return images.detach().to(input_dtype(self.model), copy=True).requires_grad_(True)

    def shared(self, images: torch.Tensor, image_of, layer: str, channels, yx=None) -> torch.Tensor:
        """`self(images[image_of], layer, channels, yx)` with one forward per image of `images`
        instead of one per unit: the units of one image are seeded in separate slots of one
        batched backward (`torch.autograd.grad(..., is_grads_batched=True)`), which reuses that
        forward's switches and masks. Worth it where every unit needs the whole image (FC,
        softmax, recurrent units), when images recur among the units; order the units with
        `shared_order` so images with as many units go together (an image with fewer units
        than the most in the call leaves slots of zeros, computed all the same)."""
        image_of = torch.as_tensor(image_of).long().cpu()
        if len(image_of) == 0:
            return images.new_zeros((0, *images.shape[1:]), dtype=torch.float32)
        used, local = torch.unique(image_of, return_inverse=True)
        slot = _slots(local)
        x = self._input(images[used.to(images.device)])
        with torch.enable_grad(), _dtype_refusal(x.dtype):
            out = self._unit_outputs(x, layer)
            seeds = out.new_zeros((int(slot.max()) + 1, *out.shape))
            at = _unit_index(out, local.to(out.device), channels, yx)
            seeds[(slot.to(out.device), *at)] = 1
            (grad,) = torch.autograd.grad(out, x, grad_outputs=seeds, is_grads_batched=True)
        return grad[slot.to(grad.device), local.to(grad.device)].detach().float()

    def _unit_outputs(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """The layer's output for input x, in the layout the miner's taps read (N, units,
        *positions), so (channel, yx) address the same unit: a GRU's (N, T, H) is (N, H, T), a
        time-distributed conv's frames are stacked along y, an LSTM's cell state is its final
        c_n; the virtual softmax is the class probabilities. Runs in eval mode (flags put back)."""
        with eval_mode(self.model):
            return self._unit_outputs_eval(x, layer)

    def _unit_outputs_eval(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        if self._sample is not None and tuple(x.shape[1:]) != self._sample:
            raise SketchmineError(f"{type(self.model).__name__} was traced for deconvolution at its input's size, "
                                  f"{'×'.join(map(str, self._sample))} (its forward computes with that size), "
                                  f"and cannot take a {'×'.join(map(str, x.shape[1:]))} input")
        if layer == SOFTMAX:
            # the logits: the model's output, or what its own final softmax was fed (not a second softmax)
            out, fed = softmax_logits(lambda: self.graph(x))
            # in float32, as mined (a half model's confident probability loses its gradient to rounding),
            # and with a backward that keeps 1 - p where p is near 1 (deconv_rules.stable_softmax)
            return stable_softmax((first_tensor(out) if fed is None else fed).float(), dim=1)
        try:
            target, module = cut.cut_module(self.model, layer)  # "<lstm>.cell" reads its LSTM's output
        except SketchmineError:
            raise SketchmineError(f"unknown layer {layer!r} for deconvolution") from None
        cell, head = target != layer, self._head(target)  # the head first: its refusal names the traced graph
        if layer not in self._layouts:  # one image cannot be read both as (T, N, F) and as (N, T, F)
            self._layouts[layer] = probe_layouts(self.model, [layer], x).get(layer, {})
        raw = tapped_element(layer, module, head(x), cell)
        return to_units(layer, module, raw, x.shape[0], cell, self._layouts[layer])[0]

    def _head(self, layer: str) -> fx.GraphModule:
        """The rule-aware graph up to `layer`'s output, which it returns (cut.head; built once
        per layer, parameters shared): nothing after the layer is computed."""
        if layer not in self._upto:
            end = self._outputs.get(layer)
            if end is None:
                raise SketchmineError(f"layer {layer!r} does not appear once in the traced graph "
                                      "(is it called exactly once in forward?)")
            self._upto[layer] = cut.head(self.graph, end)
        return self._upto[layer]

    def windowable(self, layer: str) -> bool:
        """Whether `layer`'s units can be computed on windows of the image: no op in its cone
        reads the input's size or statistics over positions (`position_coupled`), and the graph was
        not traced at one input size (its sizes are numbers there, unseen). Once per layer:
        `field_crops` asks on every call, and the walk over the cone's graph is not free."""
        if layer not in self._windowable:
            self._windowable[layer] = layer != SOFTMAX and self._sample is None and not coupling.position_coupled(
                self._head(cut.cut_module(self.model, layer)[0]))
        return self._windowable[layer]

    def field_crops(self, images: torch.Tensor, image_index: torch.Tensor, layer: str, channels, yx,
                    field: ReceptiveField, steps: bool = False) -> torch.Tensor:
        """(N, C, *field.size): each unit's signal over its receptive-field box (zero outside the image).

        Computed on the smallest stride-aligned window of the image that holds the box: nothing
        outside the box reaches the unit, and a window that starts at a multiple of the layer's
        stride (or at the image border) gives every unit of the unit's cone the same inputs and
        padding as the whole image, so the result is exact — and an 11-px conv1 field costs an
        11-px forward, not a 224-px one. A layer that is not `windowable` (a window would change
        what it computes), or whose boxes no stride gives (behind an upsampling or a transposed conv:
        `field.spans`), is deconvolved on the whole image and cropped to each box. images (B, C, H, W);
        image_index (N,) into them; steps: the model reads sequences (see `__call__`).
        """
        (h, w), (jy, jx) = images.shape[-2:], field.stride
        pos = torch.as_tensor(yx).long().cpu()
        if field.spans is not None:
            boxes = field.boxes(pos)
            crops = self._whole_crops(images, image_index, layer, channels, pos, boxes[:, 0], boxes[:, 1], field, steps)
            return crops * box_mask(boxes, *field.size).to(crops.device)
        top = field.offset[0] + pos[:, 0] * jy
        left = field.offset[1] + pos[:, 1] * jx
        if not self.windowable(layer):
            return self._whole_crops(images, image_index, layer, channels, pos, top, left, field, steps)
        sy, sx = (top.clamp_min(0) // jy) * jy, (left.clamp_min(0) // jx) * jx
        # one window size for every interior unit (box + alignment slack), so they batch together;
        # only windows cut by the image's far border differ
        interior = [field.size[0] + jy - 1, field.size[1] + jx - 1]
        ey, ex = (sy + interior[0]).clamp_max(h), (sx + interior[1]).clamp_max(w)
        out = images.new_zeros((len(pos), images.shape[1], *field.size), dtype=torch.float32)
        channels = torch.as_tensor(channels).long()
        shapes = torch.stack([ey - sy, ex - sx], dim=1)
        # a box wholly past the image (a padded unit's): no pixel reaches the unit, its crop stays 0
        shapes[(top + field.size[0] <= 0) | (left + field.size[1] <= 0) | (top >= h) | (left >= w)] = 0
        for shape in torch.unique(shapes, dim=0).tolist():
            if min(shape) <= 0:
                continue
            group = torch.nonzero((shapes == torch.tensor(shape)).all(dim=1)).flatten()
            corners = torch.stack([sy[group], sx[group]], dim=1).to(images.device)
            windows = crop_patches(images, image_index[group.to(image_index.device)], corners, *shape)
            local = torch.stack([pos[group, 0] - sy[group] // jy, pos[group, 1] - sx[group] // jx], dim=1)
            try:
                signal = self(windows, layer, channels[group], local, steps)
            except (RuntimeError, SketchmineError):
                if shape == interior:
                    raise
                # a window cut by the image's border, too small for a layer before a pad whose units
                # past the image read only padding: the whole image has room for them
                at = group.to(image_index.device)
                out[group] = self._whole_crops(images, image_index[at], layer, channels[group], pos[group],
                                               top[group], left[group], field, steps).to(out.device)
                continue
            for j, n in enumerate(group.tolist()):  # the window may start before and end after the box
                ay, ax = int(max(top[n] - sy[n], 0)), int(max(left[n] - sx[n], 0))
                by, bx = int(sy[n] + ay - top[n]), int(sx[n] + ax - left[n])
                hh = min(shape[0] - ay, field.size[0] - by)
                ww = min(shape[1] - ax, field.size[1] - bx)
                out[n, :, by:by + hh, bx:bx + ww] = signal[j, :, ay:ay + hh, ax:ax + ww]
        return out

    def _whole_crops(self, images: torch.Tensor, image_index: torch.Tensor, layer: str, channels, pos: torch.Tensor,
                     top: torch.Tensor, left: torch.Tensor, field: ReceptiveField, steps: bool) -> torch.Tensor:
        """`field_crops` the plain way: each unit deconvolved on its whole image, cropped to its box."""
        sig = self(images[image_index], layer, channels, pos, steps)
        return crop_patches(sig, torch.arange(len(pos), device=sig.device),
                            torch.stack([top, left], dim=1).to(sig.device), *field.size)


@contextmanager
def _dtype_refusal(dtype: torch.dtype) -> Iterator[None]:
    """An op with no kernel for a half model's dtype (on the CPU, some have none) refused naming it."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as exc:
        name = str(dtype).removeprefix("torch.")
        if dtype not in (torch.float16, torch.bfloat16) or "not implemented for" not in str(exc):
            raise
        raise SketchmineError(f"the model's {name} parameters: an op of its forward or backward has no {name} "
                              f"kernel here ({str(exc).splitlines()[0]}); deconvolve a float32 copy of the model "
                              "(model.float()), or run it on a device that has one") from None


def _unit_index(out: torch.Tensor, n: torch.Tensor, channels, yx) -> tuple[torch.Tensor, ...]:
    """Indices into `out` of one unit per row n: (n, channel, y, x) on a grid, (n, channel, t)
    on a line of positions (time steps: yx = (0, t)), (n, channel, 0...) without positions
    (the run's yx convention for each layout)."""
    ch = _indices(channels, (len(n),), "channels", out.device)
    _check_within(ch, out.shape[1], "channels", "the layer's units")
    if out.ndim == 4:
        if yx is None:
            raise SketchmineError(f"yx is needed: the layer's output has a {out.shape[2]}×{out.shape[3]} grid")
        pos = _indices(yx, (len(n), 2), "yx", out.device)
        _check_within(pos[:, 0], out.shape[2], "yx's y", "the grid's rows")
        _check_within(pos[:, 1], out.shape[3], "yx's x", "the grid's columns")
        return n, ch, pos[:, 0], pos[:, 1]
    if out.ndim == 3 and yx is not None:
        t = _indices(yx, (len(n), 2), "yx", out.device)[:, 1]
        _check_within(t, out.shape[2], "yx's position", "the layer's positions")
        return n, ch, t
    return (n, ch, *[torch.zeros_like(n)] * (out.ndim - 2))


def _indices(value: Any, shape: tuple[int, ...], what: str, device: torch.device) -> torch.Tensor:
    """`value` as int64 indices of `shape` (one per image); a float (1.5 would be read as 1), a
    scalar or another count is refused, not truncated or broadcast."""
    t = torch.as_tensor(value, device=device)
    if t.is_floating_point() or t.dtype == torch.bool or tuple(t.shape) != shape:
        raise SketchmineError(f"{what} must be integers of shape {shape} (one per image), got {t.dtype} of shape "
                              f"{tuple(t.shape)}")
    return t.long()


def _check_within(i: torch.Tensor, size: int, what: str, of: str) -> None:
    """Indices in [0, size): a negative one (an empty top-k slot's -1) would address the last unit."""
    if len(i) and (int(i.min()) < 0 or int(i.max()) >= size):
        raise SketchmineError(f"{what} must lie in [0, {size}) ({of}), found {int(i.min())} to {int(i.max())}; "
                              "drop empty top-k slots (image index -1) before visualising them")


def _slots(group: torch.Tensor) -> torch.Tensor:
    """For each element, how many earlier elements have its group: 0, 1, ... within a group."""
    order = torch.argsort(group, stable=True)
    first = torch.searchsorted(group[order], group[order], side="left")
    slot = torch.empty_like(group)
    slot[order] = torch.arange(len(group)) - first
    return slot


def shared_order(image_of) -> torch.Tensor:
    """A permutation of units (one image index each) for `Deconvolver.shared` in chunks:
    images with the most units first, each image's units together, so a chunk holds images
    with similar numbers of units (few empty slots)."""
    image_of = torch.as_tensor(image_of).long().cpu()
    if len(image_of) == 0:
        return torch.zeros(0, dtype=torch.long)
    _, local, counts = torch.unique(image_of, return_inverse=True, return_counts=True)
    key = (counts.max() - counts[local]) * (len(counts) + 1) + local  # count descending, then image
    return torch.argsort(key, stable=True)


def deconvolve(model: nn.Module | LoadedModel | str, images: torch.Tensor | np.ndarray, layer: str, channels,
               yx=None, method: str = "deconvnet", *, weights: str | os.PathLike | None = None,
               seed: int | None = None) -> torch.Tensor:
    """Visualise one unit per image in input space.

    model: a torch module, the LoadedModel of one, or a name or checkpoint path with `weights` (or,
    for a randomly initialised architecture, the `seed` it was mined with: 0 by default), as `mine`
    takes them (`models.torch_model`: the same names and refusals).
    images (N, C, H, W), a tensor or a numpy array of model input; layer a qualified module name;
    channels (N,) the unit's channel per image; yx (N, 2) its grid position (ignored for layers
    without a grid). Channels and positions outside the layer are refused (a top-k's empty slots
    hold -1).
    Returns (N, C, H, W) float32: the signal the unit sends back to the input, computed in the
    dtype of the model's parameters (a half model's images are cast to it).
    """
    if isinstance(images, np.ndarray) and images.dtype.kind == "f":
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        what = (f"{type(images).__name__} of {images.dtype} and shape {tuple(images.shape)}"
                if isinstance(images, (torch.Tensor, np.ndarray)) else type(images).__name__)
        raise SketchmineError(f"images must be a float tensor or numpy array of model input, (N, C, H, W) "
                              f"(preprocessed as the model reads it), got a {what}")
    return Deconvolver(torch_model(model, weights, "deconvolve", seed), method,
                       sample=tuple(images.shape[1:]))(images, layer, channels, yx)
