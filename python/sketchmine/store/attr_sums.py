"""Checksums of a complete run's attributes: the root's, eval/'s (the overall accuracy) and each
layer group's (shape, kind, receptive field) as they were when the run was completed.

Attributes are JSON a reader takes as given once it parses and has the right form (attrs.py); a
damaged digit in one (an accuracy of 0.9715 for 0.9705, a receptive field's offset) would be a
wrong number read silently. The arrays' checksums (checksums.py) cannot cover them, and they live
in the files they describe, so they are summed from the attributes as they read back from disk,
after the commit that completes the run, and recorded in the root attribute `attribute_sums`:
{node: {key: "xxh3_128:..."}}, one sum per attribute (so a changed one is named), for "" (the
root: every key but the progress and this record), "eval" and "layers/<name>". Keys a later pass
adds to those (visualize's claim) are not covered; one a pass replaces keeps its value
(RunStore.reset_blocks). A group a later pass writes whole records its own (groups.py). A run completed before this record, or killed between its completion
and this record, is read as before, unverified, until `mine` is run on it again (which records it).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash

from sketchmine.errors import RunDamaged
from sketchmine.store import schema, verify
from sketchmine.store.checksums import PREFIX

ROOT = ""
SKIPPED = frozenset({schema.PROGRESS, schema.ATTRIBUTE_SUMS})
"""Root keys not covered: the progress (rewritten by each commit) and the record itself."""


def value_sum(value: Any) -> str:
    """xxh3-128 of one attribute's value as canonical JSON (sorted keys: the order Zarr writes an
    object's keys in does not matter; a key recorded and now missing sums as null)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return PREFIX + xxhash.xxh3_128(text.encode()).hexdigest()


def entry(attrs: Mapping[str, Any], skipped: frozenset[str] = frozenset()) -> dict[str, str]:
    """{key: value_sum} of every attribute of one node but `skipped`: a changed one is named."""
    return {key: value_sum(attrs[key]) for key in sorted(attrs) if key not in skipped}


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


def differing(want: Any, attrs: Mapping[str, Any]) -> list[str] | None:
    """The keys of `attrs` whose sums are not those `want` records ({key: sum}), None where `want`
    does not parse: what the run's record, a group's and a claim's are each checked by."""
    if not (isinstance(want, dict) and all(isinstance(v, str) for v in want.values())):
        return None
    return [key for key, want_sum in want.items() if value_sum(attrs.get(key)) != want_sum]


def named(keys: list[str]) -> str:
    """Changed keys as a message names them (the first four)."""
    return ", ".join(repr(key) for key in keys[:4]) + (", …" if len(keys) > 4 else "")


def check(path: Path, root: Mapping[str, Any], node: str, attrs: Mapping[str, Any]) -> None:
    """Refuse the attributes `attrs` of `node` ("" for the root) where the run recorded others,
    naming the changed ones."""
    sums = root.get(schema.ATTRIBUTE_SUMS)
    if sums is None:
        return  # completed before this record existed, or not complete yet
    want = sums.get(node) if isinstance(sums, dict) else None
    if want is None and isinstance(sums, dict) and node not in sums:
        return  # a node the record does not cover
    where = "the root" if node == ROOT else node
    changed = differing(want, attrs)
    if changed is None:
        raise RunDamaged(f"run {path} is damaged: its record of the attribute sums of {where} does not parse; "
                         "mine it again with a new --out")
    if changed:
        raise RunDamaged(f"run {path} is damaged: attribute{'s' * (len(changed) > 1)} {named(changed)} of {where} "
                         f"{'are' if len(changed) > 1 else 'is'} not as recorded when the run was completed; "
                         "mine it again with a new --out")


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


def sealed(claim: Mapping[str, Any]) -> dict[str, Any]:
    """A later pass's claim on a layer (`visualized`, `optimized`: method, patch size, units done,
    ...) with the sums of its own fields under ATTRIBUTE_SUMS, so that one edited is refused by
    `check_claim`: the run's record, made when mining completed, cannot cover what a pass adds
    later. The array checksums in the claim are left out (they check themselves)."""
    return {**claim, schema.ATTRIBUTE_SUMS: entry(claim, CLAIM_SKIPPED)}


CLAIM_SKIPPED = frozenset({schema.ATTRIBUTE_SUMS, verify.SUMS})


def check_claim(path: Path, layer: str, name: str, claim: Mapping[str, Any]) -> None:
    """Refuse the claim `name` of `layer` whose fields differ from the sums `sealed` put in it;
    a claim written before those sums is read as it is."""
    want = claim.get(schema.ATTRIBUTE_SUMS)
    if want is None:
        return
    where = f"the {name!r} attribute of layers/{layer}"
    changed = differing(want, claim)
    if changed is None:
        raise RunDamaged(f"run {path} is damaged: the record of the sums of {where} does not parse; "
                         "run the pass that wrote it again")
    changed += sorted(set(claim) - set(want) - CLAIM_SKIPPED)  # a field added since: not as written either
    if changed:
        raise RunDamaged(f"run {path} is damaged: field{'s' * (len(changed) > 1)} {named(changed)} of {where} "
                         f"{'are' if len(changed) > 1 else 'is'} not as the pass wrote "
                         f"{'them' if len(changed) > 1 else 'it'}; run the pass that wrote it again")


CLAIMS = (schema.VISUALIZED, schema.OPTIMIZED)
"""The claims later passes add to a layer's attributes, each sealed by its pass."""


def check_claims(path: Path, layer: str, attrs: Mapping[str, Any]) -> None:
    """`check_claim` for each claim of CLAIMS the layer's attributes `attrs` hold."""
    for name in CLAIMS:
        if isinstance(attrs.get(name), dict):
            check_claim(path, layer, name, attrs[name])
