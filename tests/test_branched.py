"""Branched models (ResNet, GoogLeNet) mined end to end, block outputs included, nothing per model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import sketchmine
from sketchmine.data import ArrayDataset
from tests.helpers import topk_equals_hooks


@pytest.mark.parametrize("arch,layers", [
    ("resnet18", ["conv1", "layer1.0", "layer1.0.conv2", "layer2.1", "layer3", "layer4.1", "fc"]),
    ("googlenet", ["conv1.conv", "inception3a", "inception3a.branch2.1.conv", "inception4e", "inception5b", "fc"]),
    ("resnet50", ["layer1.0", "layer2.3", "layer3.5.conv3", "layer4.2", "fc"]),
])
def test_block_outputs_equal_brute_force(tmp_path, rgb_sketches, arch, layers):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10,
                                         **({"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}))
    model.eval()
    run = sketchmine.mine(model, rgb_sketches, layers=layers, k=4, out=tmp_path / "r.zarr", batch_size=5)
    assert run.complete and run.layers == layers
    topk_equals_hooks(run, model, rgb_sketches, layers)
    rf = run.store.group[f"layers/{layers[1]}"].attrs["receptive_field"]
    assert rf is not None and rf["size"][0] > 1  # block outputs get a receptive field from the graph


def test_resnet18_default_layers_are_every_conv_and_fc(tmp_path, rgb_sketches):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    run = sketchmine.mine(model, rgb_sketches, k=2, out=tmp_path / "r.zarr", batch_size=6)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert run.layers == convs + ["fc", "softmax"]
    topk_equals_hooks(run, model, rgb_sketches, ["layer4.1.conv2", "layer2.0.downsample.0"])


def test_demo_resnet_block_outputs(tmp_path, demo_test_set):
    """The embedded trained SketchResNet: loadable by spec, block outputs mined = brute force."""
    loaded = sketchmine.load_model("demo-resnet")
    from sketchmine.model.models import preprocessing_for

    base = sketchmine.data.animal_shape("test", preprocessing_for(loaded))
    keep = np.arange(0, 2000, 20)
    ds = ArrayDataset(base.images[keep], base.labels()[keep], base.class_names, base.preprocessing,
                      {**base.describe(), "subset": "every 20th"})
    layers = ["layer1.0", "layer2.1", "layer3.1", "fc"]
    run = sketchmine.mine("demo-resnet", ds, layers=layers, out=tmp_path / "r.zarr", batch_size=32)
    topk_equals_hooks(run, loaded.module, ds, layers)
    assert run.accuracy() > 0.8
    assert run.attrs["model"] == "demo:sketchresnet_animal"
