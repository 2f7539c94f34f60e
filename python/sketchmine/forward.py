"""The forward pass as the miner sees it, whatever runs it (`Forward`): torch modules read by
Taps hooks (`TorchForward`, here; eager, stopped early, or torch.compile'd) and ONNX Runtime
sessions (onnx_backend.OnnxModel). Also the probe that learns each tapped layer's shape
from one forward, and the receptive fields recorded for the store.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ContextManager, Protocol

import torch
from torch import nn

from .errors import SketchmineError
from .models import weights_hash
from .onnx_backend import OnnxModel
from .progress import Progress
from .receptive_field import receptive_fields
from .taps import SOFTMAX, Taps, layer_kind, module_of, resolve_layers


@dataclass
class Layer:
    """A tapped layer as the pass sees it: units, grid, kind and the tap's layout attrs."""

    name: str
    channels: int
    spatial: tuple[int, ...]
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)  # how the tap read it (taps.Taps.layouts)


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class Forward(Protocol):
    """A model as the pass sees it, whatever runs it: `open` yields a callable that runs one
    batch, hands each tapped layer's output to `on_output(name, t)` and returns the logits.
    Implemented by torch modules with Taps hooks (below) and onnx_backend.OnnxModel."""

    def resolve_layers(self, layers: list[str] | None) -> list[str]: ...
    def weights_hash(self) -> str: ...
    def to(self, device: torch.device) -> Any: ...
    def kind(self, name: str) -> str: ...
    def fields(self, sample: tuple[int, ...], progress: Progress) -> dict[str, Any]: ...
    def shapes(self, layers: list[str], x: torch.Tensor
               ) -> tuple[dict[str, tuple[int, ...]], torch.Tensor, dict[str, dict[str, Any]]]: ...
    def open(self, layers: list[str], on_output: Callable[[str, torch.Tensor], None]
             ) -> ContextManager[Callable[[torch.Tensor], torch.Tensor]]: ...


class _StopForward(Exception):
    """Raised by a hook on the deepest tapped module when logits are not needed (logits=False)."""


class TorchForward:
    """The torch path: Taps hooks read the tapped modules during the module's own forward."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.order: list[str] = []  # tapped layers in call order, from the probe
        self.stop_after: str | None = None  # a tapped layer: end each forward right after it (logits=False)
        self.compile = False  # run each forward as a torch.compile graph (see _open_compiled)
        self.layouts: dict[str, dict[str, Any]] = {}  # how each tap read its module, from the probe

    def resolve_layers(self, layers: list[str] | None) -> list[str]:
        return resolve_layers(self.net, layers)

    def weights_hash(self) -> str:
        return weights_hash(self.net)

    def to(self, device: torch.device) -> nn.Module:
        return self.net.to(device)

    def kind(self, name: str) -> str:
        return layer_kind(self.net, name)

    def fields(self, sample: tuple[int, ...], progress: Progress) -> dict[str, Any]:
        return fields_attrs(self.net, sample, progress)

    def shapes(self, layers: list[str], x: torch.Tensor
               ) -> tuple[dict[str, tuple[int, ...]], torch.Tensor, dict[str, dict[str, Any]]]:
        """Tapped output shapes (no batch dim), the output, and how each tap read its module."""
        shapes: dict[str, tuple[int, ...]] = {}
        record = lambda n, t: shapes.setdefault(n, tuple(t.shape[1:]))  # noqa: E731
        with torch.inference_mode(), Taps(self.net, layers, record) as taps:
            out = _shape_forward(self.net, x)
        self.order, self.layouts = list(shapes), taps.layouts
        return shapes, out, taps.layouts

    @contextlib.contextmanager
    def open(self, layers: list[str], on_output: Callable[[str, torch.Tensor], None]):
        if self.compile:
            with self._open_compiled(layers, on_output) as run:
                yield run
            return
        with Taps(self.net, layers, on_output):
            if self.stop_after is None:
                yield lambda x: _first_tensor(self.net(x))
                return

            def stop(module: nn.Module, inputs: tuple, output: Any) -> None:
                raise _StopForward  # registered after the taps' hook, so this module's taps have run

            target, _ = module_of(self.net, self.stop_after)
            handle = dict(self.net.named_modules())[target].register_forward_hook(stop)

            def run(x: torch.Tensor) -> None:
                try:
                    self.net(x)
                except _StopForward:
                    return None
                raise SketchmineError(f"the forward pass did not reach layer {self.stop_after!r}")

            try:
                yield run
            finally:
                handle.remove()

    @contextlib.contextmanager
    def _open_compiled(self, layers: list[str], on_output: Callable[[str, torch.Tensor], None]):
        """compile=True: the whole forward, taps included, as one torch.compile graph.

        torch.compile traces forward hooks into the graph; traced, the top-k bookkeeping
        (the compiled op, .item(), bincount) would split it into many small graphs. So the
        taps only copy each tapped output out of the graph (a copy: an in-place op after the
        module, ReLU(inplace=True), would otherwise change it) and `on_output` runs on the
        copies, eagerly and in call order, after the forward. The cost: a batch's tapped
        outputs are all alive at once. Hooks are guarded (dynamo skips that by default), so a
        compiled graph is never reused with another call's hooks: a new set recompiles.
        logits=False still computes the whole forward (an exception cannot end a graph
        early); the logits are dropped."""
        from torch._dynamo.exc import BackendCompilerFailed
        from torch._inductor.exc import InductorError

        captured: list[tuple[str, torch.Tensor]] = []
        net = torch.compile(self.net, dynamic=False)  # static shapes: a shorter last batch compiles once more

        def run(x: torch.Tensor) -> torch.Tensor | None:
            captured.clear()
            try:
                out = _first_tensor(net(x))
            except (BackendCompilerFailed, InductorError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SketchmineError(f"torch.compile failed: {first[:300]}; on CPU it needs a C++ compiler (g++ "
                                      "or clang), on CUDA Triton. Mine without --compile (compile=False)") from None
            for name, t in captured:
                on_output(name, t)
            return out if self.stop_after is None else None

        with Taps(self.net, layers, lambda name, t: captured.append((name, t.clone()))) as taps, \
                torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
            taps.layouts.update(self.layouts)  # as after a first batch: the second does not recompile
            yield run


def as_forward(net: nn.Module | OnnxModel) -> Forward:
    """The model as the pass runs it: ONNX Runtime models are Forwards already."""
    return net if isinstance(net, OnnxModel) else TorchForward(net)


def probe(forward: Forward, layers: list[str], x: torch.Tensor) -> tuple[list[Layer], int | None]:
    """Shapes of the tapped outputs and the logit count, from one forward pass."""
    try:
        shapes, out, layouts = forward.shapes(layers, x)
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SketchmineError(f"the model cannot take input of shape {tuple(x.shape[1:])}: {first}; "
                              "resize the images with --image-size (image_size=)") from None
    num_classes = int(out.shape[1]) if out.ndim == 2 else None
    if SOFTMAX in layers:
        if num_classes is None:
            raise SketchmineError(f"layer 'softmax' needs (N, classes) logits; the model returns {tuple(out.shape)}")
        shapes[SOFTMAX] = (num_classes,)
    result = []
    for name in layers:
        if name not in shapes:
            raise SketchmineError(f"layer {name!r} was not called during the forward pass; it cannot be tapped")
        shape = shapes[name]
        result.append(Layer(name, shape[0], tuple(shape[1:]), forward.kind(name), layouts.get(name, {})))
    return result, num_classes


def _shape_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output for `x`, on the meta device when every op allows it: shapes
    without arithmetic (a VGG-19 forward costs ~0.25 s on two cores); else a real forward."""
    try:
        meta = {n: t.to("meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
        return _first_tensor(torch.func.functional_call(model, meta, (x.to("meta"),)))
    except Exception:  # an op without a meta kernel: compute for real
        return _first_tensor(model(x))


def fields_attrs(net: nn.Module, sample: tuple[int, ...], progress: Progress) -> dict[str, dict[str, list[int]] | None]:
    """Receptive field per module as store attributes ("*": the whole image, for the virtual
    softmax); a model the graph analysis cannot handle is mined all the same, without them.
    `sample`: one input's shape, (C, H, W), or (T, C, H, W) for a sequence of frames (fields
    per frame)."""
    size = tuple(sample[-2:])
    try:
        rf = receptive_fields(net, size, tuple(sample[:-3]), channels=int(sample[-3]))
    except SketchmineError as exc:
        progress.note(f"no receptive fields recorded: {exc}")
        return {}
    out: dict[str, dict[str, list[int]] | None] = {
        name: {"size": list(f.size), "stride": list(f.stride), "offset": list(f.offset)} for name, f in rf.items()}
    out["*"] = {"size": list(size), "stride": [0, 0], "offset": [0, 0]}
    return out
