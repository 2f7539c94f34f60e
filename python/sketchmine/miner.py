"""The streaming pass: loader → model → taps → topk_update → state → store.

One pass over the dataset in its stable order; every `flush_every` batches the state
is checkpointed so that re-running the same call resumes and ends identical to an
uninterrupted run (the top-k order is total, so results do not depend on where the
pass was cut, nor on batch size).
"""
from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import __version__
from . import classstats
from .data import MinerDataset, Preprocessing, as_miner_dataset, collate, compute_mean_std, preset
from .errors import SketchmineError
from .models import LoadedModel, input_channels, load_model, weights_hash
from .receptive_field import receptive_fields
from .run import Run, class_counts
from .store import RunLock, RunStore, is_run
from .taps import SOFTMAX, Taps, layer_kind, resolve_layers
from .topk import RunningTopK


class Progress(Protocol):
    """What the miner reports; the CLI draws it with rich, the API may pass None."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...


class _Silent:
    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None:
        import warnings

        warnings.warn(message, stacklevel=3)


@dataclass
class _Layer:
    name: str
    channels: int
    spatial: tuple[int, ...]
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)  # how the tap read it (taps.Taps.layouts)


@dataclass
class _Pending:
    """Rows produced since the last flush."""

    start: int
    logits: list[tuple[np.ndarray, torch.Tensor | None]] = field(default_factory=list)  # (ok mask, logits)
    labels: list[np.ndarray] = field(default_factory=list)

    def logit_rows(self) -> np.ndarray | None:
        """(rows, classes) float32, NaN for skipped images; copied off the device only here."""
        widths = {t.shape[1] for _, t in self.logits if t is not None and t.ndim == 2}
        if not widths:
            return None
        rows = np.full((sum(len(ok) for ok, _ in self.logits), widths.pop()), np.nan, dtype=np.float32)
        at = 0
        for ok, t in self.logits:
            if t is not None:
                rows[at:at + len(ok)][ok] = t.float().cpu().numpy()
            at += len(ok)
        return rows


def _kind(model: nn.Module, name: str) -> str:
    return layer_kind(model, name)


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _probe(model: nn.Module, layers: list[str], x: torch.Tensor) -> tuple[list[_Layer], int | None]:
    """Shapes of the tapped outputs and the logit count, from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.inference_mode(), Taps(model, layers, lambda n, t: shapes.setdefault(n, tuple(t.shape[1:]))) as taps:
        out = _shape_forward(model, x)
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
        result.append(_Layer(name, shape[0], tuple(shape[1:]), _kind(model, name), taps.layouts.get(name, {})))
    return result, num_classes


def _shape_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output for `x`, on the meta device when every op allows it: shapes
    without arithmetic (a VGG-19 forward costs ~0.25 s on two cores); else a real forward."""
    try:
        meta = {n: t.to("meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
        return _first_tensor(torch.func.functional_call(model, meta, (x.to("meta"),)))
    except Exception:  # an op without a meta kernel: compute for real
        return _first_tensor(model(x))


def _fields(net: nn.Module, size: tuple[int, int], progress: Progress) -> dict[str, dict[str, list[int]] | None]:
    """Receptive field per module as store attributes ("*": the whole image, for the virtual
    softmax); a model the graph analysis cannot handle is mined all the same, without them."""
    try:
        rf = receptive_fields(net, size)
    except SketchmineError as exc:
        progress.note(f"no receptive fields recorded: {exc}")
        return {}
    out: dict[str, dict[str, list[int]] | None] = {
        name: {"size": list(f.size), "stride": list(f.stride), "offset": list(f.offset)} for name, f in rf.items()}
    out["*"] = {"size": list(size), "stride": [0, 0], "offset": [0, 0]}
    return out


def _model_spec(model: nn.Module | str, weights: str | os.PathLike | None) -> dict[str, Any]:
    """How a later pass (visualize, importance) can load the model again: the spec string
    and weights file as absolute paths, or None for an in-memory module (it must be passed)."""
    if isinstance(model, nn.Module):
        return {"spec": None, "weights": None}
    spec = str(model)
    if Path(spec).exists():
        spec = str(Path(spec).resolve())
    return {"spec": spec, "weights": str(Path(weights).resolve()) if weights else None}


def _first_readable(ds: MinerDataset, limit: int = 64) -> torch.Tensor:
    for i in range(min(len(ds), limit)):
        _, x, _, note = ds[i]
        if not note.startswith("error:"):
            return x
    raise SketchmineError(f"none of the first {limit} images of the dataset can be read")


def _compat(attrs: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Which of the recorded run settings differ from this call's."""
    diffs = []
    checks = [("model", "model id"), ("weights_sha256", "model weights"), ("layer_names", "layers"),
              ("k", "k"), ("dataset_fingerprint", "dataset"), ("preprocessing_key", "preprocessing")]
    for key, label in checks:
        if attrs.get(key) != want.get(key):
            a, b = attrs.get(key), want.get(key)
            show = (lambda v: (str(v)[:16] + "…") if isinstance(v, str) and len(v) > 20 else v)
            diffs.append(f"{label} (run: {show(a)}, now: {show(b)})")
    return diffs


def _versions() -> dict[str, str]:
    import zarr

    return {"sketchmine": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _preprocessing(name: str, loaded: LoadedModel, image_size: int | tuple[int, int] | None) -> Preprocessing:
    """A preset for the model: "auto" takes the model's recorded normalisation, else ImageNet's."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    size = tuple(size) if size else None
    channels = input_channels(loaded.module)
    if name in ("auto", "model") and loaded.preprocessing:
        p = loaded.preprocessing
        return Preprocessing("model", channels, size, tuple(p["mean"]), tuple(p["std"]))
    if name == "model":
        raise SketchmineError(f"model {loaded.model_id} records no preprocessing; use imagenet, dataset or none")
    return preset("imagenet" if name == "auto" else name, channels, size)


def mine(
    model: nn.Module | str,
    dataset: Any,
    layers: list[str] | None = None,
    k: int = 9,
    out: str | os.PathLike = "run.zarr",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    *,
    weights: str | os.PathLike | None = None,
    preprocessing: str | Preprocessing = "auto",
    image_size: int | tuple[int, int] | None = None,
    num_workers: int = 0,
    flush_every: int = 50,
    skip_bad_images: bool = False,
    progress: Progress | None = None,
) -> Run:
    """Stream `dataset` through `model` once and keep the top-k images of every unit.

    model: nn.Module, torchvision name, 'demo', or checkpoint path. dataset: torch Dataset of
    (image, label), an ImageFolder directory, or a sketchmine dataset. layers: qualified module
    names (None = every conv, linear and softmax). Re-running on an unfinished `out` resumes.
    """
    if k < 1:
        raise SketchmineError(f"k must be at least 1, got {k}")
    if batch_size < 1:
        raise SketchmineError(f"batch size must be at least 1, got {batch_size}")
    progress = progress or _Silent()
    device = torch.device(device)
    loaded = load_model(model, weights)
    net, model_id = loaded.module, loaded.model_id
    if isinstance(preprocessing, str):
        preprocessing = _preprocessing(preprocessing, loaded, image_size)
    ds = as_miner_dataset(dataset, preprocessing)
    if len(ds) == 0:
        raise SketchmineError("the dataset is empty")
    names = resolve_layers(net, layers)
    out = Path(out)
    existing = is_run(out)
    store = RunStore.open(out, mode="r+") if existing else None
    pre = ds.preprocessing
    if pre is not None and pre.preset == "dataset" and not pre.mean:
        recorded = store.attrs.get("preprocessing") if store else None
        if recorded and recorded.get("mean"):
            pre.mean, pre.std = tuple(recorded["mean"]), tuple(recorded["std"])
        else:
            progress.note("computing the dataset mean and std (one pass)")
            pre.mean, pre.std = compute_mean_std(ds, batch_size, num_workers)
    want = {
        "model": model_id,
        "weights_sha256": weights_hash(net),
        "layer_names": names,
        "k": k,
        "dataset_fingerprint": ds.fingerprint(),
        "preprocessing_key": None if pre is None else f"{pre.preset}/{pre.channels}/{pre.size}",
    }
    net.to(device)
    if store is not None:
        diffs = _compat(store.attrs, want)
        if diffs:
            raise SketchmineError(f"cannot resume {out}: it was mined with a different " + "; ".join(diffs)
                                  + ". Use another --out for a new run")
    first = _first_readable(ds)
    spec, num_classes = _probe(net, names, first[None].to(device))
    if store is None:
        fields = _fields(net, tuple(first.shape[-2:]), progress) if first.ndim == 3 else {}
        labels = ds.labels()
        attrs = {**want, "preprocessing": None if pre is None else pre.to_dict(),
                 "model_spec": _model_spec(model, weights),
                 "dataset": {**ds.describe(), "size": len(ds)}, "num_classes": num_classes,
                 "versions": _versions(), "bad_images": []}
        store = RunStore.create(out, attrs, len(ds), ds.class_names, ds.path, labels)
        store.declare_layers({l.name: {**l.attrs, "shape": [l.channels, *l.spatial], "kind": l.kind,
                                       "receptive_field": fields.get(l.name, fields.get("*"))} for l in spec})
    lock = RunLock(out)
    lock.acquire()
    try:
        return _mine_into(store, net, ds, spec, k, batch_size, device, num_workers, flush_every,
                          skip_bad_images, progress, needs_labels=ds.labels() is None)
    finally:
        lock.release()


def _mine_into(store: RunStore, net: nn.Module, ds: MinerDataset, spec: list[_Layer], k: int,
               batch_size: int, device: torch.device, num_workers: int, flush_every: int,
               skip_bad_images: bool, progress: Progress, needs_labels: bool) -> Run:
    n = len(ds)
    prog = store.progress
    if prog.get("complete"):
        progress.start(n, n)
        return Run(store)
    states = {l.name: RunningTopK(l.channels, k, l.spatial, device) for l in spec}
    saved = store.read_checkpoint([l.name for l in spec])
    done = int(prog.get("images_done", 0)) if saved is not None else 0
    if saved is not None:
        for name, state in saved.items():
            states[name].load_state_dict(state)
    classes = classstats.start(store, {l.name: l.channels for l in spec}, ds.class_names, ds.preprocessing,
                               device, resumed=saved is not None)
    bad: list[dict[str, Any]] = list(store.attrs.get("bad_images", []))
    converted: dict[str, int] = {}
    loader = DataLoader(Subset(ds, range(done, n)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate,
                        persistent_workers=False)
    progress.start(n, done)
    current: dict[str, torch.Tensor] = {}

    def on_output(name: str, t: torch.Tensor) -> None:
        states[name].add(t, current["index"])
        if classes is not None:
            classes.add(name, t, current["labels"])

    pending = _Pending(done)
    batches = 0
    tapped = [l.name for l in spec]
    with torch.inference_mode(), Taps(net, tapped, on_output), _plain_worker_errors():
        for idx, x, y, notes in loader:
            ok = torch.ones(len(idx), dtype=torch.bool)
            for j, note in enumerate(notes):
                if note.startswith("error:"):
                    path = ds.path(int(idx[j]))
                    if not skip_bad_images:
                        raise SketchmineError(f"cannot read image {path}: {note[6:]} "
                                              "(fix or remove it, or pass --skip-bad-images)")
                    ok[j] = False
                    bad.append({"index": int(idx[j]), "path": path, "error": note[6:]})
                    progress.note(f"skipped unreadable image {path}: {note[6:]}")
                elif note.startswith("converted:"):
                    mode = note.split(":", 1)[1]
                    if mode not in converted:
                        progress.note(f"converting {mode} images to the model's "
                                      f"{ds.preprocessing.channels}-channel input (first: {ds.path(int(idx[j]))})")
                    converted[mode] = converted.get(mode, 0) + 1
            logits = None
            if ok.any():
                whole = bool(ok.all())  # the common case: no copy of the (pinned) batch
                xb = (x if whole else x[ok]).to(device, non_blocking=True)
                current["index"] = (idx if whole else idx[ok]).to(device, non_blocking=True)
                if classes is not None:
                    current["labels"] = (y if whole else y[ok]).to(device, non_blocking=True)
                    classes.add_images(xb, current["labels"])
                logits = _first_tensor(net(xb))
                if SOFTMAX in states:
                    on_output(SOFTMAX, torch.softmax(logits.float(), dim=1))
            pending.logits.append((ok.numpy(), logits if logits is not None and logits.ndim == 2 else None))
            pending.labels.append(np.asarray(y, dtype=np.int64))
            batches += 1
            progress.advance(len(idx))
            if batches % flush_every == 0:
                _flush(store, states, pending, needs_labels, bad, converted, classes)
                pending = _Pending(int(idx[-1]) + 1)
    # No checkpoint for the tail: a crash before the run is marked complete resumes from the
    # last periodic flush, so the final arrays are the only write here.
    _write_rows(store, pending, needs_labels)
    _finalize(store, states, n, bad, converted, classes)
    return Run(store)


@contextlib.contextmanager
def _plain_worker_errors():
    """A SketchmineError raised in a DataLoader worker arrives wrapped in the worker's
    traceback text; keep only the message."""
    try:
        yield
    except SketchmineError as exc:
        text = str(exc)
        marker = "SketchmineError: "
        if marker in text:
            raise SketchmineError(text.rsplit(marker, 1)[1].strip()) from None
        raise


def _flush(store: RunStore, states: dict[str, RunningTopK], pending: _Pending, needs_labels: bool,
           bad: list[dict[str, Any]], converted: dict[str, int],
           classes: classstats.RunningClassStats | None = None) -> None:
    """Write pending rows, then checkpoint every state and commit the new progress."""
    done = _write_rows(store, pending, needs_labels)
    store.write_checkpoint({name: s.state_dict() for name, s in states.items()}, done,
                           {"bad_images": bad, "converted_images": _merged_counts(store, converted)},
                           arrays=classes.packed() if classes is not None else None)
    converted.clear()


def _write_rows(store: RunStore, pending: _Pending, needs_labels: bool) -> int:
    """Logits, predictions and (streamed) labels of the pending rows; returns images done."""
    labels = np.concatenate(pending.labels) if (needs_labels and pending.labels) else None
    store.write_rows(pending.start, pending.logit_rows(), labels)
    return pending.start + sum(len(l) for l in pending.labels)


def _finalize(store: RunStore, states: dict[str, RunningTopK], n: int, bad: list[dict[str, Any]],
              converted: dict[str, int], classes: classstats.RunningClassStats | None = None) -> None:
    """Final per-layer arrays, predictions and per-class accuracy; mark the run complete."""
    for name, s in states.items():
        st = s.state_dict()
        store.write_layer(name, st["values"].numpy(), st["index"].numpy(), s.yx().numpy(),
                          st["nan_count"].numpy())
    ev = store.group["eval"]
    if "predictions" in ev:
        labels = np.asarray(store.group["dataset/labels"][...])
        correct, count = class_counts(np.asarray(ev["predictions"][...]), labels, ev["logits"].shape[1])
        per_class = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
        overall = float(correct.sum() / count.sum()) if count.sum() else None
        store.write_accuracy(per_class, overall)
    classstats.write(store, classes)
    store.finish(n, {"bad_images": bad, "converted_images": _merged_counts(store, converted)})


def _merged_counts(store: RunStore, converted: dict[str, int]) -> dict[str, int]:
    """Committed per-mode conversion counts plus those since the last commit."""
    previous = store.attrs.get("converted_images", {})
    return {m: previous.get(m, 0) + converted.get(m, 0) for m in {*previous, *converted}}
