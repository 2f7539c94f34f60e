"""ONNX Runtime backend: mine an `.onnx` model by exposing its tapped tensors as graph outputs.

The forward abstraction (backend.Forward, registered for OnnxModel at the end of this module) the miner shares with the torch path: `open(layers, on_output)`
yields a callable that runs one batch, hands every tapped tensor to `on_output(name, t)`
and returns the logits (the graph's first floating output, as (N, C)). Intermediate tensors become extra
graph outputs of an in-memory copy of the model; the file on disk is never changed.

Layer names: a torch module name when the model came from `torch.onnx.export` (its node
names "/features/features.0/Conv", or the new exporter's `pkg.torch.onnx.name_scopes`
metadata, say which module a node belongs to; the module's output is the last node of
its scope), else a node name, else a tensor name ("/" is written "|" in the run); see
onnx_names, which also refuses a module whose computation the exporter folded away
(a conv with its BatchNorm folded in).
Requires `onnx` and `onnxruntime` (`onnxruntime-gpu` for device="cuda"); both are
imported only when an ONNX model is used.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchmine.ctrl_c import imported
from sketchmine.errors import SketchmineError, SketchmineFailure, closest
from sketchmine.model.backend import WEIGHTS_HASH, LoadedModel, RowsNotImages, register_backend, weights_hasher
from sketchmine.model.layouts import tokens_of_images, unplaced_note
from sketchmine.model.onnx_batch import image_axes, joined
from sketchmine.model.onnx_fields import layer_records
from sketchmine.model.onnx_file import as_rows, declared, floating, graph_weights, image_input, logits_output, read_graph
from sketchmine.model.onnx_layout import channels_last_input, sized_tensors, unit_layouts
from sketchmine.model.onnx_names import SLASH, GraphNames
from sketchmine.model.taps import RANKED_BY_INPUT, SOFTMAX

NODES_HASH = f"{WEIGHTS_HASH}+nodes"
"""The weights hash a new run of a graph records: initializers and every floating Constant node.
Runs recorded plain xxh3_128, which left out the Constant nodes of a graph that also had floating
initializers, so one whose weights differed there alone resumed as the same model."""



class OnnxRunError(SketchmineFailure):
    """ONNX Runtime refused or failed a batch (its pybind errors are no Python built-ins): the
    input shape, the graph's declared one and ORT's message, in one line. A failure (exit 1)
    mid-run; `forward.probe` turns one on the first image into a refused input (exit 3)."""


def _modules() -> tuple[Any, Any]:
    """onnx and onnxruntime, or an error that says how to install them."""
    try:  # Ctrl-C held while they load (sketchmine/ctrl_c.py)
        onnx, onnxruntime = imported("onnx"), imported("onnxruntime")
    except ImportError as exc:
        raise SketchmineError(f"mining an ONNX model needs the onnx and onnxruntime packages ({exc.name} is "
                              "missing): pip install 'sketchmine[onnx]' ('sketchmine[gpu]' for CUDA)") from None
    return onnx, onnxruntime


def load_onnx(path: str | Path, weights: str | os.PathLike | None = None) -> LoadedModel:
    """An ONNX file as a LoadedModel whose `module` is an OnnxModel (id: "onnx:<file name>")."""
    if weights:
        raise SketchmineError(f"{path}: an ONNX file carries its own weights; drop --weights {weights}")
    model = OnnxModel(path)
    outputs = [o.name for o in model.proto.graph.output]
    kinds = floating(_modules()[0])
    which = ("the first floating one" if any(o.type.tensor_type.elem_type in kinds for o in model.proto.graph.output)
             else "the first, none being floating")
    said = (f"its logits are the graph's output {model.logits_name!r}, {which} of its outputs "
            f"{', '.join(outputs)}") if len(outputs) > 1 else None
    return LoadedModel(model, f"onnx:{model.path.name}", None, logits_from=said)  # type: ignore[arg-type]


class OnnxModel:
    """A loaded ONNX graph: layer names, tensor shapes and an ONNX Runtime session with the
    tapped tensors as extra outputs (one session per layer set and device, built lazily)."""

    def __init__(self, path: str | Path) -> None:
        onnx, _ = _modules()
        self.path = Path(path)
        self.proto, self._as_stored = read_graph(onnx, self.path)  # the latter: a graph of over 2 GB
        graph = self.proto.graph
        self.input = image_input(onnx, graph, self.path)
        # (N, H, W, C), Transposed to (N, C, H, W) inside (tf2onnx): fed the images so; an input of
        # no declared shape too, as onnx_layout reads its tensors
        self.channels_last = len(self.declared_input()) in (0, 4) and channels_last_input(graph, self.input.name)
        self.logits_name = logits_output(onnx, graph.output)
        self.device = torch.device("cpu")
        self._sessions: dict[tuple[Any, ...], Any] = {}
        # per tensor set: the layers with units not on axis 1, and those whose units the graph does not place
        self._layouts: dict[tuple[str, ...], tuple[dict[str, dict[str, Any]], list[str]]] = {}
        self.unplaced: list[str] = []  # of the tensor set run last
        self._image_axes: dict[str, int | None] = {}  # per tensor, under a fixed batch size (onnx_batch)
        self.order: list[str] = []  # the tapped layers of the last `shapes`
        # logits=False: set to a tapped layer, as TorchForward's; the graph runs whole (ONNX Runtime
        # cannot stop it early), and its logits are dropped, as a model whose classes are not the dataset's
        self.stop_after: str | None = None
        self.names = GraphNames(graph, self.path.name)

    def declared_input(self) -> tuple[int | str, ...]:
        """The image input's shape as the graph declares it (a name or "?" for a free dimension)."""
        return declared(self.input)

    # ---- facts the miner records (backend.Forward) ------------------------------------
    def image_dims(self) -> tuple[int, ...]:
        """The image input's (N, C, H, W) as the graph fixes them (0 where free), whichever order it
        takes them in."""
        dims = tuple(max(int(d.dim_value), 0) for d in self.input.type.tensor_type.shape.dim)
        return (dims[0], dims[3], dims[1], dims[2]) if self.channels_last and dims else dims

    def input_channels(self, default: int = 3) -> int:
        """The image input's channels when the graph fixes them."""
        dims = self.image_dims()
        return dims[1] if len(dims) > 1 and dims[1] > 0 else default

    def weights_hash(self, algorithm: str | None = None) -> str:
        """"<algorithm>:<digest>" over the name, shape, type and bytes of every weight
        (`onnx_file.graph_weights`): NODES_HASH, what a new run records, hashes the initializers
        and every floating Constant node; plain xxh3_128 or sha256, as older runs recorded them,
        the Constant nodes only of a graph without floating initializers."""
        from onnx import numpy_helper

        algorithm = algorithm or NODES_HASH
        h = weights_hasher(algorithm)
        for name, t in graph_weights(_modules()[0], self.proto.graph, every_constant=algorithm.endswith("+nodes")):
            arr = np.ascontiguousarray(numpy_helper.to_array(t))
            h.update(f"{name}:{tuple(t.dims)}:{t.data_type}\n".encode())
            h.update(arr.reshape(-1).view(np.uint8).data)
        return f"{algorithm}:{h.hexdigest()}"

    def weights_hash_later(self, algorithm: str | None = None) -> Callable[[], str]:
        """`weights_hash`, for any thread: nothing changes the graph's initializers."""
        return functools.partial(self.weights_hash, algorithm)

    def weights_dtype(self) -> torch.dtype:
        """The floating dtype of the graph's first floating weight (float32 when it has none): a
        float16 graph's activations are float16's, which its run records and says."""
        onnx, _ = _modules()
        kinds = floating(onnx)
        return next((kinds[t.data_type] for _, t in graph_weights(onnx, self.proto.graph) if t.data_type in kinds),
                    torch.float32)

    # ---- layers ----------------------------------------------------------------------
    def default_layers(self) -> list[str]:
        """Every Conv, Gemm and MatMul output in graph order, plus the softmax (onnx_names)."""
        return self.names.default_layers()

    def tensor(self, layer: str) -> str | None:
        """The tensor a layer name stands for: module, then node, then tensor name."""
        return self.names.tensor(layer)

    def _unknown(self, name: str) -> SketchmineError:
        """Why a layer name has no tensor: a module whose computation the exporter folded
        away, or no such name (with the closest matches)."""
        if name in self.names.refused:
            return SketchmineError(self.names.refused[name])
        if clash := self.names.clash(name):
            return SketchmineError(clash)
        hint = closest(name, [*self.names.by_module, *self.names.by_node, *self.names.producer])
        return SketchmineError(
            f"unknown layer {name!r} in {self.path.name} (no such torch module, node or tensor)"
            + (f"; closest matches: {', '.join(hint)}" if hint else "")
            + f". Layers available by default: {', '.join(self.default_layers())}")

    def resolve_layers(self, layers: Sequence[str] | None) -> list[str]:
        """Validate requested layer names; unknown names raise with the closest matches."""
        if layers is None:
            return self.default_layers()
        result: list[str] = []
        for name in layers:
            if name != SOFTMAX and self.tensor(name) is None:
                raise self._unknown(name)
            name = name.replace("/", SLASH)
            if name not in result:
                result.append(name)
        return result

    def kind(self, layer: str) -> str:
        """The producing op, lower case ("conv", "gemm"), or "softmax" for the virtual layer."""
        if layer == SOFTMAX:
            return "softmax"
        return str(self.names.producer[self.tensor(layer)].op_type).lower()

    def fields(self, sample: tuple[int, ...], progress: Any) -> dict[str, Any]:
        """Receptive field per tapped layer as store attributes, from the graph at the input size of
        `sample` (C, H, W) (`onnx_fields`; "*": the whole image); a layer after an op the analysis
        cannot follow gets None, and which did is said once, as is a graph that cannot be analysed.
        Said too: the tapped tensors read along axis 1 that the graph does not place."""
        if self.unplaced:
            progress.note(unplaced_note(self.unplaced, of=f" of {self.path.name}"))
        batch = self.image_dims()[0] if self.image_dims() else 0
        try:
            records, note = layer_records(self.proto, self.input.name, sample, batch or 1, self.channels_last,
                                          {layer: self.tensor(layer) for layer in self.order if layer != SOFTMAX})
        except SketchmineError as exc:
            progress.note(f"no receptive fields recorded: {exc}")
            return {}
        if note:
            progress.note(note)
        return records

    # ---- running ---------------------------------------------------------------------
    def to(self, device: torch.device | str) -> OnnxModel:
        self.device = torch.device(device)
        return self

    def _session(self, tensors: tuple[str, ...]) -> Any:
        """An InferenceSession over a copy of the graph with `tensors` as extra outputs."""
        key = (tensors, str(self.device))
        if key in self._sessions:
            return self._sessions[key]
        onnx, ort = _modules()
        model = onnx.ModelProto()
        model.CopyFrom(self.proto if self._as_stored is None else self._as_stored)
        present = {o.name for o in model.graph.output}
        for name in tensors:
            if name not in present:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                present.add(name)
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SketchmineError(
                    f"device {self.device} for {self.path.name} needs onnxruntime-gpu (pip install "
                    "'sketchmine[gpu]'); the installed onnxruntime offers " + ", ".join(ort.get_available_providers()))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as torch
        if self._as_stored is not None:  # its weights read by ONNX Runtime from their files (onnxruntime>=1.21)
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.path.parent))
        try:
            session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        except Exception as exc:
            raise SketchmineError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        self._sessions[key] = session
        return session

    def _runner(self, tensors: tuple[str, ...]) -> Callable[[torch.Tensor], list[np.ndarray]]:
        """Runs a batch; a graph with a fixed batch size gets it in padded chunks of that size,
        each tensor joined along the axis of its images (`onnx_batch`)."""
        session = self._session(tensors)
        onnx, _ = _modules()
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.input.type.tensor_type.elem_type)
        dims = self.input.type.tensor_type.shape.dim
        fixed = int(dims[0].dim_value) if dims and dims[0].dim_value > 0 else 0
        names = [self.input.name]

        def alone(arr: np.ndarray) -> bool:
            """Whether the graph runs the first image alone: it fixes its batch at one inside."""
            try:
                session.run(list(tensors), {names[0]: arr[:1]})
            except Exception as exc:
                if not type(exc).__module__.startswith("onnxruntime"):
                    raise
                return False
            return True

        def call(arr: np.ndarray) -> list[np.ndarray]:
            try:
                return session.run(list(tensors), {names[0]: arr})
            except Exception as exc:  # ONNX Runtime's own (pybind) errors: one line, not a traceback
                if not type(exc).__module__.startswith("onnxruntime"):
                    raise
                raise OnnxRunError(f"ONNX Runtime cannot run {self.path.name} on input {names[0]!r} of shape "
                                   f"{tuple(arr.shape)} (the graph declares {self.declared_input()}): "
                                   f"{' '.join(str(exc).split())[:400]}"
                                   + ("; it runs one image alone: a graph that fixes its batch inside (a Reshape to "
                                      "(1, -1)) though its input leaves it free runs with --batch-size 1 (batch_size=1)"
                                      if len(arr) > 1 and not fixed and alone(arr) else "")) from None

        def run(x: torch.Tensor) -> list[np.ndarray]:
            arr = x.detach().cpu().numpy().astype(dtype, copy=False)
            if self.channels_last:
                arr = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
            if not fixed or len(arr) == fixed:
                return call(arr)
            if any(t not in self._image_axes for t in tensors):  # asked of the graph once per tensor
                self._image_axes.update(zip(tensors, image_axes(call, arr[0], fixed), strict=True))
            parts = []
            for s in range(0, len(arr), fixed):
                chunk = arr[s:s + fixed]
                if len(chunk) < fixed:
                    chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), dtype)])
                parts.append(call(chunk))
            return [joined([p[i] for p in parts], self._image_axes[t], len(arr), fixed) for i, t in enumerate(tensors)]

        return run

    def _plan(self, layers: Sequence[str]) -> tuple[tuple[str, ...], list[tuple[str, int]], dict[str, int]]:
        """Tensors to fetch (logits first, each once), the position of every tapped layer's, and
        of the input of each layer a Softmax / LogSoftmax node makes (its logits: `fed`)."""
        tensors = [self.logits_name]
        at: list[tuple[str, int]] = []
        fed: dict[str, int] = {}
        for layer in layers:
            if layer == SOFTMAX:
                continue
            t = self.tensor(layer)
            if t is None:
                raise self._unknown(layer)
            node = _softmax_node(self.names.producer.get(t))
            for name in [t, *(node.input[:1] if node is not None else [])]:
                if name not in tensors:
                    tensors.append(name)
            at.append((layer, tensors.index(t)))
            if node is not None:
                fed[layer] = tensors.index(node.input[0])
        return tuple(tensors), at, fed

    def shapes(self, layers: Sequence[str], x: torch.Tensor, whole: bool = True
               ) -> tuple[dict[str, tuple[int, ...]], torch.Tensor | None, dict[str, dict[str, Any]]]:
        """Per-layer output shapes (without the batch dim), the logits, and per-layer store
        attributes (the tensor each layer reads), from one real run (whole, as ONNX Runtime runs
        a graph: `whole` is the torch path's)."""
        tensors, at, fed = self._plan(layers)
        arrays = self._runner(tensors)(x)
        shapes: dict[str, tuple[int, ...]] = {}
        rows = [layer for layer, i in at if arrays[i].ndim and arrays[i].shape[0] != x.shape[0]]
        if rows:  # (L, N, E), (N·heads, T, T), or a batch doubled: its rows are not the images
            a = arrays[dict(at)[rows[0]]]
            raise RowsNotImages(rows, a.shape[0], x.shape[0], of=f" of {self.path.name}")
        moved = self._moved(tensors, at, arrays, x)
        for layer, i in at:
            a = arrays[i]
            if a.dtype not in (np.float32, np.float16) or a.ndim < 2:  # a double would be ranked as float32
                raise SketchmineError(f"layer {layer!r} of {self.path.name} is a {a.dtype} tensor of shape "
                                      f"{a.shape}; only float32 or float16 (N, C, ...) tensors can be mined")
            shapes[layer] = tuple(np.moveaxis(a, -1, 1).shape[1:] if layer in moved else a.shape[1:])
        layouts: dict[str, dict[str, Any]] = {layer: {"onnx_tensor": tensors[i], **moved.get(layer, {})}
                                              for layer, i in at}
        for layer, i in fed.items():  # a softmax over the units of (N, units) logits: ranked by their log-odds
            if arrays[i].ndim == 2 and arrays[i].shape == arrays[dict(at)[layer]].shape:
                layouts[layer]["ranked_by"] = RANKED_BY_INPUT
        self.order = list(shapes)
        return shapes, torch.from_numpy(as_rows(arrays[0])), tokens_of_images(layouts, x.ndim - 1)

    @contextlib.contextmanager
    def open(self, layers: Sequence[str], on_output: Callable[[str, torch.Tensor], None],
             on_fed: Callable[[str, torch.Tensor], None] | None = None
             ) -> Iterator[Callable[[torch.Tensor], torch.Tensor | None]]:
        """The forward callable: one session run per batch, every tapped tensor to `on_output`,
        and the logits a Softmax node is fed to `on_fed` before its output."""
        tensors, at, fed = self._plan(layers)
        run, device = self._runner(tensors), self.device

        def forward(x: torch.Tensor) -> torch.Tensor | None:
            arrays = run(x)
            moved = self._moved(tensors, at, arrays, x)
            for layer, i in at:
                if on_fed is not None and layer in fed:  # used where `shapes` recorded ranked_by
                    on_fed(layer, torch.from_numpy(arrays[fed[layer]]).to(device, non_blocking=True))
                t = torch.from_numpy(arrays[i]).to(device, non_blocking=True)
                on_output(layer, t.movedim(t.ndim - 1, 1) if layer in moved else t)
            return None if self.stop_after is not None else torch.from_numpy(as_rows(arrays[0])).to(device, non_blocking=True)

        yield forward

    def _moved(self, tensors: tuple[str, ...], at: list[tuple[str, int]], arrays: list[np.ndarray],
               x: torch.Tensor) -> dict[str, dict[str, Any]]:
        """The tapped layers whose units are their tensor's last axis (`onnx_layout.unit_layouts`),
        with the attributes saying so; worked out once per tensor set, from the first run's ranks,
        and where the graph's reshapes matter, their sizes on three copies of the batch's first image
        (a batch of a size the model's own axes are unlikely to have)."""
        if tensors not in self._layouts:
            tapped, ranks = {layer: tensors[i] for layer, i in at}, {layer: arrays[i].ndim for layer, i in at}
            got = unit_layouts(self.proto.graph, tapped, ranks)
            reshaped = tuple(sized_tensors(self.proto.graph))
            if got[1] and reshaped:  # measured only for a graph whose reshapes may place a layer
                sizes = dict(zip(reshaped, (a.shape for a in self._runner(reshaped)(x[:1].expand(3, *x.shape[1:]))), strict=True))
                self._sessions.pop((reshaped, str(self.device)), None)  # a second copy of the weights: not kept
                got = unit_layouts(self.proto.graph, tapped, ranks, sizes)
            self._layouts[tensors] = got
        moved, self.unplaced = self._layouts[tensors]
        return moved


def _softmax_node(node: Any) -> Any:
    """`node` when it is a Softmax / LogSoftmax over the last axis (on (N, units) logits: the units;
    an axis 0 normalises over the batch), else None."""
    if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    return node if axis in (1, -1) else None


register_backend(OnnxModel, lambda model: model)  # an OnnxModel is its own Forward
