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
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TaskID,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from sketchmine.errors import SketchmineError, unless_damaged
from sketchmine.results import importance_store
from sketchmine.results.numbers import number, percent, shape_text
from sketchmine.results.precision import precision_differs, precision_note
from sketchmine.results.run import Run
from sketchmine.results.summaries import not_yet, size_note, ties_words

if TYPE_CHECKING:
    from sketchmine.results.compare import Comparison

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
    width = Text.from_markup(title).cell_len
    return Table(title=title, **{**kwargs, "min_width": max(kwargs.get("min_width") or 0,
                                                            width if width <= TITLE_WIDTH else 0)})


class RichProgress:
    """Progress bar with images/s and ETA on `console` (the CLI's stderr console), live on a
    terminal and cleared when done (transient: a log or a captured stderr gets no bar, and an
    error stays the one line on stderr); notes go to the `sketchmine` logger, which the CLI
    prints above the bar (present/logs.py)."""

    def __init__(self, console: Console, label: str = "mining", unit: str = "images") -> None:
        self.console = console
        self.label, self.unit = label, unit
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._t0 = 0.0
        self._start_done = 0
        self.images = 0

    def start(self, total: int, done: int) -> None:
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=total, completed=done, rate="")
        self._t0, self._start_done, self.images = time.perf_counter(), done, 0
        if done and done < total:
            logging.getLogger("sketchmine").info(f"resuming at {self.unit[:-1]} {done} of {total}")

    def advance(self, n: int) -> None:
        self.images += n
        rate = self.images / max(time.perf_counter() - self._t0, 1e-9)
        assert self._bar is not None and self._task is not None
        self._bar.update(self._task, advance=n, rate=f"{rate:,.0f} {'img' if self.unit == 'images' else self.unit}/s")

    def note(self, message: str) -> None:
        logging.getLogger("sketchmine").warning(message)  # the CLI draws it on stderr (present/logs.py)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0


def layers_table(run: Run) -> Table:
    """One row per mined layer: shape, units, best activation, NaNs seen. The title (the
    header of `summary` and `mine`) names an autocast run's precision; the caption says what it means."""
    state = "complete" if run.complete else f"PARTIAL: {run.images_done} images"
    note = precision_note(run)
    table = titled(f"{safe(run.path)}  ({state}" + (f"; {safe(run.precision)})" if note else ")"),
                   caption=None if note is None else safe(note), caption_justify="left")
    for col in ("layer", "kind", "shape", "units", "max activation", "NaN"):
        table.add_column(col, justify="right" if col in ("units", "max activation", "NaN") else "left",
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
    table = titled(f"per-class accuracy (overall {percent(overall, 2)}%)" if overall is not None else "per-class accuracy")
    table.add_column("class")
    table.add_column("accuracy %", justify="right")
    table.add_column("images", justify="right")
    for name, row in acc.iterrows():
        table.add_row(safe(name), percent(row["accuracy"], 2), str(int(row["count"])))
    return table


def _classes_cell(df: pd.DataFrame, per_image: bool = False) -> str:
    """A top or bottom list as "cls count (accuracy %)", with the count per image of the class
    when `per_image` (classes of different sizes), then the classes tied at its cut that it
    leaves out ("+ 3 more tied at 15"); a layer whose classes all tie says so instead."""
    ties = ties_words(df)
    if df.attrs.get("all_tied"):
        return ties

    def extra(r: pd.Series) -> str:
        shown = ([] if np.isnan(r["accuracy"]) else [percent(r["accuracy"], 1)]) + ([f"{r['per_image']:.2f}/img"] if per_image else [])
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
    for name in run.layers:
        top = run.top_classes(name, n)
        table.add_row(safe(name), _classes_cell(top, note is not None),
                      _classes_cell(run.bottom_classes(name, n), note is not None))
        if top.attrs.get("unlabelled"):
            unlabelled.append(f"{safe(name)} {top.attrs['unlabelled']}")
    notes = [safe(note)] if note else []
    if unlabelled:  # a dataset with some images labelled -1: their entries count for no class
        notes.append("top-k entries of unlabelled images, left out of the counts: " + ", ".join(unlabelled))
    if run.layers and top.attrs.get("no_images"):
        notes.append(_no_images(top.attrs["no_images"]))
    table.caption = "\n".join(notes) or None
    return table


def _no_images(classes: list[str]) -> str:
    return f"classes without images, left out: {', '.join(safe(c) for c in classes)}"


def unbiased_table(run: Run, n: int = 5) -> Table | None:
    """Per layer the n most and least preferred classes over ALL images (z-scored class means),
    the median class-selectivity index over the units that have one (the cell says how many: a
    layer read before its ReLU leaves most out), the correlation with class ink density and
    with class accuracy (`Run.accuracy_correlation`, by top-k count per image and by this
    preference); None when the run has no class statistics (no labels, or mined before them)."""
    from sketchmine.results import analysis

    if not analysis.has_class_stats(run):
        return None
    corr = analysis.ink_correlation(run)
    try:
        acc = run.accuracy_correlation()
    except SketchmineError as exc:  # no predictions: the accuracy columns say "-"
        unless_damaged(exc)
        acc = None
    title = ("class preference over all images (mean z-scored class mean; Spearman ρ with class ink density "
             "and with class accuracy, by top-k count per image and by this preference)")
    table = titled(title if run.complete else f"PARTIAL ({run.images_done} images): {title}", caption_justify="left")
    numeric = ("selectivity (median)", "ρ ink", "p", "ρ acc top-k", "ρ acc all")
    for col in ("layer", f"top {n}", f"bottom {n}", *numeric):
        table.add_column(col, justify="right" if col in numeric else "left",
                         min_width=name_width(run.layers) if col == "layer" else None)
    no_images: set[int] = set()  # class positions: a name may repeat
    for name in run.layers:
        pref = analysis.class_preference(run, name)
        no_images.update(pref.attrs.get("no_images_at", []))
        si = analysis.selectivity(run, name)
        fmt = lambda df: ", ".join(f"{safe(c)} {number(r['preference'], '+.2f')}" for c, r in df.iterrows())  # noqa: E731
        row = corr.loc[name]
        rho = ["-", "-"] if acc is None else [number(acc.loc[name, f"spearman_{m}"], "+.3f") for m in ("topk", "preference")]
        table.add_row(safe(name), fmt(pref.head(n)), fmt(pref.tail(n)),
                      (f"{si.median():.3f} " if si.notna().any() else "- ") + f"over {int(si.notna().sum())} of {len(si)} units",
                      number(row["spearman"], "+.3f"), number(row["p_value"], ".3g"), *rho)
    notes = ["selectivity: median over the units that have one; it needs non-negative class means, so units of a "
             "layer read before its ReLU (a negative class mean) have none"]
    if no_images:
        notes.append(_no_images([run.class_names[c] for c in sorted(no_images)]))
    table.caption = "\n".join(notes)
    return table


def ink_table(run: Run) -> Table:
    """Mean ink density of each class's images beside the class accuracy."""
    ink = run.ink_density()
    acc = run.class_accuracy_series().to_numpy()  # NaN without predictions: the column says "-"
    table = titled("ink density per class (fraction of pixels that differ from the background)")
    for col in ("class", "ink density", "accuracy %"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, v, a in zip(ink.index, ink.to_numpy(), acc):  # by position: a dataset may repeat a class name
        table.add_row(safe(c), number(v, ".3f"), percent(a, 2))
    return table


def compare_header(cmp: Comparison) -> str:
    """Which run is A and which B, and whether their precisions differ: lines of their own above the
    tables (in the accuracy table's title the paths were folded to its width, three lines of a path)."""
    differs = precision_differs(cmp.a, cmp.b)
    return f"A: {safe(cmp.a.path)}\nB: {safe(cmp.b.path)}" + ("" if differs is None else f"\n{safe(differs)}")


def compare_tables(cmp: Comparison) -> list[Table]:
    """`compare.Comparison` as two tables: accuracy side by side, then the paired layers (the
    title says how they were paired: by name, the logits with the logits, by relative depth)."""
    oa, ob = cmp.overall
    acc = titled(f"accuracy: A ({_overall(oa, cmp.a)}) vs B ({_overall(ob, cmp.b)})")
    for col in ("class", "A %", "B %", "B − A (pt)"):
        acc.add_column(col, justify="left" if col == "class" else "right")
    pct = lambda v: percent(v, 2)  # noqa: E731
    for c, r in cmp.accuracy.iterrows():  # a change carries its sign either way ("+5.00", "-1.50")
        acc.add_row(safe(c), pct(r["accuracy_a"]), pct(r["accuracy_b"]), ("+" if r["difference"] > 0 else "") + pct(r["difference"]))
    how = set(cmp.layers["paired_by"]) if len(cmp.layers) else {"depth"}
    paired = ("by name" if how == {"name"} else "by relative depth" if how == {"depth"} else
              "by name where both runs have the layer" + (", the logits with the logits" if "output" in how else "")
              + (", else by relative depth" if "depth" in how else ""))
    lay = titled(f"layers paired {paired}: top/bottom {cmp.n} classes among the top-k images, Jaccard overlap")
    for col in ("layer A", "layer B", f"top {cmp.n} A", f"top {cmp.n} B", "J top", f"bottom {cmp.n} A",
                f"bottom {cmp.n} B", "J bottom"):
        lay.add_column(col, justify="right" if col.startswith("J") else "left",
                       min_width=name_width(cmp.layers[f"layer_{col[-1].lower()}"]) if col.startswith("layer") else None)

    def cell(r: pd.Series, key: str) -> str:  # the list, then the classes tied at its cut
        if r[f"all_tied_{key[-1]}"]:
            return f"all {len(r[key]) + len(r['tied_' + key])} classes tied"
        tied = len(r[f"tied_{key}"])
        return ", ".join(safe(x) for x in r[key]) + (f" + {tied} tied" if tied else "")

    for _, r in cmp.layers.iterrows():
        lay.add_row(safe(r["layer_a"]), safe(r["layer_b"]), cell(r, "top_a"), cell(r, "top_b"), number(r["jaccard_top"], ".2f"),
                    cell(r, "bottom_a"), cell(r, "bottom_b"), number(r["jaccard_bottom"], ".2f"))
    lay.caption = ("J: Jaccard overlap of the listed classes plus those tied at the cut; '-' where a layer's classes all "
                   "tie (no top or bottom classes)")
    if cmp.no_images:
        lay.caption += "\n" + _no_images(cmp.no_images)
    for side, run, key in (("A", cmp.a, "layer_a"), ("B", cmp.b, "layer_b")):  # the longer run's rest: said, not dropped
        left = [name for name in run.layers if name not in set(cmp.layers[key])] if len(cmp.layers) else []
        if left:
            lay.caption += f"\n{side}'s layers paired with none: {', '.join(safe(name) for name in left)}"
    lay.caption_justify = "left"
    return [acc, lay]


def _overall(acc: float | None, run: Run) -> str:
    """A compared run's accuracy, with its precision when it was mined under autocast."""
    return ("-" if acc is None else f"{percent(acc, 2)}%") + (f", {safe(run.precision)}" if run.reduced_precision else "")


def importance_table(run: Run, name: str, n: int) -> Table:
    """A rich table of the `n` units of `name` that matter most for the correct class."""
    df = run.unit_importance(name)
    table = titled(f"{safe(name)}: units that matter most when zeroed ({df.attrs['images']} images, "
                   f"accuracy {percent(df.attrs['base_accuracy'], 2)}%)")
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
    console.print(layers_table(run))
    if run.complete:
        console.print(accuracy_table(run))
    else:
        console.print(f"[yellow]partial run[/]: {run.images_done} images mined so far; the class accuracies below are "
                      "over those images (the accuracy table comes when the run is complete)")
    console.print(preferences_table(run, n))
    unbiased = unbiased_table(run, n)
    if unbiased is not None:
        console.print(ink_table(run))
        console.print(unbiased)


def print_report(path: str, out: str, console: Console, probe: Any = None) -> Path:
    """`sketchmine report`: write the HTML report (from the store alone; probe: the live probe's files
    or why there are none) and say where it is."""
    from sketchmine.present.report import write_report

    t0 = time.perf_counter()
    index = write_report(path, out, probe=probe)
    if probe is not None and not isinstance(probe, Mapping):  # a note: stderr, silenced by -q
        logging.getLogger("sketchmine").warning(f"no live probe: {probe}")
    console.print(f"report written in {time.perf_counter() - t0:.1f} s: open {safe(index)}")
    return index


def print_compare(a: Run | str, b: Run | str, n: int, console: Console, title: bool = False) -> None:
    """`sketchmine compare A B`: accuracy per class side by side, layers paired by name or depth; with
    `title`, a rule naming the two models first (the demo)."""
    from sketchmine.results.compare import compare

    cmp = compare(a, b, n)
    if title:
        console.rule(f"[bold]compare[/]: A = {safe(cmp.a.attrs.get('model'))}, B = {safe(cmp.b.attrs.get('model'))}")
    console.print(compare_header(cmp), soft_wrap=True)  # a path on its line whole, however long
    for table in compare_tables(cmp):
        console.print(table)


def print_mined(run: Run, progress: RichProgress, no_logits: bool, console: Console) -> None:
    """What `sketchmine mine` says at the end: the layers, the images and the accuracy."""
    console.print(layers_table(run))
    acc = run.accuracy()
    console.print(f"{run.images_done} images, {progress.images} this session in {progress.seconds:.1f} s"
                  + (f"; accuracy {percent(acc, 2)}%" if acc is not None else "") + f" → {safe(run.path)}")
    if no_logits:
        logging.getLogger("sketchmine").warning("--no-logits: the forward pass stopped after the deepest mined "
                                                "layer; no predictions or accuracy were written")


def print_visualized(run: Run, layers: list[str] | None, method: str, progress: RichProgress,
                     console: Console) -> None:
    """What `sketchmine visualize` says at the end."""
    count = len(set(layers or run.layers))
    console.print(f"patches and {method} crops of {count} layer{'' if count == 1 else 's'} "
                  f"in {progress.seconds:.1f} s → {safe(run.path)}")
