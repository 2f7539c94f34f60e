"""A module called on the meta device: its output's shapes without arithmetic or memory, for
the shape probe before mining and the graph's shape propagation.

torch's meta kernel of a matrix product (a linear layer's addmm, a recurrent layer's inside)
sits behind a wrapper that imports torch._dynamo on its first call: 1.5 s of every short
`sketchmine mine` or `visualize` of a model whose code does not import torchvision (which
imports it anyway). The output shapes of a linear layer and of a GRU, LSTM or RNN are
computed here instead; anything else, and any such call that is not the plain case (a packed
sequence, say), goes to torch's own kernel. A TorchFunctionMode, not a TorchDispatchMode:
entering a dispatch mode imports torch._dynamo too.
"""
from __future__ import annotations

from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode


def meta_call(module: nn.Module, *inputs: Any) -> Any:
    """`module(*inputs)` with every parameter and buffer replaced, for this call only, by a
    meta tensor of its shape (no data copied) and the inputs moved to the meta device. Each module's
    tensors once, a tensor shared by two modules (tied weights) swapped in both; weights untied: for
    a module registered under two names (CoaT's shared position encoding), tying put the meta tensor
    back in the caller's module as the other name's original."""
    tensors: dict[str, torch.Tensor] = {}
    metas: dict[int, torch.Tensor] = {}
    seen: set[tuple[int, str]] = set()
    for prefix, mod in module.named_modules(remove_duplicate=False):  # each module's own, once: a shared
        for key, t in [*mod._parameters.items(), *mod._buffers.items()]:  # tensor in every module holding it
            if t is not None and is_lazy(t):  # a lazy module would be made of meta
                raise RuntimeError(f"{prefix or type(module).__name__} is not initialised: a real forward makes it")
            if t is not None and (id(mod), key) not in seen:
                seen.add((id(mod), key))
                tensors[f"{prefix}.{key}" if prefix else key] = metas.setdefault(id(t), t.to("meta"))
    # tensors a forward pre-hook keeps as plain attributes (the old weight_norm's `weight`, computed
    # from its parameters): put back too, or they stay meta until the next real forward
    kept = [(mod, key, v) for mod in module.modules() for key, v in vars(mod).items() if isinstance(v, torch.Tensor)]
    args = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    try:
        with _MetaShapes():
            return torch.func.functional_call(module, tensors, args, tie_weights=False)
    finally:
        for mod, key, v in kept:
            setattr(mod, key, v)


def linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, ...] | None:
    """F.linear's output shape, or None where the call is not the plain one (torch then
    decides); a mismatch raises torch's own CPU error."""
    if x.dim() < 2 or weight.dim() != 2 or x.dtype != weight.dtype:
        return None
    if x.shape[-1] != weight.shape[1]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({x.shape[:-1].numel()}x{x.shape[-1]} and "
                           f"{weight.shape[1]}x{weight.shape[0]})")
    if bias is not None and (tuple(bias.shape) not in ((weight.shape[0],), ()) or bias.dtype != x.dtype):
        return None
    return (*x.shape[:-1], weight.shape[0])


_RECURRENT = {torch._VF.gru: False, torch._VF.rnn_tanh: False, torch._VF.rnn_relu: False, torch._VF.lstm: True}
"""torch's recurrent kernels, as nn.GRU/LSTM/RNN call them (True: the LSTM, whose state is a pair)."""


def recurrent_shapes(lstm: bool, args: tuple[Any, ...]) -> list[tuple[int, ...]] | None:
    """The output shapes of a recurrent kernel called as nn.GRU/LSTM/RNN call it on a padded
    batch, `(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)`: the output (its features the direction count times the state's), then
    each state as given; None for any other call (a packed sequence's batch sizes second)."""
    if len(args) != 9 or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
        return None
    states = list(args[1]) if lstm and isinstance(args[1], (tuple, list)) else [args[1]]
    if len(states) != (2 if lstm else 1) or not all(isinstance(h, torch.Tensor) and h.dim() == 3 and
                                                   h.is_floating_point() for h in states):
        return None
    directions = 2 if args[7] else 1
    return [(*args[0].shape[:-1], directions * states[0].shape[-1]), *(tuple(h.shape) for h in states)]


class _MetaShapes(TorchFunctionMode):
    """Answers the calls above on meta tensors; passes every other call on."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            given = {**dict(zip(("input", "weight", "bias"), args)), **kwargs}
            x, weight, bias = given.get("input"), given.get("weight"), given.get("bias")
            if _on_meta(x) and _on_meta(weight) and (bias is None or _on_meta(bias)):
                shape = linear_shape(x, weight, bias)
                if shape is not None:
                    return x.new_empty(shape)
        elif func in _RECURRENT and not kwargs and _on_meta(args[0]):
            shapes = recurrent_shapes(_RECURRENT[func], args)
            if shapes is not None:
                return tuple(args[0].new_empty(shape) for shape in shapes)
        return func(*args, **kwargs)


def _on_meta(t: object) -> TypeGuard[torch.Tensor]:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"
