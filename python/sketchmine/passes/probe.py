"""The live probe's export: the run's model as an ONNX graph the report's probe page runs in
the browser (onnxruntime-web, WebAssembly), with the run's preprocessing inside the graph.

The graph takes `pixels`, float32 (1, 1, H, W) grey values 0-255 at the model's input size
(the page resizes the canvas to H×W itself, see docs/probe.md), and does exactly what the
miner does to such an image: /255, grey repeated to the model's channels, the run's recorded
normalisation. Its outputs are `probs` (softmax of the logits), then per tapped layer
`max<i>` (units,): each unit's maximum over its positions (the value the top-k ranks), and
for grid layers `map<i>` (units, h, w): the map, max-pooled to at most MAP_SIDE per side so
that the output stays bounded. Layers are tapped as the miner taps them (`Taps`, before any
in-place op that follows), so the browser sees what the run mined.

This is a pass (it needs the model); the report stays a reader: `write_report(probe=...)`
only writes the bytes this module returns.
"""
from __future__ import annotations

import base64
import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine.data.preprocess import Preprocessing, convert_channels
from sketchmine.errors import SketchmineError
from sketchmine.model.backend import first_tensor
from sketchmine.model.taps import SOFTMAX, Taps
from sketchmine.passes.probe_sequence import (TIME_POSITIONS, check_sequence_model, last_frame, prefix_problem,
                                              run_sequence, sequence_ink, step_probs)
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
ORT_VERSION = "1.30.0"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_DIR = Path(__file__).resolve().parents[1] / "present" / "report_assets" / "ort"
"""Where scripts/vendor_ort_web.sh puts onnxruntime-web's WebAssembly build (not committed: 14 MB)."""


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


class ProbeNet(nn.Module):
    """pixels (1, 1, H, W) 0-255 → (probs, max0, map0?, max1, ...): the miner's preprocessing,
    the model, and the tapped layers as extra outputs. With `steps`, the input is a sequence's
    frames (1, T, 1, H, W) and `steps` (T, classes) follows `probs` (passes.probe_sequence)."""

    def __init__(self, net: nn.Module, layers: list[str], pre: Preprocessing, steps: bool = False) -> None:
        super().__init__()
        self.net, self.layers, self.pre, self.steps = net, layers, pre, steps
        self.pools: dict[str, int] = {}

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """0-255 grey (..., 1, H, W) → the model's input, as the miner prepares an image (each frame)."""
        x = pixels / 255.0
        if self.pre.channels != 1:
            x = convert_channels(x, self.pre.channels)
        return self.pre.normalise(x)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.prepare(pixels)
        got: dict[str, torch.Tensor] = {}
        with Taps(self.net, self.layers, lambda n, t: got.__setitem__(n, t.clone())) as taps:
            logits = first_tensor(self.net(x))
        outs = [torch.softmax(logits.flatten(1), dim=1)[0]]
        if self.steps:
            outs.append(step_probs(self.net, x, outs[0]))
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
                          f"whole input); pass size=(H, W), on the command line `sketchmine probe {run.path} --out "
                          "DIR --size H W` (report has no --size)")


def probe_layers(run: Run) -> tuple[list[str], list[str]]:
    """(layers the probe taps, notes on those it leaves out): every mined layer but the virtual
    softmax (the probabilities are shown anyway); layers whose position is time only in sequence
    runs (where their maximum over the steps is the value the miner ranks)."""
    keep, notes = [], []
    seq = run_sequence(run) is not None
    for name in run.layers:
        a = run.layer_attrs(name)
        if name == SOFTMAX:
            continue
        if not seq and (a.get("position") in TIME_POSITIONS or a.get("time_steps")):
            notes.append(f"layer {name} is left out: its position is time (the probe draws one image)")
            continue
        keep.append(name)
    return keep, notes


def check_size(what: str, nbytes: int, max_mb: float | None) -> None:
    """Refuse a probe graph over the cap (None: no cap), saying how to raise it."""
    if max_mb is not None and nbytes > max_mb * 1e6:
        raise SketchmineError(f"{what} is {nbytes / 1e6:.1f} MB, over the probe's cap of {max_mb:g} MB (the page "
                              f"embeds it); raise it with --probe-max-mb (sketchmine probe: --max-mb) or "
                              "build_probe(max_mb=...)")


def export_graph(run: Run, net: nn.Module, pre: Preprocessing, size: tuple[int, int],
                 max_mb: float | None = MAX_MODEL_MB) -> ProbeGraph:
    """torch.onnx export (TorchScript exporter, opset 17) of `ProbeNet`; a model it cannot
    export, or one whose graph would be over `max_mb`, raises a SketchmineError that says why
    (the report then goes without the probe)."""
    check_size(f"the model {run.attrs.get('model')} (its weights alone)",
               sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers())), max_mb)
    seq = run_sequence(run)
    layers, notes = probe_layers(run)
    shape = (1, seq["steps"], 1, *size) if seq else (1, 1, *size)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 255
    wrapped = ProbeNet(net.eval(), layers, pre).eval()
    why = prefix_problem(net, wrapped.prepare(x)) if seq else None
    if why:
        notes.append(f"no prediction per step: {why}")
    wrapped.steps = bool(seq) and not why
    try:
        with torch.no_grad():
            outs = wrapped(x)  # the test forward: a model that cannot take this input is said, not a traceback
    except Exception as exc:  # noqa: BLE001 - any failure means "no probe", said on the page (report) or as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SketchmineError(f"the model {run.attrs.get('model')} cannot run on the probe's input of shape "
                              f"{tuple(shape)} ({size[0]}×{size[1]} grey): {type(exc).__name__}: {first[:300]}") from None
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
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), Path(tmp) / "probe.onnx", dynamo=False, opset_version=17,
                              input_names=["frames" if seq else "pixels"], output_names=names,
                              do_constant_folding=True)
            onnx = (Path(tmp) / "probe.onnx").read_bytes()
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "no probe", said on the page
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SketchmineError(f"torch.onnx cannot export the model {run.attrs.get('model')}: {first[:300]}") from None
    check_size(f"the probe graph of {run.attrs.get('model')}", len(onnx), max_mb)
    return ProbeGraph(onnx, size, specs, notes, wrapped.steps)


def onnx_graph(run: Run, model: Any, pre: Preprocessing, size: tuple[int, int],
               max_mb: float | None = MAX_MODEL_MB) -> ProbeGraph:
    """The probe graph of a run mined from an .onnx file (passes.probe_onnx)."""
    from sketchmine.passes.probe_onnx import onnx_probe_graph

    check_sequence_model(run_sequence(run), onnx_file=True)
    check_size(f"the model {model.path.name}", model.proto.ByteSize(), max_mb)
    layers, notes = probe_layers(run)
    data, specs = onnx_probe_graph(run, model, pre, size, layers, MAP_SIDE)
    return ProbeGraph(data, size, [ProbeLayer(*s) for s in specs],
                      notes + [f"the run's ONNX file {model.path.name} with the preprocessing prepended"])


def dataset_images(run: Run, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Whole input images the run stores: the patches (`sketchmine visualize`) of a layer that sees
    the whole input, as [{index, cls, pixels (base64 of H*W uint8)}], at most MAX_IMAGES."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name in run.layers:
        if not run.has_array(name, "patches"):
            continue
        rf = run.layer_attrs(name).get("receptive_field") or {}
        if list(rf.get("size") or []) != list(size) or run.layer_attrs(name).get("position") in TIME_POSITIONS:
            continue  # a layer over time stores the frame of its peak step, not the whole drawing
        _, index, _ = run.topk(name)
        patches = run.layer_array(name, "patches")
        if tuple(patches.shape[2:4]) != tuple(size):
            continue
        vis: dict[str, Any] = run.layer_attrs(name).get("visualized") or {}
        units = len(index)
        done = int(vis["units_done"]) if "units_done" in vis else units
        for u in range(min(done, units)):
            for r in range(index.shape[1]):
                i = int(index[u, r])
                if i < 0 or i in seen or len(out) >= MAX_IMAGES:
                    continue
                seen.add(i)
                grey = patches[u, r].astype(np.float32)
                grey = grey[..., 0] if grey.shape[-1] == 1 else grey[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
                lab = int(run.labels[i])
                out.append({"index": i, "cls": run.class_names[lab] if 0 <= lab < len(run.class_names) else None,
                            "pixels": base64.b64encode(np.clip(np.rint(grey), 0, 255).astype(np.uint8).tobytes()).decode()})
        if out:
            break
    return out


def ink_polarity(images: list[dict[str, Any]]) -> tuple[str, str]:
    """("light" | "dark", how it was decided): ink is light when the images' border (background) is dark."""
    if not images:
        return "light", "no dataset images stored: drawing light ink on a dark background, as the embedded set is drawn"
    border = []
    for im in images:
        a = np.frombuffer(base64.b64decode(im["pixels"]), np.uint8)
        border.append(float(np.median(a)))
    bg = float(np.median(border))
    return ("light" if bg < 128 else "dark"), f"background of the stored images is {'dark' if bg < 128 else 'light'}"


def ort_files() -> dict[str, bytes]:
    """The vendored onnxruntime-web WebAssembly build, or an error naming the script that vendors it."""
    missing = [n for n in ORT_FILES if not (ORT_DIR / n).is_file()]
    if missing:
        raise SketchmineError(f"onnxruntime-web is not vendored ({ORT_DIR / missing[0]} is missing): run "
                              f"scripts/vendor_ort_web.sh (installs onnxruntime-web@{ORT_VERSION} from npm)")
    return {n: (ORT_DIR / n).read_bytes() for n in ORT_FILES}


def build_probe(run: Run | str, model: nn.Module | str | None = None, weights: str | None = None,
                size: Any = None, max_mb: float | None = MAX_MODEL_MB) -> dict[str, bytes]:
    """The probe's files (name → bytes) for `write_report(probe=...)` / `write_probe_folder`: the
    metadata (model.js), the graph in base64 pieces (graph-NNN.js), onnxruntime-web with its loader
    (ort-loader.js) and WebAssembly (wasm-NNN.js) embedded: scripts all, because Chromium loads
    neither .wasm nor ES modules from file://. A graph over `max_mb` (None: no cap) is refused."""
    from sketchmine.passes.reload import run_model, run_preprocessing

    run = run if isinstance(run, Run) else open_run(run)
    ort = ort_files()
    loaded = run_model(run, model, weights)
    pre = run_preprocessing(run) or Preprocessing("none", 1)
    if isinstance(loaded.module, nn.Module):
        size = input_size(run, pre, size)
        graph = export_graph(run, loaded.module, pre, size, max_mb)
    else:  # an .onnx file: its own graph, preprocessing prepended, outputs appended
        dims = [d.dim_value for d in loaded.module.input.type.tensor_type.shape.dim]
        fixed = (int(dims[2]), int(dims[3])) if len(dims) == 4 and min(dims[2:]) > 0 else None
        size = input_size(run, pre, size, fixed)
        graph = onnx_graph(run, loaded.module, pre, size, max_mb)
    images = dataset_images(run, size)
    seq = run_sequence(run)
    ink, why = sequence_ink(seq) or ink_polarity(images)
    meta = {"model": str(run.attrs.get("model")), "size": list(size), "classes": [str(c) for c in run.class_names],
            "preprocessing": pre.describe(), "channels": pre.channels, "ink": ink, "ink_why": why,
            "layers": [{"name": l.name, "units": l.units, "grid": list(l.grid) if l.grid else None, "pool": l.pool}
                       for l in graph.layers],
            "top": TOP_UNITS, "notes": graph.notes, "images": images,
            "images_note": "" if images else "no dataset images: the run stores no patches of a layer that sees the "
                                             "whole input (sketchmine visualize RUN --layers LAYER adds them)",
            "ort": ORT_VERSION, "model_bytes": len(graph.onnx), "sequence": seq, "step_probs": graph.steps}
    files = {"model.js": ("window.sketchmineProbeModel = " + json.dumps(meta, ensure_ascii=True).replace("<", "\\u003c")
                          + ";\n").encode(),
             "ort.wasm.min.js": ort["ort.wasm.min.js"],
             "ort-loader.js": ("window.sketchmineOrtMjs = " + json.dumps(ort["ort-wasm-simd-threaded.mjs"].decode("utf-8"))
                               .replace("<", "\\u003c") + ";\n").encode()}
    files.update(chunk_scripts("wasm", ort["ort-wasm-simd-threaded.wasm"]))
    files.update(chunk_scripts("graph", graph.onnx))
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
