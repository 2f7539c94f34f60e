"""Where a pass runs: a device name checked against this machine before any work starts."""
from __future__ import annotations

import torch

from sketchmine.errors import SketchmineError


def as_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this machine has, else a clear error (torch's own message
    for "banana" or a missing GPU is a traceback deep in the first copy)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SketchmineError(f"unknown device {device!r} ({' '.join(str(exc).split())[:80]}); "
                              "expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SketchmineError(f"device {str(device)!r}: this machine has no CUDA GPU that torch can use; "
                                  "pass --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SketchmineError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                                  "device(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise SketchmineError(f"device {str(device)!r} is not supported; expected cpu, cuda or cuda:N")
    return dev
