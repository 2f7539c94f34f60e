"""The slide of one unit, as the Deep Visualization Toolbox study showed it at lab meetings:
its 9 top patches, their 9 deconvolutions, the classes of those images with each class's
accuracy, its maximum activation and its receptive-field size, on one 16:9 figure readable
at slide size.

Object API only (a `Figure`, no pyplot state, no backend switch), so it is safe in
notebooks and servers alike. The pictures are the ones `sketchmine visualize` stored; a unit
without them is refused with the command that adds them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sketchmine.errors import SketchmineError
from sketchmine.present.report_data import percent
from sketchmine.results.run import Run
from sketchmine.results.unit_summary import LayerSummary
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


def value_text(v: Any, spec: str = ".3g") -> str:
    """A summary value as text: "-" for none (NaN), "inf" / "-inf" as such."""
    if v is None:
        return "-"
    return v if isinstance(v, str) else format(float(v), spec)


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


def _grid(fig: Figure, box: tuple[float, float, float, float], tiles: np.ndarray, entries: list[dict[str, Any]], title: str,
          captions: bool) -> None:
    """The 3 × 3 grid as one image in figure box `box` (one axes, no ticks: drawing it is far
    cheaper than nine), each tile's class and activation under it."""
    ax = fig.add_axes(box)
    ax.axis("off")
    _, h, w, _ = tiles.shape
    gap = max(1, round(0.3 * h))
    ax.imshow(mosaic(tiles, [e["rank"] for e in entries], gap), interpolation="nearest")
    # a frame per slot (white pixels stay apart from the white page), as one collection: nine
    # patches would each update the axes' limits and be drawn apart (a fifth of a montage's time)
    ax.add_collection(PatchCollection([Rectangle(((i % 3) * (w + gap) - 0.5, (i // 3) * (h + gap) - 0.5), w, h)
                                       for i in range(SHOWN)], facecolor="none", edgecolor="#8a8a8a",
                                      linewidth=1.0), autolim=False)
    aspect = SLIDE_INCHES[0] / SLIDE_INCHES[1]  # the mosaic is square: its top, in figure units
    top = box[1] + box[3] / 2 + min(box[3], box[2] * aspect) / 2
    fig.text(box[0] + box[2] / 2, top + 0.012, title, fontsize=17, weight="bold", ha="center")
    if captions:
        for i, e in enumerate(entries[:SHOWN]):
            cls = e["cls"] if e["cls"] is not None else "?"
            ax.text((i % 3) * (w + gap) + w / 2, (i // 3) * (h + gap) + h + gap * 0.12,
                    f"{cls[:14]}  {value_text(e['value'])}", fontsize=12, ha="center", va="top", parse_math=False)


def _single(fig: Figure, box: tuple[float, float, float, float], image: np.ndarray, title: str, caption: str) -> None:
    """One image (the optimised input) in figure box `box`, framed, titled like the grids."""
    ax = fig.add_axes(box)
    ax.axis("off")
    h, w, ch = image.shape
    ax.imshow(image if ch == 3 else image[..., 0], cmap=None if ch == 3 else "gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="#8a8a8a", linewidth=1.0))
    aspect = SLIDE_INCHES[0] / SLIDE_INCHES[1]
    side = min(box[3], box[2] * aspect * h / w)
    top, bottom = box[1] + box[3] / 2 + side / 2, box[1] + box[3] / 2 - side / 2
    fig.text(box[0] + box[2] / 2, top + 0.012, title, fontsize=17, weight="bold", ha="center")
    fig.text(box[0] + box[2] / 2, bottom - 0.01, caption, fontsize=12, ha="center", va="top", parse_math=False)


def _pct(a: float | None) -> str:
    text = percent(a)
    return text if text == "-" else f"{text}%"


def _panel(fig: Figure, x0: float, x1: float, info: dict[str, Any]) -> None:
    """The right-hand text: maximum, receptive field, classes with accuracy, distribution."""
    rf = info["receptive_field"]
    lines = [("max activation", value_text(info["max"], ".4g")),
             ("receptive field", f"{rf[0]}×{rf[1]} px" if rf else "whole image")]
    m = info.get("moments")
    if m is not None:
        lines.append(("mean, all images", value_text(m["mean"])))
        lines.append(("firing density", _pct(m["density"])))
    imp = info.get("importance")
    if imp is not None:
        lines.append(("importance rank", f"{imp['rank']} of {info['units']}"))
    y = 0.86
    for key, value in lines:
        fig.text(x0, y, key, fontsize=15, color="#555555", va="top")
        fig.text(x1, y, value, fontsize=16, weight="bold", va="top", ha="right")
        y -= 0.058
    y -= 0.03
    fig.text(x0, y, f"classes of the top {len(info['top'])}", fontsize=15, weight="bold", va="top")
    fig.text(x1, y, "accuracy", fontsize=13, color="#555555", va="top", ha="right")
    y -= 0.055
    for c in (info.get("classes_top") or [])[:8]:
        fig.text(x0, y, f"{c['class'][:20]}  ×{c['count']}", fontsize=15, va="top", parse_math=False)
        fig.text(x1, y, _pct(c["acc"]), fontsize=15, va="top", ha="right")
        y -= 0.05
    if not info.get("classes_top"):
        fig.text(x0, y, "(no labels)", fontsize=14, color="#777777", va="top")


def unit_montage(run: Run, layer: str, unit: int, info: dict[str, Any] | None = None) -> Figure:
    """One unit's slide (16:9, 1600 × 900 px at DPI): its top-9 patches and deconvolutions
    (3 × 3 each, class and activation under each patch), its optimised input where the run
    has one (`sketchmine visualize --optimize`), the classes of those images with
    their accuracy, its maximum activation and receptive-field size (and, where the run has
    them, mean, firing density and importance rank). `info`: the unit's `unit_summary`, when
    the caller has it already (the report reads a layer's once)."""
    patches, deconv = montage_pixels(run, layer, unit)
    info = info if info is not None else unit_info(run, layer, int(unit))
    if (info.get("layer"), info.get("unit")) != (layer, int(unit)):  # else another unit's numbers under these patches
        raise SketchmineError(f"info is the summary of {info.get('layer')!r} unit {info.get('unit')}, not of "
                              f"{layer!r} unit {int(unit)}: pass unit_summary(run, {layer!r}, {int(unit)}) or None")
    entries = info["top"][:SHOWN]
    opt = montage_optimized(run, layer, int(unit))
    fig = Figure(figsize=SLIDE_INCHES, dpi=DPI, facecolor="white")
    width = 0.31 if opt is None else (0.23 if deconv is not None else 0.4)  # room for the optimised image
    _grid(fig, (0.02, 0.06, width, 0.78), patches, entries, "top patches", True)
    if deconv is not None:
        _grid(fig, (0.05 + width, 0.06, width, 0.78), deconv, entries, "deconvolutions", False)
    if opt is not None:
        x0 = 0.05 + (2 * width + 0.03 if deconv is not None else width)
        peak = float(run.optimized(layer, int(unit), key="optimized_peak"))
        _single(fig, (x0, 0.06, 0.69 - x0, 0.78), opt, "optimised input", f"activation {peak:.3g}")
    _panel(fig, 0.72, 0.975, info)
    # a slide travels alone: an autocast run's says so beside the model
    about = ", ".join(str(w) for w in (run.attrs.get("model"), run.precision if run.reduced_precision else None) if w)
    fig.text(0.03, 0.93, f"{layer} · unit {int(unit)}" + (f"   ({about})" if about else ""), fontsize=24,
             weight="bold", va="bottom", parse_math=False)
    return fig


def save_montage(run: Run, layer: str, unit: int, path: str | os.PathLike, info: dict[str, Any] | None = None
                 ) -> Path:
    """Write the unit's montage as a PNG (exactly 1600 × 900 px) to `path`."""
    fig = unit_montage(run, layer, unit, info)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # class names in scripts the default font lacks: boxes, not errors
        warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
        fig.savefig(p, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    return p
