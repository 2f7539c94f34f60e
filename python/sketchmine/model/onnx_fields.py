"""Receptive fields of an ONNX graph, walked from its image input node by node, in the form the torch
analysis records them (`field_algebra`, `field_record`), so that `visualize` can crop an ONNX run's
top-k patches.

Followed: Conv (its kernel from the weight where `kernel_shape` is absent; strides, pads, dilations,
auto_pad), MaxPool / AveragePool / LpPool (ceil_mode changes the grid's size, not a unit's window),
Pad (a shift, negative: a crop; a reflect or edge pad as the torch analysis follows one,
`field_pads`: into the convs that read it, its own copies without a field), elementwise and
activation ops, normalisations (taken as pointwise, as the torch analysis takes them), Add / Sub /
Mul / Div of maps on one grid (a union; a (N, C, 1, 1) gate from the whole image, squeeze-excitation,
keeps the map's field, as `field_grid.broadcast_gates`), Concat / Split / Gather / Slice off the grid,
a Transpose that keeps the height before the width, reshapes that keep the (H, W) dims, a MatMul by
a weight along an axis that is not the grid's (a Linear on (N, H, W, C)), and what mixes all
positions (global pooling but over a grid of one unit, a reduction over H or W, Flatten, Gemm,
another MatMul, another reshape): the whole image. ConvTranspose, Resize and Upsample keep each unit's
box per axis, as the torch analysis does behind its resampling ops (`onnx_resample`), and the ops above
follow such a field position by position (`field_algebra`). Any other op on the grid path (a wrapping
Pad, a Slice of H or W, a Transpose that swaps them) leaves the tensors after it without a field, with
the reason (op type and node name), as the torch analysis' `missing` does.

Grid sizes come from ONNX shape inference at the mined input size, or from one ONNX Runtime run on
zeros for the tensors inference leaves without a shape (`onnx_shapes`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from sketchmine.errors import SketchmineError
from sketchmine.model.field_algebra import PIXELS, Field, as_record, merged, shifted_by, whole_image, windowed
from sketchmine.model.field_pads import copies_past_box
from sketchmine.model.field_record import ReceptiveField, field_record
from sketchmine.model.onnx_nodes import attr, node_name, refused, text
from sketchmine.model.onnx_resample import RESAMPLE_INPUTS, RESAMPLERS, Runtime, resampled
from sketchmine.model.onnx_shapes import Shape, constant_values, tensor_facts

_WINDOWS = {"Conv", "MaxPool", "AveragePool", "LpPool"}
_GLOBAL = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Gemm", "MatMul"}
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Tile"}
_ARITHMETIC = {"Add", "Sub", "Mul", "Div"}
_POINTWISE = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink", "Clip", "Exp", "Log", "Neg", "Abs", "Sqrt", "Pow",
    "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "CastLike",
    "BatchNormalization", "InstanceNormalization", "LRN", "GroupNormalization", "LayerNormalization",
    "MeanVarianceNormalization", "Softmax", "LogSoftmax", "Min", "Max", "Sum", "Mean", "Where", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "Mod",
    "QuantizeLinear", "DequantizeLinear", *_ARITHMETIC}
_NO_PIXELS = {"Shape", "Size"}  # a tensor's sizes: no pixel of it
_COPYING = {"reflect": "reflect", "edge": "replicate"}  # ONNX's pad modes that copy pixels, as torch's


@dataclass(frozen=True)
class GraphFields:
    """The fields of a graph's tensors at one input size: `fields` (tensor → record), `missing`
    (tensor → why it has none, in words); tensors no pixel reaches are in neither."""

    fields: dict[str, ReceptiveField]
    missing: dict[str, str]


def graph_fields(graph: Any, input_name: str, shapes: dict[str, Shape], size: tuple[int, int],
                 channels_last: bool = False, values: dict[str, np.ndarray] | None = None,
                 runtime: Runtime | None = None) -> GraphFields:
    """Every tensor's field, from the image input `input_name` ((N, C, H, W), or (N, H, W, C) where
    `channels_last`) of `size` (H, W); `shapes`: the graph's tensor shapes at that size
    (`onnx_shapes.tensor_facts`), `values`: those of the pads, axes and slice bounds that the graph
    computes, `runtime`: what a Resize's one-node probe needs (`onnx_resample`). A tensor after an op
    the analysis cannot follow is `missing`, with the reason of the first such op before it (the tensors
    before it keep their fields); so are a reflect or edge pad's copies, which no box holds (the convs
    after them have fields)."""
    consts = {**constant_values(graph), **(values or {})}
    fields: dict[str, Field] = {input_name: dataclasses.replace(PIXELS, grid=(-3, -2) if channels_last else (-2, -1))}
    unknown: dict[str, str] = {}
    copies: dict[str, str] = {}  # tensors whose border units are copies of other pixels → why no field
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    whole = whole_image(*size)
    for node in graph.node:
        carriers = {i: fields[i] for i in node.input if i in fields}
        before = [unknown[i] for i in node.input if i in unknown]
        if not (carriers or before) or node.op_type in _NO_PIXELS:
            continue
        try:
            if before:  # after an op the analysis cannot follow: unknown as well, for the same reason
                raise SketchmineError(before[0])
            f = _node_field(node, carriers, shapes, consts, whole, runtime)
            if node.op_type == "Pad" and not f.whole and (pad := _pad_sides(node, f, shapes, consts))[0] != "constant":
                reason = (f"receptive fields: {node_name(node)} copies pixels into its border units (mode {pad[0]!r}), "
                          "which no box holds (the conv that reads it has a field)")
                copies.update(dict.fromkeys(_copy_carriers(node, *pad, users, outputs, shapes), reason))
        except SketchmineError as exc:
            unknown.update((o, str(exc)) for o in node.output if o)
            continue
        fields.update((o, f) for o in node.output if o)
    return GraphFields({t: as_record(f, *size) for t, f in fields.items() if t != input_name and t not in copies},
                       {**unknown, **copies})


def _node_field(node: Any, carriers: dict[str, Field], shapes: dict[str, Shape], consts: dict[str, np.ndarray],
                whole: Field, runtime: Runtime | None) -> Field:
    """A node's field from its pixel-carrying inputs' fields, or a SketchmineError naming the node."""
    op = node.op_type
    if op in _ARITHMETIC and len(grids := {f.grid for f in carriers.values() if not f.whole}) == 1:
        grid = grids.pop()  # a gate (one value per channel for the whole map) is not in the field
        carriers = {t: f for t, f in carriers.items() if not (f.whole and _is_gate(shapes.get(t), grid))}
    if any(f.whole for f in carriers.values()):  # from whole-image features (a head, a gate's own convs)
        return whole
    out = shapes.get(node.output[0])
    f = merged(list(carriers.values()), node_name(node), _grid_of(out, next(iter(carriers.values())).grid))
    rank = len(out) if out is not None else None
    if op in RESAMPLERS:
        return resampled(node, f, shapes, consts, runtime)
    if op in _WINDOWS:
        return _window(node, f, shapes, consts)
    if op == "MatMul" and list(carriers) == [node.input[0]] and f.grid[1] != -1:
        return f  # by a weight along the last axis, which is not the grid's (a Linear on (N, H, W, C))
    if op.startswith("Global") and _grid_of(shapes.get(node.input[0]), f.grid) == (1, 1):
        return f  # over a grid of one unit: the identity, as the torch analysis takes an adaptive pool to (1, 1)
    if op in _GLOBAL:
        return whole
    if op in _POINTWISE:
        sizes: set[tuple[int, int] | None] = {_grid_of(shapes.get(t), f.grid) for t in [*carriers, node.output[0]]}
        if len(sizes) > 1 or None in sizes:
            raise refused(node, f"joins or broadcasts maps of different heights and widths {sorted(map(str, sizes))}")
        return f
    if op in _REDUCE:
        axes = _axes(node, consts, shapes.get(node.input[0]), "axes", 1)
        return whole if axes is None or set(axes) & set(_grid_axes(f, shapes.get(node.input[0]))) else f
    if op in _RESHAPES:
        return _reshaped(node, f, shapes, whole)
    if op in ("Concat", "Split", "Gather"):
        axis = attr(node, "axis", 0)
        src = shapes.get(node.input[0])
        if src is None or axis % len(src) in _grid_axes(f, src):
            raise refused(node, f"joins, splits or indexes along the height or width (axis {axis})")
        return f
    if op == "Slice":
        return _slice(node, f, shapes, consts)
    if op == "Transpose":
        return _transposed(node, f, rank)
    if op == "Pad":
        return _pad(node, f, shapes, consts)
    raise refused(node, "is an op whose effect on positions the analysis does not follow")


def _window(node: Any, f: Field, shapes: dict[str, Shape], consts: dict[str, np.ndarray]) -> Field:
    """A Conv or pool over the last two dims: kernel, strides, dilations and the padding before the
    first unit (auto_pad SAME_UPPER puts the smaller half of the padding first, SAME_LOWER the larger)."""
    src = shapes.get(node.input[0])
    if f.grid != (-2, -1) or src is None or len(src) != 4:
        raise refused(node, f"slides over a grid other than the last two dims of a 4-D tensor (input {src}, "
                            f"height and width at dims {f.grid})")
    k = _kernel(node, shapes)
    if k is None or len(k) != 2:
        raise refused(node, f"has no 2-D kernel_shape ({k})")
    s, d = tuple(attr(node, "strides", [1, 1])), tuple(attr(node, "dilations", [1, 1]))
    auto = text(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (-(-src[2 + a] // s[a]) - 1) * s[a] + (k[a] - 1) * d[a] + 1 - src[2 + a]) for a in range(2)]
        p = tuple(t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total)
    elif auto == "VALID":
        p = (0, 0)
    elif auto == "NOTSET":
        p = tuple(attr(node, "pads", [0, 0, 0, 0])[:2])
    else:
        raise refused(node, f"has auto_pad {auto!r}, none of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    return windowed(f, (int(k[0]), int(k[1])), (int(s[0]), int(s[1])), (int(p[0]), int(p[1])),
                    (int(d[0]), int(d[1])), _grid_of(shapes.get(node.output[0]), f.grid))


def _pad_sides(node: Any, f: Field, shapes: dict[str, Shape], consts: dict[str, np.ndarray]
               ) -> tuple[str, tuple[tuple[int, int], tuple[int, int]]]:
    """A Pad's mode and its amounts (before, after) on the grid's axes (y, x)."""
    src = shapes.get(node.input[0])
    mode = text(node, "mode", "constant")
    pads = attr(node, "pads", None) if len(node.input) < 2 or not node.input[1] else consts.get(node.input[1])
    if src is None or pads is None:
        raise refused(node, "pads by amounts known only at run time")
    n = len(src)
    axes = list(range(n))
    if len(node.input) > 3 and node.input[3]:
        if node.input[3] not in consts:
            raise refused(node, "pads axes known only at run time")
        axes = [int(a) % n for a in consts[node.input[3]]]
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    before = dict(zip(axes, pads[:len(axes)], strict=True))
    after = dict(zip(axes, pads[len(axes):], strict=True))
    gy, gx = _grid_axes(f, src)
    return mode, ((before.get(gy, 0), after.get(gy, 0)), (before.get(gx, 0), after.get(gx, 0)))


def _pad(node: Any, f: Field, shapes: dict[str, Shape], consts: dict[str, np.ndarray]) -> Field:
    """A Pad shifts the field by its amounts before the grid (negative: a crop). One that copies
    pixels (reflect, edge) is followed into the convs that read it (`_copy_carriers`); one that wraps
    puts the far side of the image in its border units, and one that copies and crops would tie a
    unit to the image's size: refused."""
    mode, sides = _pad_sides(node, f, shapes, consts)
    if mode not in ("constant", *_COPYING) and any(any(s) for s in sides):
        raise refused(node, f"pads the height or width in mode {mode!r}: its border units hold pixels of the far "
                            "side, which no box holds")
    if mode != "constant" and min(min(s) for s in sides) < 0:
        raise refused(node, f"crops a side (a negative amount) as well as padding in mode {mode!r}")
    return shifted_by(f, sides[0][0], sides[1][0], _grid_of(shapes.get(node.output[0]), f.grid),
                      _COPYING.get(mode, "constant"))


def _copy_carriers(pad: Any, mode: str, sides: tuple[tuple[int, int], tuple[int, int]], users: dict[str, list[Any]],
                   outputs: set[str], shapes: dict[str, Shape]) -> list[str]:
    """The tensors whose border units are copies from a reflect or edge Pad: its own and those of the
    pointwise ops between it and the convs that read it (they get no field; the convs do), as the torch
    analysis' `field_pads.copy_carriers`. Refused naming the pad unless every path from it, through
    pointwise ops, ends in a Conv with no padding of its own whose reach keeps the copies inside its
    units' boxes (each side's reflection at most half the reach, each side's edge copy at most the reach)."""
    carriers, todo, seen = [pad.output[0]], list(users.get(pad.output[0], [])), set()
    while todo:
        user = todo.pop()
        if id(user) in seen or user.op_type in _NO_PIXELS:
            continue
        seen.add(id(user))
        if user.op_type == "Conv" and user.input[0] in carriers:
            if any(attr(user, "pads", [0, 0, 0, 0])) or text(user, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                raise refused(pad, f"pads in mode {mode!r} and feeds {node_name(user)}, which pads as well: only a "
                                   "copying pad read by a conv with no padding is followed")
            k = _kernel(user, shapes)
            if k is None or len(k) != 2:
                raise refused(pad, f"pads in mode {mode!r} and feeds {node_name(user)}, whose 2-D kernel is not known")
            d = attr(user, "dilations", [1, 1])
            reach = ((k[0] - 1) * d[0], (k[1] - 1) * d[1])
            if any(copies_past_box(_COPYING[mode], sides[a], reach[a]) for a in range(2)):
                raise refused(pad, f"pads by {mode} {sides} and feeds {node_name(user)} of reach {reach}: the copied "
                                   "pixels lie outside its units' fields")
        elif user.op_type in _POINTWISE and not set(user.output) & outputs:
            carriers.extend(o for o in user.output if o)
            todo.extend(u for o in user.output for u in users.get(o, []))
        else:
            raise refused(pad, f"pads in mode {mode!r} and feeds {node_name(user)}: after a pad that copies pixels "
                               "only a conv with no padding of its own is followed")
    if set(carriers) & outputs:
        raise refused(pad, f"pads in mode {mode!r} and is the graph's output")
    return carriers


def _slice(node: Any, f: Field, shapes: dict[str, Shape], consts: dict[str, np.ndarray]) -> Field:
    """A Slice keeps each pixel in place where it takes the height and width whole."""
    src = shapes.get(node.input[0])
    if src is None:
        raise refused(node, "slices a tensor of unknown shape")
    if len(node.input) > 1:  # opset >= 10: starts, ends, axes, steps as inputs
        got = [consts.get(i) if i else None for i in (*node.input[1:5], "", "", "")[:4]]
        if any(v is None for v, i in zip(got, node.input[1:5], strict=False) if i):
            raise refused(node, "slices by amounts known only at run time")
        starts, ends, axes, steps = got
    else:
        starts, ends, axes, steps = attr(node, "starts", []), attr(node, "ends", []), attr(node, "axes", None), None
    along: list[int] = (list(range(len(np.asarray(starts).reshape(-1)))) if axes is None
                        else [int(a) % len(src) for a in np.asarray(axes).reshape(-1)])
    by: list[int] = [1] * len(along) if steps is None else [int(s) for s in np.asarray(steps).reshape(-1)]
    for a, start, end, step in zip(along, np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1), by,
                                   strict=True):
        n = src[a]
        first, last = (min(max(int(v) + n if v < 0 else int(v), 0), n) for v in (start, end))
        if a in _grid_axes(f, src) and (step != 1 or first != 0 or last != n):
            raise refused(node, f"slices the height or width (axis {a}: {int(start)}:{int(end)}:{step})")
    return f


def _transposed(node: Any, f: Field, rank: int | None) -> Field:
    """A Transpose moves the grid; it keeps each pixel's field where it keeps the height before the width."""
    if rank is None:
        raise refused(node, "transposes a tensor of unknown rank")
    perm = list(attr(node, "perm", list(range(rank))[::-1]))
    grid = (perm.index(rank + f.grid[0]) - rank, perm.index(rank + f.grid[1]) - rank)
    if grid[0] > grid[1]:
        raise refused(node, f"swaps the height and width (perm {perm})")
    return dataclasses.replace(f, grid=grid)


def _reshaped(node: Any, f: Field, shapes: dict[str, Shape], whole: Field) -> Field:
    """A reshape keeps every pixel in place where the dims from the height on keep their sizes (frames
    folded into the batch, a channel shuffle); otherwise it mixes positions: the whole image (a
    flatten), or, for Expand and Tile, which copy pixels to other places, no field."""
    src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
    tail = -f.grid[0]
    if src is not None and dst is not None and min(len(src), len(dst)) > tail and src[-tail:] == dst[-tail:]:
        return f
    if node.op_type in ("Expand", "Tile"):
        raise refused(node, f"copies the height or width ({src} to {dst})")
    return whole


def _grid_axes(f: Field, shape: Shape | None) -> tuple[int, int]:
    n = len(shape) if shape is not None else 4
    return n + f.grid[0], n + f.grid[1]


def _grid_of(shape: Shape | None, grid: tuple[int, int]) -> tuple[int, int] | None:
    return None if shape is None or len(shape) < -grid[0] else (shape[grid[0]], shape[grid[1]])


def _is_gate(shape: Shape | None, grid: tuple[int, int]) -> bool:
    """One value per channel for the whole map: 1 (or absent) at the grid's dims."""
    return shape is not None and all(len(shape) < -g or shape[g] == 1 for g in grid)


def _axes(node: Any, consts: dict[str, np.ndarray], src: Shape | None, name: str, at: int) -> list[int] | None:
    """A reduction's axes (attribute, or input `at` from opset 18), normalised; None: all of them."""
    axes = attr(node, name, None)
    if axes is None and len(node.input) > at and node.input[at]:
        if node.input[at] not in consts:
            raise refused(node, "reduces over axes known only at run time")
        axes = consts[node.input[at]].reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        return list(range(len(src))) if src is not None and not attr(node, "noop_with_empty_axes", 0) else None
    return [int(a) % len(src) for a in axes] if src is not None else None


def _kernel(node: Any, shapes: dict[str, Shape]) -> Any:
    """A Conv's or pool's kernel_shape; a Conv's from its weight's shape where the attribute is absent."""
    weight = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    return attr(node, "kernel_shape", weight[2:] if weight is not None else None)


def _parameters(graph: Any) -> list[str]:
    """The inputs that give a Pad, Slice, reduction or resampling its amounts, axes, bounds or scales (not
    pixels)."""
    at = {"Pad": (1, 3), "Slice": (1, 2, 3, 4), **dict.fromkeys(_REDUCE, (1,)), **RESAMPLE_INPUTS}
    return [node.input[i] for node in graph.node for i in at.get(node.op_type, ()) if i < len(node.input) and node.input[i]]


def fields_at(proto: Any, input_name: str, input_shape: Shape, channels_last: bool = False) -> GraphFields:
    """`graph_fields` for the graph fed `input_shape` ((N, C, H, W), or (N, H, W, C) where `channels_last`),
    its shapes and computed pads read at that size (`onnx_shapes.tensor_facts`)."""
    shapes, values, types = tensor_facts(proto, input_name, input_shape, _parameters(proto.graph))
    size = input_shape[1:3] if channels_last else input_shape[2:4]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return graph_fields(proto.graph, input_name, shapes, (int(size[0]), int(size[1])), channels_last, values,
                        Runtime(int(opset), int(proto.ir_version), types))


def layer_records(proto: Any, input_name: str, sample: Shape, batch: int, channels_last: bool,
                  tensors: dict[str, str | None]) -> tuple[dict[str, dict[str, Any] | None], str | None]:
    """Receptive fields of mined layers (`tensors`: layer → the tensor it reads) as store attributes,
    ("*": the whole image, for the virtual softmax) for one input of shape `sample` (C, H, W) fed in
    batches of `batch`; and the note that says which layers got none and why (None: all got one)."""
    c, h, w = (int(n) for n in sample[-3:])
    shape = (batch, h, w, c) if channels_last else (batch, c, h, w)
    found = fields_at(proto, input_name, shape, channels_last)
    out: dict[str, dict[str, Any] | None] = {}
    why: dict[str, str] = {}
    for layer, t in tensors.items():
        f = found.fields.get(t) if t is not None else None
        out[layer] = None if f is None else field_record(f)
        if f is None:
            why[layer] = found.missing.get(t or "", f"receptive fields: tensor {t!r} is not computed from the image")
    out["*"] = {"size": [h, w], "stride": [0, 0], "offset": [0, 0]}
    if not why:
        return out, None
    names = list(why)
    return out, (f"no receptive fields recorded for {len(names)} layers ({', '.join(names[:3])}"
                 f"{', …' if len(names) > 3 else ''}): {next(iter(why.values()))}")
