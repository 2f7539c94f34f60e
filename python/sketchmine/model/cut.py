"""Cutting a network at a layer: everything up to the layer's output (the head) and, where a
pass needs it, the rest (the tail). One helper for the three passes that cut:

- deconv.Deconvolver: `head(gm, node)` of its rule-aware trace, at the layer's output node
  (receptive_field.module_outputs): visualising a layer costs only the layers before it.
- ablation.Split: `split(*trace_at(net, layer))`: the head runs once per image chunk, the
  tail once per ablation group on the (zeroed) layer output.
- forward.TorchForward with logits=False: `stop_after(net, layer)`. Early stop cannot use
  the graph cut: the miner's Taps are forward hooks on the caller's own modules, which a
  traced copy never calls, and mining must work on models torch.fx cannot trace (data-
  dependent control flow); so it stops the module's own forward right after the module.
  The shared piece is where a layer is cut: `cut_module` resolves every layer name the
  same way (a ".cell" virtual layer cuts after its LSTM) for all three.

Graph cuts share parameters with the traced module (no copies) and compute nothing after
the layer; the caller's model is never changed and no hook outlives a `stop_after`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from sketchmine.errors import SketchmineError
from sketchmine.model.graph import forward_defaults
from sketchmine.model.taps import module_of


def cut_module(net: nn.Module, layer: str) -> tuple[str, nn.Module]:
    """The module a layer is cut after (its qualified name and the module): the layer's own
    module, or the nn.LSTM of a virtual "<lstm>.cell" layer."""
    return module_of(net, layer)


def trace_at(net: nn.Module, layer: str) -> tuple[fx.GraphModule, fx.Node]:
    """`net` traced with the layer's module kept as one node (even a whole residual block),
    and that node: the module's output exactly as the module returns it (a tuple for RNNs)."""
    target, _ = cut_module(net, layer)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname == target or super().is_leaf_module(m, qualname)

    gm = fx.GraphModule(net, Tracer().trace(net, concrete_args=forward_defaults(net) or None))  # as net(x) runs
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == target]
    if len(calls) != 1:
        raise SketchmineError(f"layer {layer!r} is called {len(calls)} times in the traced graph")
    return gm, calls[0]


def _copy_upto(gm: fx.GraphModule, end: fx.Node) -> tuple[fx.Graph, dict[fx.Node, fx.Node], list[fx.Node]]:
    """A new graph with copies of `gm`'s nodes up to and including `end` (topological order:
    all of end's inputs come first), the old-to-new map, and the old nodes in order."""
    nodes = list(gm.graph.nodes)
    graph, env = fx.Graph(), dict[fx.Node, fx.Node]()
    for node in nodes[:nodes.index(end) + 1]:
        env[node] = graph.node_copy(node, env.__getitem__)
    return graph, env, nodes


def head(gm: fx.GraphModule, end: fx.Node) -> fx.GraphModule:
    """The graph up to `end`, returning `end`'s value; nodes it does not need are dropped."""
    graph, env, _ = _copy_upto(gm, end)
    graph.output(env[end])
    cut = fx.GraphModule(gm, graph)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return cut


def split(gm: fx.GraphModule, end: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(head, tail) of the graph cut after `end`. head(x) -> (end's value, *live): every earlier
    value the rest of the network still reads (a residual's skip input); tail(value, *live) ->
    the network's output. tail(*head(x)) computes what gm(x) does."""
    graph, env, nodes = _copy_upto(gm, end)
    pos = nodes.index(end)
    order = {n: i for i, n in enumerate(nodes)}
    live = [n for n in nodes[:pos] if n.op != "get_attr" and any(order[u] > pos for u in n.users)]
    graph.output((env[end], *[env[n] for n in live]))
    tail, env2 = fx.Graph(), {}
    env2[end] = tail.placeholder("tapped")
    for i, n in enumerate(live):
        env2[n] = tail.placeholder(f"live_{i}")
    for n in nodes[pos + 1:]:
        for a in n.all_input_nodes:
            if a not in env2 and a.op == "get_attr":
                env2[a] = tail.node_copy(a, env2.__getitem__)
        env2[n] = tail.node_copy(n, env2.__getitem__)
    return fx.GraphModule(gm, graph), fx.GraphModule(gm, tail)


class _Stop(Exception):
    """Raised by the hook after the cut module; caught by the runner `stop_after` yields."""


@contextlib.contextmanager
def stop_after(net: nn.Module, layer: str) -> Iterator[Callable[[Any], None]]:
    """A runner `run(x)` that calls `net(x)` and ends it right after the layer's module
    (`cut_module`) returns: its forward hooks registered before this context (Taps) have run.
    run returns None; a forward that never reaches the module raises. The hook is removed on exit."""

    def stop(module: nn.Module, inputs: tuple, output: Any) -> None:
        raise _Stop

    _, module = cut_module(net, layer)
    handle = module.register_forward_hook(stop)

    def run(x: torch.Tensor) -> None:
        try:
            net(x)
        except _Stop:
            return None
        raise SketchmineError(f"the forward pass did not reach layer {layer!r}")

    try:
        yield run
    finally:
        handle.remove()
