"""Batches made model input on the mining device, one batch ahead on CUDA.

On CUDA the next batch's uint8 copy, JPEG decoding and batched preprocessing are queued on a
side stream before the current batch is handed to the loop, so they overlap its forward pass on
the GPU (the loader's workers and the DataLoader's pin-memory thread overlap the reading and
pinning on the host). Elsewhere (the CPU) the batches are prepared as they are needed: one
batch ahead would only hold one more batch in memory, on the same cores.
"""
from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from sketchmine.ctrl_c import started
from sketchmine.errors import SketchmineFailure, machine_fix

Prepare = Callable[[torch.Tensor, Any, list[str]], tuple[torch.Tensor, list[str]]]


def prepared(loader: Iterable[tuple[Any, ...]], prepare: Prepare | None,
             device: torch.device) -> Iterator[tuple[Any, ...]]:
    """(index, x, label, notes) batches with x made model input by `prepare` (on `device`);
    the loader's batches as they are when `prepare` is None."""
    workers = int(getattr(loader, "num_workers", 0))
    check_open_files(workers, int(getattr(loader, "prefetch_factor", None) or 2))
    with open_files_said(workers):
        loader = started(loader)
        if prepare is None:
            yield from loader
        elif device.type == "cuda" and torch.cuda.is_available():
            yield from _ahead(loader, prepare, device)
        else:
            for idx, packed, y, notes in loader:
                x, notes = prepare(idx, packed, notes)
                yield idx, x, y, notes


def open_files_needed(workers: int, prefetch_factor: int, open_now: int) -> int:
    """About how many descriptors a loader of `workers` processes, each `prefetch_factor`
    batches ahead, needs on top of the `open_now` (measured: the demo over PNGs failed below
    42, 50 and 50 at 2 x 2, 4 x 2 and 2 x 6, with 8 open; this leaves a margin)."""
    return open_now + 32 + workers * (prefetch_factor + 4) if workers else open_now


def check_open_files(workers: int, prefetch_factor: int) -> None:
    """Refuse worker processes the open-file limit cannot serve, before they start. Why: below
    it torch's loader hung for good (a worker's hand-over failed, the batch never came: 3 of 4
    tries at `ulimit -n 20` with 2 workers) or died with a traceback of its own."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (not Linux): nothing to measure against
        return
    need = open_files_needed(workers, prefetch_factor, open_now)
    if workers and soft != resource.RLIM_INFINITY and soft < need:
        raise SketchmineFailure(f"--workers {workers} loader processes, each --prefetch-factor {prefetch_factor} "
                                f"batches ahead, need about {need} open files, and this process may open {soft} "
                                "(ulimit -n): raise the limit, or pass fewer --workers (0 reads the images in this "
                                "process); re-run the same command to resume")


@contextlib.contextmanager
def open_files_said(workers: int) -> Iterator[None]:
    """The loader running out of open files (each batch a worker hands over holds descriptors
    until the loop takes it) said in one line with the limit and what to do. Why: torch raised
    it as a traceback ("Communication with the workers is no longer possible"), or as a bare
    "Too many open files" followed by a traceback of its half-started iterator's clean-up."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
                or isinstance(exc, RuntimeError) and "Too many open files" in str(exc)):
            raise
        said = machine_fix(exc) if isinstance(exc, OSError) else machine_fix(OSError(errno.EMFILE, ""))
        workers_said = (f"--workers {workers} loader processes (0 reads the images in this process)" if workers
                        else "the images read in this process")
        raise SketchmineFailure(f"the data loader ran out of open files, with {workers_said}: {said}; nothing "
                                "committed is lost: re-run the same command to resume") from None


def _ahead(loader: Iterable[tuple[Any, ...]], prepare: Prepare, device: torch.device) -> Iterator[tuple[Any, ...]]:
    """CUDA: batch i+1 is prepared on a side stream while batch i is mined on the current one."""
    side = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)

    def stage(batch: tuple[Any, ...] | None) -> tuple[tuple[Any, ...], torch.cuda.Event] | None:
        if batch is None:
            return None
        idx, packed, y, notes = batch
        side.wait_stream(current)  # the memory it reuses is free on the current stream
        with torch.cuda.stream(side):
            x, notes = prepare(idx, packed, notes)
            ready = torch.cuda.Event()
            ready.record(side)
        return (idx, x, y, notes), ready

    it = iter(loader)
    staged = stage(next(it, None))
    while staged is not None:
        (idx, x, y, notes), ready = staged
        staged = stage(next(it, None))  # batch i+1 queued before batch i is mined
        current.wait_event(ready)  # batch i (only) is ready before the forward uses it
        x.record_stream(current)  # made on the side stream, freed after the current one used it
        yield idx, x, y, notes
