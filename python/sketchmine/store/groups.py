"""Groups written as a unit: a later pass's multi-array result on a layer (importance, traces)
replaces the previous one whole, or not at all. Used by `store.RunStore.write_group/read_group`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from sketchmine.errors import RunDamaged
from sketchmine.store import attr_sums, schema, verify
from sketchmine.store.io import put_all


def write_unit(root: Path, path: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Replace the group at `path` under the run folder `root` by `arrays` (one chunk each) and
    `attrs`: written into the sibling `<path>.writing` with the marker attribute
    schema.COMPLETE last, then renamed into place. An interrupted write leaves only that sibling
    (removed by the next write), so readers see the previous group or the new one, never part
    of one. The caller holds the RunLock."""
    target = root / path
    staging = target.with_name(target.name + ".writing")
    old = target.with_name(target.name + ".old")
    if old.is_dir() and not target.exists():  # killed between the two renames: the earlier group back first
        os.rename(old, target)
    for leftover in (staging, old):  # ours, by name, from an interrupted write
        if leftover.is_dir():
            shutil.rmtree(leftover)
    try:
        group = zarr.open_group(str(staging), mode="w")
        put_all(group, arrays, at=path)
        group.update_attributes({**attrs, verify.SUMS: verify.group_sums(arrays)})
        # the sums of the attributes as the files hold them (a numpy number is written as JSON's)
        written = zarr.open_group(str(staging), mode="r").attrs
        group.update_attributes({schema.ATTRIBUTE_SUMS: attr_sums.entry({key: written[key] for key in attrs}),
                                 schema.COMPLETE: True})
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
    except Exception:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if old.is_dir() and target.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def read_unit(root: zarr.Group, path: str, keys: tuple[str, ...], where: Path
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(arrays `keys`, attributes) of a group `write_unit` wrote, or None when it is absent or
    incomplete (no marker, an array missing, arrays of different shapes). A write killed
    between its two renames left the earlier group as `<path>.old`: read there. A whole group
    (its marker set) whose metadata does not parse, or whose arrays do not match the checksums
    recorded with it, is damaged: a SketchmineError naming the array (`where`: the run);
    groups written before those checksums are read as they are (unreadable: None)."""
    try:
        try:
            group = verify.node(root, path, where)
        except KeyError:
            group = verify.node(root, f"{path}.old", where)
        attrs = dict(group.attrs)
        if attrs.get(schema.COMPLETE) is not True:
            return None
        written = attrs.get(verify.SUMS)
        nodes = {}
        for key in keys:
            try:
                nodes[key] = verify.node(group, key, where, f"{path}/{key}")
            except KeyError:
                if isinstance(written, dict) and key in written:
                    # the marker is set only once every array is in place, and the checksums name
                    # them: one gone now is damage, not a result never computed
                    raise verify.damaged(where, f"{path}/{key}", "is missing (its zarr.json is gone) from a "
                                         "result written whole") from None
                raise
    except KeyError:
        if (where / path / "zarr.json").exists() or not (where / path).is_dir() or not any((where / path).iterdir()):
            return None  # absent, or not whole (an array missing)
        raise verify.damaged(where, path, "has lost its metadata (zarr.json), its arrays are there") from None
    check_attrs(attrs, path, where)
    attrs.pop(schema.ATTRIBUTE_SUMS, None)
    sums = attrs.pop(verify.SUMS, None)
    if isinstance(sums, dict):
        arrays = verify.check_group(nodes, sums, path, where)
    else:
        try:
            arrays = {key: np.asarray(arr[...]) for key, arr in nodes.items()}
        except Exception:
            return None
    if len({arr.shape for arr in arrays.values()}) > 1:
        return None
    return arrays, attrs


def check_attrs(attrs: dict[str, Any], path: str, where: Path) -> None:
    """Refuse the attributes `attrs` of the group at `path` (`where`: the run) where they differ
    from the sums recorded with them (`schema.ATTRIBUTE_SUMS`, as attr_sums.py records a complete
    run's): an importance's baseline accuracy is shown as given, so a changed digit would be read
    silently. Groups written before this record are read as they are."""
    want = attrs.get(schema.ATTRIBUTE_SUMS)
    if want is None:
        return
    changed = attr_sums.differing(want, attrs)
    if changed is None:
        raise _damaged(where, path, "holds a record of its attribute sums that does not parse")
    if changed:
        raise _damaged(where, path, f"holds attribute{'s' * (len(changed) > 1)} {attr_sums.named(changed)} "
                                    "not as written with it")


def _damaged(where: Path, path: str, what: str) -> RunDamaged:
    return RunDamaged(f"run {where} is damaged: the metadata of {path!r} {what}; restore the run's files from a "
                      "copy, or run the pass that wrote it again")
