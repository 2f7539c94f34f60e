"""Out of memory at the chosen batch size: a message with a batch size that fits, measured
from the failed attempt (what was in use before the loop, the attempt's peak and what it
still asked for), instead of torch's allocator traceback.

Device memory is the CUDA allocator's (`torch.cuda` statistics); host memory is the process's
address space under a `ulimit -v` (RLIMIT_AS, Linux /proc/self/status), else its resident set
against the machine's RAM.
"""
from __future__ import annotations

import contextlib
import re
import resource
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from sketchmine.errors import SketchmineError

MARGIN = 0.9
"""Share of the free memory a suggested batch size may fill (the allocator fragments)."""

# torch's words ("Tried to allocate 2.00 GiB", "you tried to allocate 123 bytes") and the compiled
# block cache's own ("out of memory mapping 100352000 bytes", csrc/cpu/block_cache.cpp)
_ASKED = re.compile(r"(?:[Tt]ried to allocate|allocate:?|memory mapping)\s+([\d.]+)\s*(bytes|[KMGT]i?B)", re.I)
_UNITS = {"bytes": 1, "kib": 2**10, "kb": 2**10, "mib": 2**20, "mb": 2**20, "gib": 2**30, "gb": 2**30,
          "tib": 2**40, "tb": 2**40}


@dataclass(frozen=True)
class Memory:
    """Bytes: in use now, the peak so far, and the capacity the process may use."""

    in_use: int
    peak: int
    capacity: int


def measure(device: torch.device) -> Memory | None:
    """The memory the batches of `device` live in, or None where it cannot be read."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = torch.cuda.memory_reserved(device)
        return Memory(torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device),
                      used + free)  # what this process may hold: its own reserve and what is free
    if device.type != "cpu":
        return None
    status = process_status()
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and "VmSize" in status:
        return Memory(status["VmSize"], status.get("VmPeak", status["VmSize"]), int(soft))
    ram = _meminfo_total()
    if ram is None or "VmRSS" not in status:
        return None
    return Memory(status["VmRSS"], status.get("VmHWM", status["VmRSS"]), ram)


def fitting_batch_size(batch_size: int, before: int, peak: int, asked: int, capacity: int,
                       margin: float = MARGIN) -> int:
    """The largest batch whose need, scaled from the failed attempt, fits `margin` of the
    memory left: the attempt needed at least (peak + asked - before) bytes for `batch_size`
    images on top of `before` (model, buffers); 0 when not even one image fits. The margin is
    of what is left, not of the capacity: under a `ulimit -v` most of the address space is
    mapped before the first batch, and 10 % of the whole limit left no room where 400 images fit."""
    per_image = max(peak + asked - before, 1) / batch_size
    room = (capacity - before) * margin
    return max(int(room // per_image), 0) if room > 0 else 0


def asked_bytes(message: str) -> int:
    """The size of the allocation that failed, from torch's message (0 when it does not say)."""
    m = _ASKED.search(message)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()]) if m else 0


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory errors (CUDA's and the CPU allocator's) and Python's MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


@contextlib.contextmanager
def guard(device: torch.device, batch_size: int) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into a SketchmineError naming a batch size
    that fits, measured from the failed attempt."""
    before = measure(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise SketchmineError(message(device, batch_size, before, measure(device), asked_bytes(str(exc)))) from exc


@contextlib.contextmanager
def one_image(what: str) -> Iterator[None]:
    """Out of memory making one image (the first, which the model is probed with): no batch
    size helps, a smaller image does; a SketchmineError saying so instead of the allocator's
    traceback (image_size=200000 asked 160 GB for one grey image)."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        asked = asked_bytes(str(exc))
        said = f" ({asked / 2**30:,.1f} GiB asked at once)" if asked else ""
        raise SketchmineError(f"out of memory {what}{said}: one image needs that much whatever the batch size; pass "
                              "a smaller --image-size (image_size=)") from None


def message(device: torch.device, batch_size: int, before: Memory | None, after: Memory | None, asked: int) -> str:
    """What to tell the user after an out-of-memory error at `batch_size`."""
    head = f"out of {device.type} memory mining batches of {batch_size} images"
    if before is None or after is None:
        return f"{head}; pass a smaller --batch-size (batch_size=)"
    need = max(after.peak, after.in_use) + asked - before.in_use
    fits = fitting_batch_size(batch_size, before.in_use, max(after.peak, after.in_use), asked, after.capacity)
    mib = 2**20
    measured = (f"the attempt needed more than {need / mib:,.0f} MiB on top of the {before.in_use / mib:,.0f} MiB "
                f"in use before it, of {after.capacity / mib:,.0f} MiB")
    # on the CPU freed memory is kept between batches (allocator.py): faster, and it can hold more
    kept = ("; SKETCHMINE_MALLOC=default in the environment returns freed memory between batches (slower, "
            "less resident memory)") if device.type == "cpu" else ""
    if batch_size == 1:  # no smaller batch to name, whatever the measure says
        return (f"{head}: {measured}; one image at a time is the smallest batch: free memory, or use a smaller model "
                f"or images{kept}")
    if fits >= batch_size:  # it failed before its peak: the measure is a lower bound that cannot tell
        return (f"{head}: {measured}; it failed early in the batch, so that measure cannot say which batch fits: "
                f"try --batch-size {max(batch_size // 2, 1)} (batch_size=){kept}")
    if fits >= 1:
        return f"{head}: {measured}; --batch-size {fits} (batch_size=) fits by that measure{kept}"
    return (f"{head}: {measured}; not even one image fits by that measure: free memory, or use a smaller model or "
            f"images{kept}")


def process_status() -> dict[str, int]:
    """VmSize, VmPeak, VmRSS, VmHWM of this process in bytes (Linux); {} elsewhere."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmSize", "VmPeak", "VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    return out


def _meminfo_total() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    return None
