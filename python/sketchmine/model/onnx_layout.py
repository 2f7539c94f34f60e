"""Where an ONNX graph's tensors hold their units: the ONNX counterpart of `taps.to_units`' rules.

An ONNX tensor is mined as (N, units, *positions), as a torch module's output. Most tensors are
so already (a Conv's, a Gemm's); some are not, and would be read along the wrong axis:

- a MatMul by a weight matrix (an exported nn.Linear) on (N, *, F) holds its features last, as
  the torch Linear rule says: a per-position Linear on a channels-last (N, H, W, F) map (ConvNeXt),
  or a per-token one on (N, T, F);
- a tensor between a Transpose to (N, H, W, C) and the Transpose back (a ConvNeXt block's
  LayerNormalization, its GELU's nodes), or after a vision transformer's patches are flattened
  to tokens (N, T, D) (its LayerNormalizations, residual sums), holds its units last.

Each tensor's axes are named ("n", "c", "h", "w"; "p" a position that is not one grid axis, as a
token; None unknown), followed from the image input (N, C, H, W) through the ops whose effect
on axes is known: convolutions, pools and normalisations over channels give (N, C, ...); a
Transpose permutes; elementwise ops, LayerNormalization, pads, slices, resizes and reductions that
keep their axes keep their input's axes; a Concat or
Split along an axis keeps it; a MatMul by a weight puts its features last; a Reshape, Flatten,
Squeeze or Unsqueeze keeps the axes it leaves whole (and its axes of one, where it keeps as many)
and makes merged or split positions "p",
which needs the tensors' sizes (`sized_tensors` names the ones to measure on one real batch).
Any other op leaves its output's axes unknown, read as units along axis 1 and listed. A tensor
whose grid is transposed to (W, H) is refused rather than read with its y and x swapped.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sketchmine.errors import SketchmineError
from sketchmine.model.layouts import CHANNELS_LAST, FEATURES_LAST

_CHANNELS_FIRST = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "LRN", "MaxPool",
                   "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool"}
_ELEMENTWISE = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
                "Tanh", "Erf", "Softplus", "Softsign", "Mish", "Clip", "Identity", "Dropout", "Cast", "Add", "Sub",
                "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Max", "Min", "Where",
                "LayerNormalization"}
# ops whose output holds its first input's axes, each as long or shorter: padded or cropped
# positions (a Swin patch merge's x[..., 0::2, 0::2, :]), units picked, resized maps, a
# normalisation or reduction along one axis that keeps it
_KEEP_FIRST = {"Pad", "Slice", "Resize", "Upsample", "Softmax", "LogSoftmax", "ReduceMean", "ReduceMax", "ReduceMin",
               "ReduceSum", "ReduceL2"}
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_POSITIONS = {"h", "w", "p"}
NCHW, NHWC = ("n", "c", "h", "w"), ("n", "h", "w", "c")
Axes = tuple[str | None, ...]


def unit_layouts(graph: Any, tensors: dict[str, str], ranks: dict[str, int],
                 sizes: Mapping[str, Sequence[int]] | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """For each layer → tensor in `tensors` whose units are not along axis 1, the attributes that
    say how it is read (`layout` CHANNELS_LAST or FEATURES_LAST, position, yx), and the layers of
    3 or more axes whose units the graph does not place (read along axis 1, for the caller to say);
    `ranks`: each tapped tensor's rank as run; `sizes`: the shapes of `sized_tensors` on one
    batch (without them, axes are not followed through reshapes). Raises a SketchmineError naming
    a layer whose grid is transposed."""
    axes = _follow(graph, sizes or {})
    weighted = _weight_products(graph)
    out: dict[str, dict[str, Any]] = {}
    unplaced: list[str] = []
    for layer, name in tensors.items():
        rank, known = ranks.get(layer, 0), axes.get(name)
        known = known if known is not None and len(known) == rank else None
        if known is not None and "h" in known and "w" in known and known.index("w") < known.index("h"):
            raise SketchmineError(f"layer {layer!r} (tensor {name!r}) holds its axes as "
                                  f"({', '.join(str(a) for a in known).upper()}); sketchmine reads (N, C, H, W) or "
                                  "channels last (N, H, W, C): mine a tensor before or after it")
        last = name in weighted or known is not None and known[-1] == "c"  # a weighted one: as the torch Linear rule
        if rank == 4 and last:
            out[layer] = {"position": "grid", "yx": "(y, x)", "layout": CHANNELS_LAST}
        elif rank == 3 and last:
            out[layer] = {"position": "sequence", "yx": "(0, t)", "layout": FEATURES_LAST}
        elif rank >= 3 and (known is None or known[1] != "c"):
            unplaced.append(layer)
    return out, unplaced


def sized_tensors(graph: Any) -> list[str]:
    """The tensors whose sizes `unit_layouts` needs to follow axes through reshapes: each
    reshape's data input and output, and the output of each MatMul by a weight (whose rank its
    input may not tell); none in a graph without reshapes."""
    names: list[str] = []
    reshapes = [n for n in graph.node if n.op_type in _RESHAPES and n.input and n.output]
    for node in reshapes:
        names += [t for t in (node.input[0], node.output[0]) if t not in names]
    if reshapes:
        weights = constants(graph)
        names += [n.output[0] for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2
                  and n.input[1] in weights and n.output[0] not in names]
    return names


def constants(graph: Any) -> dict[str, int]:
    """Constant tensors → their rank (-1 unknown): the initializers, Constant nodes, and what is
    made of constants alone (an exporter's Identity of a weight shared by two modules)."""
    known = {t.name: len(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" or node.input and all(i in known for i in node.input):
            rank = known[node.input[0]] if node.op_type in ("Identity", "Cast") else -1
            known.update((o, rank) for o in node.output)
    return known


def _weight_products(graph: Any) -> set[str]:
    """Tensors of a MatMul by a weight matrix (a constant) and of the bias Add after it: the
    output of an exported nn.Linear, features last."""
    weights = constants(graph)
    made = {n.output[0] for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights}
    for node in graph.node:  # in graph order: the bias Add follows its MatMul
        if node.op_type == "Add" and len(node.input) == 2 and (
                node.input[0] in made and node.input[1] in weights or node.input[1] in made and node.input[0] in weights):
            made.add(node.output[0])
    return made


def channels_last_input(graph: Any, name: str) -> bool:
    """Whether the graph's image input `name` is (N, H, W, C): every path from it reaches, through
    elementwise ops alone, a Transpose to (N, C, H, W) that feeds a convolution, pool or channel
    norm (a Keras model converted by tf2onnx: its Rescaling's Mul and Add, the Transpose, then its
    first Conv; a model of (N, C, H, W) input that permutes it so is not: its Transpose feeds
    none). Shape reads no values."""
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)

    def reach(start: str, passing: set[str], goal: Any) -> bool | None:
        """Through `passing` ops from `start`: whether every path ends at a node that `goal`
        accepts (None where none ends anywhere)."""
        todo, seen, found = [start], {start}, None
        while todo:
            for node in readers.get(todo.pop(), []):
                if goal(node):
                    found = True
                elif node.op_type in passing:
                    todo += [o for o in node.output if o not in seen]
                    seen.update(node.output)
                elif node.op_type != "Shape":
                    return False
        return found

    elementwise = _ELEMENTWISE - {"LayerNormalization"}
    return bool(reach(name, elementwise, lambda n: n.op_type == "Transpose" and _attr(n, "perm") == [0, 3, 1, 2]
                      and reach(n.output[0], elementwise | {"Pad"}, lambda m: m.op_type in _CHANNELS_FIRST)))


def _follow(graph: Any, sizes: Mapping[str, Sequence[int]]) -> dict[str, Axes]:
    """Tensor name → its axes' names, for the tensors whose axes follow from the image input by
    the ops above."""
    weights = constants(graph)
    axes: dict[str, Axes] = {i.name: NHWC if channels_last_input(graph, i.name) else NCHW for i in graph.input
                             if i.name not in weights and len(i.type.tensor_type.shape.dim) in (0, 4)}
    for node in graph.node:
        if not node.output:
            continue
        known = [axes[i] for i in node.input if i in axes]
        op = node.op_type
        got: Axes | None = None
        if op in _CHANNELS_FIRST:  # channels first whatever it was fed (a grid fed transposed is a grid, as torch's)
            rank = len(known[0]) if known else weights.get(node.input[1], 4) if op in ("Conv", "ConvTranspose") else 4
            got = NCHW if rank in (4, -1) else ("n", "c", *("p",) * (rank - 2))
        elif op == "Transpose" and len(known) == 1 and node.input[0] in axes:
            perm = _attr(node, "perm") or list(range(len(known[0])))[::-1]
            got = tuple(known[0][p] for p in perm) if sorted(perm) == list(range(len(known[0]))) else None
        elif op == "MatMul" and len(node.input) == 2 and node.input[1] in weights and node.input[0] in axes:
            got = (*(None if a == "c" else a for a in known[0][:-1]), "c")  # its features, whatever it mixed
        elif op == "MatMul" and len(node.input) == 2 and node.input[1] in weights and node.output[0] in sizes:
            got = (*(None,) * (len(sizes[node.output[0]]) - 1), "c")  # features last, rows the graph lost
        elif op == "Gemm" and len(node.input) >= 2 and node.input[1] in weights:  # (rows, features): rows unknown
            got = (None, "c")
        elif op in _KEEP_FIRST and node.input[0] in axes and _attr(node, "keepdims") != 0:
            got = axes[node.input[0]]
        elif op in _ELEMENTWISE and known:
            got = _merged(known)
        elif op in ("Concat", "Split") and known and (merged := _merged(known)) is not None:
            whole = op == "Split" or all(i in axes for i in node.input) and all(k == known[0] for k in known)
            got = _along(merged, _attr(node, "axis") or 0, whole)  # a class token joined: a position of its own
        elif op in _RESHAPES and node.input[0] in axes and node.input[0] in sizes and node.output[0] in sizes:
            got = _reshaped(axes[node.input[0]], sizes[node.input[0]], sizes[node.output[0]])
        if got is not None:
            for name in node.output if op == "Split" else node.output[:1]:
                axes[name] = got
    return axes


def _merged(known: list[Axes]) -> Axes | None:
    """The axes of an elementwise op's output from its inputs' (those the graph follows; the
    highest rank, which broadcasting keeps): per axis, the one name the inputs give it, unknown
    where they give none or disagree (a residual sum of a followed stream and a branch whose
    rows the graph lost: the stream's)."""
    rank = max(len(k) for k in known)
    full = [k for k in known if len(k) == rank]
    names = [{k[a] for k in full} - {None} for a in range(rank)]
    got = tuple(next(iter(n)) if len(n) == 1 else None for n in names)
    return None if all(g is None for g in got) else got


def _along(known: Axes, axis: int, whole: bool) -> Axes | None:
    """The axes of a Concat / Split of tensors of axes `known` along `axis`: the same, except
    that positions joined with tensors the graph does not follow are positions "p"; none along
    the batch."""
    axis = axis % len(known) if known else 0
    if not known or known[axis] == "n":
        return None
    return known if whole or known[axis] not in _POSITIONS else (*known[:axis], "p", *known[axis + 1:])


def _reshaped(known: Axes, src: Sequence[int], dst: Sequence[int]) -> Axes | None:
    """The axes of a tensor of axes `known` and shape `src` reshaped to `dst`: each run of axes
    whose sizes multiply to a run of the other side's is one group; an axis kept whole keeps its
    name, merged or split positions become "p" (a vision transformer's patches flattened to
    tokens), a group holding the units is unknown, and one holding the batch leaves nothing
    known. Axes of one keep their names, in order, where `dst` has as many as `src` (an identity
    reshape of a single channel, or one moving only axes of one: the same memory, relabelled);
    else they are inserted or dropped, and inserted ones are positions."""
    if len(known) != len(src):
        return None
    a = [k for k in range(len(src)) if src[k] != 1]
    b = [k for k in range(len(dst)) if dst[k] != 1]
    out: list[str | None] = ["p"] * len(dst)
    i = j = 0
    while i < len(a) and j < len(b):
        group, into, left, right = [a[i]], [b[j]], src[a[i]], dst[b[j]]
        i, j = i + 1, j + 1
        while left != right:
            if left < right and i < len(a):
                group.append(a[i])
                left, i = left * src[a[i]], i + 1
            elif left > right and j < len(b):
                into.append(b[j])
                right, j = right * dst[b[j]], j + 1
            else:
                return None
        names = [known[k] for k in group]
        whole = len(group) == len(into) == 1
        if "n" in names and not whole:
            return None
        name = names[0] if whole else "p" if all(n in _POSITIONS for n in names) else None
        for k in into:
            out[k] = name
    ones = [k for k in range(len(src)) if src[k] == 1], [k for k in range(len(dst)) if dst[k] == 1]
    if len(ones[0]) == len(ones[1]):
        for k, d in zip(*ones, strict=True):
            out[d] = known[k] or "p"
    return tuple(out) if i == len(a) and j == len(b) else None


def _attr(node: Any, name: str) -> Any:
    """An attribute's value: ints for a list, an int otherwise; None where absent."""
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.i
    return None
