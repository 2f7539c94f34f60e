"""The compiled core is built as promised: CUDA kernels whenever nvcc and CUDA torch exist."""
from __future__ import annotations

import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sketchmine import _C
from sketchmine.device import check_cuda_kernels, core_has_cuda_kernels
from sketchmine.errors import SketchmineError

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_kernels_compiled_when_toolkit_present():
    if shutil.which("nvcc") is None or torch.version.cuda is None:
        pytest.skip("no nvcc or CPU-only torch: CUDA kernels are not expected")
    assert _C.with_cuda, "nvcc and a CUDA torch are present, but sketchmine._C was built without CUDA kernels"


def test_op_registered_for_cpu_and_cuda():
    assert hasattr(torch.ops.sketchmine, "topk_update")
    if _C.with_cuda:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("sketchmine::topk_update", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("sketchmine::topk_update", "CPU")


def test_device_check_agrees_with_the_build():
    """The dispatcher's answer is what --device cuda is checked against; it must match the build flag."""
    assert core_has_cuda_kernels() == _C.with_cuda
    if _C.with_cuda:
        check_cuda_kernels("cuda")  # this core can run there: no refusal


def test_cuda_refused_on_a_core_without_cuda_kernels():
    with pytest.raises(SketchmineError) as got:
        check_cuda_kernels("cuda:0", present=False)
    said = str(got.value)
    assert "'cuda:0'" in said and "built without CUDA kernels" in said
    assert "nvcc on PATH" in said and "setup.py's docstring" in said and "--device cpu" in said


def _setup_module() -> dict:
    """setup.py's functions (it calls setup() only when run as __main__)."""
    return runpy.run_path(str(ROOT / "setup.py"), run_name="sketchmine_setup")


def test_setup_warns_when_a_cuda_torch_meets_no_nvcc(tmp_path, monkeypatch, capsys):
    setup = _setup_module()
    cuda_torch = SimpleNamespace(version=SimpleNamespace(cuda="13.0"))  # all _cuda_args reads of torch
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvcc there
    monkeypatch.delenv("SKETCHMINE_CUDA", raising=False)
    assert setup["_cuda_args"](cuda_torch) == []
    said = capsys.readouterr().err
    assert "torch is a CUDA 13.0 build but nvcc is not on PATH" in said and "WITHOUT CUDA kernels" in said
    monkeypatch.setenv("SKETCHMINE_CUDA", "0")  # asked for a CPU-only core: nothing to warn about
    assert setup["_cuda_args"](cuda_torch) == []
    assert capsys.readouterr().err == ""


def test_setup_says_what_is_missing_without_cmakelists(tmp_path):
    setup = _setup_module()
    with pytest.raises(SystemExit) as got:
        setup["check_build_files"](tmp_path)
    said = str(got.value)
    assert "CMakeLists.txt and csrc/ops.cpp are missing" in said and str(tmp_path) in said
    assert "MANIFEST.in" in said
    setup["check_build_files"](ROOT)  # the checkout has both
