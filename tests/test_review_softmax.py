"""Review of model/output_softmax.py: a model's output that is a copy or a reshape of its final
softmax's result is probabilities still, as the probe's autograd check (probe_onnx.ends_in_softmax)
already takes it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_functional_audit import FunctionalNet, ModuleNet

ENDINGS = {
    "clone": lambda z: F.softmax(z, dim=1).clone(),
    "squeezed": lambda z: F.softmax(z[:, None], dim=-1).squeeze(1),  # a softmax over the last dim of (N, 1, C)
}


class EndedNet(FunctionalNet):
    """The functional twin whose output is its softmax's result copied, or that softmax taken over
    the last dim of (N, 1, C) and squeezed: the same probabilities as the module twin's."""

    def __init__(self, demo: torch.nn.Module, ending: str) -> None:
        super().__init__(demo)
        self.ending = ending

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ENDINGS[self.ending](super().forward(x))


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_copied_or_reshaped_softmax_output_is_not_taken_twice(demo_model, small_test_set, tmp_path, ending):
    """Such a model's virtual softmax was the softmax of its probabilities (top-1 values 0.23, the
    surest images' 1.0 in its nn.Softmax twin's 'prob'), while the probe of the same model showed
    its output as it is. Its top-k now equal the module twin's."""
    from sketchmine import mine
    from sketchmine.passes.probe_onnx import ends_in_softmax

    net = EndedNet(demo_model.module, ending).eval()
    assert ends_in_softmax(net, small_test_set[0][1][None])  # the probe takes it as probabilities
    module = mine(ModuleNet(demo_model.module, "softmax").eval(), small_test_set, ["prob"], out=tmp_path / "m.zarr",
                  k=5, batch_size=100)
    got = mine(net, small_test_set, ["softmax"], out=tmp_path / "f.zarr", k=5, batch_size=100)
    want = module.topk("prob")
    assert float(want[0][:, 0].min()) > 0.99
    for a, b in zip(got.topk("softmax"), want):
        np.testing.assert_array_equal(a, b)
