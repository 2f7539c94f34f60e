"""Mining across processes and machines with torch.distributed (torchrun, or a process
group the caller initialised), kept out of the mining loop.

The loop sees a team: which global images this process mines (`shard`), when a flush is
a collective step (`flush_due`), how states and rows reach the writer (`gather`), and how
rank 0's store work, and its errors, reach every rank (`on_writer`). One process is the
trivial team `SOLO`: no copies, no communication.

Sharding: the images after the committed point are cut into batches of `batch_size` in
the global order and dealt round-robin to the ranks. At every flush the images done by
all ranks together are then a contiguous prefix, so the store's `images_done` stays one
number and a run interrupted under any world size resumes under any other; and each batch
holds the same images as in a one-process run with the same batch size, so activations,
and with them the store, are bit-identical to it. At each flush (and at the end) the
per-rank states of every accumulator (accumulators.py) are gathered to rank 0, merged into
copies in rank order (the top-k exactly, with the op's tie-break; float64 sums to rounding),
and checkpointed there; only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist

from sketchmine.errors import SaidOnRankZero, SketchmineError, SketchmineFailure, first_line
from sketchmine.mining.checks import RESUME_CHECKS
from sketchmine.mining.rank_progress import Counted, Muted
from sketchmine.model.backend import MODEL_SWITCHES
from sketchmine.results.run import Run
from sketchmine.store.runstore import RunStore, is_run
from sketchmine.store.schema import PREPROCESS

if TYPE_CHECKING:
    from sketchmine.stats.accumulators import Accumulator

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_OWNED = False  # True when sketchmine initialised the process group itself (torchrun env)
_CHECKS = {**RESUME_CHECKS, "forward_options": "forward options", "logits": "logits setting", "batch_size": "batch size",
           "flush_every": "flush interval", MODEL_SWITCHES: "model switches", "distributions": "distributions setting",
           PREPROCESS: "preprocess route", "skip_bad_images": "skip-bad-images setting",
           "out": "out folder (rank 0 writes the one run of every rank)", "class_names": "list of class names"}
"""What every rank must share with rank 0: what a resume checks, and the pass's own settings."""


class Solo:
    """One process: every image, every flush, the store written in place."""

    rank, size, writes = 0, 1, True

    def progress(self, progress: Any) -> Any:
        return progress

    def check_same(self, want: dict[str, Any]) -> None:
        return None

    def on_writer(self, fn: Callable[[], T], share: bool = True) -> T:
        return fn()

    def store(self, open_store: Callable[[], RunStore]) -> RunStore:
        return open_store()

    def shard(self, done: int, n: int, batch_size: int) -> Sequence[int]:
        return range(done, n)

    def flush_due(self, batches: int) -> bool:
        return True

    def gather(self, accs: list[Accumulator], pending: Any, bad: list[dict[str, Any]],
               converted: dict[str, int]) -> tuple[list[Accumulator], Any]:
        return accs, pending

    def stopped(self, exc: BaseException) -> None:
        return None

    def result(self, store: RunStore) -> Run:
        """The finished run, read-only: a handle that outlives its writer follows the run at its
        path as any reader's (commits.py), so a notebook's `run = mine(...)` reads a run mined
        there again rather than the old one's attributes over new arrays."""
        return Run(store.reader())


SOLO = Solo()


def team(device: torch.device) -> tuple[Solo | Group, torch.device]:
    """The team for this process and the device it mines on.

    A process group the caller initialised is used as it is; WORLD_SIZE > 1 (torchrun)
    initialises one here, gloo for CPU and nccl for CUDA (cuda = cuda:LOCAL_RANK).
    """
    global _OWNED
    if not dist.is_available():
        return SOLO, device
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return SOLO, device
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as exc:
            raise SketchmineError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but the process group cannot "
                                  f"start ({str(exc).splitlines()[0]}); launch with torchrun") from None
        _OWNED = True
    if dist.get_world_size() == 1:
        return SOLO, device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return Group(), device


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def close() -> None:
    """Shut down the process group if sketchmine started it (end of a CLI run)."""
    global _OWNED
    if _OWNED and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False


class _Strided(Sequence[int]):
    """Global indices of one rank's batches: batch j of rank r is global batch j*size + r."""

    def __init__(self, done: int, n: int, batch_size: int, rank: int, size: int) -> None:
        self.done, self.n, self.b, self.rank, self.size = done, n, batch_size, rank, size
        batches = math.ceil((n - done) / batch_size)
        mine = range(rank, batches, size)
        self.length = len(mine) * batch_size
        if mine and mine[-1] == batches - 1:  # the last global batch may be short
            self.length -= batches * batch_size - (n - done)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < self.length:
            raise IndexError(i)
        j, off = divmod(i, self.b)
        return self.done + (j * self.size + self.rank) * self.b + off


class _RemoteStore:
    """The run as ranks other than 0 see it: the attributes rank 0 read at the start, and no
    checkpoint (their states start empty; rank 0's holds the committed images). No writes."""

    def __init__(self, path: Path, attrs: dict[str, Any]) -> None:
        self.path, self.attrs = path, attrs

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.attrs["progress"])

    def read_checkpoint_state(self, key: str) -> None:
        return None


@contextlib.contextmanager
def _answered(rank: int, step: str) -> Iterator[None]:
    """A collective whose peers are gone (a rank that stopped with its own error, or was killed)
    ends this rank with one line that says so, rather than the backend's RuntimeError (a
    traceback from the CLI, which torchrun then names as the root cause)."""
    try:
        yield
    except RuntimeError as exc:
        raise SketchmineFailure(f"rank {rank} lost the other ranks while {step} ({first_line(exc)}); a rank that "
                                "stopped said why in its own output; re-run the same command to resume from the "
                                "last flush") from None


class _Stopped(NamedTuple):
    """A rank's own error, sent in place of its state at the gather the other ranks wait in."""

    rank: int
    message: str
    code: int


def _cut(value: Any) -> str:
    """A setting as a refusal shows it: a hash cut to 12 digits, a long list to 120 characters."""
    text = str(value)
    digits = text.rpartition(":")[2]  # after a method's name ("xxh3_128:…")
    if len(digits) >= 24 and all(c in "0123456789abcdef" for c in digits.lower()):
        return text[:len(text) - len(digits) + 12] + "…"
    return text if len(text) <= 120 else text[:117] + "…"


def _said(exc: BaseException) -> tuple[str, int]:
    """An error as the other ranks are told it, and the exit code they stop with."""
    if isinstance(exc, SketchmineError):
        return str(exc), exc.exit_code
    return f"{type(exc).__name__}: {exc}", 130 if isinstance(exc, KeyboardInterrupt) else 1


def _step(method: F) -> F:
    """A collective step of Group: an error out of it is known to every rank (or the others are
    gone), so no later collective is tried for it (Group.stopped)."""
    def step(self: Group, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self._settled = True
            raise
    return cast(F, functools.wraps(method)(step))


class Group:
    """This process's place in an initialised torch.distributed process group."""

    def __init__(self) -> None:
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.writes = self.rank == 0
        self._steps = 0
        self._muted = Muted()  # ranks other than 0: their notes, sent to rank 0 at each gather
        self._said: Counted | None = None  # rank 0: where it says them
        self._settled = False  # an error left a collective step: every rank has it, or the others are gone
        self._done = False  # the pass returned its result: no collective follows
        self._stop: tuple[str, int] | None = None  # rank 0: another rank's error, said at the next on_writer

    def progress(self, progress: Any) -> Any:
        if not self.writes:
            return self._muted
        self._said = Counted(progress, self.size)
        return self._said

    @_step
    def check_same(self, want: dict[str, Any]) -> None:
        """Refuse a world whose ranks see different data, models or settings (on every rank)."""
        everyone: list[Any] = [None] * self.size
        with _answered(self.rank, "comparing settings"):
            dist.all_gather_object(everyone, want)
        ref = everyone[0]
        for rank, theirs in enumerate(everyone[1:], 1):
            diffs = {key: label for key, label in _CHECKS.items() if theirs.get(key) != ref.get(key)}
            if diffs:
                fp = ""
                if "dataset_fingerprint" in diffs:
                    fp = (f" (dataset fingerprint {str(theirs.get('dataset_fingerprint'))[:12]}… vs "
                          f"{str(ref.get('dataset_fingerprint'))[:12]}…)")
                values = "; ".join(f"{label.split(' (')[0]}: rank 0 {_cut(ref.get(key))}, rank {rank} {_cut(theirs.get(key))}"
                                   for key, label in diffs.items() if key != "dataset_fingerprint")
                raise (SketchmineError if self.writes else SaidOnRankZero)(
                    f"rank {rank} sees a different {' and '.join(diffs.values())} than rank 0{fp}; every rank must mine "
                    f"the same dataset with the same model and settings{f' ({values})' if values else ''}")

    @_step
    def on_writer(self, fn: Callable[[], T], share: bool = True) -> T:
        """Run `fn` on rank 0; its result (when `share`) or its error reaches every rank. After a
        gather where another rank sent its error (`stopped`), `fn` is not run: that error is."""
        message, result, code = None, None, 1
        error: BaseException | None = None
        if self.writes and self._stop is not None:
            message, code = self._stop
            error = SaidOnRankZero(message, code)  # the rank that stopped says it
        elif self.writes:
            try:
                result = fn()
            except BaseException as exc:  # every rank must leave the collective below
                error = exc
                said, code = _said(exc)
                message = f"rank 0 stopped: {said}"
        box = [(message, result if share else None, code)]
        try:
            with _answered(self.rank, "taking rank 0's result"):
                dist.broadcast_object_list(box, src=0)
        except SketchmineFailure:
            if error is None:
                raise
        if error is not None:  # rank 0's own error first
            raise error
        message, shared, code = box[0]
        if message is not None:
            raise SaidOnRankZero(message, code)
        return result if self.writes else shared  # type: ignore[return-value]

    def store(self, open_store: Callable[[], RunStore]) -> RunStore | _RemoteStore:
        """Rank 0 opens (or creates) the run; the others get its attributes."""
        opened: list[RunStore] = []

        def run() -> dict[str, Any]:
            opened.append(open_store())
            return {"path": str(opened[0].path), "attrs": opened[0].attrs}

        info = self.on_writer(run)
        return opened[0] if self.writes else _RemoteStore(Path(info["path"]), info["attrs"])

    def shard(self, done: int, n: int, batch_size: int) -> Sequence[int]:
        batches = math.ceil((n - done) / batch_size)
        self._steps = math.ceil(batches / self.size)
        return _Strided(done, n, batch_size, self.rank, self.size)

    def flush_due(self, batches: int) -> bool:
        """A flush is collective: only at steps every rank reaches (not the last one)."""
        return batches < self._steps

    @_step
    def gather(self, accs: list[Accumulator], pending: Any, bad: list[dict[str, Any]],
               converted: dict[str, int]) -> tuple[list[Accumulator], Any]:
        """Rank 0: merged copies of all ranks' accumulators (rank 0's, then 1, 2, ... folded in),
        and their rows since the last flush in global order; bad-image records and conversion
        counts move to rank 0's lists. Other ranks keep their own accumulators (a copy is
        merged, so nothing is counted twice at the next flush)."""
        mine = (None if self.writes else [acc.state() for acc in accs], _rows(pending),
                [] if self.writes else list(bad), {} if self.writes else dict(converted), list(self._muted.notes))
        everyone: list[Any] | None = [None] * self.size if self.writes else None
        with _answered(self.rank, "gathering the ranks' states"):
            dist.gather_object(mine, everyone, dst=0)
        if not self.writes:
            bad.clear()
            converted.clear()
            self._muted.notes.clear()
            return accs, pending
        assert everyone is not None
        stopped = [theirs for theirs in everyone if isinstance(theirs, _Stopped)]
        if stopped:  # said at the on_writer that follows every gather, instead of its work
            self._stop = (f"rank {stopped[0].rank} stopped: {stopped[0].message}", stopped[0].code)
            return accs, pending
        merged = [copy.deepcopy(acc) for acc in accs]
        for i, (acc, into) in enumerate(zip(accs, merged)):
            other = copy.deepcopy(acc)  # restored from each rank's state in turn
            for theirs in everyone[1:]:
                other.restore(theirs[0][i])
                into.merge(other)
        for theirs in everyone[1:]:
            for message in theirs[4] if self._said is not None else ():  # said here, as one process says them
                self._said.note_theirs(message)
            bad.extend(theirs[2])
            for mode, count in theirs[3].items():
                converted[mode] = converted.get(mode, 0) + count
        bad[:] = sorted({b["index"]: b for b in bad}.values(), key=lambda b: b["index"])  # committed ones once
        return merged, _merged_rows(pending, [e[1] for e in everyone])

    def stopped(self, exc: BaseException) -> None:
        """This rank stopped with an error of its own while the pass ran (an unreadable image
        without skip_bad_images, the model's error, Ctrl-C here): the other ranks wait for its
        state at the next gather. Under torchrun this process ends and torchrun stops the others;
        a process group the caller initialised outlives the call, and they waited as long as this
        process lived. So it joins that gather with its error and the on_writer after it, where
        rank 0 tells every rank `rank R stopped: ...`; the group stays usable."""
        if self._settled or self._done or _OWNED:
            return
        self._settled = True
        message, code = _said(exc)
        everyone: list[Any] | None = [None] * self.size if self.writes else None
        box: list[Any] = [(f"rank {self.rank} stopped: {message}", None, code)]
        with contextlib.suppress(RuntimeError):  # the others are gone already: nothing to tell
            dist.gather_object(_Stopped(self.rank, message, code), everyone, dst=0)
            dist.broadcast_object_list(box, src=0)

    def result(self, store: RunStore | _RemoteStore) -> Run | None:
        """The finished run on every rank (called after rank 0 finished writing); ranks that
        cannot see rank 0's store path (another machine, no shared filesystem) get None."""
        self._done = True
        if self.writes:  # read-only, as the single process's
            return Run(cast(RunStore, store).reader())
        if is_run(Path(store.path)):
            return Run(RunStore.open(store.path))
        return None


def _rows(pending: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(global index, logits or None, labels) of one rank's rows since the last flush."""
    return pending.index_rows().copy(), pending.logit_rows(), pending.label_rows().copy()


def _merged_rows(pending: Any, parts: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]) -> Any:
    """All ranks' rows as one pending block in global order (a contiguous range)."""
    index = np.concatenate([p[0] for p in parts])
    if not len(index):
        return type(pending).of(pending.start, index, index, None)
    order = np.argsort(index, kind="stable")
    start = int(index[order[0]])
    if not np.array_equal(index[order], np.arange(start, start + len(index))):
        raise RuntimeError(f"ranks' rows do not form one block of images from {start}: a sharding bug")
    logits = None
    widths = {p[1].shape[1] for p in parts if p[1] is not None}
    if widths:
        w = widths.pop()
        logits = np.concatenate([p[1] if p[1] is not None else np.full((len(p[0]), w), np.nan, np.float32)
                                 for p in parts])[order]
    labels = np.concatenate([p[2] for p in parts])[order]
    return type(pending).of(start, index[order], labels, logits)
