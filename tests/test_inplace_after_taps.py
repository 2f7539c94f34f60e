"""A forward that changes a tensor in place after sketchmine read it changes none of the run.

The statistics of a layer are the tapped module's output as it returned (docs/mining.md), and
the ink density is the input's as the dataset gave it. Both tensors outlive the moment they are
read: a softmax module's values are held for the class statistics and the distributions until the
batch ends, the input batch until after the forward. A model that then scales them in place
(`p.mul_(10)`, `x.mul_(0.3)`) must mine exactly as its twin that makes new tensors instead.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sketchmine
from tests.helpers import assert_same_store


@pytest.fixture(scope="module")
def images() -> TensorDataset:
    """96 real test images, pixels in [0, 1], with their labels (every class)."""
    raw = sketchmine.data.animal_shape("test")
    x = torch.from_numpy(raw.images[::20][:96]).float().div(255)[:, None].contiguous()
    return TensorDataset(x, torch.as_tensor(np.asarray(raw.labels())[::20][:96], dtype=torch.long))


class Scaling(nn.Module):
    """A small classifier with its own softmax module that scales its input and its softmax's
    output after use: in place (the tensors sketchmine read), or as new tensors (its twin)."""

    def __init__(self, in_place: bool, where: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.in_place, self.where = in_place, where
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(16, 10))
        self.sm = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.where == "input":
            x = x.mul_(0.3) if self.in_place else x * 0.3
        p = self.sm(self.body(x))
        if self.where == "softmax":
            p = p.mul_(10.0) if self.in_place else p * 10.0
        return p


def _mine(net: nn.Module, ds: TensorDataset, out, **kw):
    return sketchmine.mine(net.eval(), ds, layers=["body.0", "sm"], k=5, out=out, batch_size=32, **kw)


def test_a_softmax_modules_statistics_are_its_output_as_it_returned(images, tmp_path):
    net = Scaling(True, "softmax")
    seen: list[torch.Tensor] = []
    hook = net.sm.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.inference_mode():
        for batch in images.tensors[0].clone().split(32):  # the batches mine runs
            net.eval()(batch)
    hook.remove()
    p = torch.cat(seen).double().numpy()  # the module's output as it returned
    run = _mine(net, images, tmp_path / "in_place.zarr", distributions=True)
    np.testing.assert_allclose(run.layer_array("sm", "max_mean"), p.mean(0), rtol=1e-12)
    np.testing.assert_array_equal(run.layer_array("sm", "max_range"),
                                  np.stack([p.min(0), p.max(0)], 1).astype(np.float32))
    labels = images.tensors[1].numpy()
    class_mean, _ = run.class_stats("sm")
    np.testing.assert_allclose(class_mean[:, 0], p[labels == 0].mean(0), rtol=1e-12)
    # every array, the histograms, sketches, examples and bottom-k included, as the twin's
    assert_same_store(run.path, _mine(Scaling(False, "softmax"), images, tmp_path / "twin.zarr",
                                      distributions=True).path)


def test_ink_density_is_the_datasets_when_the_model_scales_its_input_in_place(images, tmp_path):
    run = _mine(Scaling(True, "input"), images, tmp_path / "in_place.zarr")
    ink = run.dataset_array("class_ink_density")
    assert np.isfinite(ink).all() and (ink > 0.1).all(), ink  # white shapes on black: measured, not 0
    assert_same_store(run.path, _mine(Scaling(False, "input"), images, tmp_path / "twin.zarr").path)
