"""Instrumentation: which layers to tap and the hooks that read them.

Kept apart from the statistics (topk.py) and the mining loop (miner.py): a `Taps`
object hooks modules by qualified name, hands each output to a callback, and always
puts the model back as it found it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import SketchmineError, closest

SOFTMAX = "softmax"
"""Virtual layer: softmax of the model's output, for models without an nn.Softmax module."""

_DEFAULT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Softmax)


def default_layers(model: nn.Module) -> list[str]:
    """Every conv, linear and softmax module in `named_modules` order, plus the output
    softmax (virtual) when the model has no softmax module of its own."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, _DEFAULT_TYPES)]
    if not any(isinstance(m, nn.Softmax) for m in model.modules()):
        names.append(SOFTMAX)
    return names


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Validate requested layer names; unknown names raise with the closest matches."""
    if layers is None:
        return default_layers(model)
    available = [n for n, _ in model.named_modules() if n]
    known = set(available) | {SOFTMAX}
    result: list[str] = []
    for name in layers:
        if name not in known:
            hint = closest(name, available)
            tapable = ", ".join(default_layers(model))
            raise SketchmineError(
                f"unknown layer {name!r}"
                + (f"; closest matches: {', '.join(hint)}" if hint else "")
                + f". Layers available by default: {tapable}"
            )
        if name not in result:
            result.append(name)
    return result


class Taps:
    """Context manager that calls `callback(name, output)` for each tapped module.

    The callback runs inside the forward hook, before any in-place op that follows the
    module (an in-place ReLU) can change the tensor. Tuple outputs pass their first element.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        callback: Callable[[str, torch.Tensor], None],
    ) -> None:
        self.model = model
        self.layers = [n for n in layers if n != SOFTMAX]
        self.callback = callback
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._called: set[str] = set()

    def __enter__(self) -> Taps:
        modules = dict(self.model.named_modules())
        try:
            # each forward pass starts with no tapped module called yet
            self._handles.append(self.model.register_forward_pre_hook(lambda m, i: self._called.clear()))
            for name in self.layers:
                if name not in modules:
                    raise SketchmineError(f"unknown layer {name!r}")
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            if name in self._called:  # a reused module (ResNet's block ReLU): one tap, two tensors
                raise SketchmineError(
                    f"layer {name!r} is called more than once per forward pass, so one tap would mix its "
                    "calls; tap the modules around it instead (e.g. the conv or the block output)")
            self._called.add(name)
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.callback(name, output)

        return hook

    def close(self) -> None:
        """Remove every hook this object added."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()
