"""How a pass runs a caller's module: in eval mode, and given back with each submodule's own
training flag; fed inputs of its parameters' floating dtype; its memory format, to give back.

Every pass that runs a caller's model (mine, visualize's deconvolutions, traces and example
pictures, importance, effects, feature visualisation, the graph's shape propagation) goes
through `eval_mode`, so a model handed over in train mode, or fine-tuned with some batch norms
frozen in eval, comes back exactly as it was: the package's promise (taps.py) that a model is
put back as it was found.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M")


@contextmanager
def eval_mode(model: M) -> Iterator[M]:
    """`model` in eval mode inside the block (dropout off, batch norms on their running
    statistics: what a trained model computes); after it, each submodule's own training flag
    put back, on an error or Ctrl-C too. Flags are set directly, not through `train()`: a
    model whose `train()` freezes its batch norms gets exactly the flags it had. A model that
    is not a torch module (ONNX Runtime's) runs as it is."""
    if not isinstance(model, nn.Module):
        yield model
        return
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in was:
            m.training = training


def input_dtype(model: Any) -> torch.dtype:
    """The floating dtype the model's parameters hold (float32 when it has none): the input a
    half or double model takes, which refuses a float32 one."""
    params = model.parameters() if isinstance(model, nn.Module) else ()
    return next((p.dtype for p in params if p.is_floating_point()), torch.float32)


def memory_format(net: nn.Module) -> torch.memory_format:
    """The memory format the module's 4-D weights are in: channels-last when any is laid out so
    (and not also plain contiguous, as 1×1 kernels are both)."""
    cl = any(p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
             for p in net.parameters())
    return torch.channels_last if cl else torch.contiguous_format
