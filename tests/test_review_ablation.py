"""Review of the ablation checks (ablation_checks.py): what importance and effects say of a model
whose logits are NaN on some images of the first chunk."""
from __future__ import annotations

import pytest
import torch

import sketchmine
from tests.test_effects_audit import InfLogits, drawings  # noqa: F401  (drawings: a fixture)


class NaNLogits(InfLogits):
    """Logit 0 is NaN on the images with the most ink (0/0 of a normalisation, say)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.relu(self.conv(x).amax((2, 3))))
        many = (x.mean((1, 2, 3)) > 0.3)[:, None] & (torch.arange(10) == 0)[None]
        return torch.where(many, float("nan"), out)


def test_nan_logits_in_the_first_chunk_are_refused_naming_the_image(tmp_path, drawings):  # noqa: F811
    """The batch-independence check ran before the finite check and took max(|logits|) as its
    scale: NaN there, so torch.allclose failed with 'atol must be greater than or equal to zero,
    but got -nan' (a RuntimeError, no image named). The finite check's refusal comes now."""
    from sketchmine.errors import SketchmineError

    torch.manual_seed(1)
    model = NaNLogits(True).eval()
    with torch.no_grad():
        clean = model(torch.stack([drawings[i][1] for i in range(15)]))
    assert clean.isnan().any() and clean.isfinite().any()  # NaN in the first chunk of 15, beside finite rows
    run = sketchmine.mine(model, drawings, layers=["conv"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
        with pytest.raises(SketchmineError, match=r"the model's logits are NaN or infinite on image .* \(index \d+;"):
            ablate(run, "conv", model=model, data=drawings, batch_size=15)
    run = sketchmine.open_run(run.path)
    assert not run.has_unit_effects("conv") and not run.has_importance("conv")


def test_a_refusal_mid_pass_gives_back_the_models_mode_and_autograd(tmp_path, drawings):  # noqa: F811
    """The ablation loop is one generator for importance and effects (ablation.ablated_batches): a
    refusal raised in the caller's step (a zeroed unit's logits infinite) must close it at once, so
    the train-mode model is in train mode again and inference mode is off, not only once the
    traceback is dropped."""
    from sketchmine.errors import SketchmineError

    from tests.test_effects_audit import InfLogits

    torch.manual_seed(0)
    model = InfLogits(False).train()
    run = sketchmine.mine(model, drawings, layers=["conv"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
        with pytest.raises(SketchmineError, match="zeroing unit 0 of layer 'conv' makes the model's logits") as said:
            ablate(run, "conv", model=model, data=drawings, batch_size=15)
        assert model.training and not torch.is_inference_mode_enabled(), ablate.__name__
        assert torch.is_grad_enabled()
        del said
