"""Sliding windows called as functions (`F.conv2d`, `F.conv_transpose2d`, `F.max_pool2d`,
`F.avg_pool2d`, `F.lp_pool2d`, `F.max_unpool2d` and their `torch.*` spellings): their geometry read
from the traced call, so that they have the receptive fields of their modules.

Stride, padding, dilation, groups and output padding are read from the call's positional and
keyword arguments, torch's defaults where it leaves them out; each must be a literal (an int, a
pair, a conv's "same" or "valid"): one known only at run time (a size read from the input) would
make the field depend on it, and is refused naming the node. A conv's kernel is its weight's last
two dims: the model's own tensor (a get_attr node) by the attribute's shape; a weight computed in
forward (timm's StdConv2d standardises its parameter, a parametrisation renormalises it) by the
shape the graph's shape propagation gave it on the meta device (shapes only: the weights' values
are never computed for it). A weight whose shape the graph does not know, or that is computed from
the image (a correlation with a template), is refused naming the node.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from sketchmine.errors import SketchmineError

_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_TRANSPOSED = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_MAX_POOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_LP_POOL = ("input", "norm_type", "kernel_size", "stride", "ceil_mode")  # no padding, no dilation
_UNPOOL = ("input", "indices", "kernel_size", "stride", "padding", "output_size")
# by their positional parameters (builtins have no signature to bind); F.conv2d is torch.conv2d;
# return_indices=True calls the second max pool
_PARAMS = {F.conv2d: _CONV, F.conv_transpose2d: _TRANSPOSED, F.max_pool2d: _MAX_POOL, torch.max_pool2d: _MAX_POOL[:-1],
           F.max_pool2d_with_indices: _MAX_POOL, F.avg_pool2d: _AVG_POOL, F.lp_pool2d: _LP_POOL,
           F.max_unpool2d: _UNPOOL}
_CONV_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}
_POOL_DEFAULTS = {"padding": 0, "dilation": 1}


@dataclass(frozen=True)
class Window:
    """A functional window's geometry per axis (y, x), under its module's attribute names (the pad
    checks of `field_pads` read it as they read an nn.Conv2d). `padding`: a pair, or a conv's
    "same" / "valid". `conv`: a convolution (not a pool); `transposed`: one that scatters each input
    position over a window of the output (a transposed conv; a max unpool, whose switches pick one
    position of the window: the window is the safe box)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    conv: bool = False
    transposed: bool = False


def is_window_call(node: fx.Node) -> bool:
    """Whether a node calls one of the functional windows this module reads."""
    return node.op == "call_function" and node.target in _PARAMS


def window_of(node: fx.Node, carriers: Iterable[fx.Node] = ()) -> Window | None:
    """The geometry of a functional window `node` (None when it is none), refused naming the node
    where an argument is known only at run time, the weight's shape is not known, or `carriers`
    (the node's inputs that hold pixels) has one besides the window's input."""
    if not is_window_call(node):
        return None
    name = getattr(node.target, "__name__", str(node.target))
    bound = {**dict(zip(_PARAMS[node.target], node.args)), **node.kwargs}
    # an unpool's switches come from the image too: they pick a position inside each window
    others = [a.name for a in carriers if a is not bound.get("input") and a is not bound.get("indices")]
    if others:
        raise SketchmineError(f"receptive fields: {name} at {node.name} takes pixels of the image in another "
                              f"argument than its input ({', '.join(others)}: a weight or bias computed from the "
                              "image), which no window describes; not supported")
    conv = node.target in (F.conv2d, F.conv_transpose2d)
    if conv:
        values = {**_CONV_DEFAULTS, **{k: v for k, v in bound.items() if k in _CONV_DEFAULTS}}
        for key in ("groups", "output_padding"):  # no effect on the field, but a run-time value is refused alike
            _literal(node, name, key, values[key])
        shape = _weight_shape(node, name, bound.get("weight"))
        kernel = (shape[-2], shape[-1])
    else:
        values = {**_POOL_DEFAULTS, **{k: v for k, v in bound.items() if k in ("stride", "padding", "dilation")}}
        kernel = _literal(node, name, "kernel_size", bound.get("kernel_size"))
        if values.get("stride") in (None, [], ()):  # torch's default: the kernel
            values["stride"] = kernel
    padding: Any = values["padding"]
    if not (conv and node.target is F.conv2d and padding in ("same", "valid")):
        padding = _literal(node, name, "padding", padding)
    return Window(kernel, _literal(node, name, "stride", values["stride"]), padding,
                  _literal(node, name, "dilation", values["dilation"]), conv,
                  node.target in (F.conv_transpose2d, F.max_unpool2d))


def _literal(node: fx.Node, name: str, key: str, value: Any) -> tuple[int, int]:
    """An int or a sequence of one or two ints as (y, x); anything else refused naming the node."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(items) <= 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        nodes = [v.name for v in items if isinstance(v, fx.Node)]
        what = f"a value known only at run time ({', '.join(nodes)})" if nodes else repr(value)
        raise SketchmineError(f"receptive fields: {name} at {node.name} takes its {key} from {what}; the field "
                              f"needs it as a literal int or pair of ints in the call; not supported")
    return (int(items[0]), int(items[-1]))


def _weight_shape(node: fx.Node, name: str, weight: Any) -> tuple[int, ...]:
    """The shape of a functional conv's weight (module doc): a get_attr's attribute, else the
    shape propagated to the node that computes it."""
    shape = None
    if isinstance(weight, fx.Node) and weight.op == "get_attr" and node.graph.owning_module is not None:
        value: Any = node.graph.owning_module
        for part in str(weight.target).split("."):
            value = getattr(value, part, None)
        shape = value.shape if isinstance(value, torch.Tensor) else None
    if shape is None and isinstance(weight, fx.Node):
        shape = getattr(weight.meta.get("tensor_meta"), "shape", None)
    if shape is None or len(shape) != 4:
        what = repr(weight)
        if isinstance(weight, fx.Node):
            what = f"node {weight.name} ({weight.op} {getattr(weight.target, '__name__', weight.target)})"
        raise SketchmineError(f"receptive fields: {name} at {node.name} takes its weight from {what}, whose "
                              + ("shape the graph does not know" if shape is None else f"shape is {tuple(shape)}")
                              + ": a 4-d weight's last two dims are the kernel the field needs; not supported")
    return tuple(int(n) for n in shape)
