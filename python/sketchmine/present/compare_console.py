"""`sketchmine compare A B` in the console: which run is which, the accuracy per class side by
side, and the paired layers' top and bottom classes with their Jaccard overlap."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from rich.console import Console
from rich.table import Table

from sketchmine.present.console import name_width, no_images_note, safe, titled
from sketchmine.results.notebook import accuracy_text
from sketchmine.results.numbers import number, percents
from sketchmine.results.precision import precision_differs
from sketchmine.results.run import Run
from sketchmine.results.summaries import class_sides

if TYPE_CHECKING:
    from sketchmine.results.compare import Comparison


def compare_header(cmp: Comparison) -> str:
    """Which run is A and which B, and whether their precisions differ: lines of their own above the
    tables (in the accuracy table's title the paths were folded to its width, three lines of a path)."""
    differs = precision_differs(cmp.a, cmp.b)
    partial = [f"{side} is PARTIAL: {run.images_done} images mined so far, its lists are of those"
               for side, run in (("A", cmp.a), ("B", cmp.b)) if not run.complete]
    return "\n".join([f"A: {safe(cmp.a.path)}", f"B: {safe(cmp.b.path)}", *partial, *([] if differs is None else [safe(differs)])])


def compare_tables(cmp: Comparison) -> list[Table]:
    """`compare.Comparison` as three tables: accuracy side by side, then the paired layers' top and
    bottom classes (the title says how they were paired: by name, the logits with the logits,
    by relative depth)."""
    acc = titled(f"accuracy: A ({_overall(cmp.a)}) vs B ({_overall(cmp.b)})")
    for col in ("class", "A %", "B %", "B − A (pt)"):
        acc.add_column(col, justify="left" if col == "class" else "right")
    # each column in one count of decimals ("100.00" beside "97.50", "0.00" beside "+3.33"), as `percents` writes one
    shown = zip(*(percents(cmp.accuracy[col].tolist()) for col in ("accuracy_a", "accuracy_b", "difference")))
    for (c, r), (pa, pb, change) in zip(cmp.accuracy.iterrows(), shown):  # a change carries its sign ("+5.00", "-1.50")
        acc.add_row(safe(c), pa, pb, ("+" if r["difference"] > 0 else "") + change)
    how = set(cmp.layers["paired_by"]) if len(cmp.layers) else {"depth"}
    between = [words for key, words in (("field", "by receptive field (its share of the input)"),
                                        ("depth", "by relative depth")) if key in how]
    paired = ("by name" if how == {"name"} else " or ".join(between) if not how & {"name", "output"} else
              "by name where both runs have the layer" + (", the logits with the logits" if "output" in how else "")
              + (", else " + " or ".join(between) if between else ""))
    # the top and the bottom lists in tables of their own: eight columns cut names and the last column at 80 cells
    top = titled(f"layers paired {paired}: top {cmp.n} classes among the top-k images, Jaccard overlap")
    bottom = titled(f"the same layers: bottom {cmp.n} classes among the top-k images, Jaccard overlap")
    for lay, side in ((top, "top"), (bottom, "bottom")):
        for col in ("layer A", "layer B", f"{side} {cmp.n} A", f"{side} {cmp.n} B", f"J {side}"):
            lay.add_column(col, justify="right" if col.startswith("J") else "left",
                           min_width=name_width(cmp.layers[f"layer_{col[-1].lower()}"]) if col.startswith("layer") else None)
    if len(how) > 1:  # the title names several ways: each pair says its own
        top.add_column("paired by")

    def cell(r: pd.Series, key: str) -> str:  # the list, then the classes tied at its cut
        if r[f"all_tied_{key[-1]}"]:
            return f"all {len(r[key]) + len(r['tied_' + key])} classes tied"
        tied = len(r[f"tied_{key}"])
        return ", ".join(safe(x) for x in r[key]) + (f" + {tied} tied" if tied else "") if len(r[key]) else "-"

    for _, r in cmp.layers.iterrows():
        for lay, side in ((top, "top"), (bottom, "bottom")):
            by = [_PAIRED_BY.get(r["paired_by"], r["paired_by"])] if len(how) > 1 and lay is top else []
            lay.add_row(safe(r["layer_a"]), safe(r["layer_b"]), cell(r, f"{side}_a"), cell(r, f"{side}_b"),
                        number(r[f"jaccard_{side}"], ".2f"), *by)
    bottom.caption = ("J: Jaccard overlap of the listed classes plus those tied at the cut; '-' where a layer's classes "
                      "all tie (no top or bottom classes)")
    bottom.caption_justify = "left"
    return [acc, top, bottom]


_PAIRED_BY = {"name": "name", "output": "logits", "field": "field", "depth": "depth"}
"""A pair's `paired_by` in the table's words: the logits with the logits ("output"), else as stored."""


def compare_notes(cmp: Comparison) -> list[str]:
    """What the tables leave out, said under them (lines of their own: a table's caption folds a
    long list of layer names to the table's width): classes without images, and the longer run's
    layers paired with none."""
    notes = [no_images_note(cmp.no_images)] if cmp.no_images else []
    notes += [f"{side}: {safe(few)}" for side, run in (("A", cmp.a), ("B", cmp.b))
              for few in class_sides(run, cmp.n)[2][:1] if few.startswith("only")]  # each class listed once
    notes += [f"{side.upper()} has no image of these classes yet (partial), left out of its lists: "
              + ", ".join(safe(c) for c in classes) for side, classes in cmp.unmined.items()]
    for side, run, key in (("A", cmp.a, "layer_a"), ("B", cmp.b, "layer_b")):
        left = [name for name in run.layers if name not in set(cmp.layers[key])] if len(cmp.layers) else []
        if left:
            notes.append(f"{side}'s layers paired with none: {', '.join(safe(name) for name in left)}")
    return notes


def _overall(run: Run) -> str:
    """A compared run's accuracy as the notebook writes it, with its precision when it was mined
    under autocast."""
    return accuracy_text(run) + (f", {safe(run.precision)}" if run.reduced_precision else "")


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
    for note in compare_notes(cmp):
        console.print(note, soft_wrap=True)
