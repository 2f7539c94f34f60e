"""sketchmine as it is distributed and run outside the developer's set-up: the sdist holds what the
build needs, the package is typed, non-UTF-8 locales and streams, and an installed package's live
probe (onnxruntime-web from SKETCHMINE_ORT_DIR, the onnx packages named as the [onnx] extra)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib import resources
from pathlib import Path

import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.passes import probe_runtime
from sketchmine.passes.probe_runtime import ORT_DIR, ORT_ENV, ORT_FILES, ORT_VERSION, check_onnx_packages, ort_files
from tests.helpers import image_folder, per_class_subset

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                    "*.so", "*.zarr", "ort", "tests", "benchmarks")
"""What a scratch copy for an sdist leaves out: build outputs, the 14 MB runtime, what the sdist never reads."""
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
"""A POSIX locale with Python's C-locale coercion and UTF-8 mode off: file names and streams are ASCII."""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Fingerprint hashes cached under the test's own folder; no SKETCHMINE_ORT_DIR from the caller."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(ORT_ENV, raising=False)


# ---- the sdist and the wheel's metadata -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tuple[list[str], str, str]:
    """(the sdist's file names below its top folder, its PKG-INFO, the build's output), built from a
    scratch copy of this tree as a release would be."""
    tmp = tmp_path_factory.mktemp("sdist")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_COPIED)
    proc = subprocess.run([sys.executable, "setup.py", "sdist", "-d", str(tmp / "dist")], cwd=tmp / "src",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(next((tmp / "dist").glob("sketchmine-*.tar.gz"))) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
        info = tar.extractfile(next(n for n in tar.getnames() if n.count("/") == 1 and n.endswith("PKG-INFO")))
        assert info is not None
        return names, info.read().decode(), proc.stdout + proc.stderr


def test_the_sdist_holds_what_the_compiled_core_is_built_from(sdist):
    names, _, _ = sdist
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file())
    assert sources and [s for s in sources if s not in names] == []
    assert {"CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "LICENSE",
            "scripts/vendor_ort_web.sh"} <= set(names)


def test_the_package_is_typed_and_its_licence_an_spdx_expression(sdist):
    names, info, built = sdist
    assert {"python/sketchmine/py.typed", "python/sketchmine/_C.pyi"} <= set(names)
    assert resources.files(sketchmine).joinpath("py.typed").is_file()
    assert "License-Expression: MIT" in info and "License-File: data/LICENSE.animal-shape" in info
    assert "`project.license` as a TOML table is deprecated" not in built


# ---- a non-UTF-8 locale -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def few_folder(demo_test_set, tmp_path_factory) -> Path:
    """40 real test silhouettes as PNGs, ASCII names throughout."""
    return image_folder(per_class_subset(demo_test_set, 4, "install"), tmp_path_factory.mktemp("few") / "images", 4)


def c_locale(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """`sketchmine ARGS` under the C locale; the output as bytes (ASCII, escapes for the rest)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LC_CTYPE")} | C_LOCALE
    return subprocess.run([sys.executable, "-m", "sketchmine", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, timeout=600)


def test_a_c_locale_mines_summarises_and_reports(tmp_path, few_folder):
    mined = c_locale("mine", "--model", "demo", "--data", few_folder, "--out", "run.zarr", "--layers", "features.0",
                     cwd=tmp_path)
    assert mined.returncode == 0, mined.stderr.decode(errors="replace")
    assert b"\\u2192 run.zarr" in mined.stdout  # the arrow escaped, not a UnicodeEncodeError
    for args in (("summary", "run.zarr"), ("unit", "run.zarr", "features.0", "0"), ("--help",)):
        proc = c_locale(*args, cwd=tmp_path)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, (args, proc.stderr.decode(errors="replace"))
    shutil.copytree(tmp_path / "run.zarr", tmp_path / "rü.zarr")  # a run path the C locale cannot decode
    proc = c_locale("report", "rü.zarr", "--out", "rep", "--no-probe", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    # the run's absolute path: the report is read from its own folder
    assert f"run {(tmp_path / 'rü.zarr').resolve()}<" in (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")


def test_a_c_locale_blames_itself_for_a_utf8_class_name(tmp_path, few_folder):
    root = tmp_path / "images"
    shutil.copytree(few_folder, root)
    (root / "cat").rename(root / "chat é")  # valid UTF-8 on disk
    proc = c_locale("mine", "--model", "demo", "--data", root, "--out", "r.zarr", cwd=tmp_path)
    said = proc.stderr.decode("ascii")
    assert proc.returncode == 3 and "class folder name 'chat \\xe9'" in said, said
    assert "is UTF-8, but this Python reads file names as ascii" in said and "LC_ALL=C.UTF-8" in said
    assert "PYTHONUTF8=1" in said and "rename" not in said and not (tmp_path / "r.zarr").exists()


def test_pythonioencoding_ascii_prints_a_summary(tmp_path, few_folder):
    env = os.environ | {"PYTHONIOENCODING": "ascii"}
    run = tmp_path / "run.zarr"
    sketchmine.mine("demo", few_folder, layers=["features.0"], k=2, out=run)
    proc = subprocess.run([sys.executable, "-m", "sketchmine", "summary", str(run)], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0 and b"features.0" in proc.stdout, proc.stderr.decode(errors="replace")


# ---- the live probe of an installed package ---------------------------------------------------------------


def vendored() -> None:
    if not all((ORT_DIR / n).is_file() for n in ORT_FILES):
        pytest.skip("onnxruntime-web is not vendored here: run scripts/vendor_ort_web.sh")


def test_onnxruntime_web_is_read_from_the_folder_the_variable_names(tmp_path, monkeypatch):
    vendored()
    for n in ORT_FILES:
        shutil.copy(ORT_DIR / n, tmp_path / n)
    with (tmp_path / "ort-wasm-simd-threaded.wasm").open("ab") as f:
        f.write(b"\0from the variable's folder")  # only a read from there returns this
    monkeypatch.setenv(ORT_ENV, str(tmp_path))
    assert ort_files()["ort-wasm-simd-threaded.wasm"].endswith(b"\0from the variable's folder")
    (tmp_path / "ort-wasm-simd-threaded.mjs").unlink()  # the vendored copy is not a fallback
    with pytest.raises(SketchmineError, match=rf"{ORT_ENV}=.*ort-wasm-simd-threaded\.mjs is missing"):
        ort_files()
    shutil.copy(ORT_DIR / "ort-wasm-simd-threaded.mjs", tmp_path)
    (tmp_path / "ort.wasm.min.js").write_text("/*!\n * ONNX Runtime Web v1.17.0\n */")
    with pytest.raises(SketchmineError, match=r"ort\.wasm\.min\.js is not onnxruntime-web 1\.30\.0"):
        ort_files()


def test_without_onnxruntime_web_both_ways_to_get_it_are_said(tmp_path, monkeypatch):
    said = probe_runtime.ort_missing(ORT_DIR / ORT_FILES[0])
    assert "scripts/vendor_ort_web.sh" in said and f"npm pack onnxruntime-web@{ORT_VERSION}" in said
    assert "package/dist/" in said and all(n in said for n in ORT_FILES) and f"set {ORT_ENV}" in said
    monkeypatch.setenv(ORT_ENV, str(tmp_path))  # an empty folder
    with pytest.raises(SketchmineError, match=rf"{tmp_path / 'ort.wasm.min.js'} is missing.*npm pack"):
        ort_files()


@pytest.fixture(scope="module")
def small_run(demo_test_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "run.zarr"
    sketchmine.mine("demo", per_class_subset(demo_test_set, 2, "probe"), layers=["features.0"], k=2, out=out)
    return out


def test_the_probe_without_onnx_names_the_extra(tmp_path, small_run):
    script = ("import sys\nsys.modules['onnx'] = None  # as if not installed\n"
              "from sketchmine.cli.main import main\n"
              f"sys.exit(main(['probe', {str(small_run)!r}, '--out', {str(tmp_path / 'p')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert ("the live probe needs the onnx and onnxruntime packages: pip install 'sketchmine[onnx]' "
            "(onnx is not installed)") in proc.stderr
    assert "cannot export" not in proc.stderr


def test_onnxruntime_missing_names_the_extra_too(monkeypatch, tmp_path):
    from sketchmine.model.onnx_backend import load_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(SketchmineError, match=r"pip install 'sketchmine\[onnx\]' \(onnxruntime is not installed\)"):
        check_onnx_packages()
    with pytest.raises(SketchmineError, match=r"onnxruntime is missing\): pip install 'sketchmine\[onnx\]'"):
        load_onnx(tmp_path / "model.onnx")


def test_report_data_shows_undecodable_names_as_the_pages_do():
    """A path a C locale decoded into lone surrogates: escaped in the dashboards' JSON, a browser
    showed each byte as a replacement character; `names.printable` gives the pages' text."""
    import json

    from sketchmine.present.report_data import to_js

    assert json.loads(to_js({"path": ["r\udcc3\udcbc/\udcff.png", "\U0001F400 <b>"]})) == \
        {"path": ["rü/\\xff.png", "\U0001F400 <b>"]}
