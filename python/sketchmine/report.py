"""The HTML report: one static folder that opens offline in any browser.

    out/index.html               run, accuracy table, summary plot, unbiased preferences, layer list
    out/layers/<id>.html         one page per layer: histogram, preferences, unit cards (paged)
    out/data/<id>/page_NNNN.js   the cards of PAGE_SIZE units, loaded when shown (a script, not
                                 fetch(), so it works from file://)
    out/img/<id>/<unit>_p.png    the unit's k patches (and _d: deconvolutions) as one strip
    out/img/images/<index>.png   whole top-k images, when the run has no patches yet
    out/assets/                  report.css, report.js (no CDN)

Every dataset string is escaped here (html.escape) or set with textContent in report.js.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import analysis, plots
from .errors import SketchmineError
from .run import Run, open_run

PAGE_SIZE = 64
THUMB = 96
"""Strips are stored at most this many pixels high (cards show 64 px tiles)."""

e = html.escape


def _layer_ids(run: Run) -> dict[str, str]:
    """Filesystem-safe, unique id per layer (module names may hold any character)."""
    return {name: f"{i:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}" for i, name in enumerate(run.layers)}


def _pct(a: float) -> str:
    return "-" if a is None or np.isnan(a) else f"{a * 100:.2f}"


def _page(title: str, body: str, depth: int = 0, attrs: str = "") -> str:
    up = "../" * depth
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<link rel="stylesheet" href="{up}assets/report.css"></head>\n<body{attrs}>\n{body}\n</body></html>\n')


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Rows of already-escaped cells."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _js(obj) -> str:
    return json.dumps(obj, ensure_ascii=True, allow_nan=False).replace("<", "\\u003c")


def _save_png(arr: np.ndarray, path: Path) -> None:
    """(h, w) or (h, w, 3) uint8 → PNG, shrunk to THUMB pixels high."""
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    if im.height > THUMB:
        im = im.resize((max(1, round(im.width * THUMB / im.height)), THUMB), Image.BILINEAR)
    im.save(path, compress_level=1)


def _strip(tiles: np.ndarray) -> np.ndarray:
    """(k, h, w, ch) → (h, k*w, ch): the tiles side by side."""
    k, h, w, ch = tiles.shape
    return tiles.transpose(1, 0, 2, 3).reshape(h, k * w, ch)


class _Images:
    """Whole top-k images from the run's dataset (only when there are no patches)."""

    def __init__(self, run: Run, out: Path, dataset=None) -> None:
        self.dir = out / "img" / "images"
        self.written: set[tuple[int, int | None]] = set()
        self.ds = self.pre = None
        self.reason = ""
        from .reload import run_dataset, run_preprocessing

        if dataset is not None:  # given explicitly: one that is not the run's is the caller's error
            self.ds, self.pre = run_dataset(run, dataset), run_preprocessing(run)
            return
        try:
            self.ds, self.pre = run_dataset(run, dataset), run_preprocessing(run)
        except (SketchmineError, ImportError, OSError) as exc:  # the recorded one may be gone: say so
            self.reason = str(exc)

    def url(self, index: int, step: int | None = None) -> str | None:
        """The image's PNG; for a sequence sample (T, C, H, W), the drawing at `step` (the
        last one when step is None)."""
        if self.ds is None:
            return None
        key = (index, step)
        name = f"{index}.png" if step is None else f"{index}_t{step}.png"
        if key not in self.written:
            _, x, _, note = self.ds[index]
            if note.startswith("error:"):
                return None
            x = x.float()
            if x.ndim == 4:  # a progressive drawing: one frame
                x = x[-1 if step is None else min(max(step, 0), x.shape[0] - 1)]
            if self.pre is not None and self.pre.mean:
                x = x * torch_tensor(self.pre.std) + torch_tensor(self.pre.mean)
            arr = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            self.dir.mkdir(parents=True, exist_ok=True)
            _save_png(arr, self.dir / name)
            self.written.add(key)
        return f"../img/images/{name}"


def _steps(attrs: dict, yx: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(step (C, k) 0-based, steps T) of each top-k entry when the layer's position is time
    (recurrent outputs, per-step linears, time-distributed CNNs); None otherwise."""
    pos, shape = attrs.get("position"), list(attrs.get("shape") or [])
    if pos in ("time", "sequence") and len(shape) == 2:
        return yx[..., 1].astype(np.int64), int(shape[1])
    if pos == "time-stacked" and attrs.get("time_steps"):
        frame, steps = list(attrs.get("frame") or []), int(attrs["time_steps"])
        if len(frame) == 2:
            return yx[..., 0].astype(np.int64) // max(1, int(frame[0])), steps
        if len(frame) == 1:
            return yx[..., 1].astype(np.int64) // max(1, int(frame[0])), steps
        return yx[..., 1].astype(np.int64), steps
    return None


MAX_TRACE_IMAGES = 4000
"""Activation-over-time traces are computed (one forward pass over the layer's top-k images)
only when the layer's top-k hold at most this many distinct images."""


def _traces(run: Run, name: str, attrs: dict, images: list[int], ds, batch: int = 64) -> dict[int, np.ndarray]:
    """Per image, the layer's activation per unit and step (units, T): the maximum over the
    frame's positions for time-distributed layers. One forward pass over `images` only."""
    import torch

    from .reload import run_model
    from .taps import Taps

    loaded = run_model(run)
    net = loaded.module
    if not isinstance(net, torch.nn.Module):
        raise SketchmineError("activation over time needs the torch model")
    net.eval()
    got: list[torch.Tensor] = []

    def keep(layer: str, t: torch.Tensor) -> None:
        t = t.detach().float()
        if attrs.get("position") == "time-stacked" and t.ndim > 3:
            n, c = t.shape[:2]
            t = t.reshape(n, c, int(attrs["time_steps"]), -1).amax(-1)
        elif attrs.get("position") == "time-stacked" and t.ndim == 3 and attrs.get("frame"):
            n, c = t.shape[:2]
            t = t.reshape(n, c, int(attrs["time_steps"]), -1).amax(-1)
        got.append(t.clone())

    out: dict[int, np.ndarray] = {}
    with torch.no_grad(), Taps(net, [name], keep):
        for b in range(0, len(images), batch):
            chunk = images[b:b + batch]
            x = torch.stack([ds[i][1].float() for i in chunk])
            got.clear()
            net(x)
            if len(got) != 1:
                raise SketchmineError(f"layer {name!r} was not called exactly once")
            arr = got[0].numpy()
            for j, i in enumerate(chunk):
                out[i] = arr[j]
    return out


def torch_tensor(v) -> "object":
    import torch

    return torch.tensor(list(v), dtype=torch.float32).view(-1, 1, 1)


def _layer_data(run: Run, name: str, lid: str, out: Path, images: _Images | None) -> tuple[int, str]:
    """Write the layer's page scripts and image strips; returns (pages, note on pictures)."""
    g = run.store.group[f"layers/{name}"]
    values, index, yx = run.topk(name)
    labels, names, paths = run.labels, run.class_names, run.paths
    acc = analysis._accuracy(run).to_numpy()
    vis = dict(g.attrs.get("visualized") or {})
    has_patches = "patches" in g
    done = int(vis.get("units_done", index.shape[0])) if has_patches else 0
    note = ""
    if not has_patches and g.attrs.get("position") in ("time", "sequence"):
        note = "whole drawings at the entry's step: a recurrent or per-step unit has no image patch"
        if images is not None and images.ds is None:
            note += f" (drawings unavailable: {images.reason})"
    elif not has_patches:
        note = f"run `sketchmine visualize {run.path}` to add patches and deconvolutions"
        if images is not None and images.ds is None:
            note += f" (whole images unavailable: {images.reason})"
    elif done < index.shape[0]:
        note = f"patches for units 0..{done - 1} only: the visualize pass is unfinished"
    attrs = dict(g.attrs)
    steps = _steps(attrs, yx)
    traces: dict[int, np.ndarray] = {}
    if steps is not None:
        uniq = sorted({int(i) for i in np.unique(index) if i >= 0})
        why = ""
        if images is None or images.ds is None:
            why = "the run's dataset cannot be reopened" + (f" ({images.reason})" if images is not None and images.reason else "")
        elif len(uniq) > MAX_TRACE_IMAGES:
            why = f"the top-k hold {len(uniq)} images (more than {MAX_TRACE_IMAGES})"
        else:
            try:
                traces = _traces(run, name, attrs, uniq, images.ds)
            except (SketchmineError, ImportError, OSError, RuntimeError) as exc:
                why = str(exc)
        if why:
            note = (note + "; " if note else "") + f"activation over time not shown: {why}"
    importance = _importance(run, name)
    img_dir, data_dir = out / "img" / lid, out / "data" / lid
    img_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    c = index.shape[0]
    pages = (c + PAGE_SIZE - 1) // PAGE_SIZE
    for p in range(pages):
        u0, u1 = p * PAGE_SIZE, min((p + 1) * PAGE_SIZE, c)
        patches = np.asarray(g["patches"][u0:u1]) if has_patches and u0 < done else None
        deconv = np.asarray(g["deconv"][u0:u1]) if has_patches and "deconv" in g and u0 < done else None
        units = []
        for u in range(u0, u1):
            ok = index[u] >= 0
            entries = []
            for r in np.nonzero(ok)[0]:
                i = int(index[u, r])
                lab = int(labels[i]) if 0 <= labels[i] < len(names) else -1
                ent = {"rank": int(r), "index": i, "value": float(values[u, r]), "path": str(paths[i]),
                       "cls": names[lab] if lab >= 0 else None,
                       "acc": None if lab < 0 or not len(acc) or np.isnan(acc[lab]) else float(acc[lab])}
                if steps is not None:
                    t = int(steps[0][u, r])
                    ent.update({"t": t, "steps": steps[1]})
                    if i in traces:
                        ent["trace"] = [round(float(v), 5) for v in traces[i][u]]
                if patches is None and images is not None:
                    ent["image"] = images.url(i, ent.get("t"))
                entries.append(ent)
            unit = {"unit": u, "max": float(values[u, 0]) if ok[0] else None, "entries": entries}
            if importance is not None and u in importance:
                unit["importance"] = importance[u]
            if patches is not None and u < done and entries:
                h, w = patches.shape[2:4]
                scale = min(1.0, THUMB / h)
                unit.update({"h": max(1, round(h * scale)), "w": max(1, round(w * scale)),
                             "patches": f"../img/{lid}/{u}_p.png"})
                _save_png(_strip(patches[u - u0]), img_dir / f"{u}_p.png")
                if deconv is not None:
                    _save_png(_strip(deconv[u - u0]), img_dir / f"{u}_d.png")
                    unit["deconv"] = f"../img/{lid}/{u}_d.png"
            units.append(unit)
        (data_dir / f"page_{p:04d}.js").write_text(f"sketchmineReport.page({p}, {_js(units)});\n")
    return pages, note


IMPORTANCE_COLUMNS = [("unit", "unit"), ("prob_drop", "prob. drop"), ("acc_drop", "accuracy drop (pt)"),
                      ("mean_act_correct", "mean act. correct"), ("mean_act_wrong", "mean act. wrong")]


def _importance(run: Run, name: str) -> dict[int, dict] | None:
    """unit → its importance row, when `layers/<name>/importance` exists."""
    if not run.has_importance(name):
        return None
    df = run.unit_importance(name)
    return {int(r["unit"]): {"rank": int(k) + 1, "prob_drop": _num(r["prob_drop"]), "acc_drop": _num(r["acc_drop"])}
            for k, r in df.iterrows()}


def _num(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) or np.isinf(v) else v


def _importance_section(run: Run, name: str, lid: str) -> str:
    """The sortable per-unit importance table (sorted by report.js) and the plot."""
    df = run.unit_importance(name)
    a = df.attrs
    head = "".join(f'<th data-col="{i}" data-type="{"num"}" title="click to sort">{e(label)}</th>'
                   for i, (_, label) in enumerate(IMPORTANCE_COLUMNS))
    rows = []
    for _, r in df.iterrows():
        u = int(r["unit"])
        cells = [f'<td class="num" data-v="{u}"><a href="#page={u // PAGE_SIZE + 1}">{u}</a></td>']
        for col, _ in IMPORTANCE_COLUMNS[1:]:
            v = float(r[col])
            shown = "-" if np.isnan(v) else (f"{v * 100:.2f}" if col == "acc_drop" else f"{v:.4g}")
            cells.append(f'<td class="num" data-v="{"" if np.isnan(v) else repr(v)}">{e(shown)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    info = []
    if a.get("images") is not None:
        info.append(f"{int(a['images'])} images")
    if a.get("base_accuracy") is not None:
        info.append(f"accuracy {float(a['base_accuracy']) * 100:.2f}% with no unit ablated")
    if a.get("method"):
        info.append(f"method {a['method']}")
    return ("<h2>Which units matter for the label</h2>"
            f"<p>Each unit zeroed in turn; drop of the correct class's probability and of accuracy "
            f"({e('; '.join(info))}). Click a column header to sort; a unit number opens its card's page.</p>"
            f'<img class="plot" src="../importance/{e(lid)}.png" alt="most important units">'
            f'<div class="scroll"><table id="importance" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _layer_page(run: Run, name: str, lid: str, pages: int, note: str, stats: bool) -> str:
    g = run.store.group[f"layers/{name}"]
    shape = "×".join(map(str, g.attrs["shape"]))
    parts = [f'<p><a href="../index.html">← all layers</a></p><h1>{e(name)}</h1>',
             f"<p>{e(str(g.attrs.get('kind', '')))}, output {e(shape)}, top-{run.k} images per unit</p>"]
    if not run.complete:
        parts.append(f'<p class="partial">PARTIAL run: {run.images_done} images mined so far</p>')
    try:
        rows = [[e(str(c)), str(int(r["count"])), _pct(r["accuracy"])] for c, r in run._ranked(name).iterrows()]
        parts.append(f'<h2>Classes among the top-{run.k} images</h2>'
                     f'<img class="plot" src="../hist/{lid}.png" alt="class histogram">'
                     + _table(["class", "count", "accuracy %"], rows, {1, 2}))
    except SketchmineError as exc:
        parts.append(f'<p class="note">{e(str(exc))}</p>')
    if stats:
        pref = run.class_preference(name)
        si = run.selectivity(name)
        rows = [[e(str(c)), f"{r['preference']:.3f}", str(int(r["units_preferring"])), _pct(r["accuracy"])]
                for c, r in pref.iterrows()]
        parts.append("<h2>Class preference over all images</h2>"
                     f"<p>mean over {pref.attrs['units']} units of the unit's z-scored class means of its image "
                     f"maxima; class selectivity index (Morcos et al. 2018): median {np.nanmedian(si) if si.notna().any() else float('nan'):.3f} "
                     f"over {int(si.notna().sum())} units</p>"
                     + _table(["class", "preference", "units preferring", "accuracy %"], rows, {1, 2, 3}))
    if run.has_importance(name):
        parts.append(_importance_section(run, name, lid))
    if g.attrs.get("position") == "time" or g.attrs.get("time_steps"):
        parts.append(f"<p>Position is time ({e(str(g.attrs.get('tapped') or g.attrs.get('position')))}): each top-k "
                     "entry is an (image, step) pair; cards show the drawing at the step where the unit peaked "
                     "(t counted from 1) and the unit's activation over all steps of that sequence.</p>")
    parts.append("<h2>Units</h2>")
    if note:
        parts.append(f'<p class="note" id="pictures-note">{e(note)}</p>')
    parts.append('<nav class="pager"><button id="prev">◀ previous</button><span id="page-label"></span>'
                 '<button id="next">next ▶</button></nav><div id="cards"></div>'
                 '<script src="../assets/report.js"></script>')
    return _page(f"{name} — sketchmine report", "\n".join(parts), 1,
                 f' data-layer="{e(lid)}" data-pages="{pages}"')


def dataset_words(ds: dict[str, Any]) -> str:
    """A run's recorded dataset in words ("the embedded animal_shape, test split, as progressive
    drawings (…)"); keys it does not know are listed as key=value."""
    ds = dict(ds)
    kind, seq = ds.pop("kind", None), ds.pop("sequence", None)
    ds.pop("size", None)  # the image count is said beside it
    if kind == "embedded":
        text = f"the embedded {ds.pop('name', '?')}, {ds.pop('split', '?')} split"
    elif kind == "image_folder":
        text = f"image folder {ds.pop('root', '?')}"
    elif kind == "python":
        text = f"Python dataset {ds.pop('type', '?')}"
    else:
        text = "dataset" if kind is None else f"{kind} dataset"
    if seq:
        text += (f", as progressive drawings ({seq.get('transform')}, {seq.get('steps')} steps, "
                 f"ink {seq.get('ink', 'light')})")
    extra = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in ds.items())
    return f"{text} ({extra})" if extra else text


def _index(run: Run, ids: dict[str, str], stats: bool, seconds: float) -> str:
    a = run.attrs
    ds = a.get("dataset") or {}
    parts = [f"<h1>sketchmine report: {e(str(a.get('model')))}</h1>",
             f"<p>{e(dataset_words(ds))}; {run.images_done} images; "
             f"k = {run.k}; run {e(str(run.path))}</p>"]
    if not run.complete:
        parts.append(f'<p class="partial">PARTIAL run: {run.images_done} of {ds.get("size", "?")} images mined; '
                     "every table covers those only</p>")
    overall = run.accuracy()
    try:
        acc = run.class_accuracy()
        rows = [[e(str(c)), _pct(r["accuracy"]), str(int(r["count"]))] for c, r in acc.iterrows()]
        parts.append(f"<h2>Accuracy{'' if overall is None else f' {overall * 100:.2f}%'}</h2>"
                     + _table(["class", "accuracy %", "images"], rows, {1, 2}))
    except SketchmineError as exc:
        parts.append(f'<p class="note">{e(str(exc))}</p>')
    parts.append('<h2>Summary plot</h2><p><img class="plot" id="summary" src="summary.png" alt="summary plot"> '
                 '<a href="summary.svg">SVG</a></p>' if (run.store.path and ids) else "")
    if stats:
        corr = run.ink_correlation()
        ink = run.ink_density()
        rows = [[e(l), e(str(r["kind"])), f"{r['spearman']:.3f}", f"{r['p_value']:.3g}", str(r["classes"])]
                for l, r in corr.iterrows()]
        parts.append("<h2>Class preference vs ink density</h2><p>Spearman correlation, per layer, between the "
                     "layer's class preference over all images and the mean ink density of each class's images "
                     '(pixels differing from the image background by more than half the range).</p>'
                     '<img class="plot" src="ink.png" alt="ink correlation">'
                     + _table(["layer", "kind", "Spearman ρ", "p", "classes"], rows, {2, 3, 4})
                     + _table(["class", "ink density"], [[e(str(c)), f"{v:.3f}"] for c, v in ink.items()], {1}))
    rows = []
    for name, lid in ids.items():
        g = run.store.group[f"layers/{name}"]
        try:
            top = ", ".join(e(str(c)) for c in run.top_classes(name, 5).index)
        except SketchmineError:
            top = "-"
        rows.append([f'<a href="layers/{e(lid)}.html">{e(name)}</a>', e(str(g.attrs.get("kind", ""))),
                     e("×".join(map(str, g.attrs["shape"]))), top])
    parts.append("<h2>Layers</h2>" + _table(["layer", "kind", "shape", f"top 5 classes (top-{run.k})"], rows))
    parts.append(f'<p class="note">written by sketchmine in {seconds:.1f} s</p>')
    return _page("sketchmine report", "\n".join(parts))


def write_report(run: Run | str | os.PathLike, out: str | os.PathLike, images: bool = True,
                 dataset=None) -> Path:
    """Write the report folder; returns the path of index.html.

    `out` is a folder the report owns: new, empty, or holding an earlier report (the marker
    file `.sketchmine-report` lists what it wrote). Anything else is refused before a byte is
    written: a non-empty folder without the marker, an earlier report beside files it did not
    write, a file, a path inside (or equal to) a run, a folder holding the run it reads. The
    report is built in a temporary sibling folder and swapped in at the end, so an
    interrupted or failed report (Ctrl-C, full disk) leaves the previous one as it was.

    images: when the run has no patches yet, show the whole top-k images read from the run's
    dataset (if it can be reopened; `dataset` gives it when the store cannot, e.g. a subset).
    Layers whose position is time get the drawing at each entry's step and the activation
    over time; layers with stored unit importance a sortable table and plot."""
    t0 = time.perf_counter()
    run = run if isinstance(run, Run) else open_run(run)
    shown = Path(out)
    target = check_report_dir(shown, run.path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target)
        tmp = target.parent / f".{target.name}{_TMP}{os.getpid()}"
        if tmp.exists():  # our own leftover (same pid)
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / MARKER).write_text(json.dumps({"sketchmine": "report", "partial": True}) + "\n")
        _build(run, tmp, images, dataset, t0)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir() and p.name != MARKER)
        (tmp / MARKER).write_text(json.dumps({"sketchmine": "report", "run": str(run.path), "files": files}) + "\n")
        _swap_in(tmp, target)
        tmp = None
    except OSError as exc:
        where = exc.filename or target
        raise SketchmineError(f"cannot write the report to {shown}: {exc.strerror or exc} ({where}); the previous "
                              "report there (if any) is unchanged") from None
    finally:
        if tmp is not None:  # interrupted or failed: remove only what this call created
            shutil.rmtree(tmp, ignore_errors=True)
    return shown / "index.html"


MARKER = ".sketchmine-report"
"""The file that makes a folder a report folder sketchmine may replace (JSON: the files it wrote)."""

_TMP = ".sketchmine-report-tmp-"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_report_dir(out: str | os.PathLike, run_path: str | os.PathLike | None = None) -> Path:
    """The resolved report folder `out`, or a SketchmineError saying why sketchmine may not
    (re)write it. Nothing is created or removed."""
    from .store import is_run

    shown = Path(out)
    target = shown.resolve()
    if target.exists() and not target.is_dir():
        raise SketchmineError(f"report folder {shown} exists and is not a folder; choose a new or empty folder")
    for p in (target, *target.parents):
        if is_run(p):
            raise SketchmineError(f"report folder {shown} is inside the run {p}; write the report outside any run")
    if run_path is not None and _inside(Path(run_path).resolve(), target):
        raise SketchmineError(f"report folder {shown} holds the run it reports ({run_path}); a report replaces its "
                              "whole folder, so choose a new or empty folder outside the run")
    if target == Path(target.anchor):
        raise SketchmineError(f"report folder {shown} is a filesystem root; choose a new or empty folder")
    if target.is_dir() and any(target.iterdir()):
        marker = target / MARKER
        if not marker.is_file():
            raise SketchmineError(f"report folder {shown} is not empty and is not a sketchmine report (no {MARKER} "
                                  "file); choose a new or empty folder (a report replaces its whole folder)")
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict) or info.get("sketchmine") != "report":
            raise SketchmineError(f"report folder {shown}: {MARKER} is not a sketchmine report marker; "
                                  "choose a new or empty folder")
        if not info.get("partial"):
            mine = set(info.get("files") or [])
            foreign = sorted(str(p.relative_to(target)) for p in target.rglob("*")
                             if not p.is_dir() and p.name != MARKER and str(p.relative_to(target)) not in mine)
            if foreign:
                more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                raise SketchmineError(f"report folder {shown} holds files the report did not write "
                                      f"({', '.join(foreign[:3])}{more}); move them, or choose another folder")
    return target


def _remove_stale(target: Path) -> None:
    """Temporary report folders of killed report processes (their pid is gone)."""
    for p in target.parent.glob(f".{glob_escape(target.name)}{_TMP}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not (p / MARKER).is_file():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            continue


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, target: Path) -> None:
    """The finished report `tmp` becomes `target`; the previous report (checked to hold only
    files sketchmine wrote) is removed after the swap."""
    if not target.exists():
        os.rename(tmp, target)
        return
    cwd = Path.cwd().resolve()
    if _inside(cwd, target):  # keep the folder itself (a shell sitting in it keeps seeing it): swap its entries
        for p in list(target.iterdir()):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for p in list(tmp.iterdir()):
            os.rename(p, target / p.name)
        tmp.rmdir()
        return
    if _exchange(tmp, target):  # tmp now holds the previous report
        shutil.rmtree(tmp)
        return
    old = target.parent / f".{target.name}{_TMP}old-{os.getpid()}"
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old)


def _build(run: Run, out: Path, images: bool, dataset, t0: float) -> None:
    (out / "assets").mkdir(exist_ok=True)
    for name in ("report.css", "report.js"):
        src = resources.files("sketchmine") / "report_assets" / name
        (out / "assets" / name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    ids = _layer_ids(run)
    labelled = _labelled(run)
    stats = analysis.has_class_stats(run)
    if labelled:
        plots.summary_plot(run, out / "summary")
    if stats:
        plots.ink_plot(run, out / "ink")
    whole = _Images(run, out, dataset) if images else None
    for name, lid in ids.items():
        if run.has_importance(name):
            from .importance import plot_importance
            import matplotlib.pyplot as plt

            (out / "importance").mkdir(exist_ok=True)
            plt.close(plot_importance(run, [name], 10, out / "importance" / f"{lid}.png"))
        if labelled:
            plots.histogram_plot(run, name, out / "hist" / lid, formats=("png",))
        pages, note = _layer_data(run, name, lid, out, whole)
        (out / "layers").mkdir(exist_ok=True)
        (out / "layers" / f"{lid}.html").write_text(_layer_page(run, name, lid, pages, note, stats), encoding="utf-8")
    (out / "index.html").write_text(_index(run, ids if labelled else {}, stats, time.perf_counter() - t0),
                                    encoding="utf-8")


def _labelled(run: Run) -> bool:
    try:
        run.class_histogram(run.layers[0])
        return True
    except SketchmineError:
        return False
