"""What differs between the images a run was mined on and the dataset given to resume it, said
by file: the run records each image's path and label and the class names, so a resume refused
for "dataset" names the images gone, new or filed under another class, or those whose bytes
changed (a folder's run keeps each file's digest; one made before it says only that some did)."""
from __future__ import annotations

from typing import Any

import numpy as np

from sketchmine.data.dataset import MinerDataset
from sketchmine.errors import SketchmineError
from sketchmine.store.runstore import RunStore
from sketchmine.store.schema import CLASS_NAMES, DIGESTS, LABELS, PATHS

SHOWN = 3
"""Paths named per kind of difference; the count says how many more."""


def names_as_stored(ds: Any) -> list[str]:
    """The class names `ds` gives as the run stores them (RunStore.create: b'cat' is 'cat'); [] for
    a dataset that names none."""
    given = list(getattr(ds, "class_names", None) or [])
    return [str(c) for c in np.array(given, dtype=str)] if given else []


def images_otherwise(current: RunStore, ds: Any) -> str | None:
    """The dataset's difference from the run's recorded images, in words; None where it cannot
    be told (the run's records unreadable, a dataset whose images have no paths of their own)."""
    if not isinstance(ds, MinerDataset) or type(ds).path is MinerDataset.path:  # "#i": no file to name
        return None
    try:
        was_paths = [str(p) for p in current.read(PATHS)]
        was_labels = np.asarray(current.read(LABELS), dtype=np.int64)
        was_names = [str(c) for c in current.read(CLASS_NAMES)]
    except (SketchmineError, OSError, KeyError):
        return None
    paths = [ds.path(i) for i in range(len(ds))]
    labels = ds.labels()
    names = names_as_stored(ds) or was_names
    said = []
    if names != was_names:
        gone, new = [c for c in was_names if c not in names], [c for c in names if c not in was_names]
        said.append(f"classes: {_listed(gone, new)}" if gone or new else "the same classes in another order")
    before, now = set(was_paths), set(paths)
    gone, new = [p for p in was_paths if p not in now], [p for p in paths if p not in before]
    if gone or new:
        said.append(f"images: {_listed(gone, new)}")
    elif paths != was_paths:
        said.append("the same images in another order")
    elif labels is not None and len(labels) == len(was_labels):
        moved = [p for p, a, b in zip(paths, was_labels, labels) if _class(a, was_names) != _class(b, names)]
        if moved:
            said.append(f"{len(moved):,} image(s) under another class ({_first(moved)})")
    if said:
        return "; ".join(said)
    hashed = ds.content_digests()
    try:
        kept = [str(d) for d in current.read(DIGESTS)] if hashed is not None and current.has(DIGESTS) else None
    except (SketchmineError, OSError):
        kept = None
    if kept is not None and hashed is not None and len(kept) == len(hashed):
        changed = [p for p, a, b in zip(paths, kept, hashed) if a != b]
        if changed:
            return f"the content of {len(changed):,} image(s) changed since the run was made ({_first(changed)})"
    return (f"the same {len(paths):,} images under the same classes, but the content of at least one changed since the "
            "run was made (the fingerprint hashes every file's bytes; which file is not recorded)")


def _class(label: int, names: list[str]) -> str | int:
    return names[label] if 0 <= label < len(names) else int(label)


def _listed(gone: list[str], new: list[str]) -> str:
    return ", ".join(f"{len(xs):,} {what} ({_first(xs)})" for what, xs in (("gone", gone), ("new", new)) if xs)


def _first(paths: list[str]) -> str:
    more = f", … {len(paths) - SHOWN:,} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more
