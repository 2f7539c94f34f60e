"""Where an ONNX graph's tensors hold their units: the ONNX counterpart of `taps.to_units`' rules.

An ONNX tensor is mined as (N, units, *positions), as a torch module's output. Most tensors are
so already (a Conv's, a Gemm's); two kinds are not, and were read along the wrong axis:

- a MatMul by a weight matrix (an exported nn.Linear) on (N, *, F) holds its features last, as
  the torch Linear rule says: a per-position Linear on a channels-last (N, H, W, F) map (ConvNeXt),
  or a per-step one on (N, T, F);
- a tensor between a Transpose to (N, H, W, C) and the Transpose back (a ConvNeXt block's
  LayerNormalization, its GELU's nodes) holds its channels last.

The axes of every rank-4 tensor are followed from the image input (N, C, H, W) through the ops
whose effect on axes is known: convolutions, pools and normalisations over channels give
(N, C, H, W); a Transpose permutes; elementwise ops and LayerNormalization keep their input's
axes; a MatMul by a weight puts its features last. Any other op leaves its output's axes
unknown, read as today (units along axis 1). A tensor whose known axes are neither (N, C, H, W)
nor (N, H, W, C) (a grid transposed to (W, H)) is refused rather than read with its y and x swapped.
"""
from __future__ import annotations

from typing import Any

from sketchmine.errors import SketchmineError
from sketchmine.model.layouts import CHANNELS_LAST, FEATURES_LAST

_CHANNELS_FIRST = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "LRN", "MaxPool",
                   "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool"}
_ELEMENTWISE = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
                "Tanh", "Erf", "Softplus", "Softsign", "Mish", "Clip", "Identity", "Dropout", "Cast", "Add", "Sub",
                "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Max", "Min", "Where",
                "LayerNormalization"}
NCHW, NHWC = ("n", "c", "h", "w"), ("n", "h", "w", "c")


def unit_layouts(graph: Any, tensors: dict[str, str], ranks: dict[str, int]
                 ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """For each layer → tensor in `tensors` whose units are not along axis 1, the attributes that
    say how it is read (`layout` CHANNELS_LAST or FEATURES_LAST, position, yx), and the layers of
    3 or more axes whose units the graph does not place (read along axis 1, for the caller to say);
    `ranks`: each tapped tensor's rank as run. Raises a SketchmineError naming a layer whose grid
    is transposed."""
    axes = _follow(graph)
    weighted = _weight_products(graph)
    out: dict[str, dict[str, Any]] = {}
    unplaced = [layer for layer, name in tensors.items() if ranks.get(layer, 0) >= 3 and name not in weighted
                and (axes.get(name) is None or axes[name][1] != "c" and axes[name][-1] != "c")]
    for layer, name in tensors.items():
        rank, known = ranks.get(layer, 0), axes.get(name)
        if rank == 4 and known is not None and known not in (NCHW, NHWC) and None not in known:
            raise SketchmineError(f"layer {layer!r} (tensor {name!r}) holds its axes as "
                                  f"({', '.join(str(a) for a in known).upper()}); sketchmine reads (N, C, H, W) or channels last (N, H, W, C): mine a tensor "
                                  "before or after it")
        if rank == 4 and (known == NHWC or name in weighted):  # a weighted one: as the torch Linear rule
            out[layer] = {"position": "grid", "yx": "(y, x)", "layout": CHANNELS_LAST}
        elif rank == 3 and name in weighted:
            out[layer] = {"position": "sequence", "yx": "(0, t)", "layout": FEATURES_LAST}
    return out, unplaced


def _weight_products(graph: Any) -> set[str]:
    """Tensors of a MatMul by a weight matrix (an initializer) and of the bias Add after it: the
    output of an exported nn.Linear, features last."""
    weights = {t.name for t in graph.initializer}
    made = {n.output[0] for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights}
    for node in graph.node:  # in graph order: the bias Add follows its MatMul
        if node.op_type == "Add" and len(node.input) == 2 and (
                node.input[0] in made and node.input[1] in weights or node.input[1] in made and node.input[0] in weights):
            made.add(node.output[0])
    return made


def _follow(graph: Any) -> dict[str, tuple[str | None, ...]]:
    """Tensor name → its axes' names ("n", "c", "h", "w"; None: unknown), for the rank-4 tensors
    whose axes follow from the image input by the ops above."""
    weights = {t.name for t in graph.initializer}
    image = [i.name for i in graph.input if i.name not in weights]
    axes: dict[str, tuple[str | None, ...]] = {name: NCHW for name in image}
    for node in graph.node:
        if not node.output:
            continue
        known = [axes[i] for i in node.input if i in axes]
        got: tuple[str | None, ...] | None = None
        if node.op_type in _CHANNELS_FIRST:  # channels first whatever it was fed
            got = NCHW
        elif node.op_type == "Transpose" and len(known) == 1:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            got = tuple(known[0][p] for p in perm) if perm and sorted(perm) == list(range(4)) else None
        elif node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in weights and known:
            got = (*known[0][:3], "c") if known[0][3] == "c" else (*known[0][:3], None)
        elif node.op_type in (*_ELEMENTWISE, "Concat") and known and all(k == known[0] for k in known):
            got = known[0]
        if got is not None:
            axes[node.output[0]] = got
    return axes
