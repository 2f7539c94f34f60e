"""Receptive fields from the model's graph: size, stride and offset of every layer.

The model is traced with torch.fx and shapes are propagated on the meta device; each
node's field is derived from its inputs' fields through the op's kernel, stride, padding
and dilation. Branches are merged by union (residual additions, Inception concatenations),
and anything that mixes all positions (flatten, linear, global pooling) sees the whole
image. No per-model rules: a model this cannot analyse gets an error naming the module.

A field is where a unit's pattern comes from. Normalisations with statistics over positions
(GroupNorm; BatchNorm without running statistics) and adaptive pooling that is the identity at
the analysed size are taken as pointwise for it: the statistics scale and shift a whole map
alike, and the field of every unit after a GroupNorm would otherwise be the whole image. Such
ops do make a unit depend on the image's size and on pixels outside its field, so
`coupling.position_coupled` names them: a unit behind one cannot be computed on a window of the image.
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from sketchmine.errors import SketchmineError

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                      nn.Hardswish, nn.Hardsigmoid, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm,
                      nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Softmax, nn.LogSoftmax)
_POINTWISE_FUNCS = {torch.relu, torch.nn.functional.relu, torch.sigmoid, torch.tanh, torch.add, torch.mul,
                    torch.cat, torch.nn.functional.dropout, torch.softmax, torch.nn.functional.softmax,
                    torch.nn.functional.batch_norm, torch.nn.functional.hardtanh, torch.nn.functional.relu6,
                    torch.nn.functional.gelu, torch.nn.functional.silu, torch.unsqueeze,
                    operator.add, operator.mul, operator.getitem}
_POINTWISE_METHODS = {"relu", "relu_", "add", "add_", "mul", "mul_", "sigmoid", "contiguous", "clone",
                      "unsqueeze", "float", "to", "chunk", "size"}
_GLOBAL_FUNCS = {torch.flatten, torch.mean, torch.nn.functional.adaptive_avg_pool2d}
_GLOBAL_METHODS = {"view", "reshape", "flatten", "unflatten", "mean", "sum"}
# reshapes: the whole image in general, but pointwise when they keep the last two (H, W)
# dimensions (folding a sequence's frames into the batch, (N, T, C, H, W) -> (N*T, C, H, W))
# (a channel shuffle's transpose of (N, groups, C/groups, H, W) keeps them too)
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.transpose}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "transpose", "permute"}
# sliding windows called as functions (Inception v3's branch pools), by their positional
# parameters (builtins: no signature to bind); stride defaults to the kernel, as torch's
_WINDOW_FUNCS = {torch.nn.functional.max_pool2d: ("input", "kernel_size", "stride", "padding", "dilation"),
                 torch.nn.functional.avg_pool2d: ("input", "kernel_size", "stride", "padding")}


@dataclass(frozen=True)
class ReceptiveField:
    """Input-pixel field of a layer's units, per spatial axis (y, x).

    Unit i along an axis sees input pixels [offset + i*stride, offset + i*stride + size - 1];
    offset can be negative (padding), so crops must be clipped to the image.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), inclusive, of unit (y, x) before clipping."""
        top, left = self.offset[0] + y * self.stride[0], self.offset[1] + x * self.stride[1]
        return top, left, top + self.size[0] - 1, left + self.size[1] - 1


@dataclass(frozen=True)
class _Field:
    """Per axis: jump (input pixels between neighbouring units) and unit 0's window [lo, hi]."""

    jump: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _padding(p, k, d) -> tuple[int, int]:
    """A conv's padding as ints: "valid" pads nothing, "same" pads d*(k-1) in all and torch
    puts the smaller half first (its left and top padding)."""
    if p == "valid":
        return (0, 0)
    if p == "same":
        k, d = _pair(k), _pair(d)
        return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return _pair(p)


def _window(f: _Field, k, s, p, d) -> _Field:
    """Field after a sliding window (conv or pool) with kernel k, stride s, padding p, dilation d."""
    p = _padding(p, k, d)
    k, s, d = _pair(k), _pair(s), _pair(d)
    return _Field(
        tuple(f.jump[a] * s[a] for a in range(2)),
        tuple(f.lo[a] - p[a] * f.jump[a] for a in range(2)),
        tuple(f.hi[a] + ((k[a] - 1) * d[a] - p[a]) * f.jump[a] for a in range(2)),
    )


def _union(fields: list[_Field], where: str) -> _Field:
    jumps = {f.jump for f in fields}
    if len(jumps) > 1:
        raise SketchmineError(f"cannot merge receptive fields at {where}: branches have strides {sorted(jumps)}")
    return _Field(fields[0].jump, tuple(min(f.lo[a] for f in fields) for a in range(2)),
                  tuple(max(f.hi[a] for f in fields) for a in range(2)))


def module_input_channels(model: nn.Module, default: int = 3) -> int:
    """Channel count a torch model takes: in_channels of its first convolution, else `default`
    (the input shape a graph analysis or a probe gives the model)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels
    return default


def receptive_fields(model: nn.Module, input_size: int | tuple[int, ...],
                     leading: tuple[int, ...] = (), channels: int | None = None) -> dict[str, ReceptiveField]:
    """Receptive field of every module with a spatial output, by qualified name; modules
    whose units see the whole image (linear, after flatten or global pooling) get the
    whole image: size = input size, stride 0, offset 0.

    `leading`: the sample's dimensions before (H, W) other than the channels, e.g. (T,) for a
    sequence of T frames, (T, C, H, W) per sample: a time-distributed CNN's fields are then
    given per frame, in that frame's pixels (a reshape that keeps the last two dimensions, such
    as folding the frames into the batch, leaves the field as it is). `channels`: the input's
    channels (default: the first conv's, else 3). `input_size`: an int S (S×S), (H, W) or
    (C, H, W) (`data.parse_size`); a C that differs from `channels` or from the model's first
    convolution is refused."""
    from sketchmine.data import parse_size

    c, (h, w) = parse_size(input_size, "receptive_fields input_size")
    if c is not None:
        takes = channels if channels is not None else module_input_channels(model, default=c)
        if c != takes:
            raise SketchmineError(f"receptive_fields input_size {tuple(input_size)} has {c} channels but "
                                  f"{type(model).__name__} takes {takes}; pass (H, W) or ({takes}, H, W)")
        channels = c
    gm = trace(model, "to compute receptive fields")
    _propagate_shapes(gm, model, h, w, tuple(leading), channels)
    whole = _Field((0, 0), (0, 0), (h - 1, w - 1))
    fields: dict[fx.Node, _Field] = {}
    modules = dict(gm.named_modules())
    out: dict[str, ReceptiveField] = {}
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for node in gm.graph.nodes:
        ins = [fields[a] for a in node.all_input_nodes if a in fields]
        if node.op == "placeholder":
            fields[node] = _Field((1, 1), (0, 0), (0, 0))
            continue
        if node.op in ("output", "get_attr") or not ins:
            continue
        if "tensor_meta" not in node.meta:  # a shape, size or other non-tensor value: no pixels
            continue
        where = node.target if node.op == "call_module" else node.name
        f = _union(ins, str(where)) if all(i.jump != (0, 0) for i in ins) else whole
        if f.jump == (0, 0):  # computed from whole-image features (a recurrent head, an MLP): whole
            fields[node] = whole
            if node.op == "call_module":
                out[node.target] = _field(whole, h, w)
            continue
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                dil = getattr(m, "dilation", 1)
                f = _window(f, m.kernel_size, m.stride, m.padding, dil if dil is not None else 1)
            elif isinstance(m, (nn.Linear, nn.Flatten)):
                f = whole
            elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                f = _adaptive(f, m.output_size, node, whole)
            elif not isinstance(m, _POINTWISE_MODULES):
                raise SketchmineError(f"receptive fields: module {node.target!r} ({type(m).__name__}) is not supported")
            fields[node] = f
            if calls[node.target] == 1:  # a module called twice has two fields (the miner refuses it too)
                out[node.target] = _field(f, h, w)
        elif node.op == "call_function":
            if node.target in _RESHAPE_FUNCS and _keeps_grid(node):
                pass
            elif node.target in _WINDOW_FUNCS:
                f = _window(f, *_window_args(node))
            elif node.target in _GLOBAL_FUNCS:
                f = whole
            elif node.target not in _POINTWISE_FUNCS:
                raise SketchmineError(f"receptive fields: function {getattr(node.target, '__name__', node.target)} "
                                      f"at {node.name} is not supported")
            else:
                _check_one_grid(node, fields)
            fields[node] = f
        elif node.op == "call_method":
            if node.target in _RESHAPE_METHODS and _keeps_grid(node):
                pass
            elif node.target in _GLOBAL_METHODS:
                f = whole
            elif node.target not in _POINTWISE_METHODS:
                raise SketchmineError(f"receptive fields: method .{node.target}() at {node.name} is not supported")
            else:
                _check_one_grid(node, fields)
            fields[node] = f
    for name, node in module_outputs(gm).items():  # modules traced through: blocks, containers
        if name not in out and node in fields:
            out[name] = _field(fields[node], h, w)
    return out


def _window_args(node: fx.Node) -> tuple[Any, Any, Any, Any]:
    """(kernel, stride, padding, dilation) of a pool called as a function."""
    bound = {**dict(zip(_WINDOW_FUNCS[node.target], node.args)), **node.kwargs}
    k = bound["kernel_size"]
    return k, bound.get("stride") or k, bound.get("padding", 0), bound.get("dilation", 1)


def _grids(meta: Any) -> set[tuple[int, ...]]:
    """The (H, W) of every tensor of at least 2 dimensions in a node's shape record (a tuple
    of them for a split)."""
    shape = getattr(meta, "shape", None)  # a TensorMetadata (itself a named tuple)
    if shape is not None:
        return {tuple(shape[-2:])} if len(shape) >= 2 else set()
    if isinstance(meta, (tuple, list)):
        return set().union(*(_grids(m) for m in meta)) if meta else set()
    return set()


def _check_one_grid(node: fx.Node, fields: dict[fx.Node, _Field]) -> None:
    """An op taken as pointwise (getitem, cat, chunk, add, ...) keeps its pixel-carrying inputs'
    (H, W) grid: one that indexes, joins or splits along H or W moves pixels, and is refused."""
    grids = _grids(node.meta.get("tensor_meta"))
    for a in node.all_input_nodes:
        if a in fields:
            grids |= _grids(a.meta.get("tensor_meta"))
    if len(grids) > 1:
        raise SketchmineError(f"receptive fields: {getattr(node.target, '__name__', node.target)} at {node.name} "
                              f"indexes, joins or splits the height or width (grids {sorted(grids)}); not supported")


def _keeps_grid(node: fx.Node) -> bool:
    """A reshape whose input and output both end in the same (H, W) grid (shapes from the
    propagation), so each output pixel is the input pixel at the same place."""
    src = node.all_input_nodes[0].meta.get("tensor_meta") if node.all_input_nodes else None
    dst = node.meta.get("tensor_meta")
    if src is None or dst is None or not hasattr(src, "shape") or not hasattr(dst, "shape"):
        return False
    if node.target in (torch.transpose, "transpose", "permute"):  # the grid's dims must stay last, in order
        n, args = len(src.shape), node.args[1:]
        if node.kwargs or not args:
            return False
        if node.target == "permute":
            order = list(args[0]) if isinstance(args[0], (tuple, list)) else list(args)
            if [int(d) % n for d in order[-2:]] != [n - 2, n - 1]:
                return False
        elif {int(d) % n for d in args[:2]} & {n - 2, n - 1}:
            return False
    return len(src.shape) >= 4 and len(dst.shape) >= 4 and tuple(src.shape[-2:]) == tuple(dst.shape[-2:])


def _field(f: _Field, h: int, w: int) -> ReceptiveField:
    """A node's field as the public record (the whole h×w image with stride 0 when its units
    see everything)."""
    if f.jump == (0, 0):
        return ReceptiveField((h, w), (0, 0), (0, 0))
    return ReceptiveField(tuple(f.hi[a] - f.lo[a] + 1 for a in range(2)), f.jump, f.lo)


def trace(model: nn.Module, purpose: str) -> fx.GraphModule:
    """The model's torch.fx graph (sharing its parameters), or an error naming the model, what
    the graph was for, and the tracer's first line."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:
        raise SketchmineError(f"cannot trace {type(model).__name__} with torch.fx {purpose}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def module_outputs(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """The node holding each module's output in a traced graph, by qualified name.

    symbolic_trace inlines every module that is not a torch.nn leaf (a ResNet block, an
    Inception block, a Sequential), so such a module has no node of its own; its nodes carry
    it in their ``nn_module_stack``, and its output is the last of them that a node outside
    the call uses. A leaf module's output is its call node. Modules called more than once
    per forward are left out (their output is ambiguous; the miner refuses them too).
    """
    calls: dict[str, set[str]] = {}
    last: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        for key, val in (node.meta.get("nn_module_stack") or {}).items():
            name = val[0] if isinstance(val, tuple) else str(key).split("@")[0]
            calls.setdefault(name, set()).add(key)
            if any(key not in (u.meta.get("nn_module_stack") or {}) for u in node.users):
                last[key] = node
    return {name: last[next(iter(keys))] for name, keys in calls.items()
            if len(keys) == 1 and next(iter(keys)) in last}


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, h: int, w: int, leading: tuple[int, ...] = (),
                      channels: int | None = None) -> None:
    """Tensor shapes on every node (adaptive pooling needs its input grid), computed without
    arithmetic where possible: on the meta device (parameters swapped for meta copies, ~1 ms
    for ResNet-50's 170 nodes), else with fake tensors, else a real one-image forward if an op
    has neither a meta nor a fake kernel. The caller's model is never changed (but for the eval
    mode it is put in and restored)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    c = channels or module_input_channels(model)
    shape = (1, *leading, c, h, w)
    was_training = {m: m.training for m in model.modules()}  # per module: a frozen BatchNorm stays frozen
    model.eval()
    try:
        with torch.no_grad():
            try:
                _meta_shapes(gm, shape)
            except Exception:
                try:
                    ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(
                        torch.zeros(shape))
                except Exception:
                    ShapeProp(gm).propagate(torch.zeros(shape))
    except Exception as exc:
        raise SketchmineError(f"{type(model).__name__} cannot take a {'×'.join(map(str, shape[1:]))} input: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        for m, training in was_training.items():
            m.training = training


class _ShapeRun(nn.Module):
    """Runs ShapeProp over a traced graph, so that functional_call can swap its tensors."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, x: torch.Tensor) -> Any:
        from torch.fx.passes.shape_prop import ShapeProp

        return ShapeProp(self.gm).propagate(x)


def _meta_shapes(gm: fx.GraphModule, shape: tuple[int, ...]) -> None:
    """ShapeProp on meta tensors: every parameter and buffer replaced, for this call only, by a
    meta tensor of its shape (no data copied), and a meta input."""
    tensors = {f"gm.{k}": v.to("meta") for k, v in [*gm.named_parameters(), *gm.named_buffers()]}
    torch.func.functional_call(_ShapeRun(gm), tensors, (torch.zeros(shape, device="meta"),))


def _adaptive(f: _Field, output_size, node: fx.Node, whole: _Field) -> _Field:
    """Adaptive pooling: the identity when input and output grids match (AlexNet, VGG at
    224 px), else every unit is taken to see the whole image (global pooling exactly; a
    safe bound otherwise)."""
    meta = node.all_input_nodes[0].meta.get("tensor_meta")
    out = tuple(output_size) if isinstance(output_size, (tuple, list)) else _pair(output_size)
    if meta is not None and None not in out and tuple(meta.shape[-2:]) == out:
        return f
    return whole
