"""Max-pool switches with a tie rule of sketchmine's own, for every deconvolution method.

Autograd sends a max pool's backward to the input its kernel found largest. Over a sketch's
blank background the inputs of a window are equal, exactly in one computation and an ulp apart
in another (a conv rounds otherwise for a window of another size or a batch of another size),
so the switch, and the picture, followed the conv's last bit. Here the backward goes to the first
input in raster order among those within `TIE_TOLERANCE` · |max| of the window's maximum: the
same input on a window of the image and on the whole image wherever rounding moves tied inputs by
less than that (a window whose maximum is itself a conv's cancellation can still differ; see
docs/visualize.md). A window with one input clearly largest keeps autograd's switch; the forward values (and the indices a `return_indices` call
returns) are torch's own.

Covered: `nn.MaxPool2d`, `nn.AdaptiveMaxPool2d`, `F.max_pool2d`, `torch.max_pool2d`,
`F.max_pool2d_with_indices`, `F.adaptive_max_pool2d` and `F.adaptive_max_pool2d_with_indices`,
with or without `return_indices`. The stand-ins subclass the pools they replace, so what reads
the graph for ops coupling positions (model/coupling.py) still finds an adaptive pool.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.utils import _pair

# relative to |max|: above the spread rounding gives exactly tied inputs in another batch, layout or
# window (≤ 8.4e-6 measured), below the gaps of distinct values that 1e-4 met (docs/visualize.md)
TIE_TOLERANCE = 1e-5

_MAX = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_ADAPTIVE = ("input", "output_size", "return_indices")
# a call: its parameters by position, whether it is adaptive, whether it returns the indices (None:
# as its return_indices argument says)
_POOL_FUNCS: dict[Any, tuple[tuple[str, ...], bool, bool | None]] = {
    F.max_pool2d: (_MAX, False, None), torch.max_pool2d: (_MAX[:-1], False, False),
    F.max_pool2d_with_indices: (_MAX, False, True), F.adaptive_max_pool2d: (_ADAPTIVE, True, None),
    F.adaptive_max_pool2d_with_indices: (_ADAPTIVE, True, True)}


class _Switched(torch.autograd.Function):
    """A max pool whose backward sends the signal to the tie rule's switches. geometry: ("window",
    kernel, stride, padding, dilation, ceil_mode) or ("adaptive", output_size). Returns torch's
    values and indices; the backward is torch's own pool backward given the rule's indices, which
    `is_grads_batched` vectorises."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, geometry: tuple):
        if geometry[0] == "window":
            kernel, step, pad, dil, ceil = geometry[1:]
            y, found = F.max_pool2d(x, kernel, step, pad, dil, ceil_mode=ceil, return_indices=True)
            switches = _window_switches(x, y, found, kernel, step, pad, dil)
        else:
            y, found = F.adaptive_max_pool2d(x, geometry[1], return_indices=True)
            (h, w), (oh, ow) = x.shape[-2:], y.shape[-2:]
            switches = tie_switches(x, y, found, _adaptive_axis(h, oh), _adaptive_axis(w, ow))
        ctx.geometry = geometry
        ctx.save_for_backward(x, switches)
        ctx.mark_non_differentiable(found)
        return y, found

    @staticmethod
    def backward(ctx, g: torch.Tensor, _unused: torch.Tensor):
        x, switches = ctx.saved_tensors
        if ctx.geometry[0] == "window":
            kernel, step, pad, dil, ceil = ctx.geometry[1:]
            return torch.ops.aten.max_pool2d_with_indices_backward(g, x, kernel, step, pad, dil, ceil, switches), None
        return torch.ops.aten.adaptive_max_pool2d_backward(g, x, switches), None


def _window_axis(size: int, out: int, kernel: int, stride: int, padding: int, dilation: int) -> torch.Tensor:
    """(out, kernel) input coordinate of each window's taps along one axis, -1 off the input."""
    at = torch.arange(out)[:, None] * stride - padding + torch.arange(kernel)[None, :] * dilation
    return at.masked_fill((at < 0) | (at >= size), -1)


def _adaptive_axis(size: int, out: int) -> torch.Tensor:
    """(out, longest window) coordinates of an adaptive pool's windows along one axis (torch's
    floor(i·size/out) to ceil((i+1)·size/out)), -1 past a shorter window's end."""
    starts = [(i * size) // out for i in range(out)]
    ends = [math.ceil((i + 1) * size / out) for i in range(out)]
    longest = max(e - s for s, e in zip(starts, ends))
    at = torch.tensor(starts)[:, None] + torch.arange(longest)[None, :]
    return at.masked_fill(at >= torch.tensor(ends)[:, None], -1)


def tie_switches(x: torch.Tensor, top: torch.Tensor, found: torch.Tensor, rows: torch.Tensor,
                 cols: torch.Tensor, tolerance: float | None = None) -> torch.Tensor:
    """Each window's switch (flat into the H·W plane, as torch's indices): the first input in
    raster order within tolerance·|max| of the maximum `top`. rows (OH, Lh), cols (OW, Lw): the
    windows' taps (-1 off the input); `found`: torch's indices, kept where no input qualifies (NaN).
    tolerance: `TIE_TOLERANCE` unless given."""
    tolerance = TIE_TOLERANCE if tolerance is None else tolerance
    h, w = x.shape[-2:]
    oh, ow = top.shape[-2:]
    planes, top = x.detach().reshape(-1, h, w), top.detach().reshape(-1, oh, ow)
    rows, cols = rows.to(x.device), cols.to(x.device)
    taps = planes[:, rows.clamp_min(0)[:, :, None, None], cols.clamp_min(0)[None, None]]  # (P, OH, Lh, OW, Lw)
    on = (rows >= 0)[:, :, None, None] & (cols >= 0)[None, None]
    near = on & (taps >= (top - tolerance * top.abs())[:, :, None, :, None])
    near = near.permute(0, 1, 3, 2, 4).flatten(3)  # (P, OH, OW, Lh·Lw): raster order within a window
    first = near.to(torch.uint8).argmax(-1)  # the first of the largest
    lw = cols.shape[1]
    y = rows[torch.arange(oh, device=x.device)[:, None], first // lw]
    xx = cols[torch.arange(ow, device=x.device)[None, :], first % lw]
    return torch.where(near.any(-1), y * w + xx, found.reshape(y.shape)).reshape(found.shape)


def _window_switches(x: torch.Tensor, top: torch.Tensor, found: torch.Tensor, kernel, step, pad, dil) -> torch.Tensor:
    """`tie_switches` for a max pool's regular windows, by a strided view of the input per kernel
    tap (no gather: a deconvolution's pools cost about what autograd's do): each tap, last to
    first in raster order, takes the window where it is within the tolerance of the maximum."""
    (h, w), (oh, ow) = x.shape[-2:], top.shape[-2:]
    reach = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip((oh, ow), step, dil, kernel)]
    past = [max(r - n - p, 0) for r, n, p in zip(reach, (h, w), pad)]  # ceil mode's last windows
    padded = x.detach()
    if any(pad) or any(past):
        padded = F.pad(padded, (pad[1], past[1], pad[0], past[0]), value=-math.inf)
    top = top.detach()
    floor = top - TIE_TOLERANCE * top.abs()
    rows = torch.arange(oh, device=x.device) * step[0] - pad[0]
    cols = torch.arange(ow, device=x.device) * step[1] - pad[1]
    switches = found
    for ky in reversed(range(kernel[0])):
        for kx in reversed(range(kernel[1])):
            y0, x0 = ky * dil[0], kx * dil[1]
            tap = padded[..., y0:y0 + reach[0] - (kernel[0] - 1) * dil[0]:step[0],
                         x0:x0 + reach[1] - (kernel[1] - 1) * dil[1]:step[1]]
            at = (rows + y0)[:, None] * w + (cols + x0)[None, :]
            switches = torch.where(tap >= floor, at, switches)
    return switches


def _max_pool(x: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool, indices: bool):
    """F.max_pool2d's values with the tie rule's switches (torch's indices returned, if asked)."""
    kernel, dil, pad = _pair(kernel_size), _pair(dilation), _pair(padding)
    step = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _pair(stride)
    out, found = _Switched.apply(x, ("window", kernel, step, pad, dil, bool(ceil_mode)))
    return (out, found) if indices else out


def _adaptive_max_pool(x: torch.Tensor, output_size, indices: bool):
    """F.adaptive_max_pool2d's values with the tie rule's switches."""
    out, found = _Switched.apply(x, ("adaptive", output_size))
    return (out, found) if indices else out


class _RuleMaxPool2d(nn.MaxPool2d):
    """A max pool (module or call) with the tie rule; `given`: the call's arguments that are
    computed at run time (traced nodes), in place of the attributes."""

    def forward(self, input: torch.Tensor, **given: Any):  # torch's name for it (mypy: the pool's own signature)
        p = {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
             "dilation": self.dilation, "ceil_mode": self.ceil_mode, "return_indices": self.return_indices} | given
        return _max_pool(input, p["kernel_size"], p["stride"], p["padding"], p["dilation"], bool(p["ceil_mode"]),
                         bool(p["return_indices"]))


class _RuleAdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """An adaptive max pool (module or call) with the tie rule; `given` as `_RuleMaxPool2d`'s."""

    def forward(self, input: torch.Tensor, **given: Any):  # torch's name for it (mypy: the pool's own signature)
        p = {"output_size": self.output_size, "return_indices": self.return_indices} | given
        return _adaptive_max_pool(input, p["output_size"], bool(p["return_indices"]))


def pool_rule(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[nn.Module, dict[str, Any]] | None:
    """The tie-rule stand-in for a max pool node (a module or a call), with the call's arguments
    that are traced values (for the stand-in's forward); None for any other node."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if type(m) is nn.MaxPool2d:
            return _RuleMaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode), {}
        if type(m) is nn.AdaptiveMaxPool2d:
            return _RuleAdaptiveMaxPool2d(m.output_size, m.return_indices), {}
        return None
    if node.op != "call_function" or node.target not in _POOL_FUNCS:
        return None
    names, adaptive, returns = _POOL_FUNCS[node.target]
    given = dict(zip(names, node.args)) | dict(node.kwargs)
    given.pop("input", None)
    if returns is not None:  # the call's own choice, whatever its return_indices says
        given["return_indices"] = returns
    module: nn.Module = _RuleAdaptiveMaxPool2d(1) if adaptive else _RuleMaxPool2d(1)
    defaults = {"return_indices": False} | (
        {} if adaptive else {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False})
    for key, value in (defaults | given).items():  # a traced value is given to forward instead
        if not isinstance(value, fx.Node):
            setattr(module, key, value)
    return module, {k: v for k, v in given.items() if isinstance(v, fx.Node)}
