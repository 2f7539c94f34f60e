"""Pictures of a run (matplotlib's object API: `Figure` objects, no pyplot state and no
backend chosen, so no display is needed and a notebook shows a returned figure inline): the
seed's summary plot and class-histogram bar charts, each written as PNG and SVG.

Dataset strings and layer names are drawn as plain text (`parse_math=False`): a class named
"$x$" stays "$x$", and a module named "$x^$" (unbalanced, which mathtext cannot parse) draws.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sketchmine.errors import SketchmineError, whole_number
from sketchmine.present.report_data import isolate_names, isolated
from sketchmine.present.summary_grid import Row, colour, floor, grid
from sketchmine.results.numbers import percents
from sketchmine.results import importance_store
from sketchmine.results.checks import check_count
from sketchmine.results.run import Run
from sketchmine.results.summaries import class_sides, size_note

FORMATS = ("png", "svg")


_NO_DATE = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}


@functools.cache
def _writable() -> dict[str, str]:
    """The formats matplotlib writes, by extension (what a plot file or `formats=` may name)."""
    return Figure().canvas.get_supported_filetypes()


def _save(fig: Figure, base: Path, formats: tuple[str, ...]) -> list[Path]:
    """base.png, base.svg …; returns the files written."""
    if isinstance(formats, str):  # one format, not its letters
        formats = (formats,)
    known = _writable()
    if unknown := [f for f in formats if f not in known]:
        raise SketchmineError(f"unknown plot format(s) {', '.join(map(repr, unknown))}; matplotlib writes "
                              f"{', '.join(sorted(known))}")
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        with warnings.catch_warnings(), matplotlib.rc_context({"svg.hashsalt": "sketchmine"}):
            warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)  # class names the font lacks
            # no date and fixed ids: the same run gives the same report, byte for byte
            fig.savefig(path, format=fmt, dpi=110, bbox_inches="tight", metadata=_NO_DATE.get(fmt))
        out.append(path)
    return out


def summary_figure(run: Run, n: int = 5, rows: list[Row] | None = None) -> Figure:
    """One row per layer: its n most and n least frequent classes among the top-k images, each
    cell coloured by the class's accuracy (red at the lowest shown, to a multiple of 5 %, … green 100 %, the colour bar under it), the
    seed's summary plot (`summary_grid.grid`: the report's table draws the same cells). The cell
    at a cut that splits a tie says how many tied classes the row leaves out, a layer whose
    classes all tie gets one grey cell saying so, and the title notes classes of different sizes
    (raw counts favour the larger). `rows`: `summary_grid.grid(run, n)`, when the caller has it."""
    rows = grid(run, n) if rows is None else rows  # checks n before it reaches the figure size
    if any(c.place >= n for row in rows for c in row.cells):
        raise SketchmineError(f"rows hold more than n={n} classes a side: pass grid(run, {n}) or leave rows out")
    low = floor(rows)  # the colour scale's low end, as the report's table has it
    layers = [r.layer for r in rows]
    fig = Figure(figsize=(1.5 * 2 * n + 1.6, 0.62 * len(layers) + 1.9))
    ax = fig.subplots()
    for r, row in enumerate(rows):
        if row.all_tied is not None:
            ax.add_patch(Rectangle((0, r), 2 * n + 0.26, 0.92, facecolor="white", edgecolor="#dddddd"))
            ax.text(n + 0.15, r + 0.46, row.all_tied, ha="center", va="center", fontsize=8, style="italic",
                    parse_math=False)
            continue
        for c in row.cells:
            x = c.place + (n + 0.3 if c.side == "bottom" else 0)
            ax.add_patch(Rectangle((x, r), 0.96, 0.92, color=colour(c.accuracy, low)))
            label = f"{c.name[:18]}\n{percents([c.accuracy])[0]}  ({c.count})" + (f"\n{c.cut}" if c.cut else "")
            ax.text(x + 0.48, r + 0.46, label, ha="center", va="center", fontsize=6 if c.cut else 7, parse_math=False)
    ax.set_xlim(-0.05, 2 * n + 0.35)
    ax.set_ylim(len(layers), -0.6)
    ax.set_yticks(np.arange(len(layers)) + 0.46)
    ax.set_yticklabels(layers, fontsize=8, parse_math=False)  # module names may hold "$"
    ax.set_xticks([])
    for side, middle in (("Top", n / 2), ("Bottom", n + 0.3 + n / 2)):
        ax.text(middle, -0.3, f"{side} {n} classes", ha="center", fontsize=10, weight="bold")
    for spine in ax.spines.values():
        spine.set_visible(False)
    scale = ScalarMappable(Normalize(low * 100, 100),
                           ListedColormap([colour(a, low) for a in np.linspace(low, 1, 256)]))
    bar = fig.colorbar(scale, ax=ax, orientation="horizontal", fraction=0.9 / (0.62 * len(layers) + 1.9),
                       pad=0.02, aspect=60, shrink=0.5)
    bar.set_label("class accuracy %", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    title = f"classes among the top-{run.k} images of every unit (class accuracy %, count)"
    if layers and (note := size_note(run.class_sizes())):
        title += f"\n{note}"
    # lists of fewer than n, classes left out (as `summary`): the names they list isolated
    title += "".join(f"\n{isolate_names(few, run.class_names)}" for few in class_sides(run, n)[2])
    ax.set_title(title if run.complete else f"PARTIAL ({run.images_done} images): {title}", fontsize=10,
                 parse_math=False)
    return fig


def summary_plot(run: Run, out: str | os.PathLike, n: int = 5, formats: tuple[str, ...] = FORMATS,
                 rows: list[Row] | None = None) -> list[Path]:
    """Write the summary plot as out.png / out.svg (`rows`: as `summary_figure` takes them)."""
    return _save(summary_figure(run, n, rows), Path(out), formats)


HISTOGRAM_BARS = 60
"""Classes drawn at most in a class histogram: ImageNet's 1,000 bars made a 34,000 px wide
PNG per layer, unreadable; the rest are counted in its title and listed by `class_histogram`."""


def histogram_figure(run: Run, layer: str, bars: int = HISTOGRAM_BARS) -> Figure:
    """Bar chart of the class histogram of one layer (most frequent first, at most `bars`
    classes), bars coloured by the class's accuracy."""
    every = run.top_classes(layer, len(run.class_names))  # every class, most frequent first
    df = every.head(bars)
    fig = Figure(figsize=(max(4.0, 0.28 * len(df) + 1.5), 3.2))
    ax = fig.subplots()
    acc = df["accuracy"].to_numpy()
    colors = [("#bbbbbb" if np.isnan(a) else matplotlib.colormaps["RdYlGn"](a)) for a in acc]
    ax.bar(np.arange(len(df)), df["count"].to_numpy(), color=colors, edgecolor="#444444", linewidth=0.4)
    ax.set_xticks(np.arange(len(df)))
    ax.set_xticklabels([str(c) for c in df.index], rotation=60, ha="right", fontsize=7, parse_math=False)
    ax.set_ylabel(f"images in top-{run.k}")
    title = f"{isolated(layer)}: classes among the top-{run.k} images of its units"  # a name moves none of our words
    if len(every) > len(df):
        held, total = int(df["count"].sum()), int(every["count"].sum())
        title += (f"\nthe {len(df)} most frequent of {len(every):,} classes ({held:,} of {total:,} entries); "
                  f"every class: run.class_histogram({layer!r})")
    if note := size_note(run.class_sizes()):  # raw counts favour the larger classes: say so where they are drawn
        title += "\n" + note.replace("; ", ";\n")
    ax.set_title(title, fontsize=9 if note is None and len(every) == len(df) else 7, parse_math=False)
    return fig


def histogram_plot(run: Run, layer: str, out: str | os.PathLike, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write one layer's class histogram as out.png / out.svg."""
    return _save(histogram_figure(run, layer), Path(out), formats)


def ink_figure(run: Run) -> Figure:
    """Per layer: Spearman correlation of its class preference with the classes' ink density."""
    corr = run.ink_correlation()
    fig = Figure(figsize=(max(4.0, 0.5 * len(corr) + 1.5), 3.0))
    ax = fig.subplots()
    rho = corr["spearman"].to_numpy()
    ax.bar(np.arange(len(corr)), np.nan_to_num(rho), color=["#3b7dd8" if r >= 0 else "#d8703b" for r in rho])
    for i in np.flatnonzero(np.isnan(rho)):  # no ρ is not ρ = 0: said where its bar would be
        ax.text(float(i), 0.04, "no ρ", ha="center", va="bottom", fontsize=7, color="#777777", rotation=90)
    ax.axhline(0, color="#333333", linewidth=0.6)
    ax.set_ylim(-1, 1)
    ax.set_xticks(np.arange(len(corr)))
    ax.set_xticklabels(list(corr.index), rotation=45, ha="right", fontsize=8, parse_math=False)
    ax.set_ylabel("Spearman ρ")
    title = "class preference (all images) vs class ink density"
    if np.isnan(rho).any():
        title += "\nno ρ: fewer than two classes with a preference and an ink density, or one of them constant"
    ax.set_title(title, fontsize=9)
    return fig


def ink_plot(run: Run, out: str | os.PathLike, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    return _save(ink_figure(run), Path(out), formats)


def importance_figure(run: Run, layers: str | list[str], n: int = 10) -> Figure:
    """Bar charts, one per layer, of its n most important units (drop in correct-class
    probability when the unit is zeroed; accuracy drop annotated), from the stored results."""
    names = [layers] if isinstance(layers, str) else list(layers)
    n = check_count(n)
    fig = Figure(figsize=(7, 0.35 * n * len(names) + 1.2))
    axes = fig.subplots(len(names), 1, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        df = run.unit_importance(name).head(n)
        drops = df["prob_drop"][::-1] * 100  # percentage points, as the tables write them
        ax.barh([f"unit {u}" for u in df["unit"]][::-1], drops, color="#4c72b0")
        shown = importance_store.written(df)["acc_drop"][::-1]  # as the table writes its column: "0.00" beside "1.00"
        for i, (p, a) in enumerate(zip(drops, shown)):
            ax.text(p, i, f"  acc drop {a} pt", va="center", fontsize=7)
        low, high = ax.get_xlim()
        ax.set_xlim(low, high + 0.3 * (high - low))  # room for the labels right of the longest bar
        ax.set_title(f"{isolated(name)}: most important units (ablated)", fontsize=9, parse_math=False)
        ax.set_xlabel("drop in correct-class probability (pt)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_importance(run: Run, layers: list[str] | None = None, n: int = 10,
                    path: str | os.PathLike | None = None) -> Figure:
    """`importance_figure` of the given layers (default: every layer with stored importance),
    saved to `path` when given (its format from the extension; an existing file only where it is a
    plot sketchmine wrote: `check_plot_path`). Returns the figure."""
    if layers is not None and not isinstance(layers, str) and not list(layers):  # not "every layer"
        raise SketchmineError("layers=[] names no layer to plot; pass layer names, or None for every layer with "
                              "stored importance")
    target = None if path is None else check_plot_path(path)  # a bad name: refused before the plot is drawn
    names = [l for l in run.layers if run.has_importance(l)] if layers is None else layers
    if not names:
        raise SketchmineError(f"run {run.path} has no unit importance yet; run sketchmine importance first")
    fig = importance_figure(run, names, n)
    if target is not None:
        save_figure(fig, target)
    return fig


def importance_plot(run: Run, layer: str, out: str | os.PathLike, n: int = 10,
                    formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """The importance figure saved as out.png (the report's per-layer plot)."""
    return _save(importance_figure(run, layer, n), Path(out), formats)


MARK = "sketchmine plot file"
"""Written into the creator field of a plot `save_figure` writes, where the format has one: the
file a later call may replace, as a user's own file of that name is not."""
_MARKED = {"png": "Software", "svg": "Creator", "pdf": "Creator", "ps": "Creator", "eps": "Creator"}


def _ours(path: Path) -> bool:
    """`path` is a plot `save_figure` wrote: a plain file (not a link, nor a FIFO, which would
    hold the read) whose format records a creator that names MARK."""
    if path.suffix[1:].lower() not in _MARKED or path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return MARK.encode() in f.read(64 << 20)  # matplotlib writes the field uncompressed, near either end
    except OSError:
        return False


def check_plot_path(path: str | os.PathLike) -> Path:
    """A plot file sketchmine may write (checked before any computation): its folder exists
    and is writable and not inside a run, it is not a folder, its extension is a format
    matplotlib writes, and the name is free or holds a plot sketchmine wrote (`MARK`): a file
    of the user's (an image of a dataset, a figure of their own, a link) is never replaced."""
    from sketchmine.store.lock import enclosing_run

    p = Path(path)
    target = p.resolve()
    fmt = p.suffix[1:].lower()
    formats = _writable()
    if target.is_dir():
        raise SketchmineError(f"plot file {p} is a folder; give a file name such as {p / 'importance.png'}")
    if fmt not in formats:
        raise SketchmineError(f"plot file {p}: {'no extension' if not fmt else f'unknown format {fmt!r}'}; "
                              f"name it .png, .svg or .pdf (matplotlib writes {', '.join(sorted(formats))})")
    if not target.parent.is_dir():
        what = "is a file, not a folder" if target.parent.exists() else "does not exist"
        raise SketchmineError(f"plot file {p}: the folder {p.parent} {what}")
    if not os.access(target.parent, os.W_OK):
        raise SketchmineError(f"plot file {p}: the folder {p.parent} is not writable")
    if (run := enclosing_run(target, itself=False)) is not None:
        raise SketchmineError(f"plot file {p} is inside the run {run}; write it outside any run")
    if os.path.lexists(p) and not _ours(Path(p)):
        what = "a link" if Path(p).is_symlink() else "not a plot sketchmine wrote"
        unmarked = "" if fmt in _MARKED else f"; a .{fmt} file cannot record who wrote it, so none is replaced"
        raise SketchmineError(f"plot file {p} exists and is {what}; name a new file, or move it away first "
                              f"(sketchmine replaces only a plot it wrote itself{unmarked})")
    return target


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` to `path` (format from the extension) through a temporary sibling file, so
    a failed write leaves an earlier file of that name as it was."""
    dpi = whole_number(dpi, "dpi")  # 0 or True: a matplotlib or FreeType error after the drawing
    p = Path(path)
    tmp = p.with_name(f".{p.name}.sketchmine-tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
            fmt = p.suffix[1:].lower()
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata={_MARKED[fmt]: MARK} if fmt in _MARKED else None)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


from sketchmine.present.montage import save_montage, unit_montage  # noqa: E402, F401  (sketchmine.plots.unit_montage)
