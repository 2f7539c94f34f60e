"""Which axis of each traced node's tensor holds the units (channels, features), from the graph.

The taps read a module's output as (N, units, *positions). A conv's, a pool's or a BatchNorm's
output holds its channels on axis 1 by its type, a Linear's its features last. Any other
module returns whatever it was fed, and where that is channels last is told by the graph
alone: a LayerNorm or GELU between a ConvNeXt block's permutes, a Swin block's output
(N, H, W, C), a vision transformer's tokens (N, T, D).

Kept apart from the receptive fields (receptive_field.py), which end at the first op whose
effect on positions is unknown: what an op does to the units is known more often, and most
unknown ops (Swin's shifted-window attention) return their input's shape.

The units are followed as a span of axes [start, stop) (a channel shuffle splits them in two
for a moment) from the image input's channels (axis 1; axis 2 of frames (N, T, C, H, W)):
- convolutions, pools and channel norms (modules or functions) put them on axis 1; a Linear
  (module or F.linear) and a recurrent layer's hidden states (element 0 of its output) on the last
  axis; a split keeps them in each piece;
- permute, transpose, swapaxes and movedim move them; reshape, view and flatten keep them where
  the axes on one side of them are kept (flattening (H, W), splitting the channels into groups,
  folding positions into the batch as a window partition does); a single unit (a grey map) stays
  the axis of one it was among the axes of one, in order;
- cat keeps them where its inputs agree (joined along them or along another axis); indexing
  keeps them when it drops other axes;
- x.mT swaps the last two axes; matmul, einsum and x.T leave them unknown (a Linear after them
  places them again);
- any other op whose output has the rank, batch and unit sizes of its inputs that come from the
  image keeps their units, where those agree (elementwise ops, norms, dropout, attention, a
  residual add, functional pools and pads); anything else leaves them unknown, as does an input
  from the image whose units are unknown.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

Span = tuple[int, int]

CHANNELS_FIRST_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LocalResponseNorm,
                          nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                          nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
"""Modules whose output holds its channels on axis 1 by their type (so a tap reads them: `layouts`)."""
_CHANNELS_FIRST_FUNCS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                         F.batch_norm, F.instance_norm, F.group_norm, F.local_response_norm, F.max_pool1d, F.max_pool2d,
                         F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                         F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}
"""As the modules: a weight-standardised conv (timm's StdConv2d) calls F.conv2d."""
_SPLITS = {torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split"}
_MOVES = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.movedim, "permute", "transpose",
          "swapaxes", "swapdims", "movedim"}
_RESHAPES = {torch.reshape, torch.flatten, "reshape", "view", "flatten", "unflatten"}
_UNFOLLOWED = {torch.matmul, torch.bmm, torch.einsum, operator.matmul, getattr, "matmul", "bmm", "t", "expand_as",
               "view_as", "reshape_as"}  # getattr: x.T (its batch axis moved) and other attributes; x.mT is followed


def follow_units(gm: fx.GraphModule) -> dict[fx.Node, Span]:
    """Node → the span of axes holding its units, for the nodes whose units the graph tells
    (shapes from `graph.propagate_shapes` on the nodes' meta)."""
    modules = dict(gm.named_modules())
    spans: dict[fx.Node, Span] = {}
    image: set[fx.Node] = set()  # the nodes computed from the image's values (not weights, constants or sizes)
    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op == "placeholder":
            image.add(node)
            if shape is not None and len(shape) >= 2:  # (N, C, H, W), or frames (N, T, C, H, W)
                spans[node] = (len(shape) - 3, len(shape) - 2) if len(shape) >= 4 else (1, 2)
            continue
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        fed = [a for a in node.all_input_nodes if a in image and "tensor_meta" in a.meta]  # not sizes: a class
        if not fed:  # token expanded to the batch's size is made of weights
            continue
        image.add(node)
        try:
            got = _node_span(node, shape, fed, spans, modules)
        except (TypeError, ValueError, IndexError):  # arguments of a form not followed: unknown
            got = None
        if got is not None:
            spans[node] = got
    return spans


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(int(n) for n in meta.shape) if hasattr(meta, "shape") else None


def tapped_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The shape of what a tap reads from the node: element 0 of a module's tuple output
    (MultiheadAttention's (output, weights), a recurrent layer's (output, state))."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)) and meta and hasattr(meta[0], "shape"):
        return tuple(int(n) for n in meta[0].shape)
    return _shape(node)


def _node_span(node: fx.Node, shape: tuple[int, ...] | None, image: list[fx.Node], spans: dict[fx.Node, Span],
               modules: dict[str, nn.Module]) -> Span | None:
    """The node's units from those of its inputs computed from the image (`image`)."""
    fed = [a for a in image if a in spans]
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, CHANNELS_FIRST_MODULES):
            return (1, 2) if shape is not None and len(shape) >= 2 else None
        if isinstance(m, nn.Linear):
            return (len(shape) - 1, len(shape)) if shape else None
        if isinstance(m, nn.Flatten) and fed:
            return _reshaped(fed[0], shape, spans[fed[0]])
        if isinstance(m, nn.RNNBase):  # its hidden states, (N, T, H) or (T, N, H): units last, as a Linear's
            hidden = tapped_shape(node)
            return (len(hidden) - 1, len(hidden)) if hidden else None
        if shape is None:  # a tuple: what a tap reads, element 0
            return _kept(tapped_shape(node), image, spans)
    elif node.target in (torch.nn.functional.linear,):
        return (len(shape) - 1, len(shape)) if shape else None
    elif node.target in _CHANNELS_FIRST_FUNCS:
        return (1, 2) if shape is not None and len(shape) >= 2 else None
    elif node.target in _SPLITS and fed and node.args and node.args[0] is fed[0]:
        return spans[fed[0]]  # a tuple of pieces, each as many axes as the input: its units where they were
    elif node.target is getattr and fed and node.args[0] is fed[0] and node.args[1] in ("mT", "mH"):
        rank = len(_shape(fed[0]) or ())  # x.mT: its last two axes swapped (a ViT's (N, D, T) → (N, T, D))
        return _at(list(range(rank - 2)) + [rank - 1, rank - 2], spans[fed[0]]) if rank > 2 else None
    elif node.target in _UNFOLLOWED:
        return None
    elif node.target in _MOVES and fed and node.args and node.args[0] is fed[0]:
        return _moved(node, spans[fed[0]], len(_shape(fed[0]) or ()))
    elif node.target in _RESHAPES and fed and node.args and node.args[0] is fed[0]:
        return _reshaped(fed[0], shape, spans[fed[0]])
    elif node.target in (torch.cat, torch.concat):
        return _joined(node, image, spans)
    elif node.target is operator.getitem and fed and node.args[0] is fed[0] and _shape(fed[0]) is not None:
        return _indexed(node.args[1], spans[fed[0]], len(_shape(fed[0]) or ()))
    elif node.target is operator.getitem and isinstance(src := node.args[0], fx.Node) and src in spans:
        if src.target in _SPLITS:  # a piece of a split (CSPNet's halves of the channels)
            return spans[src] if shape is not None and len(shape) == len(tapped_shape(src) or ()) else None
        return spans[src] if node.args[1] == 0 and tapped_shape(src) == shape else None  # a module's tuple
    return _kept(shape, image, spans)


def _kept(shape: tuple[int, ...] | None, image: list[fx.Node], spans: dict[fx.Node, Span]) -> Span | None:
    """The units of the inputs of the output's rank, where every such input's are known and
    agree, and the output has their batch and unit sizes."""
    if not shape:
        return None
    ranked = [a for a in image if len(_shape(a) or ()) == len(shape)]
    found = {spans.get(a) for a in ranked}
    if len(found) != 1 or None in found:
        return None
    span = found.pop()
    assert span is not None
    units = shape[slice(*span)]
    ok = all((_shape(a) or ())[0] == shape[0] and all(1 in (n, u) or n == u for n, u in zip((_shape(a) or ())[slice(*span)], units))
             for a in ranked)  # one unit broadcast over them (a spatial gate, CBAM), or them reduced to one (a mean over channels)
    return span if ok else None


def axis_order(node: fx.Node, rank: int) -> list[int] | None:
    """The input axis each output axis of a permute, transpose, swapaxes or movedim node is, or None
    where its arguments are not plain axes (also the receptive fields' grid: receptive_field.py)."""
    args: Any = node.args[1:]
    if node.kwargs or not args or not rank:
        return None
    if node.target in (torch.permute, "permute"):
        order = [int(d) % rank for d in (list(args[0]) if isinstance(args[0], (tuple, list)) else args)]
    elif node.target in (torch.movedim, "movedim"):
        if not all(isinstance(a, int) for a in args[:2]):
            return None
        order = list(range(rank))
        order.insert(int(args[1]) % rank, order.pop(int(args[0]) % rank))
    else:
        order = list(range(rank))
        a, b = int(args[0]) % rank, int(args[1]) % rank
        order[a], order[b] = order[b], order[a]
    return order if sorted(order) == list(range(rank)) else None


def _moved(node: fx.Node, span: Span, rank: int) -> Span | None:
    order = axis_order(node, rank)
    return None if order is None else _at(order, span)


def _at(order: list[int], span: Span) -> Span | None:
    """The units' span after the output takes input axis `order[i]` as its axis i (None: split apart)."""
    at = sorted(order.index(d) for d in range(*span))
    return (at[0], at[-1] + 1) if at == list(range(at[0], at[-1] + 1)) else None


def _reshaped(src: fx.Node, shape: tuple[int, ...] | None, span: Span) -> Span | None:
    """The units after a reshape: the axes on one side of them kept, the units (their product)
    found next to those, never on axis 0 (the batch, or positions folded into it)."""
    was = _shape(src)
    if was is None or shape is None or not shape:
        return None
    units, (start, stop) = math.prod(was[slice(*span)]), span
    if units == 1 and stop == start + 1:  # one unit (a grey map): no size tells it, the axes of one keep their order
        ones, now = [a for a in range(1, len(was)) if was[a] == 1], [a for a in range(1, len(shape)) if shape[a] == 1]
        return (now[ones.index(start)], now[ones.index(start)] + 1) if len(ones) == len(now) and start in ones else None
    if start >= 1 and shape[:start] == was[:start]:  # the axes before kept: the units follow them
        end, size = start, 1
        while end < len(shape) and size < units:
            size, end = size * shape[end], end + 1
        if size == units and end > start:
            return start, end
    after = len(was) - stop
    # the axes after kept: the units precede them (positions folded into the batch before them, as a
    # window partition does, (N, H, W, C) → (N*W, h, w, C): the units stay the units)
    if shape[len(shape) - after:] == was[stop:] or not after:
        end = len(shape) - after
        begin, size = end, 1
        while begin > 1 and size < units:
            begin, size = begin - 1, size * shape[begin - 1]
        if size == units and begin < end:
            return begin, end
    return None


def _joined(node: fx.Node, image: list[fx.Node], spans: dict[fx.Node, Span]) -> Span | None:
    """A cat keeps the units where its inputs from the image agree on them: joined along them (an
    Inception block's branches: more units) or along another axis (a class token joined to the
    tokens: the token, from weights alone, has no units to agree with)."""
    found = {spans.get(a) for a in image}
    return found.pop() if len(found) == 1 and None not in found and _shape(node) else None


def _indexed(index: Any, span: Span, rank: int) -> Span | None:
    """x[index]: the units' axes kept, minus the axes an int drops before them (None: a new axis)."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis or i is None or not isinstance(i, (int, slice)) for i in index) or len(index) > rank:
        return None
    dropped = [a for a, i in enumerate(index) if isinstance(i, int)]
    if any(span[0] <= a < span[1] for a in dropped):
        return None
    before = sum(a < span[0] for a in dropped)
    return span[0] - before, span[1] - before
