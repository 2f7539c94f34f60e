"""Progressive drawings: a sketch seen as it grows, for recurrent recognisers.

The embedded silhouettes have no stroke order, so `progressive_drawing` makes one up,
deterministically (version "outline-then-fill/v1"):

1. Foreground = pixels > 0. Its *depth* is the number of 4-neighbour erosions a pixel
   survives (the image border counts as background): depth 0 is the outline.
2. Pixel order: the outline first, clockwise from 12 o'clock around the foreground's
   centroid (angle rounded to 1e-6 rad; ties: nearer the centroid, then raster order);
   then the fill, from the outline inward (depth 1, 2, ...; within a depth the same
   clockwise order).
3. Step t of T (1-based) shows the first `round(t / T_o * outline)` outline pixels while
   t <= T_o = ceil(T / 2), then the whole outline plus the first
   `round((t - T_o) / (T - T_o) * fill)` fill pixels. A shown pixel keeps its value; the
   rest is 0. Step T is exactly the full image (background pixels are 0 anyway; with
   T = 1 the only step is the image).

`SequenceDataset` wraps an `ArrayDataset` so the miner, training and importance passes
read (T, C, H, W) samples, normalised frame by frame like the base dataset.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from .data import ArrayDataset, MinerDataset
from .errors import SketchmineError

TRANSFORM = "outline-then-fill/v1"
DEFAULT_STEPS = 8


def pixel_order(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Drawing order of the foreground pixels of one (H, W) image: flat indices, and how
    many of them (the first ones) are the outline."""
    if image.ndim != 2:
        raise SketchmineError(f"progressive drawing needs one (H, W) image, got shape {image.shape}")
    fg = image > 0
    if not fg.any():
        return np.zeros(0, dtype=np.int64), 0
    depth = np.full(fg.shape, -1, dtype=np.int64)
    alive, d = fg.copy(), 0
    while alive.any():
        pad = np.pad(alive, 1, constant_values=False)
        inner = alive & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        depth[alive & ~inner] = d
        alive, d = inner, d + 1
    ys, xs = np.nonzero(fg)
    cy, cx = ys.mean(), xs.mean()
    angle = np.round(np.mod(np.arctan2(xs - cx, -(ys - cy)), 2 * math.pi), 6)  # 0 at 12 o'clock, clockwise
    radius = np.round(np.hypot(ys - cy, xs - cx), 6)
    flat = ys * fg.shape[1] + xs
    order = np.lexsort((flat, radius, angle, depth[ys, xs]))  # last key is the primary one
    return flat[order], int((depth == 0).sum())


def progressive_drawing(image: np.ndarray, steps: int = DEFAULT_STEPS) -> np.ndarray:
    """(H, W) uint8 image → (steps, H, W) of the same dtype: the drawing after each step;
    the last step equals `image`."""
    if steps < 1:
        raise SketchmineError(f"a progressive drawing needs at least 1 step, got {steps}")
    order, outline = pixel_order(image)
    fill = len(order) - outline
    t_outline = math.ceil(steps / 2) if steps > 1 else 0
    out = np.zeros((steps,) + image.shape, dtype=image.dtype)
    flat_img = image.reshape(-1)
    for t in range(1, steps + 1):
        if t <= t_outline:
            shown = round(t / t_outline * outline)
        else:
            shown = outline + round((t - t_outline) / (steps - t_outline) * fill)
        idx = order[:shown]
        out[t - 1].reshape(-1)[idx] = flat_img[idx]
    out[-1] = image  # exact, whatever the rounding above
    return out


def progressive_batch(images: np.ndarray, steps: int = DEFAULT_STEPS) -> np.ndarray:
    """(N, H, W) → (N, steps, H, W): `progressive_drawing` of every image."""
    return np.stack([progressive_drawing(im, steps) for im in images]) if len(images) else \
        np.zeros((0, steps) + images.shape[1:], dtype=images.dtype)


class SequenceDataset(MinerDataset):
    """An ArrayDataset of single-channel images seen as progressive drawings: samples are
    (index, (T, C, H, W) float tensor, label, note), each frame preprocessed as the base
    dataset would preprocess the image."""

    def __init__(self, base: ArrayDataset, steps: int = DEFAULT_STEPS) -> None:
        if not isinstance(base, ArrayDataset) or base.images.ndim != 3:
            raise SketchmineError("SequenceDataset wraps an ArrayDataset of (N, H, W) gray images "
                                  f"(e.g. sketchmine.data.animal_shape()), got {type(base).__name__}")
        if steps < 1:
            raise SketchmineError(f"a progressive drawing needs at least 1 step, got {steps}")
        self.base, self.steps = base, steps
        self.class_names = base.class_names
        self.preprocessing = base.preprocessing

    def __len__(self) -> int:
        return len(self.base)

    def path(self, i: int) -> str:
        return self.base.path(i)

    def labels(self) -> np.ndarray:
        return self.base.labels()

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "sequence": {"transform": TRANSFORM, "steps": self.steps}}

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.base.fingerprint()}:{TRANSFORM}:{self.steps}".encode()).hexdigest()

    def __getitem__(self, i: int):
        frames = progressive_drawing(np.asarray(self.base.images[i]), self.steps)
        x = torch.from_numpy(frames).float().div_(255).unsqueeze(1)  # (T, 1, H, W)
        p = self.preprocessing
        if p is not None and p.size is not None and tuple(x.shape[-2:]) != tuple(p.size):
            x = torch.nn.functional.interpolate(x, size=p.size, mode="bilinear", antialias=True)
        if p is not None and p.channels != 1:
            x = x.expand(-1, p.channels, -1, -1).clone()
        x = torch.stack([p.normalise(f) for f in x]) if p is not None else x
        return i, x, int(self.base.labels()[i]), ""


def reopen(description: dict[str, Any], preprocessing: Any) -> SequenceDataset | None:
    """The progressive-drawing dataset a run recorded (`dataset` attrs with a `sequence`
    entry over the embedded data), rebuilt for a later pass; None for anything else."""
    seq = description.get("sequence")
    if not seq or description.get("kind") != "embedded" or "subset" in description:
        return None
    if seq.get("transform") != TRANSFORM:
        raise SketchmineError(f"the run's sequences were made by {seq.get('transform')!r}; this sketchmine makes "
                              f"{TRANSFORM!r}: pass the dataset (dataset=...)")
    from .data import animal_shape

    return SequenceDataset(animal_shape(description.get("split", "test"), preprocessing), int(seq["steps"]))
