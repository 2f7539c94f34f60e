"""The live probe's ONNX side: the graph for runs whose model is an `.onnx` file, and the check
of a graph exported from a torch model against that model.

An `.onnx` run's graph is the file's own (weights untouched), with the run's preprocessing
prepended and the probe's outputs appended, in the layout `passes.probe` exports from torch models:

    pixels (1, C, H, W) float 0-255 → Div 255 → Sub mean → Div std → (the model) → probs =
    Softmax(Flatten(logits)) (Flatten alone when the model ends in a Softmax); max<i> =
    GlobalMaxPool of each tapped tensor (a (N, F) tensor as it is); map<i> = the (N, C, H, W)
    tensor, MaxPool-ed to at most MAP_SIDE per side.

Only ops every opset since 13 has in the same form are added, so the model's own opset is kept.

A torch model is exported by tracing one forward: a branch on the input's values is fixed in the
graph as that input took it. So `check_graph` runs the exported graph (Python's onnxruntime)
against the model on inputs that take other paths (blank canvases of both polarities, a drawing
of each, stored images) and refuses the probe when they differ.
"""
from __future__ import annotations

import base64
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine.data.preprocess import Preprocessing
from sketchmine.errors import SketchmineError
from sketchmine.model.layouts import CHANNELS_LAST, FEATURES_LAST
from sketchmine.model.output_softmax import onnx_ends_in_softmax
from sketchmine.results.run import Run

TRACE_DATA = ("Python boolean", "Python number", "Python index", "Python integer", "Python float",
              "Iterating over a tensor")
"""TracerWarnings that say a value of the input was read as a constant (a branch, a count)."""
TOLERANCE = 1e-3
"""Largest difference between graph and model, relative to max(1, |output|), taken as equal."""


def data_dependent(caught: list[warnings.WarningMessage]) -> list[str]:
    """The TracerWarnings among `caught` that say the model's own code read a traced value as a
    constant ("file:line: first line"); those raised in sketchmine's or torch's code (shape checks,
    the taps) are left out: they fix shapes, which the probe's input keeps."""
    ours = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))
    return [f"{Path(w.filename).name}:{w.lineno}: {str(w.message).strip().split(' might ')[0]}" for w in caught
            if issubclass(w.category, torch.jit.TracerWarning) and any(k in str(w.message) for k in TRACE_DATA)
            and not str(Path(w.filename).resolve()).startswith(ours)]


def check_inputs(x: torch.Tensor, images: list[dict[str, Any]], seq: dict[str, Any] | None) -> list[tuple[str, torch.Tensor]]:
    """(what, input) pairs shaped like `x` (the trace's random input, included): blank canvases and a
    drawing in both polarities, up to four stored images; a sequence run's as its frames."""
    from sketchmine.data.sequences import background_of, progressive_drawing

    h, w = x.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    t = max(1.0, min(h, w) / 14)
    drawing = (np.abs(np.hypot(yy - h / 2, xx - w / 2) - min(h, w) * 0.3) < t) | (np.abs(yy - xx * h / w) < t)
    grey = [("a blank canvas (0)", np.zeros((h, w), np.uint8)), ("a blank canvas (255)", np.full((h, w), 255, np.uint8)),
            ("a drawing, light on dark", drawing.astype(np.uint8) * 255),
            ("a drawing, dark on light", (~drawing).astype(np.uint8) * 255)]
    stored = [(f"dataset image {im['index']}", np.frombuffer(base64.b64decode(im["pixels"]), np.uint8).reshape(h, w, -1))
              for im in images[:4]]
    out = [("the traced input", x)]
    for what, a in grey + stored:
        if seq is not None:
            g = a if a.ndim == 2 else a[..., 0]
            frames = progressive_drawing(g, seq["steps"], background_of(g, seq["ink"]))
            out.append((what, torch.from_numpy(frames.astype(np.float32)).reshape(1, seq["steps"], 1, h, w)))
        else:
            c = a.reshape(h, w, -1).transpose(2, 0, 1)
            out.append((what, torch.from_numpy(np.ascontiguousarray(c, np.float32)).expand(1, x.shape[1], h, w)))
    return out


def check_graph(onnx_bytes: bytes, wrapped: nn.Module, x: torch.Tensor, images: list[dict[str, Any]],
                seq: dict[str, Any] | None, tracer: list[str], model: str) -> list[str]:
    """Run the exported graph (onnxruntime) and the model (`wrapped`, torch) on `check_inputs`;
    raise when an output differs by more than TOLERANCE, saying on which input; returns the notes
    (what was checked when tracing warned of a value fixed, or why nothing was checked)."""
    try:
        import onnxruntime as ort
    except ImportError:
        if tracer:
            raise SketchmineError(f"torch.onnx fixed a value of the input while tracing the model {model} ({tracer[0]}) "
                                  "and onnxruntime is not installed to check the graph (pip install onnxruntime)") from None
        return ["the exported graph was not checked against the model (onnxruntime is not installed)"]
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feed, names = sess.get_inputs()[0].name, [o.name for o in sess.get_outputs()]
    inputs = check_inputs(x, images, seq)
    for what, inp in inputs:
        with torch.no_grad():
            ref = [np.asarray(o, np.float64).reshape(-1) for o in wrapped(inp)]
        got = [np.asarray(o, np.float64).reshape(-1) for o in sess.run(None, {feed: inp.numpy()})]
        for name, r, g in zip(names, ref, got):
            d = np.where(np.isnan(r) & np.isnan(g), 0.0, np.abs(r - g)).max(initial=0.0) if r.shape == g.shape else np.inf
            if not d <= TOLERANCE * max(1.0, float(np.nanmax(np.abs(r), initial=0.0))):
                why = f" (torch.onnx warned: {tracer[0]})" if tracer else ""
                raise SketchmineError(f"the probe graph exported from the model {model} differs from the model on "
                                      f"{what} (output {name} off by {d:.3g}): tracing fixed the path its forward "
                                      f"took on one input{why}; the page would show wrong numbers")
    if tracer:
        return [f"tracing warned that the model's code read a value of its input ({tracer[0][:160]}); the graph equals the model on the {len(inputs)} "
                "inputs checked (blank canvases and a drawing of each polarity, stored images), other drawings may "
                "take another path through the model"]
    return []


def onnx_probe_graph(run: Run, model: Any, pre: Preprocessing, size: tuple[int, int],
                     layers: list[str], map_side: int) -> tuple[bytes, list[tuple[str, int, tuple[int, int] | None, int]], bool]:
    """(the probe graph's bytes, per layer (name, units, map grid or None, pool stride), whether the
    model's output is a softmax already and `probs` is that output as it is)."""
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
    if pre.mean:
        consts += [numpy_helper.from_array(np.array(pre.mean, np.float32).reshape(1, -1, 1, 1), "probe_mean"),
                   numpy_helper.from_array(np.array(pre.std, np.float32).reshape(1, -1, 1, 1), "probe_std")]
        nodes += [helper.make_node("Sub", [x, "probe_mean"], ["probe_xm"]),
                  helper.make_node("Div", ["probe_xm", "probe_std"], ["probe_xn"])]
        x = "probe_xn"
    if model.channels_last:  # an (N, H, W, C) input (tf2onnx), Transposed to (N, C, H, W) inside
        nodes.append(helper.make_node("Transpose", [x], ["probe_nhwc"], perm=[0, 2, 3, 1]))
        x = "probe_nhwc"
    nodes.append(helper.make_node("Cast", [x], [src], to=elem) if elem != TensorProto.FLOAT
                 else helper.make_node("Identity", [x], [src]))
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, "classes"])]
    probabilities = onnx_ends_in_softmax(model)
    tail = [helper.make_node("Flatten", [model.logits_name], ["probs" if probabilities else "probe_logits"], axis=1)]
    if not probabilities:
        tail.append(helper.make_node("Softmax", ["probe_logits"], ["probs"], axis=1))
    specs: list[tuple[str, int, tuple[int, int] | None, int]] = []
    for i, name in enumerate(layers):
        t = model.tensor(name)
        if t is None:
            raise SketchmineError(f"layer {name!r} of run {run.path} is not a tensor of {model.path.name}")
        shape = [int(s) for s in run.layer_attrs(name)["shape"]]
        if run.layer_attrs(name).get("layout") in (CHANNELS_LAST, FEATURES_LAST):  # mined units first: so here
            tail.append(helper.make_node("Transpose", [t], [f"probe_units{i}"], perm=[0, len(shape), *range(1, len(shape))]))
            t = f"probe_units{i}"
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
    g.input.extend([helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, c, *size]), *kept_inputs])
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
    return proto.SerializeToString(), specs, probabilities
