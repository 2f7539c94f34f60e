"""Console output with rich: the mining progress bar and the closing tables.

Kept out of the miner: the miner reports through the `Progress` protocol only.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sketchmine.errors import SketchmineError, unless_damaged
from sketchmine.present.fitting import FittingTable
from sketchmine.results import importance_store
from sketchmine.results.numbers import number, percent, percents, rate, shape_text
from sketchmine.results.optimized import how_made
from sketchmine.results.provenance import provenance_lines
from sketchmine.results.precision import batch_note, device_note, precision_note
from sketchmine.results.run import Run
from sketchmine.results.summaries import (NO_LABELS, class_sides, no_classes, no_images_words, not_yet, one_class_note,
                                          sides, sides_note, size_note, ties_words)
from sketchmine.store import schema

if TYPE_CHECKING:
    from sketchmine.present.progress_bar import RichProgress

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def safe(text: object, markup: bool = True) -> str:
    """`text` fit for a terminal: every C0/C1 control character (ESC, CR, BEL, tab, newline, …)
    and bidi/line-separator format character shown as a `\\x1b`-style escape, so no file or
    class name can move the cursor, clear the screen or reorder a line; with `markup`, rich
    markup (`[bold]`) escaped too, for text handed to a rich Console or Table."""
    def esc(m: re.Match) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    out = _CONTROL.sub(esc, str(text))
    return escape(out) if markup else out


def name_width(names: Any, most: int = 28) -> int:
    """A layer column's least width: its longest name, up to `most` cells (rich squeezed the layer
    column first, and "featur…" could not tell the rows apart)."""
    return min(most, max((len(safe(n, markup=False)) for n in names), default=0))


TITLE_WIDTH = 60
"""Titles up to this many cells widen their table to fit on one line; a longer one is folded
as rich folds it (widening its table to the title stretched it over a wide terminal)."""


def titled(title: str, **kwargs: Any) -> Table:
    """A rich Table at least as wide as its title (rich markup), when the title is short: rich
    folds a title to the table's width, and a table of two narrow columns wrote its title in
    three lines."""
    width = max(line.cell_len for line in Text.from_markup(title).split("\n"))  # a title of lines: its longest
    return FittingTable(title=title, **{**kwargs, "min_width": max(kwargs.get("min_width") or 0,
                                                                   width if width <= TITLE_WIDTH else 0)})


def layers_table(run: Run) -> Table:
    """One row per mined layer: shape, units, best activation, NaNs seen. The title (the
    header of `summary` and `mine`) names an autocast run's precision; the caption says what it means."""
    state = "complete" if run.complete else f"PARTIAL: {run.images_done} images"
    note = precision_note(run)
    caption = "\n".join(safe(n) for n in (note, batch_note(run), device_note(run)) if n) or None
    table = titled(f"{safe(run.path)}  ({state}" + (f"; {safe(run.precision)})" if note else ")"),
                   caption=caption, caption_justify="left")
    for col in ("layer", "kind", "shape", "units", "max activation", "NaN values"):
        table.add_column(col, justify="right" if col in ("units", "max activation", "NaN values") else "left",
                         overflow="fold" if col == "layer" else "ellipsis")
    for name in run.layers:
        attrs = run.layer_attrs(name)
        peak = run.peak(name)
        best = float("nan") if peak is None else peak
        table.add_row(safe(name), safe(attrs.get("kind", "")), safe(shape_text(attrs)), str(attrs["shape"][0]), f"{best:.4g}",
                      str(run.nan_total(name)))
    return table


def accuracy_table(run: Run) -> Table:
    """Per class: accuracy and image count. A run without predictions (--no-logits) still lists
    its classes and their images, accuracy "-", and says why in a note (stderr), as summary --json
    and the report do, instead of failing the whole summary."""
    try:
        acc = run.class_accuracy()
    except SketchmineError as exc:
        unless_damaged(exc)
        logging.getLogger("sketchmine").warning(f"no per-class accuracy: {exc}")
        labels = run.labels[:run.images_done]
        counts = np.bincount(labels[labels >= 0], minlength=len(run.class_names))[:len(run.class_names)]
        acc = pd.DataFrame({"accuracy": np.nan, "count": counts}, index=pd.Index(run.class_names, name="class"))
    overall = run.accuracy()
    table = titled(f"per-class accuracy (overall {rate(overall)})" if overall is not None else "per-class accuracy")
    table.add_column("class")
    table.add_column("accuracy %", justify="right")
    table.add_column("images", justify="right")
    shown = percents(acc["accuracy"].tolist())  # one column, one count of decimals: "100.00" beside "97.50"
    for (name, row), pct in zip(acc.iterrows(), shown):
        table.add_row(safe(name), pct, str(int(row["count"])))
    return table


def _classes_cell(df: pd.DataFrame, per_image: bool = False) -> str:
    """A top or bottom list as "cls count (accuracy %)", with the count per image of the class
    when `per_image` (classes of different sizes), then the classes tied at its cut that it
    leaves out ("+ 3 more tied at 15"); a layer whose classes all tie says so instead."""
    ties = ties_words(df)
    if df.attrs.get("all_tied"):
        return ties

    def extra(r: pd.Series) -> str:  # a list, not a column: "(100)" keeps it short
        shown = ([] if np.isnan(r["accuracy"]) else [percent(r["accuracy"], 2)]) + ([f"{r['per_image']:.2f}/img"] if per_image else [])
        return f" ({'; '.join(shown)})" if shown else ""

    listed = ", ".join(f"{safe(cls)} {int(r['count'])}{extra(r)}" for cls, r in df.iterrows())
    return f"{listed} {ties}" if ties else listed


def preferences_table(run: Run, n: int = 5) -> Table:
    """The seed's summary: per layer the n most and least frequent classes among top-k images
    (raw counts; the caption says when the classes differ in size, which favours the larger)."""
    note = size_note(run.class_sizes()) if run.layers else None
    shown = "count, class accuracy %" + ("; count per image of the class" if note else "")
    table = titled(f"classes among the top-{run.k} images of every unit ({shown})", caption_justify="left")
    table.add_column("layer", min_width=name_width(run.layers))
    table.add_column(f"top {n}")
    table.add_column(f"bottom {n}")
    unlabelled = []
    first, last, few = class_sides(run, n)  # the classes ranked: those with images, as the report's
    for name in run.layers:
        top = run.top_classes(name, max(first, 1))
        table.add_row(safe(name), _classes_cell(top, note is not None),
                      _classes_cell(run.bottom_classes(name, last), note is not None) if last else "-")
        if top.attrs.get("unlabelled"):
            unlabelled.append(f"{safe(name)} {top.attrs['unlabelled']}")
    notes = [safe(note)] if note else []
    notes += [safe(x) for x in few]
    if unlabelled:  # a dataset with some images labelled -1: their entries count for no class
        notes.append("top-k entries of unlabelled images, left out of the counts: " + ", ".join(unlabelled))
    table.caption = "\n".join(notes) or None
    return table


def no_images_note(classes: list[str]) -> str:
    """The classes a view leaves out because no image of theirs was mined."""
    return no_images_words([safe(c) for c in classes])


def unbiased_table(run: Run, n: int = 5) -> Group | None:
    """Per layer the n most and least preferred classes over ALL images (z-scored class means);
    then, a table of its own (one of eight columns cut the class names and numbers at 80
    columns), the median class-selectivity index over the units that have one (the cell says
    how many: a layer read before its ReLU leaves most out), the correlation with class ink
    density and with class accuracy (`Run.accuracy_correlation`, by top-k count per image and by
    this preference); None when the run has no class statistics (no labels, or mined before them)."""
    from sketchmine.results import analysis

    if not analysis.has_class_stats(run):
        return None
    corr = analysis.ink_correlation(run)
    acc = analysis.accuracy_correlation(run)  # None without predictions: the accuracy columns say "-"
    partial = "" if run.complete else f"PARTIAL ({run.images_done} images): "
    prefs = titled(f"{partial}class preference over all images (mean z-scored class mean)", caption_justify="left")
    stats = titled(f"{partial}selectivity, and Spearman ρ with class ink density and with class accuracy (by top-k "
                   "count per image and by this preference)", caption_justify="left")
    for col in ("layer", f"top {n}", f"bottom {n}"):
        prefs.add_column(col, min_width=name_width(run.layers) if col == "layer" else None)
    for col in ("layer", "selectivity (median)", "ρ ink", "p", "ρ acc top-k", "ρ acc all"):
        stats.add_column(col, justify="left" if col == "layer" else "right",
                         min_width=name_width(run.layers) if col == "layer" else None)
    no_images: set[int] = set()  # class positions: a name may repeat
    for name in run.layers:
        pref = analysis.class_preference(run, name)
        no_images.update(pref.attrs.get("no_images_at", []))
        si = analysis.selectivity(run, name)
        fmt = lambda df: ", ".join(f"{safe(c)} {number(r['preference'], '+.2f')}" for c, r in df.iterrows())  # noqa: E731
        row = corr.loc[name]
        rho = ["-", "-"] if acc is None else [number(acc.loc[name, f"spearman_{m}"], "+.3f") for m in ("topk", "preference")]
        first, last = sides(len(pref), n)
        prefs.add_row(safe(name), fmt(pref.head(first)), fmt(pref.tail(last)) if last else "-")
        prefs.caption = sides_note(len(pref), n, not run.complete)
        stats.add_row(safe(name), (f"{si.median():.3f} " if si.notna().any() else "- ") + f"over {int(si.notna().sum())} of "
                      f"{len(si)} units", number(row["spearman"], "+.3f"), number(row["p_value"], ".3g"), *rho)
    one = one_class_note(run)  # the ReLU is not why a run of one class has no selectivity
    notes = [one] if one else ["selectivity: median over the units that have one; it needs non-negative class means, "
                               "so units of a layer read before its ReLU (a negative class mean) have none"]
    if no_images:
        notes.append(no_images_note([run.class_names[c] for c in sorted(no_images)]))
    stats.caption = "\n".join(notes)
    return Group(prefs, stats)


def ink_table(run: Run) -> Table:
    """Mean ink density of each class's images beside the class accuracy."""
    ink = run.ink_density()
    acc = run.class_accuracy_series().to_numpy()  # NaN without predictions: the column says "-"
    table = titled("ink density per class (fraction of pixels that differ from the background)")
    for col in ("class", "ink density", "accuracy %"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, v, a in zip(ink.index, ink.to_numpy(), percents(acc.tolist())):  # by position: a dataset may repeat a class name
        table.add_row(safe(c), number(v, ".3f"), a)
    return table


def importance_table(run: Run, name: str, n: int) -> Table:
    """A rich table of the `n` units of `name` that matter most for the correct class. The layer
    is the title's first line: after a long name ("backbone.layer4.1.conv2: units that …") rich
    folded the rest of the title in the middle of its words' phrase."""
    df = run.unit_importance(name)
    table = titled(f"{safe(name)}\nunits that matter most when zeroed ({df.attrs['images']} images, "
                   f"accuracy {rate(df.attrs['base_accuracy'])})")
    df = df.head(n)
    shown = importance_store.written(df)
    for col in ("unit", *importance_store.COLUMNS):
        table.add_column(importance_store.LABELS[col], justify="right")
    for i, u in enumerate(df["unit"]):
        table.add_row(str(int(u)), *(shown[col][i] for col in importance_store.COLUMNS))
    return table


# ---- what the commands print (cli parses and dispatches; the demo prints the same) ----------
def print_summary(path: str, n: int, console: Console) -> None:
    """`sketchmine summary`: layers, accuracy, class preferences (also printed by the demo)."""
    from sketchmine.results.run import open_run

    run = open_run(path)
    if not run.complete and not run.images_done:  # created, nothing committed: said, not an error
        console.print(f"[yellow]partial run[/] {safe(run.path)}: {not_yet(run)}; its {len(run.layers)} layers: "
                      f"{safe(', '.join(run.layers))}")
        return
    for line in provenance_lines(run.attrs):  # folded at the terminal's edge, as the tables below fit it
        console.print(safe(line), overflow="fold")
    console.print(layers_table(run))
    if run.complete:
        console.print(accuracy_table(run))
    else:
        console.print(f"[yellow]partial run[/]: {run.images_done} images mined so far; the class accuracies below are "
                      "over those images (the accuracy table comes when the run is complete)")
    if run.has_labels():
        console.print(preferences_table(run, n))
    else:  # no class to count the top-k images in: one line, as the report's index says it
        console.print(f"no class tables: {safe(no_classes(run, NO_LABELS))}")
    unbiased = unbiased_table(run, n)
    if unbiased is not None:
        console.print(ink_table(run))
        console.print(unbiased)


def print_report(path: Run | str, out: str, console: Console, probe: Any = None) -> Path:
    """`sketchmine report`: write the HTML report (from the store alone; probe: the live probe's files
    or why there are none) and say where it is."""
    from sketchmine.present.report import write_report

    t0 = time.perf_counter()
    index = write_report(path, out, probe=probe)
    if probe is not None and not isinstance(probe, Mapping):  # a note: stderr, silenced by -q
        logging.getLogger("sketchmine").warning(f"no live probe: {probe}")
    console.print(f"report written in {time.perf_counter() - t0:.1f} s: open {safe(index)}")
    return index


def print_mined(run: Run, progress: RichProgress, no_logits: bool, console: Console) -> None:
    """What `sketchmine mine` says at the end: the layers, the images and the accuracy."""
    console.print(layers_table(run))
    acc = run.accuracy()
    console.print(f"{run.images_done} images, {progress.images} this session in {progress.seconds:.1f} s"
                  + (f"; accuracy {rate(acc)}" if acc is not None else "") + f" → {safe(run.path)}")
    if no_logits:
        logging.getLogger("sketchmine").warning("--no-logits: the forward pass stopped after the deepest mined "
                                                "layer; no predictions or accuracy were written")


def print_visualized(run: Run, layers: list[str] | None, method: str | None, progress: RichProgress,
                     console: Console, optimize: bool = False, examples: str = "top") -> None:
    """What `sketchmine visualize` says at the end (with --optimize, the optimised inputs too,
    with the method and steps they were made with, as the first layer's claim records them)."""
    names = list(dict.fromkeys(layers or run.layers))
    count = len(names)
    opt = run.layer_attrs(names[0]).get(schema.OPTIMIZED) if optimize and names else None
    made = f" and optimised inputs ({how_made(opt)})" if isinstance(opt, dict) else ""
    method = ((run.layer_attrs(names[0]).get(schema.VISUALIZED) or {}).get("method") if names else None) or method
    crops = "" if method == schema.PATCHES_ONLY else f" and {method} crops"  # the default is the run's (ONNX: patches)
    what = f"patches{crops}{made} of {count} layer{'' if count == 1 else 's'}"
    if not progress.images and examples != "all":  # all done before (the progress counts no example pictures)
        console.print(f"nothing to do: the {what} were made already (--redo makes them again) → {safe(run.path)}")
        return
    console.print(f"{what} in {progress.seconds:.1f} s → {safe(run.path)}")
