"""Weights files for torchvision architectures (found by an audit over eleven of them): a switch
the state_dict does not record is asked for, not guessed, and a classifier that is a 1×1 conv
gives the class count. Real torchvision models, small inputs."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from sketchmine.errors import SketchmineError
from sketchmine.model.models import load_model


@pytest.fixture(scope="module")
def googlenet_finetuned(tmp_path_factory):
    """A GoogLeNet fine-tuned the torchvision way (started from its pretrained weights, which
    turns transform_input on; the flag is not in the state_dict), 10 classes, saved as weights."""
    torch.manual_seed(1)
    net = torchvision.models.googlenet(weights=None, num_classes=10, aux_logits=False, init_weights=True,
                                       transform_input=True).eval()
    path = tmp_path_factory.mktemp("gn") / "googlenet_sketch.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_googlenet_weights_without_transform_input_are_refused(googlenet_finetuned):
    """Mined with transform_input off, every activation differed (up to 0.5 on conv1) silently."""
    _, path = googlenet_finetuned
    with pytest.raises(SketchmineError, match=r'transform_input switch .* \{"transform_input": true\}'):
        load_model("googlenet", str(path))


@pytest.mark.parametrize("on", [True, False])
def test_googlenet_weights_with_transform_input_stated_run_as_trained(googlenet_finetuned, on):
    net, path = googlenet_finetuned
    path.with_suffix(".json").write_text(json.dumps({"transform_input": on}))
    try:
        loaded = load_model("googlenet", str(path))
    finally:
        path.with_suffix(".json").unlink()
    x = torch.rand(2, 3, 64, 64)
    net.transform_input = on
    try:
        with torch.no_grad():
            assert torch.equal(loaded.module(x), net(x))
    finally:  # the net is the module's fixture: the next test reads it as trained
        net.transform_input = True


def test_a_checkpoint_states_transform_input_in_its_dict(googlenet_finetuned, tmp_path):
    net, _ = googlenet_finetuned
    path = tmp_path / "gn.pt"
    torch.save({"arch": "googlenet", "state_dict": net.state_dict()}, path)
    with pytest.raises(SketchmineError, match=rf"weights {path} .*checkpoint's dict"):
        load_model(str(path))
    torch.save({"arch": "googlenet", "state_dict": net.state_dict(), "transform_input": True}, path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_model(str(path)).module(x), net(x))


def test_a_conv_classifier_gives_the_class_count(tmp_path):
    """SqueezeNet classifies with a 1×1 conv: its 10-class weights were refused (built for 1000)."""
    torch.manual_seed(2)
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=10).eval()
    path = tmp_path / "squeeze10.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model("squeezenet1_1", str(path))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert loaded.module(x).shape == (2, 10) and torch.equal(loaded.module(x), net(x))


def test_a_run_records_transform_input_and_every_pass_holds_to_it(googlenet_finetuned, small_test_set, tmp_path):
    """The switch is not in the weights' identity: a run records it, and a resume or a later pass
    with the switch set the other way (the JSON edited, a model object changed) is refused."""
    from sketchmine import mine
    from sketchmine.data import ArrayDataset, Preprocessing
    from sketchmine.passes.reload import run_model
    from tests.helpers import per_class_subset

    net, path = googlenet_finetuned
    side = path.with_suffix(".json")
    sub = per_class_subset(small_test_set, 2, "gn_switch")  # real sketches, given the model's preprocessing by mine
    data = ArrayDataset(sub.images, sub.labels(), sub.class_names, Preprocessing("none", 1, None), sub.describe(),
                        explicit=False)
    side.write_text(json.dumps({"transform_input": True}))
    try:
        out = tmp_path / "gn.zarr"
        run = mine("googlenet", data, weights=str(path), layers=["conv1.conv"], k=2, out=out, image_size=64)
        assert run.attrs["model_switches"] == {"transform_input": True}
        assert run_model(run).module.transform_input is True
        side.write_text(json.dumps({"transform_input": False}))
        with pytest.raises(SketchmineError, match=r"model switch transform_input \(run: True, now: False\)"):
            mine("googlenet", data, weights=str(path), layers=["conv1.conv"], k=2, out=out, image_size=64)
        with pytest.raises(SketchmineError, match=r"transform_input \(run: True, now: False\) differs"):
            run_model(run)
        net.transform_input = False
        with pytest.raises(SketchmineError, match=r"transform_input \(run: True, now: False\) differs"):
            run_model(run, net)
    finally:
        net.transform_input = True
        side.unlink(missing_ok=True)
