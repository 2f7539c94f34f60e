"""`--json`: what summary, compare and importance print, as one JSON document on stdout.

Scripts read these instead of parsing tables. NaN and ±inf become `null` (JSON has neither),
numpy scalars become numbers. Every command with `--json` prints through `print_json`.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError
from sketchmine.results.provenance import provenance
from sketchmine.results.run import Run
from sketchmine.results.summaries import NO_LABELS, class_sides, no_classes, not_yet, one_class_note, sides


def plain(value: Any) -> Any:
    """`value` with numpy and pandas values as JSON types; non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Index)):
        return [plain(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)  # a path


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout (the one way commands print `--json`). Where stdout's encoding
    cannot hold a character (PYTHONIOENCODING=ascii, a C locale without UTF-8 mode), JSON's own \\uXXXX
    escapes: the stream's backslash escapes (\\xe9) would make the document invalid JSON."""
    if sys.stdout is None:  # `>&-` (the CLI refuses it before any work; the API gets this, not an AttributeError)
        raise SketchmineError("standard output is closed (>&-): the result cannot be printed; redirect it to a file, "
                              "or to /dev/null to discard it")
    text = json.dumps(plain(data), indent=2, allow_nan=False, ensure_ascii=False)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(plain(data), indent=2, allow_nan=False, ensure_ascii=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def records(df: pd.DataFrame, index: str | None = None) -> list[dict[str, Any]]:
    """A DataFrame's rows as dicts; its index as the field `index` when named."""
    frame = df.reset_index(names=index) if index else df
    return [plain(r) for r in frame.to_dict(orient="records")]


def summary_data(run: Run, n: int) -> dict[str, Any]:
    """`sketchmine summary --json`: the run, the precision its numbers were computed in (and the
    forward options recorded), its accuracy, per layer its units, best activation and the `n`
    most and least frequent classes among the top-k images. One answer from one commit of a run
    being mined (`RunStore.committed`): its image count describes its numbers."""
    return run.store.committed(lambda: _summary_data(run, n))


def _summary_data(run: Run, n: int) -> dict[str, Any]:
    from sketchmine.errors import SketchmineError
    from sketchmine.results.unit_summary import infinite

    layers: list[dict[str, Any]] = []
    head = {"run": str(run.path), **provenance(run.attrs), "complete": run.complete, "precision": run.precision,
            "forward_options": run.forward_options, "batch_sizes": [list(s) for s in run.batch_sizes],
            "devices": [list(s) for s in run.devices],
            "images": run.images_done, "k": run.k, "accuracy": run.accuracy()}  # None until complete
    if not run.complete and not run.images_done:  # created, nothing committed: the layers, no numbers yet
        return {**head, "class_accuracy": [], "layers": [{"name": name, "units": run.layer_attrs(name)["shape"][0]}
                                                 for name in run.layers], "note": not_yet(run)}
    labelled = run.has_labels()
    if not labelled:  # no class to count the top-k images in: the lists are null, and the note says why
        head["note"] = no_classes(run, NO_LABELS)
    elif one := one_class_note(run):  # why the preferences, selectivities and ρ below are null
        head["note"] = one
    # where fewer than 2n classes have images each is listed once, as the tables list them (summaries.sides)
    first, last, _ = class_sides(run, n) if labelled else (0, 0, [])
    for name in run.layers:
        attrs = run.layer_attrs(name)
        peak = run.peak(name)
        best = infinite(peak) if peak is not None and math.isinf(peak) else peak  # "inf" as `unit --json`; null: none
        entry = {"name": name, "kind": attrs.get("kind"), "shape": list(attrs["shape"]), "units": attrs["shape"][0],
                 "max_activation": best, "nan_count": run.nan_total(name)}
        if not labelled:
            layers.append({**entry, "top_classes": None, "bottom_classes": None})
            continue
        top = run.top_classes(name, max(first, 1))
        bottom = run.bottom_classes(name, last) if last else None
        layers.append({
            **entry,
            "top_classes": records(top, "class"),
            "bottom_classes": [] if bottom is None else records(bottom, "class"),
            # the classes tied at each list's cut and left out (class order); every class tied: no order at all
            "tied_top": list(top.attrs["tied_out"]), "tied_bottom": [] if bottom is None else list(bottom.attrs["tied_out"]),
            "all_tied": bool(top.attrs["all_tied"]),
            # top-k entries of unlabelled images, and classes without images: left out of both lists
            "unlabelled": top.attrs.get("unlabelled", 0), "no_images": list(top.attrs.get("no_images", [])),
        })
    try:
        classes = records(run.class_accuracy(), "class") if run.complete else []
    except SketchmineError:  # no predictions (--no-logits) or no labels
        classes = []
    unbiased = _unbiased(run, n, layers)
    return {**head, "class_accuracy": classes, "ink_density": unbiased, "layers": layers}


def _unbiased(run: Run, n: int, layers: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """What `summary`'s class-statistics tables print, into each layer's entry of `layers`: the
    `n` most and least preferred classes over all images, the median selectivity and over how
    many units, Spearman ρ (and p) with class ink density and with class accuracy. Returns the
    classes' ink density; None (and nothing added) without class statistics."""
    from sketchmine.results import analysis

    if not analysis.has_class_stats(run):
        return None
    ink, acc = analysis.ink_correlation(run), analysis.accuracy_correlation(run)  # acc None: no predictions
    for entry in layers:
        name = entry["name"]
        pref, si = analysis.class_preference(run, name), analysis.selectivity(run, name)
        first, last = sides(len(pref), n)  # each class once, as `summary`'s table
        entry.update({"preference_top": records(pref.head(first), "class"),
                      "preference_bottom": records(pref.tail(last), "class") if last else [],
                      "selectivity_median": si.median() if si.notna().any() else None,
                      "selectivity_units": int(si.notna().sum()),
                      "spearman_ink": ink.loc[name, "spearman"], "p_ink": ink.loc[name, "p_value"],
                      **{f"spearman_accuracy_{m}": None if acc is None else acc.loc[name, f"spearman_{m}"]
                         for m in ("topk", "preference")}})
    return records(run.ink_density().to_frame(), "class")


def compare_data(cmp: Any) -> dict[str, Any]:
    """`sketchmine compare --json`: a `results.compare.Comparison`; "precision" says what each
    run was computed in (runs in different ones are not comparable bit for bit)."""
    oa, ob = cmp.overall
    return {"a": str(cmp.a.path), "b": str(cmp.b.path), "accuracy": {"a": oa, "b": ob}, "n": cmp.n,
            "complete": {"a": cmp.a.complete, "b": cmp.b.complete}, "images": {"a": cmp.a.images_done, "b": cmp.b.images_done},
            "unmined": cmp.unmined,
            "precision": {"a": cmp.a.precision, "b": cmp.b.precision, "same": cmp.a.precision == cmp.b.precision},
            "classes": records(cmp.accuracy, "class"), "layers": records(cmp.layers), "no_images": list(cmp.no_images)}


def importance_data(run: Run, layers: list[str], n: int) -> dict[str, Any]:
    """`sketchmine importance --json`: per layer the `n` units that matter most."""
    out = {}
    for name in layers:
        df = run.unit_importance(name)
        out[name] = {"images": df.attrs.get("images"), "base_accuracy": df.attrs.get("base_accuracy"),
                     "units": records(df.head(n))}
    return {"run": str(run.path), "layers": out}
