"""The seed's summary plot as data: per layer, the n most and n least frequent classes among the
top-k images, each with its accuracy and count. The figure (plots.summary_figure) and the report's
HTML table draw the same cells from here, so the picture and the page cannot disagree; the table
stays readable at any page width, where the picture scaled to a column does not."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.colors import to_hex

from sketchmine.present.report_data import isolate_names, isolated
from sketchmine.results.checks import check_count
from sketchmine.results.numbers import percents
from sketchmine.results.run import Run
from sketchmine.results.summaries import class_sides, ties_words

CMAP = "RdYlGn"
"""Class accuracy 0 % (red) … 100 % (green), in the picture and the table."""
ALPHA = 0.55
"""How much of the colour over white: the cell text stays legible on it."""
NO_ACCURACY = "#dddddd"


@dataclass(frozen=True)
class Cell:
    """One class in a row: which list, its place in it, its accuracy (NaN: no prediction) and
    top-k count; `cut`: what the list's cut leaves out, on the cell at the cut ("+ 2 more tied at 9")."""
    side: str  # "top" or "bottom"
    place: int
    name: str
    accuracy: float
    count: int
    cut: str


@dataclass(frozen=True)
class Row:
    """A layer's row: its cells, or, when every class ties, the words that say so instead."""
    layer: str
    cells: tuple[Cell, ...]
    all_tied: str | None


def grid(run: Run, n: int = 5) -> list[Row]:
    """One row per mined layer (run order). Where fewer than 2n classes have images (a partial run)
    each is listed once, as `summary` lists them (`summaries.class_sides`, whose notes say why).
    Each list keeps its own places: a list shorter than n must not run into the other."""
    n = check_count(n)
    first, last, _ = class_sides(run, n)
    rows = []
    for layer in run.layers:
        top = run.top_classes(layer, max(first, 1))
        if top.attrs.get("all_tied"):
            rows.append(Row(layer, (), f"{ties_words(top)}: no top or bottom classes"))
            continue
        cells = [Cell("top", c, str(name), float(r["accuracy"]), int(r["count"]),
                      ties_words(top) if c == len(top) - 1 else "") for c, (name, r) in enumerate(top.iterrows())]
        if last:
            bottom = run.bottom_classes(layer, last)
            cells += [Cell("bottom", c, str(name), float(r["accuracy"]), int(r["count"]),
                           ties_words(bottom) if c == 0 else "") for c, (name, r) in enumerate(bottom.iterrows())]
        rows.append(Row(layer, tuple(cells), None))
    return rows


def floor(rows: list[Row]) -> float:
    """The low end of the colour scale: the lowest class accuracy shown, down to a multiple of 5 %
    (at most 95 %), so classes of 94.5 % and 100 % differ in colour, not only in digits (a 0-100 %
    scale drew every class of a well-trained model the same green)."""
    shown = [c.accuracy for r in rows for c in r.cells if not np.isnan(c.accuracy)]
    return min(math.floor(min(shown) * 20) / 20, 0.95) if shown else 0.0


def colour(accuracy: float, low: float = 0.0) -> str:
    """The cell colour of a class accuracy on the scale `low` (red) … 100 % (green), as drawn over
    white (hex)."""
    if np.isnan(accuracy):
        return NO_ACCURACY
    t = min(max((accuracy - low) / (1 - low), 0.0), 1.0) if low < 1 else 1.0
    r, g, b = (ALPHA * float(c) + 1 - ALPHA for c in matplotlib.colormaps[CMAP](t)[:3])
    return to_hex((r, g, b))


def legend_html(low: float) -> str:
    """The colour scale under the tables: what the cell colours mean."""
    stops = ", ".join(f"{colour(low + t * (1 - low), low)} {t * 100:g}%" for t in np.linspace(0, 1, 11))
    return (f'<p class="legend">class accuracy: {low * 100:g} % <span style="display:inline-block;width:12em;'
            'height:0.9em;vertical-align:middle;border:1px solid #ccc;background:linear-gradient(to right, '
            f'{stops})"></span> 100 % <span style="display:inline-block;width:1.4em;height:0.9em;vertical-align:middle;'
            f'background:{NO_ACCURACY};border:1px solid #ccc"></span> no prediction</p>')


def grid_html(run: Run, rows: list[Row], n: int) -> str:
    """The grid as two HTML tables, top and bottom classes, each with the layer column (side by side
    where the window is wide enough, one under the other where not), then the notes on what they
    leave out (`summary`'s words) and the legend. Each table has as many columns as its lists hold
    classes (fewer than n where fewer than 2n classes have images; "-" for none)."""
    e = html.escape
    low = floor(rows)
    first, last, notes = class_sides(run, n)
    tables = []
    for side, title, width in (("top", f"Top {n} classes", first), ("bottom", f"Bottom {n} classes", last)):
        body = []
        for row in rows:
            if row.all_tied is not None:
                body.append(f'<tr><th>{e(row.layer)}</th><td colspan="{max(width, 1)}"><i>{e(row.all_tied)}</i></td></tr>')
                continue
            by_place = {c.place: c for c in row.cells if c.side == side}
            tds = [] if width else ["<td>-</td>"]
            for i in range(width):
                c = by_place.get(i)
                tds.append("<td></td>" if c is None else
                           f'<td style="background:{colour(c.accuracy, low)};overflow-wrap:anywhere" title="{e(isolated(c.name))}: '
                           f'accuracy {percents([c.accuracy])[0]} %, {c.count} of the top-{run.k} entries">'
                           f'<bdi style="font-weight:600">{e(c.name)}</bdi><br><span style="white-space:nowrap">'
                           f'{percents([c.accuracy])[0]} % '  # 100.00 beside 95.00, as the accuracy table writes them
                           f"({c.count})</span>"
                           + (f"<br><small>{e(c.cut)}</small>" if c.cut else "") + "</td>")
            body.append(f"<tr><th>{e(row.layer)}</th>{''.join(tds)}</tr>")
        tables.append(f'<div style="overflow-x:auto;max-width:100%"><table class="summary-grid" id="summary-{side}" '
                      f'style="font-size:0.8em"><tr><th>layer</th><th colspan="{max(width, 1)}">{title}</th></tr>{"".join(body)}'
                      "</table></div>")
    return (f'<div id="summary-grid" style="display:flex;flex-wrap:wrap;gap:0 1.5em">{"".join(tables)}</div>'
            + "".join(f'<p class="note summary-note">{e(isolate_names(note, run.class_names))}</p>' for note in notes)
            + legend_html(low))
