"""An ONNX graph's tensors at one input size, as the receptive-field analysis (onnx_fields) needs them:
their shapes, and the values of the small constants and computed parameters (pads, axes, slice bounds)
that say how an op moves the grid. Shape inference gives most; one ONNX Runtime run on zeros the rest.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sketchmine.errors import SketchmineError

Shape = tuple[int, ...]


def constant_values(graph: Any) -> dict[str, np.ndarray]:
    """The values of initializers and Constant nodes (pads, axes, slice bounds), small ones only."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer if int(np.prod(t.dims)) <= 64}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            ints = next((a.ints for a in node.attribute if a.name == "value_ints"), None)
            if value is not None and int(np.prod(value.dims)) <= 64:
                out[node.output[0]] = numpy_helper.to_array(value)
            elif ints is not None:
                out[node.output[0]] = np.asarray(list(ints), dtype=np.int64)
    return out


def tensor_facts(proto: Any, input_name: str, input_shape: Shape, parameters: list[str]
                 ) -> tuple[dict[str, Shape], dict[str, np.ndarray], dict[str, int]]:
    """Every tensor's shape when the graph is fed `input_shape`, the values of the `parameters`
    (pads, axes, slice bounds, a Resize's sizes) it computes (an exporter's Pad amounts made by
    ConstantOfShape, Concat, ...), and the element types (onnx.TensorProto) known: shapes and types from
    ONNX shape inference (initializers' too); for the tensors it leaves without a shape, and those
    values, from one ONNX Runtime run on zeros."""
    import onnx

    model = _sized(proto, input_name, input_shape, weights=False)
    shapes: dict[str, Shape] = {t.name: tuple(int(d) for d in t.dims) for t in proto.graph.initializer}
    types: dict[str, int] = {t.name: int(t.data_type) for t in proto.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
        infos = [*inferred.value_info, *inferred.input, *inferred.output]
    except Exception:  # an op inference does not know: ONNX Runtime tells its shapes
        infos = []
    for info in infos:
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.elem_type:
            types[info.name] = int(info.type.tensor_type.elem_type)
        if info.type.tensor_type.HasField("shape") and all(d.dim_value > 0 for d in dims):
            shapes[info.name] = tuple(int(d.dim_value) for d in dims)
    consts = constant_values(proto.graph)
    made = [o for node in model.graph.node for o in node.output if o]
    wanted = list(dict.fromkeys(t for t in parameters if t not in consts))
    lacking = [t for t in made if t not in shapes]
    if not (lacking or wanted):
        return shapes, {}, types
    arrays = _run(_sized(proto, input_name, input_shape, weights=True), input_name, input_shape,
                  list(dict.fromkeys([*lacking, *wanted])))
    shapes.update((t, tuple(int(n) for n in np.shape(arrays[t]))) for t in lacking)
    types.update((t, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(arrays[t]).dtype)) for t in lacking
                 if t not in types)
    return shapes, {t: np.asarray(arrays[t]) for t in wanted}, types


def _sized(proto: Any, input_name: str, input_shape: Shape, weights: bool) -> Any:
    """A copy of the graph fed `input_shape`, without the shapes recorded at the export's size (they would
    clash with these). Without `weights`, for shape inference: the large initializers become inputs of
    their type and shape (a copy of VGG's weights, or a graph of over 2 GB that protobuf cannot serialise,
    is not needed to know its shapes)."""
    import onnx

    model = onnx.ModelProto()
    if weights:
        model.CopyFrom(proto)
    else:
        graph = proto.graph
        small = [t for t in graph.initializer if int(np.prod(t.dims)) <= 64]
        model.ir_version, model.graph.name = proto.ir_version, graph.name
        model.opset_import.extend(proto.opset_import)
        model.functions.extend(proto.functions)
        model.graph.node.extend(graph.node)
        model.graph.initializer.extend(small)
        model.graph.input.extend(graph.input)
        known = {i.name for i in graph.input} | {t.name for t in small}
        model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in graph.initializer if t.name not in known)
        model.graph.output.extend(graph.output)
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    value = next(i for i in model.graph.input if i.name == input_name)
    del value.type.tensor_type.shape.dim[:]
    for n in input_shape:
        value.type.tensor_type.shape.dim.add().dim_value = int(n)
    return model


def _run(model: Any, input_name: str, input_shape: Shape, tensors: list[str]) -> dict[str, np.ndarray]:
    """`tensors` in one ONNX Runtime run of the graph on zeros."""
    import onnx
    import onnxruntime as ort

    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in present)
    elem = next(i for i in model.graph.input if i.name == input_name).type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else np.float32
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        arrays = session.run(tensors, {input_name: np.zeros(input_shape, dtype)})
    except Exception as exc:  # ONNX Runtime's own errors: one line
        raise SketchmineError(f"receptive fields: ONNX Runtime cannot run the graph on {input_shape} to read its "
                              f"tensors' shapes and pads: {' '.join(str(exc).split())[:300]}") from None
    return dict(zip(tensors, arrays, strict=True))
