"""Where the graph places a module's units, checked on random chains of the ops it follows:
permutes, x.mT, per-position Linears, norms over the last axis, elementwise ops, 1×1 convs, cats,
flattens of positions, positions folded into the batch (a window partition) and indexing, with channel and grid sizes drawn small so that they
coincide (a (N, 4, 4, 4) map, where a shape alone cannot tell channels from positions). Each
step is a module, and the chain knows where its units are: the graph places every step's units
there, or says it cannot (after a matmul by a matrix, which mixes the last axis) - never elsewhere."""
from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sketchmine.model.receptive_field import sample_analysis


class Step(nn.Module):
    """One op of the chain; `kind` and `arg` say which (see `_apply`)."""

    def __init__(self, kind: str, arg: Any, features: int) -> None:
        super().__init__()
        self.kind, self.arg = kind, arg
        if kind == "linear":
            self.linear = nn.Linear(features, arg)
        elif kind == "norm":
            self.norm = nn.LayerNorm(features)
        elif kind == "conv":
            self.conv = nn.Conv2d(features, arg, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "permute":
            return x.permute(*self.arg)
        if self.kind == "linear":
            return self.linear(x)
        if self.kind == "norm":
            return self.norm(x)
        if self.kind == "conv":
            return self.conv(x)
        if self.kind == "gelu":
            return torch.nn.functional.gelu(x) + 0.5 * x
        if self.kind == "cat":
            return torch.cat([x, x * 2], self.arg)
        if self.kind == "flatten":
            return x.flatten(self.arg, self.arg + 1)
        if self.kind == "index":
            return x[:, 0]
        if self.kind == "fold":  # positions into the batch, as a window partition does
            return x.flatten(0, 1)
        if self.kind == "swap":
            return x.mT  # the last two axes, by an attribute (followed)
        return x @ torch.eye(x.shape[-1])  # "mix": a matmul, which the graph does not follow


@st.composite
def chain(draw: st.DrawFn) -> tuple[tuple[int, int, int], list[tuple[str, Any]], list[int | None]]:
    """An input (C, H, W), the steps, and where each step's output holds its units (None: the
    graph may not know, after a matmul)."""
    c, h, w = (draw(st.integers(2, 4)) for _ in range(3))
    shape, units, known = [1, c, h, w], 1, True
    steps: list[tuple[str, Any]] = []
    truth: list[int | None] = []
    for _ in range(draw(st.integers(1, 7))):
        rank = len(shape)
        kinds = ["permute", "linear", "norm", "gelu", "cat", "swap", "mix"]
        if rank == 4 and units == 1 and known:
            kinds.append("conv")
        positions = [a for a in range(1, rank - 1) if a != units and a + 1 != units]
        if rank > 3 and positions:
            kinds.append("flatten")
        if rank > 3 and units != 1:
            kinds += ["index", "fold"]
        kind = draw(st.sampled_from(kinds))
        arg: Any = None
        if kind == "permute":
            rest = draw(st.permutations(list(range(1, rank))))
            arg = (0, *rest)
            shape, units = [shape[a] for a in arg], arg.index(units)
        elif kind == "linear":
            arg = draw(st.integers(2, 4))
            shape, units, known = [*shape[:-1], arg], rank - 1, True  # its features are the units again
        elif kind == "conv":
            arg = draw(st.integers(2, 4))
            shape, known = [shape[0], arg, *shape[2:]], True
        elif kind == "cat":
            arg = draw(st.integers(1, rank - 1))
            shape = [*shape[:arg], 2 * shape[arg], *shape[arg + 1:]]
        elif kind == "flatten":
            arg = draw(st.sampled_from(positions))
            shape = [*shape[:arg], shape[arg] * shape[arg + 1], *shape[arg + 2:]]
            units -= units > arg
        elif kind == "index":
            shape, units = [shape[0], *shape[2:]], units - 1
        elif kind == "fold":
            shape, units = [shape[0] * shape[1], *shape[2:]], units - 1
        elif kind == "swap":
            shape = [*shape[:-2], shape[-1], shape[-2]]
            units = {rank - 1: rank - 2, rank - 2: rank - 1}.get(units, units)
        elif kind == "mix":
            known = False
        steps.append((kind, arg))
        truth.append(units if known else None)
    return (c, h, w), steps, truth


@settings(max_examples=150, deadline=None)
@given(chain())
def test_the_graph_places_units_where_the_chain_holds_them_or_says_it_cannot(drawn):
    (c, h, w), steps, truth = drawn
    modules, ranks = [], []
    x = torch.rand(1, c, h, w)
    for kind, arg in steps:
        step = Step(kind, arg, int(x.shape[1] if kind == "conv" else x.shape[-1]))
        x = step(x)
        modules.append(step)
        ranks.append(x.ndim)
    analysis = sample_analysis(nn.Sequential(*modules).eval(), (c, h, w))
    assert not isinstance(analysis, Exception), analysis
    axes = analysis.unit_axes
    for i, (want, rank) in enumerate(zip(truth, ranks)):
        got = axes.get(str(i))
        if want is None:  # after a matmul the graph may not know, but must not place them elsewhere
            assert got is None, (i, steps, got)
        else:
            assert got == (want, rank), (i, steps, got, want)
