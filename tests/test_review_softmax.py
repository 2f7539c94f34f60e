"""Review of model/output_softmax.py: a model's output that is a copy or a reshape of its final
softmax's result is probabilities still, for mining as for the probe (one check, softmax_logits)."""
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
    from sketchmine.model.output_softmax import softmax_logits

    net = EndedNet(demo_model.module, ending).eval()
    with torch.no_grad():  # the probe's check: its output flattened, as the probe shows it
        assert softmax_logits(lambda: net(small_test_set[0][1][None]).flatten(1))[1] is not None
    module = mine(ModuleNet(demo_model.module, "softmax").eval(), small_test_set, ["prob"], out=tmp_path / "m.zarr",
                  k=5, batch_size=100)
    got = mine(net, small_test_set, ["softmax"], out=tmp_path / "f.zarr", k=5, batch_size=100)
    want = module.topk("prob")
    assert float(want[0][:, 0].min()) > 0.99
    for a, b in zip(got.topk("softmax"), want):
        np.testing.assert_array_equal(a, b)


SOFTMAX_OVER = {  # (the output, flattened as the probe takes it; whether it is the softmax of the units)
    "units of (N, C, 1)": (lambda z: F.softmax(z[:, :, None], dim=1), True),
    "units of (N, 1, C)": (lambda z: F.softmax(z[:, None], dim=2), True),
    "the batch": (lambda z: F.softmax(z, dim=0), False),
    "rows of (N, 2, C/2)": (lambda z: F.softmax(z.view(len(z), 2, -1), dim=2), False),
}


@pytest.mark.parametrize("over", sorted(SOFTMAX_OVER))
def test_the_probe_takes_an_output_as_probabilities_only_when_a_softmax_ran_over_its_units(over):
    """The probe's own autograd check took any softmax as the last op for probabilities, over
    the batch too, and showed such an output as it is; one rule now decides for mining, the
    pictures and the probe: a softmax over the units, the output's other dims 1."""
    from sketchmine.model.output_softmax import softmax_logits

    z = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)) * 4
    ending, units = SOFTMAX_OVER[over]
    out, fed = softmax_logits(lambda: ending(z).flatten(1))
    assert (fed is not None) == units
    if units:
        torch.testing.assert_close(fed, z, rtol=0, atol=0)
        torch.testing.assert_close(torch.softmax(fed, 1), out)
