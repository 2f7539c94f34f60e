"""The images a pass crops from: decoded once and cached, turned back from model inputs into
uint8 pixels, and the crops' conversions (signed signal to uint8, shrink to the patch size,
channels last) shared by visualize and the other example passes.
"""
from __future__ import annotations

import torch
from torch import nn

from sketchmine.data import MinerDataset, Preprocessing
from sketchmine.errors import SketchmineError

CACHE_IMAGES = 4096  # decoded images kept across blocks: a unit's top images recur in many units


class ImageCache:
    """The top-k images of a visualize pass, decoded once and kept (up to CACHE_IMAGES, oldest
    dropped first): the model inputs, and the uint8 pixels patches are cut from."""

    def __init__(self, ds: MinerDataset, pre: Preprocessing | None) -> None:
        self.ds, self.pre = ds, pre
        self._inputs: dict[int, torch.Tensor] = {}
        self._pixels: dict[int, torch.Tensor] = {}

    def inputs(self, indices: list[int]) -> torch.Tensor:
        """The images' model inputs, stacked; an unreadable file is an error naming it."""
        return self._stack(indices, self._inputs, self._read)

    def pixels(self, indices: list[int]) -> torch.Tensor:
        """The images as uint8 pixels (the normalisation undone), stacked like `inputs`."""
        return self._stack(indices, self._pixels, self._to_pixels)

    def _read(self, i: int) -> torch.Tensor:
        _, x, _, note = self.ds[i]
        if note.startswith("error:"):
            raise SketchmineError(f"cannot read image {self.ds.path(i)}: {note[6:]}")
        return x

    def _to_pixels(self, i: int) -> torch.Tensor:
        x = self.inputs([i])[0]  # (C, H, W), or (T, C, H, W) for a sequence: frame by frame
        return to_pixels(x.reshape(-1, *x.shape[-3:]), self.pre).reshape(x.shape)

    @staticmethod
    def _stack(indices: list[int], kept: dict[int, torch.Tensor], make) -> torch.Tensor:
        out = []
        for i in indices:
            if i not in kept:
                if len(kept) >= CACHE_IMAGES:
                    kept.pop(next(iter(kept)))
                kept[i] = make(i)
            out.append(kept[i])
        return torch.stack(out) if out else torch.zeros(0)


def to_pixels(x: torch.Tensor, pre: Preprocessing | None) -> torch.Tensor:
    """Model inputs back to uint8 pixels: undo the recorded normalisation (per-image min-max
    for datasets with no recorded preprocessing). In float32 whatever the model's dtype (a
    bfloat16 input's own arithmetic is off by up to 2 levels)."""
    x = x.float()
    if pre is not None and pre.mean:
        mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x * std + mean
    elif pre is None:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def signal_to_uint8(crop: torch.Tensor) -> torch.Tensor:
    """Signed signal → uint8 with 128 at zero, scaled per crop by its largest magnitude."""
    peak = crop.abs().amax(dim=(1, 2, 3), keepdim=True)
    scaled = torch.where(peak > 0, crop / peak.clamp_min(1e-30), torch.zeros_like(crop))
    return (128 + 127 * scaled).round_().clamp_(0, 255).to(torch.uint8)


def fit(crop: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Shrink crops (area average) to `size` when the patch is capped; keeps the dtype."""
    if tuple(crop.shape[-2:]) == tuple(size):
        return crop
    small = nn.functional.interpolate(crop.float(), size=size, mode="area")
    return small.round_().clamp_(0, 255).to(torch.uint8) if crop.dtype == torch.uint8 else small


def to_hwc(crop: torch.Tensor) -> torch.Tensor:
    return crop.permute(0, 2, 3, 1)
