"""Batches made model input on the mining device, one batch ahead on CUDA.

On CUDA the next batch's uint8 copy, JPEG decoding and batched preprocessing are queued on a
side stream before the current batch is handed to the loop, so they overlap its forward pass on
the GPU (the loader's workers and the DataLoader's pin-memory thread overlap the reading and
pinning on the host). Elsewhere (the CPU) the batches are prepared as they are needed: one
batch ahead would only hold one more batch in memory, on the same cores.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from sketchmine.ctrl_c import started

Prepare = Callable[[torch.Tensor, Any, list[str]], tuple[torch.Tensor, list[str]]]


def prepared(loader: Iterable[tuple[Any, ...]], prepare: Prepare | None,
             device: torch.device) -> Iterator[tuple[Any, ...]]:
    """(index, x, label, notes) batches with x made model input by `prepare` (on `device`);
    the loader's batches as they are when `prepare` is None."""
    loader = started(loader)
    if prepare is None:
        yield from loader
    elif device.type == "cuda" and torch.cuda.is_available():
        yield from _ahead(loader, prepare, device)
    else:
        for idx, packed, y, notes in loader:
            x, notes = prepare(idx, packed, notes)
            yield idx, x, y, notes


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
