"""The dashboards' page data made compact: what many units of a page share is written once.

A unit's dashboard (`LayerSummary.unit`) names about 130 images (top-k, bottom-k, up to 6 per
activation bin), each with its path, class, label and class accuracy, and repeats the layer's
constants and the notes on what the run lacks. Over every layer of a ResNet-50 that made the
dashboards most of the report (about 10 kB a unit, 1 kB of it notes). Each page script is now

    sketchmineUnit.shared(p, {"layer": {...}, "notes": {...}, "images": {...}, "classes": {...}});
    sketchmineUnit.page(p, [unit, ...]);

and unit.js puts every unit back as `LayerSummary.unit` gave it before drawing it: an entry keeps
its rank, image_index, value, position and slot; its path and label come from `images`, its
class and accuracy from `classes` (a bin's examples that fill its slots in order are written as
their image indices alone); a note shared by the page's units is `notes[section]`, the unit's own
`missing[section]` then "" (the section is still listed as missing).

The shared object holds no list, so every "[" or "]" in it is inside a string and is written
escaped: the unit list stays the one JSON array of the script (readers slice it out).
"""
from __future__ import annotations

from typing import Any

from sketchmine.present.report_data import to_js

LAYER_KEYS = ("layer", "units", "kind", "images", "complete", "precision", "k", "unreadable", "signal")
"""Keys every unit of a layer has with one value (the shape and receptive field stay per unit:
they are lists, and the shared object holds none)."""
IMAGE_KEYS = ("path", "class", "label", "accuracy")
"""What an entry says of its image (`LayerSummary.image`): read from the shared tables."""
ENTRY_SETS = ("top", "bottom")


def _entry(e: dict[str, Any], images: dict[str, Any], classes: dict[str, Any]) -> dict[str, Any]:
    """e without its image's path, class, label and accuracy, which go into the tables."""
    i = str(e["image_index"])
    images.setdefault(i, {"path": e["path"], "label": e["label"]})
    if e["label"] is not None:
        classes.setdefault(str(e["label"]), {"class": e["class"], "accuracy": e["accuracy"]})
    return {k: v for k, v in e.items() if k not in IMAGE_KEYS}


def _examples(examples: list[dict[str, Any]], images: dict[str, Any], classes: dict[str, Any]) -> list[Any]:
    """A bin's examples: where they fill its slots in order (as they do), each its image index alone
    (the slot is its place); else each an entry with its slot."""
    entries = [_entry(e, images, classes) for e in examples]
    if all(e.get("slot") == j and set(e) == {"image_index", "slot"} for j, e in enumerate(entries)):
        return [e["image_index"] for e in entries]
    return entries


def compact(units: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(shared, units) of one page of dashboards; the dicts given are not changed."""
    images: dict[str, Any] = {}
    classes: dict[str, Any] = {}
    layer = {k: units[0][k] for k in LAYER_KEYS if k in units[0]} if units else {}
    layer = {k: v for k, v in layer.items() if all(u.get(k, v) == v and k in u for u in units)}
    texts: dict[str, set[str]] = {}
    for u in units:
        for section, why in u["missing"].items():
            texts.setdefault(section, set()).add(why)
    notes = {s: next(iter(t)) for s, t in texts.items() if len(t) == 1}
    out = []
    for u in units:
        d = {k: v for k, v in u.items() if k not in layer}
        for key in ENTRY_SETS:
            if d.get(key) is not None:
                d[key] = [_entry(e, images, classes) for e in d[key]]
        if d.get("bins") is not None:
            d["bins"] = [{**b, "examples": _examples(b["examples"], images, classes)} for b in d["bins"]]
        d["missing"] = {s: "" if s in notes else why for s, why in u["missing"].items()}
        out.append(d)
    return {"layer": layer, "notes": notes, "images": images, "classes": classes}, out


def _no_list(obj: Any) -> None:
    if isinstance(obj, (list, tuple)):
        raise ValueError("the dashboards' shared object holds a list: its brackets would not be escaped")
    if isinstance(obj, dict):
        for v in obj.values():
            _no_list(v)


def shared_js(obj: dict[str, Any]) -> str:
    """The shared object as a JavaScript literal: `to_js`'s JSON (no "<": nothing can close a tag)
    with, as it holds no list, "[" and "]" (all inside strings) escaped."""
    _no_list(obj)
    return to_js(obj).replace("[", "\\u005b").replace("]", "\\u005d")
