"""Builds the compiled core sketchmine._C with CMake against the installed torch.

Build with `pip install --no-build-isolation .` so the extension links the torch it
will run with (an isolated build fetches torch==2.14.1 a second time, into the build
environment). The CUDA kernels are compiled whenever nvcc is on PATH and torch is a
CUDA build, for the architectures in TORCH_CUDA_ARCH_LIST when set (torch's syntax,
"7.5;8.0;9.0+PTX"), else sm_75 to sm_90; set SKETCHMINE_CUDA=0 to skip them (faster
local CPU-only builds). A CUDA build of torch without nvcc on PATH gives a core without CUDA
kernels (`--device cuda` is then refused): put the CUDA toolkit's bin/ on PATH (the nvcc of the
CUDA version torch.version.cuda names) and rebuild. CMake and ninja are the `cmake`/`ninja`
Python packages' binaries when installed (a system CMake may be too old for CUDA 20), else the
ones on PATH.
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

DEFAULT_CUDA_ARCHS = "75-real;80-real;90"
"""sm_75 (Turing) to sm_90 (Hopper): machine code for sm_75, sm_80 (which sm_86 and sm_89 run: same
major version) and sm_90, plus sm_90 PTX for newer GPUs. Each architecture adds to the build time
(five took 22 minutes on the 2-core CI box)."""

NO_TORCH = ("sketchmine builds its compiled core against the installed torch, and none is importable here. "
            "Install torch first, then build without isolation:\n"
            "    pip install torch==2.14.1 'setuptools>=77' wheel 'pybind11>=2.12' 'cmake>=3.18' ninja\n"
            "    pip install --no-build-isolation .\n"
            "(or run `make test`, which does both in a project .venv)")


BUILD_FILES = ("CMakeLists.txt", "csrc/ops.cpp")
"""What CMake builds the core from: an sdist made without MANIFEST.in lacks both."""


def check_build_files(root: Path) -> None:
    """Stop with what is missing and what to do, before CMake's "does not appear to contain
    CMakeLists.txt" (said after the torch import, in CMake's words)."""
    missing = [name for name in BUILD_FILES if not (root / name).is_file()]
    if missing:
        raise SystemExit(f"sketchmine's compiled core cannot be built from {root}: {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} missing (a source distribution made without "
                         "MANIFEST.in lacks CMakeLists.txt and csrc/); build from a git checkout of sketchmine, "
                         "or from an sdist made with its MANIFEST.in (`python setup.py sdist` in a checkout)")


def cuda_architectures(spec: str | None) -> str:
    """TORCH_CUDA_ARCH_LIST ("7.5;8.6 9.0+PTX") as CMake CUDA_ARCHITECTURES ("75-real;86-real;90");
    the default when unset or empty. "X.Y" is machine code only, "+PTX" adds PTX (torch's meaning)."""
    items = (spec or "").replace(",", ";").replace(" ", ";").split(";")
    archs = []
    for item in filter(None, (i.strip() for i in items)):
        ptx = item.upper().endswith("+PTX")
        number = item[:-4] if ptx else item
        try:
            major, minor = number.split(".")
            code = f"{int(major)}{minor}"
        except ValueError:
            raise SystemExit(f"TORCH_CUDA_ARCH_LIST: cannot read {item!r}; expected e.g. '8.0;9.0+PTX'") from None
        archs.append(code if ptx else f"{code}-real")
    return ";".join(archs) or DEFAULT_CUDA_ARCHS


def tool(name: str, module: str) -> str:
    """The `cmake`/`ninja` binary of the Python package of that name (the one the build
    requirements install, recent enough) when importable, else the one on PATH."""
    try:
        pkg = __import__(module)
        path = Path(pkg.BIN_DIR if module == "ninja" else pkg.CMAKE_BIN_DIR) / name
        if path.is_file():
            return str(path)
    except (ImportError, AttributeError):
        pass
    found = shutil.which(name)
    if found is None and name == "cmake":
        raise SystemExit("sketchmine's build needs CMake >= 3.18: pip install 'cmake>=3.18'")
    return found or ""


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


NO_NVCC = ("warning: torch is a CUDA {cuda} build but nvcc is not on PATH: sketchmine._C is built WITHOUT "
           "CUDA kernels, and `--device cuda` will be refused. To build them, put the CUDA toolkit's bin/ on PATH "
           "(`which nvcc` must answer) and rebuild; set SKETCHMINE_CUDA=0 to build for the CPU only without "
           "this warning.")


def _cuda_args(torch) -> list[str]:
    """CMake arguments enabling the CUDA kernels, or [] when they cannot be built, with a warning when
    torch could have used them (shown by `python -m build` and `pip -v`; a plain pip hides a successful
    build's output, so sketchmine.device refuses `--device cuda` on such a core too)."""
    nvcc = shutil.which("nvcc")
    if os.environ.get("SKETCHMINE_CUDA", "1") == "0" or torch.version.cuda is None:
        return []
    if nvcc is None:
        banner = "*" * 100
        print(f"{banner}\n{NO_NVCC.format(cuda=torch.version.cuda)}\n{banner}", file=sys.stderr, flush=True)
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
        f"-DSKETCHMINE_CUDA_ARCHITECTURES={cuda_architectures(os.environ.get('TORCH_CUDA_ARCH_LIST'))}",
    ]


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        check_build_files(ROOT)
        import pybind11

        try:
            import torch
            from torch.utils import cpp_extension
        except ImportError:
            raise SystemExit(NO_TORCH) from None

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
        cmake, ninja = tool("cmake", "cmake"), tool("ninja", "ninja")
        if ninja:
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", str(build_dir), "-j", jobs], check=True)
        # CMake names the module with the interpreter's suffix; put it where setuptools expects.
        built = next(out_dir.glob("_C*.so"))
        target = Path(self.get_ext_fullpath(ext.name))
        if built.resolve() != target.resolve():
            shutil.copy2(built, target)


# setuptools' build backend runs this file as __main__; tests load it for its functions (runpy)
if __name__ == "__main__":
    setup(
        ext_modules=[CMakeExtension("sketchmine._C")],
        cmdclass={"build_ext": CMakeBuild},
    )
