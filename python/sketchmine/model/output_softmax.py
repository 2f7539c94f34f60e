"""Whether a model's output is a softmax already, and the logits that softmax was fed.

The virtual "softmax" layer is the softmax of the model's output. A model whose forward ends in
a softmax (an nn.Softmax module, or `F.softmax`, `torch.softmax`, `x.softmax(-1)` called in
forward) outputs probabilities, and a softmax of them is not what the model computes: values
near 1/C, ranked in another order, and deconvolutions and optimised inputs of that. The call is
found by a TorchFunctionMode over the forward, so every spelling is caught, whatever module or
function makes it, with no per-model code. A log-softmax output needs nothing: its softmax is the
probabilities.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from sketchmine.errors import SketchmineError
from sketchmine.model.backend import Layer, first_tensor
from sketchmine.model.modes import eval_mode, input_dtype
from sketchmine.model.taps import SOFTMAX

PROBABILITIES = "the model's output, a softmax already"
"""The `of` attribute of a virtual softmax layer taken as the model's output itself."""

# where each spelling takes its dim (positionally after the input), by keyword "dim" in any
_SOFTMAXES = {torch.softmax: 1, F.softmax: 1, torch.Tensor.softmax: 1}
# calls that give their first argument's values back, copied or reshaped: still the probabilities
_SAME_VALUES = {torch.Tensor.clone, torch.clone, torch.Tensor.contiguous, torch.Tensor.detach, torch.detach,
                torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.flatten, torch.flatten,
                torch.Tensor.squeeze, torch.squeeze, torch.Tensor.unsqueeze, torch.unsqueeze}


class _LastSoftmax(TorchFunctionMode):
    """Keeps the last softmax call of a forward: its input, its dim and its result with the copies
    and reshapes of it (only the last: a forward's earlier softmaxes, attention maps, are not kept
    alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: tuple[list[torch.Tensor], torch.Tensor, Any] | None = None

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not (isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor)):
            return out
        if func in _SOFTMAXES:
            dim = kwargs.get("dim", args[_SOFTMAXES[func]] if len(args) > _SOFTMAXES[func] else None)
            self.last = ([out], args[0], dim)
        elif func in _SAME_VALUES and self.last is not None and any(args[0] is t for t in self.last[0]):
            self.last[0].append(out)
        return out


def _fed_as(head: torch.Tensor, fed: torch.Tensor, dim: Any) -> torch.Tensor | None:
    """The softmax's input `fed` shaped as the (N, units) output `head`, when the softmax ran over
    exactly those units: over dim 1 of (N, units), or over the one dim of (N, ...) that is not 1
    ((N, 1, units) over its last, (N, units, 1) over dim 1)."""
    if fed.ndim == 2 and dim in (None, 1, -1):
        return fed if fed.shape == head.shape else None
    if dim is None or fed.ndim < 3 or not -fed.ndim <= dim < fed.ndim:
        return None
    dim %= fed.ndim
    rest = [n for d, n in enumerate(fed.shape) if d not in (0, dim)]
    if dim and fed.shape[0] == head.shape[0] and fed.shape[dim] == head.shape[1] and all(n == 1 for n in rest):
        return fed.reshape(head.shape)
    return None


def softmax_logits(forward: Callable[[], Any]) -> tuple[Any, torch.Tensor | None]:
    """Run `forward()`; return its output and, when its (first) output is the result of a softmax
    over the units of (N, units) logits (or a copy or reshape of it), those logits (else None)."""
    mode = _LastSoftmax()
    with mode:
        out = forward()
    head = first_tensor(out)
    if mode.last is None or head.ndim != 2:
        return out, None
    results, fed, dim = mode.last
    # the output itself, or a copy or view of it (`.view(n, -1)`, `.clone()`, `.squeeze(1)`)
    ours = any(head is t or (head._base is not None and head._base is t and head.shape == t.shape) for t in results)
    return out, _fed_as(head, fed, dim) if ours else None


def mark_probabilities(spec: list[Layer], net: Any, x: torch.Tensor) -> None:
    """Mark the virtual softmax of `spec` (its `of` attribute) when the output of `net` is a softmax
    already: a torch module's from one forward on `x` (one image), an ONNX graph's from its nodes."""
    virtual = [layer for layer in spec if layer.name == SOFTMAX]
    if not virtual:
        return
    if isinstance(net, nn.Module):
        with torch.no_grad():
            _, fed = softmax_logits(lambda: net(x.to(input_dtype(net))))
        ends = fed is not None
    else:
        ends = onnx_ends_in_softmax(net)
    if ends:
        virtual[0].attrs["of"] = PROBABILITIES


def mined_twice(path: Any) -> SketchmineError:
    """The refusal of a run whose virtual softmax an older sketchmine mined as the softmax of an
    output that is a softmax already: its top-k rank a second softmax, which neither a resume nor
    a picture of this version's matches."""
    return SketchmineError(f"layer {SOFTMAX!r} of {path} was mined as the softmax of the model's output, which is a "
                           "softmax already (probabilities taken twice); this sketchmine takes that output as it is: "
                           "mine the run again into a new --out")


def check_marked(attrs: dict[str, Any], net: Any, x: torch.Tensor, path: Any) -> None:
    """Refuse (`mined_twice`) a run's virtual softmax layer, its attributes `attrs`, that is not
    marked as the output itself where `net`'s output (on input `x`) is a softmax already."""
    if attrs.get("of") == PROBABILITIES or not isinstance(net, nn.Module):
        return
    with torch.no_grad(), eval_mode(net):
        _, fed = softmax_logits(lambda: net(x.to(input_dtype(net))))
    if fed is not None:
        raise mined_twice(path)


KEEP_VALUES = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
"""ONNX ops between a Softmax and the graph's output that leave its values probabilities."""


def onnx_ends_in_softmax(model: Any) -> bool:
    """Whether the .onnx model's output comes from a Softmax (through reshapes): probabilities already."""
    node = model.names.producer.get(model.logits_name)
    while node is not None and node.op_type in KEEP_VALUES:
        node = model.names.producer.get(node.input[0])
    return node is not None and node.op_type == "Softmax"


def virtual_softmax(output: torch.Tensor, attrs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The virtual softmax of a batch: (what its top-k ranks by log-odds, its values p). Of logits:
    (logits, softmax). Of an output that is p already (`of`): (log p, p), whose log-odds
    log p_c - log sum_{j != c} p_j are the logits' own wherever float32 keeps the other p_j above 0."""
    if attrs.get("of") == PROBABILITIES:
        p = output.float()
        return p.log(), p
    return output, torch.softmax(output.float(), dim=1)
