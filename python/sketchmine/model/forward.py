"""The torch backend: a torch module read by Taps hooks during its own forward (eager,
stopped early, or torch.compile'd), registered in backend.py as the Forward of every
nn.Module. Also the probe that learns each tapped layer's shape from one forward (any
backend), and the receptive fields recorded for the store.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sketchmine.errors import SketchmineError, SketchmineFailure, first_line
from sketchmine.model import cut
from sketchmine.model.backend import (WEIGHTS_HASH, CalledMoreThanOnce, Forward, Layer, RowsNotImages, as_forward,
                                      first_tensor, not_logits, register_backend, weights_hasher)
from sketchmine.model.input_words import about_input, input_advice, input_words, model_failed
from sketchmine.model.onnx_backend import OnnxRunError
from sketchmine.model.modes import input_dtype
from sketchmine.model.meta import meta_call
from sketchmine.model.field_record import field_record
from sketchmine.model.receptive_field import FieldAnalysis, module_input_channels, sample_analysis
from sketchmine.model.layouts import graph_layouts, layout_open, tokens_of_images, unplaced_note
from sketchmine.model.taps import SOFTMAX, Taps, layer_kind, resolve_layers
from sketchmine.progress import Progress

__all__ = ["Forward", "Layer", "TorchForward", "as_forward", "fields_attrs", "layer_field", "module_weights_hash", "probe"]


def module_weights_hash(model: nn.Module, algorithm: str | None = None) -> str:
    """"<algorithm>:<digest>" over the names, shapes and bytes of every parameter and buffer."""
    return _tensors_hash(list(model.state_dict().items()), algorithm)


def _tensors_hash(tensors: list[tuple[str, torch.Tensor]], algorithm: str | None) -> str:
    algorithm = algorithm or WEIGHTS_HASH
    h = weights_hasher(algorithm)
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # no bytes copy; 0-dim ok
    return f"{algorithm}:{h.hexdigest()}"


MINED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""What the compiled statistics read (held as float32)."""


class TorchForward:
    """The torch path: Taps hooks read the tapped modules during the module's own forward."""

    def __init__(self, net: nn.Module) -> None:
        if isinstance(net, torch.jit.ScriptModule):  # its graph runs without the Python hooks taps are
            raise SketchmineError(
                f"{type(net).__name__} is a TorchScript module (torch.jit.trace or torch.jit.script): its layers run "
                "inside the compiled graph, where no hook sees them; pass the nn.Module it was made from, or export "
                "it to ONNX")
        self.net = net
        self.order: list[str] = []  # tapped layers in call order, from the probe
        self.stop_after: str | None = None  # a tapped layer: end each forward right after it (logits=False)
        self.compile = False  # run each forward as a torch.compile graph (see _open_compiled)
        self.autocast: torch.dtype | None = None  # the pass's autocast (--autocast), which the probe runs under too
        self.layouts: dict[str, dict[str, Any]] = {}  # how each tap read its module, from the probe
        self._analyses: dict[tuple[int, ...], FieldAnalysis | SketchmineError] = {}  # by one input's shape
        self.unplaced: dict[str, str] = {}  # tapped modules read on axis 1 that the graph cannot place, and why

    def resolve_layers(self, layers: list[str] | None) -> list[str]:
        return resolve_layers(self.net, layers)

    def weights_hash(self, algorithm: str | None = None) -> str:
        return module_weights_hash(self.net, algorithm)

    def weights_hash_later(self, algorithm: str | None = None) -> Callable[[], str]:
        """`weights_hash` of the weights as they are now, for another thread: the tensors are
        taken here, so that the probe's meta-device call, which puts meta tensors in the
        module's place for a moment, or a move to the device, does not reach them."""
        return functools.partial(_tensors_hash, list(self.net.state_dict().items()), algorithm)

    def input_channels(self, default: int = 3) -> int:
        return module_input_channels(self.net, default)

    def to(self, device: torch.device) -> nn.Module:
        return self.net.to(device)

    def kind(self, name: str) -> str:
        return layer_kind(self.net, name)

    def fields(self, sample: tuple[int, ...], progress: Progress) -> dict[str, Any]:
        if self.unplaced:  # said when the run is made
            progress.note(unplaced_note(self.unplaced))
        return fields_attrs(self.net, sample, progress, self._analysis(sample, partial=self.stop_after is not None))

    def _analysis(self, sample: tuple[int, ...], partial: bool = False) -> FieldAnalysis | SketchmineError:
        """The graph's field analysis for one input of shape `sample`, once: the probe reads where
        its modules hold their units, the new run's attributes its fields (`partial` where the
        head never runs: the fields before an op that cannot take the size)."""
        sample = tuple(int(n) for n in sample)
        if sample not in self._analyses or partial and isinstance(self._analyses[sample], SketchmineError):
            self._analyses[sample] = sample_analysis(self.net, sample, partial)
        return self._analyses[sample]

    def shapes(self, layers: list[str], x: torch.Tensor, whole: bool = True
               ) -> tuple[dict[str, tuple[int, ...]], torch.Tensor | None, dict[str, dict[str, Any]]]:
        """Tapped output shapes (no batch dim), the output, and how each tap read its module. Not `whole`
        (mining stops after the last tap), a failure after every tap is the head's: the output is None."""
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, torch.dtype] = {}
        rows_of: dict[str, int] = {}

        def record(name: str, t: torch.Tensor) -> None:
            shapes.setdefault(name, tuple(t.shape[1:]))
            dtypes.setdefault(name, t.dtype)
            rows_of.setdefault(name, int(t.shape[0]))

        x = _floating(x).to(input_dtype(self.net))
        known: dict[str, dict[str, Any]] = {}
        unplaced: dict[str, str] = {}
        if layout_open(self.net, layers):  # a module whose units only the graph places
            known, unplaced = graph_layouts(self.net, layers, self._analysis(tuple(x.shape[1:]), partial=not whole))
        # under the pass's autocast, computed for real: the meta device runs no autocast, and an op the cast
        # breaks (a bfloat16 conv into a float16 BatchNorm) must be refused here, before the run is made
        cast = torch.autocast(x.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with torch.inference_mode(), cast, Taps(self.net, layers, record, known, count_calls=True) as taps:
            try:
                out = first_tensor(self.net(x)) if self.autocast else _shape_forward(self.net, x)
            except (RuntimeError, ValueError, IndexError):
                if whole or any(name not in shapes for name in layers):
                    raise
                out = None
        if taps.calls:  # every reused module at once, not one a call
            raise CalledMoreThanOnce(dict(taps.calls), taps.cells)
        rows = [name for name, n in rows_of.items() if n != len(x)]
        if rows:  # a recurrent layer over an image's rows folded into the batch (N·H sequences): not unfolded
            raise RowsNotImages(rows, rows_of[rows[0]], len(x), why=" (sequences folded into it are unfolded only "
                                "for convs and per-step layers)")
        for name, dtype in dtypes.items():
            if dtype not in MINED_DTYPES:  # the statistics hold float32: a double would be ranked rounded
                raise SketchmineError(
                    f"layer {name!r} outputs {str(dtype).removeprefix('torch.')} values; sketchmine mines float32, "
                    "float16 and bfloat16 activations" + (" (it ranks and stores them as float32): cast the model "
                                                          "with model.float()" if dtype.is_floating_point else
                                                          ": tap a module whose output is floating-point"))
        self.unplaced = {n: why for n, why in unplaced.items() if len(shapes.get(n, ())) >= 2}  # a vector: axis 1
        folded = [name for name, info in taps.layouts.items() if "time_steps" in info]
        if folded:
            _check_folded_rows(self.net, folded, x, taps.layouts)
        self.order, self.layouts = list(shapes), tokens_of_images(taps.layouts, x.ndim - 1)
        return shapes, out, self.layouts

    @contextlib.contextmanager
    def open(self, layers: list[str], on_output: Callable[[str, torch.Tensor], None],
             on_fed: Callable[[str, torch.Tensor], None] | None = None):
        dtype = input_dtype(self.net)  # a half model takes half input; batches come as float32
        if self.compile:
            with self._open_compiled(layers, on_output, on_fed) as run:
                yield lambda x: run(_floating(x).to(dtype))
            return
        with Taps(self.net, layers, on_output, self.layouts, on_fed):  # the taps' hooks first: the stop comes after them
            if self.stop_after is None:
                yield lambda x: first_tensor(self.net(_floating(x).to(dtype)))
                return
            with cut.stop_after(self.net, self.stop_after) as run:
                yield lambda x: run(_floating(x).to(dtype))

    @contextlib.contextmanager
    def _open_compiled(self, layers: list[str], on_output: Callable[[str, torch.Tensor], None],
                       on_fed: Callable[[str, torch.Tensor], None] | None = None):
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

        captured: list[tuple[str, torch.Tensor, bool]] = []  # (layer, tensor, whether it is a softmax's input)
        net = torch.compile(self.net, dynamic=False)  # static shapes: a shorter last batch compiles once more

        def run(x: torch.Tensor) -> torch.Tensor | None:
            captured.clear()
            try:
                out = first_tensor(net(x))
            except (BackendCompilerFailed, InductorError) as exc:
                first = first_line(exc)
                raise SketchmineFailure(f"torch.compile failed: {first[:300]}; on CPU it needs a C++ compiler (g++ "
                                      "or clang), on CUDA Triton. Mine without --compile (compile=False)") from None
            for name, t, fed in captured:
                if not fed:
                    on_output(name, t)
                elif on_fed is not None:
                    on_fed(name, t)
            return out if self.stop_after is None else None

        with Taps(self.net, layers, lambda name, t: captured.append((name, t.clone(), False)), None,
                  lambda name, t: captured.append((name, t.clone(), True))) as taps, \
                torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
            taps.layouts.update(self.layouts)  # as after a first batch: the second does not recompile
            yield run


register_backend(nn.Module, TorchForward)


def _floating(x: torch.Tensor) -> torch.Tensor:
    """`x`, refused when it is not floating-point: the cast to the model's dtype would feed
    integer values unscaled (uint8 pixels as 0-255 where [0, 1] is meant)."""
    if not x.is_floating_point():
        raise SketchmineError(
            f"the model input is a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}; the model "
            "takes floating-point input, and a cast would feed integer values unscaled (0-255 pixels where [0, 1] is "
            "meant): give float input, or, for a torch Dataset, pass a preprocessing (preprocessing='model', "
            "'imagenet' or 'none') so that its tensors are taken as pixels")
    return x


def _check_folded_rows(net: nn.Module, layers: list[str], x: torch.Tensor,
                       layouts: dict[str, dict[str, Any]]) -> None:
    """A layer whose output has T rows per image is read as each image's T rows in turn (a
    sequence's frames folded into the batch, (N, T, ...) -> (N*T, ...)). Other orders exist:
    a batch doubled by torch.cat([x, flipped x]) holds every image, then every flip; a
    time-first (L, N, E) output has L rows whatever N is. One image cannot tell them apart, so
    two are run, and the first's rows must be those it has alone; else the layer is refused
    (its positions would be credited to other images)."""
    other = x.flip(-1, -2) * 0.5 + 0.25 * x.float().mean().to(x.dtype)  # any second input unlike x
    got: dict[int, dict[str, torch.Tensor]] = {1: {}, 2: {}}
    for n, batch in ((1, x), (2, torch.cat([x, other]))):
        def record(name: str, t: torch.Tensor, n: int = n) -> None:
            got[n].setdefault(name, t.detach().float().clone())

        with torch.inference_mode(), Taps(net, layers, record, layouts):
            net(batch)
    for name in layers:
        alone, pair = got[1].get(name), got[2].get(name)
        if pair is None or alone is None or pair.shape[1:] != alone.shape[1:] or len(pair) != 2 or not torch.allclose(
                pair[:1], alone, rtol=1e-4, atol=1e-5 * max(float(alone.abs().max()), 1.0)):
            steps = layouts[name]["time_steps"]
            raise SketchmineError(
                f"layer {name!r} returns {steps} rows per image, and they are not each image's rows in turn (a batch of "
                "two images did not hold the first image's rows first, as it would for a sequence's frames folded "
                "into the batch): its first dimension is not the batch (a time-first output, a batch doubled by "
                "torch.cat), so its positions cannot be credited to images; mine the modules before or after it")


_LEFT_WHY = {RowsNotImages: "their first dimension is not the batch (their rows are not the images)",
             CalledMoreThanOnce: "the forward pass calls them more than once (one tap would mix the calls)"}


def probe(forward: Forward, layers: list[str], x: torch.Tensor, optional: bool = False, logits: bool = False
          ) -> tuple[list[Layer], int | None, dict[str, str]]:
    """Shapes of the tapped outputs and the logit count, from one forward pass, and the layers
    left out, with why. A layer the forward does not call, or an ONNX tensor whose rows are not
    the images, is refused, or left out when the layers are `optional` (the defaults: an
    auxiliary head that runs only in training; an attention's scores), unless that leaves none
    but the softmax of the logits: then the whole call is refused, saying why each was left out."""
    left: dict[str, str] = {}
    whole = logits or SOFTMAX in layers  # else the head need not run at this size: mining stops before it
    try:
        while True:  # default layers: each refusal of some leaves them out, and the rest are probed again
            try:
                shapes, out, layouts = forward.shapes(layers, x, whole)
                break
            except (RowsNotImages, CalledMoreThanOnce) as exc:
                if not optional or not set(exc.layers) & set(layers):  # (none left out: it would come again)
                    raise
                left |= dict.fromkeys(exc.layers, _LEFT_WHY[type(exc)])
                layers = [name for name in layers if name not in left]
    except (RuntimeError, ValueError, IndexError, OnnxRunError) as exc:
        first = first_line(exc)
        if not isinstance(exc, OnnxRunError) and not about_input(first):  # an op's own failure: no resize helps
            raise SketchmineError(model_failed(forward, x, first)) from None
        raise SketchmineError(f"the model cannot take input of shape {tuple(x.shape[1:])} ({input_words(x)}): "
                              f"{first}; {input_advice(x, forward.input_channels(0))}") from None
    num_classes = int(out.shape[1]) if out is not None and out.ndim == 2 and out.is_floating_point() else None
    if whole and out is not None and num_classes is None:  # kept, the run had no predictions, said by nothing
        raise SketchmineError(not_logits(out, SOFTMAX in layers))
    if SOFTMAX in layers and num_classes is not None:
        shapes[SOFTMAX] = (num_classes,)
    if (uncalled := [n for n in layers if n not in shapes]) and not optional:  # all at once, not one a call
        one, said = len(uncalled) == 1, ", ".join(map(repr, uncalled[:8])) + (" ..." if len(uncalled) > 8 else "")
        raise SketchmineError(f"layer{'' if one else 's'} {said} {'was' if one else 'were'} not called during the "
                              f"forward pass; {'it' if one else 'they'} cannot be tapped")
    result = []
    for name in layers:
        if name not in shapes:
            left[name] = "they are not called by its forward pass"
            continue
        shape = shapes[name]
        result.append(Layer(name, shape[0], tuple(shape[1:]), forward.kind(name), layouts.get(name, {})))
    if optional:
        _refuse_if_none_kept([layer.name for layer in result], left)
    return result, num_classes, left


def _refuse_if_none_kept(kept: list[str], left: dict[str, str]) -> None:
    """Refuse default layers of which only the virtual softmax (or nothing) is kept: a run of the
    softmax alone is not what a user who mines a model's layers asked for (who wants it names it)."""
    if any(name != SOFTMAX for name in kept):
        return
    if not left:  # none to leave out: a model of functions (F.conv2d on its own parameters), no module to tap
        raise SketchmineError("the model has no layer mined by default (a conv, linear, recurrent or softmax "
                              "module; of an ONNX graph, a Conv, Gemm, MatMul by a weight or Softmax node): its ops "
                              "are functions, which leaves only the softmax of its logits. Name layers=['softmax'] "
                              "(--layers softmax) to mine that alone, or make the ops to tap modules")
    said = "; ".join(f"{', '.join(names[:4])}{', …' if len(names) > 4 else ''}, as {why}"
                     for why in dict.fromkeys(left.values()) for names in [[n for n, w in left.items() if w == why]])
    raise SketchmineError("every default layer of the model is left out"
                          + (", which leaves only the softmax of its logits to mine" if kept else "")
                          + f": {said}. Name the layers to mine with --layers (layers=), those before or after these")


def _shape_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output for `x`, on the meta device when every op allows it: shapes
    without arithmetic (a VGG-19 forward costs ~0.25 s on two cores); else a real forward."""
    try:
        return first_tensor(meta_call(model, x))
    except Exception:  # an op without a meta kernel: compute for real
        return first_tensor(model(x))


def fields_attrs(net: nn.Module, sample: tuple[int, ...], progress: Progress,
                 analysis: FieldAnalysis | SketchmineError | None = None) -> dict[str, dict[str, Any] | None]:
    """Receptive field per module as store attributes ("*": the whole image, for the virtual
    layers); a model the graph analysis cannot handle is mined all the same, without them, and
    an op it cannot follow costs only the fields of the modules after it (said once).
    `sample`: one input's shape, (C, H, W), or (T, C, H, W) for a sequence of frames (fields
    per frame). `analysis`: the graph's, or its refusal, where the caller made it already."""
    size = tuple(sample[-2:])
    analysis = sample_analysis(net, sample) if analysis is None else analysis
    if isinstance(analysis, SketchmineError):
        progress.note(f"no receptive fields recorded: {analysis}")
        return {}
    # a copying pad's own units have no field, the layers after it do: not worth a note unless mined
    missing = {n: why for n, why in analysis.missing.items() if n not in analysis.copies}
    if missing:
        names = list(missing)
        progress.note(f"no receptive fields recorded for {len(names)} modules ({', '.join(names[:3])}"
                      f"{', …' if len(names) > 3 else ''}): {next(iter(missing.values()))}")
    out: dict[str, dict[str, Any] | None] = {name: field_record(f) for name, f in analysis.fields.items()}
    out["*"] = {"size": list(size), "stride": [0, 0], "offset": [0, 0]}
    return out


def layer_field(layer: Layer, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The layer's recorded field: its own, else the whole image ("*") for a layer without positions (the
    virtual softmax, an LSTM's cell state, a vector); a grid layer the analysis gave no field has none."""
    return fields[layer.name] if layer.name in fields else fields.get("*") if not layer.spatial else None
