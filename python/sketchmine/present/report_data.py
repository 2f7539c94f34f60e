"""The report's per-layer data: the unit cards' page scripts and image strips, read from the
run store only (patches and deconvolutions, or the --method's signal, from `visualize`, activation over time from the
traces it stores, unit importance), never from the model or the dataset.

    out/data/<id>/page_NNNN.js   the cards of PAGE_SIZE units, loaded when shown
    out/img/<id>/<unit>_p.png    the unit's k patches (and _d: their --method's signal) as one strip
"""
from __future__ import annotations

import html
import json
import os
import re
import threading
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from sketchmine.names import printable
from sketchmine.results.numbers import percent  # noqa: F401  (report.py and plots.py take it from here)
from sketchmine.results import importance_store
from sketchmine.results.effects import class_units
from sketchmine.results.optimized import (default_method, how_made, never_moved, pictures_command,
                                          signal_words)
from sketchmine.results.precision import precision_note
from sketchmine.results.run import Run
from sketchmine.results.summaries import entry_steps, ranked_by_log_odds, size_note, ties_words
from sketchmine.results.traces import MAX_TRACE_IMAGES, read_traces
from sketchmine.results.unit_summary import infinite, num
from sketchmine.store import schema

PAGE_SIZE = 64
THUMB = 96
"""Strips are stored at most this many pixels high (cards show 64 px tiles)."""


def layer_ids(run: Run) -> dict[str, str]:
    """Filesystem-safe, unique id per layer (module names may hold any character)."""
    return {name: f"{i:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}" for i, name in enumerate(run.layers)}


def to_js(obj: Any) -> str:
    """JSON safe inside a <script> (no '<'). A path that a non-UTF-8 locale decoded into lone
    surrogates (escaped "\\udcNN": a browser shows each as a replacement character) is written
    as `names.printable` gives it, as the pages' HTML does."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    if "\\udc" in text:  # rare: redo with every string made printable
        text = json.dumps(_printable_texts(obj), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c")


def _printable_texts(obj: Any) -> Any:
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {_printable_texts(k): _printable_texts(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_printable_texts(v) for v in obj]
    return obj


def save_png(arr: np.ndarray, path: Path) -> None:
    """(h, w) or (h, w, 3) uint8 → PNG, shrunk to THUMB pixels high."""
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    if im.height > THUMB:
        im = im.resize((max(1, round(im.width * THUMB / im.height)), THUMB), Image.Resampling.BILINEAR)
    im.save(path, compress_level=1)


class PngWriter:
    """Writes the report's picture strips on worker threads while the report reads and lays out
    the next units: Pillow's PNG encoder releases the GIL, and a visualized layer has thousands
    of strips (a fifth of a report's time encoded one after another). At most `pending` strips
    wait in memory. Leaving the `with` block waits for every write and raises the first error
    (a full disk) there, before the report is swapped in; a write after an error raises it."""

    def __init__(self, workers: int | None = None, pending: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1),
                                        thread_name_prefix="sketchmine-png")
        self._slots = threading.BoundedSemaphore(pending)
        self._error: BaseException | None = None

    def save(self, arr: np.ndarray, path: Path) -> None:
        """`save_png(arr, path)` on a worker thread (`arr` is not copied: it must not change)."""
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        try:
            self._pool.submit(self._write, arr, path)
        except BaseException:
            self._slots.release()
            raise

    def _write(self, arr: np.ndarray, path: Path) -> None:
        try:
            if self._error is None:
                save_png(arr, path)
        except BaseException as exc:  # kept for the main thread: a worker's exception is otherwise lost
            self._error = self._error or exc
        finally:
            self._slots.release()

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc is not None)
        if exc is None and self._error is not None:
            raise self._error


def strip(tiles: np.ndarray) -> np.ndarray:
    """(k, h, w, ch) → (h, k*w, ch): the tiles side by side."""
    k, h, w, ch = tiles.shape
    return tiles.transpose(1, 0, 2, 3).reshape(h, k * w, ch)


def precision_html(run: Run) -> str:
    """The line every page of an autocast run shows above its numbers (index, layer, unit
    pages); "" for a float32 run, whose pages stay as they were."""
    note = precision_note(run)
    return "" if note is None else f'<p class="precision" id="precision">{html.escape(note)}</p>'


_TURNS = frozenset({"R", "AL", "AN", "RLE", "RLO", "LRE", "LRO", "PDF", "RLI", "LRI", "FSI", "PDI"})
"""Bidi classes of a character that can move the text beside it (right-to-left letters and digits,
direction controls); a name without any is laid out left to right among our words as it is."""
FSI, PDI = "\u2068", "\u2069"


def balanced(name: str) -> str:
    """`name` with the isolates it leaves open closed and the ones it closes without opening
    opened (invisible controls): an isolate around it then ends where it ends. Unchanged where
    nothing is left open (an unclosed override, U+202E, ends with the isolate around it)."""
    depth = stray = 0
    for ch in name:
        if ch in "\u2066\u2067\u2068":
            depth += 1
        elif ch == PDI:
            depth, stray = (depth - 1, stray) if depth else (0, stray + 1)
    return FSI * stray + name + PDI * depth


def isolated(name: object) -> str:
    """A user's name (a class, a layer, a path segment) for plain text shown among our words and
    numbers (a tooltip, a page's <title>, a plot's label): a name holding right-to-left letters or
    direction controls inside U+2068 … U+2069 (first-strong isolate), so it cannot move or reverse
    the numbers beside it, nor set the direction of the line; any other name as it is."""
    text = str(name)
    if not any(unicodedata.bidirectional(ch) in _TURNS for ch in text):
        return text
    return FSI + balanced(text) + PDI


def named(name: object) -> str:
    """A dataset name (a class) set among other words: escaped, in a <bdi>, so right-to-left text
    or a stray direction override (U+202E) in it cannot reverse the counts and names beside it
    (dom.js `line` sets the cards' names the same way)."""
    return f"<bdi>{html.escape(balanced(str(name)))}</bdi>"


def isolate_names(text: str, names: Iterable[object]) -> str:
    """`text` (a note written elsewhere, naming classes among its words) with each of `names` in it
    that holds right-to-left text isolated (`isolated`); the longest first, so a name inside
    another is not cut out of it. A name `isolated` leaves as it is stays as it is."""
    for name in sorted({str(n) for n in names if isolated(n) != str(n)}, key=len, reverse=True):
        text = text.replace(name, isolated(name))
    return text


def isolated_path(path: object) -> str:
    """A path for text among our words: each folder's name isolated (`isolated`: a right-to-left
    folder cannot carry the file's number to its other side) and the whole left to right in an
    isolate of its own (U+2066 … U+2069); a path with no right-to-left text as it is."""
    text = str(path)
    if isolated(text) == text:
        return text
    return "\u2066" + "/".join(isolated(part) for part in text.split("/")) + PDI


def run_title(run: Run) -> str:
    """The end of every page's <title>: the run's folder name, so a tab or a bookmark says which
    run's report it is (a folder name a non-UTF-8 locale decoded into lone surrogates given back:
    `printable`, as the pages' own text, which some pages are written without)."""
    return f"{isolated_path(printable(Path(run.path).name))} — sketchmine report"


def classes_cell(listed: pd.DataFrame) -> str:
    """A `Run.top_classes` list as escaped HTML "bird 163, bear 125, … + 2 more tied at 88": with
    counts, so a cut through a tie can be seen, and the tied classes it leaves out said; a layer
    whose classes all tie says so instead of listing some."""
    ties = html.escape(ties_words(listed))
    if listed.attrs.get("all_tied"):
        return ties
    shown = ", ".join(f"{named(c)} {int(r['count'])}" for c, r in listed.iterrows())
    return f"{shown} {ties}" if ties else shown


LOG_ODDS_ATTR = ' data-ranked="log-odds"'
"""The <body> attribute of a layer page or dashboard whose top-k ranks by log-odds: report.js and
unit.js then write no "tied" note under repeated probabilities."""


def log_odds_html(name: str, attrs: dict[str, Any]) -> str:
    """The note of a layer whose top-k ranks by log-odds (`summaries.ranked_by_log_odds`); "" else."""
    if not ranked_by_log_odds(name, attrs):
        return ""
    return ('<p class="note" id="log-odds">Its top-k ranks the images by each class\'s log-odds (its logit minus the '
            "logsumexp of the other logits), not by the probabilities shown: probabilities that read alike (1.000 "
            "several times) are no ties, and their order is the log-odds', not the dataset's.</p>")


def size_html(run: Run) -> str:
    """The note beside top-k class counts when the classes differ in size; "" when they do not."""
    note = size_note(run.class_sizes())
    return "" if note is None else f'<p class="note" id="class-sizes">{html.escape(note)}</p>'


def shell_words(line: str) -> list[str]:
    """A command line (as `names.command` quotes it) cut into its words and the spaces between,
    each as written: quotes kept, so the words joined are the line."""
    parts, word, quote = [], "", ""
    for ch in line:
        if ch == " " and not quote:
            parts += [word, ch] if word else [ch]
            word = ""
            continue
        if ch in "'\"" and quote in ("", ch):
            quote = "" if quote else ch
        word += ch
    return parts + ([word] if word else [])


def code_html(line: str) -> str:
    """A command as <code>, each word left to right in an isolate of its own: a layer name in
    Hebrew or with a stray U+202E cannot move the unit number or the options after it (copied, the
    command is the text as written: an isolate adds no character). A command with no right-to-left
    text is one plain <code>."""
    if isolated(line) == line:
        return f"<code>{html.escape(line)}</code>"
    return "<code>" + "".join(html.escape(w) if w.isspace() else f'<span class="w">{html.escape(w)}</span>'
                              for w in shell_words(line)) + "</code>"


def with_code(text: str) -> str:
    """`text` as HTML with each `command` in it set as code (`code_html`), as dom.js `withCode`
    sets the dashboards' notes."""
    return "".join(code_html(part) if i % 2 else html.escape(part) for i, part in enumerate(text.split("`")))


def visualize_hint(run: Run, name: str) -> str:
    """The command that adds what the report reads for a layer (patches, traces), with the --method
    and --max-patch its pictures were made with (another is refused)."""
    return f"run `{pictures_command(run, name)}`"


def pictures_note(run: Run, name: str, attrs: dict[str, Any], has_patches: bool, done: int, units: int,
                  traced: bool, distinct: int) -> str:
    """The note above a layer's cards: what the store lacks for it and how to add it."""
    note = ""
    if not has_patches:
        what = "the drawings at each entry's step" if attrs.get("position") in ("time", "sequence") else \
            "patches" if default_method(run) == schema.PATCHES_ONLY else "patches and deconvolutions"
        note = f"no pictures stored for this layer: {visualize_hint(run, name)} to add {what}"
    elif done == 0:
        note = (f"no pictures yet: the visualize pass stopped before it reached this layer; {visualize_hint(run, name)} "
                "to resume it")
    elif done < units:
        note = (f"patches for units 0..{done - 1} only (of {units}): the visualize pass is unfinished; "
                f"{visualize_hint(run, name)} to resume it")
    if not traced:
        why = (f"the top-k hold {distinct} images (more than {MAX_TRACE_IMAGES})" if distinct > MAX_TRACE_IMAGES
               else f"not stored; {visualize_hint(run, name)} to add it")
        note = (note + "; " if note else "") + f"activation over time not shown: {why}"
    return note


def layer_data(run: Run, name: str, lid: str, out: Path, importance: dict[int, dict] | None, png: PngWriter,
               images: bool = True) -> tuple[int, str]:
    """Write the layer's page scripts and image strips (through `png`); returns (pages, note on pictures).
    images: entries without a stored patch carry "image": null (no picture: the report opens
    no dataset), as the cards' data always had."""
    attrs = run.layer_attrs(name)
    values, index, yx = run.topk(name)
    labels, names, paths = run.labels, run.class_names, run.paths
    acc = run.class_accuracy_series().to_numpy()  # NaN everywhere without predictions
    has_patches = run.has_array(name, "patches")
    has_deconv = has_patches and run.has_array(name, "deconv")
    signal = signal_words(run, name) if has_deconv else None  # the row named by its method: guided is no deconvolution
    done = run.patches_done(name)
    steps = entry_steps(attrs, yx)
    traces = read_traces(run, name) if steps is not None else None
    if traces is not None and traces.shape[:2] != index.shape:
        traces = None  # written for another top-k: not this run's
    distinct = len(np.unique(index[index >= 0])) if steps is not None else 0
    note = pictures_note(run, name, attrs, has_patches, done, index.shape[0], steps is None or traces is not None,
                         distinct)
    img_dir, data_dir = out / "img" / lid, out / "data" / lid
    img_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    c = index.shape[0]
    opt = attrs.get(schema.OPTIMIZED) if run.has_array(name, "optimized") else None
    opt_done = int(opt.get("units_done", 0)) if opt else 0
    classes = class_units(run, name)  # an output layer's units are classes: named by them
    # where two classes share a name, each entry carries its class's position, which the card's class
    # counts go by (pages of runs whose names differ stay as they were)
    alike = len(set(names)) < len(names)
    pages = (c + PAGE_SIZE - 1) // PAGE_SIZE
    for p in range(pages):
        u0, u1 = p * PAGE_SIZE, min((p + 1) * PAGE_SIZE, c)
        patches = run.layer_array(name, "patches", slice(u0, u1)) if has_patches and u0 < done else None
        deconv = run.layer_array(name, "deconv", slice(u0, u1)) if has_deconv and u0 < done else None
        units = []
        for u in range(u0, u1):
            ok = index[u] >= 0
            entries = []
            for r in np.nonzero(ok)[0]:
                i = int(index[u, r])
                lab = int(labels[i]) if 0 <= labels[i] < len(names) else -1
                ent = {"rank": int(r), "image_index": i, "value": jnum(values[u, r]), "path": str(paths[i]),
                       "class": names[lab] if lab >= 0 else None,
                       "accuracy": None if lab < 0 or not len(acc) or np.isnan(acc[lab]) else float(acc[lab])}
                if alike:
                    ent["label"] = lab if lab >= 0 else None
                if steps is not None:
                    ent.update({"t": int(steps[0][u, r]), "steps": steps[1]})
                    if traces is not None:
                        ent["trace"] = [jnum(round(float(v), 5)) for v in traces[u, r]]
                if patches is None and images:
                    ent["image"] = None
                entries.append(ent)
            unit = {"unit": u, "max": jnum(values[u, 0]) if ok[0] else None, "entries": entries}
            if classes is not None:
                unit["class"] = classes[u]
            if importance is not None and u in importance:
                unit["importance"] = importance[u]
            if patches is not None and u < done and entries:
                h, w = patches.shape[2:4]
                scale = min(1.0, THUMB / h)
                unit.update({"h": max(1, round(h * scale)), "w": max(1, round(w * scale)),
                             "patches": f"../img/{lid}/{u}_p.png"})
                png.save(strip(patches[u - u0]), img_dir / f"{u}_p.png")
                if deconv is not None:
                    png.save(strip(deconv[u - u0]), img_dir / f"{u}_d.png")
                    unit.update({"deconv": f"../img/{lid}/{u}_d.png", "signal": signal})
            if u < opt_done:
                unit["optimized"] = optimized_tile(run, name, u, lid, img_dir, opt, png)
            units.append(unit)
        (data_dir / f"page_{p:04d}.js").write_text(f"sketchmineReport.page({p}, {to_js(units)});\n")
    return pages, note


def optimized_tile(run: Run, name: str, u: int, lid: str, img_dir: Path, opt: dict[str, Any],
                   png: PngWriter) -> dict[str, Any]:
    """A unit's stored feature visualisation image as a PNG beside its patches: its card entry."""
    png.save(run.optimized(name, u), img_dir / f"{u}_o.png")
    return {"src": f"../img/{lid}/{u}_o.png", "method": how_made(opt),
            "peak": num(run.optimized(name, u, key="optimized_peak")),
            **({"flat": True} if never_moved(run, name, u) else {})}


def jnum(v: Any) -> float | str | None:
    """A value for the pages' JSON, which has no infinity: "inf" / "-inf" for an infinite one (a
    unit that overflowed really reached it; dom.js shows it as such), None for NaN."""
    return infinite(v) or num(v)


def importance_ranks(run: Run, name: str) -> dict[int, dict] | None:
    """unit → its importance rank and drops, when the layer has a stored importance result."""
    if not run.has_importance(name):
        return None
    df = run.unit_importance(name)
    ranked = importance_store.ranks(df)
    return {int(r["unit"]): {**ranked[int(r["unit"])], "prob_drop": num(r["prob_drop"]), "acc_drop": num(r["acc_drop"])}
            for _, r in df.iterrows()}
