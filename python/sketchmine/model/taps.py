"""Instrumentation: which layers to tap and the hooks that read them.

Kept apart from the statistics (topk.py) and the mining loop (miner.py): a `Taps`
object hooks modules by qualified name, hands each output to a callback, and always
puts the model back as it found it.

Every tap hands the callback a tensor in one layout, (N, units, *positions), whatever the
module returns; the rules (also recorded per layer in the run, see `Taps.layouts`):

- conv (N, C, H, W), linear (N, F): as returned.
- tuple outputs: element 0 (`tapped` names it).
- nn.RNN / nn.GRU / nn.LSTM: element 0, the last layer's hidden state at every step,
  (N, T, H) when batch_first else (T, N, H), becomes (N, H, T): time is the unit's
  position, so the top-k entries are (image, step) pairs with yx = (0, t). Bidirectional
  layers have 2H units (forward directions first). A PackedSequence output is refused.
- "<lstm>.cell" (virtual, for every nn.LSTM): the last layer's cell state after the final
  step, c_n = output[1][1][-D:], (N, D*H); read from the tuple the LSTM returns anyway,
  so the model's results do not change. Per-step cell states are not exposed by
  nn.LSTM; unroll the model with an nn.LSTMCell per step to study them.
- nn.Linear applied to (N, *, F): features last → (N, F, *), e.g. a per-step classifier, or
  a per-position Linear on a channels-last (N, H, W, F) map (ConvNeXt), its (y, x) kept.
- any other module whose output the graph holds with its units last (`layouts.graph_layouts`):
  (N, H, W, C) (a LayerNorm or GELU between a ConvNeXt block's permutes, a Swin block) → (N, C, H, W),
  `layout` CHANNELS_LAST; (N, T, D) (a vision transformer's tokens) → (N, D, T), FEATURES_LAST.
  One the graph cannot place is read along axis 1 (the miner says which).
- a grid of more dims than (H, W), Conv3d's (N, C, D, H, W): the leading ones stacked along y,
  (N, C, D*H, W) with y = d*H + y_frame (the run's `yx` attribute says so).
- a module that sees the frames of a sequence folded into the batch, (N*T, ...) for a model
  input of N samples: unfolded to (N, C, T*H, W) (y = t*H + y_frame) or (N, F, T).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from sketchmine.errors import SketchmineError, closest
from sketchmine.model.backend import CalledMoreThanOnce
from sketchmine.model.layouts import CHANNELS_LAST, FEATURES_LAST, learn_layouts

SOFTMAX = "softmax"
"""Virtual layer: softmax of the model's output, for models without an nn.Softmax module."""
CELL = ".cell"
"""Suffix of the virtual layer that reads an nn.LSTM's final cell state ("lstm.cell")."""

_DEFAULT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Softmax, nn.RNNBase)


def _cells(model: nn.Module) -> dict[str, str]:
    """Virtual cell-state layer name → its nn.LSTM's module name."""
    return {n + CELL: n for n, m in model.named_modules() if n and isinstance(m, nn.LSTM)}


def default_layers(model: nn.Module) -> list[str]:
    """Every conv, linear, recurrent (plus each LSTM's cell state) and softmax module in
    `named_modules` order, plus the output softmax (virtual) when the model has no
    softmax module of its own."""
    names: list[str] = []
    for n, m in model.named_modules():
        if n and isinstance(m, _DEFAULT_TYPES):
            names.append(n)
            if isinstance(m, nn.LSTM):
                names.append(n + CELL)
    if not any(isinstance(m, nn.Softmax) for m in model.modules()):
        names.append(SOFTMAX)
    return names


def storable(names: list[str]) -> list[str]:
    """`names`, or a refusal before any work for a layer name holding a path separator: the run
    stores each layer as a group of that name: "a/b" would be mined and then refused on reading,
    "a\\b" (a module's, an ONNX node's) fails the run's creation."""
    for name in names:
        why = ("holding '/' or '\\'" if "/" in name or "\\" in name else "of '.' or '..'" if name in (".", "..") else
               f"of {len(name.encode())} bytes (a file system's names hold 255)" if len(name.encode()) > 255 else None)
        if why:  # a name too long failed the run's creation ('File name too long'), which no re-run mends
            raise SketchmineError(f"layer {name!r}: a layer name {why} cannot name a layer of a run "
                                  "(the run stores each layer as a folder of its name); rename the module (add_module "
                                  "with another name; of an ONNX graph: the node), or name the other layers to mine "
                                  "with --layers (layers=[...])")
    return names


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Validate requested layer names; unknown names raise with the closest matches."""
    if layers is None:
        return default_layers(model)
    available = [n for n, _ in model.named_modules() if n]
    known = set(available) | set(_cells(model)) | {SOFTMAX}
    result: list[str] = []
    for name in layers:
        if name not in known:
            hint = closest(name, available + list(_cells(model)))
            tapable = ", ".join(default_layers(model))
            raise SketchmineError(
                f"unknown layer {name!r}"
                + (f"; closest matches: {', '.join(hint)}" if hint else "")
                + f". Layers available by default: {tapable}"
            )
        if name not in result:
            result.append(name)
    return result


def module_of(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The module a (possibly virtual ".cell") layer name reads from (one walk of the modules)."""
    modules = dict(model.named_modules())
    target = name
    if name.endswith(CELL) and isinstance(modules.get(name[:-len(CELL)]), nn.LSTM):
        target = name[:-len(CELL)]
    if target not in modules or not target:
        raise SketchmineError(f"unknown layer {name!r}")
    return target, modules[target]


def layer_kind(model: nn.Module, name: str) -> str:
    """Store `kind` of a layer: the module's class name in lower case ("lstm_cell" for a cell state)."""
    if name == SOFTMAX:
        return "softmax"
    target, module = module_of(model, name)
    return type(module).__name__.lower() + ("_cell" if target != name else "")


RANKED_BY_INPUT = "log-odds of its input"
"""The `ranked_by` attribute of a layer that is an nn.Softmax / nn.LogSoftmax over the units of
(N, units) logits: float32 p reaches 1.0 (log p 0.0) past a logit margin of about 17, so its
top-k ranks the log-odds of the logits it was fed (stats/topk.log_odds), as the virtual softmax
ranks the model's logits; its stored values stay the module's output."""


def softmax_over_units(module: nn.Module, fed: Any) -> bool:
    """Whether `module` normalises the units of its (N, units) input `fed` (dim 1, -1, or None,
    which torch takes as 1 for a 2-D input)."""
    return (isinstance(module, (nn.Softmax, nn.LogSoftmax)) and isinstance(fed, torch.Tensor) and fed.ndim == 2
            and module.dim in (None, 1, -1))


def tapped_element(name: str, module: nn.Module, output: Any, cell: bool = False) -> torch.Tensor:
    """The tensor a tap reads from a module's output, in the module's own layout."""
    first = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(first, (torch.Tensor, PackedSequence)):
        raise SketchmineError(f"layer {name!r} returns a {type(output).__name__}"
                              + (f" whose first element is a {type(first).__name__}" if first is not output else "")
                              + "; a tap reads a tensor, or the first element of a tuple: tap the module that makes "
                              "the tensor")
    if isinstance(output, PackedSequence) or isinstance(first, PackedSequence):
        raise SketchmineError(
            f"layer {name!r} returns a PackedSequence; sketchmine taps padded (N, T, H) outputs only "
            "(padding would enter the top-k as activations): feed equal-length sequences or tap the modules after it")
    if cell:
        c_n = output[1][1]  # (layers * D, N, H)
        d = 2 if module.bidirectional else 1
        return c_n[-d:].permute(1, 0, 2).reshape(c_n.shape[1], -1)
    return first


TIME_FIRST = "(T, N, features) → (N, features, T)"
"""The `layout` attribute of a per-step Linear layer whose output is time-first (T, N, F), as
after an nn.GRU/nn.LSTM without batch_first."""


def time_first(t: torch.Tensor, batch: int | None, known: Mapping[str, Any] | None = None) -> bool:
    """Whether a per-step Linear's 3-D output is time-first (T, N, F) rather than batch-first
    (N, T, F) or frames folded into the batch (N*T, P, F). `known`: the layer's attributes from
    an earlier call (the miner's one-image probe, where (T, 1, F) cannot be mistaken) decide;
    without them the dimension holding the batch does. Not per batch: windows folded into the
    batch, (N*W, T, F), hold as many tokens T as a batch of T images has images."""
    if t.ndim != 3 or not batch:
        return False
    first, second = int(t.shape[0]), int(t.shape[1])
    if known:  # but rows that are not whole images, beside a dim of the batch, are steps: (1, N, F) of one step
        return known.get("layout") == TIME_FIRST or (first % batch != 0 and second == batch)
    return first != second and second == batch  # T == N, or neither: batch-first, or folded frames


def to_units(name: str, module: nn.Module, t: torch.Tensor, batch: int | None,
             cell: bool = False, known: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """(N, units, *positions) view of a tapped tensor, and the attributes that say how it
    was read (empty for plain conv and linear outputs). `known`: those attributes from an
    earlier call of the same layer (see `time_first`)."""
    if cell:
        return t, {"tapped": "output[1][1][-D:]: c_n, the last layer's cell state after the final step",
                   "units": "cell units (bidirectional: forward then backward)"}
    info: dict[str, Any] = {}
    if isinstance(module, nn.RNNBase):
        if t.ndim != 3:
            raise SketchmineError(f"layer {name!r} returned a {t.ndim}-D output; recurrent taps need batched "
                                  "input, (N, T, features) with batch_first or (T, N, features)")
        first = bool(module.batch_first)
        t = t.permute(0, 2, 1) if first else t.permute(1, 2, 0)
        return t, {"tapped": f"output[0]: the last layer's hidden state at every step "
                             f"({'(N, T, H)' if first else '(T, N, H)'} → (N, H, T))",
                   "position": "time", "yx": "(0, t)"}
    last = (known or {}).get("layout")
    if (last == CHANNELS_LAST and t.ndim == 4 or last == FEATURES_LAST and t.ndim == 3) and (
            not batch or t.shape[0] % batch == 0):  # (T, N, F) is not; frames folded into the batch are, unfolded below
        t = t.movedim(t.ndim - 1, 1)
        info = {"position": "grid", "yx": "(y, x)", "layout": last} if t.ndim == 4 else \
            {"position": "sequence", "yx": "(0, t)", "layout": last}
    elif isinstance(module, nn.Linear) and t.ndim > 2:
        if time_first(t, batch, known):  # read as folded frames, its steps would be credited to other images
            return t.permute(1, 2, 0), {"position": "sequence", "yx": "(0, t)", "layout": TIME_FIRST}
        t = t.movedim(t.ndim - 1, 1)  # not -1: torch.onnx exports a negative source as an invalid Transpose
        # (N, H, W, F): a per-position Linear in a channels-last stretch (ConvNeXt), its grid kept
        info = ({"position": "sequence", "yx": "(0, t)"} if t.ndim == 3 else
                {"position": "grid", "yx": "(y, x)"} if t.ndim == 4 else {})
    if batch and t.ndim >= 2 and t.shape[0] != batch and t.shape[0] % batch == 0:
        steps = t.shape[0] // batch  # a sequence's frames folded into the batch (time-distributed CNN)
        t = t.unflatten(0, (batch, steps)).movedim(1, 2)  # (N, C, T, *frame)
        frame = list(t.shape[3:])
        if len(frame) >= 1:
            t = t.flatten(2, 3)
        info = {**{k: v for k, v in info.items() if k == "layout"}, "position": "time-stacked", "time_steps": steps,
                "frame": frame,
                "yx": "(t * frame_height + y, x)" if len(frame) == 2 else "(0, t * frame_length + i)"
                if frame else "(0, t)"}
    if t.ndim > 4:  # a grid of more dims than (H, W), Conv3d's (D, H, W): the leading ones stacked along y
        if info:
            raise SketchmineError(f"layer {name!r}: frames of a sequence with a {t.ndim - 3}-D grid each are not "
                                  "supported; tap a layer with (H, W) or (L,) positions")
        info = {"position": "depth-stacked", "depth": list(t.shape[2:-2]), "frame": list(t.shape[-2:]),
                "yx": "(d * frame_height + y, x)"}
        t = t.flatten(2, t.ndim - 2)
    return t, info


class Taps:
    """Context manager that calls `callback(name, tensor)` for each tapped layer, with the
    tensor in the (N, units, *positions) layout (see the module docstring).

    The callback runs inside the forward hook, before any in-place op that follows the
    module (an in-place ReLU) can change the tensor. `layouts[name]` holds the attributes
    describing how each layer was read, once it has been called. `on_fed(name, logits)`, when
    given, runs before the callback for a softmax over units (RANKED_BY_INPUT) with its input.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        callback: Callable[[str, torch.Tensor], None],
        known: Mapping[str, Mapping[str, Any]] | None = None,
        on_fed: Callable[[str, torch.Tensor], None] | None = None,
        count_calls: bool = False,
    ) -> None:
        self.model = model
        # counted (a probe: every reused module named at once, after the forward) or refused mid-forward
        self.calls: dict[str, int] | None = {} if count_calls else None
        self.cells: set[str] = set()
        self.on_fed = on_fed
        self.layers = [n for n in layers if n != SOFTMAX]
        self.callback = callback
        self.known = dict(known or {})
        self.layouts: dict[str, dict[str, Any]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._called: dict[str, int] = {}  # this forward's calls of each tapped module
        self._batch: int | None = None

    def __enter__(self) -> Taps:
        try:
            # each forward pass starts with no tapped module called yet
            self._handles.append(self.model.register_forward_pre_hook(self._start))
            by_module: dict[str, list[str]] = {}
            for name in self.layers:
                target, _ = module_of(self.model, name)
                by_module.setdefault(target, []).append(name)
            modules = dict(self.model.named_modules())
            for target, names in by_module.items():
                self._handles.append(modules[target].register_forward_hook(self._hook(target, names)))
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, module: nn.Module, args: tuple) -> None:
        self._called.clear()
        self._batch = int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) and args[0].ndim else None

    def _hook(self, target: str, names: list[str]) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            n = self._called[target] = self._called.get(target, 0) + 1
            if n > 1:  # a reused module (ResNet's block ReLU): one tap, two tensors
                if isinstance(module, nn.RNNCellBase):
                    self.cells.update(names)
                if self.calls is None:
                    raise CalledMoreThanOnce(dict.fromkeys(names), self.cells)
                self.calls.update({name: max(n, self.calls.get(name, 0)) for name in names})
                return
            fed = inputs[0] if inputs else None
            for name in names:
                cell = name != target
                t = tapped_element(name, module, output, cell)
                t, info = to_units(name, module, t, self._batch, cell, self.known.get(name) or self.layouts.get(name))
                if isinstance(output, (tuple, list)) and not cell and "tapped" not in info:
                    info = {**info, "tapped": "output[0]"}
                if not cell and isinstance(fed, torch.Tensor) and softmax_over_units(module, fed):
                    info = {**info, "ranked_by": RANKED_BY_INPUT}
                    if self.on_fed is not None:
                        self.on_fed(name, fed)
                self.layouts.setdefault(name, info)
                self.callback(name, t)

        return hook

    def close(self) -> None:
        """Remove every hook this object added."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Probed(Exception):
    """Raised by `probe_layouts`' callback once every tapped layer has been read."""


def probe_layouts(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict[str, dict[str, Any]]:
    """How each layer's output is read (`Taps.layouts`), from one forward of the first image
    x[:1], as the miner's probe learns it: one image tells a time-first per-step Linear's
    (T, 1, F) from (1, T, F), where a batch of as many images as steps cannot.

    The forward ends once every layer has been read (no grad, nothing after them computed):
    a caller's input may be too small for the layers after them (a deconvolution's window).
    The virtual "softmax" (read as the model returns it) and a layer the forward never calls
    get no entry. Runs in the model's own mode: put it in eval first, or a batch norm in
    training mode counts the probe in its running statistics."""
    wanted = {n for n in layers if n != SOFTMAX}
    if not wanted:
        return {}
    read: set[str] = set()

    def done(name: str, t: torch.Tensor) -> None:
        read.add(name)
        if read >= wanted:  # after the last name of the module's hook, so every layout is kept
            raise _Probed

    with torch.inference_mode(), Taps(model, layers, done, learn_layouts(model, layers, x.shape[1:])[0]) as taps:
        try:
            model(x[:1])
        except _Probed:
            pass
    return taps.layouts


def ablation_dims(name: str, module: nn.Module) -> tuple[int, int]:
    """(batch dim, unit dim) of the tensor `tapped_element` returns, for zeroing units."""
    if name.endswith(CELL) and isinstance(module, nn.LSTM):
        raise SketchmineError(f"layer {name!r} is a read-only view of the final cell state; ablate {name[:-len(CELL)]!r}")
    if isinstance(module, nn.RNNBase):
        return (0 if module.batch_first else 1), -1
    if isinstance(module, nn.Linear):
        return 0, -1
    return 0, 1


def replace_element(output: Any, t: torch.Tensor) -> Any:
    """The module output with its tapped element (element 0 of a tuple) replaced by `t`."""
    if isinstance(output, tuple):
        return (t, *output[1:])
    if isinstance(output, list):
        return [t, *output[1:]]
    return t


STATE_BATCH_DIM = 1
"""Batch dim of a recurrent module's h_n / c_n, (layers * D, N, H), whatever batch_first says."""


def final_hidden(module: nn.Module, output: Any) -> torch.Tensor | None:
    """The last layer's final hidden state h_n[-D:] of a recurrent module's output as (N, D*H),
    units in the tapped output's order (forward directions first), so a unit zeroed in output[0]
    can be zeroed here too: h_n holds the same values, and a model may read either. None for
    other modules. An LSTM's c_n is not included: the tapped unit is the hidden state h."""
    if not isinstance(module, nn.RNNBase) or not isinstance(output, (tuple, list)) or len(output) < 2:
        return None
    h = output[1][0] if isinstance(module, nn.LSTM) else output[1]
    d = 2 if module.bidirectional else 1
    return h[-d:].permute(1, 0, 2).reshape(h.shape[1], -1)


def replace_hidden(module: nn.Module, output: Any, hidden: torch.Tensor) -> Any:
    """A recurrent module's output with the last layer's h_n slice replaced by `hidden` (N, D*H),
    the layout `final_hidden` returns; earlier layers' h_n and an LSTM's c_n unchanged."""
    state = output[1]
    h = state[0] if isinstance(module, nn.LSTM) else state
    d = 2 if module.bidirectional else 1
    last = hidden.reshape(hidden.shape[0], d, -1).permute(1, 0, 2).to(h.dtype)
    h = torch.cat([h[:-d], last]) if h.shape[0] > d else last.contiguous()
    state = type(state)((h, *state[1:])) if isinstance(module, nn.LSTM) else h
    return type(output)((output[0], state, *output[2:]))
