"""Groups written as a unit: a later pass's multi-array result on a layer (importance, traces)
replaces the previous one whole, or not at all. Used by `store.RunStore.write_group/read_group`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from sketchmine.store import schema
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
        group.update_attributes({**attrs, schema.COMPLETE: True})
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


def read_unit(root: zarr.Group, path: str, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(arrays `keys`, attributes) of a group `write_unit` wrote, or None when it is absent or
    incomplete (no marker, an array missing or unreadable, arrays of different shapes). A
    write killed between its two renames left the earlier group as `<path>.old`: read there."""
    try:
        try:
            group = root[path]
        except KeyError:
            group = root[f"{path}.old"]
        attrs = dict(group.attrs)
        if attrs.get(schema.COMPLETE) is not True:
            return None
        arrays = {key: np.asarray(group[key][...]) for key in keys}
    except Exception:
        return None
    if len({arr.shape for arr in arrays.values()}) > 1:
        return None
    return arrays, attrs
