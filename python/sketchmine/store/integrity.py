"""Every checksum a run recorded, checked at once (`sketchmine verify`, `verify_run`): whether
a run copied, synced or restored from a backup holds what was written, before a reader meets a
damaged file. Readers check what they read; this reads everything, a piece at a time (flat
memory for a dataset's logits or pictures), and lists every damaged array instead of stopping
at the first."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from sketchmine.errors import RunDamaged, RunUnreadable, SketchmineError
from sketchmine.store import attr_sums, schema, verify
from sketchmine.store.access import run_unreadable
from sketchmine.store.groups import check_attrs, read_unit
from sketchmine.store.runstore import RunStore

_STAGED = (".writing", ".old")
"""Suffixes of a group being replaced (store/groups.py): read through the group's own path."""


@dataclass
class Verified:
    """What `verify_run` found. `checked`: arrays read whole and matching their checksums;
    `damaged`: array or node path → why; `unchecked`: arrays the run holds with no checksum
    (a partial run's per-image rows and results until it finishes, a run written before
    their checksums were recorded); `note`: the checkpoint of a partial run."""

    run: Path
    complete: bool
    images_done: int
    checked: list[str] = field(default_factory=list)
    nbytes: int = 0
    damaged: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run), "complete": self.complete, "images_done": self.images_done,
                "checked": len(self.checked), "bytes": self.nbytes, "damaged": dict(self.damaged),
                "unchecked": list(self.unchecked), "note": self.note}


def verify_run(path: str | os.PathLike, tries: int = 4) -> Verified:
    """Read every array of the run at `path` that has recorded checksums (a complete run's final
    arrays, visualize's pictures a block of units at a time, every later pass's groups; a partial
    run's committed checkpoint) and parse every node's metadata. Never raises for damage found
    inside the run: it is listed in `damaged` (a run whose root attributes do not parse is refused,
    as `open_run` refuses it). Damage found while the run's files changed (`visualize --redo`
    resets a layer's pictures as it goes, a pass replaces its group) is checked again: what
    another process rewrites is not damage; `tries` times, then "retry"."""
    for attempt in range(tries):
        before = _files(Path(path))
        try:
            out = _verify(path)
        except KeyError:  # a node removed during the walk: rewritten by another process
            out = None
        if out is not None and (not out.damaged or _files(Path(path)) == before):
            return out
        time.sleep(0.1 * (attempt + 1))
    raise SketchmineError(f"run {path} is being rewritten by another process (its files changed during each of "
                          f"{tries} checks); verify it when that process has finished")


def _files(run: Path) -> list[tuple[str, int, int]]:
    """(path, modification time, size) of every file and folder of the run: what changes when
    another process rewrites any of it (Zarr renames each file it writes into place)."""
    found = []
    for folder, names, files in os.walk(run):
        for name in (*names, *files):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            found.append((os.path.join(folder, name), st.st_mtime_ns, st.st_size))
    return sorted(found)


def _verify(path: str | os.PathLike) -> Verified:
    store = RunStore.open(path)
    out = store.committed(lambda: _state(store))
    arrays, groups = _nodes(store, out)
    covered = _final(store, arrays, out) | _blocks(store, arrays, out) | _groups(store, arrays, groups, out)
    out.unchecked = sorted(set(arrays) - covered - set(out.damaged))
    root = store.attrs
    recorded = [node for node in root.get(schema.ATTRIBUTE_SUMS) or {} if node != attr_sums.ROOT]
    layers = {schema.layer_group(layer): layer for layer in root.get(schema.LAYER_NAMES) or []}
    nodes = {node: _attrs(store, node) for node in {*recorded, *layers}}  # each group's attributes read once
    for node, why in attr_sums.damaged(store.path, root, {node: nodes[node] for node in recorded}).items():
        out.damaged.setdefault(node, why)  # a group whose metadata does not parse is listed as such
    for node in layers:  # `mine` and every reader refuse such a run (a partial run's group holds no arrays)
        if nodes[node] is None:
            out.damaged.setdefault(node, "is listed as a layer of the run but has no group (its zarr.json is missing)")
    for node, layer in layers.items():  # what later passes claimed, sealed by them
        if node in out.damaged:
            continue
        try:
            attr_sums.check_claims(store.path, layer, nodes[node] or {})
        except RunDamaged as exc:
            out.damaged[node] = str(exc).split("; run the pass", 1)[0]
    return out


def _attrs(store: RunStore, node: str) -> dict[str, Any] | None:
    """The attributes of the group at `node`, None where it is missing or does not parse."""
    try:
        return dict(verify.node(store.group, node, store.path).attrs)
    except RunUnreadable:
        raise
    except (KeyError, RunDamaged):
        return None


def _state(store: RunStore) -> Verified:
    """The run's committed state and, for a partial run, whether its committed checkpoint is intact
    (`RunStore.checkpoint`: its checksums). The checkpoint is mining's, not a result: its free slot
    is rewritten at every flush (a kill mid-flush leaves it half written, a run being mined
    rewrites it while it is read) and a complete run drops both; neither is damage. A read during
    which the writer committed again is repeated (`committed`): the slot it read may be the
    one the writer is rewriting."""
    progress = store.progress
    out = Verified(store.path, bool(progress.get("complete")), int(progress.get("images_done", 0)))
    if out.complete:
        if (store.path / schema.CHECKPOINT).exists():  # mining's last step (dropping it) was cut short
            out.note = (f"complete run; the checkpoint its mining left ({schema.CHECKPOINT}/) is not a result: the same "
                        "`sketchmine mine` command removes it")
        return out
    slot, done, _ = store.checkpoint()
    committed = progress.get("slot")
    if slot != committed and store.progress_on_disk() != progress:
        raise SketchmineError(f"{store.path}: the run moved on to a newer commit while its checkpoint was read")
    out.note = ("partial run: no checkpoint committed yet (`sketchmine mine` starts from the first image)"
                if committed is None and not out.images_done else
                f"partial run: its committed checkpoint (image {done}) is intact" if slot == committed else
                f"partial run: its newest checkpoint (image {out.images_done}) is damaged or incomplete; "
                f"`sketchmine mine` resumes from image {done}")
    return out


def _nodes(store: RunStore, out: Verified) -> tuple[dict[str, zarr.Array], dict[str, zarr.Group]]:
    """Every array and group of the run by path (the checkpoint's aside: `_state`), each one's
    metadata parsed (else damaged). os.walk: a folder a writer removes during the walk is skipped."""
    arrays: dict[str, zarr.Array] = {}
    groups: dict[str, zarr.Group] = {}
    found = []

    def unlisted(exc: OSError) -> None:  # a folder this user may not list: its arrays are not "missing"
        if denied := run_unreadable(store.path, exc):
            raise denied

    for folder, names, files in os.walk(store.path, onerror=unlisted):
        if Path(folder) == store.path and schema.CHECKPOINT in names:
            names.remove(schema.CHECKPOINT)
        if "zarr.json" in files:
            found.append(Path(folder).relative_to(store.path).as_posix())
    for rel in sorted(found):
        if rel == "." or any(part.endswith(_STAGED) for part in rel.split("/")):
            continue
        parent = rel.rpartition("/")[0]
        if parent and not (store.path / parent / "zarr.json").is_file():
            out.damaged.setdefault(parent, "has lost its metadata (zarr.json)")
            continue
        try:
            node = verify.node(store.group, rel, store.path)
        except RunDamaged as exc:
            out.damaged[rel] = _why(exc, rel)
            continue
        (arrays if isinstance(node, zarr.Array) else groups)[rel] = node  # type: ignore[index]
    return arrays, groups


def _why(exc: SketchmineError, name: str) -> str:
    """The part of a RunDamaged message that says what is wrong with `name`; a file this user may
    not read (RunUnreadable) stops the check instead: everything after it would be listed too."""
    if isinstance(exc, RunUnreadable):
        raise exc
    text = str(exc)
    for marker in (f"array {name!r} ", f"the metadata of {name!r} "):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    return text.split("; restore the run's files", 1)[0]


def _final(store: RunStore, arrays: dict[str, zarr.Array], out: Verified) -> set[str]:
    """The arrays in the root `checksums` (a complete run's final arrays; paths and class names)."""
    done = set()
    for name, entry in (store.attrs.get(schema.CHECKSUMS) or {}).items():
        done.add(name)
        if name in out.damaged:
            continue
        if name not in arrays:
            out.damaged[name] = "is missing (the run recorded its checksums)"
            continue
        try:
            out.nbytes += store.verify_array(name, entry)
            out.checked.append(name)
        except RunDamaged as exc:
            out.damaged[name] = _why(exc, name)
    return done


def _blocks(store: RunStore, arrays: dict[str, zarr.Array], out: Verified) -> set[str]:
    """visualize's and feature visualisation's arrays, a recorded block of units at a time."""
    done = set()
    for name, arr in arrays.items():
        entry = verify.block_entry(store.group, name)
        if entry is None or name in out.damaged:
            continue
        done.add(name)
        step, stop = int(entry["rows"]), min(int(entry.get("stop", arr.shape[0])), arr.shape[0])
        try:
            for start in range(0, stop, step):
                out.nbytes += verify.read_blocks(arr, entry, start, min(start + step, stop), name, store.path).nbytes
            out.checked.append(name)
        except RunDamaged as exc:
            out.damaged[name] = _why(exc, name)
    return done


def _groups(store: RunStore, arrays: dict[str, zarr.Array], groups: dict[str, zarr.Group], out: Verified) -> set[str]:
    """The groups written as a unit (importance, effects, traces, pictures of examples), whole."""
    done: set[str] = set()
    for path, group in groups.items():
        if group.attrs.get(schema.COMPLETE) is not True:
            continue
        keys = [name.rpartition("/")[2] for name in arrays if name.rpartition("/")[0] == path]
        sums = group.attrs.get(verify.SUMS)
        if not isinstance(sums, dict):
            continue  # written before groups recorded checksums: unchecked
        keys += sorted(set(sums) - set(keys))  # what the group was written with and no longer holds: damaged
        try:
            check_attrs(dict(group.attrs), path, store.path)
        except RunDamaged as exc:  # its arrays cannot be read either: the group is named once
            out.damaged[path] = _why(exc, path)
            done.update(f"{path}/{key}" for key in keys)
            continue
        for key in keys:  # one at a time: a group's arrays may differ in shape (pictures and their boxes)
            name = f"{path}/{key}"
            done.add(name)
            try:
                read = read_unit(store.group, path, (key,), store.path)
            except RunDamaged as exc:
                out.damaged[name] = _why(exc, name)
                continue
            if read is not None:
                out.nbytes += read[0][key].nbytes
                out.checked.append(name)
    return done
