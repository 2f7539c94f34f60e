"""Builds the compiled core sketchmine._C with CMake against the installed torch.

Build with `pip install --no-build-isolation .` so the extension links the torch it
will run with. The CUDA kernels are compiled whenever nvcc is on PATH and torch is a
CUDA build; set SKETCHMINE_CUDA=0 to skip them (faster local CPU-only builds).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


def _cuda_args(torch) -> list[str]:
    """CMake arguments enabling the CUDA kernels, or [] when they cannot be built."""
    nvcc = shutil.which("nvcc")
    if os.environ.get("SKETCHMINE_CUDA", "1") == "0" or nvcc is None or torch.version.cuda is None:
        return []
    nvidia = Path(torch.__file__).resolve().parent.parent / "nvidia"
    major = torch.version.cuda.split(".")[0]
    wheel_root = nvidia / f"cu{major}"
    includes = [wheel_root / "include"] if (wheel_root / "include").is_dir() else []
    includes += sorted(p for p in nvidia.glob("*/include") if p.is_dir() and p not in includes)
    libdir = wheel_root / "lib"
    if not libdir.is_dir():  # older layout: nvidia/cuda_runtime/lib
        libdir = nvidia / "cuda_runtime" / "lib"
    return [
        "-DSKETCHMINE_WITH_CUDA=ON",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DCUDA_EXTRA_INCLUDE_DIRS={';'.join(map(str, includes))}",
        f"-DCUDA_RUNTIME_LIBRARY_DIR={libdir}",
    ]


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch
        from torch.utils import cpp_extension

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DTORCH_INCLUDE_DIRS={';'.join(cpp_extension.include_paths())}",
            f"-DTORCH_LIBRARY_DIR={cpp_extension.library_paths()[0]}",
            f"-DTORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            "-DCMAKE_BUILD_TYPE=Release",
        ] + _cuda_args(torch)
        if shutil.which("ninja"):
            args.append("-GNinja")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)
        # CMake names the module with the interpreter's suffix; put it where setuptools expects.
        built = next(out_dir.glob("_C*.so"))
        target = Path(self.get_ext_fullpath(ext.name))
        if built.resolve() != target.resolve():
            shutil.copy2(built, target)


setup(
    ext_modules=[CMakeExtension("sketchmine._C")],
    cmdclass={"build_ext": CMakeBuild},
)
