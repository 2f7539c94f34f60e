"""What the live probe needs from outside the package: onnxruntime-web (the page's runtime, 14 MB of
WebAssembly, not committed) and the onnx and onnxruntime packages (the export and its check, the
[onnx] extra). Each is looked for before the model is loaded, and a missing one is named with the
way to get it, in a source checkout and in an installed package alike.
"""
from __future__ import annotations

import os
from pathlib import Path

from sketchmine.ctrl_c import imported
from sketchmine.errors import SketchmineError

ORT_VERSION = "1.30.0"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_DIR = Path(__file__).resolve().parents[1] / "present" / "report_assets" / "ort"
"""Where scripts/vendor_ort_web.sh puts onnxruntime-web's WebAssembly build (a wheel built from a
checkout that ran it ships the files; one built without has none)."""
ORT_ENV = "SKETCHMINE_ORT_DIR"
"""An environment variable naming a folder that holds ORT_FILES, read before ORT_DIR: how an
installed sketchmine, which has no scripts/ and should not be written into, gets the probe."""
ORT_BANNER = f"ONNX Runtime Web v{ORT_VERSION}"
"""How ort.wasm.min.js starts (its licence comment): the probe page is written for this version."""
ONNX_EXTRA = "the live probe needs the onnx and onnxruntime packages: pip install 'sketchmine[onnx]'"


def ort_missing(path: Path) -> str:
    """Why there is no probe when onnxruntime-web is found nowhere, and both ways to get it."""
    tgz = f"onnxruntime-web-{ORT_VERSION}.tgz"
    return (f"onnxruntime-web {ORT_VERSION}, the live probe's runtime, is not here ({path} is missing). In "
            "sketchmine's source checkout, run scripts/vendor_ort_web.sh (npm; `make ort`); for an installed "
            f"sketchmine, `npm pack onnxruntime-web@{ORT_VERSION} && tar xzf {tgz}` (or download {tgz} from "
            f"registry.npmjs.org) puts {', '.join(ORT_FILES)} in package/dist/: set {ORT_ENV} to that folder "
            "(docs/probe.md)")


def ort_files() -> dict[str, bytes]:
    """onnxruntime-web's WebAssembly build (name → bytes) from the folder ORT_ENV names when set, else
    the vendored ORT_DIR; an error naming the missing file and how to get it otherwise."""
    named = os.environ.get(ORT_ENV)
    if named:
        folder = Path(named).expanduser()
        gone = [n for n in ORT_FILES if not (folder / n).is_file()]
        if gone:
            raise SketchmineError(f"{ORT_ENV}={named}: {folder / gone[0]} is missing; the folder must hold "
                                  f"onnxruntime-web {ORT_VERSION}'s {', '.join(ORT_FILES)} (package/dist/ of "
                                  f"`npm pack onnxruntime-web@{ORT_VERSION}`, unpacked)")
    else:
        folder = ORT_DIR
        gone = [n for n in ORT_FILES if not (folder / n).is_file()]
        if gone:
            raise SketchmineError(ort_missing(folder / gone[0]))
    files = {n: (folder / n).read_bytes() for n in ORT_FILES}
    if ORT_BANNER.encode() not in files["ort.wasm.min.js"][:400]:
        raise SketchmineError(f"{folder / 'ort.wasm.min.js'} is not onnxruntime-web {ORT_VERSION} (its first "
                              f"lines do not say {ORT_BANNER!r}); the probe page is written for that version: "
                              f"get it with `npm pack onnxruntime-web@{ORT_VERSION}`")
    return files


def check_onnx_packages() -> None:
    """Refuse before the export when onnx (torch.onnx.export writes with it) or onnxruntime (which
    checks the exported graph against the model) is missing: the exporter's own error would read
    as if the model could not be exported."""
    for module in ("onnx", "onnxruntime"):
        try:
            imported(module)  # Ctrl-C held: one in onnxruntime's start read as "not installed"
        except ImportError:
            raise SketchmineError(f"{ONNX_EXTRA} ({module} is not installed)") from None
