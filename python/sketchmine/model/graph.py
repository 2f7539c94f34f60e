"""The model's torch.fx graph as the analyses read it: traced once, shapes on every node
(computed on the meta device where possible), and the node holding each module's output.
Receptive fields (receptive_field.py), window coupling (coupling.py) and the cut models of
visualize (cut.py) all start from it.
"""
from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

import torch
from torch import fx, nn
from torch.nn.parameter import is_lazy

from sketchmine.errors import SketchmineError, whole_number
from sketchmine.model.meta import meta_call
from sketchmine.model.modes import eval_mode, input_dtype
from sketchmine.model.tracers import Tracer, sized_trace, traced


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# torch.nn leaf modules whose output has the channels of their input (norms, activations, pooling, ...)
_KEEP_CHANNELS = tuple(f"torch.nn.modules.{m}" for m in (
    "activation", "batchnorm", "instancenorm", "normalization", "pooling", "padding", "dropout", "flatten",
    "upsampling", "channelshuffle", "linear"))  # linear: nn.Identity (nn.Linear stops the walk below)
# functions that mix features: the input's channels end there
_MIXING = {torch.nn.functional.linear, torch.matmul, torch.bmm, torch.einsum, torch.nn.functional.embedding,
           operator.matmul, torch.nn.functional.multi_head_attention_forward}
_FUNCTIONAL_CONVS = {torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d,
                     torch.conv1d, torch.conv2d, torch.conv3d}


def module_input_channels(model: nn.Module, default: int = 3, size: tuple[int, ...] | None = None) -> int:
    """Channel count a torch model takes: in_channels of the first convolution its input reaches
    through ops that keep channels (a GRU's hidden states fed to a Conv1d over time are not its
    input), else `default` (the input shape a graph analysis or a probe gives the model).
    `size`: one input's shape without the batch and channel axes, (*leading, H, W), where the
    caller knows it: a model torch.fx follows only at a size (a forward that pads by its input's
    size) is traced there at each channel count one of its convs takes, and the count whose graph
    reaches a conv taking it is the answer. Else, for a model torch.fx cannot trace, its first
    convolution in module order, which may be a side branch's, not the one the input reaches."""
    try:
        found = _input_conv_channels(trace(model, "to find its input channels"))
    except SketchmineError:
        found = _sized_input_channels(model, size) if size else 0
    if found == 0:  # no graph, or a conv reached whose channels it does not tell: the first conv defined
        return next((m.in_channels for m in model.modules() if isinstance(m, _CONVS)), default)
    return default if found is None else found


def _sized_input_channels(model: nn.Module, size: tuple[int, ...]) -> int:
    """The channel count, among those the model's convs take, at which the model traces at `size`
    and its input reaches a conv taking that many; 0 when none does. A wrong count fails in the
    stem conv's forward, so each try costs a forward up to there."""
    tried: set[int] = set()
    for conv in model.modules():
        c = conv.in_channels if isinstance(conv, _CONVS) else 0
        if c in tried or c == 0:
            continue
        tried.add(c)
        try:
            gm = trace(model, "to find its input channels", (*size[:-2], c, *size[-2:]))
        except SketchmineError:
            continue
        if _input_conv_channels(gm) == c:
            return c
    return 0


def _input_conv_channels(gm: fx.GraphModule) -> int | None:
    """in_channels of the first conv (module or functional, in graph order) that the graph's
    first input reaches without passing a module or function that mixes or remakes channels
    (Linear, a recurrent layer, matmul, ...); None when no conv is reached that way or the first
    is 1-D and takes neither 1 nor 3 channels (an image reaches it reshaped, its rows its channels:
    (N·T, 28, 28) into a Conv1d(28, ...); a Conv1d(1, ...) over a grey image flattened to one
    signal takes its channel), 0 when the first conv reached does not tell its channels."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    modules = dict(gm.named_modules())
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    seen, todo, convs = set(inputs[:1]), list(inputs[:1]), dict[fx.Node, int | None]()
    while todo:
        for user in todo.pop().users:
            if user in seen:
                continue
            seen.add(user)
            mod = modules.get(str(user.target)) if user.op == "call_module" else None
            if isinstance(mod, _CONVS):
                convs[user] = mod.in_channels
            elif user.op == "call_function" and user.target in _FUNCTIONAL_CONVS:
                convs[user] = _functional_conv_channels(gm, user)
            elif mod is not None and type(mod).__module__ in _KEEP_CHANNELS and not isinstance(
                    mod, (nn.Linear, nn.Bilinear, nn.MultiheadAttention)):
                todo.append(user)
            elif user.op in ("call_function", "call_method") and user.target not in _MIXING:
                todo.append(user)
    first = min(convs, key=order.__getitem__, default=None)
    if first is None:
        return None
    one_d = first.target in (torch.nn.functional.conv1d, torch.conv1d) or isinstance(
        modules.get(str(first.target)), nn.Conv1d)
    # an image reaches a 1-D conv reshaped, its rows perhaps the conv's channels: an image has 1 or 3
    # channels (Preprocessing), so another count is not the image's
    if one_d and convs[first] not in (1, 3):
        return None
    return convs[first] or 0


def _functional_conv_channels(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """A functional conv's input channels (its weight's dim 1 times its groups), when its weight
    and groups are the model's own (a get_attr) and a constant."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or not isinstance(groups, int):
        # a weight the forward computes (timm's StdConv2d standardises it): the conv module it runs in
        owner = next(reversed(node.meta.get("nn_module_stack") or {}), None)
        module = gm.get_submodule(owner) if isinstance(owner, str) and owner else None
        return module.in_channels if isinstance(module, _CONVS) else None
    owner, _, attr = str(weight.target).rpartition(".")
    w = getattr(gm.get_submodule(owner), attr, None)
    return int(w.shape[1]) * groups if isinstance(w, torch.Tensor) and w.ndim > 1 else None


# Within `shared_traces()`: (module id, sample shape or None) → (module, its graph or the reason it has none)
_SHARED: ContextVar[dict[tuple[int, tuple[int, ...] | None], tuple[nn.Module, fx.GraphModule | str]] | None] = ContextVar("traces", default=None)


@contextmanager
def shared_traces() -> Iterator[None]:
    """Within one call that reads a model's graph more than once (`mine`: receptive fields, and
    what follows each mined layer), trace it once (tens of ms on ResNet-50). Scoped to the call,
    not cached for good: a caller may change its model between calls. Readers must not change
    the graph's structure (node meta, such as shapes, is rewritten by each that needs it). Inside
    another scope it is that scope (a decorated `mine` reads the input channels before its probe)."""
    if _SHARED.get() is not None:
        yield
        return
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def trace(model: nn.Module, purpose: str, sample: tuple[int, ...] | None = None) -> fx.GraphModule:
    """The model's torch.fx graph (sharing its parameters), or an error naming the model, what
    the graph was for, and the tracer's first line. Traced in eval mode, so that `self.training`
    branches (an auxiliary head) are the ones the passes run; the caller's flags put back. The
    forward's arguments after the image keep their defaults (`model(x)`, as the passes call it):
    traced as inputs, `if attn_mask is not None` took the branch a plain call does not (timm's ViT).
    `sample`: the shape of one input (without the batch); where the symbolic trace fails, the graph
    is traced at that size (`tracers.sized_trace`: a forward that pads by its input's size) and holds
    for inputs of that size only (`meta["sample"]`)."""
    got = _cached(model, None, _trace)
    if isinstance(got, str) and sample is not None:
        sized = _cached(model, tuple(sample), lambda m: sized_trace(m, tuple(sample), input_dtype(m), _device(m),
                                                                   forward_defaults(m) or None))
        if not isinstance(sized, str):
            sized.meta["sample"] = tuple(sample)
            return sized
        got = f"{got}; traced at {'×'.join(map(str, sample))}: {sized}"
    if isinstance(got, str):
        raise SketchmineError(f"cannot trace {type(model).__name__} with torch.fx {purpose}: {got}")
    return got


def _cached(model: nn.Module, sample: tuple[int, ...] | None, how: Any) -> fx.GraphModule | str:
    """`how(model)` in eval mode, or the first line of its error, once per `shared_traces` scope."""
    shared = _SHARED.get()
    key = (id(model), sample)
    got = shared.get(key) if shared is not None else None
    if got is None or got[0] is not model:
        try:
            with eval_mode(model):
                made: fx.GraphModule | str = how(model)
        except Exception as exc:
            made = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        got = (model, made)
        if shared is not None:
            shared[key] = got
    return got[1]


def _device(model: nn.Module) -> torch.device:
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))


def _trace(model: nn.Module) -> fx.GraphModule:
    """`fx.symbolic_trace` of `model` with `tracers.Tracer`."""
    return traced(Tracer(), model, forward_defaults(model) or None)


def forward_defaults(model: nn.Module) -> dict[str, Any]:
    """The forward's parameters after the first that have a plain default (None, a bool, a number,
    a string), with it: the `concrete_args` that trace the forward as `model(x)` runs it."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    plain = (type(None), bool, int, float, str)
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            and isinstance(p.default, plain) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def module_outputs(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """The node holding each module's output in a traced graph, by qualified name.

    symbolic_trace inlines every module that is not a torch.nn leaf (a ResNet block, an
    Inception block, a Sequential), so such a module has no node of its own; its nodes carry
    it in their ``nn_module_stack``, and its output is the last of them that a node outside
    the call uses. A leaf module's output is its call node, an empty Sequential's the node it
    was given (`_Tracer`). Modules called more than once
    per forward are left out (their output is ambiguous; the miner refuses them too).
    """
    calls: dict[str, set[str]] = {}
    last: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        for key, val in (node.meta.get("nn_module_stack") or {}).items():
            name = val[0] if isinstance(val, tuple) else str(key).split("@")[0]
            calls.setdefault(name, set()).add(key)
            if any(key not in (u.meta.get("nn_module_stack") or {}) for u in node.users):
                last[key] = node
    found = {name: last[next(iter(keys))] for name, keys in calls.items() if len(keys) == 1 and next(iter(keys)) in last}
    return {**gm.meta.get("identities", {}), **found}


def propagate_shapes(gm: fx.GraphModule, model: nn.Module, h: int, w: int, leading: tuple[int, ...] = (),
                      channels: int | None = None, partial: bool = False) -> None:
    """Tensor shapes on every node (adaptive pooling needs its input grid), computed without
    arithmetic where possible: on the meta device (parameters swapped for meta copies, ~1 ms
    for ResNet-50's 170 nodes), else with fake tensors, else a real one-image forward if an op
    has neither a meta nor a fake kernel. The caller's model is never changed (but for the eval
    mode it is put in and restored). `partial`: an op that cannot take its input leaves the nodes
    from it on without shapes (a head mining never runs, logits=False), where it raises."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    check_leading(leading)
    if channels is not None:  # 0 or False would be read as "not given", 1.0 as 1
        whole_number(channels, "channels")
    c = channels or module_input_channels(model, size=(*leading, h, w))
    shape = (1, *leading, c, h, w)
    dtype = input_dtype(model)  # a half or double model refuses a float input
    lazy = any(is_lazy(t) for t in (*model.parameters(), *model.buffers()))  # made by their first real call
    try:
        with eval_mode(model), torch.no_grad(), _quiet_shape_prop():  # a frozen BatchNorm stays frozen
            try:
                if lazy:
                    raise RuntimeError("an uninitialised lazy module")
                _meta_shapes(gm, shape, dtype)
            except Exception:
                try:
                    if lazy:
                        raise RuntimeError("an uninitialised lazy module")
                    ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(
                        torch.zeros(shape, dtype=dtype))
                except Exception:
                    ShapeProp(gm).propagate(torch.zeros(shape, dtype=dtype))
    except Exception as exc:
        if partial and any("tensor_meta" in node.meta for node in gm.graph.nodes if node.op != "placeholder"):
            return
        if str(exc).startswith("ShapeProp error") and exc.__cause__ is not None:  # the op's own words
            exc = exc.__cause__  # type: ignore[assignment]
        raise SketchmineError(f"{type(model).__name__} cannot take a {'×'.join(map(str, shape[1:]))} input: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def check_leading(leading: Any) -> None:
    """`leading` (the dims before an image's channels) is a tuple of positive ints, or a clear error."""
    if not isinstance(leading, (tuple, list)) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                         for n in leading):
        raise SketchmineError(f"leading must be a tuple of positive ints (e.g. (T,) for T frames), got {leading!r}")


@contextmanager
def _quiet_shape_prop() -> Iterator[None]:
    """torch's ShapeProp prints a failing node's traceback before it raises, and its fake tensors
    log a failing meta kernel's traceback at ERROR (a 1x4x4 input to a model that pools it away:
    over 100 lines on stderr): each failed attempt above (the meta one fails for ops without a
    meta kernel, then works with fake tensors) printed one, and the last is said in one line anyway."""
    from torch.fx.passes import shape_prop

    was = shape_prop.traceback
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    was_disabled, fake_log.disabled = fake_log.disabled, True
    shape_prop.traceback = SimpleNamespace(print_exc=lambda *args, **kwargs: None)  # type: ignore[assignment]
    try:
        yield
    finally:
        shape_prop.traceback = was
        fake_log.disabled = was_disabled


class _ShapeRun(nn.Module):
    """Runs ShapeProp over a traced graph, so that functional_call can swap its tensors."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, x: torch.Tensor) -> Any:
        from torch.fx.passes.shape_prop import ShapeProp

        return ShapeProp(self.gm).propagate(x)


def _meta_shapes(gm: fx.GraphModule, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """ShapeProp on meta tensors: every parameter and buffer replaced, for this call only, by a
    meta tensor of its shape (no data copied), and a meta input."""
    meta_call(_ShapeRun(gm), torch.zeros(shape, dtype=dtype, device="meta"))
