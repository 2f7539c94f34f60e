"""Ops the receptive-field analysis takes as pointwise (getitem, cat, chunk, add, ...) must keep
every pixel at its place on the (H, W) grid: the checks that refuse one that indexes, joins or
splits along the height or width, or puts the rows or columns in another order; and where a
reshape or transpose leaves the grid (`moved_grid`); and which inputs of an arithmetic op are gates
(one value per channel for the whole map) rather than part of a unit's field (`broadcast_gates`)."""
from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from sketchmine.errors import SketchmineError
from sketchmine.model.unit_axes import axis_order

TRANSPOSES = {torch.transpose, torch.permute, "transpose", "permute"}  # reorder dims: the grid may move


def _grids(meta: Any, grid: tuple[int, int]) -> set[tuple[int, ...]]:
    """The sizes at the grid's dims of every tensor with enough dimensions in a node's shape
    record (a tuple of them for a split)."""
    shape = getattr(meta, "shape", None)  # a TensorMetadata (itself a named tuple)
    if shape is not None:
        return {(int(shape[grid[0]]), int(shape[grid[1]]))} if len(shape) >= -grid[0] else set()
    if isinstance(meta, (tuple, list)):
        return set().union(*(_grids(m, grid) for m in meta)) if meta else set()
    return set()


def check_one_grid(node: fx.Node, grid: tuple[int, int], carriers: Iterable[fx.Node]) -> None:
    """An op taken as pointwise (getitem, cat, chunk, add, ...) keeps its pixel-carrying inputs'
    (H, W) grid at the same dims: one that indexes, joins or splits along H or W moves pixels,
    and is refused."""
    grids = _grids(node.meta.get("tensor_meta"), grid)
    for a in carriers:
        grids |= _grids(a.meta.get("tensor_meta"), grid)
    if len(grids) > 1:
        raise SketchmineError(f"receptive fields: {getattr(node.target, '__name__', node.target)} at {node.name} "
                              f"indexes, joins or splits the height or width (grids {sorted(grids)}); not supported")


def check_index(node: fx.Node, grid: tuple[int, int]) -> None:
    """Indexing a tensor keeps each pixel in place only where it takes the height and width whole
    (`:` or `0:`); a tensor or list index there (rows in another order: same size, other pixels) is
    refused. A tuple's getitem (a chunk's part) picks a tensor, no pixels."""
    src = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
    if not hasattr(src, "shape"):
        return
    items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    n, dims, at = len(src.shape), [], 0
    for item in items:  # the input dim each item indexes (None adds a dim, ... stands for the rest)
        if item is Ellipsis:
            at += n - sum(i is not None and i is not Ellipsis for i in items)
        elif item is not None:
            dims.append((at, item))
            at += 1
    for dim, item in dims:
        whole = isinstance(item, slice) and item.start in (None, 0) and item.step in (None, 1)
        if dim in (n + grid[0], n + grid[1]) and not whole:
            raise SketchmineError(f"receptive fields: getitem at {node.name} indexes the height or width by {item!r}, "
                                  "which may move pixels; not supported")


def moved_grid(node: fx.Node, grid: tuple[int, int]) -> tuple[int, int] | None:
    """Where a reshape puts the (H, W) grid (dims from the end), or None when it does not keep
    each output pixel at the input pixel's place: a transpose or permute must keep H before W
    (a channels-last permute moves them, ConvNeXt's LayerNorm does); a view, reshape or flatten
    must have the grid last on both sides, with the same sizes."""
    src = node.all_input_nodes[0].meta.get("tensor_meta") if node.all_input_nodes else None
    dst = node.meta.get("tensor_meta")
    if src is None or dst is None or not hasattr(src, "shape") or not hasattr(dst, "shape"):
        return None
    n = len(src.shape)
    if n < max(-grid[0], 2) or len(dst.shape) != n and node.target in TRANSPOSES:
        return None
    if node.target in TRANSPOSES:
        order = axis_order(node, n)
        if order is None:
            return None
        moved = (order.index(grid[0] % n) - n, order.index(grid[1] % n) - n)
        return moved if moved[0] < moved[1] else None  # H after W: the grid transposed
    if grid != (-2, -1) or len(src.shape) < 4 or len(dst.shape) < 4:
        return None
    return grid if tuple(src.shape[-2:]) == tuple(dst.shape[-2:]) else None


def grid_size(node: fx.Node, grid: tuple[int, int] = (-2, -1)) -> tuple[int, int] | None:
    """The (H, W) sizes of a node's tensor, None where its shape is not one tensor's."""
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return (int(shape[grid[0]]), int(shape[grid[1]])) if shape is not None and len(shape) >= -grid[0] else None


def output_grid(node: fx.Node) -> tuple[int, int]:
    """The (H, W) sizes of a window op's output, a tuple's too (a max pool with indices returns values
    and indices on one grid); refused naming the node where its shape tells no single grid (a table of
    no units would be a wrong field, not a missing one)."""
    grids = _grids(node.meta.get("tensor_meta"), (-2, -1))
    if len(grids) != 1:
        where = node.target if node.op == "call_module" else node.name
        raise SketchmineError(f"receptive fields: {where} gives no single (H, W) grid ({sorted(grids)}); not supported")
    h, w = grids.pop()
    return h, w


_ARITHMETIC = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add, torch.sub, torch.div,
               "mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_"}


def broadcast_gates(node: fx.Node, whole: Iterable[fx.Node], grid: tuple[int, int]) -> set[fx.Node]:
    """The inputs of an arithmetic `node` among `whole` (whole-image features) that hold one value per
    channel for the whole map, broadcast over its height and width: a squeeze-excitation gate, a global
    context term. Like a GroupNorm's statistics they scale or shift a whole map alike, so a unit's
    field follows the node's other inputs (where its pattern comes from), not the whole image. Any
    other op (an `expand_as` of the gate: its values are the gate's) keeps the whole image."""
    if node.op not in ("call_function", "call_method") or node.target not in _ARITHMETIC:
        return set()
    gates = set()
    for a in whole:
        shape = getattr(a.meta.get("tensor_meta"), "shape", None)
        if shape is not None and all(len(shape) < -g or int(shape[g]) == 1 for g in grid):
            gates.add(a)
    return gates

