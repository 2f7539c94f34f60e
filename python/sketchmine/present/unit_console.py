"""`sketchmine unit RUN LAYER UNIT`: one unit's dashboard as rich tables, or as one JSON object
(`--json`), both from `results.unit_summary` (the same numbers the report's unit page shows).
Sections the run lacks are listed with how to add them."""
from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.table import Table

from sketchmine.present.console import safe, titled
from sketchmine.present.json_out import print_json
from sketchmine.results.effects import class_units
from sketchmine.results.importance_store import rank_text
from sketchmine.results.numbers import column, enough, percent, percents, points, shape_text, significant
from sketchmine.results.run import open_run
from sketchmine.results.unit_summary import LayerSummary, activation_text, maxima_text


def _f(v: float | str | None, fmt: str = ".4g") -> str:
    """A value as text: "-" for none (NaN), "inf" / "-inf" as such (`LayerSummary.unit(u, infinities=True)`);
    a `g` spec never rounds to a whole number the value is not (0.99986 is not "1")."""
    return "-" if v is None else v if isinstance(v, str) else significant(v, fmt) if fmt.endswith("g") else format(v, fmt)


def _pct(v: float | None) -> str:
    return percent(v, 2)


def overview_table(d: dict[str, Any], shape: str | None = None, cls: str | None = None) -> Table:
    """Key facts: shape (`shape`: as `numbers.shape_text` writes it; else d's), precision
    (autocast runs), maximum, receptive field, mean, firing density, importance; `cls`: the class
    an output layer's unit is (`effects.class_units`), named in the title as cards name it."""
    named = f" · {safe(cls)}" if cls else ""
    partial = "" if d["complete"] else "  (PARTIAL run)"
    t = titled(f"{safe(d['layer'])} · unit {d['unit']} of {d['units']}{named}{partial}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    rf = d["receptive_field"]
    rows = [("kind, output", f"{safe(d['kind'])}, {shape or '×'.join(map(str, d['shape']))}"),
            ("images mined", str(d["images"]))]
    if d.get("precision", "float32") != "float32":  # an autocast run: its values are not float32's
        rows.append(("computed in", safe(d["precision"])))
    shown = maxima_text(d)
    rows += [("max activation", shown[0]),
            ("receptive field", f"{'up to ' if d.get('receptive_field_varies') else ''}{rf[0]}×{rf[1]} px"
             if rf else "no receptive field recorded")]
    m = d["moments"]
    if m is not None:
        rows += [("mean of image maxima", shown[1]),
                 ("firing density", f"{_pct(m['density'])} %" + ("" if m["images"] is None else
                                                                 f" ({m['firing']} of {m['images']} images > 0)"))]
    imp = d["importance"]
    if imp is not None:
        rows += [("importance rank", rank_text(imp["rank"], imp["tied"], d["units"])),
                 ("prob. drop / accuracy drop", f"{points(imp.get('prob_drop'))} pt / {percents([imp.get('acc_drop')])[0]} pt")]
    for k, v in rows:
        t.add_row(k, v)
    return t


def images_table(title: str, entries: list[dict[str, Any]], values: list[str] | None = None) -> Table:
    """Ranked images: value, image index, class, class accuracy, path; `values`: the entries'
    values as the view writes them (`activation_text`), else as a column of their own."""
    t = titled(title)
    for col in ("rank", "value", "image", "class", "acc. %", "path"):  # a narrow terminal folds the path: it names the file
        t.add_column(col, justify="right" if col in ("rank", "value", "image", "acc. %") else "left",
                     overflow="fold" if col == "path" else "ellipsis")
    accuracy = percents([e["accuracy"] for e in entries])  # one column, one count of decimals ("100.00" beside "98.50")
    for e, v, a in zip(entries, values or column([e["value"] for e in entries]), accuracy):
        t.add_row(str(e["rank"] + 1), v, str(e["image_index"]), safe(e["class"] or "?"), a, safe(e["path"]))
    return t


def distribution_table(d: dict[str, Any]) -> Table:
    """Quantiles of the unit's image maxima: the sketch's estimates, within 1.5 % (docs/analysis.md),
    as the title says (three near the top may read alike: "0.9921")."""
    q = d["quantiles"]
    t = titled("quantiles of the image maxima (within 1.5 %)", min_width=32)  # one row per quantile: nine columns cut exponents at 80 columns
    t.add_column("quantile", justify="right")
    t.add_column("value", justify="right", no_wrap=True)
    bounds = q.get("bound") or [None] * len(q["values"])
    for p, v, b in zip(q["q"], maxima_text(d)[2:], bounds):
        t.add_row(f"{p * 100:g} %", v if b is None else (f"< {_f(b, '.3g')}" if b > 0 else f"> {_f(b, '.3g')}"))
    return t


def bounds_note(d: dict[str, Any]) -> str | None:
    """What "< b" means in the quantile table, when a quantile has only its bound: a line of its
    own (as the table's caption it was folded into the narrow table's width)."""
    if not any(b is not None for b in d["quantiles"].get("bound") or []):
        return None  # the sketch keeps 16 octaves below the maximum
    return ("< b / > b: below the sketch's resolution (16 octaves under the largest value of that sign, or a "
            "float32 subnormal), only the bound is known, not the value")


def bins_table(d: dict[str, Any]) -> Table:
    """Example images per activation bin, lowest bin first."""
    t = titled("examples at every level (images per activation bin)")
    for col in ("bin", "range", "images (class)"):
        t.add_column(col, justify="right" if col == "bin" else "left")
    held = [b["bin"] for b in d["bins"] if b["examples"]]
    # the grid's empty bins below the minimum and above the maximum left out
    shown = [b for b in d["bins"] if held and held[0] <= b["bin"] <= held[-1]]
    p = enough([float(x) for b in shown for x in (b["lo"], b["hi"]) if x is not None])  # edges never read alike
    for b in shown:
        rng = "-" if b["lo"] is None else " … ".join(x if isinstance(x, str) else format(x, f".{p}g")
                                                       for x in (b["lo"], b["hi"]))
        ex = ", ".join(f"{e['image_index']} ({safe(e['class'] or '?')})" for e in b["examples"]) or "(none)"
        t.add_row(str(b["bin"]), rng, ex)
    return t


def classes_table(d: dict[str, Any]) -> Table:
    """Classes the unit prefers (among its top-k; by mean over all images) and pushes (effects)."""
    t = titled("classes")
    heads, cols = [], []
    if d["classes_top"] is not None:
        off = d.get("classes_top_unlabelled") or 0
        heads.append(f"among the top {len(d['top'])} (count, acc. %)" if not off else
                     f"among the {len(d['top']) - off} labelled of the top {len(d['top'])} (count, acc. %)")
        cols.append([f"{safe(c['class'])} {c['count']} ({_pct(c['accuracy'])})" for c in d["classes_top"]])
    if d["class_means"] is not None:
        heads.append("highest mean maximum (mean)")
        means = activation_text(d)["class_means"]  # as the maximum above: one column
        cols.append([f"{safe(c['class'])} ({m})" for c, m in zip(d["class_means"], means)])
    if d["effects"] is not None:
        prob = d["effects"]["kind"] != "logit"  # a probability's change in pt, as the drops above
        heads += [f"pushed up ({'pt' if prob else 'logit'})", f"pushed down ({'pt' if prob else 'logit'})"]
        for side in ("up", "down"):
            vs = [c["effect"] for c in d["effects"][side]]
            by = [points(v, sign=True) for v in vs] if prob else \
                [("+" if v > 0 else "") + x for v, x in zip(vs, column(vs, 3))]
            cols.append([f"{safe(c['class'])} {b}" for c, b in zip(d["effects"][side], by)])
    for h in heads:
        t.add_column(h)
    if d["effects"] is not None and not d["effects"]["up"] and not d["effects"]["down"]:
        cols[-2] = ["(none: zeroing it leaves every class's mean unchanged)"]  # two empty columns said nothing
    for i in range(max(map(len, cols), default=0)):
        t.add_row(*[c[i] if i < len(c) else "" for c in cols])
    return t


def correlated_table(d: dict[str, Any]) -> Table:
    t = titled("most correlated units (image maxima)")
    t.add_column("unit", justify="right")
    t.add_column("r", justify="right")
    for c, r in zip(d["correlated"], column([c["r"] for c in d["correlated"]], 3)):
        t.add_row(str(c["unit"]), r)
    return t


def print_unit(run_path: str | os.PathLike, layer: str, unit: int, console: Console, as_json: bool = False) -> None:
    """Print one unit's dashboard (tables, or one JSON object on stdout)."""
    run = open_run(run_path)
    summary = LayerSummary(run, layer)
    if as_json:  # JSON has no infinities: "inf" / "-inf", as the report's data (null says "no value")
        print_json(summary.unit(unit, infinities=True))
        return
    d = summary.unit(unit, infinities=True)
    classes = class_units(run, layer)
    console.print(overview_table(d, shape_text(run.layer_attrs(layer)), classes[unit] if classes else None))
    if d["quantiles"] is not None:
        console.print(distribution_table(d))
        if note := bounds_note(d):
            console.print(note)
    shown = activation_text(d)  # the least-activating value as the 0 % quantile: one column
    console.print(images_table(f"top {len(d['top'])} images", d["top"], shown["top"]))
    if d["bottom"] is not None:
        console.print(images_table(f"bottom {len(d['bottom'])} images (least activating)", d["bottom"], shown["bottom"]))
    if d["bins"] is not None:
        console.print(bins_table(d))
    if d["classes_top"] is not None or d["class_means"] is not None or d["effects"] is not None:
        console.print(classes_table(d))
    if d["correlated"]:
        console.print(correlated_table(d))
    elif d["correlated"] is not None:  # why none, in a line: a constant (dead) unit has no correlation
        console.print(f"most correlated units (image maxima): {d['correlated_none'] or '(none)'}", markup=False)
    grouped: dict[str, list[str]] = {}  # one line for the sections one reason leaves out (a run without distributions)
    for section, why in d["missing"].items():
        grouped.setdefault(why, []).append(section.replace("_", " "))
    for why, sections in grouped.items():
        console.print(f"[yellow]no {', '.join(sections)}:[/] {safe(why)}", soft_wrap=True)  # commands copy whole
