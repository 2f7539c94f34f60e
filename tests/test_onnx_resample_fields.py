"""Receptive fields through ONNX ConvTranspose, Resize and Upsample (model/onnx_resample.py): equal to
the torch analysis' for decoders exported either way, held to the pixels that reach each unit, and,
for hand-written nodes of every opset and attribute, equal unit by unit to the hull of the pixels that
change the unit when ONNX Runtime runs the whole graph on one-hot images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import sketchmine
from sketchmine.model.field_record import clipped_boxes
from tests.helpers import fields_hold
from tests.test_onnx_fields import export, fields_of

pytest.importorskip("onnxruntime")


class EncoderDecoder(nn.Module):
    """Two encoder stages; a decoder that upsamples the deep map (`how`: an nn.Upsample nearest or
    bilinear with or without aligned corners, F.interpolate by a non-integer factor or to a size) and
    interpolates it to the first stage's size, beside a transposed conv (stride 2, padding, output
    padding, dilation) resized to that size too; the two joined by an addition and concatenated with the
    encoder's first map (a skip), a conv and a linear head on the mean."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.enc1, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2)
        self.enc2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.up = (nn.Upsample(scale_factor=2) if how == "nearest" else
                   nn.Upsample(scale_factor=2, mode="bilinear", align_corners=how == "corners")
                   if how in ("bilinear", "corners") else nn.Identity())
        self.tconv = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, dilation=2)
        self.dec, self.head = nn.Conv2d(8, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = torch.relu(self.enc1(x))
        e2 = torch.relu(self.enc2(self.pool(e1)))
        u = self.up(e2)
        if self.how == "fraction":
            u = F.interpolate(u, scale_factor=1.7, mode="bilinear")
        elif self.how == "size":
            u = F.interpolate(u, size=(e1.shape[2] // 2, e1.shape[3] // 2))
        u = F.interpolate(u, size=e1.shape[-2:], mode="bilinear")
        t = F.interpolate(self.tconv(e2), size=e1.shape[-2:])
        return self.head(torch.relu(self.dec(torch.cat([u + t, e1], 1))).mean((2, 3)))


def _segmenter(_: str) -> nn.Module:
    """torchvision's LRASPP-MobileNetV3 (random weights), its "out" map as the output."""
    class Out(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                                 num_classes=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)["out"]

    return Out()


def _padded(_: str) -> nn.Module:
    """Ops after an upsampling that read its boxes position by position: a reflection pad read by a conv,
    a max pool with ceil_mode, a constant and a replication pad, an average pool with padding, then
    global pooling and a linear head (the whole image)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.Upsample(scale_factor=2, mode="bilinear"),
                         nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                         nn.ZeroPad2d((1, 0, 2, 0)), nn.ReplicationPad2d((0, 1, 1, 0)), nn.Conv2d(4, 4, 3),
                         nn.AvgPool2d(2, 2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


# (model, channels, sizes, dynamo, layers that must be compared and tabled)
CASES = {
    "nearest": (EncoderDecoder, 1, (28, 27), False, {"up", "tconv", "dec"}),
    "bilinear": (EncoderDecoder, 1, (28, 27), False, {"up", "tconv", "dec"}),
    "corners": (EncoderDecoder, 1, (28, 27), False, {"up", "tconv", "dec"}),
    "fraction": (EncoderDecoder, 1, (28, 27), False, {"tconv", "dec"}),
    "size": (EncoderDecoder, 1, (28, 27), False, {"tconv", "dec"}),
    "bilinear-dynamo": (EncoderDecoder, 1, (28, 27), True, {"up", "tconv", "dec"}),
    "size-dynamo": (EncoderDecoder, 1, (28, 27), True, {"tconv", "dec"}),
    "padded": (_padded, 1, (28, 27), False, {"1", "3", "5", "6", "8", "9"}),
    "lraspp": (_segmenter, 3, (64, 65), False, {"net.classifier", "net"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_decoder_fields_equal_the_torch_analysis(tmp_path, case):
    """Every layer the graph and the torch model both name has the torch analysis' field, at an even and
    an odd size, after Resize nodes of every mode the exporters write (nearest, linear with
    pytorch_half_pixel, half_pixel or align_corners, by scales or by sizes from shape arithmetic),
    ConvTranspose, their sum and a concatenation with an encoder map, and the windows, pads and global
    pooling after them."""
    make, c, sizes, dynamo, tabled = CASES[case]
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = make(case.split("-")[0]).eval()
    for size in sizes:
        shape = (c, size, size)
        onnx_model, found = fields_of(export(model, tmp_path / f"{size}.onnx", shape, dynamo), shape)
        expected = sketchmine.receptive_fields(model, shape)
        named = {name: t for name in expected if (t := onnx_model.tensor(name)) is not None}
        assert tabled <= {n for n in named if expected[n].spans is not None}, (tabled, set(named))
        for name, t in named.items():
            assert found.fields.get(t) == expected[name], (size, name, found.missing.get(t))


def test_decoder_fields_hold_the_pixels_that_reach_each_unit(tmp_path, small_test_set):
    """Each unit's box from the ONNX graph holds every pixel whose gradient reaches the unit in the torch
    model, on real sketches (bilinear upsampling; the transposed conv's units with gaps, which read no
    pixel, are checked through the conv that reads them beside the skip)."""
    torch.manual_seed(4)
    model = EncoderDecoder("bilinear").eval()
    onnx_model, found = fields_of(export(model, tmp_path / "dec.onnx", (1, 28, 28)), (1, 28, 28))
    names = ["enc2", "up", "dec"]
    fields = {n: found.fields[onnx_model.tensor(n)] for n in names}
    assert all(fields[n].spans is not None for n in ("up", "dec"))
    images = torch.from_numpy(small_test_set.images[[3, 150]]).float()[:, None] / 255
    assert images.std() > 0
    fields_hold(model, names, fields, images)


def _graph(path, nodes, opset: int, hw: tuple[int, int], initializers=(), out: str = "y"):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, *hw])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                ir_version=10 if opset > 19 else 8), str(path))
    return path


def _t(name: str, values, dtype=np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _node(op: str, inputs: list[str], out: str = "y", **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, [out], **attrs)


H, W = 9, 7
_CONV = [_node("Conv", ["x", "cw"], "c", kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 1])]
_CONV_W = _t("cw", np.ones((2, 1, 3, 3)))
# (nodes, opset, initializers): every resampling op's inputs, attributes and opsets
GRAPHS = {
    "convtranspose-pads": ([_node("ConvTranspose", ["x", "w"], strides=[2, 3], pads=[1, 0, 2, 1],
                                  output_padding=[1, 2], dilations=[2, 1])], 17, [_t("w", np.ones((1, 2, 3, 2)))]),
    "convtranspose-same-upper": ([_node("ConvTranspose", ["x", "w"], kernel_shape=[5, 3], strides=[2, 3],
                                        auto_pad="SAME_UPPER")], 17, [_t("w", np.ones((1, 1, 5, 3)))]),
    "convtranspose-same-lower": ([_node("ConvTranspose", ["x", "w"], strides=[3, 2], dilations=[2, 1],
                                        auto_pad="SAME_LOWER")], 11, [_t("w", np.ones((1, 1, 4, 5)))]),
    "convtranspose-output-shape": ([_node("ConvTranspose", ["x", "w"], strides=[2, 2], output_shape=[2 * H - 4, 2 * W - 2],
                                          pads=[3, 3, 3, 3])], 17, [_t("w", np.ones((1, 1, 5, 3)))]),
    "convtranspose-output-shape-upper": ([_node("ConvTranspose", ["x", "w"], strides=[3, 2], output_shape=[3 * H - 4, 2 * W - 1],
                                                auto_pad="SAME_UPPER")], 13, [_t("w", np.ones((1, 1, 4, 4)))]),
    "convtranspose-groups-valid": ([*_CONV, _node("ConvTranspose", ["c", "w"], strides=[2, 2], group=2, auto_pad="VALID")],
                                   17, [_CONV_W, _t("w", np.ones((2, 1, 3, 2)))]),
    "upsample-7": ([_node("Upsample", ["x"], scales=[1.0, 1.0, 2.0, 3.0])], 7, []),
    "upsample-9-linear": ([_node("Upsample", ["x", "s"], mode="linear")], 9, [_t("s", [1, 1, 2, 1.5])]),
    "resize-10": ([_node("Resize", ["x", "s"], mode="nearest")], 10, [_t("s", [1, 1, 2, 1.5])]),
    "resize-11-corners": ([_node("Resize", ["x", "roi", "s", "sz"], mode="linear",
                                 coordinate_transformation_mode="align_corners")], 11,
                          [_t("roi", []), _t("s", []), _t("sz", [1, 1, 17, 11], np.int64)]),
    "resize-13-cubic": ([*_CONV, _node("Resize", ["c", "", "s"], mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5,
                                       coordinate_transformation_mode="asymmetric")], 13, [_CONV_W, _t("s", [1, 1, 1.7, 2.3])]),
    "resize-13-crop": ([_node("Resize", ["x", "roi", "", "sz"], mode="nearest", nearest_mode="floor",
                              coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=5.0)], 13,
                       [_t("roi", [0, 0, 0.2, -0.1, 1, 1, 0.9, 0.8]), _t("sz", [1, 1, 13, 10], np.int64)]),
    "resize-18-antialias": ([_node("Resize", ["x", "", "s"], mode="linear", antialias=1, axes=[2, 3])], 18,
                            [_t("s", [0.6, 0.5])]),
    "resize-19-symmetric": ([_node("Resize", ["x", "", "", "sz"], mode="nearest", axes=[3, 2], nearest_mode="round_prefer_ceil",
                                   coordinate_transformation_mode="half_pixel_symmetric", keep_aspect_ratio_policy="not_larger")],
                            19, [_t("sz", [17, 30], np.int64)]),
}


def _hulls(path, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per output unit (Ho·Wo, 4): the hull (top, left, bottom, right) of the pixels whose one-hot image
    changes it in ONNX Runtime's run of the whole graph (-1 where none), and the output grid."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    zero = session.run(None, {"x": np.zeros((1, 1, *hw), np.float32)})[0][0]
    hits = []
    for p in range(hw[0] * hw[1]):
        image = np.zeros(hw[0] * hw[1], np.float32)
        image[p] = 1.0
        got = session.run(None, {"x": image.reshape(1, 1, *hw)})[0][0]
        hits.append((got != zero).any(axis=0).reshape(-1))
    reached = np.stack(hits, axis=1).reshape(-1, *hw)  # (units, h, w)
    out = np.full((len(reached), 4), -1)
    for u, r in enumerate(reached):
        if r.any():
            ys, xs = np.nonzero(r)
            out[u] = ys.min(), xs.min(), ys.max(), xs.max()
    return out, np.asarray(zero.shape[1:])


@pytest.mark.parametrize("case", list(GRAPHS))
def test_resampling_nodes_have_the_hull_of_the_pixels_that_reach_each_unit(tmp_path, case):
    """A ConvTranspose (kernel from the weight, pads, output_padding, dilations, auto_pad, output_shape,
    group) and a Resize or Upsample of every opset (scales or sizes, nearest / linear / cubic, coordinate
    transformations, nearest_mode, exclude_outside, antialias, axes, a tf_crop_and_resize roi whose
    cropped units read no pixel) on a 9×7 image: each unit's box, clipped to the image, is exactly the
    hull of the pixels that change it in the whole graph's run (positive weights: no pixel cancels)."""
    nodes, opset, inits = GRAPHS[case]
    path = _graph(tmp_path / f"{case}.onnx", nodes, opset, (H, W), inits)
    _, found = fields_of(path, (1, H, W))
    assert "y" in found.fields, found.missing
    hulls, grid = _hulls(path, (H, W))
    units = np.stack(np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij"), -1).reshape(-1, 2)
    boxes = clipped_boxes(found.fields["y"].boxes(units), (H, W)).numpy()
    assert found.fields["y"].spans is not None and (hulls[:, 0] >= 0).any()
    wrong = np.nonzero((boxes != hulls).any(axis=1))[0]
    assert len(wrong) == 0, (case, units[wrong[:3]].tolist(), boxes[wrong[:3]].tolist(), hulls[wrong[:3]].tolist())


def test_resamplings_the_analysis_cannot_follow_are_refused_naming_the_node(tmp_path):
    """A Resize that scales C as well as H and W gives the tensors after it no field, saying so; so does a
    ConvTranspose whose size ONNX shape inference and ONNX Runtime disagree on (auto_pad SAME_UPPER with
    output_padding: inference adds the output padding, the runtime makes input × stride units)."""
    nodes = [_node("Resize", ["x", "", "s"], "r", mode="nearest"), _node("Relu", ["r"])]
    path = _graph(tmp_path / "c.onnx", nodes, 13, (H, W), [_t("s", [1, 2, 2, 2])])
    _, found = fields_of(path, (1, H, W))
    assert not {"r", "y"} & set(found.fields)
    assert "Resize node 'r'" in found.missing["y"] and "batch or channels" in found.missing["y"], found.missing
    nodes = [_node("ConvTranspose", ["x", "w"], strides=[2, 2], auto_pad="SAME_UPPER", output_padding=[1, 0])]
    _, found = fields_of(_graph(tmp_path / "t.onnx", nodes, 17, (H, W), [_t("w", np.ones((1, 1, 3, 3)))]), (1, H, W))
    assert "19 units along axis 2 by ONNX shape inference, 18 by its attributes" in found.missing["y"], found.missing
