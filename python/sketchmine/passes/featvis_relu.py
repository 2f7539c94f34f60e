"""Redirected ReLU gradients for feature visualisation (lucid's `redirected_relu_grad`, Olah et
al. 2017): a unit read at or after a ReLU that is 0 where the objective reads it gives the input
no gradient, so plain ascent never moves its image from the starting noise. Where a ReLU's
ordinary gradient is zero for a whole batch element (one unit), its backward passes the
incoming gradient through the negative inputs too, wherever it pushes them up; an element
whose ordinary gradient is not zero gets exactly the ordinary gradient. So a unit that is
alive anywhere on its path is optimised as without the redirect, and a dead one is pushed
until it comes alive, after which the ordinary gradient takes over.

Applied during the optimisation's forward through a TorchFunctionMode, so ReLU modules,
`F.relu`, `torch.relu` and their in-place spellings are all caught, with no per-model code
and without changing the caller's module. The in-place spellings stay in place (`x.relu_()`
whose result is discarded rectifies `x`, as without the redirect).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_RELUS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})
_IN_PLACE = frozenset({F.relu_, torch.relu_, torch.Tensor.relu_})


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward redirects (redirect_dead). It saves its output, as torch's own ReLU
    does (y > 0 exactly where x > 0), so the in-place spelling rectifies x itself."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, in_place: bool) -> torch.Tensor:
        if in_place:
            ctx.mark_dirty(x)
            y = x.clamp_min_(0)
        else:
            y = x.clamp_min(0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        out = torch.ops.aten.threshold_backward(grad, y, 0)  # torch's own ReLU gradient (0, not NaN, at x <= 0)
        if grad.ndim < 2:  # no batch axis: the tensor is one element's
            one = (1, -1)
            return redirect_dead(out.reshape(one), grad.reshape(one), y.reshape(one), gather=not grad.is_cuda
                                 ).reshape(grad.shape), None
        return redirect_dead(out, grad, y, gather=not grad.is_cuda), None


def redirect_dead(out: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, gather: bool) -> torch.Tensor:
    """`out` (the ordinary ReLU gradient, batch first) with each all-zero element's rows replaced
    by the redirected rule: the incoming gradient where x > 0 or where it pushes x up (it ascends
    the objective); `x` may be the ReLU's input or output (positive at the same places).
    gather: find the dead elements on the host and build the rule for them only (the CPU: no
    full-size temporaries); else build it whole and select per element, with no host sync (a
    GPU would stall at each ReLU of the backward)."""
    flat = out.flatten(1)  # a row is dead when its gradient is all zero (amax/amin: one fast pass each)
    dead = (flat.amax(1) == 0) & (flat.amin(1) == 0)
    if not gather:
        return torch.where(dead.view(-1, *[1] * (out.ndim - 1)), _redirected(grad, x), out)
    rows = torch.nonzero(dead).squeeze(1)
    if len(rows):
        out.index_copy_(0, rows, _redirected(grad.index_select(0, rows), x.index_select(0, rows)))
    return out


def _redirected(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The redirected rule: the incoming gradient where x > 0 or where it pushes x up."""
    return grad.masked_fill(~((x > 0) | (grad > 0)), 0)


class redirected_relus(TorchFunctionMode):
    """Within it, every ReLU of a forward that needs a gradient backpropagates redirected."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELUS and args and isinstance(args[0], torch.Tensor) and torch.is_grad_enabled() \
                and args[0].requires_grad:
            in_place = func in _IN_PLACE or kwargs.get("inplace") is True or (len(args) > 1 and args[1] is True)
            return _RedirectedReLU.apply(args[0], in_place)
        return func(*args, **kwargs)
