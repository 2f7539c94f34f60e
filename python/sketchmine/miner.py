"""The streaming pass: loader → model → taps → topk_update → state → store.

One pass over the dataset in its stable order; every `flush_every` batches the state
is checkpointed so that re-running the same call resumes and ends identical to an
uninterrupted run (the top-k order is total, so results do not depend on where the
pass was cut, nor on batch size).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import __version__
from . import classstats, distributed, sequences
from .data import (ArrayDataset, ImageFolderDataset, MinerDataset, Preprocessing, as_miner_dataset, as_size, collate,
                   compute_mean_std)
from .device import as_device
from .errors import SketchmineError
from .forward import Forward, Layer, TorchForward, as_forward, probe
from .models import LoadedModel, load_model, preprocessing_for
from .progress import Progress, Silent
from .run import Run, class_counts
from .store import RunLock, RunStore, is_run
from .taps import SOFTMAX
from .topk import RunningTopK


class _Pending:
    """Rows produced since the last flush: image ids, labels and logits (NaN rows for skipped
    images), in buffers allocated once per flush interval and filled batch by batch.

    Small arrays kept per batch until the flush pinned glibc's heap under the freed
    activations: ResNet-50's resident memory grew by 0.6 MiB per image between flushes. The
    logits stay on the mining device until the flush (no copy, no sync per batch)."""

    def __init__(self, start: int, capacity: int) -> None:
        self.start, self.rows = start, 0
        self._index = np.empty(max(capacity, 1), dtype=np.int64)
        self._labels = np.empty(max(capacity, 1), dtype=np.int64)
        self._logits: torch.Tensor | None = None

    @classmethod
    def of(cls, start: int, index: np.ndarray, labels: np.ndarray, logits: np.ndarray | None) -> _Pending:
        """A block built from whole arrays (ranks' rows merged in global order)."""
        block = cls(start, len(index))
        block.rows = len(index)
        block._index[:len(index)], block._labels[:len(index)] = index, labels
        block._logits = None if logits is None else torch.from_numpy(np.asarray(logits, dtype=np.float32))
        return block

    def add(self, index: np.ndarray, labels: np.ndarray, ok: torch.Tensor, logits: torch.Tensor | None) -> None:
        """One batch: logits (ok.sum(), classes) of its readable images, or None."""
        n, at = len(index), self.rows
        if at + n > len(self._index):  # more rows than planned (a last, longer interval): grow
            self._grow(2 * (at + n))
        self._index[at:at + n], self._labels[at:at + n] = index, labels
        if logits is not None and logits.ndim == 2:
            if self._logits is None:
                self._logits = torch.full((len(self._index), logits.shape[1]), float("nan"),
                                          dtype=torch.float32, device=logits.device)
            if bool(ok.all()):
                self._logits[at:at + n] = logits
            else:
                self._logits[at + torch.nonzero(ok).flatten().to(logits.device)] = logits.float()
        self.rows += n

    def _grow(self, capacity: int) -> None:
        for key in ("_index", "_labels"):
            old = getattr(self, key)
            new = np.empty(capacity, dtype=old.dtype)
            new[:self.rows] = old[:self.rows]
            setattr(self, key, new)
        if self._logits is not None:
            new_logits = self._logits.new_full((capacity, self._logits.shape[1]), float("nan"))
            new_logits[:self.rows] = self._logits[:self.rows]
            self._logits = new_logits

    def index_rows(self) -> np.ndarray:
        return self._index[:self.rows]

    def label_rows(self) -> np.ndarray:
        return self._labels[:self.rows]

    def logit_rows(self) -> np.ndarray | None:
        """(rows, classes) float32, NaN for skipped images; copied off the device only here."""
        return None if self._logits is None else self._logits[:self.rows].float().cpu().numpy()


def _model_spec(model: nn.Module | str, weights: str | os.PathLike | None, seed: int | None = None) -> dict[str, Any]:
    """How a later pass (visualize, importance) can load the model again: the spec string
    and weights file as absolute paths, or None for an in-memory module (it must be passed);
    the seed of a randomly initialised model."""
    if isinstance(model, nn.Module):
        return {"spec": None, "weights": None}
    spec = str(model)
    if Path(spec).exists():
        spec = str(Path(spec).resolve())
    record = {"spec": spec, "weights": str(Path(weights).resolve()) if weights else None}
    return record if seed is None else {**record, "seed": int(seed)}


def _resolve_preprocessing(loaded: LoadedModel, preprocessing: str | Preprocessing,
                           image_size: Any) -> tuple[Preprocessing, bool]:
    """`mine`'s preprocessing= and image_size= as one Preprocessing, and whether its preset was
    chosen (anything but "auto"); see `data.as_miner_dataset` for how every dataset kind takes it."""
    if isinstance(preprocessing, str):
        return preprocessing_for(loaded, preprocessing, image_size), preprocessing != "auto"
    if image_size is not None:
        size = as_size(image_size, "image_size", preprocessing.channels)
        if preprocessing.size is not None and tuple(preprocessing.size) != size:
            raise SketchmineError(f"image_size {size} conflicts with the size {tuple(preprocessing.size)} of the "
                                  "Preprocessing passed; give one of them")
        preprocessing = dataclasses.replace(preprocessing, size=size)
    return preprocessing, True


def _first_readable(ds: MinerDataset, limit: int = 64) -> torch.Tensor:
    for i in range(min(len(ds), limit)):
        _, x, _, note = ds[i]
        if not note.startswith("error:"):
            return x
    raise SketchmineError(f"none of the first {limit} images of the dataset can be read")


def _versions() -> dict[str, str]:
    import zarr

    return {"sketchmine": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _as_sequences(ds: MinerDataset, loaded: LoadedModel, steps: int | None, ink: str) -> MinerDataset:
    """`ds` as progressive drawings when `steps` asks for them, or, with steps=None, when the
    model was trained on them (its recorded steps) and `ds` holds images; else `ds` unchanged."""
    recorded = loaded.sequence or {}
    sequences.check_ink(ink)
    if steps is None and (not recorded or not isinstance(ds, (ArrayDataset, ImageFolderDataset))):
        if ink != "auto":
            raise SketchmineError(f"ink={ink!r} applies to progressive drawings, and none are made here (no steps "
                                  "given, and the model records none); pass steps=T (--steps T) or leave ink='auto'")
        return ds  # single images, or the caller's own dataset (of sequences already, presumably)
    if steps is None:
        steps = sequences.recorded_steps(recorded, f"model {loaded.model_id}'s training")
    return sequences.progressive(ds, steps, ink)


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
    image_size: int | tuple[int, ...] | None = None,
    num_workers: int = 0,
    flush_every: int = 50,
    skip_bad_images: bool = False,
    progress: Progress | None = None,
    logits: bool = True,
    channels_last: bool = False,
    autocast: str | None = None,
    compile: bool = False,
    prefetch_factor: int | None = None,
    pin_memory: bool | None = None,
    overlap_flushes: bool = True,
    steps: int | None = None,
    ink: str = "auto",
    seed: int | None = None,
) -> Run:
    """Stream `dataset` through `model` once and keep the top-k images of every unit.

    model: nn.Module, torchvision name, 'demo', checkpoint path, or .onnx file (ONNX Runtime).
    dataset: torch Dataset of (image, label), an ImageFolder directory, or a sketchmine dataset.
    preprocessing ("auto": the model's recorded normalisation, else ImageNet's; "model",
    "imagenet", "dataset", "none", or a Preprocessing) and image_size (int, (H, W) or (C, H, W))
    resolve to one Preprocessing, which is what the model sees and what the run records, for
    every dataset kind (data.as_miner_dataset): a folder is read with it; a sketchmine dataset
    built without one (animal_shape()) takes it; one built with its own keeps it, and a chosen
    preset or size that differs is an error; a torch Dataset's tensors are used as they are
    under "auto" (resized when image_size is given), and a chosen preset is applied to them as
    pixels in [0, 1] (data.TorchDataset). The model's output count must equal the dataset's
    class count (unless logits=False or the dataset names no classes).
    layers: qualified module names (None = every conv, linear and softmax). Re-running on an
    unfinished `out` resumes. Under torch.distributed (or torchrun) each rank mines a shard and
    rank 0 writes the store (see distributed.py).
    Opt-in speed options (torch models only): logits=False ends each forward pass after the
    deepest tapped layer (no logits, predictions or accuracy; not with the softmax layer);
    channels_last=True runs model and batches in channels-last memory format; autocast="bf16"
    or "fp16" runs the forward under torch.autocast (activations are cast to float32 for top-k);
    compile=True runs each forward through torch.compile (see forward.TorchForward._open_compiled).
    Loading: num_workers DataLoader processes, each `prefetch_factor` batches ahead (workers
    only; torch's default 2); pin_memory (None: pinned when the device is CUDA).
    overlap_flushes=False writes each periodic checkpoint in the loop instead of on a
    background thread while the next batches compute (the default; same store either way).
    Sequences (CNN + recurrent models): steps=T shows each image to the model as a progressive
    drawing of T frames (sequences.py; `ink` says which pixels are ink: "light" on black,
    "dark" on white, or "auto" per image); None takes the steps a model was trained with
    when it records them (the embedded 'demo-gru'), else single images.
    seed: how a model named without weights (a torchvision name, 'sketchnet') is initialised
    (None: 0), recorded in the run so later passes rebuild the same random weights; refused
    for any other model. weights: refused for a model that carries its own (module, checkpoint,
    embedded). ink: refused unless drawings are made (steps, or a model trained on them).
    k larger than the dataset is clamped to its size (said once).
    """
    _check_counts(k=k, batch_size=batch_size, flush_every=flush_every, num_workers=num_workers)
    team, device = distributed.team(as_device(device))  # one process unless torch.distributed says otherwise
    progress = team.progress(progress or Silent())
    loaded = load_model(model, weights, seed=seed)
    if loaded.random_init:
        progress.note(f"{loaded.model_id} has random weights (initialised from seed {seed or 0}; no --weights given): "
                      "its units show what an untrained network responds to")
    net, model_id = loaded.module, loaded.model_id
    forward = as_forward(net)
    preprocessing, chosen = _resolve_preprocessing(loaded, preprocessing, image_size)
    ds = _as_sequences(as_miner_dataset(dataset, preprocessing, chosen=chosen), loaded, steps, ink)
    skipped = getattr(getattr(ds, "base", ds), "skipped_note", None)
    if skipped is not None and skipped():
        progress.note(skipped())
    if len(ds) == 0:
        raise SketchmineError("the dataset is empty")
    if k > len(ds):
        progress.note(f"k={k} is more than the {len(ds)} images of the dataset: keeping k={len(ds)}")
        k = len(ds)
    if layers is not None and not list(layers):
        raise SketchmineError("layers=[] names no layer to mine; pass layer names, or None for every conv, "
                              "linear and softmax layer")
    names = forward.resolve_layers(layers)
    if not logits and layers is None:  # the default layers without the virtual softmax (it needs the logits)
        names = [n for n in names if n != SOFTMAX]
    speed = _speed_options(forward, names, logits, channels_last, autocast, compile=compile, num_workers=num_workers,
                           prefetch_factor=prefetch_factor, pin_memory=pin_memory, overlap_flushes=overlap_flushes)
    out = Path(out)
    existing = team.writes and is_run(out)  # only rank 0 reads or writes the store
    store = RunStore.open(out, mode="r+") if existing else None
    pre = ds.preprocessing
    _dataset_normalisation(ds, store, batch_size, num_workers, progress)
    want = {
        "model": model_id,
        "weights_sha256": forward.weights_hash(),
        "layer_names": names,
        "k": k,
        "dataset_fingerprint": ds.fingerprint(),
        "preprocessing_key": _preprocessing_key(pre),
        "forward_options": _forward_options(speed),
    }
    team.check_same({**want, "logits": logits, "batch_size": batch_size, "flush_every": flush_every})
    # before the model is touched (and again under the lock); a refusal on rank 0 reaches every rank
    team.on_writer(lambda: _check_resumable(store, want, logits) if store is not None else None)
    forward.to(device)
    if compile:
        forward.compile = True
    first = _first_readable(ds)
    spec, num_classes = probe(forward, names, first[None].to(device))
    if logits and num_classes is not None and ds.class_names and num_classes != len(ds.class_names):
        raise SketchmineError(f"the model has {num_classes} outputs but the dataset has {len(ds.class_names)} classes "
                              f"({', '.join(ds.class_names[:5])}{', …' if len(ds.class_names) > 5 else ''}): its "
                              "predictions would be scored against other labels. Pass the model trained on these "
                              "classes, or logits=False (--no-logits) to mine the layers without predictions")
    if not logits:
        forward.stop_after = forward.order[-1]
        num_classes = None

    lock = RunLock(out)

    def open_store() -> RunStore:
        """Rank 0's store, locked before the run is read or created: an existing run checked
        against this call, or a new one (laid out aside and renamed into place, see
        RunStore.create). A second `mine` started at once on the same --out is refused while
        this one holds the lock, and finds the run whole afterwards."""
        lock.acquire()
        if is_run(out):  # read afresh under the lock: another writer may have created it or moved it on
            current = RunStore.open(out, mode="r+")
            _check_resumable(current, want, logits)
            recorded = current.attrs.get("preprocessing") or {}
            if store is None and pre is not None and pre.preset == "dataset" and recorded.get("mean"):
                pre.mean, pre.std = tuple(recorded["mean"]), tuple(recorded["std"])  # created meanwhile
            # a crash can lose the newest writes: start before them (a complete run has no checkpoint left)
            damaged = None if current.progress.get("complete") else current.resume_from_intact()
            if damaged:
                progress.note(damaged)
            return current
        fields = forward.fields(tuple(first.shape), progress) if first.ndim >= 3 else {}
        labels = ds.labels()
        attrs = {**want, "preprocessing": None if pre is None else pre.to_dict(),
                 "model_spec": _model_spec(model, weights, (seed or 0) if loaded.random_init else None),
                 "dataset": {**ds.describe(), "size": len(ds)}, "num_classes": num_classes,
                 "versions": _versions(), "bad_images": []}
        if not logits:  # recorded only when set, so default runs keep their attributes
            attrs["logits"] = False
        return RunStore.create(out, attrs, len(ds), ds.class_names, ds.path, labels,
                               row_chunk=batch_size * flush_every,  # a flush writes whole new chunks
                               layers={l.name: {**l.attrs, "shape": [l.channels, *l.spatial], "kind": l.kind,
                                                "receptive_field": fields.get(l.name, fields.get("*"))}
                                       for l in spec})

    if channels_last:  # the caller's module gets its memory format back whatever happens
        forward.net.to(memory_format=torch.channels_last)
    try:
        run_store = team.store(open_store)  # ranks other than 0: the run's attributes, read-only
        return _mine_into(run_store, forward, ds, spec, k, batch_size, device, num_workers, flush_every,
                          skip_bad_images, progress, needs_labels=ds.labels() is None, team=team, speed=speed)
    finally:
        lock.release()
        if channels_last:
            forward.net.to(memory_format=torch.contiguous_format)


def _dataset_normalisation(ds: MinerDataset, store: RunStore | None, batch_size: int, num_workers: int,
                           progress: Progress) -> None:
    """Fill in the "dataset" preset's mean and std: the ones a resumed run recorded, else one
    pass over the images (of a drawing's base dataset: its frames are those images, partly drawn)."""
    pre = ds.preprocessing
    if pre is None or pre.preset != "dataset" or pre.mean:
        return
    recorded = store.attrs.get("preprocessing") if store else None
    if recorded and recorded.get("mean"):
        pre.mean, pre.std = tuple(recorded["mean"]), tuple(recorded["std"])
    else:
        progress.note("computing the dataset mean and std (one pass)")
        pre.mean, pre.std = compute_mean_std(getattr(ds, "base", ds), batch_size, num_workers)


def _check_resumable(current: RunStore, want: dict[str, Any], logits: bool) -> None:
    """Refuse to resume a run mined with another model, weights, layers, k, dataset,
    preprocessing or logits setting, naming each difference."""
    attrs, diffs = current.attrs, []
    checks = [("model", "model id"), ("weights_sha256", "model weights"), ("layer_names", "layers"),
              ("k", "k"), ("dataset_fingerprint", "dataset"), ("preprocessing_key", "preprocessing")]
    # runs that predate the record of forward options were mined with the plain forward
    options = attrs.get("forward_options") or _forward_options(_Speed())
    checks += [(f"forward_options.{o}", f"forward option {o}") for o in want["forward_options"]]
    attrs = {**attrs, **{f"forward_options.{o}": v for o, v in options.items()}}
    want = {**want, **{f"forward_options.{o}": v for o, v in want["forward_options"].items()}}
    for key, label in checks:
        a, b = attrs.get(key), want.get(key)
        if a != b:
            show = (lambda v: (str(v)[:16] + "…") if isinstance(v, str) and len(v) > 20 else v)
            diffs.append(f"{label} (run: {show(a)}, now: {show(b)})")
    if attrs.get("logits", True) != logits:
        diffs.append(f"logits (run: {attrs.get('logits', True)}, now: {logits})")
    if diffs:
        raise SketchmineError(f"cannot resume {current.path}: it was mined with a different " + "; ".join(diffs)
                              + ". Use another --out for a new run")


def _mine_into(store: RunStore, forward: Forward, ds: MinerDataset, spec: list[Layer], k: int,
               batch_size: int, device: torch.device, num_workers: int, flush_every: int,
               skip_bad_images: bool, progress: Progress, needs_labels: bool,
               team: distributed.Solo | distributed.Group = distributed.SOLO,
               speed: _Speed | None = None) -> Run:
    n = len(ds)
    prog = store.progress
    if prog.get("complete"):
        progress.start(n, n)
        return team.result(store)
    states = {l.name: RunningTopK(l.channels, k, l.spatial, device) for l in spec}
    saved = store.read_checkpoint([l.name for l in spec])
    done = int(prog.get("images_done", 0)) if prog.get("slot") is not None else 0  # saved: rank 0 only
    if saved is not None:
        for name, state in saved.items():
            states[name].load_state_dict(state)
    classes = classstats.start(store, {l.name: l.channels for l in spec}, ds.class_names, ds.preprocessing,
                               device, resumed=saved is not None)
    bad: list[dict[str, Any]] = list(store.attrs.get("bad_images", []))
    converted: dict[str, int] = {}
    speed = speed or _Speed()
    ahead = {"prefetch_factor": speed.prefetch_factor} if speed.prefetch_factor and num_workers > 0 else {}
    loader = DataLoader(Subset(ds, team.shard(done, n, batch_size)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate, persistent_workers=False,
                        pin_memory=device.type == "cuda" if speed.pin_memory is None else speed.pin_memory, **ahead)
    progress.start(n, done)
    current: dict[str, torch.Tensor] = {}
    cast = speed.autocast is not None or speed.channels_last

    def on_output(name: str, t: torch.Tensor) -> None:
        if cast:  # float32 in the standard layout for the top-k op and the class statistics
            t = t.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        maxima = states[name].add(t, current["index"])
        if classes is not None:
            classes.add(name, maxima, current["labels"])

    interval = batch_size * flush_every  # rows between two flushes (this rank's)
    pending = _Pending(done, min(interval, max(n - done, 0)))
    batches = 0
    tapped = [l.name for l in spec]
    with torch.inference_mode(), forward.open(tapped, on_output) as run_batch, _plain_worker_errors(), \
            _FlushWriter(speed.overlap_flushes) as writer:
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
                if speed.channels_last and xb.ndim == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                if speed.autocast is not None:
                    with torch.autocast(device.type, dtype=speed.autocast):
                        logits = run_batch(xb)
                else:
                    logits = run_batch(xb)
                if SOFTMAX in states:
                    on_output(SOFTMAX, torch.softmax(logits.float(), dim=1))
                if classes is not None:
                    classes.end_batch()  # every layer of this batch at once
            pending.add(idx.numpy(), np.asarray(y, dtype=np.int64), ok, logits)
            batches += 1
            progress.advance(len(idx))
            if batches % flush_every == 0 and team.flush_due(batches):
                merged, rows, merged_classes = team.gather(states, pending, bad, converted, classes)  # on rank 0

                def flush() -> None:  # rank 0: copy what the flush writes, then write it on the writer thread
                    job = _Flush.take(merged, rows, needs_labels, bad, converted, merged_classes)
                    converted.clear()  # counted in the job
                    writer.submit(lambda: _flush(store, job))

                team.on_writer(flush)
                pending = _Pending(int(idx[-1]) + 1, min(interval, max(n - int(idx[-1]) - 1, 0)))
        # No checkpoint for the tail: a crash before the run is marked complete resumes from the
        # last periodic flush, so the final arrays are the only write here.
        merged, rows, merged_classes = team.gather(states, pending, bad, converted, classes)

        def finish() -> None:
            writer.wait()  # the last periodic flush has committed (or its error is raised here)
            _write_rows(store, rows, needs_labels)
            _finalize(store, merged, n, bad, converted, merged_classes)

        team.on_writer(finish)
    return team.result(store)


@dataclass
class _Speed:
    """The speed options of a pass (defaults: the plain pass, flushes overlapped)."""

    channels_last: bool = False
    autocast: torch.dtype | None = None
    compile: bool = False
    prefetch_factor: int | None = None  # DataLoader's own default when None
    pin_memory: bool | None = None  # None: pinned when mining on CUDA
    overlap_flushes: bool = True


def _preprocessing_key(pre: Preprocessing | None) -> str | None:
    """What the resume check compares of the preprocessing: preset, channels, size and the
    numbers (a "dataset" preset's numbers are the run's own, taken on resume)."""
    if pre is None:
        return None
    numbers = "" if not pre.mean else "/" + ",".join(f"{v:.9g}" for v in (*pre.mean, *pre.std))
    return f"{pre.preset}/{pre.channels}/{pre.size}{numbers}"


def _forward_options(speed: _Speed) -> dict[str, Any]:
    """The speed options that change the activations (so a resume must keep them): the
    loader and flush options do not."""
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(speed.autocast) if speed.autocast else None
    return {"autocast": dtype, "channels_last": bool(speed.channels_last), "compile": bool(speed.compile)}


_FLAGS = {"k": "-k", "batch_size": "--batch-size", "flush_every": "--flush-every", "num_workers": "--workers"}


def _check_counts(**counts: int) -> None:
    """Counts that must be positive (k, batch_size, flush_every) or non-negative (num_workers)."""
    for name, value in counts.items():
        low = 0 if name == "num_workers" else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SketchmineError(f"{name} ({_FLAGS[name]}) must be an integer >= {low}, got {value!r}")


_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _speed_options(forward: Forward, names: list[str], logits: bool, channels_last: bool, autocast: str | None, *,
                   compile: bool = False, num_workers: int = 0, prefetch_factor: int | None = None,
                   pin_memory: bool | None = None, overlap_flushes: bool = True) -> _Speed:
    """Check the speed options against the model, layers and loader."""
    if prefetch_factor is not None and (num_workers < 1 or prefetch_factor < 1):
        raise SketchmineError(f"prefetch_factor ({prefetch_factor}) needs num_workers >= 1 and must be at least 1: "
                              "it is how many batches each loader worker prepares ahead")
    if autocast is not None and str(autocast).lower() not in _AUTOCAST:
        raise SketchmineError(f"autocast must be bf16 or fp16 (or None), got {autocast!r}")
    if not isinstance(forward, TorchForward) and (not logits or channels_last or autocast is not None or compile):
        raise SketchmineError("logits=False, channels_last, autocast and compile apply to torch models only, "
                              "not to the ONNX Runtime backend")
    if not logits and SOFTMAX in names:
        raise SketchmineError("logits=False (--no-logits) cannot mine the virtual 'softmax' layer: it is computed "
                              "from the logits; leave it out of the layers or keep the logits")
    return _Speed(channels_last, None if autocast is None else _AUTOCAST[str(autocast).lower()], bool(compile),
                  prefetch_factor, pin_memory, overlap_flushes)


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


@dataclass
class _Flush:
    """What one periodic flush writes, copied in the loop: later batches update the top-k
    states, class statistics and lists in place while the writer thread writes this."""

    start: int  # first row
    logits: np.ndarray | None
    labels: np.ndarray | None
    done: int  # images done once committed
    states: dict[str, dict[str, torch.Tensor]]
    classes: dict[str, np.ndarray] | None
    bad: list[dict[str, Any]]
    converted: dict[str, int]  # since the previous commit

    @classmethod
    def take(cls, states: dict[str, RunningTopK], pending: _Pending, needs_labels: bool, bad: list[dict[str, Any]],
             converted: dict[str, int], classes: classstats.RunningClassStats | None = None) -> _Flush:
        return cls(*_rows(pending, needs_labels), {name: s.state_dict() for name, s in states.items()},
                   classes.packed() if classes is not None else None, list(bad), dict(converted))


def _flush(store: RunStore, job: _Flush) -> None:
    """Write a flush's rows, then checkpoint its states and commit the new progress."""
    store.write_rows(job.start, job.logits, job.labels)
    store.write_checkpoint(job.states, job.done,
                           {"bad_images": job.bad, "converted_images": _merged_counts(store, job.converted)},
                           arrays=job.classes)


class _FlushWriter:
    """Writes the periodic flushes on one background thread while the next batches compute.

    One flush at a time: `submit` first waits for the one before it, so flushes commit in
    order and the error of one (the store's "cannot write … re-run" message) is raised in
    the loop at the next flush, or at `wait` before the final writes. Leaving the block
    waits for the flush in flight, whatever ended the loop, so nothing is written after
    `mine` returns or raises. overlap=False writes in the caller instead.
    """

    def __init__(self, overlap: bool = True) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sketchmine-flush") if overlap else None
        self._running: Future[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        if self._pool is None:
            write()
        else:
            self._running = self._pool.submit(write)

    def wait(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.result()  # re-raises the flush's error here

    def __enter__(self) -> _FlushWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        try:
            self.wait()
        except Exception:
            if kind is None:
                raise  # else the loop's own error is the one to report; the committed state is intact
        finally:
            if self._pool is not None:
                self._pool.shutdown()


def _rows(pending: _Pending, needs_labels: bool) -> tuple[int, np.ndarray | None, np.ndarray | None, int]:
    """(first row, logits, streamed labels, images done after them) of the pending rows."""
    labels = pending.label_rows().copy() if (needs_labels and pending.rows) else None
    return pending.start, pending.logit_rows(), labels, pending.start + pending.rows


def _write_rows(store: RunStore, pending: _Pending, needs_labels: bool) -> None:
    """Logits, predictions and (streamed) labels of the pending rows."""
    start, logits, labels, _ = _rows(pending, needs_labels)
    store.write_rows(start, logits, labels)


def _finalize(store: RunStore, states: dict[str, RunningTopK], n: int, bad: list[dict[str, Any]],
              converted: dict[str, int], classes: classstats.RunningClassStats | None = None) -> None:
    """Final per-layer arrays, predictions and per-class accuracy; mark the run complete.
    All final arrays go to the store in one call (per-array Zarr calls were most of the fixed cost)."""
    arrays: dict[str, np.ndarray] = {}
    for name, s in states.items():
        st = s.state_dict()
        arrays.update({f"layers/{name}/values": st["values"].numpy(), f"layers/{name}/image_index": st["index"].numpy(),
                       f"layers/{name}/yx": s.yx().numpy(), f"layers/{name}/nan_count": st["nan_count"].numpy()})
    ev = store.group["eval"]
    overall = None
    if "predictions" in ev:
        labels = np.asarray(store.group["dataset/labels"][...])
        correct, count = class_counts(np.asarray(ev["predictions"][...]), labels, ev["logits"].shape[1])
        arrays["eval/per_class_accuracy"] = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
        overall = float(correct.sum() / count.sum()) if count.sum() else None
    arrays.update(classstats.final_arrays(classes))
    store.write_results(arrays, overall)
    store.finish(n, {"bad_images": bad, "converted_images": _merged_counts(store, converted)})


def _merged_counts(store: RunStore, converted: dict[str, int]) -> dict[str, int]:
    """Committed per-mode conversion counts plus those since the last commit."""
    previous = store.attrs.get("converted_images", {})
    return {m: previous.get(m, 0) + converted.get(m, 0) for m in {*previous, *converted}}
