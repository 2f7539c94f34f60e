"""ONNX graphs as researchers get them, not only as torch.onnx.export makes them: the exported
demo model edited with onnx.helper (an input converted inside the graph, other outputs, names
with '/' and '|'), each mined against ONNX Runtime's own tensors of the same graph, or refused
with the file, the tensor and what to do."""
from __future__ import annotations

import numpy as np
import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from tests.test_onnx import export, subset

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_model):
    """The demo model as exported (input 'input' (N, 1, 28, 28), output 'logits')."""
    return onnx.load(str(export(demo_model.module, tmp_path_factory.mktemp("g") / "demo.onnx")))


def edited(proto, path, front=(), inputs=None, back=(), outputs=None, consts=()):
    """A copy of `proto` with `front` nodes before its own (fed by `inputs`, which replace the
    graph's), `back` nodes after them (the graph's outputs then `outputs`), and `consts` as
    initializers, saved at `path`."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    nodes = [*front, *g.node, *back]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in consts)
    if inputs is not None:
        del g.input[:]
        g.input.extend(inputs)
    if outputs is not None:
        del g.output[:]
        g.output.extend(outputs)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def ort_tensors(path, names, x):
    """ONNX Runtime's own values of tensors `names` of the graph at `path` on the batch `x`."""
    m = onnx.load(str(path))
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})[-len(names):], strict=True))


def test_an_integer_input_is_refused_naming_it(tmp_path, exported, small_test_set):
    """A graph that takes uint8 pixels and normalises them itself (Cast, Div 255, Sub mean, Div
    std) was fed sketchmine's normalised float images cast to uint8: every number mined was
    another image's (accuracy 0.1 on a model of 0.97), said by nothing. It is refused when loaded."""
    pre = small_test_set.preprocessing
    path = edited(exported, tmp_path / "pixels.onnx", inputs=[helper.make_tensor_value_info(
        "pixels", TensorProto.UINT8, ["N", 1, 28, 28])], consts=[
        ("c255", np.float32(255)), ("mean", np.float32(pre.mean[0])), ("std", np.float32(pre.std[0]))], front=[
        helper.make_node("Cast", ["pixels"], ["p"], to=TensorProto.FLOAT), helper.make_node("Div", ["p", "c255"], ["p1"]),
        helper.make_node("Sub", ["p1", "mean"], ["p2"]), helper.make_node("Div", ["p2", "std"], ["input"])])
    raw = np.asarray(small_test_set.images[:40, None], np.uint8)  # the stored pixels: the graph itself is right
    logits = ort_tensors(path, ["logits"], raw)["logits"]
    assert (logits.argmax(1) == small_test_set.labels()[:40]).mean() > 0.9
    with pytest.raises(SketchmineError, match=r"pixels\.onnx: the graph's input 'pixels' is uint8 \('N', 1, 28, 28\); "
                                              r".* cast to uint8 .*onnx\.utils\.extract_model"):
        sketchmine.mine(str(path), subset(small_test_set, 40), out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
