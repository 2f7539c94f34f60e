"""ONNX layer names when the exporter folded BatchNorms into convs (the embedded demo-resnet):
a torch module name never reads another computation. The folded conv's name is refused with
the reason; what the graph does compute (the BatchNorm's output) is mined under a name that
says so and equals torch's BatchNorm output; export options that keep the BatchNorm give
exact names again."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, animal_shape
from sketchmine.errors import SketchmineError
from sketchmine.model.onnx_backend import OnnxModel
from tests.test_miner import assert_same_topk
from tests.test_onnx import export, subset

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TORCH_LAYERS = ["conv1", "bn1", "layer1.0", "layer2.0.downsample.0", "layer2.0.downsample.1", "layer2.0.downsample",
                "fc"]


def export_with(model: nn.Module, path, **kwargs):
    """`model` exported with the given torch.onnx.export options (dynamic batch)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(path), input_names=["input"],
                          output_names=["logits"], **kwargs)
    return path


@pytest.fixture(scope="module")
def resnet():
    return sketchmine.load_model("demo-resnet").module


@pytest.fixture(scope="module")
def images():
    """120 real test images, preprocessed as demo-resnet was trained."""
    return subset(animal_shape("test", sketchmine.preprocessing_for("demo-resnet")), 120)


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, resnet, images):
    return sketchmine.mine(resnet, images, layers=TORCH_LAYERS, k=5, out=tmp_path_factory.mktemp("t") / "r.zarr",
                           batch_size=60)


def conv_modules(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_torchscript_folded_conv_is_refused_and_its_node_is_the_batchnorm(tmp_path, resnet, images, torch_run):
    """dynamo=False folds bn1 into conv1's node "/conv1/Conv": `conv1` must not read it."""
    path = export(resnet, tmp_path / "ts.onnx")
    model = OnnxModel(path)
    assert conv_modules(resnet) <= set(model.names.refused)  # every conv of the resnet is followed by a BatchNorm
    with pytest.raises(SketchmineError, match=r"the output of 'conv1' does not exist in ts\.onnx: the exporter folded the "
                       r"BatchNorm that follows 'conv1'.*'onnx::Conv_\d+'.*layer '\|conv1\|Conv'.*"
                       r"do_constant_folding=False.*TrainingMode\.PRESERVE"):
        sketchmine.mine(str(path), images, layers=["conv1"], out=tmp_path / "a.zarr")
    # an enclosing module ending in a folded conv: whether the BatchNorm was inside is not recorded
    with pytest.raises(SketchmineError, match=r"'layer2\.0\.downsample' cannot be tapped in ts\.onnx: it ends in node "
                       r"/layer2/layer2\.0/downsample/downsample\.0/Conv"):
        sketchmine.mine(str(path), images, layers=["layer2.0.downsample"], out=tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()

    run = sketchmine.mine(str(path), images, layers=None, k=5, out=tmp_path / "o.zarr", batch_size=60)
    assert not set(run.layers) & conv_modules(resnet)  # no conv named by a module whose output it is not
    assert run.layers[0] == "|conv1|Conv" and len(run.layers) == len(conv_modules(resnet)) + 2  # + fc, softmax
    assert_same_topk(run.topk("|conv1|Conv"), torch_run.topk("bn1"), "bn1", rtol=1e-4)
    assert_same_topk(run.topk("|layer2|layer2.0|downsample|downsample.0|Conv"),
                     torch_run.topk("layer2.0.downsample.1"), "downsample.1", rtol=1e-4)
    assert_same_topk(run.topk("fc"), torch_run.topk("fc"), "fc", rtol=1e-4)
    block = sketchmine.mine(str(path), images, layers=["layer1.0"], k=5, out=tmp_path / "b.zarr", batch_size=60)
    assert_same_topk(block.topk("layer1.0"), torch_run.topk("layer1.0"), "layer1.0", rtol=1e-4)  # ends in a ReLU


@pytest.mark.parametrize("option", [{"do_constant_folding": False}, {"training": torch.onnx.TrainingMode.PRESERVE}])
def test_torchscript_export_that_keeps_batchnorm_names_every_module(tmp_path, resnet, images, torch_run, option):
    path = export_with(resnet, tmp_path / "keep.onnx", dynamo=False, dynamic_axes={"input": {0: "N"}}, **option)
    model = OnnxModel(path)
    assert model.names.refused == {}
    assert model.kind("conv1") == "conv" and model.kind("bn1") == "batchnormalization"
    layers = ["conv1", "bn1", "layer2.0.downsample.0", "layer2.0.downsample"]
    run = sketchmine.mine(str(path), images, layers=layers, k=5, out=tmp_path / "o.zarr", batch_size=60)
    for name in layers:
        assert_same_topk(run.topk(name), torch_run.topk(name), name, rtol=1e-4)


def test_dynamo_export_names_the_folded_conv_after_its_batchnorm(tmp_path, resnet, images, torch_run):
    """dynamo=True scopes the fused node to bn1 and keeps "conv1.weight": bn1 reads it, conv1 is refused."""
    pytest.importorskip("onnxscript")
    path = export_with(resnet, tmp_path / "dyn.onnx", dynamo=True,
                       dynamic_shapes={"x": {0: torch.export.Dim("N")}})
    with pytest.raises(SketchmineError, match=r"the output of 'conv1' does not exist in dyn\.onnx: its weights 'conv1\.weight' "
                       r"feed node .*attributes to 'bn1' \(it folded 'bn1' into the Conv of 'conv1'.*Tap 'bn1'.*"
                       r"optimize=False"):
        sketchmine.mine(str(path), images, layers=["conv1"], out=tmp_path / "a.zarr")
    run = sketchmine.mine(str(path), images, layers=None, k=5, out=tmp_path / "o.zarr", batch_size=60)
    assert not set(run.layers) & conv_modules(resnet)
    assert run.layers[0] == "bn1" and "layer2.0.downsample.1" in run.layers
    for name in ("bn1", "layer2.0.downsample.1", "fc"):
        assert_same_topk(run.topk(name), torch_run.topk(name), name, rtol=1e-4)
    unfused = OnnxModel(export_with(resnet, tmp_path / "dyn_keep.onnx", dynamo=True, optimize=False))
    assert unfused.names.refused == {} and unfused.kind("conv1") == "conv"


def test_negative_batchnorm_scale_changes_top_images_and_the_conv_name_is_refused(tmp_path, images):
    """With a negative BatchNorm scale the folded node's top images are not the conv's: the
    name `0` (the conv) is refused; the node `|0|Conv` gives the BatchNorm's top images."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 10)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([-1.0, 2.0, -0.5, 1.0]))
        net[1].running_mean.uniform_(-1, 1)
    path = export(net, tmp_path / "neg.onnx")
    ds = ArrayDataset(images.images[:60], images.labels()[:60], images.class_names, images.preprocessing,
                      {**images.describe(), "subset": "0:60"})
    ref = sketchmine.mine(net, ds, layers=["0", "1"], k=3, out=tmp_path / "t.zarr", batch_size=20)
    assert (ref.topk("0")[1][[0, 2]] != ref.topk("1")[1][[0, 2]]).any()  # the sign flips the ranking
    with pytest.raises(SketchmineError, match=r"the output of '0' does not exist in neg\.onnx"):
        sketchmine.mine(str(path), ds, layers=["0"], out=tmp_path / "a.zarr")
    run = sketchmine.mine(str(path), ds, k=3, out=tmp_path / "o.zarr", batch_size=20)
    assert run.layers == ["|0|Conv", "5", "softmax"]
    np.testing.assert_array_equal(run.topk("|0|Conv")[1], ref.topk("1")[1])
    np.testing.assert_allclose(run.topk("|0|Conv")[0], ref.topk("1")[0], rtol=1e-4, atol=1e-5)
