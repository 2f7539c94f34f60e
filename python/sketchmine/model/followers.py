"""What the network does right after each mined layer, read from its traced graph.

A tap reads a module's own output, so a conv followed by a BatchNorm and a ReLU is read
before both (Caffe's toolboxes read the blob after its in-place BatchNorm, Scale and ReLU).
Two consequences change what a top-k means, and `mine` says them (mining/checks.py):

- a BatchNorm with a negative scale (gamma) on a unit reverses that unit's order: the conv's
  top-k are the images the network passes on as the least active;
- before a ReLU, a unit whose best value is at most 0 never fires: its top-k are values the
  network replaces by 0.

Best effort: a model torch.fx cannot trace, or a layer without a node of its own (a virtual
layer, a module called twice), has no followers.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from sketchmine.errors import SketchmineError
from sketchmine.model.graph import module_outputs, trace

_RECTIFIERS = (nn.ReLU, nn.ReLU6)
_RECTIFIER_CALLS = {torch.relu, torch.relu_, F.relu, F.relu6}
_RECTIFIER_METHODS = {"relu", "relu_"}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class Reversed:
    """A mined layer whose output feeds only BatchNorm `norm`, whose scale is negative for
    `units` of its `channels` units."""

    layer: str
    units: int
    channels: int
    norm: str


@dataclass(frozen=True)
class Followers:
    """What follows the mined layers: those passed on only through a ReLU (a best value at
    most 0 means the unit never fires), and those whose BatchNorm reverses some units."""

    rectified: frozenset[str] = frozenset()
    reversed: tuple[Reversed, ...] = field(default=())


def _rectifier(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _RECTIFIERS)
    if node.op == "call_function":
        return node.target in _RECTIFIER_CALLS
    return node.op == "call_method" and node.target in _RECTIFIER_METHODS


def followers(net: nn.Module, layers: Sequence[str], sample: tuple[int, ...] | None = None) -> Followers:
    """The followers of `layers` in `net`'s graph (one torch.fx trace, in eval mode; at one input's
    shape `sample` where only a trace at its size works: `graph.trace`); none when the model cannot
    be traced."""
    if not isinstance(net, nn.Module):  # an ONNX model: no torch graph to read
        return Followers()
    try:
        gm = trace(net, "to find what follows each mined layer", sample)
    except SketchmineError:
        return Followers()
    outputs = module_outputs(gm)
    modules = dict(gm.named_modules())
    rectified: set[str] = set()
    flipped: list[Reversed] = []
    for name in layers:
        node = outputs.get(name)
        users = list(node.users) if node is not None else []
        if not users:
            continue
        if all(_rectifier(u, modules) for u in users):
            rectified.add(name)
            continue
        called = {str(u.target) if u.op == "call_module" else "" for u in users}  # "": not a module
        target = next(iter(called)) if len(called) == 1 else ""
        norm = modules.get(target) if target else None
        if isinstance(norm, _BATCH_NORMS) and norm.weight is not None:  # its sign is the sign of the eval-mode scale
            negative = int((norm.weight.detach() < 0).sum())
            if negative:
                flipped.append(Reversed(name, negative, int(norm.weight.numel()), target))
    return Followers(frozenset(rectified), tuple(flipped))
