"""A graph exported with a fixed batch size, run on batches of any size: in chunks of that size,
the last padded with zeros, each fetched tensor's chunks joined and cut along the axis that
holds its images.

That axis is not always 0: a time-first (T, N, D) tensor holds them on axis 1, and an
attention's (N·heads, T, T) scores hold them on none. Joined and cut along axis 0, such a
tensor came back with as many rows as images, its padded batch read as units or positions:
mined where a graph with a dynamic batch refuses it (its rows are not the images). Its sizes
cannot tell the axis (its T may be the batch size), so the graph is asked, once per tensor:
one image alone at the head of a zero chunk, then the same chunk rolled by one; the images'
axis is the one whose slice moves with the image.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Call = Callable[[np.ndarray], list[np.ndarray]]


def image_axes(call: Call, image: np.ndarray, fixed: int) -> list[int | None]:
    """Per tensor `call` fetches, the axis holding the images of a batch of `fixed`: the first
    axis of that size along which `image`'s slice moves with it from position 0 to 1 (a batch
    of one: the first axis of size one), None where no axis does (rows the graph folded from
    the images and something else, (N·heads, T, T))."""
    chunk = np.zeros((fixed, *image.shape), image.dtype)
    chunk[0] = image
    alone = call(chunk)
    rolled = call(np.roll(chunk, 1, axis=0)) if fixed > 1 else alone
    axes: list[int | None] = []
    for a, b in zip(alone, rolled, strict=True):
        sized = [d for d in range(a.ndim) if a.shape[d] == fixed]
        axes.append(next((d for d in sized if fixed == 1 or _same(a.take(0, d), b.take(1, d))), None))
    return axes


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
