"""Where a pass runs: a device name checked against this machine before any work starts."""
from __future__ import annotations

import torch

from sketchmine.errors import SketchmineError

CUDA_OP = "sketchmine::topk_update"
"""An op every pass runs: its CUDA kernel is there exactly when the core was compiled with nvcc."""


def core_has_cuda_kernels() -> bool:
    """Whether the compiled core registered CUDA kernels with torch's dispatcher. A core built
    where nvcc was missing has CPU kernels only, and a CUDA tensor would reach the first op as
    torch's "Could not run ... with arguments from the 'CUDA' backend" traceback."""
    from sketchmine import _C  # noqa: F401  (loading the core registers torch.ops.sketchmine)

    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(CUDA_OP, "CUDA"))


def check_cuda_kernels(device: str, present: bool | None = None) -> None:
    """Refuse `device` (a CUDA one) when the core has no CUDA kernels; `present`: the answer of
    `core_has_cuda_kernels()`, asked when None."""
    if present is None:
        present = core_has_cuda_kernels()
    if not present:
        raise SketchmineError(f"device {device!r}: sketchmine's compiled core (sketchmine._C) was built without "
                              "CUDA kernels (nvcc was not on PATH when it was built, or SKETCHMINE_CUDA=0 was set); "
                              "rebuild it with the CUDA toolkit's nvcc on PATH (`pip install --no-build-isolation "
                              "--force-reinstall --no-deps .` in sketchmine's source tree; setup.py's docstring says "
                              "more) or pass --device cpu")


def as_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this machine has and the compiled core can run on, else a clear
    error (torch's own message for "banana", a missing GPU or a core without CUDA kernels is a
    traceback deep in the first copy or op)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SketchmineError(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SketchmineError(f"device {str(device)!r}: this machine has no CUDA GPU that torch can use; "
                                  "pass --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SketchmineError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                                  "device(s)")
        check_cuda_kernels(str(device))
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise SketchmineError(f"device {str(device)!r} is not supported; expected cpu, cuda or cuda:N")
    return dev
