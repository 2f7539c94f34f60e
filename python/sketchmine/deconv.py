"""Input-space visualisation of single units: deconvnet, guided backprop, gradient.

One function; the methods differ only in the rule applied where the signal passes back
through a ReLU (Springenberg et al. 2015; Zeiler & Fergus 2014):

    gradient   grad_in = grad_out · [x > 0]
    deconvnet  grad_in = relu(grad_out)                (max-pool switches and transposed
    guided     grad_in = relu(grad_out) · [x > 0]       filters come from autograd)

The model is traced with torch.fx into a new module whose ReLUs (modules, functions and
in-place variants alike) call a rule-aware autograd function; the caller's model is
never changed and no hook outlives the call. Batched: one unit per image, one forward
and one backward for the whole batch.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from .errors import SketchmineError

METHODS = ("deconvnet", "guided", "gradient")


class _RuleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, method: str) -> torch.Tensor:
        ctx.method = method
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        if ctx.method == "gradient":
            return grad * (x > 0), None
        if ctx.method == "deconvnet":
            return grad.clamp_min(0), None
        return grad.clamp_min(0) * (x > 0), None


def _rule_relu(x: torch.Tensor, method: str) -> torch.Tensor:
    return _RuleReLU.apply(x, method)


_RELU_FUNCS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_}


def _with_rule(model: nn.Module, method: str) -> fx.GraphModule:
    """A traced copy of the graph (parameters shared) with every ReLU swapped for the rule."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        raise SketchmineError(f"cannot trace {type(model).__name__} with torch.fx for deconvolution: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_relu = (node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)) or \
                  (node.op == "call_function" and node.target in _RELU_FUNCS) or \
                  (node.op == "call_method" and node.target in ("relu", "relu_"))
        if is_relu:
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(_rule_relu, (node.args[0], method))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def deconvolve(model: nn.Module, images: torch.Tensor, layer: str, channels, yx=None,
               method: str = "deconvnet") -> torch.Tensor:
    """Visualise one unit per image in input space.

    images (N, C, H, W); layer a qualified module name; channels (N,) the unit's channel per
    image; yx (N, 2) its grid position (ignored for layers without a grid).
    Returns (N, C, H, W) float32: the signal the unit sends back to the input.
    """
    if method not in METHODS:
        raise SketchmineError(f"unknown deconvolution method {method!r}; expected one of {', '.join(METHODS)}")
    if layer not in dict(model.named_modules()):
        raise SketchmineError(f"unknown layer {layer!r} for deconvolution")
    gm = _with_rule(model, method)
    target = gm.get_submodule(layer) if layer in dict(gm.named_modules()) else None
    if target is None:
        raise SketchmineError(f"layer {layer!r} does not appear in the traced graph (is it called in forward?)")
    captured: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda m, i, o: captured.append(o))
    was_training = model.training
    gm.eval()
    try:
        x = images.detach().clone().float().requires_grad_(True)
        with torch.enable_grad():
            gm(x)
            if len(captured) != 1:
                raise SketchmineError(f"layer {layer!r} is called {len(captured)} times per forward pass")
            out = captured[0]
            n = torch.arange(len(x), device=out.device)
            ch = torch.as_tensor(channels, device=out.device).long()
            if out.ndim == 4:
                pos = torch.as_tensor(yx, device=out.device).long()
                unit = out[n, ch, pos[:, 0], pos[:, 1]]
            else:
                unit = out.reshape(len(x), out.shape[1], -1)[n, ch, 0]
            (grad,) = torch.autograd.grad(unit.sum(), x)
    finally:
        handle.remove()
        model.train(was_training)
    return grad.detach()
