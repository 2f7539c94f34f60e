"""Receptive fields from the model's graph: size, stride and offset of every layer.

The model is traced with torch.fx and shapes are propagated on the meta device; each
node's field is derived from its inputs' fields through the op's kernel, stride, padding
and dilation. Branches are merged by union (residual additions, Inception concatenations),
and anything that mixes all positions (flatten, linear, global pooling) sees the whole
image. Each node also carries where its tensor holds H and W, so channels-last stretches
(ConvNeXt's permute, LayerNorm, Linear, permute back) are pointwise. Behind an upsampling or a
transposed conv the boxes are kept unit by unit (`field_tables`); convs and pools called as functions
are read from the call (`field_calls`). No per-model rules: an op
the analysis cannot follow is named; the nodes it feeds get no field (`field_analysis`), or
`receptive_fields` refuses. Pads follow `field_pads`: a constant pad shifts the field; a reflection
or replication pad is followed into the conv that reads it when the copies stay inside its units'
boxes, and has no field of its own (its border units are copies that no box holds).

A field is where a unit's pattern comes from. Normalisations with statistics over positions
(GroupNorm, LayerNorm, InstanceNorm; BatchNorm without running statistics), adaptive pooling that is the
identity at the analysed size and a per-channel gate from the whole image (squeeze-excitation,
`field_grid.broadcast_gates`) are taken as pointwise for it: they scale and shift a whole map
alike, and the field of every unit after a GroupNorm or a gate would otherwise be the whole image. Such
ops do make a unit depend on the image's size and on pixels outside its field, so
`coupling.position_coupled` names them: a unit behind one cannot be computed on a window of the image.
"""
from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from sketchmine.errors import SketchmineError
from sketchmine.model.backend import LoadedModel, torch_module
from sketchmine.model.field_algebra import (PIXELS, Field, as_record, as_tables, merged, shifted_by, tabled,
                                            whole_image, windowed)
from sketchmine.model.field_calls import window_of
from sketchmine.model.field_grid import (broadcast_gates, check_index, check_one_grid, grid_size, moved_grid,
                                         output_grid)
from sketchmine.model.field_record import ReceptiveField, box_mask  # noqa: F401 (public here)
from sketchmine.model.field_pads import check_padding_mode, conv_padding, copy_carriers, pad_of, pair
from sketchmine.model.field_spans import read
from sketchmine.model.field_tables import resampler, resampling_reach
from sketchmine.model.graph import check_leading, module_input_channels, module_outputs, propagate_shapes, trace
from sketchmine.model.unit_axes import follow_units, tapped_shape

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                      nn.Hardswish, nn.Hardsigmoid, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d,
                      nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Softmax, nn.LogSoftmax,
                      nn.LayerNorm)
_POINTWISE_FUNCS = {torch.relu, torch.nn.functional.relu, torch.sigmoid, torch.tanh, torch.add, torch.mul,
                    torch.cat, torch.nn.functional.dropout, torch.softmax, torch.nn.functional.softmax,
                    torch.nn.functional.batch_norm, torch.nn.functional.hardtanh, torch.nn.functional.relu6,
                    torch.nn.functional.gelu, torch.nn.functional.silu, torch.unsqueeze,
                    torch.nn.functional.layer_norm, torch.nn.functional.group_norm, torch.nn.functional.instance_norm,
                    operator.add, operator.mul, operator.getitem}
# the functional spellings of the pointwise modules above, in and out of place: a model that calls
# them in forward() has the fields of its twin made of modules
_F = torch.nn.functional
_POINTWISE_FUNCS |= {torch.relu_, _F.relu_, _F.leaky_relu, _F.leaky_relu_, _F.elu, _F.elu_, _F.hardswish,
                     _F.hardsigmoid, _F.sigmoid, _F.tanh, torch.sigmoid_, torch.tanh_, _F.relu6, _F.hardtanh_,
                     _F.local_response_norm, _F.dropout2d, _F.log_softmax, torch.log_softmax, torch.clamp,
                     torch.clamp_min, torch.sub, torch.div, torch.neg, operator.sub, operator.truediv, operator.neg}
# pointwise functions outside torch, by qualified name (importing their library here would cost
# every caller its import): stochastic depth scales whole samples
_POINTWISE_NAMES = {"torchvision.ops.stochastic_depth.stochastic_depth"}
_POINTWISE_METHODS = {"relu", "relu_", "add", "add_", "mul", "mul_", "sigmoid", "contiguous", "clone",
                      "unsqueeze", "float", "to", "chunk", "size", "sigmoid_", "tanh", "tanh_", "softmax",
                      "log_softmax", "clamp", "clamp_", "clamp_min", "clamp_min_", "sub", "sub_", "div", "div_",
                      "neg"}
_GLOBAL_FUNCS = {torch.flatten, torch.mean, torch.amax, torch.amin}
_ADAPTIVE_FUNCS = {_F.adaptive_avg_pool2d, _F.adaptive_max_pool2d}  # as their modules (`_adaptive`)
_GLOBAL_METHODS = {"view", "reshape", "flatten", "unflatten", "mean", "sum", "amax", "amin"}
# reshapes: the whole image in general, but pointwise when they keep the (H, W) dims (a sequence's frames
# folded into the batch, (N, T, C, H, W) -> (N*T, C, H, W); a channel shuffle's transpose of (N, g, C/g, H, W))
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.transpose, torch.permute}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "transpose", "permute"}


def _window(f: Field, node: fx.Node, k, s, p, d, mode: str = "zeros") -> Field:
    """Field after a sliding window (conv or pool) with kernel k, stride s, padding p (by `mode`), dilation d."""
    p = conv_padding(p, k, d)
    k, s, d = pair(k), pair(s), pair(d)
    return windowed(f, k, s, p, d, output_grid(node) if f.table is not None else None, mode)  # the grid is last


def _resampled(f: Field, node: fx.Node, modules: dict[str, nn.Module]) -> Field | None:
    """Field after an upsampling, an interpolation or a transposed conv (field_tables.py); None
    when the node is none of them."""
    if (where := resampler(node, modules)) is None:
        return None
    _check_grid_last(node, f)
    n_in, n_out = grid_size(node.all_input_nodes[0]), grid_size(node)
    if n_in is None or n_out is None:
        raise SketchmineError(f"receptive fields: {where} resamples a grid of unknown size; not supported")
    table, reach = as_tables(f, n_in, where), resampling_reach(node, modules, where, n_in, n_out)
    return tabled((read(table[0], reach[0]), read(table[1], reach[1])))


def _union(carriers: dict[fx.Node, Field], node: fx.Node, where: str, at: fx.Node | None = None) -> Field:
    fields = list(carriers.values())
    by_position = len(fields) > 1 and any(f.table is not None for f in fields)
    # `at`: the grid the inputs share (a resampler's input)
    return merged(fields, where, grid_size(at or node, fields[0].grid) if by_position else None)


def receptive_fields(model: nn.Module | LoadedModel, input_size: int | tuple[int, ...],
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
    convolution is refused; (T, C, H, W) is (C, H, W) with `leading` (T,), as `mine` takes a
    sequence's samples. An op the analysis cannot follow is refused naming it (`field_analysis`
    keeps the fields of the modules before it). A reflection or replication pad (and a pointwise
    op between it and the conv that reads it) has no field: its border units are copies that no box
    holds; the layers after it have theirs. `model`: a torch module, or its LoadedModel."""
    from sketchmine.data.preprocess import split_sample
    frames, image = ((), input_size) if leading else split_sample(input_size, "receptive_fields input_size")
    try:
        analysis = field_analysis(torch_module(model, "receptive_fields"), image, leading or frames, channels)
    except SketchmineError as exc:  # (1, 3, 224, 224) may be meant as a batch of one image
        if not frames:
            raise
        raise SketchmineError(f"{exc} (input_size {tuple(input_size)} is read as a sequence's sample (T, C, H, W), "
                              f"frames of {tuple(image)}; for one image pass {tuple(image)})") from None
    refused = [why for name, why in analysis.missing.items() if name not in analysis.copies]
    if refused:
        raise SketchmineError(refused[0])
    return analysis.fields


@dataclass(frozen=True)
class FieldAnalysis:
    """The fields the graph gives (`fields`), and the modules without one (`missing`: module name →
    why, in words): an op the analysis cannot follow comes before them, or, for those in `copies`,
    their border units are copies of other pixels (a reflection or replication pad, and pointwise
    ops between it and its conv) while the layers after them have fields. `unit_axes`: module →
    (the axis of its output holding its units, the output's rank), where the graph tells
    (`unit_axes.follow_units`; the last axis inside a ConvNeXt block's permutes)."""

    fields: dict[str, ReceptiveField]
    missing: dict[str, str]
    copies: frozenset[str] = frozenset()
    unit_axes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


def field_analysis(model: nn.Module, input_size: int | tuple[int, ...],
                   leading: tuple[int, ...] = (), channels: int | None = None, partial: bool = False) -> FieldAnalysis:
    """`receptive_fields`, except that an op the analysis cannot follow costs only the fields
    of the nodes it feeds (a field depends on the node's inputs alone): the layers before it
    keep theirs, the rest are listed in `missing` with the reason."""
    from sketchmine.data import parse_size

    c, (h, w) = parse_size(input_size, "receptive_fields input_size")
    check_leading(leading)  # before it is unpacked into a traced input's shape
    size = (*leading, h, w)  # a model torch.fx follows only at a size is traced at it to find its channels
    if c is not None:
        takes = channels if channels is not None else module_input_channels(model, default=c, size=size)
        if c != takes:
            raise SketchmineError(f"receptive_fields input_size {tuple(input_size)} has {c} channels but "
                                  f"{type(model).__name__} takes {takes}; pass (H, W) or ({takes}, H, W)")
        channels = c
    gm = trace(model, "to compute receptive fields", (*leading, channels or module_input_channels(model, size=size), h, w))
    propagate_shapes(gm, model, h, w, leading, channels, partial)
    whole = whole_image(h, w)
    fields: dict[fx.Node, Field] = {}
    unknown: dict[fx.Node, str] = {}
    modules = dict(gm.named_modules())
    out: dict[str, ReceptiveField] = {}
    missing: dict[str, str] = {}
    copies: dict[fx.Node, str] = {}
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            fields[node] = PIXELS
            continue
        before = [unknown[a] for a in node.all_input_nodes if a in unknown]
        carriers = {a: fields[a] for a in node.all_input_nodes if a in fields}
        if node.op in ("output", "get_attr") or not (carriers or before):
            continue
        if "tensor_meta" not in node.meta:  # a shape, size or other non-tensor value: no pixels
            continue
        try:
            if before:  # after an op the analysis cannot follow: unknown as well, for the same reason
                raise SketchmineError(before[0])
            f = _node_field(node, carriers, modules, whole, copies)
        except SketchmineError as exc:
            unknown[node] = str(exc)
            if node.op == "call_module":
                missing[str(node.target)] = str(exc)
            continue
        fields[node] = f
        if node.op == "call_module" and node in copies:
            missing[str(node.target)] = copies[node]
        elif node.op == "call_module" and calls[node.target] == 1:  # called twice: two fields (the miner refuses it)
            out[str(node.target)] = as_record(f, h, w)
    outputs = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module" and calls[n.target] == 1}
    outputs.update({name: node for name, node in module_outputs(gm).items() if name not in outputs})
    for name, node in outputs.items():  # modules traced through: blocks, containers
        if name in out or name in missing:
            continue
        if node in copies:
            missing[name] = copies[node]
        elif node in fields:
            out[name] = as_record(fields[node], h, w)
        elif node in unknown:
            missing[name] = unknown[node]
    spans = follow_units(gm)
    axes = {name: (spans[node][0], len(tapped_shape(node) or ())) for name, node in outputs.items()
            if node in spans and spans[node][1] == spans[node][0] + 1}
    return FieldAnalysis(out, missing, frozenset(n for n, why in missing.items() if why in copies.values()), axes)


def sample_analysis(model: nn.Module, sample: tuple[int, ...], partial: bool = False) -> FieldAnalysis | SketchmineError:
    """`field_analysis` for one input of shape `sample` ((C, H, W), or (T, C, H, W) for a sequence
    of frames: fields per frame), or why the graph cannot be analysed (its callers mine on without)."""
    sample = tuple(int(n) for n in sample)
    if len(sample) < 3:  # a vector or a sequence of features: no image input
        return SketchmineError(f"the model takes {sample} inputs, not images")
    try:
        return field_analysis(model, sample[-2:], sample[:-3], channels=sample[-3], partial=partial)
    except SketchmineError as exc:
        return exc


def _node_field(node: fx.Node, carriers: dict[fx.Node, Field], modules: dict[str, nn.Module],
                whole: Field, copies: dict[fx.Node, str]) -> Field:
    """A node's field from its pixel-carrying inputs' fields (`carriers`: input node → field),
    or a SketchmineError naming an op whose effect on positions is not known. A copying pad adds
    the nodes that carry its copies to `copies` (node → why it has no field of its own)."""
    where = node.target if node.op == "call_module" else node.name
    if len(grids := {f.grid for f in carriers.values() if f.jump != (0, 0)}) == 1:  # a gate is not in the field
        gates = broadcast_gates(node, [a for a, f in carriers.items() if f.jump == (0, 0)], grids.pop())
        carriers = {a: f for a, f in carriers.items() if a not in gates}
    if not all(i.jump != (0, 0) for i in carriers.values()):  # from whole-image features (a recurrent head, an MLP)
        return whole
    win = window_of(node, carriers)  # a conv or pool called as a function (field_calls)
    f = _union(carriers, node, str(where), node.all_input_nodes[0] if resampler(node, modules) else None)
    if (pad := pad_of(node, modules)) is not None:
        _check_grid_last(node, f)
        if pad.copies:
            reason = (f"receptive fields: {pad.name} copies pixels into its border units, which no box holds "
                      "(the conv that reads it has a field)")
            copies.update(dict.fromkeys(copy_carriers(node, pad, modules, lambda n: _pointwise(n, modules)), reason))
        return _shifted(f, node, *pad.shift, mode=pad.mode)
    if (resampled := _resampled(f, node, modules)) is not None:
        return resampled
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)):  # (an LPPool2d: no padding)
            _check_grid_last(node, f)
            dil = getattr(m, "dilation", 1)
            if isinstance(m, nn.Conv2d):
                check_padding_mode(str(node.target), m)
            return _window(f, node, m.kernel_size, m.stride or m.kernel_size, getattr(m, "padding", 0),
                           dil if dil is not None else 1, getattr(m, "padding_mode", "zeros"))
        if isinstance(m, nn.Linear):  # along the last dim: pointwise when that holds channels (NHWC)
            return f if f.grid[1] != -1 else whole
        if isinstance(m, nn.Flatten):
            return whole
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            _check_grid_last(node, f)
            return _adaptive(f, m.output_size, node, whole)
        if not isinstance(m, _POINTWISE_MODULES):
            raise SketchmineError(f"receptive fields: module {node.target!r} ({type(m).__name__}) is not supported")
        return f
    if node.op == "call_function":
        if node.target in _RESHAPE_FUNCS and (grid := moved_grid(node, f.grid)) is not None:
            return dataclasses.replace(f, grid=grid)
        if win is not None:
            _check_grid_last(node, f)
            return _window(f, node, win.kernel_size, win.stride, win.padding, win.dilation)
        if node.target in _ADAPTIVE_FUNCS:
            _check_grid_last(node, f)
            return _adaptive(f, node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None), node, whole)
        if node.target is torch.nn.functional.linear:
            return f if f.grid[1] != -1 else whole
        if node.target in _GLOBAL_FUNCS:
            return whole
        if node.target not in _POINTWISE_FUNCS and _qualname(node.target) not in _POINTWISE_NAMES:
            raise SketchmineError(f"receptive fields: function {getattr(node.target, '__name__', node.target)} "
                                  f"at {node.name} is not supported")
        check_one_grid(node, f.grid, carriers)
        if node.target is operator.getitem:
            check_index(node, f.grid)
        return f
    if node.target in _RESHAPE_METHODS and (grid := moved_grid(node, f.grid)) is not None:
        return dataclasses.replace(f, grid=grid)
    if node.target in _GLOBAL_METHODS:
        return whole
    if node.target not in _POINTWISE_METHODS:
        raise SketchmineError(f"receptive fields: method .{node.target}() at {node.name} is not supported")
    check_one_grid(node, f.grid, carriers)
    return f


def _shifted(f: Field, node: fx.Node, top: int, left: int, mode: str = "constant") -> Field:
    """Field after a pad of `top` rows and `left` columns before the grid (negative: a crop): unit i
    of the result is unit i - left of its input along x (top along y)."""
    # a tabled field's grid as a window's: an unknown one refused, not a table of no units
    return shifted_by(f, top, left, output_grid(node) if f.table is not None else None, mode)


def _pointwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether an op is one of those this analysis takes as pointwise (what a copying pad may
    pass through on its way to the conv that reads it)."""
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _POINTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCS or _qualname(node.target) in _POINTWISE_NAMES
    return node.op == "call_method" and node.target in _POINTWISE_METHODS


def _qualname(target: Any) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"


def _check_grid_last(node: fx.Node, f: Field) -> None:
    """A window op (conv, pool) slides over the last two dims: the grid must be there."""
    if f.grid != (-2, -1):
        raise SketchmineError(f"receptive fields: {node.target if node.op == 'call_module' else node.name} slides "
                              f"over the last two dims, but the height and width are at dims {f.grid}; not supported")


def _adaptive(f: Field, output_size, node: fx.Node, whole: Field) -> Field:
    """Adaptive pooling: the identity when input and output grids match (AlexNet, VGG at 224 px), else
    every unit is taken to see the whole image (global pooling exactly; a safe bound otherwise, as for
    an output size known only at run time)."""
    meta = node.all_input_nodes[0].meta.get("tensor_meta")
    out = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if meta is not None and all(isinstance(n, int) for n in out) and tuple(meta.shape[-2:]) == out:
        return f
    return whole
