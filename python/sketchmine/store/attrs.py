"""Validation of a run's root and layer attributes: a reader trusts them (sizes, names, the
committed progress), so an edited or damaged value is refused with what was expected."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sketchmine.errors import RunDamaged
from sketchmine.store import attr_sums, schema


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_pair(v: Any, low: int) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_int(x, low) for x in v)


_ROOT_CHECKS: dict[str, tuple[bool, str, Callable[[Any], bool]]] = {
    # key: (required, what is expected, check)
    "layer_names": (True, "a non-empty list of distinct layer names (no '/' or '..')",
                    lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) and x and "/" not in x and ".." not in x
                                                                for x in v)
                    and len(set(v)) == len(v)),
    "k": (True, "a positive integer", lambda v: _is_int(v, 1)),
    "progress": (True, "{images_done: int, slot: null|slot0|slot1, complete: bool}",
                 lambda v: isinstance(v, dict) and _is_int(v.get("images_done"), 0)
                 and v.get("slot") in (None, "slot0", "slot1") and isinstance(v.get("complete"), bool)),
    "num_classes": (False, "null or a non-negative integer", lambda v: v is None or _is_int(v, 0)),
    "dataset": (False, "an object", lambda v: isinstance(v, dict)),
    "preprocessing": (False, "null or {preset, channels, size, mean, std}",
                      lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("preset"), str)
                                              and _is_int(v.get("channels"), 1)
                                              and (v.get("size") is None or _is_pair(v.get("size"), 1))
                                              and all(isinstance(v.get(key, []), list) and
                                                      all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in v.get(key, [])) for key in ("mean", "std")))),
    "model_spec": (False, "{spec: str|null, weights: str|null}",
                   lambda v: isinstance(v, dict) and all(v.get(key) is None or isinstance(v.get(key), str)
                                                         for key in ("spec", "weights"))),
    "weights_hash": (False, "a string '<algorithm>:<hex digest>'", lambda v: isinstance(v, str) and ":" in v),
    "weights_sha256": (False, "a string", lambda v: isinstance(v, str)),  # runs before weights_hash
    "batch_size": (False, "a positive integer", lambda v: _is_int(v, 1)),
    "batch_sizes": (False, "a list of [first image, batch size] pairs", lambda v: isinstance(v, list) and all(
        isinstance(s, list) and len(s) == 2 and _is_int(s[0], 0) and _is_int(s[1], 1) for s in v)),
    "device": (False, "a device kind ('cpu', 'cuda', ...)", lambda v: isinstance(v, str) and v.isidentifier()),
    "devices": (False, "a list of [first image, device kind] pairs", lambda v: isinstance(v, list) and all(
        isinstance(s, list) and len(s) == 2 and _is_int(s[0], 0) and isinstance(s[1], str) for s in v)),
    "forward_options": (False, "{autocast: null|str, channels_last: bool, compile: bool}", lambda v: isinstance(v, dict)
                        and (v.get("autocast") is None or isinstance(v.get("autocast"), str))
                        and all(isinstance(v.get(key, False), bool) for key in ("channels_last", "compile"))),
    "model_dtype": (False, "'float16' or 'bfloat16'", lambda v: v in ("float16", "bfloat16")),
    "model_switches": (False, "an object of booleans", lambda v: isinstance(v, dict)
                       and all(isinstance(key, str) and isinstance(b, bool) for key, b in v.items())),
    "bad_images": (False, "a list of {index, path, error}", lambda v: isinstance(v, list)
                   and all(isinstance(b, dict) and _is_int(b.get("index"), 0) and isinstance(b.get("path"), str)
                           for b in v)),
    "checksums": (False, "{array path: {rows: int, sums: [str]}}", lambda v: isinstance(v, dict)
                  and all(isinstance(e, dict) and _is_int(e.get("rows"), 1) and isinstance(e.get("sums"), list)
                          and all(isinstance(x, str) for x in e["sums"]) for e in v.values())),
    "converted_images": (False, "an object of counts", lambda v: isinstance(v, dict)
                         and all(isinstance(key, str) and _is_int(n, 0) for key, n in v.items())),
}


def check_root_attrs(path: Path, attrs: dict[str, Any]) -> None:
    """Refuse a run whose root attributes a reader would trust but cannot (edited, damaged)."""
    for key, (required, expected, ok) in _ROOT_CHECKS.items():
        if key not in attrs:
            if required:
                raise RunDamaged(f"run {path} is damaged: attribute {key!r} is missing")
            continue
        if not ok(attrs[key]):
            raise RunDamaged(f"run {path} is damaged: attribute {key!r} should be {expected}, "
                             f"found {str(attrs[key])[:60]!r}")
    attr_sums.check(path, attrs, attr_sums.ROOT, attrs)


def check_layer_attrs(path: Path, layer: str, attrs: dict[str, Any], root: dict[str, Any] | None = None) -> None:
    """The per-layer attributes a reader uses: shape, kind, receptive field; against the ones
    recorded when the run was completed when `root` (its root attributes) is given."""
    shape, kind, rf = attrs.get("shape"), attrs.get("kind"), attrs.get("receptive_field")
    problems = []
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(_is_int(x, 0) for x in shape)):
        problems.append(f"'shape' should be a list of 1 to 4 sizes, found {str(shape)[:40]!r}")
    if kind is not None and not isinstance(kind, str):
        problems.append(f"'kind' should be a string, found {str(kind)[:40]!r}")
    if rf is not None and not (isinstance(rf, dict) and _is_pair(rf.get("size"), 1)
                               and _is_pair(rf.get("stride"), 0) and isinstance(rf.get("offset"), list)
                               and len(rf["offset"]) == 2 and all(_is_int(x, -10**9) for x in rf["offset"])):
        problems.append(f"'receptive_field' should be {{size, stride, offset}} pairs, found {str(rf)[:60]!r}")
    elif isinstance(rf, dict) and "spans" in rf and not _spans_fit(rf["spans"], shape, "frame" in attrs):
        problems.append("'receptive_field' 'spans' should be two lists of [first, last] pixels, one pair per unit "
                        f"row and column of the layer's {str(shape)[:40]} grid, found {str(rf['spans'])[:60]!r}")
    if problems:
        raise RunDamaged(f"run {path} is damaged: layer {layer!r} attribute " + "; ".join(problems))
    if root is not None:
        attr_sums.check(path, root, schema.layer_group(layer), attrs)
    attr_sums.check_claims(path, layer, attrs)  # what later passes added: sealed by them


def _spans_fit(spans: Any, shape: Any, framed: bool) -> bool:
    """Whether a resampled layer's `spans` (field_record.py) hold a [first, last] pair per row and per
    column of its (C, H, W) grid: visualize indexes them by each entry's position, so a short or
    malformed list would crop other pixels or fail deep in the pass. A time-stacked layer's are per
    frame: its rows are not the frame's, so only their form is checked."""
    if not (isinstance(spans, list) and len(spans) == 2 and all(
            isinstance(axis, list) and axis and all(isinstance(p, list) and len(p) == 2
                                                    and all(_is_int(x, -10**9) for x in p) for p in axis)
            for axis in spans)):
        return False
    grid = isinstance(shape, list) and len(shape) == 3 and not framed
    return not grid or [len(spans[0]), len(spans[1])] == list(shape[1:])


def root_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The root zarr.json of a folder as it says now, read as JSON (no Zarr needed), unchecked;
    {} where there is none or it cannot be read."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def root_attrs_guessed(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The root attributes of a run at `path` as its zarr.json says now, unchecked; {} where there
    is none or it cannot be read. For a guess made before the run is opened (which hash a resume's
    weights will be compared with, so they are hashed once), never for a decision."""
    attrs = root_json(path).get("attributes")
    return attrs if isinstance(attrs, dict) else {}
