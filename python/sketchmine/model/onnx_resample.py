"""Receptive fields through the ONNX ops that resample the grid: ConvTranspose, Resize (opsets 10 to 19)
and the old Upsample. As the torch analysis does behind ConvTranspose2d, nn.Upsample and F.interpolate
(field_tables.py), each unit's box is kept per axis, unit by unit (`field_spans.Table`), so an exported
decoder has its torch original's fields.

A ConvTranspose's reads are integer arithmetic (`field_spans.transposed_reach`, the torch side's): its
kernel from the weight where kernel_shape is absent; the padding before the first unit from `pads`, or,
with `output_shape` or auto_pad SAME_*, from the total padding split as ONNX Runtime splits it (SAME_UPPER
the smaller half first, otherwise the larger); the output size this gives must be the graph's. Which
positions a Resize or an Upsample reads is asked of ONNX Runtime itself, as the torch side asks torch:
the node alone, with its attributes and the roi, scales and sizes the graph computes at the mined size,
run on one-hot rows and columns in the tensor's dtype, so that every mode, coordinate transformation,
nearest rounding, antialias, axes and exclude_outside is the runtime's own rule, and a weight that rounds
to zero reaches nothing, as in the graph's own run. Only the height and width may be resampled: a resize
of N or C (a scale not 1, a size not the input's, a crop) is refused naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sketchmine.model.field_algebra import Field, as_tables, tabled
from sketchmine.model.field_spans import read, transposed_reach
from sketchmine.model.onnx_nodes import attr, node_name, refused, text

RESAMPLE_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,)}
"""The inputs that give a resampling op its roi, scales and sizes (values the analysis reads)."""
RESAMPLERS = frozenset({"ConvTranspose", *RESAMPLE_INPUTS})
_PROBE_VALUES = 1 << 22  # output values of one probe run: a 512-pixel decoder's 1,024 one-hot images in chunks


@dataclass(frozen=True)
class Runtime:
    """What a one-node probe needs of the graph: its default-domain opset, IR version, and the element
    type (onnx.TensorProto) of its tensors."""

    opset: int
    ir_version: int
    types: dict[str, int] = field(default_factory=dict)


def resampled(node: Any, f: Field, shapes: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray],
              runtime: Runtime | None) -> Field:
    """The field after a `RESAMPLERS` node: per axis, each output unit's box the union of the boxes
    of the input positions it reads."""
    src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
    if src is None or dst is None or len(src) != 4 or len(dst) != 4 or f.grid != (-2, -1):
        raise refused(node, f"resamples a grid other than the last two dims of a 4-D tensor (input {src}, "
                            f"output {dst}, height and width at dims {f.grid})")
    n_in, n_out = (src[2], src[3]), (dst[2], dst[3])
    if node.op_type == "ConvTranspose":
        reach = _transposed_reach(node, shapes, n_in, n_out)
    else:
        reach = _probed_reach(node, consts, runtime, src, dst)
    table = as_tables(f, n_in, node_name(node))
    return tabled((read(table[0], reach[0]), read(table[1], reach[1])))


def _transposed_reach(node: Any, shapes: dict[str, tuple[int, ...]], n_in: tuple[int, int],
                      n_out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per axis (n_out, n_in) bool: the inputs a ConvTranspose scatters into each output position."""
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    k = attr(node, "kernel_shape", weight[2:] if weight is not None else None)
    if k is None or len(k) != 2:
        raise refused(node, f"has no 2-D kernel_shape ({k})")
    s, d = attr(node, "strides", [1, 1]), attr(node, "dilations", [1, 1])
    adj, pads = attr(node, "output_padding", [0, 0]), attr(node, "pads", [0, 0, 0, 0])
    wanted, auto = attr(node, "output_shape", None), text(node, "auto_pad", "NOTSET")
    if auto not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise refused(node, f"has auto_pad {auto!r}, none of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    reach = []
    for a in range(2):
        full = (n_in[a] - 1) * s[a] + adj[a] + (k[a] - 1) * d[a] + 1  # the output before any padding
        if wanted is not None or auto.startswith("SAME"):
            size = int(wanted[len(wanted) - 2 + a]) if wanted is not None else n_in[a] * s[a]
            total = max(0, full - size)
            head = total // 2 if auto == "SAME_UPPER" else total - total // 2
        else:
            head = 0 if auto == "VALID" else int(pads[a])
            size = full - (0 if auto == "VALID" else int(pads[a]) + int(pads[a + 2]))
        if size != n_out[a]:  # shape inference sizes it otherwise than the runtime (auto_pad with output_padding)
            raise refused(node, f"has {n_out[a]} units along axis {2 + a} by ONNX shape inference, {size} by its "
                                "attributes as ONNX Runtime reads them")
        reach.append(transposed_reach(n_in[a], n_out[a], int(k[a]), int(s[a]), head, int(d[a])))
    return reach[0], reach[1]


def _probed_reach(node: Any, consts: dict[str, np.ndarray], runtime: Runtime | None, src: tuple[int, ...],
                  dst: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per axis (n_out, n_in) bool: the input positions each output position of a Resize or Upsample
    takes with a non-zero weight, from ONNX Runtime (module doc)."""
    if runtime is None or node.input[0] not in runtime.types:
        raise refused(node, "resamples a tensor whose element type is not known")
    inputs = {i: node.input[i] for i in range(1, len(node.input)) if node.input[i]}
    if missing := [t for t in inputs.values() if t not in consts]:
        raise refused(node, f"resamples by {missing} known only at run time")
    values = {i: np.asarray(consts[t]) for i, t in inputs.items()}
    _check_grid_only(node, runtime.opset, values, src, dst)
    ny, nx = src[2], src[3]
    probes = np.zeros((ny + nx, 1, ny, nx), dtype=_np_dtype(runtime.types[node.input[0]]))
    one = np.iinfo(probes.dtype).max if probes.dtype.kind in "iu" else 1
    probes[np.arange(ny), 0, np.arange(ny), :] = one  # row i of image i
    probes[ny + np.arange(nx), 0, :, np.arange(nx)] = one  # column j of image ny + j
    out = _run_probe(node, runtime, values, probes, dst)
    return (out[:ny, 0] != 0).any(axis=2).T, (out[ny:, 0] != 0).any(axis=1).T


def _check_grid_only(node: Any, opset: int, values: dict[int, np.ndarray], src: tuple[int, ...],
                     dst: tuple[int, ...]) -> None:
    """A Resize or Upsample must keep N and C: scale 1, their size, a roi of the whole axis."""
    legacy = node.op_type == "Upsample" or opset < 11  # scales at input 1 (or Upsample-7's attribute)
    scales = attr(node, "scales", None) if node.op_type == "Upsample" and 1 not in values else values.get(1 if legacy else 2)
    sizes, roi = (None, None) if legacy else (values.get(3), values.get(1))
    axes = [int(a) % 4 for a in attr(node, "axes", [0, 1, 2, 3])]
    kept = {0: 1.0, 1: 1.0}
    if scales is not None and np.size(scales):
        kept = {a: float(v) for a, v in zip(axes, np.asarray(scales).reshape(-1), strict=False) if a < 2}
    if sizes is not None and np.size(sizes):
        kept = {a: int(v) / src[a] for a, v in zip(axes, np.asarray(sizes).reshape(-1), strict=False) if a < 2}
    crop = text(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    if crop and roi is not None and np.size(roi):
        box = np.asarray(roi, dtype=float).reshape(2, -1)
        kept.update({a: -1.0 for j, a in enumerate(axes) if a < 2 and tuple(box[:, j]) != (0.0, 1.0)})
    if any(v != 1.0 for v in kept.values()) or tuple(dst[:2]) != tuple(src[:2]):
        raise refused(node, f"resamples the batch or channels as well (from {src} to {dst}, by "
                            f"{ {('N', 'C')[a]: v for a, v in kept.items()} }): only a resize of the height "
                            "and width is followed")


def _run_probe(node: Any, runtime: Runtime, values: dict[int, np.ndarray], probes: np.ndarray,
               dst: tuple[int, ...]) -> np.ndarray:
    """The node alone run on `probes` (B, 1, H, W) in chunks of a bounded output, (B, 1, H', W')."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    chunk = max(1, min(len(probes), _PROBE_VALUES // max(1, dst[2] * dst[3])))
    legacy = node.op_type == "Upsample" or runtime.opset < 11
    axes = [int(a) % 4 for a in attr(node, "axes", [0, 1, 2, 3])]
    if not legacy and 3 in values and np.size(values[3]):  # sizes of N and C: the probe's batch, one channel
        sizes = np.asarray(values[3]).reshape(-1).copy()
        sizes[[j for j, a in enumerate(axes) if a < 2]] = [(chunk, 1)[a] for a in axes if a < 2]
        values = {**values, 3: sizes}
    names = ["x", *(f"in{i}" if i in values else "" for i in range(1, len(node.input)))]
    copy = helper.make_node(node.op_type, names, ["y"])
    copy.attribute.extend(a for a in node.attribute if a.name != "extrapolation_value")
    if any(a.name == "extrapolation_value" for a in node.attribute):  # a cropped unit reads no pixel: 0, not a value
        copy.attribute.append(helper.make_attribute("extrapolation_value", 0.0))
    elem = runtime.types[node.input[0]]
    graph = helper.make_graph([copy], "probe", [helper.make_tensor_value_info("x", elem, [chunk, 1, *probes.shape[2:]])],
                              [helper.make_tensor_value_info("y", elem, None)],
                              [numpy_helper.from_array(v, f"in{i}") for i, v in values.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", runtime.opset)],
                              ir_version=runtime.ir_version)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        padded = np.concatenate([probes, np.zeros((-len(probes) % chunk, *probes.shape[1:]), probes.dtype)])
        out = np.concatenate([session.run(["y"], {"x": padded[i:i + chunk]})[0]
                              for i in range(0, len(padded), chunk)])[:len(probes)]
    except Exception as exc:  # ONNX Runtime's own errors, in one line
        raise refused(node, f"cannot be run alone on one-hot {onnx.helper.tensor_dtype_to_string(elem)} images to "
                            f"read which positions it takes: {' '.join(str(exc).split())[:300]}") from None
    if out.shape[2:] != tuple(dst[2:]):
        raise refused(node, f"gives a {tuple(dst[2:])} grid in the graph, {out.shape[2:]} run alone")
    return out


def _np_dtype(elem: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
