"""Size edges of the batched preprocessing (`preprocess="device"`): a batch of large stored
images is made model input a few images at a time, so memory above the batch stays bounded
while the floats stay those of the per-image rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sketchmine.data import animal_shape, preset
from sketchmine.data.batchprep import PREPARE_BYTES, prepare_uint8
from sketchmine.mining.memory import process_status


def _large_photos(n: int, side: int) -> torch.Tensor:
    """n real drawings as colour photos of side x side px (three different images as the
    three channels), uint8 (n, side, side, 3)."""
    raw = animal_shape("test")
    small = np.stack([np.stack([raw.images[(i * 97 + j * 31) % 2000] for j in range(3)], -1) for i in range(n)])
    x = torch.from_numpy(small).permute(0, 3, 1, 2).float()
    big = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: VmHWM back to the current resident size
    except OSError:
        return False
    return "VmHWM" in process_status()


@pytest.mark.parametrize("channels", [3, 1])
def test_a_batch_of_large_images_is_prepared_in_bounded_memory(channels):
    x = _large_photos(12, 1600)  # 7.7 MB each as stored, 31 MB each as floats
    pre = preset("imagenet", channels, (64, 48))
    if not _reset_peak():
        pytest.skip("needs Linux's /proc/self/clear_refs and VmHWM to measure a peak")
    before = process_status()["VmHWM"]
    out = prepare_uint8(x, pre)
    above = process_status()["VmHWM"] - before
    # the whole batch as floats (370 MB) with the resize's and grey conversion's copies took
    # 363 (colour) and 821 MiB (grey) at once; chunks of PREPARE_BYTES 65 and 157 MiB
    assert above < 4 * PREPARE_BYTES, f"{above / 2**20:.0f} MiB above the batch"
    # the per-image rule, image by image: the same floats
    want = torch.cat([pre.prepare(x[i:i + 1].permute(0, 3, 1, 2).float() / 255) for i in range(len(x))])
    assert out.shape == (12, channels, 64, 48) and out.is_contiguous()
    assert out.abs().amax() > 0.5 and torch.equal(out, want)
