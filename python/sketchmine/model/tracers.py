"""The torch.fx tracers behind `graph.trace`: the symbolic one (any input size), and one that
traces a forward at a given input size where the symbolic one cannot.

Why the second: a forward that computes with its input's size in Python (timm's `Conv2dSame`:
`max((math.ceil(h / s) - 1) * s + k - h, 0)` pixels of padding) cannot be traced symbolically
(the `max` is control flow on a traced value), and such a model had no receptive field and no
deconvolution at any layer. Traced at a given size, sizes are plain numbers and the graph holds
the ops they lead to at that size: exact for inputs of that size, which is what a receptive
field is computed for. The batch's size alone stays traced (`x.view(x.shape[0], -1)`), and a
forward that reads it as a number (`range(len(x))`) is refused: the passes run the graph on batches
of any size.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_map


class Tracer(fx.Tracer):
    """symbolic_trace's tracer, except that an empty nn.Sequential (a ResNet's identity shortcut)
    returns its input's node and is recorded as its output: inlined, it had no node to carry its
    name, so a tap on it had neither a field nor a place for its units."""

    def __init__(self) -> None:
        super().__init__()
        self.identities: dict[str, fx.Node | None] = {}  # None: called twice, its output ambiguous

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """A parametrised module is a leaf when its class before the parametrisation is: the class
        torch makes for it lives in torch.nn.utils.parametrize, which fx took for a torch.nn leaf, so
        a user's conv module written with F.conv2d was one opaque node once weight-normalised."""
        if parametrize.is_parametrized(m):
            cls = parametrize.type_before_parametrizations(m)
            return cls.__module__.startswith(("torch.nn", "torch.ao.nn")) and not issubclass(cls, nn.Sequential)
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if type(m) is nn.Sequential and len(m) == 0 and len(args) == 1 and not kwargs and isinstance(args[0], fx.Proxy):
            name = self.path_of_module(m)
            self.identities[name] = None if name in self.identities else args[0].node
            return args[0]
        return super().call_module(m, _attributes_placed(forward), args, kwargs)


_TENSOR_ATTRIBUTES = frozenset({"T", "mT", "H", "mH", "real", "imag", "data"})
"""The attributes of a tensor that are tensors: a module returning one returns it as its output. Others
(`x.shape`, `x.dtype`) are not outputs a tap reads; made nodes inside the module, the last of them
was taken as its output (`graph.module_outputs`)."""


def _attributes_placed(forward: Any) -> Any:
    """`forward`, with the tensor attribute proxies it returns (`x.mT`) made nodes inside its
    module's scope: fx makes them at their first use, in the user's scope, so a module returning
    `x.mT` had no node of its own (no field, no place for its units)."""
    def run(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        tree_map(lambda v: v.node if isinstance(v, fx.proxy.Attribute) and v.attr in _TENSOR_ATTRIBUTES else v, out)
        return out
    return run


def traced(tracer: Tracer, model: nn.Module, concrete_args: dict[str, Any] | None) -> fx.GraphModule:
    """`tracer`'s graph of `model`; the identities it met in `meta["identities"]`."""
    graph = tracer.trace(model, concrete_args=concrete_args)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta["identities"] = {name: node for name, node in tracer.identities.items() if node is not None}
    return gm


_SIZES = frozenset({"size", "numel", "nelement", "dim", "ndimension"})
"""Tensor methods whose result is a size or a rank: a number where it is the same for every batch
size (a rank always is)."""
_ATTRIBUTES = frozenset({"ndim", "dtype", "device", "is_cuda", "layout"})
"""Tensor attributes read from the value ("shape" is a size, `_SizedProxy.__getattr__`)."""
BATCHES = (2, 3)
"""The batch sizes each node's value is computed at: a size that differs between them is the
batch's, and stays a node."""


class _SizedProxy(fx.Proxy):
    """A proxy whose sizes are numbers, those of its value on the example input, but for the
    batch's own, which stay traced (`x.view(x.size(0), -1)` runs on any batch)."""

    def __getattr__(self, k: str) -> Any:
        tracer = self.tracer
        if isinstance(tracer, SizedTracer) and (k == "shape" or k in _ATTRIBUTES):
            values = tracer.values.get(self.node)
            if values is not None and isinstance(values[0], torch.Tensor):
                return tracer.size_of(self, "size", (), {}) if k == "shape" else getattr(values[0], k)
        return super().__getattr__(k)

    def __len__(self) -> int:
        tracer = self.tracer
        if not isinstance(tracer, SizedTracer) or self.node not in tracer.values:
            return super().__len__()
        first, second = (len(v) for v in tracer.values[self.node])
        if first != second:
            raise fx.proxy.TraceError("len() of a traced value along the batch axis: the graph would hold one batch size")
        return first


class SizedTracer(Tracer):
    """`Tracer` at one input size: every node also computes its values on examples of that size at
    the batch sizes `BATCHES`, so that the forward's Python reads sizes (and numbers made from
    them) as numbers, but for the batch's. Control flow on a tensor's values, or on the batch
    size, stays untraceable (refused as torch.fx refuses it)."""

    def __init__(self, examples: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.examples = examples
        self.values: dict[fx.Node, tuple[Any, Any]] = {}
        self._placeholders = 0

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any | None = None, proxy_factory_fn: Any = None) -> Any:
        if kind == "placeholder":
            values = self.examples if self._placeholders == 0 else ((args[0] if args else None),) * 2
            self._placeholders += 1
        elif kind == "call_method" and target in _SIZES:
            return self.size_of(args[0], target, args[1:], kwargs)
        else:
            values = tuple(self._run(kind, target, self._value(args, i), self._value(kwargs, i)) for i in (0, 1))
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.values[proxy.node] = values  # type: ignore[assignment]
        return proxy

    def size_of(self, tensor: fx.Proxy, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """`tensor.method(*args)` (a size): its number, or per axis where it is a torch.Size, where
        it is the same at both batch sizes; a node where it is not (the batch's)."""
        first, second = (getattr(v, method)(*self._value(args, i), **self._value(kwargs, i))
                         for i, v in enumerate(self.values[tensor.node]))
        if first == second:
            return first
        if isinstance(first, torch.Size):  # axis by axis: the batch's axis traced, the others numbers
            return tuple(a if a == b else self._node("call_method", "size", (tensor, axis), (a, b))
                         for axis, (a, b) in enumerate(zip(first, second)))
        return self._node("call_method", method, (tensor, *args), (first, second), kwargs)

    def _node(self, kind: str, target: Any, args: tuple[Any, ...], values: tuple[Any, Any],
              kwargs: dict[str, Any] | None = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs or {})
        self.values[proxy.node] = values
        return proxy

    def _run(self, kind: str, target: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        with _untraced():
            if kind == "call_function":
                return target(*a, **kw)
            if kind == "call_method":
                return getattr(a[0], target)(*a[1:], **kw)
            if kind == "call_module":
                return _attribute(self.root, target)(*a, **kw)
            return _attribute(self.root, target)  # get_attr

    def _value(self, tree: Any, i: int) -> Any:
        return tree_map(lambda v: self.values[v.node][i] if isinstance(v, fx.Proxy) else v, tree)


@contextmanager
def _untraced() -> Iterator[None]:
    """nn.Module's own call and attribute lookup, while a value is computed: during a trace they
    are fx's, which record a leaf module's call (and a parameter's read) as a node."""
    from torch.fx import _symbolic_trace as st  # where fx keeps the originals it patches over

    patched = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__, nn.Module.__getattr__ = st._orig_module_call, st._orig_module_getattr  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = patched  # type: ignore[method-assign]


def _attribute(root: nn.Module, target: str) -> Any:
    """The module, parameter, buffer or attribute at `target`, read from the modules' own tables:
    while tracing, nn.Module's attribute lookup is fx's, which makes parameters proxies."""
    value: Any = root
    for part in target.split("."):
        if isinstance(value, nn.Module):
            tables = (value._modules, value._parameters, value._buffers, value.__dict__)
            value = next(t[part] for t in tables if part in t)
        else:
            value = getattr(value, part)
    return value


def sized_trace(model: nn.Module, sample: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                concrete_args: dict[str, Any] | None) -> fx.GraphModule:
    """The graph of `model` traced at input (N, *sample), for any N. Runs the model on random input
    of that shape at the batch sizes `BATCHES` (no gradient); the caller puts it in eval mode."""
    examples = tuple(torch.randn((n, *sample), generator=torch.Generator().manual_seed(n)).to(device, dtype)
                     for n in BATCHES)
    with torch.no_grad():
        return traced(SizedTracer(examples), model, concrete_args)  # type: ignore[arg-type]
