"""Receptive fields of ONNX graphs (model/onnx_fields.py): equal to the torch analysis' for the same
model exported, held to the pixels that reach each unit where the graph pads by auto_pad, absent
after an op the analysis cannot follow, and recorded by `mine` in the run's layer attributes (after a
Resize too; decoders: test_onnx_resample_fields.py)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import sketchmine
from sketchmine.model.field_record import field_record
from sketchmine.model.onnx_backend import OnnxModel
from sketchmine.model.onnx_fields import GraphFields, fields_at
from tests.helpers import fields_hold
from tests.test_layer_notes import Notes
from tests.test_onnx import subset

pytest.importorskip("onnxruntime")


def export(model: nn.Module, path, shape: tuple[int, ...], dynamo: bool = False):
    """`model` as ONNX at one input of `shape` (C, H, W), its batch free."""
    kwargs = ({"dynamic_shapes": {"x": {0: torch.export.Dim("N")}}} if dynamo
              else {"dynamic_axes": {"input": {0: "N"}, "logits": {0: "N"}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(2, *shape),), str(path), dynamo=dynamo, input_names=["input"],
                          output_names=["logits"], **kwargs)
    return path


def fields_of(path, shape: tuple[int, ...]) -> tuple[OnnxModel, GraphFields]:
    model = OnnxModel(path)
    return model, fields_at(model.proto, model.input.name, (1, *shape))


def _demo(demo_model):
    return demo_model.module


def _densenet(_):
    return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16)


def _convnext(_):
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)], num_classes=10)


def _googlenet(_):
    return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)


class Padded(nn.Module):
    """An asymmetric constant pad and a crop, a dilated strided conv, pools with ceil_mode and dilation, an
    LpPool, two branches joined on the channels, a mean over H and W and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.pad, self.conv1 = nn.ZeroPad2d((1, 2, 0, 3)), nn.Conv2d(1, 8, 3, stride=2, dilation=2)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True)
        self.wide, self.narrow = nn.Conv2d(8, 4, 5, padding=2), nn.Conv2d(8, 4, 1)
        self.pool2, self.lp = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), nn.LPPool2d(2, 2, stride=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.conv1(self.pad(x))))
        x = self.lp(self.pool2(torch.cat([self.wide(x), self.narrow(x)], 1)))
        return self.head(nn.functional.pad(x, (-1, 0, 0, -1)).mean((2, 3)))


# (model, channels, sizes, dynamo, layers that must be among those compared: deep ones and whole-image ones)
CASES = {
    "demo": (_demo, 1, (28, 27), False, {"features.0", "features", "classifier.1"}),
    "demo-dynamo": (_demo, 1, (28, 27), True, {"features.0", "classifier.1"}),
    "padded": (lambda _: Padded(), 1, (28, 27), False, {"pad", "conv1", "pool1", "wide", "narrow", "pool2", "lp", "head"}),
    "resnet18": (lambda _: torchvision.models.resnet18(), 3, (64, 65), False, {"layer1.0", "layer4.1", "avgpool", "fc"}),
    "mobilenet_v3_small": (lambda _: torchvision.models.mobilenet_v3_small(), 3, (64, 65), False,
                           {"features.9.block.1.2", "features.9.block.2", "features.12", "classifier.3"}),
    "densenet": (_densenet, 3, (64, 65), False, {"features.denseblock1", "features.denseblock2", "classifier"}),
    "convnext": (_convnext, 3, (64, 65), False, {"features.1.0.block.3", "features.1.0", "features.3.1", "classifier.2"}),
    # at 33 px GoogLeNet's last grid is 1×1: its global pool is the identity, as the torch analysis takes it
    "googlenet": (_googlenet, 3, (96, 33), False, {"maxpool1", "inception3a", "inception5b", "fc"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fields_equal_the_torch_analysis_of_the_exported_model(tmp_path, demo_model, case):
    """Every layer the graph and the torch model both name has the torch analysis' field, at an even and
    an odd size: residual adds (ResNet, its BatchNorms folded), squeeze-excitation gates and hardswish
    (MobileNet-v3), channel concatenations (DenseNet, GoogLeNet's branches), ceil_mode pools (GoogLeNet),
    Linear layers on (N, H, W, C) between Transposes (ConvNeXt's blocks: a MatMul by a weight)."""
    make, c, sizes, dynamo, deep = CASES[case]
    assert {n % 2 for n in sizes} == {0, 1}
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = make(demo_model).eval()
    for size in sizes:
        shape = (c, size, size)
        onnx_model, found = fields_of(export(model, tmp_path / f"{size}.onnx", shape, dynamo), shape)
        expected = sketchmine.receptive_fields(model, shape)
        named = {name: t for name in expected if (t := onnx_model.tensor(name)) is not None}
        assert deep <= set(named), deep - set(named)
        for name, t in named.items():
            assert found.fields.get(t) == expected[name], (size, name, found.missing.get(t))
        assert any(expected[n].stride == (0, 0) for n in named) and any(expected[n].size[0] > 20 for n in named)


def _same_padded() -> tuple[nn.Module, list[tuple[str, str]]]:
    """A torch model that pads as the auto_pad graph below does at 28 px, with explicit zero pads
    (left, right, top, bottom), and its layers' names, each with its tensor of that graph."""
    torch.manual_seed(1)
    model = nn.Sequential()
    model.add_module("pad1", nn.ZeroPad2d((0, 1, 0, 1)))  # SAME_UPPER, k3 s2 on 28: 1 in all, after
    model.add_module("conv1", nn.Conv2d(1, 4, 3, stride=2))
    model.add_module("relu1", nn.ReLU())
    model.add_module("pad2", nn.ZeroPad2d((2, 1, 2, 1)))  # SAME_LOWER, k4 on 14: 3 in all, 2 before
    model.add_module("conv2", nn.Conv2d(4, 4, 4))
    model.add_module("pad3", nn.ZeroPad2d((0, 1, 0, 1)))  # SAME_UPPER, k3 s2 on 14: 1 in all, after
    model.add_module("pool", nn.AvgPool2d(3, 2))
    model.add_module("pad4", nn.ZeroPad2d((0, 1, 0, 1)))  # SAME_UPPER, k2 on 7: 1 in all, after
    model.add_module("conv3", nn.Conv2d(4, 4, 2))
    return model.eval(), [("conv1", "c1"), ("relu1", "r1"), ("conv2", "c2"), ("pool", "p"), ("conv3", "c3")]


def _auto_pad_graph(model: nn.Module, path) -> None:
    """The same computation as one ONNX graph whose convs and pool pad by auto_pad, written by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(p.detach().numpy(), f"{name}.{kind}")
               for name, m in model.named_children() if isinstance(m, nn.Conv2d) for kind, p in m.named_parameters()]
    nodes = [helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], strides=[2, 2], auto_pad="SAME_UPPER"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], auto_pad="SAME_LOWER"),
             helper.make_node("AveragePool", ["c2"], ["p"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER",
                              count_include_pad=1),
             helper.make_node("Conv", ["p", "conv3.weight", "conv3.bias"], ["c3"], auto_pad="SAME_UPPER")]
    graph = helper.make_graph(nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("c3", TensorProto.FLOAT, None)], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_auto_pad_fields_hold_the_pixels_that_reach_each_unit(tmp_path, small_test_set):
    """SAME_UPPER pads the smaller half before the grid, SAME_LOWER the larger, and the kernel comes from
    the weight where kernel_shape is absent: each unit's box holds every pixel its gradient reaches, in
    the torch model that pads explicitly (the same function: ONNX Runtime's output equals it)."""
    import onnxruntime as ort

    model, layers = _same_padded()
    _auto_pad_graph(model, tmp_path / "same.onnx")
    images = torch.from_numpy(small_test_set.images[[0, 7, 130]]).float()[:, None] / 255
    assert images.shape[1:] == (1, 28, 28) and images.std() > 0
    got = ort.InferenceSession(str(tmp_path / "same.onnx"), providers=["CPUExecutionProvider"]).run(
        ["c3"], {"x": images.numpy()})[0]
    np.testing.assert_allclose(got, model(images).detach().numpy(), rtol=1e-4, atol=1e-5)
    _, found = fields_of(tmp_path / "same.onnx", (1, 28, 28))
    fields = {name: found.fields[t] for name, t in layers}
    fields_hold(model, [name for name, _ in layers], fields, images)


def _copying(first: int) -> nn.Module:
    """A reflection pad of `first` read by a 3×3 conv, then a replication pad, a ReLU and a 5×5 conv."""
    return nn.Sequential(nn.ReflectionPad2d(first), nn.Conv2d(1, 4, 3), nn.ReplicationPad2d((2, 1, 0, 2)), nn.ReLU(),
                         nn.Conv2d(4, 4, 5), nn.Flatten(), nn.LazyLinear(10))


def test_copying_pads_are_followed_into_the_convs_that_read_them(tmp_path):
    """A reflect or edge Pad has no field of its own, nor the ReLU after it (their border units are copies
    no box holds); the convs that read them have the torch analysis' fields. A reflection wider than half
    the reading conv's reach is refused as the torch analysis refuses it, naming the Pad node."""
    torch.manual_seed(3)
    model = _copying(1)
    model(torch.zeros(1, 1, 28, 28))
    model, found = model.eval(), fields_of(export(model, tmp_path / "copy.onnx", (1, 28, 28)), (1, 28, 28))
    onnx_model, got = found
    expected = sketchmine.receptive_fields(model, (1, 28, 28))
    assert {"1", "4", "6"} <= set(expected)
    for name in expected:
        assert got.fields.get(onnx_model.tensor(name)) == expected[name], name
    for name, mode in (("0", "reflect"), ("2", "edge"), ("3", "edge")):
        assert onnx_model.tensor(name) not in got.fields
        assert f"(mode {mode!r})" in got.missing[onnx_model.tensor(name)], got.missing[onnx_model.tensor(name)]
    wide = _copying(2)
    wide(torch.zeros(1, 1, 28, 28))
    with pytest.raises(sketchmine.SketchmineError, match="lie outside"):
        sketchmine.receptive_fields(wide.eval(), (1, 28, 28))
    onnx_model, got = fields_of(export(wide, tmp_path / "wide.onnx", (1, 28, 28)), (1, 28, 28))
    assert not {onnx_model.tensor(n) for n in ("0", "1", "4")} & set(got.fields)
    assert "Pad node '/0/Pad'" in got.missing[onnx_model.tensor("4")] and "lie outside" in got.missing[onnx_model.tensor("4")]


class Upsampled(nn.Module):
    """A conv, a pool, a nearest upsampling (a Resize node in ONNX), a conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.pool = nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2)
        self.up, self.conv2, self.head = nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        return self.head(torch.relu(self.conv2(self.up(x))).mean((2, 3)))


def test_mine_records_the_fields_after_a_resize(tmp_path, small_test_set):
    """An ONNX run of a model with a nearest upsampling (a Resize node) records, for the layers before and
    after it, the fields its torch analysis gives (after it: each unit's box, `spans`), on real sketches,
    and says nothing of missing fields."""
    torch.manual_seed(2)
    model = Upsampled().eval()
    path = export(model, tmp_path / "up.onnx", (1, 28, 28))
    notes = Notes()
    run = sketchmine.mine(str(path), subset(small_test_set, 40), layers=["conv1", "pool", "conv2", "head"],
                          out=tmp_path / "run.zarr", batch_size=20, k=3, progress=notes)
    expected = sketchmine.receptive_fields(model, (1, 28, 28))
    for name in ("conv1", "pool", "conv2", "head"):
        assert run.layer_attrs(name)["receptive_field"] == field_record(expected[name]), name
    assert "spans" in run.layer_attrs("conv2")["receptive_field"] and expected["conv2"].spans is not None
    assert not [n for n in notes.said if "receptive field" in n], notes.said


def test_mine_records_the_fields_of_an_onnx_run(tmp_path, demo_model, small_test_set):
    """An ONNX run of the demo model records, for every layer, the field its torch run records (the
    virtual softmax: the whole image), and says nothing of missing fields."""
    path = export(demo_model.module, tmp_path / "demo.onnx", (1, 28, 28))
    notes, ds = Notes(), subset(small_test_set, 40)
    run = sketchmine.mine(str(path), ds, out=tmp_path / "onnx.zarr", batch_size=20, k=3, progress=notes)
    torch_run = sketchmine.mine(demo_model.module, ds, out=tmp_path / "torch.zarr", batch_size=20, k=3)
    assert run.layers == torch_run.layers and len(run.layers) > 3
    for name in run.layers:
        field = run.layer_attrs(name)["receptive_field"]
        assert field is not None and field == torch_run.layer_attrs(name)["receptive_field"], name
    assert not [n for n in notes.said if "receptive field" in n], notes.said


def test_a_channels_last_graph_records_the_fields_of_its_torch_model(tmp_path, demo_model, small_test_set):
    """An (N, H, W, C) input that the graph Transposes to (N, C, H, W) (tf2onnx's models): the grid is
    followed through the Transpose, so its layers record the torch model's fields."""
    import onnx
    from onnx import TensorProto, helper

    from tests.test_onnx_graphs import edited

    proto = onnx.load(export(demo_model.module, tmp_path / "demo.onnx", (1, 28, 28)).as_posix())
    path = edited(proto, tmp_path / "nhwc.onnx", front=[helper.make_node("Transpose", ["image"], ["input"],
                                                                         perm=[0, 3, 1, 2])],
                  inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])])
    ds = subset(small_test_set, 40)
    run = sketchmine.mine(str(path), ds, out=tmp_path / "nhwc.zarr", batch_size=20, k=3)
    expected = sketchmine.receptive_fields(demo_model.module, (1, 28, 28))
    assert run.layers and all(run.layer_attrs(name)["receptive_field"] == field_record(expected[name])
                              for name in run.layers if name in expected)
    assert {"features.0", "classifier.1"} <= set(run.layers)
