"""Feature visualisation's transforms against geometry: lucent's standard transforms jitter, scale
and rotate the image; on an image that is not square the rotation was taken in the grid's
normalised coordinates (x / (w/2), y / (h/2)), so a wide image was sheared, not rotated (a 10°
turn moved a point 20 px right of the centre of a 40×120 image down by 1.2 px, not 3.6).

Checked without reading how the transform is drawn: one transform is applied to a whole batch
(docs/visualize.md), so three images, a blob at the centre, one to its right and one below it,
show where the transform takes two perpendicular displacements of the same length. A rotation,
scale and shift keeps them perpendicular and of the same length.
"""
from __future__ import annotations

import pytest
import torch

from sketchmine.passes.featvis_params import random_transform


def _blobs(h: int, w: int, d: float) -> torch.Tensor:
    """(3, 1, h, w): a Gaussian blob (σ 1.5 px) on grey 0.5 at the centre, d px right of it, d px below it."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    out = [torch.exp(-((xs - w / 2 - dx) ** 2 + (ys - h / 2 - dy) ** 2) / (2 * 1.5 ** 2))
           for dx, dy in ((0, 0), (d, 0), (0, d))]
    return (0.5 + 0.5 * torch.stack(out)[:, None]).float()


def _centroids(x: torch.Tensor) -> torch.Tensor:
    """(N, 2) (x, y) centroid of each image's brightness over the grey."""
    h, w = x.shape[-2:]
    m = (x[:, 0].double() - 0.5).clamp_min(0)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    total = m.sum((1, 2))
    return torch.stack([(m * xs).sum((1, 2)) / total, (m * ys).sum((1, 2)) / total], 1)


@pytest.mark.parametrize("h,w", [(96, 288), (288, 96), (96, 96)])
def test_the_transform_turns_a_wide_or_tall_image_without_shearing_it(h, w):
    x = _blobs(h, w, 16)  # kept 10 σ from the border by the largest scale and shifts
    turned = 0
    for seed in range(8):
        c = _centroids(random_transform(x, torch.Generator().manual_seed(seed)))
        right, below = c[1] - c[0], c[2] - c[0]
        cos = float(right @ below / (right.norm() * below.norm()))
        assert abs(cos) < 0.01, (seed, right.tolist(), below.tolist())  # still perpendicular
        assert abs(float(right.norm() / below.norm()) - 1) < 0.02, (seed, right.tolist(), below.tolist())
        turned += abs(float(right[1])) > 1.4  # the displacement to the right turned by at least ~5°
    assert turned >= 3  # the draws did rotate: the check could fail
