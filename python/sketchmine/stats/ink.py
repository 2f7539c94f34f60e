"""The ink density of an input image: the share of its pixels that are ink, measured against
the image's own background, for the class statistics' "which classes have dense strokes" (the
seed's conv layers prefer classes of high stroke density). A pure-torch reference here, the
compiled pass in `ops.ink_density` (csrc/cpu/ink_density.cpp), equal per image."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sketchmine.lazy import lazy

if TYPE_CHECKING:
    import torch
else:  # imported on first use (sketchmine/lazy.py)
    torch = lazy("torch", globals())

INK_THRESHOLD = 0.5
"""A pixel is ink when its gray value differs from the image's background by more than this
(pixel values in [0, 1])."""


def gray_terms(ch: int, mean: Sequence[float] = (), std: Sequence[float] = ()) -> tuple[list[float], float | None]:
    """(per-channel scale, offset or None): gray = sum_c x_c * scale_c + offset, the channel mean
    of x * std + mean."""
    return [(std[c] if std else 1.0) / ch for c in range(ch)], (sum(mean) / ch if mean else None)


def gray_levels(x: torch.Tensor, mean: Sequence[float] = (), std: Sequence[float] = ()) -> torch.Tensor:
    """(N, ch, H, W) model input → (N, H, W) float32 gray value in [0, 1]: the channel mean of
    x * std + mean, accumulated channel by channel, each product rounded before its sum (the
    compiled `ops.ink_density` rounds alike)."""
    scale, offset = gray_terms(x.shape[1], mean, std)
    gray = x[:, 0].float() * scale[0]
    for c in range(1, x.shape[1]):
        gray.add_(x[:, c].float() * scale[c])
    return gray.add_(offset) if offset is not None else gray


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each image of x (N, ...) holds values in [0, 1] only, NaN aside (a NaN
    pixel is ink_density's to count). On the host one min/max pass, element-wise only for images
    with NaN; on a device element-wise, which needs no synchronisation."""
    flat = x.flatten(1)
    if flat.device.type != "cpu":
        return ~((flat < 0) | (flat > 1)).any(1)
    low, high = flat.aminmax(dim=1)  # NaN propagates: those images are looked at again below
    inside = (low >= 0) & (high <= 1)
    unsure = low.isnan() | high.isnan()
    if bool(unsure.any()):
        inside[unsure] = ~((flat[unsure] < 0) | (flat[unsure] > 1)).any(1)
    return inside


def ink_density(gray: torch.Tensor) -> torch.Tensor:
    """Fraction of ink pixels per image. gray (N, H, W) in [0, 1] → (N,) float64.

    Polarity is decided per image: the background is the median gray value of the image's
    one-pixel border, ink is every pixel further than INK_THRESHOLD from it. The embedded
    Animal-Shape images are white silhouettes on black (ink = bright pixels); TU-Berlin-style
    sketches are dark strokes on white (ink = dark pixels); both are measured the same way.
    """
    border = torch.cat([gray[:, 0, :], gray[:, -1, :], gray[:, 1:-1, 0], gray[:, 1:-1, -1]], dim=1)
    background = border.median(dim=1).values
    ink = (gray - background[:, None, None]).abs_().gt_(INK_THRESHOLD)
    return ink.flatten(1).sum(dim=1, dtype=torch.float64) / ink[0].numel()
