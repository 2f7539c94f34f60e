"""Review of logits=False at a size only the head cannot take: the layers before it are mined as
at any size the head takes."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops.misc import Permute

import sketchmine
from sketchmine.data import ArrayDataset


def test_without_logits_a_channels_last_layer_before_a_head_that_cannot_take_the_size_keeps_its_units(
        tmp_path, small_test_set):
    """The probe placed a module's units with the whole model's field analysis, which fails at the
    head: a channels-last LayerNorm (N, H, W, C) before a Flatten into a fixed Linear was read along
    H at 32 px (units 30 x 30 x 8, a note blaming the head) where at 28 px its 8 channels were the
    units. The probe now places them with the analysis of the part mining runs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), Permute([0, 2, 3, 1]), nn.LayerNorm(8), Permute([0, 3, 1, 2]),
                        nn.Flatten(), nn.Linear(8 * 26 * 26, 10)).eval()
    wider = np.pad(small_test_set.images[:20], ((0, 0), (2, 2), (2, 2)), mode="edge")  # 32 px: the head refuses
    ds = ArrayDataset(wider, small_test_set.labels()[:20], small_test_set.class_names,
                      preprocessing=small_test_set.preprocessing)
    run = sketchmine.mine(net, ds, layers=["2"], logits=False, out=tmp_path / "r.zarr", k=3, batch_size=8)
    assert run.store.group["layers"]["2"].attrs["shape"] == [8, 30, 30]
    with torch.no_grad():
        maps = net[:3](torch.stack([ds[i][1] for i in range(len(ds))]))  # (N, H, W, C)
    per_image = maps.amax(dim=(1, 2))
    values, _, _ = run.topk("2")
    np.testing.assert_allclose(values, per_image.sort(dim=0, descending=True).values[:3].T.numpy(), rtol=1e-6)
