"""A graph exported with a fixed batch size, run on batches of any size: in chunks of that size,
the last padded with zeros, each fetched tensor's chunks joined and cut along the axis that
holds its images.

That axis is not always 0: a time-first (T, N, D) tensor holds them on axis 1, and an
attention's (N·heads, T, T) scores hold them on none. Joined and cut along axis 0, such a
tensor came back with as many rows as images, its padded batch read as units or positions:
mined where a graph with a dynamic batch refuses it (its rows are not the images). Its sizes
cannot tell the axis (its T may be the batch size), so the graph is asked, once per tensor: a
chunk of samples made distinct from one image, then the same chunk rolled by one; the images'
axis is the one whose slices move with the samples.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Call = Callable[[np.ndarray], list[np.ndarray]]


def image_axes(call: Call, image: np.ndarray, fixed: int) -> list[int | None]:
    """Per tensor `call` fetches, the axis holding the images of a batch of `fixed`: the one axis
    of that size whose slices, distinct from one another, follow the batch's samples when they are
    rolled by one place; None where no axis or more than one does (rows the graph folded from the
    images and something else, (N·heads, T, T)). The samples are `image` scaled and shifted
    apart, so that none is the same as another (a zero padding and a sketch's black background
    were, and a (T, N, D) tensor whose T is the batch size read as images along T). A tensor no
    sample moves (the same values for every input) keeps axis 0 where it has the batch's size, as
    a graph with a dynamic batch returns it; a batch of one: the first axis of size one."""
    chunk = np.stack([_apart(image, i, fixed) for i in range(fixed)])
    alone = call(chunk)
    rolled = call(np.roll(chunk, 1, axis=0)) if fixed > 1 else alone
    axes: list[int | None] = []
    for a, b in zip(alone, rolled, strict=True):
        sized = [d for d in range(a.ndim) if a.shape[d] == fixed]
        if fixed == 1:
            axes.append(sized[0] if sized else None)
            continue
        follow = [d for d in sized if all(_same(a.take(i, d), b.take((i + 1) % fixed, d)) for i in range(fixed))]
        moved = [d for d in follow if not _same(a.take(0, d), a.take(1, d))]
        axes.append(moved[0] if len(moved) == 1 else None if moved or 0 not in follow else 0)
    return axes


def _apart(image: np.ndarray, i: int, fixed: int) -> np.ndarray:
    """Sample `i` of the probing chunk: `image` scaled by 1 + i/fixed and shifted by i/fixed (in the
    input's dtype; whole numbers for an integer input), so that every sample differs from the rest."""
    made = image.astype(np.float64) * (1 + i / fixed) + (i / fixed if image.dtype.kind == "f" else i)
    if image.dtype.kind in "iu":
        info = np.iinfo(image.dtype)
        made = np.clip(np.rint(made), info.min, info.max)
    return made.astype(image.dtype)


def joined(parts: Sequence[np.ndarray], axis: int | None, images: int, fixed: int) -> np.ndarray:
    """One tensor's chunks as a graph with a dynamic batch returns it for `images` images: joined
    and cut along its images' `axis`. Without one (None) its rows are not the images, and the
    tensor is refused on its row count: joined along axis 0, cut to `images`' share of rows
    where a chunk holds several rows an image (image after image, as (N·heads) folds them), so
    that it says the count a dynamic batch gives, never one row an image."""
    if parts[0].ndim == 0:
        return parts[0]
    if axis is None:
        rows = len(parts[0])
        whole = np.concatenate(parts)
        return whole[:images * rows // fixed] if rows % fixed == 0 and rows > fixed else whole
    return np.concatenate(parts, axis)[(slice(None),) * axis + (slice(0, images),)]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two slices hold the same values, up to the rounding of a kernel that batches
    them otherwise (ONNX Runtime's tiles)."""
    if a.dtype.kind not in "fc":
        return np.array_equal(a, b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    scale = max(float(np.nanmax(np.abs(a))), 1.0) if a.size and not np.isnan(a).all() else 1.0
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 * scale, equal_nan=True))
