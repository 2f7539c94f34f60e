"""Progressive drawings: a sketch seen as it grows, for recurrent recognisers.

The embedded silhouettes have no stroke order, so `progressive_drawing` makes one up,
deterministically (version "outline-then-fill/v1"):

1. Foreground (ink) = pixels that differ from the background value (0 for light ink on
   black, the embedded silhouettes; 255 for dark strokes on white, scanned sketches; see
   `background_of`). Its *depth* is the number of 4-neighbour erosions a pixel survives
   (the image border counts as background): depth 0 is the outline.
2. Pixel order: the outline first, clockwise from 12 o'clock around the foreground's
   centroid (angle rounded to 1e-6 rad; ties: nearer the centroid, then raster order);
   then the fill, from the outline inward (depth 1, 2, ...; within a depth the same
   clockwise order).
3. Step t of T (1-based) shows the first `round(t / T_o * outline)` outline pixels while
   t <= T_o = ceil(T / 2), then the whole outline plus the first
   `round((t - T_o) / (T - T_o) * fill)` fill pixels. A shown pixel keeps its value; the
   rest is the background value. Step T is exactly the full image (with T = 1 the only
   step is the image).

Colour images are ordered by their ink mask (a pixel is ink when any channel differs from
the background) and drawn with all their channels.

`SequenceDataset` wraps an `ArrayDataset` or an `ImageFolderDataset` so the miner, training,
visualize and importance passes read (T, C, H, W) samples, normalised frame by frame like
the base dataset; an image the preprocessing resizes is resized first and drawn at the
model's size (`draw_resized`); `mine(..., steps=T)` and `sketchmine mine --steps T` build it.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from sketchmine.data import READ_ERRORS, ArrayDataset, ImageFolderDataset, MinerDataset, Preprocessing, chw
from sketchmine.data.dataset import error_note
from sketchmine.errors import SketchmineError, whole_number

TRANSFORM = "outline-then-fill/v1"
DEFAULT_STEPS = 8
INKS = ("auto", "light", "dark")
"""light: bright ink on black (background 0); dark: dark ink on white (background 255);
auto: decided per image by the median of its one-pixel border, as `ink.ink_density` does."""


def check_ink(ink: str) -> str:
    """`ink` if it is one of INKS, else a clear error."""
    if ink not in INKS:
        raise SketchmineError(f"unknown ink {ink!r}; expected one of {', '.join(INKS)}")
    return ink


def recorded_steps(sequence: dict[str, Any], what: str) -> int:
    """The steps of a recorded progressive-drawing transform ({"transform", "steps"}: a model's
    training or a run's dataset, named by `what`), refused when another transform made them."""
    if sequence.get("transform") != TRANSFORM:
        raise SketchmineError(f"{what} used {sequence.get('transform')!r} drawings; this sketchmine makes "
                              f"{TRANSFORM!r}: pass a dataset of those sequences")
    return int(sequence["steps"])


def seen_channels(image: np.ndarray) -> np.ndarray:
    """The channels of a (H, W[, C]) image the model sees: grey + alpha and RGBA without their
    alpha, which the preprocessing drops (`convert_channels`); an opaque alpha would make every
    pixel ink."""
    return image[..., :-1] if image.ndim == 3 and image.shape[-1] in (2, 4) else image


def background_of(image: np.ndarray, ink: str = "auto") -> int:
    """The background value (0 or 255) of one uint8 (H, W) or (H, W, C) image for an `INKS` mode."""
    if check_ink(ink) != "auto":
        return 0 if ink == "light" else 255
    image = seen_channels(image)
    gray = image.mean(axis=-1) if image.ndim == 3 else image
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    middle = (border.size - 1) // 2  # the lower median, as ink_density's torch.median: the same rule
    return 0 if np.partition(border, middle)[middle] < 128 else 255


def pixel_order(image: np.ndarray, background: int = 0) -> tuple[np.ndarray, int]:
    """Drawing order of the ink pixels of one (H, W) or (H, W, C) image: flat (y * W + x)
    indices, and how many of them (the first ones) are the outline."""
    if image.ndim not in (2, 3):
        raise SketchmineError(f"progressive drawing needs one (H, W) or (H, W, C) image, got shape {image.shape}")
    fg = seen_channels(image) != background
    fg = fg.any(axis=-1) if image.ndim == 3 else fg
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


def shown_counts(steps: int, outline: int, total: int) -> list[int]:
    """How many of the ordered ink pixels (`outline` of `total` first) each of the `steps`
    steps shows (rule 3 above)."""
    t_outline = math.ceil(steps / 2) if steps > 1 else 0
    return [round(t / t_outline * outline) if t <= t_outline
            else outline + round((t - t_outline) / (steps - t_outline) * (total - outline))
            for t in range(1, steps + 1)]


def progressive_drawing(image: np.ndarray, steps: int = DEFAULT_STEPS, background: int = 0) -> np.ndarray:
    """(H, W[, C]) uint8 image → (steps, H, W[, C]) of the same dtype: the drawing after each
    step on `background`; the last step equals `image`."""
    if steps < 1:
        raise SketchmineError(f"a progressive drawing needs at least 1 step, got {steps}")
    order, outline = pixel_order(image, background)
    counts = shown_counts(steps, outline, len(order))
    h, w = image.shape[:2]
    out = np.full((steps,) + image.shape, background, dtype=image.dtype)
    flat_img = image.reshape(h * w, -1)
    for t, shown in enumerate(counts):
        idx = order[:shown]
        out[t].reshape(h * w, -1)[idx] = flat_img[idx]
    out[-1] = image  # exact, whatever the rounding above
    return out


def draw_resized(image: np.ndarray, steps: int, ink: str, pre: Preprocessing) -> torch.Tensor:
    """uint8 (H, W[, C]) image → (steps, channels, *size) [0, 1] float frames, unnormalised: the
    image resized and converted by `pre`'s rule first, then drawn. The pixel order and the ink
    are those of the resized image rounded to uint8 (the rule above is defined on 8-bit pixels,
    and a blurred background would otherwise be ink); shown pixels keep the resized floats, so
    the last frame is exactly the base dataset's sample before normalisation."""
    x = chw(image)[None]
    small = pre.resize(x)  # the image's own channels, at the model's size
    pixels = image if small is x else small[0].mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    pixels = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    background = background_of(pixels, ink)
    order, outline = pixel_order(pixels, background)
    plain = Preprocessing("none", pre.channels, pre.size)  # resize + channels, no normalisation
    values = (small if x.shape[1] == pre.channels else plain.prepare(x))[0]
    c, h, w = values.shape
    flat = values.reshape(c, h * w)
    frames = torch.full((steps, c, h * w), background / 255, dtype=values.dtype)
    index = torch.from_numpy(order)
    for t, shown in enumerate(shown_counts(steps, outline, len(order))):
        frames[t][:, index[:shown]] = flat[:, index[:shown]]
    frames[-1] = flat  # exact, whatever the rounding above
    return frames.reshape(steps, c, h, w)


def progressive_batch(images: np.ndarray, steps: int = DEFAULT_STEPS, ink: str = "auto") -> np.ndarray:
    """(N, H, W[, C]) → (N, steps, H, W[, C]): `progressive_drawing` of every image."""
    return np.stack([progressive_drawing(im, steps, background_of(im, ink)) for im in images]) if len(images) else \
        np.zeros((0, steps) + images.shape[1:], dtype=images.dtype)


def drawings_fingerprint(base: str, steps: int, ink: str) -> str:
    """The fingerprint of the drawings of the images fingerprinted `base`."""
    inked = "" if ink == "light" else f":{ink}"  # runs made before the ink option were "light"
    return hashlib.sha256(f"{base}:{TRANSFORM}:{steps}{inked}".encode()).hexdigest()


class SequenceDataset(MinerDataset):
    """Images of an `ArrayDataset` or `ImageFolderDataset` seen as progressive drawings:
    samples are (index, (T, C, H, W) float tensor, label, note), each frame preprocessed as the
    base dataset would preprocess the image. An image is resized (and its channels converted)
    before it is drawn (`draw_resized`), so the drawing is made at the model's size, whatever
    size the files are stored at, and the last frame is exactly the base dataset's sample."""

    def __init__(self, base: ArrayDataset | ImageFolderDataset, steps: int = DEFAULT_STEPS,
                 ink: str = "auto") -> None:
        if not isinstance(base, (ArrayDataset, ImageFolderDataset)):
            raise SketchmineError("progressive drawings are made from an ArrayDataset (e.g. "
                                  "sketchmine.data.animal_shape()) or an ImageFolder directory of images, "
                                  f"got {type(base).__name__}")
        steps = whole_number(steps, "steps (the frames of a progressive drawing)")  # a float: a torch error per image
        self.base, self.steps, self.ink = base, steps, check_ink(ink)  # refused here, not per image
        self.class_names = base.class_names
        self.preprocessing = base.preprocessing

    @property
    def preprocessing_explicit(self) -> bool:  # type: ignore[override]
        return self.base.preprocessing_explicit

    def with_preprocessing(self, preprocessing: Any) -> SequenceDataset:
        """The same drawings over the base dataset under another preprocessing."""
        return SequenceDataset(self.base.with_preprocessing(preprocessing), self.steps, self.ink)

    def __len__(self) -> int:
        return len(self.base)

    def path(self, i: int) -> str:
        return self.base.path(i)

    def labels(self) -> np.ndarray:
        return self.base.labels()

    def skipped_note(self) -> str | None:
        return self.base.skipped_note()

    def input_note(self) -> str | None:
        return self.base.input_note()

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "sequence": {"transform": TRANSFORM, "steps": self.steps, "ink": self.ink}}

    def fingerprint(self) -> str:
        return drawings_fingerprint(**self.drawn())

    def drawn(self) -> dict[str, Any]:
        """The images' own fingerprint and how they are drawn (`drawings_fingerprint`'s arguments):
        what a refused resume compares to name steps or ink (mining/checks.py), not a hash of both."""
        return {"base": self.base.fingerprint(), "steps": self.steps, "ink": self.ink}

    def __getitem__(self, i: int):
        p = self.preprocessing
        label = int(self.base.labels()[i])
        try:
            image, note = self.base.image_array(i)
        except READ_ERRORS as exc:
            x = torch.zeros(self.steps, p.channels, *(p.size or (1, 1)))
            return i, x, label, error_note(exc)
        return i, p.prepare(draw_resized(image, self.steps, self.ink, p)), label, note


def progressive(dataset: MinerDataset, steps: int, ink: str = "auto") -> SequenceDataset:
    """`dataset` as progressive drawings of `steps` frames; a SequenceDataset already of that
    many steps is returned as is."""
    steps = whole_number(steps, "steps (--steps)")
    if isinstance(dataset, SequenceDataset):
        if dataset.steps != steps:
            raise SketchmineError(f"the dataset is already a sequence of {dataset.steps} steps; steps={steps} asked")
        if ink != "auto" and ink != dataset.ink:
            raise SketchmineError(f"the dataset is already a sequence drawn with ink={dataset.ink!r}; ink={ink!r} asked")
        return dataset
    return SequenceDataset(dataset, steps, ink)  # type: ignore[arg-type]


def reopen(description: dict[str, Any], base: MinerDataset) -> SequenceDataset | None:
    """The progressive drawings a run recorded (`dataset` attrs with a `sequence` entry) over
    its reopened `base` dataset, for a later pass; None when the run did not mine sequences."""
    seq = description.get("sequence")
    if not seq:
        return None
    return SequenceDataset(base, recorded_steps(seq, "the run"), seq.get("ink", "light"))  # type: ignore[arg-type]
