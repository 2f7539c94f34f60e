"""What every model backend meets: the `Forward` protocol (how a pass runs a model and reads
its layers), the `Layer` a probe returns, the `LoadedModel` that `load_model` hands out, and
an explicit registry from a loaded model's type to its Forward.

The backends are implementations below nothing but this module: forward.TorchForward (a
torch module read by Taps hooks) and onnx_backend.OnnxModel (an ONNX Runtime session). Each
registers itself here (`register_backend`); callers ask `as_forward(model)` and never probe
a model for methods. Imports run one way: models -> {forward, onnx_backend} -> backend.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from sketchmine.errors import SketchmineError
from sketchmine.progress import Progress
from sketchmine.weights_id import recorded_weights

WEIGHTS_HASH = "xxh3_128"
"""The weights identity's hash: the weights are hashed at every `mine` call, and xxh3 reads
VGG-19's 548 MB in ~20 ms where sha256 took 0.3 s (0.13 s for AlexNet: 2 % of a 768-image
call). It identifies a model for resume and reload checks; nothing here needs a cryptographic
hash. Runs mined before it recorded a bare sha256 as `weights_sha256` (see recorded_weights)."""


class RowsNotImages(SketchmineError):
    """Tapped outputs whose first dimension is not the batch (an attention's (N·heads, T, T)
    scores, windows or an image's rows folded into the batch, a time-first (T, N, E)): `layers`,
    the first named in the message. Default layers leave them out (`forward.probe`); asked for,
    they are refused, before the run is made."""

    def __init__(self, layers: list[str], rows: int, images: int, of: str = "", why: str = "") -> None:
        super().__init__(f"layer {layers[0]!r}{of} returns {rows} rows for {images} image(s): its first dimension is "
                         f"not the batch{why}, so its positions cannot be credited to images; mine the modules or "
                         "tensors before or after it")
        self.layers = layers


class CalledMoreThanOnce(SketchmineError):
    """Tapped modules the forward calls more than once (ResNet's block ReLU, a shared conv, a
    recurrent cell unrolled in Python): one tap would mix their calls. `calls` maps each layer to
    its call count in the probe's forward (None: refused at its second call); all are named at
    once. Default layers leave them out (`forward.probe`); asked for, they are refused before the
    run is made."""

    def __init__(self, calls: dict[str, int | None], cells: set[str]) -> None:
        shown = ", ".join(f"{name!r}" + (f" ({n} calls)" if n else "") for name, n in list(calls.items())[:8])
        one = len(calls) == 1
        cell = (" (a recurrent cell unrolled over time: tap an nn.GRU/nn.LSTM layer instead)"
                if cells & set(calls) else "")
        super().__init__(f"layer{'' if one else 's'} {shown}{' …' if len(calls) > 8 else ''} "
                         f"{'is' if one else 'are'} called more than once per forward pass, so one tap would mix "
                         f"{'its' if one else 'their'} calls{cell}; tap the modules around "
                         f"{'it' if one else 'them'} instead (e.g. the conv or the block output)")
        self.layers = list(calls)


@dataclass
class Layer:
    """A tapped layer as the pass sees it: units, grid, kind and the tap's layout attrs."""

    name: str
    channels: int
    spatial: tuple[int, ...]
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)  # how the tap read it (taps.Taps.layouts)


class Forward(Protocol):
    """A model as the pass sees it, whatever runs it: `open` yields a callable that runs one
    batch, hands each tapped layer's output to `on_output(name, t)` and returns the logits.
    Implemented by forward.TorchForward and onnx_backend.OnnxModel."""

    def resolve_layers(self, layers: list[str] | None) -> list[str]: ...
    def weights_hash(self, algorithm: str | None = None) -> str: ...  # None: what a new run records
    def weights_hash_later(self, algorithm: str | None = None) -> Callable[[], str]: ...
    def input_channels(self, default: int = 3) -> int: ...
    def to(self, device: torch.device) -> Any: ...
    def kind(self, name: str) -> str: ...
    def fields(self, sample: tuple[int, ...], progress: Progress) -> dict[str, Any]: ...
    def shapes(self, layers: list[str], x: torch.Tensor, whole: bool = True
               ) -> tuple[dict[str, tuple[int, ...]], torch.Tensor | None, dict[str, dict[str, Any]]]: ...
    def open(self, layers: list[str], on_output: Callable[[str, torch.Tensor], None],
             on_fed: Callable[[str, torch.Tensor], None] | None = None
             ) -> AbstractContextManager[Callable[[torch.Tensor], torch.Tensor]]: ...


@dataclass
class LoadedModel:
    """A loaded model (an nn.Module: in eval mode when this package built it, as given otherwise;
    or a registered backend's model such as an onnx_backend.OnnxModel), its id for resume
    checks, the normalisation it was trained with when the checkpoint records one ({"mean":
    [...], "std": [...]}), and the progressive drawings it was trained on, if any
    ({"transform": ..., "steps": T})."""

    module: Any
    model_id: str
    preprocessing: dict[str, Any] | None = None
    sequence: dict[str, Any] | None = None
    random_init: bool = False  # built by name without weights (initialised from a seed)
    categories: list[str] | None = None  # names of the outputs in order (torchvision weights, recorded class_names)
    input_size: tuple[int, int] | None = None  # (H, W) it was trained at, when its metadata records it
    logits_from: str | None = None  # which output is read as the logits, where it has several (an ONNX graph)


_BACKENDS: dict[type, Callable[[Any], Forward]] = {}


def register_backend(model_type: type, wrap: Callable[[Any], Forward]) -> None:
    """Declare how a loaded model of `model_type` (or a subclass) is run: `wrap(model)`."""
    _BACKENDS[model_type] = wrap


def as_forward(model: Any) -> Forward:
    """The model as a pass runs it, by its registered type (nearest class in its MRO)."""
    for cls in type(model).__mro__:
        if cls in _BACKENDS:
            return _BACKENDS[cls](model)
    raise SketchmineError(f"no backend runs a {type(model).__name__}; expected a torch.nn.Module or an "
                          "ONNX model (a path ending in .onnx)")


def weights_hasher(algorithm: str) -> Any:
    """A fresh hashlib-style object (update / hexdigest) for `algorithm`: xxh3_128 or sha256,
    with a "+scheme" suffix where a backend hashes other weights than it once did (what the
    suffix says is the backend's: onnx_backend.NODES_HASH)."""
    algorithm = algorithm.partition("+")[0]
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "sha256":
        import hashlib

        return hashlib.sha256()
    raise SketchmineError(f"unknown weights hash {algorithm!r}; expected xxh3_128 or sha256")


def weights_hash_aside(forward: Forward, algorithm: str | None = None) -> Callable[[], str]:
    """`forward`'s weights hash, of its weights as they are now, computed on a thread while the
    model is probed and its fields traced (hashing releases the GIL: AlexNet's 57 M weights took
    21 ms of `mine`'s setup on a 2-core CPU); the call returned waits for it and raises its error."""
    future: Future[str] = Future()
    digest = forward.weights_hash_later(algorithm)

    def work() -> None:
        try:
            future.set_result(digest())
        except BaseException as exc:  # raised where the hash is asked for
            future.set_exception(exc)

    # Not a daemon: a command refused before it asks for the hash exits with the thread inside
    # torch, and tearing a daemon thread down there aborts the process after its error line.
    threading.Thread(target=work, name="sketchmine-weights-hash").start()
    return future.result


def weights_hash(model: Any, algorithm: str | None = None) -> str:
    """The model's weights identity, "<algorithm>:<hex digest>", as its backend computes it (None:
    as a new run records it; a run's own algorithm to check the weights against it)."""
    return as_forward(model).weights_hash(algorithm)


def algorithm_of(identity: str | None) -> str | None:
    """The hash algorithm of a recorded identity (None, the backend's current one, when nothing
    is recorded)."""
    return identity.partition(":")[0] if identity and ":" in identity else None


def weights_match(model: Any, attrs: dict[str, Any]) -> bool:
    """Whether `model`'s weights are those a run with root `attrs` recorded (hashed the way
    the run hashed them)."""
    recorded = recorded_weights(attrs)
    return recorded is not None and weights_hash(model, algorithm_of(recorded)) == recorded


TRANSFORM_INPUT = "transform_input"
"""A model switch no state_dict records (torchvision's GoogLeNet and Inception v3 re-normalise their
input with it; torchvision turns it on whenever it loads its pretrained weights, so a model
fine-tuned from them needs it, one trained from scratch does not)."""
MODEL_SWITCHES = "model_switches"
"""The run attribute recording them ({} is not written: runs of models without one stay as they were)."""


def model_switches(model: Any) -> dict[str, bool]:
    """The switches of a torch model that change its outputs but no state_dict records, by name:
    the weights' identity cannot tell them apart, so a run records them beside it."""
    net = model.module if isinstance(model, LoadedModel) else model
    value = getattr(net, TRANSFORM_INPUT, None) if isinstance(net, torch.nn.Module) else None
    return {TRANSFORM_INPUT: value} if isinstance(value, bool) else {}


def switches_differ(model: Any, attrs: dict[str, Any]) -> list[str]:
    """Each switch whose value in `model` is not the one a run recorded, in words; a run that
    recorded none (mined before the record, or of a model without switches) is not compared."""
    recorded = attrs.get(MODEL_SWITCHES)
    return switches_differ_from(recorded, model_switches(model)) if isinstance(recorded, dict) else []


def switches_differ_from(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each switch set differently in `recorded` and `now`, in words."""
    return [f"{k} (run: {recorded.get(k)}, now: {now.get(k)})" for k in sorted({*recorded, *now})
            if recorded.get(k) != now.get(k)]


def input_channels(model: Any, default: int = 3, size: tuple[int, ...] | None = None) -> int:
    """Channel count the model takes, as its backend reads it (default when it cannot). `size`:
    one input's shape without batch and channels, (*leading, H, W), where the caller knows it: a
    torch model that torch.fx follows only at a size is traced there (graph.module_input_channels);
    an ONNX graph states its channels, whatever the size."""
    if size is not None and isinstance(model, torch.nn.Module):
        from sketchmine.model.graph import module_input_channels  # the graph analysis, for torch models only

        return module_input_channels(model, default, tuple(size))
    return as_forward(model).input_channels(default)


def first_tensor(out: Any) -> torch.Tensor:
    """Element 0 of a tuple/list output (the logits of a model returning extras), else `out`;
    anything else (a dict of outputs) is refused: which entry holds the logits is the model's."""
    first = out[0] if isinstance(out, (tuple, list)) and len(out) else out
    if not isinstance(first, torch.Tensor):
        raise SketchmineError(f"the model returns a {type(out).__name__}"
                              + (f" whose first element is a {type(first).__name__}" if first is not out else "")
                              + "; sketchmine reads the logits from a tensor or a tuple's first element: wrap the "
                              "model so that its forward returns them")
    return first


def not_logits(out: torch.Tensor, softmax: bool) -> str:
    """Why an output that is not (N, classes) floating logits (a segmentation map, an ArgMax's class
    numbers) gives no predictions, and what to do."""
    dims = ", ".join(["N", *map(str, out.shape[1:])]) + ("," if out.ndim == 1 else "")
    what = f"{str(out.dtype).removeprefix('torch.')} of shape ({dims})"
    return (f"the model returns {what}, not (N, classes) logits, which " + ("layer 'softmax' and " if softmax else "")
            + "the predictions and accuracy need: mine it with logits=False (--no-logits), which keeps the layers' "
            "statistics without predictions, or give it a forward (an ONNX graph: an output) that returns its logits")


def torch_module(model: Any, purpose: str) -> nn.Module:
    """The nn.Module of a model given as a module or a LoadedModel (`load_model`'s), for the calls
    that run torch's graph or autograd; an ONNX graph and a name not loaded yet are refused."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, LoadedModel) and isinstance(model.module, nn.Module):
        return model.module
    if isinstance(model, LoadedModel):
        raise SketchmineError(f"{purpose} runs a torch model (its graph and gradients); model {model.model_id} is "
                              f"a {type(model.module).__name__}: pass the torch model it was exported from")
    hint = f": load it first, sketchmine.load_model({model!r})" if isinstance(model, (str, os.PathLike)) else ""
    raise SketchmineError(f"{purpose} takes an nn.Module or a LoadedModel, got {type(model).__name__}{hint}")
