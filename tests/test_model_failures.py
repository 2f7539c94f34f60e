"""A model that fails inside the pass, after the probe passed it (one image, shapes computed on
the meta device), is said in one line naming the batch's images, and the run keeps its last
checkpoint (a SketchmineFailure: the CLI says it in one line and exits 1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.mining.failures import ModelFailed


@pytest.fixture(scope="module")
def sketches(small_test_set):
    x = torch.from_numpy(np.asarray(small_test_set.images[:20])).float().div(255)[:, None]
    return torch.utils.data.TensorDataset(x, torch.from_numpy(small_test_set.labels()[:20]).long())


class Double(nn.Module):
    """A float64 buffer in a float32 matmul: the meta device lets it through, a real forward not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)
        self.register_buffer("mix", torch.eye(4, dtype=torch.float64) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).amax((2, 3)) @ self.mix)


class FullBatches(nn.Module):
    """A model of its own rules: batches of 8 images only (the last, of 4, fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) != 8 and len(x) != 1:  # the probe's one image passes
            raise ValueError(f"this model takes batches of 8, got {len(x)}")
        return self.head(self.conv(x).amax((2, 3)))


def test_a_model_that_fails_computing_is_said_naming_the_batch(sketches, tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ModelFailed, match=r"the model failed on a batch of 20 image\(s\) \(#0 … #19\): RuntimeError: "
                                          r"expected m1 and m2 to have the same dtype"):
        sketchmine.mine(Double().eval(), sketches, layers=["conv"], out=tmp_path / "r.zarr", batch_size=20)


def test_a_model_that_fails_on_a_later_batch_keeps_the_checkpoint(sketches, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "r.zarr"
    with pytest.raises(ModelFailed, match=r"batch of 4 image\(s\) \(#16 … #19\): ValueError: this model takes "
                                          r"batches of 8, got 4"):
        sketchmine.mine(FullBatches().eval(), sketches, layers=["conv"], out=out, batch_size=8, flush_every=1)
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done == 16
