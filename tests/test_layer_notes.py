"""What `mine` says about the value a mined layer is read at (model/followers.py,
mining/checks.py): a conv read before a BatchNorm that reverses some of its units, and units
that never rise above 0 before their ReLU. Notes, never refusals; a model torch.fx cannot
trace is mined without them."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import sketchmine
from sketchmine.model.followers import Followers, Reversed, followers
from sketchmine.model.models import load_model
from sketchmine.model.taps import default_layers
from sketchmine.progress import Silent


class Notes(Silent):
    def __init__(self) -> None:
        self.said: list[str] = []

    def note(self, message: str) -> None:
        self.said.append(message)


def _reversed_copy(model: nn.Module, unit: int = 3) -> nn.Module:
    """The audit's construction: the same function as `model`, with unit `unit` of
    layer1.0.conv1 negated and undone by its BatchNorm (gamma and running mean negated)."""
    flip = copy.deepcopy(model)
    with torch.no_grad():
        flip.layer1[0].conv1.weight[unit] *= -1
        flip.layer1[0].bn1.weight[unit] *= -1
        flip.layer1[0].bn1.running_mean[unit] *= -1
    return flip


def test_a_conv_read_before_a_reversing_batchnorm_is_named_once(tmp_path, small_test_set):
    trained = load_model("demo-resnet").module.eval()
    flip = _reversed_copy(trained).eval()
    x = torch.stack([small_test_set[i][1] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(flip(x), trained(x), rtol=1e-4, atol=1e-4)  # the network passes on the same
    notes = Notes()
    sketchmine.mine(flip, small_test_set, layers=["layer1.0.conv1", "layer1.0.bn1"], out=tmp_path / "flip.zarr",
                    batch_size=100, progress=notes)
    said = [n for n in notes.said if "BatchNorm" in n]
    assert len(said) == 1, notes.said
    assert "layer1.0.conv1: 1 of 16 units (mine layer1.0.bn1 instead)" in said[0]
    assert "layer1.0.bn1:" not in said[0]  # the BatchNorm's own output is what the network passes on

    quiet = Notes()  # as trained, every default layer: no BatchNorm reverses a unit
    sketchmine.mine(trained, small_test_set, out=tmp_path / "trained.zarr", batch_size=100, progress=quiet)
    assert not [n for n in quiet.said if "BatchNorm" in n], quiet.said


@pytest.mark.parametrize("arch, norm, layer", [
    ("resnet18", "layer2.0.bn1", "layer2.0.conv1"),
    ("resnet50", "layer3.0.downsample.1", "layer3.0.downsample.0"),
    ("mobilenet_v2", "features.1.conv.0.1", "features.1.conv.0.0"),
])
def test_torchvision_layers_before_a_negative_batchnorm_are_found(arch, norm, layer):
    model = torchvision.models.get_model(arch, weights=None)
    layers = default_layers(model)
    assert followers(model, layers).reversed == ()  # initialised with gamma 1
    bn = model.get_submodule(norm)
    with torch.no_grad():
        bn.weight[:5] *= -1
    assert followers(model, layers).reversed == (Reversed(layer, 5, bn.num_features, norm),)


def test_layers_passed_on_through_a_relu_are_told_apart_by_the_graph():
    model = torchvision.models.alexnet(weights=None)
    found = followers(model, default_layers(model))
    assert found.rectified == {"features.0", "features.3", "features.6", "features.8", "features.10",
                               "classifier.1", "classifier.4"}  # not the logits (classifier.6) nor the softmax
    resnet = torchvision.models.resnet18(weights=None)
    assert followers(resnet, default_layers(resnet) + ["bn1", "layer1.0.bn1", "layer1.0.bn2"]).rectified == {"bn1", "layer1.0.bn1"}


def test_units_never_above_zero_before_their_relu_are_counted_once(tmp_path, small_test_set):
    model = copy.deepcopy(load_model("demo").module)
    with torch.no_grad():
        model.classifier[6].bias[0] -= 1000  # logit 0 below 0 on every image: not before a ReLU, so not counted
    notes = Notes()
    layers = ["features.0", "features.6", "classifier.1", "classifier.6"]
    run = sketchmine.mine(model, small_test_set, layers=layers, out=tmp_path / "run.zarr", batch_size=100,
                          progress=notes)
    dead = {name: int((run.topk(name)[0][:, 0] <= 0).sum()) for name in layers}
    assert dead["features.0"] == 0 and dead["features.6"] > 0 and dead["classifier.1"] > 0 and dead["classifier.6"] == 1
    said = [n for n in notes.said if "never rose above 0" in n]
    assert len(said) == 1, notes.said
    assert said[0].startswith(f"features.6: {dead['features.6']} of 96 units, classifier.1: {dead['classifier.1']} "
                              "of 256 units never rose above 0 on any image (read before the ReLU")


class _Branchy(nn.Module):
    """A conv before a reversing BatchNorm, behind a branch on the data: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)
        with torch.no_grad():
            self.bn.weight[0] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        if x.mean() > 1e6:
            x = x / 2
        return self.head(x.mean((2, 3)))


def test_a_model_that_cannot_be_traced_is_mined_without_the_notes(tmp_path, small_test_set):
    model = _Branchy()
    assert followers(model, ["conv", "bn"]) == Followers()
    notes = Notes()
    run = sketchmine.mine(model, small_test_set, layers=["conv"], out=tmp_path / "run.zarr", batch_size=100,
                          progress=notes)
    assert run.complete
    assert not [n for n in notes.said if "BatchNorm" in n or "never rose" in n], notes.said


def test_mine_traces_the_model_once_for_fields_and_notes(tmp_path, small_test_set, monkeypatch):
    """Receptive fields and the layer notes read one torch.fx graph per `mine` call; a later
    call traces afresh (the caller may have changed the model in between)."""
    from sketchmine.model import graph

    calls: list[str] = []
    real = graph.fx.Tracer.trace
    monkeypatch.setattr(graph.fx.Tracer, "trace",
                        lambda self, m, *a, **kw: calls.append(type(m).__name__) or real(self, m, *a, **kw))
    model = load_model("demo").module
    run = sketchmine.mine(model, small_test_set, out=tmp_path / "a.zarr", batch_size=100)
    assert run.complete and run.layer_attrs("features.0")["receptive_field"]["size"] == [5, 5] and len(calls) == 1, calls
    sketchmine.mine(model, small_test_set, out=tmp_path / "b.zarr", batch_size=100)
    assert len(calls) == 2, calls
    with pytest.raises(sketchmine.SketchmineError, match="cannot trace _Branchy"):
        sketchmine.receptive_fields(_Branchy(), (1, 32, 32))
