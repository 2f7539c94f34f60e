"""Which ops make a unit's value depend on more than its receptive field: the input's size
(adaptive pooling, resampling, a pad that crops the border) or statistics over positions
(GroupNorm, LayerNorm, batch statistics, softmax or reductions along H or W). A layer behind one
computes something else on a window of the image, so its deconvolutions are made on the whole
image (passes/deconv.py).
"""
from __future__ import annotations

import inspect

import torch
from torch import fx, nn

# ops whose value at a position depends on the input's size or on positions beyond a kernel
_RESIZING_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample)
_STATISTICS_MODULES = (nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
_F = torch.nn.functional
_COUPLED_FUNCS = {_F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d, _F.adaptive_avg_pool3d, _F.adaptive_max_pool1d,
                  _F.adaptive_max_pool2d, _F.adaptive_max_pool3d, torch.adaptive_avg_pool1d,
                  torch.adaptive_max_pool1d, _F.interpolate, _F.upsample, _F.upsample_nearest,
                  _F.upsample_bilinear, _F.grid_sample, _F.group_norm, _F.layer_norm, _F.instance_norm,
                  _F.rms_norm, torch.group_norm, torch.layer_norm, torch.instance_norm}
# along `dim`: over positions unless that is the channels (dim 1)
_DIM_FUNCS = {torch.softmax, _F.softmax, torch.log_softmax, _F.log_softmax, _F.softmin, _F.normalize,
              torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp}
_DIM_METHODS = {"softmax", "log_softmax", "mean", "sum", "amax", "amin", "std", "var", "logsumexp", "norm"}


def position_coupled(gm: fx.GraphModule) -> list[str]:
    """The ops of a traced graph (a layer's cone, `cut.head`) whose value at a position depends
    on the input's size or on statistics over positions (adaptive pooling, resampling, norms
    over positions, softmax and reductions along other axes than the channels): a layer behind
    one computes something else on a window of the image. Empty: windows are exact."""
    modules = dict(gm.named_modules())
    found, images = [], set()
    for node in gm.graph.nodes:
        # an op on the model's own tensors alone (a weight standardised over its dims, as timm's
        # StdConv2d does with a batch norm) holds no position of the image
        if node.op != "placeholder" and not any(a in images for a in node.all_input_nodes):
            continue
        images.add(node)
        if node.op == "call_module":
            m = modules[str(node.target)]
            if isinstance(m, _RESIZING_MODULES + _STATISTICS_MODULES) or _batch_statistics(m) or (
                    isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)) and m.dim != 1) or (
                    isinstance(m, nn.modules.padding._ConstantPadNd) and min(m.padding) < 0):
                found.append(f"{node.target} ({type(m).__name__})")
        elif node.op == "call_function" and (node.target in _COUPLED_FUNCS or (
                node.target in _DIM_FUNCS and not _channels_only(node))
                or (node.target is _F.batch_norm and _batch_norm_statistics(node)) or _crops(node)):
            found.append(f"{node.name} ({getattr(node.target, '__name__', node.target)})")
        elif node.op == "call_method" and node.target in _DIM_METHODS and not _channels_only(node):
            found.append(f"{node.name} (.{node.target}())")
    return found


def _crops(node: fx.Node) -> bool:
    """`F.pad` with a negative amount: a crop of the image's border, which a window would take
    from its own border instead."""
    if node.target is not _F.pad:
        return False
    pad = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else ())
    return not isinstance(pad, (tuple, list)) or any(not isinstance(p, int) or p < 0 for p in pad)


def _batch_statistics(m: nn.Module) -> bool:
    """A BatchNorm or InstanceNorm that normalises with the input's own statistics in eval mode."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.running_mean is None and m.running_var is None
    return isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats


def _batch_norm_statistics(node: fx.Node) -> bool:
    """F.batch_norm called with training=True or without running statistics."""
    args = inspect.signature(_F.batch_norm).bind(*node.args, **node.kwargs).arguments
    return bool(args.get("training", False)) or args.get("running_mean") is None


def _channels_only(node: fx.Node) -> bool:
    """Whether a softmax, norm or reduction runs along the channels (dim 1) alone; no dim: all."""
    if "dim" in node.kwargs:
        dim = node.kwargs["dim"]
    elif node.target is _F.normalize:
        dim = node.args[2] if len(node.args) > 2 else 1
    elif node.op == "call_method" and node.target == "norm":
        dim = node.args[2] if len(node.args) > 2 else None
    else:
        dim = node.args[1] if len(node.args) > 1 else None
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return len(dims) > 0 and all(isinstance(d, int) and d == 1 for d in dims)
