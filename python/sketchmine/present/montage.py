"""The slide of one unit, as the Deep Visualization Toolbox study showed it at lab meetings:
its 9 top patches, their 9 deconvolutions (or the signal of the layer's other --method), the
classes of those images with each class's accuracy, its maximum activation and its
receptive-field size, on one 16:9 figure readable at slide size.

Object API only (a `Figure`, no pyplot state, no backend switch), so it is safe in
notebooks and servers alike. The pictures are the ones `sketchmine visualize` stored; a unit
without them is refused with the command that adds them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sketchmine.errors import SketchmineError
from sketchmine.present.report_data import isolated
from sketchmine.present.slide_canvas import SlideCanvas
from sketchmine.results.effects import class_units
from sketchmine.results.importance_store import rank_text
from sketchmine.results.numbers import column, rate
from sketchmine.results.optimized import SIGNALS, how_made, never_moved, signal_words
from sketchmine.results.run import Run
from sketchmine.results.summaries import entry_steps
from sketchmine.results.unit_summary import LayerSummary, maxima_text
from sketchmine.store import schema

SLIDE_INCHES = (16.0, 9.0)
"""16:9, the size of a default presentation slide: text sizes below are readable on it."""
DPI = 100
"""Pixels per inch of the PNG (1600 × 900)."""
SHOWN = 9


def montage_pixels(run: Run, layer: str, unit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The unit's stored patches and deconvolutions, (k, h, w, ch) uint8 each (deconvolutions
    None when the pass stored none); a SketchmineError saying how to add them otherwise."""
    unit = run.visualized_unit(layer, unit)
    rows = slice(unit, unit + 1)
    patches = run.layer_array(layer, "patches", rows)[0]
    deconv = run.layer_array(layer, "deconv", rows)[0] if run.has_array(layer, "deconv") else None
    return patches, deconv


def montage_optimized(run: Run, layer: str, unit: int) -> np.ndarray | None:
    """The unit's stored feature visualisation image (h, w, ch) uint8, or None where the run
    has none for it (no `--optimize` pass, or the pass has not reached the unit)."""
    opt = run.layer_attrs(layer).get(schema.OPTIMIZED)
    if not opt or not run.has_array(layer, "optimized") or int(unit) >= int(opt.get("units_done", 0)):
        return None
    return run.optimized(layer, int(unit))


def unit_info(run: Run, layer: str, unit: int) -> dict[str, Any]:
    """Unit `unit`'s summary as the slide and the dashboard show it (infinities kept)."""
    return LayerSummary(run, layer).unit(unit, infinities=True, infinite_bins=False)


def mosaic(tiles: np.ndarray, ranks: list[int], gap: int) -> np.ndarray:
    """(k, h, w, ch) tiles → one (3h + 2gap, 3w + 2gap, 4) RGBA image of the tiles `ranks` in a
    3 × 3 grid, transparent between tiles and where the unit has fewer entries."""
    _, h, w, ch = tiles.shape
    out = np.zeros((3 * h + 2 * gap, 3 * w + 2 * gap, 4), dtype=np.uint8)
    for i, r in enumerate(ranks[:SHOWN]):
        y, x = (i // 3) * (h + gap), (i % 3) * (w + gap)
        out[y:y + h, x:x + w, :3] = tiles[r] if ch == 3 else tiles[r][..., :1]
        out[y:y + h, x:x + w, 3] = 255
    return out


class _Grid:
    """A 3 × 3 grid as one image in figure box `box` (one axes, no ticks: drawing it is far
    cheaper than nine), framed slots, a title, and (with captions) each tile's class and
    activation under it; `fill` sets a unit's tiles and captions."""

    def __init__(self, fig: Figure, box: tuple[float, float, float, float], tiles: tuple[int, ...], title: str,
                 captions: bool) -> None:
        _, h, w, _ = tiles
        self.gap = max(1, round(0.3 * h))
        ax = fig.add_axes(box)
        ax.axis("off")
        self.image = ax.imshow(np.zeros((3 * h + 2 * self.gap, 3 * w + 2 * self.gap, 4), np.uint8),
                               interpolation="nearest")
        # a frame per slot (white pixels stay apart from the white page), as one collection: nine
        # patches would each update the axes' limits and be drawn apart (a fifth of a montage's time)
        ax.add_collection(PatchCollection([Rectangle(((i % 3) * (w + self.gap) - 0.5, (i // 3) * (h + self.gap) - 0.5),
                                                     w, h) for i in range(SHOWN)], facecolor="none",
                                          edgecolor="#8a8a8a", linewidth=1.0), autolim=False)
        aspect = SLIDE_INCHES[0] / SLIDE_INCHES[1]  # the mosaic is square: its top, in figure units
        top = box[1] + box[3] / 2 + min(box[3], box[2] * aspect) / 2
        fig.text(box[0] + box[2] / 2, top + 0.012, title, fontsize=17, weight="bold", ha="center")
        self.captions = [ax.text((i % 3) * (w + self.gap) + w / 2, (i // 3) * (h + self.gap) + h + self.gap * 0.12, "",
                                 fontsize=12, ha="center", va="top", parse_math=False) for i in range(SHOWN)] \
            if captions else []

    def fill(self, tiles: np.ndarray, entries: list[dict[str, Any]]) -> None:
        self.image.set_data(mosaic(tiles, [e["rank"] for e in entries], self.gap))
        labels = []
        # one count of decimals for the nine values, as the unit's card writes them ("0.890" beside "0.968")
        values = column([e["value"] for e in entries[:len(self.captions)]])
        for i in range(len(self.captions)):
            e = entries[i] if i < len(entries) else None
            step = f"  t={e['t'] + 1}" if e is not None and "t" in e else ""  # a layer over time: the step it fired at
            labels.append("" if e is None else
                          f"{isolated((e['class'] if e['class'] is not None else '?')[:10 if step else 14])}  {values[i]}{step}")
        longest = max(map(len, labels), default=0)
        for text, label in zip(self.captions, labels):  # one size a slide, the longest within its tile's width
            text.set_fontsize(12 if longest <= 20 else 10 if longest <= 24 else 9)
            text.set_text(label)


class _Single:
    """One image (the optimised input) in figure box `box`, framed, titled like the grids, its
    caption set per unit."""

    def __init__(self, fig: Figure, box: tuple[float, float, float, float], shape: tuple[int, ...], title: str) -> None:
        h, w, ch = shape
        ax = fig.add_axes(box)
        ax.axis("off")
        self.image = ax.imshow(np.zeros((h, w, 3) if ch == 3 else (h, w), np.uint8), cmap=None if ch == 3 else "gray",
                               vmin=0, vmax=255, interpolation="nearest")
        ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="#8a8a8a", linewidth=1.0))
        aspect = SLIDE_INCHES[0] / SLIDE_INCHES[1]
        side = min(box[3], box[2] * aspect * h / w)
        top, bottom = box[1] + box[3] / 2 + side / 2, box[1] + box[3] / 2 - side / 2
        fig.text(box[0] + box[2] / 2, top + 0.012, title, fontsize=17, weight="bold", ha="center")
        self.caption = fig.text(box[0] + box[2] / 2, bottom - 0.01, "", fontsize=12, ha="center", va="top",
                                parse_math=False)

    def fill(self, image: np.ndarray, caption: str) -> None:
        self.image.set_data(image if image.shape[-1] == 3 else image[..., 0])
        self.caption.set_text(caption)


CLASS_LINES = 8
"""Classes of the top-k listed on the panel, most frequent first."""


def _facts(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The panel's (key, value) lines: maximum, receptive field, and where the run has them
    mean, firing density and importance rank."""
    rf = info["receptive_field"]
    # the maximum in its top-k values' column, as the unit's card heads it ("14.20" over "14.20", not "14.2")
    lines = [("max activation", column([info["max"], *(e["value"] for e in info.get("top") or [])])[0]),
             ("receptive field", f"{'up to ' if info.get('receptive_field_varies') else ''}{rf[0]}×{rf[1]} px"
              if rf else "whole image")]
    m = info.get("moments")
    if m is not None:
        lines.append(("mean of image maxima", maxima_text(info)[1]))  # as the dashboard and `sketchmine unit` write it
        lines.append(("firing density", rate(m["density"])))
    imp = info.get("importance")
    if imp is not None:
        lines.append(("importance rank", rank_text(imp["rank"], imp["tied"], info["units"])))
    return lines


class _Panel:
    """The right-hand text: the unit's facts, then the classes of its top-k with their accuracy."""

    def __init__(self, fig: Figure, x0: float, x1: float, facts: int) -> None:
        y, self.facts = 0.86, []
        for _ in range(facts):
            self.facts.append((fig.text(x0, y, "", fontsize=15, color="#555555", va="top"),
                               fig.text(x1, y, "", fontsize=16, weight="bold", va="top", ha="right")))
            y -= 0.058
        y -= 0.03
        self.header = fig.text(x0, y, "", fontsize=15, weight="bold", va="top")
        fig.text(x1, y, "accuracy", fontsize=13, color="#555555", va="top", ha="right")
        y -= 0.055
        self.none = fig.text(x0, y, "", fontsize=14, color="#777777", va="top")
        self.classes = []
        for _ in range(CLASS_LINES):
            self.classes.append((fig.text(x0, y, "", fontsize=15, va="top", parse_math=False),
                                 fig.text(x1, y, "", fontsize=15, va="top", ha="right")))
            y -= 0.05

    def fill(self, info: dict[str, Any]) -> None:
        for (key, value), (k, v) in zip(_facts(info), self.facts):
            k.set_text(key)
            v.set_text(value)
        self.header.set_text(f"classes of the top {len(info['top'])}")
        top = (info.get("classes_top") or [])[:CLASS_LINES]
        for i, (name, acc) in enumerate(self.classes):
            c = top[i] if i < len(top) else None
            name.set_text("" if c is None else f"{isolated(c['class'][:20])}  ×{c['count']}")
            acc.set_text("" if c is None else rate(c["accuracy"]))
        self.none.set_text("" if top else "(no labels)")


class Slide:
    """A unit's slide (16:9, 1600 × 900 px at DPI) whose pictures and words are set per unit
    (`fill`). Why apart: building the figure, its axes and ~40 texts is about a quarter of a
    slide's time, so the report fills one Slide with each unit of a layer whose pictures have
    the same shapes (`key`); `unit_montage` builds one a call."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        patches, deconv, opt, facts, signal = key
        self.fig = Figure(figsize=SLIDE_INCHES, dpi=DPI, facecolor="white")
        width = 0.31 if opt is None else (0.23 if deconv is not None else 0.4)  # room for the optimised image
        self.patches = _Grid(self.fig, (0.02, 0.06, width, 0.78), patches, "top patches", True)
        self.deconv = None if deconv is None else _Grid(self.fig, (0.05 + width, 0.06, width, 0.78), deconv,
                                                         signal, False)
        self.opt = None
        if opt is not None:
            x0 = 0.05 + (2 * width + 0.03 if deconv is not None else width)
            self.opt = _Single(self.fig, (x0, 0.06, 0.69 - x0, 0.78), opt, "optimised input")
        self.panel = _Panel(self.fig, 0.72, 0.975, facts)
        self.title = self.fig.text(0.03, 0.93, "", fontsize=24, weight="bold", va="bottom", parse_math=False)

    def fill(self, content: _Content) -> Figure:
        self.patches.fill(content.patches, content.entries)
        if self.deconv is not None and content.deconv is not None:
            self.deconv.fill(content.deconv, content.entries)
        if self.opt is not None and content.opt is not None:
            self.opt.fill(content.opt, ("no gradient: the starting noise" if content.peak is None else
                                        f"activation {content.peak:.3g}") + f"\n{content.made}")
        self.panel.fill(content.info)
        self.title.set_text(content.title)
        return self.fig


class _Content(NamedTuple):
    """What one unit's slide shows."""

    patches: np.ndarray
    deconv: np.ndarray | None
    opt: np.ndarray | None
    peak: float | None  # None: the optimisation never moved the image (schema.NO_GRADIENT)
    info: dict[str, Any]
    entries: list[dict[str, Any]]
    title: str
    made: str = ""  # how the optimised input was made (results.optimized.how_made)
    signal: str = SIGNALS["deconvnet"]  # what the pictures beside the patches are: by the layer's --method

    @property
    def key(self) -> tuple[Any, ...]:
        """The shapes a Slide must have been built for to show this."""
        return (self.patches.shape, None if self.deconv is None else self.deconv.shape,
                None if self.opt is None else self.opt.shape, len(_facts(self.info)), self.signal)


def slide_content(run: Run, layer: str, unit: int, info: dict[str, Any] | None) -> _Content:
    """What the unit's slide shows, read from the run: `Slides.draw` draws it (here, or in the
    report's worker processes: present/slide_workers.py)."""
    patches, deconv = montage_pixels(run, layer, unit)
    info = info if info is not None else unit_info(run, layer, int(unit))
    if (info.get("layer"), info.get("unit")) != (layer, int(unit)):  # else another unit's numbers under these patches
        raise SketchmineError(f"info is the summary of {info.get('layer')!r} unit {info.get('unit')}, not of "
                              f"{layer!r} unit {int(unit)}: pass unit_summary(run, {layer!r}, {int(unit)}) or None")
    opt = montage_optimized(run, layer, int(unit))
    peak = (float("nan") if opt is None else None if never_moved(run, layer, int(unit)) else
            float(run.optimized(layer, int(unit), key="optimized_peak")))
    # a slide travels alone: an autocast run's says so beside the model
    about = ", ".join(str(w) for w in (run.attrs.get("model"), run.precision if run.reduced_precision else None) if w)
    classes = class_units(run, layer)  # an output layer's unit is a class: named, as cards name it
    # the names isolated: a right-to-left one moves none of the numbers beside it (matplotlib lays text out by bidi)
    title = (f"{isolated(layer)} · unit {int(unit)}" + (f" · {isolated(classes[int(unit)])}" if classes else "")
             + (f"   ({isolated(about)})" if about else ""))
    entries = info["top"][:SHOWN]
    attrs = run.layer_attrs(layer)
    steps = entry_steps(attrs, run.topk(layer)[2])
    if steps is not None:  # the step of each entry, as the cards show it ("t=6 of 8")
        entries = [{**e, "t": int(steps[0][int(unit), e["rank"]]), "steps": steps[1]} for e in entries]
    made = "" if opt is None else how_made(attrs[schema.OPTIMIZED])
    return _Content(patches, deconv, opt, peak, info, entries, title, made, signal_words(run, layer)["name"])


def unit_montage(run: Run, layer: str, unit: int, info: dict[str, Any] | None = None) -> Figure:
    """One unit's slide (16:9, 1600 × 900 px at DPI): its top-9 patches and deconvolutions (or
    guided backpropagation, gradients: by the layer's --method; 3 × 3 each, class and activation under each patch), its optimised input where the run
    has one (`sketchmine visualize --optimize`), the classes of those images with
    their accuracy, its maximum activation and receptive-field size (and, where the run has
    them, mean, firing density and importance rank). `info`: the unit's `unit_summary`, when
    the caller has it already (the report reads a layer's once)."""
    content = slide_content(run, layer, unit, info)
    return Slide(content.key).fill(content)


class Slides:
    """The last slide drawn, filled again for the next unit whose pictures have its shapes (the
    report keeps one per layer)."""

    def __init__(self) -> None:
        self.last: Slide | None = None

    def draw(self, content: _Content) -> Figure:
        if self.last is None or self.last.key != content.key:
            self.last = Slide(content.key)
            SlideCanvas(self.last.fig)  # kept with the figure: its renderer and the glyph cache
        return self.last.fill(content)


def save_montage(run: Run, layer: str, unit: int, path: str | os.PathLike, info: dict[str, Any] | None = None,
                 slides: Slides | None = None) -> Path:
    """Write the unit's montage as a PNG (exactly 1600 × 900 px) to `path`; `slides`: where the
    slide drawn is kept to be filled again (None: a new one)."""
    return write_slide((slides or Slides()).draw(slide_content(run, layer, unit, info)), Path(path))


def write_slide(fig: Figure, path: Path) -> Path:
    """A slide `Slides.draw` drew, as the PNG `path` (exactly 1600 × 900 px)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # class names in scripts the default font lacks: boxes, not errors
        warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
        fig.savefig(path, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    return path
