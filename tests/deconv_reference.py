"""The deconvolution methods' independent reference, in plain torch: it shares no code with
passes/deconv*.py (test_zoo_deconv.py's docstring says what it covers and why).

`Rules(method)` is a TorchFunctionMode that catches every rectifier call (nn modules reach it
through their functional call: nn.ReLU → F.relu, nn.ReLU6 → F.hardtanh, nn.SiLU → F.silu,
nn.Hardswish → F.hardswish) and runs it out of place through an autograd.Function whose backward
is the method's rule with the derivative written out by hand (docs/visualize.md), and catches
F.max_pool2d, whose switch takes the documented tie rule: the first input in raster order within
TIE · |max| of a window's maximum.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

TIE = 1e-5  # docs/visualize.md's max-pool tie rule: within TIE · |max| of a window's maximum


def _slope(kind: str, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """f'(x) of each rectifier, by hand."""
    if kind == "relu":
        return (x > 0).to(x.dtype)
    if kind == "hardtanh":
        return ((x > low) & (x < high)).to(x.dtype)
    if kind == "silu":
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))
    if kind == "hardswish":
        return torch.where(x <= -3, 0.0, torch.where(x >= 3, 1.0, x / 3 + 0.5)).to(x.dtype)
    raise AssertionError(kind)


class _Rule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, slope: torch.Tensor, method: str) -> torch.Tensor:
        ctx.method = method
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (slope,) = ctx.saved_tensors
        if ctx.method == "deconvnet":  # Zeiler & Fergus: the signal rectified, the forward ignored
            return g.clamp_min(0), None, None, None
        if ctx.method == "guided":  # Springenberg et al.: rectified and masked by the forward
            return g.clamp_min(0) * slope, None, None, None
        return g * slope, None, None, None


_KINDS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", torch.Tensor.relu: "relu",
          torch.Tensor.relu_: "relu", F.relu6: "hardtanh", F.hardtanh: "hardtanh", F.silu: "silu",
          F.hardswish: "hardswish"}


def _tie_pool(x: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> torch.Tensor:
    """F.max_pool2d's values whose backward goes to the first input in raster order within
    TIE · |max| of each window's maximum: the window's taps read by F.unfold from the input padded
    with -inf (ceil mode's last windows may run past it), the chosen tap gathered, its gradient
    autograd's scatter."""
    values = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    k, d, p = pair(kernel_size), pair(dilation), pair(padding)
    s = k if stride in (None, (), []) else pair(stride)
    n, c, h, w = x.shape
    oh, ow = values.shape[-2:]
    past = [max((o - 1) * s[i] + d[i] * (k[i] - 1) + 1 - size - p[i], 0) for i, (o, size) in enumerate(((oh, h), (ow, w)))]
    sides = (p[1], past[1], p[0], past[0])
    taps = F.unfold(F.pad(x.detach().reshape(n * c, 1, h, w), sides, value=-torch.inf), k, d, 0, s)
    where = F.unfold(F.pad(torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w), sides, value=-1), k, d, 0, s)
    top = values.detach().reshape(n * c, 1, oh * ow)
    near = taps >= top - TIE * top.abs()  # (N·C, k·k, windows), k·k in raster order
    first = torch.where(near, torch.arange(k[0] * k[1])[:, None], k[0] * k[1]).amin(dim=1)
    chosen = where[0].gather(0, first).long()  # (N·C, windows) flat positions in the input
    picked = x.reshape(n * c, h * w).gather(1, chosen).reshape(values.shape)
    return values.detach() + (picked - picked.detach())


class Rules(TorchFunctionMode):
    """Every rectifier call runs out of place through `_Rule`, every max pool through `_tie_pool`;
    `calls` counts them by kind."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method, self.calls = method, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d:  # nn.MaxPool2d's call (these models' only spelling)
            bound = inspect.signature(F.max_pool2d_with_indices).bind(*args, **kwargs)  # its parameters
            bound.apply_defaults()
            assert not bound.arguments["return_indices"], "a pool the reference does not cover"
            self.calls["max_pool2d"] = self.calls.get("max_pool2d", 0) + 1
            a = bound.arguments
            return _tie_pool(a["input"], a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
        kind = _KINDS.get(func)
        if kind is None:
            return func(*args, **kwargs)
        if func in (F.relu6, F.hardtanh):
            bound = inspect.signature(func).bind(*args, **kwargs)
            bound.apply_defaults()
            low, high = (0.0, 6.0) if func is F.relu6 else (bound.arguments["min_val"], bound.arguments["max_val"])
        else:
            low, high = 0.0, 0.0
        x = args[0]
        y = {"relu": lambda: x.clamp_min(0), "hardtanh": lambda: x.clamp(low, high), "silu": lambda: F.silu(x),
             "hardswish": lambda: F.hardswish(x)}[kind]()
        self.calls[kind] = self.calls.get(kind, 0) + 1
        return _Rule.apply(x, y.detach(), _slope(kind, x.detach(), low, high), self.method)
