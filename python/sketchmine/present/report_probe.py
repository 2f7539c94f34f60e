"""The report's live probe page: writes the files `passes.probe.build_probe` made (the model as
ONNX, onnxruntime-web) beside probe.html and assets/probe.js. The report stays a reader: it
runs no model; without a probe it says on the index page why there is none.

    out/probe.html          the drawing pad, predictions and the units that fire most
    out/assets/probe.js     the page's script (window.sketchmine.probe), with probe_pixels.js
    out/probe/model.js      metadata; graph-NNN.js: the graph (base64 pieces); ort.wasm.min.js,
                            ort-loader.js, wasm-NNN.js: the runtime (onnxruntime-web), embedded
    out/probe/links.js      layer name → report page id, for the unit links (absent in a probe-only folder)
"""
from __future__ import annotations

import html
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from sketchmine.errors import SketchmineError
from sketchmine.present.report_data import isolated

e = html.escape

NO_PROBE = ("written without the model (write_report reads the store only); `sketchmine report RUN --out DIR` "
            "adds the probe when the run's model can be loaded")
"""Why a report has no probe when the caller said nothing."""

MARKER = ".sketchmine-probe"


def probe_page(meta_note: str, linked: bool, names: list[str], title: str = "Prediction",
               tab: str = "live probe — sketchmine") -> str:
    """The page; `names`: the probe's files, loaded in order: the runtime, its loader and WebAssembly
    pieces, the metadata, the graph pieces, then the page's script. `title` heads the model's outputs
    ("Prediction" only when they are the run's classes); `tab`: the page's <title>."""
    back = '<p><a href="index.html">← report</a></p>' if linked else ""
    order = (["links.js"] if linked else []) + ["ort.wasm.min.js", "ort-loader.js"] + \
        sorted(n for n in names if n.startswith("wasm-")) + ["model.js"] + sorted(n for n in names if n.startswith("graph-"))
    scripts = "".join(f'<script src="probe/{e(s)}"></script>' for s in order) + \
        ''.join(f'<script src="assets/{s}"></script>' for s in ("dom.js", "probe_pixels.js", "probe.js"))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(tab)}</title>'
            '<link rel="stylesheet" href="assets/report.css"></head>\n<body class="probe-page">\n'
            f'{back}<h1>Live probe</h1><p id="probe-status">loading the model…</p>'
            f'<p class="note">{e(meta_note)}</p>'
            '<div class="probe"><div class="probe-left">'
            '<canvas id="pad" style="touch-action:none"></canvas>'
            '<div class="tools"><button id="undo">undo</button> <button id="clear">clear</button> '
            '<label>stroke width <input id="width" type="range"></label></div>'
            '<div class="tools"><label>load an image <input id="file" type="file" accept="image/*"></label> '
            '<button id="pick">pick a dataset image</button></div>'
            '<div id="steps"></div><p id="hint" class="note"></p><p id="convert-note" class="note"></p><div id="images"></div></div>'
            f'<div class="probe-right"><h2 id="preds-title">{e(title)}</h2><table id="preds"></table><div id="layers"></div></div></div>\n'
            f'{scripts}\n</body></html>\n')


def write_probe_files(out: Path, probe: Mapping[str, bytes], links: dict[str, str] | None, page_size: int,
                      run: str | None = None) -> str:
    """probe.html, assets/probe.js, assets/probe_pixels.js, assets/dom.js and probe/*; returns the page's
    note (from the graph's metadata). `run`: how the report's pages name the run, for the page's <title>."""
    (out / "probe").mkdir(exist_ok=True)
    (out / "assets").mkdir(exist_ok=True)
    for name, data in probe.items():
        if "/" in name or name.startswith("."):
            raise SketchmineError(f"probe file name {name!r} must be a plain file name")
        (out / "probe" / name).write_bytes(data)
    src = resources.files("sketchmine.present") / "report_assets"
    for script in ("dom.js", "probe_pixels.js", "probe.js"):  # dom.js: the report's number formats
        (out / "assets" / script).write_text((src / script).read_text(encoding="utf-8"), encoding="utf-8")
    if not (out / "assets" / "report.css").exists():
        (out / "assets" / "report.css").write_text((src / "report.css").read_text(encoding="utf-8"), encoding="utf-8")
    if links is not None:
        (out / "probe" / "links.js").write_text("window.sketchmineProbeLinks = " + json.dumps(
            {"layers": links, "page_size": page_size}).replace("<", "\\u003c") + ";\n")
    text = probe["model.js"].decode()
    meta = json.loads(text[text.index("=") + 1:text.index(";\n")])
    rgb = meta.get("channels") == 3 and not meta.get("sequence")
    note = (f"Model input {meta['size'][0]}×{meta['size'][1]} {'RGB' if rgb else 'grey'}, preprocessing "
            f"{meta['preprocessing']} inside the ONNX graph; the canvas is brought to the input size by antialiased "
            f"bilinear resampling (the miner's resize) and rounded to 0-255. Ink: {meta['ink']} ({meta['ink_why']}). "
            "Opens from file:// (the WebAssembly runtime and the graph are embedded in scripts under probe/).")
    are_classes = meta.get("outputs_are_classes", True)
    if not are_classes:
        note += (" The run was mined with logits=False (--no-logits), so the model's outputs were never matched with "
                 "the run's classes: shown as the softmax of its outputs, " + ("named by the model's own categories."
                                                                                if meta["classes"] else "numbered."))
    seq = meta.get("sequence")
    if seq:
        note += (f" The run mined progressive drawings: the page makes the drawing at {meta['size'][0]}×{meta['size'][1]} "
                 f"into the run's {seq['steps']} frames ({seq['transform']}, ink {seq['ink']}) as data/sequences.py "
                 "does, and the strip under the canvas shows the model's prediction on frames 1…t.")
    for n in meta.get("notes") or []:
        note += f" {n}."
    title = "Prediction" if are_classes else "Model outputs (not the run's classes)"
    tab = f"live probe: {isolated(meta.get('model'))} — " + (run or "sketchmine")  # which model, which run
    (out / "probe.html").write_text(probe_page(note, links is not None, list(probe), title, tab), encoding="utf-8")
    return note


def index_section(probe: Mapping[str, bytes] | str | None) -> str:
    """The index page's paragraph: a link to the probe, or why there is none."""
    if isinstance(probe, Mapping):
        return ('<h2>Live probe</h2><p><a href="probe.html" id="probe-link">Draw a sketch and watch the network</a> '
                "(the model runs in this browser, offline).</p>")
    why = NO_PROBE if probe is None else str(probe)
    return f'<h2>Live probe</h2><p class="note" id="no-probe">No live probe: {e(why)}</p>'


def check_probe_folder(out: str | Path) -> Path:
    """`out` as a folder a probe may be written to, checked before the model is exported: a new or
    empty folder, or one a probe wrote before; never a file, nor a folder inside a run (the probe's
    files would sit among the run's arrays)."""
    from sketchmine.store.lock import enclosing_run, file_above, refuse_dangling_links, resolved

    out = Path(out)
    resolved(out, "probe folder")  # a link loop: one line naming it (the path itself is kept as given)
    refuse_dangling_links(out, "probe folder", "--out")
    if out.exists() and not out.is_dir():
        raise SketchmineError(f"probe folder {out} exists and is a file, not a folder; choose a new or empty folder")
    if (blocked := file_above(out)) is not None:
        raise SketchmineError(f"probe folder {out} cannot be made: {blocked} is a file, not a folder; choose a new "
                              "or empty folder")
    if (run := enclosing_run(out)) is not None:
        raise SketchmineError(f"probe folder {out} is inside the run {run}; write the probe outside any run")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise SketchmineError(f"probe folder {out} exists and is not empty (and not a probe folder); choose a new "
                              "or empty folder")
    return out


def write_probe_folder(out: str | Path, probe: Mapping[str, bytes]) -> Path:
    """A probe-only folder (`sketchmine probe RUN --out DIR`): new, empty, or one this wrote before."""
    out = check_probe_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    # the marker goes first: a probe killed while writing leaves a folder the same command
    # writes again, not one it refuses as someone else's
    (out / MARKER).write_text(json.dumps({"sketchmine": "probe", "complete": False}) + "\n")
    write_probe_files(out, probe, None, 0)
    (out / MARKER).write_text(json.dumps({"sketchmine": "probe", "complete": True}) + "\n")
    return out / "probe.html"
