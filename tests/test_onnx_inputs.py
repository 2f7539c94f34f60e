"""An ONNX graph's image input as converters leave it: one that declares no shape is read, and
fed, as the graph's nodes take it."""
from __future__ import annotations

import numpy as np
import pytest

import sketchmine
from sketchmine.data import ArrayDataset
from tests.test_miner import assert_same_topk
from tests.test_onnx import subset

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from tests.test_onnx_graphs import edited, exported, ort_tensors  # noqa: E402,F401  (the exported demo graph)


def test_a_channels_last_input_of_no_declared_shape_is_fed_channels_last(tmp_path, exported, demo_model,  # noqa: F811
                                                                          small_test_set):
    """An (N, H, W, C) input that the graph Transposes to (N, C, H, W), declaring no shape: its
    tensors were read channels last (onnx_layout) but the images fed channels first, refused as
    a model that "cannot take input of shape (1, 28, 28)" (its Conv given 28 channels). It is
    fed channels last, as the same graph declaring its shape: the torch model's top-k and
    accuracy, and ONNX Runtime's tensor before the Transpose."""
    pre = small_test_set.preprocessing
    path = edited(exported, tmp_path / "free.onnx", inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])],
                  consts=[("mean", np.float32(pre.mean[0])), ("std", np.float32(pre.std[0]))], front=[
        helper.make_node("Sub", ["image", "mean"], ["centred"]), helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["input"], perm=[0, 3, 1, 2])])
    m = onnx.load(str(path))
    m.graph.input[0].type.tensor_type.ClearField("shape")  # as ONNX Runtime runs it (onnx.checker wants a shape)
    onnx.save(m, str(path))
    ds = subset(small_test_set, 40)
    pixels = ArrayDataset(ds.images, ds.labels(), ds.class_names)  # the same images, as pixels in [0, 1]
    layers = ["features.0", "classifier.1"]
    run = sketchmine.mine(str(path), pixels, layers=[*layers, "scaled"], preprocessing="none",
                          out=tmp_path / "r.zarr", batch_size=16, k=3)
    ref = sketchmine.mine(demo_model.module, ds, layers=layers, out=tmp_path / "t.zarr", batch_size=16, k=3)
    for name in layers:
        assert_same_topk(run.topk(name), ref.topk(name), name, rtol=1e-4)
    assert run.accuracy() == ref.accuracy() > 0.9
    x = np.stack([pixels[i][1].numpy() for i in range(len(pixels))]).transpose(0, 2, 3, 1)
    want = ort_tensors(path, ["scaled"], x)["scaled"].max((1, 2))  # (N, C): each image's maximum
    values, index, _ = run.topk("scaled")
    np.testing.assert_allclose(values, -np.sort(-want, 0)[:3].T, rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(want.T, index, 1), values, rtol=1e-5)
