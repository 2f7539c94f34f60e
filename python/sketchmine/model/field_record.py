"""The public record of a receptive field (`ReceptiveField`): its boxes, and its form in a run's
layer attributes, which `mine` writes and `visualize` reads.

A field a stride describes is recorded as {size, stride, offset}. Behind an op that resamples the
grid (field_tables.py) the record adds `spans`, every unit's (first, last) pixel per axis, and its
stride is the boxes' mean spacing rounded up to a whole pixel (the store keeps whole numbers; 0 would
read as "the whole image"): a reader that knows only size, stride and offset crops boxes of the
right size near the right places, one that reads `spans` the exact ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch


@dataclass(frozen=True)
class ReceptiveField:
    """Input-pixel field of a layer's units, per spatial axis (y, x).

    Unit i along an axis sees input pixels [offset + i*stride, offset + i*stride + size - 1];
    offset can be negative (padding), so crops must be clipped to the image. Behind an op that
    resamples the grid (an upsampling, a transposed conv) no stride describes the boxes: `spans`
    holds per axis every unit's (first, last) pixel ((0, -1): a unit that reads no pixel), `size`
    is the largest box, `stride` the boxes' mean spacing, first start to last (a Fraction: near 1/2
    after a 2× nearest upsampling, 27/55 for 28 pixels made 56 units)
    and `offset` unit 0's start (field_tables.py).
    """

    size: tuple[int, int]
    stride: tuple[int | Fraction, int | Fraction]
    offset: tuple[int, int]
    spans: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] | None = None

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), inclusive, of unit (y, x) before clipping."""
        if self.spans is not None:
            (top, bottom), (left, right) = self.spans[0][y], self.spans[1][x]
            return top, left, bottom, right
        top, left = self.offset[0] + y * int(self.stride[0]), self.offset[1] + x * int(self.stride[1])
        return top, left, top + self.size[0] - 1, left + self.size[1] - 1

    def boxes(self, yx: Any) -> torch.Tensor:
        """(M, 4) int64 (top, left, bottom, right), inclusive, of the units at yx (M, 2), before
        clipping; a unit that reads no pixel has bottom < top."""
        pos = torch.as_tensor(yx).long().cpu().reshape(-1, 2)
        if self.spans is None:
            top = self.offset[0] + pos[:, 0] * int(self.stride[0])
            left = self.offset[1] + pos[:, 1] * int(self.stride[1])
            return torch.stack([top, left, top + self.size[0] - 1, left + self.size[1] - 1], dim=1)
        rows = torch.tensor(self.spans[0], dtype=torch.long).reshape(-1, 2)[pos[:, 0]]
        cols = torch.tensor(self.spans[1], dtype=torch.long).reshape(-1, 2)[pos[:, 1]]
        return torch.stack([rows[:, 0], cols[:, 0], rows[:, 1], cols[:, 1]], dim=1)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(M, 1, height, width) bool: which pixels of a height×width crop cut at each box's top-left
    corner lie in the box (a tabled field's boxes are smaller than its `size` at places)."""
    rows = torch.arange(height, device=boxes.device).view(1, 1, -1, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, 1, -1)
    tall, wide = (boxes[:, 2] - boxes[:, 0] + 1).view(-1, 1, 1, 1), (boxes[:, 3] - boxes[:, 1] + 1).view(-1, 1, 1, 1)
    return (rows < tall) & (cols < wide)


def clipped_boxes(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """The part of each (top, left, bottom, right) box inside an image of `image_hw`, as (M, 4)
    int64, inclusive; all -1 where the box misses the image or holds no pixel."""
    low = boxes[:, :2].clamp_min(0)
    high = torch.minimum(boxes[:, 2:], torch.tensor([image_hw[0] - 1, image_hw[1] - 1], device=boxes.device))
    out = torch.cat([low, high], dim=1).long()
    return out.masked_fill((high < low).any(dim=1, keepdim=True), -1)


def field_record(f: ReceptiveField) -> dict[str, Any]:
    """A field as a layer attribute (module doc)."""
    if f.spans is None:
        return {"size": list(f.size), "stride": list(f.stride), "offset": list(f.offset)}
    return {"size": list(f.size), "stride": [max(1, math.ceil(s)) for s in f.stride], "offset": list(f.offset),
            "spans": [[list(s) for s in axis] for axis in f.spans]}


def recorded_field(rf: dict[str, Any]) -> ReceptiveField:
    """A layer attribute's field (`field_record`'s inverse, but for a tabled field's exact stride)."""
    spans = rf.get("spans")
    pairs = None if spans is None else [tuple((int(a), int(b)) for a, b in axis) for axis in spans]
    return ReceptiveField(tuple(rf["size"]), tuple(rf["stride"]), tuple(rf["offset"]),  # type: ignore[arg-type]
                          None if pairs is None else (pairs[0], pairs[1]))
