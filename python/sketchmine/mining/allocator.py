"""Freed memory kept for the next batch while mining (and ablating) on the CPU (glibc's malloc).

Why: glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with
fresh pages from the kernel and returns them on free. A batch's activations are that big
(AlexNet's first conv output at batch 64: 50 MB; the batch itself: 38 MB), so every batch
paid a page fault per 4 KiB again: 10 ms per 38 MB here. Kept, a batch of 64 at 224 px took
0.33 s against 0.43 s on AlexNet (same peak resident memory) and 9.8 s against 13.9 s on VGG-19
(peak 5.2 GB against 3.7: the heap does not fit every next size into what was freed);
benchmarks/allocator.py.

While `kept_freed_memory()` is entered, allocations up to 1 GiB come from the heap and freed
memory stays there for the next batch. On exit the thresholds go to glibc's own steady state
(mmap above 32 MiB, trim above 64 MiB, what its dynamic thresholds reach after the first
large free) and the heap is trimmed, so the process keeps no more memory than without it.
Nothing happens off glibc, or with SKETCHMINE_MALLOC=default in the environment.

Inside, torch's CPU allocator also keeps large blocks itself (csrc/cpu/block_cache.cpp): a tensor
block of 1 MiB or more is mapped on its own and, when freed, waits for the next request it fits
(at most twice its size). A model whose batch frees more than the heap keeps (VGG-19 at batch 64
frees 3-4 GB) otherwise has the heap's top trimmed and faulted back every batch, ≈ 15-20 % of its
forward here, and never trimming the heap lets its layout drift until the peak grows with the
number of batches (benchmarks/RESULTS.md, session 24). On exit its blocks are unmapped; once
installed it stays torch's CPU allocator, passing everything else to the one it replaced.
SKETCHMINE_MALLOC=default turns it off too.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections.abc import Iterator

import torch

from sketchmine import _C  # the block cache (csrc/cpu/block_cache.cpp)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
KEPT = 1 << 30
"""Allocations up to this size come from the heap while mining, and freed memory up to it stays."""
_AFTER = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}
"""glibc's dynamic thresholds after the first large free (DEFAULT_MMAP_THRESHOLD_MAX, twice it)."""

_lock = threading.Lock()
_depth = 0
_cached = False  # whether the outermost entry installed the block cache
block_counts: tuple[int, int, int, int] | None = None
"""The last pass's block cache: (allocations served from a freed block, fresh ones, kept blocks
unmapped to bound the cache, bytes kept and unused at the end); None before any."""


def _libc() -> ctypes.CDLL | None:
    """glibc, when this process runs on it and the user has not opted out."""
    if os.environ.get("SKETCHMINE_MALLOC", "").lower() == "default":
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _set(libc: ctypes.CDLL, values: dict[int, int]) -> bool:
    return all(libc.mallopt(param, value) == 1 for param, value in values.items())


def settle(libc: ctypes.CDLL | None = None) -> bool:
    """glibc's thresholds where its own dynamic ones settle after the first large free (mmap
    above 32 MiB, trim above 64 MiB), the heap trimmed: what a pass leaves behind. False off
    glibc or when opted out."""
    libc = libc or _libc()
    if libc is None:
        return False
    applied = _set(libc, _AFTER)
    libc.malloc_trim(0)
    return applied


@contextlib.contextmanager
def kept_freed_memory() -> Iterator[bool]:
    """Inside: freed memory is kept for the next batch, not returned (the heap's up to KEPT,
    blocks of 1 MiB or more in the block cache); yields whether it applies. Nested and
    concurrent entries are counted: the last exit restores."""
    global _depth, _cached, block_counts
    libc = _libc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            applied = _set(libc, {_M_MMAP_THRESHOLD: KEPT, _M_TRIM_THRESHOLD: KEPT})
            _cached = bool(_C.block_cache_enter())
        else:
            applied = True
        _depth += 1
    try:
        yield applied
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if _cached:
                    block_counts = _C.block_cache_exit()
                    _cached = False
                settle(libc)


def kept_freed_memory_on(device: torch.device) -> contextlib.AbstractContextManager[bool]:
    """`kept_freed_memory()` for a pass on the CPU; nothing on another device (its batches live
    in that device's allocator)."""
    return kept_freed_memory() if device.type == "cpu" else contextlib.nullcontext(False)
