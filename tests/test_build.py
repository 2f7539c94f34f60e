"""The compiled core is built as promised: CUDA kernels whenever nvcc and CUDA torch exist."""
from __future__ import annotations

import shutil

import pytest
import torch

from sketchmine import _C


def test_cuda_kernels_compiled_when_toolkit_present():
    if shutil.which("nvcc") is None or torch.version.cuda is None:
        pytest.skip("no nvcc or CPU-only torch: CUDA kernels are not expected")
    assert _C.with_cuda, "nvcc and a CUDA torch are present, but sketchmine._C was built without CUDA kernels"


def test_op_registered_for_cpu_and_cuda():
    assert hasattr(torch.ops.sketchmine, "topk_update")
    if _C.with_cuda:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("sketchmine::topk_update", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("sketchmine::topk_update", "CPU")
