"""The live probe's graph for runs whose model is an `.onnx` file: the file's own graph (weights
untouched), with the run's preprocessing prepended and the probe's outputs appended, in the
layout `passes.probe` exports from torch models:

    pixels (1, 1, H, W) float 0-255 → Div 255 → Concat to the model's channels → Sub mean → Div std
    → (the model) → probs = Softmax(Flatten(logits)); max<i> = GlobalMaxPool of each tapped
    tensor (a (N, F) tensor as it is); map<i> = the (N, C, H, W) tensor, MaxPool-ed to at most
    MAP_SIDE per side.

Only ops every opset since 13 has in the same form are added, so the model's own opset is kept.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from sketchmine.data.preprocess import Preprocessing
from sketchmine.errors import SketchmineError
from sketchmine.results.run import Run


def onnx_probe_graph(run: Run, model: Any, pre: Preprocessing, size: tuple[int, int],
                     layers: list[str], map_side: int) -> tuple[bytes, list[tuple[str, int, tuple[int, int] | None, int]]]:
    """(the probe graph's bytes, per layer (name, units, map grid or None, pool stride))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g = proto.graph
    dims = model.input.type.tensor_type.shape.dim
    if dims and dims[0].dim_value > 1:
        raise SketchmineError(f"{model.path.name} has a fixed batch size {dims[0].dim_value}; the probe runs one "
                              "image at a time (export the model with a dynamic or unit batch)")
    src = model.input.name
    elem = model.input.type.tensor_type.elem_type
    c = pre.channels
    consts = [numpy_helper.from_array(np.array(255.0, np.float32), "probe_255")]
    nodes = [helper.make_node("Div", ["pixels", "probe_255"], ["probe_x01"])]
    x = "probe_x01"
    if c != 1:
        nodes.append(helper.make_node("Concat", [x] * c, ["probe_xc"], axis=1))
        x = "probe_xc"
    if pre.mean:
        consts += [numpy_helper.from_array(np.array(pre.mean, np.float32).reshape(1, -1, 1, 1), "probe_mean"),
                   numpy_helper.from_array(np.array(pre.std, np.float32).reshape(1, -1, 1, 1), "probe_std")]
        nodes += [helper.make_node("Sub", [x, "probe_mean"], ["probe_xm"]),
                  helper.make_node("Div", ["probe_xm", "probe_std"], ["probe_xn"])]
        x = "probe_xn"
    nodes.append(helper.make_node("Cast", [x], [src], to=elem) if elem != TensorProto.FLOAT
                 else helper.make_node("Identity", [x], [src]))
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, "classes"])]
    tail = [helper.make_node("Flatten", [model.logits_name], ["probe_logits"], axis=1),
            helper.make_node("Softmax", ["probe_logits"], ["probs"], axis=1)]
    specs: list[tuple[str, int, tuple[int, int] | None, int]] = []
    for i, name in enumerate(layers):
        t = model.tensor(name)
        if t is None:
            raise SketchmineError(f"layer {name!r} of run {run.path} is not a tensor of {model.path.name}")
        shape = [int(s) for s in run.layer_attrs(name)["shape"]]
        if len(shape) >= 2:
            tail.append(helper.make_node("GlobalMaxPool", [t], [f"probe_gmax{i}"]))
            tail.append(helper.make_node("Flatten", [f"probe_gmax{i}"], [f"max{i}"], axis=1))
        else:
            tail.append(helper.make_node("Identity", [t], [f"max{i}"]))
        outputs.append(helper.make_tensor_value_info(f"max{i}", TensorProto.FLOAT, [1, shape[0]]))
        grid, s = None, 1
        if len(shape) == 3:
            s = max(1, math.ceil(max(shape[1:]) / map_side))
            grid = (math.ceil(shape[1] / s), math.ceil(shape[2] / s))
            tail.append(helper.make_node("MaxPool", [t], [f"map{i}"], kernel_shape=[s, s], strides=[s, s], ceil_mode=1)
                        if s > 1 else helper.make_node("Identity", [t], [f"map{i}"]))
            outputs.append(helper.make_tensor_value_info(f"map{i}", TensorProto.FLOAT, [1, shape[0], *grid]))
        specs.append((name, shape[0], grid, s))
    kept_inputs = [v for v in g.input if v.name != src]
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 1, *size]), *kept_inputs])
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old + tail)
    g.initializer.extend(consts)
    del g.output[:]
    g.output.extend(outputs)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - said on the page
        raise SketchmineError(f"the probe graph built on {model.path.name} is not valid ONNX: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    return proto.SerializeToString(), specs
