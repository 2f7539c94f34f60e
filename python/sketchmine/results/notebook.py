"""A run and a unit as a notebook shows them: `repr(run)`, `run._repr_html_()` and the unit
card `run.unit(layer, i)`.

Only the run's readers, PIL and base64: no model, no dataset, no presentation module (readers
sit below present/). Pictures are the `visualize` pass's stored patches and deconvolutions,
inlined as PNG data URLs; a layer without them says how to add them.
"""
from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from sketchmine.errors import SketchmineError, unless_damaged
from sketchmine.results import importance_store
from sketchmine.results.effects import class_units
from sketchmine.results.importance_store import rank_text
from sketchmine.results.numbers import column, percents, points, rate, shape_text
from sketchmine.results.optimized import default_method, pictures_command, signal_words
from sketchmine.results.precision import precision_note
from sketchmine.results.summaries import not_yet
from sketchmine.store import schema

if TYPE_CHECKING:
    from sketchmine.results.run import Run

TOP_CLASSES = 5
"""Classes a unit card lists from the class statistics (highest mean image maximum first)."""

RANKED_BY = "mean image maximum over all images"
"""How a unit card ranks its top classes (a layer's `Run.top_classes` ranks by top-k count)."""

THUMB = 64
"""Height in pixels of a card's picture strips (larger patches are shrunk)."""


def ranked_by(run: Run) -> str:
    """RANKED_BY, or for a partial run the images mined so far it ranks over."""
    return RANKED_BY if run.complete else f"mean image maximum over the {run.images_done} images mined so far"


def state(run: Run) -> str:
    return "complete" if run.complete else f"partial ({run.images_done} images so far)"


def accuracy_text(run: Run) -> str:
    """The run's accuracy as every view writes it: "partial" until the run is complete (its images
    so far are not the dataset's), as `compare` writes it ("-" is a run without predictions)."""
    return rate(run.accuracy()) if run.complete else "partial"


def precision_text(run: Run) -> str:
    """"bfloat16 autocast, " before the numbers of a run mined under autocast; "" for float32
    (whose views read as they always did)."""
    return f"{run.precision}, " if run.reduced_precision else ""


def run_repr(run: Run) -> str:
    """One line: path, layers, k, images, precision (autocast runs only), accuracy and complete, or
    partial (no accuracy: its images so far are not the dataset's)."""
    names = run.layers
    shown = ", ".join(names[:4]) + (f", … ({len(names)} layers)" if len(names) > 4 else "")
    return (f"<sketchmine.Run {str(run.path)!r}: layers [{shown}], k={run.k}, {run.images_done} images, "
            f"{precision_text(run)}{'accuracy ' + accuracy_text(run) + ', ' if run.complete else ''}{state(run)}>")


def run_html(run: Run) -> str:
    """A small table: one row per layer (kind, units, whether pictures, importance and effects are
    stored), under a caption with the
    run's path, k, images, accuracy and state (and, for an autocast run, a line saying so)."""
    esc = html.escape
    rows = []
    for name in run.layers:
        attrs = run.layer_attrs(name)
        shape = [int(s) for s in attrs.get("shape", run.layer_shape(name))]
        later = ["yes" if stored else "-" for stored in (run.has_array(name, "patches"), run.has_importance(name),
                                                          run.has_unit_effects(name))]
        rows.append(f"<tr><td style='text-align:left'>{esc(name)}</td><td>{esc(str(attrs.get('kind', '')))}</td>"
                    f"<td>{shape[0]}</td><td>{esc(shape_text({**attrs, 'shape': shape}))}</td>"
                    + "".join(f"<td>{v}</td>" for v in later) + "</tr>")
    caption = (f"<b>sketchmine run</b> {esc(str(run.path))}<br>k={run.k} · {run.images_done} images · "
               + (f"accuracy {esc(accuracy_text(run))} · " if run.complete else "") + esc(state(run)))
    note = precision_note(run)
    if note:
        caption += f"<br><span class='sketchmine-precision'>{esc(note)}</span>"
    head = "".join(f"<th>{c}</th>" for c in ("layer", "kind", "units", "shape", "pictures", "importance", "effects"))
    return (f"<table class='sketchmine-run'><caption style='text-align:left'>{caption}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


GAP = 2
"""Pixels of grey between a strip's tiles (black-ground sketches side by side read as one)."""


def png_data_url(tiles: np.ndarray, height: int = THUMB) -> str:
    """(k, h, w, ch) uint8 tiles side by side, GAP grey pixels apart, as a PNG data URL, `height`
    pixels high at most."""
    k, h, w, ch = tiles.shape
    scale = max(1.0, h / height)  # the gap as wide once the strip is shrunk
    gap = int(round(GAP * scale))
    strip = np.full((h, k * w + (k - 1) * gap, ch), 128, np.uint8)
    for i in range(k):
        strip[:, i * (w + gap):i * (w + gap) + w] = tiles[i]
    im = Image.fromarray(strip[..., 0] if ch == 1 else strip)
    if im.height > height:
        im = im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class UnitCard:
    """One unit of one mined layer: its top-k images (value, class, file), its top classes ranked
    by the unit's mean image maximum over ALL images (class statistics; not `Run.top_classes`,
    which ranks a layer's classes by their count among its units' top-k images) and, once
    `visualize` has run, its patches and deconvolutions. Displays inline in a notebook
    (`_repr_html_`); `repr` is a text summary that says which ranking each list is."""

    def __init__(self, run: Run, layer: str, unit: int) -> None:
        self.run, self.layer, self.unit = run, run.check_layer(layer), run.check_unit(layer, unit)

    @property
    def top(self) -> pd.DataFrame:
        """The unit's top-k, best first (rank index; value, class, accuracy, path, ...)."""
        return self.run.unit_classes(self.layer, self.unit)

    @property
    def output_class(self) -> str | None:
        """The class this unit scores, where the layer's units are the classes (the logits, the
        softmax), as the report's card and `sketchmine unit` name it; else None."""
        classes = class_units(self.run, self.layer)
        return None if classes is None else classes[self.unit]

    @property
    def max_activation(self) -> float:
        """The unit's largest activation over the images mined (NaN before any image)."""
        values, index, _ = self.run.topk(self.layer)
        return float(values[self.unit, 0]) if index[self.unit, 0] >= 0 else float("nan")

    def top_classes(self, n: int = TOP_CLASSES) -> pd.DataFrame | None:
        """The `n` classes with the highest mean image maximum of this unit over ALL labelled images
        (columns mean, images; attrs["ranked_by"] says so), not by count among the top-k as
        `Run.top_classes` ranks a layer's classes; classes without an image (a partial run's not
        reached yet) are not ranked: attrs["no_images"] names them. None when the run has no
        class statistics."""
        from sketchmine.results.checks import check_count

        n = check_count(n)
        try:
            mean, count = self.run.class_stats(self.layer)
        except SketchmineError as exc:
            unless_damaged(exc)
            return None
        df = pd.DataFrame({"mean": mean[self.unit], "images": count[self.unit]},
                          index=pd.Index(self.run.class_names[:mean.shape[1]], name="class"))
        empty = list(df.index[df["images"] == 0])
        df = df[df["images"] > 0].sort_values("mean", ascending=False, kind="stable").head(n)
        df.attrs["ranked_by"], df.attrs["no_images"] = ranked_by(self.run), empty
        return df

    def pictures(self) -> dict[str, str]:
        """{"patches": data URL, "deconv": data URL} of what `visualize` stored for this unit."""
        run, name, u = self.run, self.layer, self.unit
        if u >= run.patches_done(name):
            return {}
        ok = int((run.topk(name)[1][u] >= 0).sum())
        out = {"patches": png_data_url(run.layer_array(name, "patches", slice(u, u + 1))[0][:ok])}
        if run.has_array(name, "deconv"):
            out["deconv"] = png_data_url(run.layer_array(name, "deconv", slice(u, u + 1))[0][:ok])
        return out

    def _not_yet(self) -> str | None:
        """What a card of a run with nothing committed yet says in place of its lists (every
        reading of its layers is refused until the first checkpoint: `repr` raised it)."""
        return None if self.run.images_done or self.run.complete else not_yet(self.run)

    def __repr__(self) -> str:
        if why := self._not_yet():
            return f"<sketchmine.UnitCard {self.layer}[{self.unit}] of {str(self.run.path)!r}: {why}>"
        top = self.top
        classes = ", ".join("?" if pd.isna(c) else f"{c}" for c in top["class"].tolist())
        best = self.top_classes()
        ranked = "" if best is None else f"; top classes by {ranked_by(self.run)}: {', '.join(map(str, best.index))}"
        partial = "" if self.run.complete else f"PARTIAL ({self.run.images_done} images so far), "
        named = "" if (cls := self.output_class) is None else f" ({cls})"
        return (f"<sketchmine.UnitCard {self.layer}[{self.unit}]{named} of {str(self.run.path)!r}: {partial}"
                f"{precision_text(self.run)}max activation {self.max_activation:.4g}{ranked}; classes of its "
                f"top-{len(top)} images, best first: {classes}>")

    def importance(self) -> str | None:
        """"rank 3 of 96 (tied with 2 units): prob. drop 0.7310 pt, accuracy drop 1.50 pt" where
        the layer's importance is stored, as the report's card writes it; else None."""
        if not self.run.has_importance(self.layer):
            return None
        df = self.run.unit_importance(self.layer)
        place, row = importance_store.ranks(df)[self.unit], df.loc[self.unit]
        return (f"rank {rank_text(place['rank'], place['tied'], len(df))}: prob. drop {points(float(row['prob_drop']))} pt, "
                f"accuracy drop {percents([float(row['acc_drop'])])[0]} pt")  # as the importance table's column

    def _pictures_hint(self) -> tuple[str, str, str]:
        """(command, Python call, what they add) for a unit without pictures: with the --method the
        layer's pictures were made with (another is refused), patches alone for an ONNX run's."""
        have = self.run.layer_attrs(self.layer).get(schema.VISUALIZED) or {}
        method = str(have.get("method") or default_method(self.run))
        given = f", method={method!r}" if method != default_method(self.run) else ""
        what = "patches" if method == schema.PATCHES_ONLY else f"patches and {signal_words(self.run, self.layer)['name']}"
        return pictures_command(self.run, self.layer), f"sketchmine.visualize(run, [{self.layer!r}]{given})", what

    def _repr_html_(self) -> str:
        esc = html.escape
        if why := self._not_yet():
            return f"<p><b>{esc(self.layer)}[{self.unit}]</b> of {esc(str(self.run.path))}: {esc(why)}</p>"
        top = self.top
        # the maximum and the values in one column's decimals, as the report's card ("1.204" over "1.100", not "1.1")
        shown = column([self.max_activation, *top["value"].tolist()])
        partial = "" if self.run.complete else f" · <b>PARTIAL</b> ({self.run.images_done} images so far)"
        named = "" if (cls := self.output_class) is None else f" · {esc(cls)}"  # as the report's card
        parts = [f"<div class='sketchmine-unit'><b>{esc(self.layer)}</b> unit {self.unit}{named} · max activation "
                 f"{shown[0]} · {esc(str(self.run.path))}{partial}"]
        if (imp := self.importance()) is not None:
            parts.append(f"<div>importance {esc(imp)}</div>")
        if (note := precision_note(self.run)) is not None:
            parts.append(f"<div class='sketchmine-precision'>{esc(note)}</div>")
        pics = self.pictures()
        # the signal named by the layer's --method: guided backpropagation is no deconvolution
        for key, title in (("patches", "top-k patches"), ("deconv", signal_words(self.run, self.layer)["name"])):
            if key in pics:
                parts.append(f"<div>{title}<br><img src='{pics[key]}' alt='{title}' style='height:{THUMB}px;image-rendering:pixelated'></div>")
        if not pics:
            cli, call, what = self._pictures_hint()
            parts.append(f"<div><i>no pictures stored for this unit: run <code>{esc(cli)}</code> (or <code>{esc(call)}"
                         f"</code>) to add its {esc(what)}</i></div>")
        rows = "".join(f"<tr><td>{r + 1}</td><td>{v}</td><td>{'?' if pd.isna(row['class']) else esc(str(row['class']))}</td>"
                       f"<td>{a}</td><td style='text-align:left'>{esc(str(row['path']))}</td></tr>"
                       for (r, row), v, a in zip(top.iterrows(), shown[1:], percents(top["accuracy"].tolist())))
        parts.append(f"<table><caption>top-{self.run.k} images</caption><thead><tr><th>rank</th><th>value</th>"
                     f"<th>class</th><th>class acc. %</th><th>file</th></tr></thead><tbody>{rows}</tbody></table>")
        classes = self.top_classes()
        if classes is not None:
            crow = "".join(f"<tr><td style='text-align:left'>{esc(str(c))}</td><td>{m}</td>"
                           f"<td>{int(r['images'])}</td></tr>" for (c, r), m in zip(classes.iterrows(), column(classes["mean"].tolist())))
            parts.append(f"<table><caption>top classes by {esc(ranked_by(self.run))}</caption><thead><tr>"
                         f"<th>class</th><th>mean</th><th>images</th></tr></thead><tbody>{crow}</tbody></table>")
        return "".join(parts) + "</div>"
