"""Checksums of a complete run's attributes: the root's, eval/'s (the overall accuracy) and each
layer group's (shape, kind, receptive field) as they were when the run was completed.

Attributes are JSON a reader takes as given once it parses and has the right form (attrs.py); a
damaged digit in one (an accuracy of 0.9715 for 0.9705, a receptive field's offset) would be a
wrong number read silently. The arrays' checksums (checksums.py) cannot cover them, and they live
in the files they describe, so they are summed from the attributes as they read back from disk,
after the commit that completes the run, and recorded in the root attribute `attribute_sums`:
{node: {"keys": [...], "sum": "xxh3_128:..."}} for "" (the root: every key but the progress and
this record), "eval" and "layers/<name>". Keys a later pass adds (visualize's claim) are not
covered; one a pass replaces keeps its value (RunStore.reset_blocks). A run completed before this
record, or killed between its completion and this record, is read as before: unverified.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash

from sketchmine.errors import RunDamaged
from sketchmine.store import schema

ROOT = ""
SKIPPED = frozenset({schema.PROGRESS, schema.ATTRIBUTE_SUMS})
"""Root keys not covered: the progress (rewritten by each commit) and the record itself."""


def attribute_sum(attrs: Mapping[str, Any], keys: list[str]) -> str:
    """xxh3-128 of `keys` of `attrs` as canonical JSON (sorted keys: the order Zarr writes them
    in does not matter; a key recorded and now missing sums as absent)."""
    text = json.dumps({key: attrs.get(key) for key in keys}, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "xxh3_128:" + xxhash.xxh3_128(text.encode()).hexdigest()


def entry(attrs: Mapping[str, Any], skipped: frozenset[str] = frozenset()) -> dict[str, Any]:
    keys = sorted(key for key in attrs if key not in skipped)
    return {"keys": keys, "sum": attribute_sum(attrs, keys)}


def record(root: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`attribute_sums` of a run whose root attributes are `root` and whose eval/ and layer
    groups' are `nodes` (by path), all as read back from disk."""
    return {ROOT: entry(root, SKIPPED), **{path: entry(attrs) for path, attrs in nodes.items()}}


def of_run(group: Any) -> dict[str, Any]:
    """`record` of the run whose root Zarr group, opened afresh, is `group`: its attributes as the
    files hold them now (after the completing commit)."""
    root = dict(group.attrs)
    paths = [schema.EVAL] * (schema.EVAL in group) + [schema.layer_group(n) for n in root[schema.LAYER_NAMES]]
    return record(root, {p: dict(group[p].attrs) for p in paths})


def check(path: Path, root: Mapping[str, Any], node: str, attrs: Mapping[str, Any]) -> None:
    """Refuse the attributes `attrs` of `node` ("" for the root) when the run recorded other ones."""
    sums = root.get(schema.ATTRIBUTE_SUMS)
    want = sums.get(node) if isinstance(sums, dict) else None
    if want is None:
        return  # recorded before this record existed, or not complete yet
    keys = want.get("keys") if isinstance(want, dict) else None
    if not isinstance(keys, list) or attribute_sum(attrs, keys) != want.get("sum"):
        where = "root attributes" if node == ROOT else f"attributes of {node}"
        which = ", ".join(map(str, keys)) if isinstance(keys, list) and len(keys) <= 4 else f"{len(keys or [])} keys"
        raise RunDamaged(f"run {path} is damaged: its {where} ({which}) are not those recorded when it was "
                         "completed; mine it again with a new --out")


def damaged(path: Path, root: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any] | None]) -> dict[str, str]:
    """node -> why, for every node the run recorded whose attributes differ (`sketchmine verify`;
    `nodes`: the attributes of each recorded node but the root, None where it is missing)."""
    out = {}
    sums = root.get(schema.ATTRIBUTE_SUMS)
    for node in (sums if isinstance(sums, dict) else {}):
        attrs = root if node == ROOT else nodes.get(node)
        try:
            if attrs is None:
                raise RunDamaged(f"run {path} is damaged: {node} is missing")
            check(path, root, node, attrs)
        except RunDamaged as exc:
            out[node or "(root)"] = str(exc)
    return out
