"""An `.onnx` file as the ONNX backend reads it: parsed, with the weights it keeps in files beside
it read in; its one image input, refused where sketchmine's images cannot be fed to it; the
output read as the logits; and the tensors that are its weights.

A graph as researchers get it is not always what torch.onnx.export makes: its input may be
integer pixels, grey (N, H, W) or flattened; its ArgMax may come before its logits, which may be
(N, 1, C) or (N, C, 1, 1); its weights may sit in another file, or in Constant nodes.
`onnx` is passed in (imported by the backend only when an ONNX model is used).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchmine.errors import SketchmineError


SERIALISED = 2**31 - 2**26
"""The most bytes of weights a graph is handed to ONNX Runtime with (as one serialised proto, which
protobuf caps at 2 GiB); a graph of more is handed over with its weights left in their files."""


def read_graph(onnx: Any, path: Path) -> tuple[Any, Any]:
    """The ModelProto of the file at `path` with its external data read in, and, where that data
    is too large to serialise with the graph (`SERIALISED`: it was refused as "Failed to serialize
    proto"), the proto as the file holds it, its weights left in their files, else None."""
    from onnx.external_data_helper import uses_external_data

    if not path.is_file():
        raise SketchmineError(f"ONNX model file {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, ...
        raise SketchmineError(f"{path} is not an ONNX model (cannot be parsed: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not proto.graph.node or not proto.graph.output:
        raise SketchmineError(f"{path} is not an ONNX model (no graph nodes or outputs found)")
    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return proto, None
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    _load_external_data(proto, path)
    return proto, light if sum(len(t.raw_data) for t in proto.graph.initializer) > SERIALISED else None


def _load_external_data(proto: Any, path: Path) -> None:
    """The weights a graph saved with save_as_external_data keeps in files beside it, read into
    `proto`; a file missing or short is said as such (it was "not an ONNX model")."""
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:  # a ValidationError, an OSError, ...
        files = sorted({e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"})
        raise SketchmineError(f"{path}: its weights are stored outside it, in {', '.join(files) or 'other files'} "
                              f"beside it, which cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]}). Keep "
                              "the data files in the folder of the .onnx file, under the names it was saved with") from None


def declared(value: Any) -> tuple[int | str, ...]:
    """A graph input's shape as the graph declares it (a name or "?" for a free dimension)."""
    return tuple(d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim)


def image_input(onnx: Any, graph: Any, path: Path) -> Any:
    """The graph's one input that is no initializer: images (N, C, H, W), or (N, H, W, C) that the
    graph Transposes, of a floating dtype (or of no declared shape); refused otherwise."""
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise SketchmineError(f"{path}: expected one image input, the graph has {[i.name for i in inputs]}"
                              + (": sketchmine feeds it images alone; give the others default values in a copy of the "
                                 "graph (initializers of the same names)" if inputs else ""))
    value, shape = inputs[0], declared(inputs[0])
    if len(shape) > 4:  # its frames fold into the batch inside the graph
        raise SketchmineError(f"{path}: the graph's input {value.name!r} is {shape}, {len(shape)}-D; an ONNX model is "
                              "mined over images (batch, channels, height, width): mine a model of frame sequences "
                              "(batch, steps, channels, height, width; a CNN + GRU such as demo-gru) from its torch module")
    if 0 < len(shape) < 4:  # (N, H, W) or (N, H·W): its dimension 1 was said to be its channels
        raise SketchmineError(f"{path}: the graph's input {value.name!r} is {shape}, {len(shape)}-D; an ONNX model is "
                              "mined over images (batch, channels, height, width), or (batch, height, width, channels) "
                              "that the graph Transposes: give it such an input (a Reshape of it to what the graph "
                              "reads first, put in front of its nodes)")
    elem = value.type.tensor_type.elem_type
    if elem and np.dtype(kind := onnx.helper.tensor_dtype_to_np_dtype(elem)).kind in "iub":  # pixels 0-255, say
        raise SketchmineError(
            f"{path}: the graph's input {value.name!r} is {kind} {shape}; sketchmine feeds a model the float images "
            f"its preprocessing makes (normalised, or pixels in [0, 1] with --preprocessing none), which a cast to "
            f"{kind} would turn into other numbers. Mine a graph with a float input: export the model without its "
            "conversion of integer pixels, or cut this graph after it (onnx.utils.extract_model with the converted "
            "tensor as input) and give its normalisation as --preprocessing")
    return value


def floating(onnx: Any) -> dict[int, torch.dtype]:
    """The ONNX floating element types (weights, activations, logits), each as torch's dtype."""
    return {onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
            onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64}


def logits_output(onnx: Any, outputs: Sequence[Any]) -> str:
    """The graph output read as the logits: the first floating one (a graph may give its ArgMax
    first: int64 (N,), no logits), else the first."""
    kinds = floating(onnx)
    return next((o.name for o in outputs if o.type.tensor_type.elem_type in kinds), outputs[0].name)


def as_rows(logits: np.ndarray) -> np.ndarray:
    """Logits (N, C): those of a graph ending in a 1x1 conv (N, C, 1, 1) or a token (N, 1, C)
    without their axes of one (left as they were, they gave no predictions and no softmax)."""
    if logits.ndim > 2 and sum(d != 1 for d in logits.shape[1:]) <= 1:
        return np.ascontiguousarray(logits).reshape(len(logits), -1)
    return np.asarray(logits)


def graph_weights(onnx: Any, graph: Any, every_constant: bool = True) -> Iterator[tuple[str, Any]]:
    """(name, TensorProto) of every initializer, then of every Constant node holding a floating
    tensor of more than one value (a converter may keep some or all weights in the graph's nodes).
    Without `every_constant`, as runs hashed before onnx_backend.NODES_HASH: the Constant nodes
    only of a graph with no floating initializer, so those runs still resume."""
    kinds = floating(onnx)
    yield from ((t.name, t) for t in graph.initializer)
    if not every_constant and any(t.data_type in kinds for t in graph.initializer):
        return
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.data_type in kinds and int(np.prod(value.dims)) > 1:
            yield node.output[0], value
