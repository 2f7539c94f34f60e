"""Ops the receptive-field analysis takes as pointwise (getitem, cat, chunk, add, ...) must keep
every pixel at its place on the (H, W) grid: the checks that refuse one that indexes, joins or
splits along the height or width, or puts the rows or columns in another order."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import fx

from sketchmine.errors import SketchmineError


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
