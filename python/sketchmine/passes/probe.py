"""The live probe's export: the run's model as an ONNX graph the report's probe page runs in
the browser (onnxruntime-web, WebAssembly), with the run's preprocessing inside the graph.

The graph takes `pixels`, float32 (1, C, H, W) values 0-255 at the model's input size and channels (grey, or RGB for
a 3-channel run: the page resizes the canvas to H×W itself, see docs/probe.md), and does exactly what the miner does
to such an image: /255, the run's recorded normalisation. Its outputs are `probs` (the softmax of the logits, or the
model's output as it is when that is a softmax already), then per tapped layer `max<i>` (units,): each unit's
maximum over its positions (the value the top-k ranks), and for grid layers `map<i>` (units, h, w): the map,
max-pooled to at most MAP_SIDE per side so that the output stays bounded. Layers are tapped as the miner taps them
(`Taps`, before any in-place op that follows), so the browser sees what the run mined; the graph is run against the
model on a few inputs before it is kept (tracing fixes the path a forward takes).

A pass (it needs the model); the report stays a reader: `write_report(probe=...)` only writes the bytes made here.
"""
from __future__ import annotations

import base64
import copy
import json
import math
import io
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine.data.preprocess import LUMA, Preprocessing, convert_channels, preset_names
from sketchmine.data.sequences import background_of
from sketchmine.errors import SketchmineError, first_line, optional_positive
from sketchmine.names import command
from sketchmine.model.backend import first_tensor
from sketchmine.model.models import given_preprocessing
from sketchmine.model.modes import eval_mode, input_dtype
from sketchmine.model.output_softmax import softmax_logits
from sketchmine.model.taps import SOFTMAX, Taps
from sketchmine.passes.probe_onnx import check_graph, data_dependent
from sketchmine.passes.probe_runtime import (ORT_DIR as ORT_DIR, ORT_FILES as ORT_FILES, ORT_VERSION,
                                             check_onnx_packages, ort_files)
from sketchmine.passes.probe_sequence import (TIME_POSITIONS, check_sequence_model, last_frame, prefix_problem,
                                              run_sequence, sequence_ink, step_probs)
from sketchmine.results.effects import class_units
from sketchmine.results.precision import FLOAT32
from sketchmine.results.run import Run, open_run

MAP_SIDE = 32
"""Heat maps are max-pooled to at most this many positions per side."""
TOP_UNITS = 8
"""Units shown per layer on the page (and returned by `window.sketchmine.probe`)."""
CHUNK = 8_000_000
"""Base64 characters per embedded script (a multiple of 4)."""
MAX_IMAGES = 40
"""Dataset images offered by "pick a dataset image" (full-input patches the run stores)."""
MAX_MODEL_MB = 100.0
"""The largest probe graph (ONNX, in MB of 10^6 bytes) a report embeds by default; a larger model's
report is written without the probe and says why (`--probe-max-mb` raises the cap)."""


@dataclass
class ProbeLayer:
    name: str
    units: int
    grid: tuple[int, int] | None  # the heat map's (h, w) after pooling; None: no map
    pool: int  # the pooling stride applied to the map (1: none)


@dataclass
class ProbeGraph:
    """The exported model and what the page needs to know about it."""
    onnx: bytes
    size: tuple[int, int]
    layers: list[ProbeLayer]
    notes: list[str] = field(default_factory=list)
    steps: bool = False  # the graph has the per-step output `steps` (sequence runs)
    channels: int = 1  # the input's channels: 1 (grey) or 3 (RGB)


class ProbeNet(nn.Module):
    """pixels (1, C, H, W) 0-255 → (probs, max0, map0?, max1, ...): the miner's preprocessing,
    the model, and the tapped layers as extra outputs. With `steps`, the input is a sequence's
    frames (1, T, 1, H, W) and `steps` (T, classes) follows `probs` (passes.probe_sequence).
    `probabilities`: the model's output is a softmax already, shown as it is (a second softmax
    would flatten it towards uniform)."""

    def __init__(self, net: nn.Module, layers: list[str], pre: Preprocessing, steps: bool = False,
                 known: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.net, self.layers, self.pre, self.steps = net, layers, pre, steps
        self.known = dict(known or {})  # each layer read as mined (`Run.layer_attrs`: a channels-last module)
        self.probabilities = False
        self.pools: dict[str, int] = {}

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """0-255 (..., c, H, W) → the model's input, as the miner prepares an image (each frame)."""
        x = pixels / 255.0
        if x.shape[-3] != self.pre.channels:
            x = convert_channels(x, self.pre.channels)
        return self.pre.normalise(x)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.prepare(pixels)
        got: dict[str, torch.Tensor] = {}
        with Taps(self.net, self.layers, lambda n, t: got.__setitem__(n, t.clone()), self.known) as taps:
            logits = first_tensor(self.net(x))
        outs = [logits.flatten(1)[0] if self.probabilities else torch.softmax(logits.flatten(1), dim=1)[0]]
        if self.steps:
            outs.append(step_probs(self.net, x, outs[0], self.probabilities))
        for name in self.layers:
            t = got[name]
            outs.append(t.flatten(2).amax(2)[0] if t.ndim > 2 else t[0])
            if t.ndim == 4:
                t = last_frame(t, taps.layouts.get(name, {}))
                s = self.pools.setdefault(name, max(1, math.ceil(max(t.shape[2:]) / MAP_SIDE)))
                m = torch.nn.functional.max_pool2d(t, s, s, ceil_mode=True) if s > 1 else t
                outs.append(m[0])
        return tuple(outs)


def recorded_size(run: Run, pre: Preprocessing | None) -> tuple[tuple[int, int], str] | None:
    """The model's input (H, W) as the run records it, and where from: the preprocessing's resize,
    else the receptive field of a layer that sees the whole input (stride 0); None when neither."""
    if pre is not None and pre.size is not None:
        return (int(pre.size[0]), int(pre.size[1])), "its preprocessing resizes every image to it"
    for name in run.layers:
        rf = run.layer_attrs(name).get("receptive_field") or {}
        if list(rf.get("stride") or []) == [0, 0] and len(rf.get("size") or []) == 2:
            return (int(rf["size"][0]), int(rf["size"][1])), f"its layer {name} sees the whole input at that size"
    return None


def input_size(run: Run, pre: Preprocessing | None, size: Any = None,
               model_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The model's input (H, W): the size the run records (`recorded_size`), else the model's own
    fixed input size (`model_size`: an .onnx file's), else `size`. Why: the run was mined at its
    size, so the probe must feed that size; `size` is the fallback for a run that records none,
    and a `size` that differs from a known one is refused (the model would fail, or the page would
    show values the run never mined)."""
    known = recorded_size(run, pre) or (None if model_size is None else (model_size, "the model file fixes it"))
    given = None
    if size is not None:
        from sketchmine.data.preprocess import as_size
        given = as_size(size, "the probe's input size")
    if given is not None and known is not None and given != known[0]:
        raise SketchmineError(f"the probe's input size {given[0]}×{given[1]} (--size, size=) differs from the input "
                              f"size of run {run.path}, {known[0][0]}×{known[0][1]} ({known[1]}); --size is "
                              "only for a run that records no input size: leave it out")
    if known is not None:
        return known[0]
    if given is not None:
        return given
    raise SketchmineError(f"run {run.path} records no input size (no preprocessing size, no layer seeing the "
                          f"whole input); pass size=(H, W), on the command line `{command('sketchmine', 'probe', run.path)} --out "
                          "DIR --size H W` (report has no --size)")


def probe_layers(run: Run) -> tuple[list[str], list[str]]:
    """(layers the probe taps, notes): every mined layer but the virtual softmax (the
    probabilities are shown anyway). A layer with positions of any kind (grid, time, tokens)
    shows each unit's maximum over them, the value the miner ranks."""
    return [name for name in run.layers if name != SOFTMAX], []


def check_size(what: str, nbytes: int, max_mb: float | None) -> None:
    """Refuse a probe graph over the cap (None: no cap), saying how to raise it."""
    if max_mb is not None and nbytes > max_mb * 1e6:
        raise SketchmineError(f"{what} is {nbytes / 1e6:.1f} MB, over the probe's cap of {max_mb:g} MB (the page "
                              f"embeds it); raise it with --probe-max-mb (sketchmine probe: --max-mb) or "
                              "build_probe(max_mb=...)")


def export_graph(run: Run, net: nn.Module, pre: Preprocessing, size: tuple[int, int],
                 max_mb: float | None = MAX_MODEL_MB, images: list[dict[str, Any]] | None = None) -> ProbeGraph:
    """torch.onnx export (TorchScript exporter, opset 17) of `ProbeNet`, checked against the model
    (`probe_onnx.check_graph`, on `images` among other inputs); a model it cannot export, a graph
    that differs from the model, or one over `max_mb` raises a SketchmineError that says why (the
    report then goes without the probe)."""
    check_size(f"the model {run.attrs.get('model')} (its weights alone)",
               sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers())), max_mb)
    seq = run_sequence(run)
    layers, notes = probe_layers(run)
    channels = 1 if seq else pre.channels  # progressive frames are grey (data/sequences.py)
    shape = (1, seq["steps"], 1, *size) if seq else (1, channels, *size)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 255
    wrapped = ProbeNet(net, layers, pre, known={n: run.layer_attrs(n) for n in layers}).eval()  # net: in eval mode
    why = prefix_problem(net, wrapped.prepare(x)) if seq else None
    if why:
        notes.append(f"no prediction per step: {why}")
    wrapped.steps = bool(seq) and not why
    try:
        with torch.no_grad():
            outs = wrapped(x)  # the test forward: a model that cannot take this input is said, not a traceback
            fed = softmax_logits(lambda: first_tensor(net(wrapped.prepare(x))).flatten(1))[1]
            wrapped.probabilities = fed is not None  # the output is a softmax already: shown as it is
    except Exception as exc:  # noqa: BLE001 - any failure means "no probe", said on the page (report) or as one line
        raise SketchmineError(f"the model {run.attrs.get('model')} cannot run on the probe's input of shape "
                              f"{tuple(shape)} ({size[0]}×{size[1]} {'grey' if channels == 1 else 'RGB'}): "
                              f"{type(exc).__name__}: {first_line(exc)[:300]}") from None
    if wrapped.probabilities:
        notes.append("the model's output is a softmax already: shown as it is, no second softmax")
    names, specs = ["probs"] + (["steps"] if wrapped.steps else []), []
    k = len(names)
    for i, name in enumerate(layers):
        units = int(outs[k].shape[0])
        names.append(f"max{i}")
        k += 1
        grid = None
        if name in wrapped.pools:
            grid = (int(outs[k].shape[1]), int(outs[k].shape[2]))
            names.append(f"map{i}")
            k += 1
        specs.append(ProbeLayer(name, units, grid, wrapped.pools.get(name, 1)))
    try:
        # exported into memory (the TorchScript exporter takes a file object; its stubs name paths only):
        # through a temporary file, a full or missing TMPDIR read as the model's failure
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # recorded, not shown: a TracerWarning is judged below
            graph = io.BytesIO()
            torch.onnx.export(wrapped, (x,), graph, dynamo=False, opset_version=17,  # type: ignore[arg-type]
                              input_names=["frames" if seq else "pixels"], output_names=names,
                              do_constant_folding=True)
            onnx = graph.getvalue()
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "no probe", said on the page
        first = first_line(exc)
        raise SketchmineError(f"torch.onnx cannot export the model {run.attrs.get('model')}: {first[:300]}") from None
    check_size(f"the probe graph of {run.attrs.get('model')}", len(onnx), max_mb)
    notes += check_graph(onnx, wrapped, x, images or [], seq, data_dependent(caught), str(run.attrs.get("model")))
    return ProbeGraph(onnx, size, specs, notes, wrapped.steps, channels)


def onnx_graph(run: Run, model: Any, pre: Preprocessing, size: tuple[int, int],
               max_mb: float | None = MAX_MODEL_MB) -> ProbeGraph:
    """The probe graph of a run mined from an .onnx file (passes.probe_onnx)."""
    from sketchmine.passes.probe_onnx import onnx_probe_graph

    check_sequence_model(run_sequence(run), onnx_file=True)
    check_size(f"the model {model.path.name}", model.proto.ByteSize(), max_mb)
    layers, notes = probe_layers(run)
    data, specs, probabilities = onnx_probe_graph(run, model, pre, size, layers, MAP_SIDE)
    if probabilities:
        notes.append("the model's output is a softmax already: shown as it is, no second softmax")
    return ProbeGraph(data, size, [ProbeLayer(*s) for s in specs],
                      notes + [f"the run's ONNX file {model.path.name} with the preprocessing prepended"],
                      channels=pre.channels)


def dataset_images(run: Run, size: tuple[int, int], channels: int = 1) -> list[dict[str, Any]]:
    """Whole input images the run stores: the patches (`sketchmine visualize`) whose box is the
    whole input and nothing outside it, as [{index, cls, pixels (base64 of H*W*channels uint8,
    channels last)}], at most MAX_IMAGES: RGB for a 3-channel model (the image it mined, not its
    grey). A conv layer whose receptive field is as large as the input is no such layer: its
    patches are windows at its grid's positions, shifted and padded, not the image."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name in run.layers:
        if not run.has_array(name, "patches"):
            continue
        rf = run.layer_attrs(name).get("receptive_field") or {}
        if list(rf.get("size") or []) != list(size) or run.layer_attrs(name).get("position") in TIME_POSITIONS \
                or "spans" in rf:  # over time: its peak step's frame; behind an upsampling: a box, zeroed past it
            continue
        _, index, _ = run.topk(name)
        patches = run.layer_array(name, "patches")
        if tuple(patches.shape[2:4]) != tuple(size):
            continue
        vis: dict[str, Any] = run.layer_attrs(name).get("visualized") or {}
        units = len(index)
        done = int(vis["units_done"]) if "units_done" in vis else units
        whole = np.array([0, 0, size[0] - 1, size[1] - 1])  # (top, left, bottom, right), inclusive
        exact = ((run.layer_array(name, "boxes") == whole) & (run.layer_array(name, "inside") == whole)).all(-1)
        for u in range(min(done, units)):
            for r in range(index.shape[1]):
                i = int(index[u, r])
                if i < 0 or i in seen or len(out) >= MAX_IMAGES or not exact[u, r]:
                    continue
                seen.add(i)
                px = patches[u, r].astype(np.float32)
                if channels == 3:
                    px = np.repeat(px[..., :1], 3, -1) if px.shape[-1] == 1 else px[..., :3]
                else:
                    px = px[..., 0] if px.shape[-1] == 1 else px[..., :3] @ np.array(LUMA, np.float32)
                lab = int(run.labels[i])
                out.append({"index": i, "cls": run.class_names[lab] if 0 <= lab < len(run.class_names) else None,
                            "pixels": base64.b64encode(np.clip(np.rint(px), 0, 255).astype(np.uint8).tobytes()).decode()})
        if len(out) >= MAX_IMAGES:  # else the next such layer's images too
            break
    return out


def ink_polarity(images: list[dict[str, Any]], size: tuple[int, int]) -> tuple[str, str]:
    """("light" | "dark", how it was decided): ink is light when the images' background is dark,
    each image's background by the median of its one-pixel border (`background_of`, the rule of
    the progressive drawings): a large shape would sway the median of all pixels."""
    if not images:
        return "light", "no dataset images stored: drawing light ink on a dark background, as the embedded set is drawn"
    bg = [background_of(np.frombuffer(base64.b64decode(im["pixels"]), np.uint8).reshape(*size, -1)) for im in images]
    dark = sum(b == 0 for b in bg) * 2 >= len(bg)
    return ("light" if dark else "dark"), f"the border of the stored images is {'dark' if dark else 'light'}"


def probe_preprocessing(run: Run, given: object) -> Preprocessing:
    """The run's recorded preprocessing, else `given`: a run of a plain torch Dataset of tensors
    records none, and the probe cannot guess how pixels became its model's input (/255? channels?
    normalised?). `given` differing from a recorded one (but for a size it leaves open) is refused."""
    from sketchmine.passes.reload import run_preprocessing

    pre = run_preprocessing(run)
    if given is not None and not isinstance(given, Preprocessing):  # build_probe made a preset name one
        raise SketchmineError(f"preprocessing must be a preset name ({preset_names(dataset=False)}) or a Preprocessing, "
                              f"got {type(given).__name__} {given!r}")
    if pre is not None and given is not None and given != (pre if given.size else replace(pre, size=None)):
        raise SketchmineError(f"preprocessing={given.describe()} differs from the one run {run.path} records, "
                              f"{pre.describe()}; leave it out (it is only for a run that records none)")
    if pre is None and given is None:
        raise SketchmineError(f"run {run.path} does not record how pixels become the model's input (it was mined "
                              "from a torch Dataset of tensors, not images), so the probe cannot feed it a drawing; "
                              "mine an image folder or a sketchmine dataset, or pass build_probe(preprocessing="
                              "Preprocessing(...)) as the dataset prepared its images")
    return pre or given  # type: ignore[return-value]


def output_labels(run: Run, categories: list[str] | None) -> tuple[list[str], bool]:
    """(names of the model's outputs, whether they are the run's classes): a run mined with logits=False
    never checked its outputs against its classes: named by the model's categories, else "output i"."""
    if run.attrs.get("logits", True) is not False:
        return [str(c) for c in run.class_names], True
    return [str(c) for c in categories or []], False


def build_probe(run: Run | str, model: nn.Module | str | None = None, weights: str | None = None,
                size: Any = None, max_mb: float | None = MAX_MODEL_MB,
                preprocessing: str | Preprocessing | None = None) -> dict[str, bytes]:
    """The probe's files (name → bytes) for `write_report(probe=...)` / `write_probe_folder`: the
    metadata (model.js), the graph in base64 pieces (graph-NNN.js), onnxruntime-web with its loader
    (ort-loader.js) and WebAssembly (wasm-NNN.js) embedded: scripts all, because Chromium loads
    neither .wasm nor ES modules from file://. A graph over `max_mb` (None: no cap) is refused.
    `preprocessing` (a Preprocessing or a preset name, as `mine` takes it): for a run that records
    none (a plain torch Dataset); a run's own is refused where it differs ("dataset" is its own)."""
    from sketchmine.passes.reload import run_model

    max_mb = optional_positive(max_mb, "max_mb", "for no cap")
    run = run if isinstance(run, Run) else open_run(run)
    if preprocessing == "dataset" and (run.attrs.get("preprocessing") or {}).get("preset") == "dataset":
        preprocessing = None  # the mean and std of the images mined: the run's own, which only it holds
    check_onnx_packages()  # both before the model is loaded (seconds): what the environment lacks first
    ort = ort_files()
    loaded = run_model(run, model, weights) if isinstance(preprocessing, str) else None  # a preset is the model's
    pre = probe_preprocessing(run, given_preprocessing(loaded, preprocessing, "the probe") if loaded else preprocessing)
    loaded = loaded or run_model(run, model, weights)
    seq = run_sequence(run)
    if isinstance(loaded.module, nn.Module):
        size = input_size(run, pre, size)
        images = dataset_images(run, size, 1 if seq else pre.channels)
        net = loaded.module
        if input_dtype(net) != torch.float32:  # the browser's runtime computes in float32: a float32 copy
            net = copy.deepcopy(net).float()
        with eval_mode(net):  # the caller's module is given back with its own flags
            graph = export_graph(run, net, pre, size, max_mb, images)
    else:  # an .onnx file: its own graph, preprocessing prepended, outputs appended
        dims = loaded.module.image_dims()  # (N, C, H, W), of an (N, H, W, C) input too
        fixed = (int(dims[2]), int(dims[3])) if len(dims) == 4 and min(dims[2:]) > 0 else None
        size = input_size(run, pre, size, fixed)
        graph = onnx_graph(run, loaded.module, pre, size, max_mb)
        images = dataset_images(run, size, graph.channels)
    if run.precision != FLOAT32 and isinstance(loaded.module, nn.Module):  # an ONNX graph runs in its own dtype
        graph.notes.append(f"the probe computes in float32 and the run was mined in {run.precision}: its values "
                           "differ from the run's beyond float rounding")
    ink, why = sequence_ink(seq) or ink_polarity(images, size)
    labels, are_classes = output_labels(run, loaded.categories)
    meta = {"model": str(run.attrs.get("model")), "size": list(size), "classes": labels,
            "outputs_are_classes": are_classes, "preprocessing": pre.describe(4), "channels": graph.channels,
            "ink": ink, "ink_why": why,
            "layers": [{"name": l.name, "units": l.units, "grid": list(l.grid) if l.grid else None, "pool": l.pool,
                        "classes": class_units(run, l.name)} for l in graph.layers],  # units named by class
            "top": TOP_UNITS, "notes": graph.notes, "images": images,
            "images_note": "" if images else "no dataset images: the run stores no patches of a layer that sees the "
                                             "whole input (sketchmine visualize RUN --layers LAYER adds them)",
            "ort": ORT_VERSION, "model_bytes": len(graph.onnx), "sequence": seq, "step_probs": graph.steps}
    files = {"ort.wasm.min.js": ort["ort.wasm.min.js"],
             "ort-loader.js": ("window.sketchmineOrtMjs = " + json.dumps(ort["ort-wasm-simd-threaded.mjs"].decode("utf-8"))
                               .replace("<", "\\u003c") + ";\n").encode()}
    files.update(chunk_scripts("wasm", ort["ort-wasm-simd-threaded.wasm"]))
    files.update(chunk_scripts("graph", graph.onnx))
    # the page checks that every piece arrived, naming a missing one (a copied report may lose files)
    meta["pieces"] = {k: sorted(n for n in files if n.startswith(k + "-")) for k in ("wasm", "graph")}
    files["model.js"] = ("window.sketchmineProbeModel = " + json.dumps(meta, ensure_ascii=True).replace("<", "\\u003c")
                         + ";\n").encode()
    return files


def chunk_scripts(kind: str, data: bytes) -> dict[str, bytes]:
    """`data` in base64 as scripts of at most CHUNK characters each ("graph-000.js", ...), each pushing
    its piece to window.sketchmineChunks[kind]: Chromium parses many 8 MB string literals about five
    times faster than one of 100 MB (measured), and every piece decodes on its own (4 | CHUNK)."""
    text = base64.b64encode(data).decode()
    head = f"(window.sketchmineChunks = window.sketchmineChunks || {{}})[{json.dumps(kind)}] = " \
           f"window.sketchmineChunks[{json.dumps(kind)}] || [];\nwindow.sketchmineChunks[{json.dumps(kind)}].push(\""
    return {f"{kind}-{i // CHUNK:03d}.js": (head + text[i:i + CHUNK] + "\");\n").encode()
            for i in range(0, max(len(text), 1), CHUNK)}
