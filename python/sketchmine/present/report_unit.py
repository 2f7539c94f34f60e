"""The report's unit dashboards: one page per layer, `units/<id>.html#unit=U`, that shows any
of its units (report_assets/unit.js renders it), and the units' slide montages.

    out/units/<id>.html           the dashboard page of a layer's units (#unit=U picks one)
    out/dash/<id>/unit_NNNN.js    the dashboards of PAGE_SIZE units, loaded when shown (what they
                                  share written once: dash_data.py)
    out/montage/<id>/<unit>.png   the unit's slide (present/montage.py), for at most
                                  `montages` units per layer that have patches

Everything comes from `results.unit_summary` (the numbers `sketchmine unit` prints); a
section the run lacks carries the note that says how to add it. Like the rest of the report,
the store is the only input and every string is set with textContent by unit.js.
"""
from __future__ import annotations

import html
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sketchmine.names import command, layer_arg
from sketchmine.present.dash_data import compact, shared_js
from sketchmine.present.montage import slide_content
from sketchmine.present.report_data import (LOG_ODDS_ATTR, PAGE_SIZE, THUMB, PngWriter, isolated, log_odds_html, named,
                                             precision_html, run_title, strip, to_js)
from sketchmine.present.slide_workers import SlideWriter
from sketchmine.results.effects import class_units
from sketchmine.results.optimized import signal_words
from sketchmine.results.run import Run
from sketchmine.results.unit_summary import LayerSummary, pictures_current
from sketchmine.store import schema
from sketchmine.store.schema import PICTURE_GROUPS

ASSETS = ("unit.js", "unit.css")
BIN_EXAMPLES = 6
"""Examples per activation bin shown on a dashboard (`sketchmine unit --json` gives them all)."""
MONTAGES = 8
"""Montages per layer by default: each is a 1600 × 900 PNG of about an eighth of a second to draw, so
a report of wide layers stays quick; `sketchmine.plots.unit_montage` draws any other."""

e = html.escape


def copy_assets(out: Path, names: tuple[str, ...] = ASSETS) -> None:
    """The report's files `names` (report_assets/; default unit.js and unit.css, the dashboards')
    into out/assets."""
    (out / "assets").mkdir(exist_ok=True)
    for name in names:
        src = resources.files("sketchmine.present") / "report_assets" / name
        (out / "assets" / name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")


def montage_units(run: Run, name: str, limit: int) -> list[int]:
    """The units that get a montage: those with stored patches, the most important first when
    the layer has a stored importance, else in unit order; at most `limit`."""
    done = run.patches_done(name)
    if limit < 1 or done == 0:
        return []
    order = [int(u) for u in run.unit_importance(name)["unit"]] if run.has_importance(name) else list(range(done))
    return [u for u in order if u < done][:limit]


def _strips(run: Run, name: str, lid: str) -> Callable[[int], dict[str, Any]]:
    """The card's patch and signal (deconvnet's: deconvolution) strips of a unit (report_data writes
    them), if any, by unit: what they depend on is read once per layer (a wide layer has thousands
    of units)."""
    done = run.patches_done(name)
    if not done:
        return lambda u: {}
    h, w = (run.layer_attrs(name).get(schema.VISUALIZED) or {}).get("patch_size") or run.array_shape(name, "patches")[2:4]
    scale = min(1.0, THUMB / h)
    size = {"h": max(1, round(h * scale)), "w": max(1, round(w * scale))}
    # how the layer's --method names the signal strips; the example sets' share it (`pictures_current`)
    signal = {"signal": signal_words(run, name)} if run.has_array(name, "deconv") else {}

    def strip(u: int) -> dict[str, Any]:
        if u >= done:
            return signal
        return {**size, "patches": f"../img/{lid}/{u}_p.png", **signal,
                **({"deconv": f"../img/{lid}/{u}_d.png"} if signal else {})}
    return strip


def montage_plan(run: Run, names: list[str], montages: int = MONTAGES) -> dict[str, list[int]]:
    """The units of each layer that get a montage (`montage_units`), read before any is drawn:
    their number decides where the report draws them (slide_workers.py)."""
    return {name: montage_units(run, name, montages) for name in names}


def unit_pages(run: Run, name: str, lid: str, out: Path, png: PngWriter, montaged: list[int],
               slides: SlideWriter) -> list[int]:
    """Write the layer's dashboard page, its data scripts, (through `slides`) the montages of the
    units `montaged` and (through `png`) its example strips; returns the units with a montage
    (the layer page lists them: its cards link to them)."""
    copy_assets(out)
    summary = LayerSummary(run, name)
    extra = example_pictures(run, name)
    per_bin = int(np.asarray(summary.bins).shape[2]) if summary.bins is not None else 0
    shown = set(montaged)
    strip = _strips(run, name, lid)
    data_dir = out / "dash" / lid
    data_dir.mkdir(parents=True, exist_ok=True)
    c = summary.units
    pages = (c + PAGE_SIZE - 1) // PAGE_SIZE
    unreadable = len(run.attrs.get("bad_images") or [])  # counted in "images", in no statistic
    classes = class_units(run, name)
    where = Path(run.path).resolve()  # the report is read from its own folder
    for p in range(pages):
        units = []
        for u in range(p * PAGE_SIZE, min((p + 1) * PAGE_SIZE, c)):
            d = summary.unit(u, infinities=True, infinite_bins=False)  # "inf" shown, unbounded bins skipped
            if u in shown:
                slides.submit(slide_content(run, name, u, d), out / "montage" / lid / f"{u}.png", f"{name} unit {u}")
                d["montage"] = f"../montage/{lid}/{u}.png"
            if cut_examples(d, BIN_EXAMPLES):
                d["all_examples"] = command("sketchmine", "unit", where, name, u, "--json")
            d.update(strip(u))
            d.update(example_strips(extra, lid, u, out, png, per_bin))
            for which, group in schema.PICTURE_GROUPS.items():  # examples shown as text: say how to add pictures
                if d.get(which) and group not in d:
                    # the command as code (dom.withCode): copied whole, its words isolated one by one
                    d["missing"][group] = (f'`{command("sketchmine", "visualize", where, "--layers", layer_arg([name]), "--examples", "all")}`'
                                           " stores them")
            d["card"] = f"../layers/{lid}.html#page={u // PAGE_SIZE + 1}&unit={u}"
            if classes is not None:
                d["class"] = classes[u]
            d["unreadable"] = unreadable
            units.append(d)
        shared, units = compact(units)
        (data_dir / f"unit_{p:04d}.js").write_text(f"sketchmineUnit.shared({p}, {shared_js(shared)});\n"
                                                   f"sketchmineUnit.page({p}, {to_js(units)});\n")
    (out / "units").mkdir(exist_ok=True)
    (out / "units" / f"{lid}.html").write_text(_page(run, name, lid, c, pages, len(shown)), encoding="utf-8")
    return sorted(shown)


def example_pictures(run: Run, name: str) -> dict[str, dict[str, Any]]:
    """{"bottom"/"bins": {"patches": (C, n, h, w, ch) uint8, "deconv": … or absent}} for the
    example sets the layer has pictures of (read one array at a time: they differ in shape
    from the groups' boxes). Sets made with other settings than the layer's top-k pictures (left
    by a `visualize --redo` with another method or patch size) are left out."""
    out: dict[str, dict[str, Any]] = {}
    visualized = run.layer_attrs(name).get(schema.VISUALIZED)
    for which, group in PICTURE_GROUPS.items():
        found = run.layer_result(name, group, ("patches",))
        if found is None or not pictures_current(found[1], visualized):
            continue
        out[which] = {"patches": found[0]["patches"]}
        deconv = run.layer_result(name, group, ("deconv",))
        if deconv is not None:
            out[which]["deconv"] = deconv[0]["deconv"]
    return out


def example_strips(extra: dict[str, dict[str, Any]], lid: str, u: int, out: Path, png: PngWriter,
                   per_bin: int = 0) -> dict[str, Any]:
    """Write unit u's strips of its bottom-k and bin example pictures (img/<id>/<u>_{b,q}{p,d}.png);
    the dashboard's references to them ({"bottom_pictures": {...}, "bin_pictures": {...}})."""
    refs: dict[str, Any] = {}
    for which, arrays in extra.items():
        tag = "b" if which == "bottom" else "q"
        patches = arrays["patches"]
        if u >= len(patches) or not patches.shape[1]:
            continue
        h, w = patches.shape[2:4]
        scale = min(1.0, THUMB / h)
        ref = {"h": max(1, round(h * scale)), "w": max(1, round(w * scale)), "patches": f"../img/{lid}/{u}_{tag}p.png"}
        (out / "img" / lid).mkdir(parents=True, exist_ok=True)
        png.save(strip(patches[u]), out / "img" / lid / f"{u}_{tag}p.png")
        if "deconv" in arrays:
            png.save(strip(arrays["deconv"][u]), out / "img" / lid / f"{u}_{tag}d.png")
            ref["deconv"] = f"../img/{lid}/{u}_{tag}d.png"
        if which == "bins":
            if not per_bin:
                continue  # pictures without the examples they show
            ref["m"] = per_bin
        refs[schema.PICTURE_GROUPS[which]] = ref  # bottom_pictures, bin_pictures: what the dashboard reads
    return refs


def cut_examples(d: dict[str, Any], m: int) -> bool:
    """At most m examples per bin in the page data (the bins hold up to 8 each: 17 bins × 8
    images, paths included, would make a wide layer's dashboards tens of megabytes); whether
    any bin was cut."""
    cut = False
    for b in d.get("bins") or []:
        if len(b["examples"]) > m:
            b["examples"], b["more"] = b["examples"][:m], len(b["examples"]) - m
            cut = True
    return cut


def _page(run: Run, name: str, lid: str, units: int, pages: int, slides: int) -> str:
    partial = "" if run.complete else f'<p class="partial">PARTIAL run: {run.images_done} images mined so far</p>'
    note = (f"slide montages for {slides} unit{'s' if slides != 1 else ''} of this layer (the most important first, "
            "where importance is stored); draw any other with <code>sketchmine.plots.unit_montage(run, layer, "
            "unit)</code>") if slides else ""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{e(isolated(name))} units — {e(run_title(run))}</title>"
            '<link rel="stylesheet" href="../assets/report.css"><link rel="stylesheet" href="../assets/unit.css">'
            f'</head>\n<body data-layer="{e(lid)}" data-pages="{pages}" data-units="{units}"'
            f'{LOG_ODDS_ATTR if log_odds_html(name, run.layer_attrs(name)) else ""}>\n'
            f'<p><a href="../index.html">← all layers</a> · <a href="../layers/{e(lid)}.html">{named(name)} cards</a></p>'
            f"<h1>{named(name)}: unit <span id=\"unit-number\"></span></h1>{partial}{precision_html(run)}"
            '<nav class="pager"><button id="prev-unit">◀ previous unit</button>'
            f'<label>unit <input id="unit-input" type="number" min="0" max="{units - 1}" value="0"></label>'
            '<button id="next-unit">next unit ▶</button>'
            '<span id="unit-note" class="note" role="status" hidden></span></nav>'
            f'<div id="dash"></div><p class="note">{note}</p>'
            '<script src="../assets/dom.js"></script><script src="../assets/unit.js"></script>\n</body></html>\n')
