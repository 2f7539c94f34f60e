"""Where the ONNX backend places a tensor's units, checked on random chains of ops exported to
ONNX: permutes, per-position Linears, norms over the last axis, elementwise ops, 1×1 convs, cats,
flattens of positions, indexing and positions folded into the batch, with channel and grid
sizes drawn small so that they coincide. The chain knows each step's axes: the graph reads each
step's units where the chain holds them (axis 1, or last and moved), refuses a grid the chain
holds transposed, or says it cannot place them - never elsewhere, and only where the chain folded
or picked rows or holds its units on neither axis 1 nor last."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sketchmine.errors import SketchmineError
from tests.test_unit_axes_fuzz import Step

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from sketchmine.model.onnx_layout import sized_tensors, unit_layouts  # noqa: E402
from sketchmine.model.onnx_names import GraphNames  # noqa: E402

_POSITIONS = {"h", "w", "p"}


@st.composite
def chain(draw: st.DrawFn) -> tuple[tuple[int, int, int], list[tuple[str, Any]], list[list[str]]]:
    """An input (C, H, W), the steps, and each step's output axes ("n" batch, "c" units, "h"/"w"
    the grid, "p" other positions, "o" an axis that held units before a Linear mixed another,
    "?" rows the chain folded or picked)."""
    c, h, w = (draw(st.integers(2, 4)) for _ in range(3))
    shape, axes = [1, c, h, w], ["n", "c", "h", "w"]
    steps: list[tuple[str, Any]] = []
    truth: list[list[str]] = []
    for _ in range(draw(st.integers(1, 6))):
        rank = len(shape)
        kinds = ["permute", "linear", "norm", "gelu", "cat"]  # x.mT: no ONNX export; a Transpose, as permute
        if rank == 4 and axes[1] == "c":
            kinds.append("conv")
        pairs = [a for a in range(1, rank - 1) if axes[a] != "c" and axes[a + 1] != "c"]
        if rank > 3 and pairs:
            kinds.append("flatten")
        if rank > 3:
            kinds += ["index", "fold"]
        kind = draw(st.sampled_from(kinds))
        arg: Any = None
        if kind == "permute":
            arg = (0, *draw(st.permutations(list(range(1, rank)))))
            shape, axes = [shape[a] for a in arg], [axes[a] for a in arg]
        elif kind == "linear":
            arg = draw(st.integers(2, 4))
            shape, axes = [*shape[:-1], arg], [*("o" if a == "c" else a for a in axes[:-1]), "c"]
        elif kind == "conv":
            arg = draw(st.integers(2, 4))
            shape = [shape[0], arg, *shape[2:]]
        elif kind == "cat":
            arg = draw(st.integers(1, rank - 1))
            shape = [*shape[:arg], 2 * shape[arg], *shape[arg + 1:]]
        elif kind == "flatten":
            arg = draw(st.sampled_from(pairs))
            merged = "p" if {axes[arg], axes[arg + 1]} <= _POSITIONS else "o"
            shape = [*shape[:arg], shape[arg] * shape[arg + 1], *shape[arg + 2:]]
            axes = [*axes[:arg], merged, *axes[arg + 2:]]
        elif kind == "index":
            shape, axes = [shape[0], *shape[2:]], ["?", *axes[2:]]
        elif kind == "fold":
            shape, axes = [shape[0] * shape[1], *shape[2:]], ["?", *axes[2:]]
        steps.append((kind, arg))
        truth.append(list(axes))
    return (c, h, w), steps, truth


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=chain())
def test_onnx_places_units_where_the_chain_holds_them_or_says_it_cannot(drawn, tmp_path_factory):
    (c, h, w), steps, truth = drawn
    modules, x = [], torch.rand(1, c, h, w)
    for kind, arg in steps:
        modules.append(Step(kind, arg, int(x.shape[1] if kind == "conv" else x.shape[-1])))
        x = modules[-1](x)
    path = tmp_path_factory.mktemp("chain") / "chain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Sequential(*modules).eval(), (torch.rand(3, c, h, w),), str(path), dynamo=False)
    graph = onnx.load(str(path)).graph
    names = GraphNames(graph, path.name)
    tensors = {str(i): names.by_module[str(i)] for i in range(len(steps)) if str(i) in names.by_module}  # not a no-op
    if not tensors:
        return
    wanted = list(dict.fromkeys([*tensors.values(), *sized_tensors(graph)]))
    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in wanted if t not in present)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(wanted, session.run(wanted, {graph.input[0].name: torch.rand(3, c, h, w).numpy()}), strict=True))
    sizes = {t: got[t].shape for t in wanted}
    for i, axes in enumerate(truth):
        layer, rank = str(i), len(axes)
        if rank < 3 or axes[0] != "n" or layer not in tensors:
            continue
        try:
            moved, unplaced = unit_layouts(graph, {layer: tensors[layer]}, {layer: rank}, sizes)
        except SketchmineError:  # a grid transposed: only where the chain holds one so
            assert "h" in axes and "w" in axes and axes.index("w") < axes.index("h"), (i, steps, axes)
            continue
        if layer in moved:
            assert axes[-1] == "c" and rank in (3, 4), (i, steps, axes)
        elif layer not in unplaced:
            assert axes[1] == "c", (i, steps, axes)
        elif "?" not in axes:  # no rows folded or picked: every op of the chain is one the graph follows
            assert axes[1] != "c" and (axes[-1] != "c" or rank > 4), (i, steps, axes)


class OneChannel(nn.Module):
    """A conv to one channel whose (N, 1, 26, 26) map is reshaped to (N, *shape) for a ReLU."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.conv, self.act, self.head = nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Linear(26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(self.act(y.reshape(y.shape[0], *self.shape)).flatten(1))


@pytest.mark.parametrize("shape", [(1, 26, 26), (26, 26, 1)])
def test_a_reshape_that_keeps_or_moves_a_single_channel_keeps_it_placed(shape, tmp_path, small_test_set, caplog):
    """A reshape's axes of one came back as positions: an identity reshape of a one-channel map
    lost its channel (a false note that `act` is read on axis 1 unplaced), and one moving it last
    was read as 26 units of a (26, 1) grid. Both are the one channel of a 26 x 26 grid, as the
    torch module's output holds it: the same top-k and positions."""
    import sketchmine
    from tests.helpers import all_activations, brute_topk
    from tests.test_miner import assert_same_topk
    from tests.test_onnx import export, subset

    model, ds = OneChannel(shape).eval(), subset(small_test_set, 40)
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(str(export(model, tmp_path / "m.onnx")), ds, layers=["act"], k=5,
                              out=tmp_path / "r.zarr", batch_size=16)
    assert not [r for r in caplog.records if "read with their units on axis 1" in r.getMessage()]
    assert run.layer_shape("act") == (1, 26, 26)
    acts = all_activations(model, ds, ["act"])[0]["act"].reshape(len(ds), 1, 26, 26)
    values, index, position = brute_topk(acts, 5)
    assert_same_topk(run.topk("act"), (values, index, None), "act", rtol=1e-4)
    same = run.topk("act")[1] == index
    assert np.array_equal(run.topk("act")[2][same], np.stack([position // 26, position % 26], -1)[same])
