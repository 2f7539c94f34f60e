"""The mining loop: batches from the loader through the model's taps into the registered
accumulators (accumulators.py), with the rows of each image (labels, logits) kept until a
periodic flush writes them and checkpoints every accumulator's state, and the final write.

The loop knows the verbs (update, end_batch, state, restore, merge, results), not the
statistics: adding one touches nothing here.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sketchmine.data.imagefile import conversion_words
from sketchmine.data import MinerDataset, collate, shapes_differ
from sketchmine.data.batchprep import DevicePreparer, NativeSamples, collate_native
from sketchmine.errors import SketchmineError
from sketchmine.mining import allocator, distributed, memory
from sketchmine.mining.failures import model_errors
from sketchmine.mining.options import LoadOptions, SpeedOptions
from sketchmine.mining.prefetch import prepared
from sketchmine.model.forward import Forward, Layer
from sketchmine.model.output_softmax import virtual_softmax
from sketchmine.model.taps import RANKED_BY_INPUT, SOFTMAX
from sketchmine.progress import Progress
from sketchmine.results.run import Run
from sketchmine.stats import accumulators
from sketchmine.stats.accuracy import per_class_accuracy
from sketchmine.stats.accumulators import Accumulator, Batch, LayerSpec, Setup
from sketchmine.store import schema
from sketchmine.store.runstore import RunStore


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


def run_pass(store: RunStore, forward: Forward, ds: MinerDataset, spec: list[Layer], k: int,
             device: torch.device, load: LoadOptions, speed: SpeedOptions, flush_every: int,
             skip_bad_images: bool, progress: Progress, needs_labels: bool,
             input_shape: tuple[int, tuple[int, ...]],
             team: distributed.Solo | distributed.Group = distributed.SOLO) -> Run | None:
    """Mine the images after the committed point into `store` (rank 0) and finish the run (None on
    a rank that cannot see rank 0's store: distributed.Group.result).
    `input_shape`: (image, its model input's shape), the image the layers were probed with."""
    n = len(ds)
    prog = store.progress
    if prog.get("complete"):
        progress.start(n, n)
        # lambdas: ranks other than 0 hold no store (distributed._RemoteStore), so nothing of it is looked up there
        team.on_writer(lambda: store.drop_checkpoints())  # a kill between the completion and the removal left them
        team.on_writer(lambda: store.verify_results())  # a damaged run is said now, not as "complete" and then at each read
        team.on_writer(lambda: None if schema.ATTRIBUTE_SUMS in store.attrs  # a kill between the completion and the record
                       else store.record_attribute_sums())
        return team.result(store)
    pre = ds.preprocessing
    softmax = next((l for l in spec if l.name == SOFTMAX), None)  # the virtual layer
    keyed = frozenset(l.name for l in spec if l.name == SOFTMAX or l.attrs.get("ranked_by") == RANKED_BY_INPUT)
    setup = Setup(tuple(LayerSpec(l.name, l.channels, tuple(l.spatial)) for l in spec), k, device,
                  len(ds.class_names) or int(store.attrs.get("num_classes") or 0),  # else the model's output width
                  tuple(pre.mean) if pre else (), tuple(pre.std) if pre else (), log_odds=keyed,
                  distributions=bool(store.attrs.get("distributions", False)))
    accs = accumulators.build(setup)
    _restore(store, accs)
    done = int(prog.get("images_done", 0)) if prog.get("slot") is not None else 0  # saved: rank 0 only
    bad: list[dict[str, Any]] = list(store.attrs.get("bad_images", []))
    converted: dict[str, int] = {}  # since the last flush
    said: set[str] = set()  # modes whose conversion was said (once a call, whatever the flushes)
    # preprocess="device": the loader yields stored pixels, made model input a batch at a time on the device
    preparer = DevicePreparer(ds, device, input_shape) if load.preprocess == "device" else None  # type: ignore[arg-type]
    source = NativeSamples(preparer.ds, jpeg_bytes=device.type == "cuda") if preparer else ds
    loader = DataLoader(Subset(source, team.shard(done, n, load.batch_size)), shuffle=False,
                        collate_fn=collate_native if preparer else functools.partial(collate, path=ds.path, probed=input_shape),
                        persistent_workers=False, **load.loader_kwargs(device))
    progress.start(n, done)
    current: list[Batch] = []  # the batch being tapped
    cast = speed.autocast is not None or speed.channels_last

    def on_output(name: str, t: torch.Tensor) -> None:
        if cast:  # float32 in the standard layout for the top-k op and the statistics
            t = t.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        for acc in accs:  # the top-k first: it puts the image maxima on the batch
            acc.update(name, t, current[0])

    interval = load.batch_size * flush_every  # rows between two flushes (this rank's)
    pending = _Pending(done, min(interval, max(n - done, 0)))
    batches = 0
    with torch.inference_mode(), forward.open([l.name for l in spec], on_output,  # + a softmax module's input logits
                                                  lambda name, z: current[0].fed.update({name: z})) as run_batch, \
            _plain_worker_errors(), _FlushWriter(speed.overlap_flushes) as writer, \
            memory.guard(device, load.batch_size), \
            allocator.kept_freed_memory_on(device):
        for idx, x, y, notes in prepared(loader, preparer, device):
            ok = _readable(ds, idx, notes, skip_bad_images, bad, converted, progress, said)
            logits = None
            if needs_labels:
                check_labels(ds, idx, y, setup.num_classes)
            if ok.any():
                _check_size(ds, idx, x, ok, input_shape)
                whole = bool(ok.all())  # the common case: no copy of the (pinned) batch
                xb = (x if whole else x[ok.to(x.device)]).to(device, non_blocking=True)
                batch = Batch((idx if whole else idx[ok]).to(device, non_blocking=True),
                              (y if whole else y[ok]).to(device, non_blocking=True), xb)
                current[:] = [batch]
                for acc in accs:  # before the forward, which may change its input in place (x.mul_)
                    acc.start_batch(batch)
                if speed.channels_last and xb.ndim == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=speed.autocast) if speed.autocast else contextlib.nullcontext(), \
                        model_errors(ds, idx):
                    logits = run_batch(xb)
                batch.logits = logits
                if softmax is not None:  # p from the logits or the output itself (ranked by log-odds: topk.py)
                    batch.fed[SOFTMAX], p = virtual_softmax(logits, softmax.attrs)
                    on_output(SOFTMAX, p)
                for acc in accs:
                    acc.end_batch(batch)
                current.clear()
            pending.add(idx.numpy(), np.asarray(y, dtype=np.int64), ok, logits)
            batches += 1
            progress.advance(len(idx))
            if batches % flush_every == 0 and team.flush_due(batches):
                merged, rows = team.gather(accs, pending, bad, converted)  # on rank 0

                # called at once below (on rank 0), so it sees this iteration's merged state and rows
                def flush() -> None:  # rank 0: copy what the flush writes, then write it on the writer thread
                    job = _Flush.take(merged, rows, needs_labels, bad, converted)  # noqa: B023
                    converted.clear()  # counted in the job
                    writer.submit(lambda: _flush(store, job))

                team.on_writer(flush)
                pending = _Pending(int(idx[-1]) + 1, min(interval, max(n - int(idx[-1]) - 1, 0)))
        # No checkpoint for the tail: a crash before the run is marked complete resumes from the
        # last periodic flush, so the final arrays are the only write here.
        merged, rows = team.gather(accs, pending, bad, converted)
        nan_outputs: list[int] = []

        def finish() -> None:
            writer.wait()  # the last periodic flush has committed (or its error is raised here)
            _write_rows(store, rows, needs_labels, bad)
            nan_outputs.append(_finalize(store, merged, n, bad, converted))

        team.on_writer(finish)
    if nan_outputs and nan_outputs[0]:
        progress.note(f"{nan_outputs[0]} image(s) gave a model output with NaN: counted as wrong predictions "
                      f"(eval/predictions {schema.NAN_PREDICTION})")
    if preparer is not None and preparer.fallbacks:
        progress.note(f"{len(preparer.fallbacks)} JPEG(s) the {device} decoder could not read were decoded by PIL "
                      f"(first: {preparer.fallbacks[0]})")
    return team.result(store)


def _restore(store: RunStore, accs: list[Accumulator]) -> None:
    """Each accumulator from its state in the newest intact checkpoint (when there is one):
    all of them or none; a state that does not fit is the run's clear error."""
    saved = {acc.key: store.read_checkpoint_state(acc.key) for acc in accs}
    missing = [acc.title for acc in accs if saved[acc.key] is None]
    if len(missing) == len(accs):
        return  # nothing committed yet: start from the first image
    if missing:
        raise SketchmineError(f"{store.path}: its checkpoint holds no state for the {', '.join(missing)}; "
                              "mine it again with a new --out")
    for acc in accs:
        try:
            acc.restore(saved[acc.key])  # type: ignore[arg-type]
        except (ValueError, KeyError) as exc:
            raise SketchmineError(f"{store.path}: the {acc.title} in its checkpoint do not fit the run ({exc}); "
                                  "mine it again with a new --out") from None


def check_labels(ds: MinerDataset, idx: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                 num_classes: int) -> None:
    """Labels are class numbers below `num_classes` (when known), or -1 for an unknown class:
    any other would leave its image out of every per-class figure without a word."""
    labels = torch.as_tensor(labels)
    wrong = (labels < -1) | (labels >= num_classes) if num_classes > 0 else labels < -1
    if bool(wrong.any()):
        j = int(torch.nonzero(wrong)[0])
        expected = f"0 to {num_classes - 1}" if num_classes > 0 else "0 or more"
        raise SketchmineError(f"image {ds.path(int(idx[j]))} has label {int(labels[j])}; labels are class numbers "
                              f"{expected} (the dataset's classes, else the model's outputs), or -1 for an unknown "
                              "class")


def _check_size(ds: MinerDataset, idx: torch.Tensor, x: torch.Tensor, ok: torch.Tensor,
                input_shape: tuple[int, tuple[int, ...]]) -> None:
    """A batch's images (or sequences) have the size (length) the layers were probed with: a batch
    stacks only samples of one shape, so a later batch of another would otherwise be mined (or
    refused) by where the batch boundaries fall."""
    if tuple(x.shape[1:]) != tuple(input_shape[1]):
        i = int(idx[int(torch.nonzero(ok)[0])])
        raise SketchmineError(shapes_differ(ds.path(input_shape[0]), tuple(input_shape[1]), ds.path(i),
                                            tuple(x.shape[1:]), probed=True))


def _readable(ds: MinerDataset, idx: torch.Tensor, notes: list[str], skip_bad_images: bool,
              bad: list[dict[str, Any]], converted: dict[str, int], progress: Progress, said: set[str]) -> torch.Tensor:
    """(N,) bool: the batch's images that could be read; unreadable ones are recorded in `bad`
    (or refused), converted ones counted per mode."""
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
            if mode not in said:
                said.add(mode)
                progress.note(f"{conversion_words(mode, ds.preprocessing.channels)} (first: {ds.path(int(idx[j]))})")
            converted[mode] = converted.get(mode, 0) + 1
    return ok


@dataclass
class _Flush:
    """What one periodic flush writes, copied in the loop: later batches update the
    accumulators and lists in place while the writer thread writes this."""

    start: int  # first row
    logits: np.ndarray | None
    labels: np.ndarray | None
    done: int  # images done once committed
    states: dict[str, dict[str, np.ndarray]]  # accumulator key -> its state()
    bad: list[dict[str, Any]]
    converted: dict[str, int]  # since the previous commit

    @classmethod
    def take(cls, accs: list[Accumulator], pending: _Pending, needs_labels: bool, bad: list[dict[str, Any]],
             converted: dict[str, int]) -> _Flush:
        return cls(*_rows(pending, needs_labels), {acc.key: acc.state() for acc in accs}, list(bad),
                   dict(converted))


def _flush(store: RunStore, job: _Flush) -> None:
    """Write a flush's rows, then checkpoint the states and commit the new progress."""
    store.write_rows(job.start, job.logits, job.labels, skipped=(b["index"] for b in job.bad))
    store.write_checkpoint(job.states, job.done, store.extras(job.bad, job.converted))


@contextlib.contextmanager
def _plain_worker_errors():
    """A SketchmineError raised in a DataLoader worker arrives wrapped in the worker's
    traceback text; keep only the message."""
    try:
        yield
    except SketchmineError as exc:
        text = str(exc)
        marker = f"{type(exc).__name__}: "
        if marker in text:  # its class kept: a worker's SketchmineFailure (the machine's) exits 1, not 3
            raise type(exc)(text.rsplit(marker, 1)[1].strip()) from None
        raise


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


def _write_rows(store: RunStore, pending: _Pending, needs_labels: bool, bad: list[dict[str, Any]]) -> None:
    """Logits, predictions and (streamed) labels of the pending rows."""
    start, logits, labels, _ = _rows(pending, needs_labels)
    store.write_rows(start, logits, labels, skipped=(b["index"] for b in bad))


def _finalize(store: RunStore, accs: list[Accumulator], n: int, bad: list[dict[str, Any]],
              converted: dict[str, int]) -> int:
    """Every accumulator's final arrays, predictions and per-class accuracy; mark the run
    complete. Each accumulator's results are computed while the previous one's are written.
    Returns how many images' model output held a NaN."""
    accuracy: dict[str, np.ndarray] = {}
    overall, nan_outputs = None, 0
    if store.has(schema.PREDICTIONS):
        labels, pred = store.read(schema.LABELS), store.read(schema.PREDICTIONS)
        nan_outputs = int((pred == schema.NAN_PREDICTION).sum())
        outputs = store.shape(schema.LOGITS)[1]
        accuracy[schema.PER_CLASS_ACCURACY], correct, count = per_class_accuracy(pred, labels, outputs)
        if len(names := store.read(schema.CLASS_NAMES)) == outputs:  # the output axis' xarray coordinate
            accuracy[schema.OUTPUT_COORD] = names
        overall = float(correct.sum() / count.sum()) if count.sum() else None
    store.write_results(_parts(accuracy, accs), overall)
    store.finish(n, store.extras(bad, converted))
    return nan_outputs


def _parts(first: dict[str, np.ndarray], accs: list[Accumulator]) -> Iterator[Mapping[str, Any]]:
    """`first`, then each accumulator's results, computed as the store asks for the next."""
    yield first
    for acc in accs:
        yield acc.results()

