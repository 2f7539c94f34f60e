"""Typed wrappers over the compiled ops, their fake kernels, and pure-torch references.

The references define the semantics; the compiled kernels must agree with them exactly
(tests/test_ops.py compares the two with hypothesis).
"""
from __future__ import annotations

import math

import torch

from sketchmine import _C  # noqa: F401  (loading the library registers torch.ops.sketchmine)

EMPTY_INDEX = -1
"""Image index of an empty slot: fewer images seen than k."""


def topk_update(
    acts: torch.Tensor,
    image_index: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    position: torch.Tensor,
    nan_count: torch.Tensor,
) -> torch.Tensor:
    """Merge a batch into the per-channel top-k state, in place; return the (N, C) float32
    per-(image, channel) maxima it ranked (NaN where a map is all NaN).

    acts (N, C, *spatial) float32/float16/bfloat16; image_index (N,) int64 global ids;
    values (C, k) float32, index (C, k) int64, position (C, k) int64 flat spatial index,
    nan_count (C,) int64 — all on the activations' device. One entry per (image, channel):
    the spatial max ignoring NaN and its first position. Order: larger value, then smaller
    image index. NaN never enters the state; each NaN element is counted per channel.
    Ids must be >= 0 (-1 marks an empty slot): refused on the CPU; on CUDA unchecked, as a check
    would wait for the device at every batch (the miner's ids are its own), and such an entry
    never enters the state.
    """
    return torch.ops.sketchmine.topk_update(acts, image_index, values, index, position, nan_count)


@torch.library.register_fake("sketchmine::topk_update")
def _topk_update_fake(acts, image_index, values, index, position, nan_count) -> torch.Tensor:
    return acts.new_empty((acts.shape[0], acts.shape[1]), dtype=torch.float32)


def new_state(channels: int, k: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """An empty top-k state: every slot empty (index -1, value -inf)."""
    return {
        "values": torch.full((channels, k), float("-inf"), dtype=torch.float32, device=device),
        "index": torch.full((channels, k), EMPTY_INDEX, dtype=torch.int64, device=device),
        "position": torch.full((channels, k), EMPTY_INDEX, dtype=torch.int64, device=device),
        "nan_count": torch.zeros(channels, dtype=torch.int64, device=device),
    }


def spatial_max_reference(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (image, channel): max ignoring NaN, its first position (-1 if all NaN), NaN count.

    acts (N, C, *spatial) → values (N, C) float32, position (N, C) int64, nans (N, C) int64.
    """
    flat = acts.reshape(acts.shape[0], acts.shape[1], math.prod(acts.shape[2:])).float()
    isnan = torch.isnan(flat)
    filled = flat.masked_fill(isnan, float("-inf"))
    best = filled.amax(dim=2) if flat.shape[2] else flat.new_empty(flat.shape[:2])
    hits = (filled == best.unsqueeze(2)) & ~isnan
    length = flat.shape[2]
    ar = torch.arange(length, device=flat.device).expand_as(hits)
    pos = torch.where(hits, ar, length).amin(dim=2) if length else best.long()
    allnan = isnan.all(dim=2)
    if length:  # the first maximum's own value: amax may return either zero of -0.0 and +0.0
        best = torch.where(allnan, best, filled.gather(2, pos.clamp(max=length - 1).unsqueeze(2)).squeeze(2))
    pos = torch.where(allnan, torch.full_like(pos, EMPTY_INDEX), pos)
    return best, pos, isnan.sum(dim=2)


def merge_reference(
    values: torch.Tensor,
    index: torch.Tensor,
    position: torch.Tensor,
    cand_values: torch.Tensor,
    cand_index: torch.Tensor,
    cand_position: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best k of (state ∪ candidates) per channel under the deterministic order.

    State (C, k); candidates (C, M) with index -1 marking none. Sorting is lexicographic on
    (empty last, value descending, image index ascending), done with two stable sorts.
    """
    k = values.shape[1]
    v = torch.cat([values, cand_values.float()], dim=1)
    i = torch.cat([index, cand_index], dim=1)
    p = torch.cat([position, cand_position], dim=1)
    order = torch.argsort(i, dim=1, stable=True)  # secondary key: image index ascending
    v, i, p = v.gather(1, order), i.gather(1, order), p.gather(1, order)
    # primary key: value descending; stable keeps the index order on ties
    key = v.masked_fill(i < 0, float("-inf"))
    empty = (i < 0).to(torch.int8)
    order = torch.argsort(-key, dim=1, stable=True)
    v, i, p, empty = v.gather(1, order), i.gather(1, order), p.gather(1, order), empty.gather(1, order)
    order = torch.argsort(empty, dim=1, stable=True)  # empties after real entries (-inf included)
    v, i, p = v.gather(1, order), i.gather(1, order), p.gather(1, order)
    v = torch.where(i[:, :k] < 0, torch.full_like(v[:, :k], float("-inf")), v[:, :k])
    return v, i[:, :k], p[:, :k]


def topk_update_reference(
    acts: torch.Tensor,
    image_index: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    position: torch.Tensor,
    nan_count: torch.Tensor,
) -> torch.Tensor:
    """Pure-torch topk_update with the same semantics; slow, for tests and as the spec."""
    best, pos, nans = spatial_max_reference(acts)
    cand_index = torch.where(pos < 0, torch.full_like(pos, EMPTY_INDEX), image_index.unsqueeze(1))
    v, i, p = merge_reference(values, index, position, best.t(), cand_index.t(), pos.t())
    values.copy_(v)
    index.copy_(i)
    position.copy_(p)
    nan_count.add_(nans.sum(dim=0))
    return best.masked_fill(pos < 0, float("nan"))


def crop_patches(images: torch.Tensor, image_index: torch.Tensor, corners: torch.Tensor, height: int,
                 width: int, fill: float = 0.0) -> torch.Tensor:
    """Fixed-size patches: images (B, C, H, W) uint8 or float; image_index (M,) int64 into the
    batch; corners (M, 2) int64 (top, left), possibly outside the image. Returns
    (M, C, height, width) of the images' dtype; pixels outside the image are `fill`."""
    return torch.ops.sketchmine.crop_patches(images, image_index, corners, height, width, fill)


@torch.library.register_fake("sketchmine::crop_patches")
def _crop_patches_fake(images, image_index, corners, height, width, fill=0.0):
    return images.new_empty((corners.shape[0], images.shape[1], height, width))


def crop_patches_reference(images: torch.Tensor, image_index: torch.Tensor, corners: torch.Tensor,
                           height: int, width: int, fill: float = 0.0) -> torch.Tensor:
    """Pure-torch crop_patches: copy the part of each box inside the image, fill the rest."""
    m, c = corners.shape[0], images.shape[1]
    out = torch.full((m, c, height, width), fill, dtype=images.dtype, device=images.device)
    for j, ((top, left), i) in enumerate(zip(corners.tolist(), image_index.tolist())):
        (y0, y1), (x0, x1) = _overlap(top, height, images.shape[2]), _overlap(left, width, images.shape[3])
        if y0 < y1 and x0 < x1:
            out[j, :, y0 - top:y1 - top, x0 - left:x1 - left] = images[i, :, y0:y1, x0:x1]
    return out


def _overlap(start: int, size: int, limit: int) -> tuple[int, int]:
    return max(start, 0), min(start + size, limit)


def clip_boxes(corners: torch.Tensor, height: int, width: int, image_hw: tuple[int, int]) -> torch.Tensor:
    """The part of each (top, left, height, width) box inside the image, as (M, 4) int64
    (top, left, bottom, right), inclusive; all -1 when the box misses the image."""
    top, left = corners[:, 0], corners[:, 1]
    box = torch.stack([top.clamp_min(0), left.clamp_min(0), (top + height - 1).clamp_max(image_hw[0] - 1),
                       (left + width - 1).clamp_max(image_hw[1] - 1)], dim=1)
    empty = (box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1])
    return box.masked_fill(empty[:, None], -1)


def histogram_update(maxima: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, e: torch.Tensor,
                     counts: torch.Tensor, inf: torch.Tensor) -> None:
    """Compiled (CPU) `RunningHistogram.add_reference` on one layer's packed state, in place:
    maxima (N, C) float32; grid lo/hi (C,) float64, e (C,) int64; counts (C, 64) int64; inf (C, 2)
    int64 (histogram.py says what they hold)."""
    torch.ops.sketchmine.histogram_update(maxima, lo, hi, e, counts, inf)


def sketch_update(maxima: torch.Tensor, counts: torch.Tensor, top: torch.Tensor, special: torch.Tensor) -> None:
    """Compiled (CPU) `QuantileSketch.add_reference`, in place: counts (C, 2, 512) int32, top (C, 2)
    int64, special (C, 3) int64 (sketch.py)."""
    torch.ops.sketchmine.sketch_update(maxima, counts, top, special)


def examples_update(maxima: torch.Tensor, image_index: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    e: torch.Tensor, hashes: torch.Tensor, index: torch.Tensor) -> None:
    """Compiled (CPU) `QuantileExamples.add_reference`, in place: image_index (N,) int64 in
    [0, 2^40); hashes / index (C, 19, m) int64 (examples.py)."""
    torch.ops.sketchmine.examples_update(maxima, image_index, lo, hi, e, hashes, index)


def bottomk_update(maxima: torch.Tensor, acts: torch.Tensor, image_index: torch.Tensor, values: torch.Tensor,
                   index: torch.Tensor, position: torch.Tensor, nan_count: torch.Tensor) -> None:
    """Compiled (CPU) `BottomK.update_reference`, in place on a top-k state (values = the negated
    maxima): acts (N, C, L) float32 contiguous, where a new entry's position is the first equal
    to its maximum (bottomk.py)."""
    torch.ops.sketchmine.bottomk_update(maxima, acts, image_index, values, index, position, nan_count)


@torch.library.register_fake("sketchmine::bottomk_update")
def _bottomk_update_fake(maxima, acts, image_index, values, index, position, nan_count) -> None:
    return None


@torch.library.register_fake("sketchmine::histogram_update")
def _histogram_update_fake(maxima, lo, hi, e, counts, inf) -> None:
    return None


@torch.library.register_fake("sketchmine::sketch_update")
def _sketch_update_fake(maxima, counts, top, special) -> None:
    return None


@torch.library.register_fake("sketchmine::examples_update")
def _examples_update_fake(maxima, image_index, lo, hi, e, hashes, index) -> None:
    return None


def compiled_here(t: torch.Tensor) -> bool:
    """Whether the distribution kernels above run for tensors on t's device (the CPU only; other
    devices use the classes' pure-torch references)."""
    return t.device.type == "cpu"


def moments_update(maxima: torch.Tensor, total: torch.Tensor, count: torch.Tensor, firing: torch.Tensor) -> None:
    """Compiled (CPU) `RunningMoments.add_reference`, in place: maxima (N, C) float32; total (C,)
    float64, count and firing (C,) int64, contiguous. Images are added in order, one thread
    unless a task has enough work (csrc/grain.h)."""
    torch.ops.sketchmine.moments_update(maxima, total, count, firing)


@torch.library.register_fake("sketchmine::moments_update")
def _moments_update_fake(maxima, total, count, firing) -> None:
    return None


def class_sums_update(maxima: torch.Tensor, rows: torch.Tensor, sums: torch.Tensor) -> int:
    """Compiled (CPU) sums[rows[i], c] += maxima[i, c] for every non-NaN maximum, images in order
    (index_add_'s roundings): maxima (N, C) float32; rows (N,) int64 in [0, R); sums (R, C)
    float64 with unit stride along C (a column slice of the class table). Returns how many
    maxima were NaN (left out; the caller counts them)."""
    return int(torch.ops.sketchmine.class_sums_update(maxima, rows, sums))


def ink_density(x: torch.Tensor, scale: list[float], offset: float | None, threshold: float) -> torch.Tensor:
    """Compiled (CPU) ink.ink_density(gray_levels(x, ...)) for x (N, ch, H, W) float32:
    (N,) float64 share of pixels whose gray level (sum_c x_c * scale_c + offset) is further than
    `threshold` from the image's background (its border's lower median)."""
    return torch.ops.sketchmine.ink_density(x, scale, offset, threshold)


@torch.library.register_fake("sketchmine::ink_density")
def _ink_density_fake(x, scale, offset, threshold) -> torch.Tensor:
    return x.new_empty((x.shape[0],), dtype=torch.float64)
