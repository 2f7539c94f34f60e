"""The HTML report: one static folder that opens offline in any browser.

    out/index.html               run, accuracy table, summary plot, unbiased preferences, layer list
    out/layers/<id>.html         one page per layer: histogram, preferences, unit cards (paged)
    out/data/<id>/page_NNNN.js   the cards of PAGE_SIZE units, loaded when shown (a script, not
                                 fetch(), so it works from file://)
    out/img/<id>/<unit>_p.png    the unit's k patches (and _d: their --method's signal) as one strip
    out/assets/                  report.css, dom.js, report.js (no CDN)

The report reads the run store only (a `Run`): it runs no model and opens no dataset, so it can be written where
neither is at hand. Pictures and activation over time come from `sketchmine visualize`. This module renders the pages;
report_data writes the cards' data, report_folder owns the folder and its atomic replacement. Every dataset string is
escaped here (html.escape) or set with textContent in report.js; a name among our words is isolated (report_data).
"""
from __future__ import annotations

import html
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sketchmine.errors import SketchmineError, SketchmineFailure, unless_damaged
from sketchmine.names import printable
from sketchmine.progress import FILES
from sketchmine.present import plots
from sketchmine.present.report_data import (LOG_ODDS_ATTR, PAGE_SIZE, PngWriter, classes_cell, importance_ranks, isolated,
                                             isolated_path, layer_data, layer_ids, log_odds_html, named, precision_html,
                                             run_title, size_html, with_code)
from sketchmine.present.report_folder import (MARKER, PARTIAL, TMP, InPlaceSwapError, check_report_dir, remove_stale,
                                              remove_staging, report_marker, reported_run, same_folder,
                                              swap_in)
from sketchmine.present.report_unit import MONTAGES, copy_assets, montage_plan, unit_pages
from sketchmine.present.slide_workers import SlideWriter
from sketchmine.present.summary_grid import Row, grid, grid_html
from sketchmine.present.report_probe import index_section, write_probe_files
from sketchmine.results import analysis, importance_store
from sketchmine.results.provenance import dataset_words, preprocessing_words, weights_words
from sketchmine.results.run import Run, open_run
from sketchmine.results.numbers import number, percents, rate, shape_text
from sketchmine.results.summaries import NO_LABELS, no_classes, one_class_note, size_note

__all__ = ["PAGE_SIZE", "MARKER", "write_report", "check_report_dir", "layer_ids"]

e = html.escape


def _pct(a: float) -> str:
    """A cell of an accuracy column, as `percents` writes one ("100.00" beside "97.50")."""
    return percents([a], 2)[0]


def _page(title: str, body: str, depth: int = 0, attrs: str = "") -> str:
    up = "../" * depth
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<link rel="stylesheet" href="{up}assets/report.css"></head>\n<body{attrs}>\n{body}\n</body></html>\n')


def _write_page(path: Path, text: str) -> None:
    """A page as UTF-8. The run's path as a command line gave it holds lone surrogates under a
    non-UTF-8 locale (the bytes it could not decode), which UTF-8 cannot encode: `printable`
    gives the name back (its bytes were UTF-8) or shows the bytes as \\xNN."""
    path.write_text(printable(text), encoding="utf-8")


def _table(headers: list[str], rows: list[list[str]], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    """Rows of already-escaped cells."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


SUMMARY_N = 5
"""Classes per side in the summary (the seed's plot shows five)."""


def _importance_section(run: Run, name: str, lid: str) -> str:
    """The sortable per-unit importance table (sorted by report.js) and the plot."""
    df = run.unit_importance(name)
    a = df.attrs
    head = "".join(f'<th data-col="{i}" data-type="{"num"}" title="click to sort">{e(importance_store.LABELS[col])}</th>'
                   for i, col in enumerate(("unit", *importance_store.COLUMNS)))
    rows = []
    shown = importance_store.written(df)
    for i, (_, r) in enumerate(df.iterrows()):
        u = int(r["unit"])
        cells = [f'<td class="num" data-v="{u}"><a href="#page={u // PAGE_SIZE + 1}&amp;unit={u}">{u}</a></td>']
        for col in importance_store.COLUMNS:
            v = float(r[col])
            cells.append(f'<td class="num" data-v="{"" if np.isnan(v) else repr(v)}">{e(shown[col][i])}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    info = []
    if a.get("images") is not None:
        info.append(f"{int(a['images'])} images")
    if a.get("base_accuracy") is not None:
        info.append(f"accuracy {rate(float(a['base_accuracy']))} with no unit ablated")
    info += [f"method {a['method']}"] if a.get("method") else []
    return ("<h2>Which units matter for the label</h2>"
            f"<p>Each unit zeroed in turn; drop of the correct class's probability and of accuracy "
            f"({e('; '.join(info))}). Click a column header to sort; a unit number opens its card's page.</p>"
            f'<img class="plot" src="../importance/{e(lid)}.png" alt="most important units">'
            # rows arrive most important first (unit_importance's order): the table says so (report.js marks it)
            f'<div class="scroll"><table id="importance" class="sortable" data-sorted="1-"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _layer_page(run: Run, name: str, lid: str, pages: int, note: str, stats: bool,
                slides: list[int] | None = None) -> str:
    attrs = run.layer_attrs(name)
    parts = [f'<p><a href="../index.html">← all layers</a></p><h1>{e(name)}</h1>',
             f"<p>{e(str(attrs.get('kind', '')))}, output {e(shape_text(attrs))}, top-{run.k} images per unit</p>"]
    if precision := precision_html(run):  # an autocast run: above the layer's numbers
        parts.append(precision)
    if not run.complete:
        parts.append(f'<p class="partial">PARTIAL run: {run.images_done} images mined so far</p>')
    try:
        ranked = run.top_classes(name, len(run.class_names))
        unequal = size_note(run.class_sizes()) is not None  # raw counts favour larger classes: sizes, fair count beside
        rows = [[e(str(c)), str(int(r["count"])), _pct(r["accuracy"])]
                + ([str(int(r["images"])), number(r["per_image"])] if unequal else []) for c, r in ranked.iterrows()]
        left = int(ranked.attrs.get("unlabelled", 0))
        parts.append(f'<h2>Classes among the top-{run.k} images</h2>'
                     f'<img class="plot" src="../hist/{lid}.png" alt="class histogram">'
                     + (f'<p class="note" id="unlabelled-entries">{left} top-k entr{"y is an image" if left == 1 else "ies are images"} '
                        "without a label: left out of these counts</p>" if left else "") + size_html(run)
                     + _table(["class", "count", "accuracy %"] + (["images", "count per image"] if unequal else []),
                              rows, {1, 2, 3, 4}))
    except SketchmineError as exc:
        unless_damaged(exc)
        parts.append(f'<p class="note">{e(str(exc))}</p>')
    if stats and (one := one_class_note(run)):  # not "mean over 0 units" above a row of "-" and 0
        parts.append(f"<h2>Class preference over all images</h2><p>{e(one)}.</p>")
    elif stats:
        pref = run.class_preference(name)
        si = run.selectivity(name)
        rows = [[e(str(c)), number(r["preference"]), str(int(r["units_preferring"])), _pct(r["accuracy"])]
                for c, r in pref.iterrows()]
        parts.append("<h2>Class preference over all images</h2>"
                     f"<p>mean over {pref.attrs['units']} units of the unit's z-scored class means of its image "
                     f"maxima; {e(_selectivity_words(run, si))}</p>"
                     + _table(["class", "preference", "units preferring", "accuracy %"], rows, {1, 2, 3}))
    if attrs.get("position") == "time" or attrs.get("time_steps"):
        frame = attrs.get("frame") or []  # a conv's grid, a Conv1d's line, a per-frame linear's value
        per = "a map" if len(frame) == 2 else f"a line of {frame[0]} values" if len(frame) == 1 else "one value"
        what = (f"it reads each of the drawing's {attrs['time_steps']} frames, {per} per frame" if attrs.get("time_steps")
                else "its state after each step of the drawing")
        how = f' <small>(read as {e(str(attrs["tapped"]))})</small>' if attrs.get("tapped") else ""
        parts.append(f"<p>A unit of this layer has a value at every step ({e(what)}): each top-k entry is an (image, "
                     "step) pair; cards show the drawing at the step where the unit peaked (t counted from 1) and "
                     f"the unit's activation over all steps of that drawing.{how}</p>")
    parts.append(log_odds_html(name, attrs))  # "" for a layer ranked by its values
    if run.has_importance(name):
        parts.append(_importance_section(run, name, lid))
    parts.append("<h2>Units</h2>")
    parts.append(f'<p>Each unit has a dashboard (distribution, examples at every level, classes it prefers and '
                 f'pushes, units that move with it): <a id="dashboards" href="../units/{e(lid)}.html#unit=0">unit 0'
                 "</a>, or the link on each card.</p>")
    if note:
        parts.append(f'<p class="note" id="pictures-note">{with_code(note)}</p>')
    parts.append('<nav class="pager"><button id="prev">◀ previous</button><span id="page-label"></span>'
                 '<button id="next">next ▶</button></nav><div id="cards"></div>'
                 '<script src="../assets/dom.js"></script><script src="../assets/report.js"></script>')
    return _page(f"{isolated(name)} — {run_title(run)}", "\n".join(parts), 1,
                 f' data-layer="{e(lid)}" data-pages="{pages}" data-page-size="{PAGE_SIZE}"'
                 f' data-units="{run.layer_shape(name)[0]}" data-k="{run.k}"{LOG_ODDS_ATTR if log_odds_html(name, attrs) else ""}'
                 f' data-montages="{",".join(map(str, slides or []))}"')


def _selectivity_words(run: Run, si: Any) -> str:
    """The layer's median class selectivity, or why no unit has one (not "median nan over 0")."""
    name = "class selectivity index (Morcos et al. 2018)"
    if si.notna().any():
        return f"{name}: median {float(np.nanmedian(si)):.3f} over {int(si.notna().sum())} units"
    labels = run.labels[:run.images_done]
    classes = len(np.unique(labels[labels >= 0]))
    if classes < 2:
        return (f"no {name}: it sets a unit's best class against the others, and this run has images of "
                f"{'one class' if classes else 'no class'} only")
    return (f"no unit has a {name}: it needs a best-class mean above 0 and the other classes' mean at least 0 "
            "(taps before a ReLU can be negative), or the unit's maps were all NaN")


def images_words(run: Run) -> str:
    """"N images", with the unreadable ones `mine --skip-bad-images` skipped (counted in N, in no
    table) and the unlabelled ones (in no class table) said, so the counts below add up."""
    bad = len(run.attrs.get("bad_images") or [])
    text = f"{run.images_done} images"
    if bad:
        text += f" ({bad} unreadable, skipped: in no table or statistic)"
    unlabelled = int((run.labels[:run.images_done] < 0).sum())
    if unlabelled and run.has_labels():
        text += f"; {unlabelled} without a label (in no class table or accuracy)"
    return text


def _accuracy_section(run: Run) -> str:
    """The per-class accuracy table, or why there is none: a run without labels gets one line,
    not a table of classes with no images."""
    if not run.has_labels():
        return (f'<h2>Accuracy</h2><p class="note" id="no-labels">{e(no_classes(run, NO_LABELS))}, so there is no '
                "accuracy and no class table: the layers' units and their pictures are below</p>")
    try:
        acc = run.class_accuracy()
    except SketchmineError as exc:
        unless_damaged(exc)
        return f'<p class="note">{e(str(exc))}</p>'
    overall = run.accuracy()
    shown = percents(acc["accuracy"].tolist(), 2)  # the column in one count of decimals
    rows = [[e(str(c)), pct, str(int(r["count"]))] for (c, r), pct in zip(acc.iterrows(), shown)]
    over = f" over {int(acc['count'].sum())} labelled, readable images"
    return (f"<h2>Accuracy{'' if overall is None else f' {rate(overall)}'}</h2><p>{over.strip()}</p>"
            + _table(["class", "accuracy %", "images"], rows, {1, 2}))


def _accuracy_correlation(run: Run) -> str:
    """Per layer, Spearman ρ of class accuracy with the class preference by top-k count (per image
    of the class) and over all images (`Run.accuracy_correlation`); "" without predictions."""
    corr = analysis.accuracy_correlation(run)
    if corr is None:  # no predictions (--no-logits): no accuracy to correlate with
        return ""
    if one := one_class_note(run):  # a table of "-" over "0 classes" said nothing of why
        return f"<h2>Class preference vs class accuracy</h2><p>{e(one)}.</p>"
    rows = [[e(l), e(str(r["kind"])), *(number(r[f"{w}_{m}"], f) for m in ("topk", "preference")
                                        for w, f in (("spearman", ".3f"), ("p_value", ".3g"))), str(r["classes"])]
            for l, r in corr.iterrows()]
    return ('<h2>Class preference vs class accuracy</h2><p>Spearman correlation, per layer, between each class\'s '
            f"accuracy and the layer's preference for it: by its count among the top-{run.k} images per image of "
            "the class, and over all images (the layer's class preference, z-scored class means). \"-\": no ranking (every class ties) or no class statistics.</p>"
            + _table(["layer", "kind", "ρ top-k", "p", "ρ all images", "p", "classes"], rows, {2, 3, 4, 5, 6}))


def _index(run: Run, ids: dict[str, str], stats: bool, seconds: float, probe: str, summary: list[Row] | None) -> str:
    a = run.attrs
    ds = a.get("dataset") or {}
    labelled = run.has_labels()
    parts = [f"<h1>sketchmine report: {named(a.get('model'))}</h1>",
             f"<p>{e(dataset_words(ds, isolated, isolated_path))}; {e(images_words(run))}; "
             f"k = {run.k}; run {e(isolated_path(run.path))}</p>",
             f'<p id="provenance">{e(weights_words(a, isolated_path))}; {e(preprocessing_words(a.get("preprocessing")))}</p>']
    if not run.complete:
        parts.append(f'<p class="partial">PARTIAL run: {run.images_done} of {ds.get("size", "?")} images mined; '
                     "every table covers those only</p>")
    if precision := precision_html(run):  # an autocast run: directly above the accuracy it qualifies
        parts.append(precision)
    parts.append(_accuracy_section(run))
    if run.path and summary is not None and ids:  # a table, legible at any width; the seed's plot of it linked
        parts.append(f"<h2>Summary</h2><p>Per layer, the {SUMMARY_N} classes most and least frequent among the "
                     f"top-{run.k} images of its units, each with its accuracy and count, coloured by the accuracy. "
                     'As a picture: <a href="summary.png">PNG</a>, <a href="summary.svg">SVG</a>.</p>'
                     + grid_html(run, summary, SUMMARY_N))
    if stats:
        corr = run.ink_correlation()
        ink = run.ink_density()
        rows = [[e(l), e(str(r["kind"])), number(r["spearman"]), number(r["p_value"], ".3g"), str(r["classes"])]
                for l, r in corr.iterrows()]
        one = one_class_note(run)  # no ρ to show: said instead of a table of "-" over "0 classes"
        parts.append("<h2>Class preference vs ink density</h2><p>Spearman correlation, per layer, between the "
                     "layer's class preference over all images and the mean ink density of each class's images "
                     '(pixels differing from the image background by more than half the range).</p>'
                     '<img class="plot" src="ink.png" alt="ink correlation">'
                     + (f"<p>{e(one)}.</p>" if one else _table(["layer", "kind", "Spearman ρ", "p", "classes"], rows,
                                                                {2, 3, 4}))
                     + _table(["class", "ink density"], [[e(str(c)), number(v)] for c, v in ink.items()], {1}))
    parts.append(_accuracy_correlation(run) if labelled else "")
    rows, unlabelled = [], False
    for name, lid in ids.items():
        attrs = run.layer_attrs(name)
        row = [f'<a href="layers/{e(lid)}.html">{e(name)}</a>', e(str(attrs.get("kind", ""))),
               e(shape_text(attrs))]
        if labelled:
            try:
                top = run.top_classes(name, 5)
                left = int(top.attrs.get("unlabelled", 0))
                unlabelled |= left > 0
                row += [classes_cell(top), str(left)]
            except SketchmineError as exc:
                unless_damaged(exc)
                row += ["-", "-"]
        rows.append(row)
    heads = ["layer", "kind", "shape"] + ([f"top 5 classes (count among the top-{run.k})", "unlabelled top-k entries"]
                                         if labelled else [])
    if labelled and not unlabelled:  # the column only where some entry has no label
        heads, rows = heads[:-1], [r[:-1] for r in rows]
    parts.append("<h2>Layers</h2>" + _table(heads, rows, {4}) + (size_html(run) if labelled and ids else ""))
    parts.append(probe)
    parts.append(f'<p class="note">written by sketchmine in {seconds:.1f} s</p>')
    return _page(f"{isolated(a.get('model'))} — {run_title(run)}", "\n".join(parts))


def write_report(run: Run | str | os.PathLike, out: str | os.PathLike, images: bool = True,
                 dataset: None = None, probe: Mapping[str, bytes] | str | None = None,
                 montages: int = MONTAGES) -> Path:
    """Write the report folder; returns the path of index.html.

    `out` is a folder the report owns: new, empty, or holding an earlier report (the marker file
    `.sketchmine-report` lists what it wrote). Anything else is refused before a byte is written: a non-empty folder
    without the marker, an earlier report beside files it did not write, a file, a path inside (or equal to) a run,
    a folder holding the run it reads. The report is built in a temporary sibling folder and swapped in at the end,
    so an interrupted or failed report (Ctrl-C, full disk) leaves the previous one as it was.

    Only the store is read: patches, deconvolutions and (for layers whose position is time) the drawing at each
    entry's step and the activation over time are those `sketchmine visualize` stored; a layer without them says how
    to add them. Layers with stored unit importance get a sortable table and plot.
    images: False leaves the cards' picture slots out for layers without patches.
    dataset: refused unless None — the report reads only the store; pictures come from sketchmine.visualize(run, data=...).
    probe: the live probe's files (`sketchmine.passes.probe.build_probe(run)`, which needs the
    model), or why there is none (a str, shown on the index page; None: written without the model).
    montages: the most slide montages (PNG) written per layer, for units with patches (the most important first where
    importance is stored; drawn in worker processes where there are many); 0 writes none. Every unit gets a
    dashboard page (units/<layer>.html#unit=U) whatever this is."""
    t0 = time.perf_counter()
    if dataset is not None:
        raise SketchmineError("write_report reads the run store only and opens no dataset: store the pictures "
                              "and activation over time with sketchmine.visualize(run, data=dataset) (CLI: "
                              "`sketchmine visualize RUN --layers L`), then write the report without dataset=")
    if not isinstance(run, Run) or not Path(run.path).is_absolute():
        # the report is read from its own folder: every command and path it names is the run's absolute one
        run = open_run(Path(run if not isinstance(run, Run) else run.path).resolve())
    shown = Path(out)
    target = check_report_dir(shown, run.path)
    here = str(Path(run.path).resolve())
    before = reported_run(target)
    tmp, made = None, -1
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        # a name of its own each call: an earlier call's may hold a previous report kept (swap_in);
        # the pid last, for `remove_stale`
        tmp = target.parent / f".{target.name}{TMP}{time.time_ns()}-{os.getpid()}"
        tmp.mkdir()
        made = tmp.stat().st_ino  # after a swap the path may name the previous report, kept (swap_in)
        (tmp / MARKER).write_text(PARTIAL)
        with run.store.pinned():  # one run's report: refused where another run takes its place meanwhile
            _build(run, tmp, images, t0, probe, montages)
        (tmp / MARKER).write_text(report_marker(here, tmp))
        swap_in(tmp, target, shown)
        tmp = None
        if before is not None and str(Path(before).resolve()) != here:  # allowed (a report's folder), and said
            logging.getLogger("sketchmine").log(FILES, f"report folder {shown} held the report of run {before}; "
                                                f"it now holds the report of {run.path}")  # under -q too
    except OSError as exc:
        where = exc.filename or target
        if made == -1 and tmp is not None:  # the sibling it is built in (the folder given may be writable itself)
            where = f"{where}: a report is built in a folder beside {shown}, so {target.parent} must be writable too"
        kept = ("the report folder is incomplete (the previous report there is already, at least partly, removed): run "
                "`sketchmine report` again" if isinstance(exc, InPlaceSwapError) else
                "the previous report there (if any) is unchanged")
        raise SketchmineFailure(f"cannot write the report to {shown}: {exc.strerror or exc} ({where}); {kept}") from None
    finally:
        if tmp is not None and same_folder(tmp, made):  # interrupted or failed: only what this call created
            remove_staging(tmp)
    return shown / "index.html"


def _build(run: Run, out: Path, images: bool, t0: float, probe: Mapping[str, bytes] | str | None = None,
           montages: int = MONTAGES) -> None:
    copy_assets(out, ("report.css", "dom.js", "report.js"))
    ids = layer_ids(run)
    labelled = run.has_labels()  # some image has a label (others may have none: -1)
    stats = analysis.has_class_stats(run)
    summary = grid(run, SUMMARY_N) if labelled else None  # read once: the index's tables and the plot draw it
    if summary is not None:
        plots.summary_plot(run, out / "summary", SUMMARY_N, rows=summary)
    if stats:
        plots.ink_plot(run, out / "ink", formats=("png",))  # the page shows the PNG and links no SVG of it
    plan = montage_plan(run, list(ids), montages)
    # the strips written on threads, the slides in processes: every one on disk when the block ends
    with PngWriter() as png, SlideWriter(sum(map(len, plan.values()))) as drawn:
        for name, lid in ids.items():
            if run.has_importance(name):
                plots.importance_plot(run, name, out / "importance" / lid)
            if labelled:
                plots.histogram_plot(run, name, out / "hist" / lid, formats=("png",))
            slides = unit_pages(run, name, lid, out, png, plan[name], drawn)
            pages, note = layer_data(run, name, lid, out, importance_ranks(run, name), png, images)
            (out / "layers").mkdir(exist_ok=True)
            _write_page(out / "layers" / f"{lid}.html", _layer_page(run, name, lid, pages, note, stats, slides))
    if isinstance(probe, Mapping):
        write_probe_files(out, probe, ids, PAGE_SIZE, run_title(run))
    _write_page(out / "index.html", _index(run, ids, stats, time.perf_counter() - t0, index_section(probe), summary))

