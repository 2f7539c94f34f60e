"""Whole arrays written straight into a local Zarr store's files, the bytes Zarr would write.

Why: a run's final write is ~170 small arrays (AlexNet), and Zarr's asynchronous path costs
~1.5 ms of event-loop work per array (a task per file, a thread hop per write) against ~0.5 ms
of file-system work: 0.25-0.6 s of a 768-image run's ~0.7 s finish (issue 20). Here each array
is its metadata document (Zarr's own serialisation of the metadata `io._metadata` builds), and
its chunks encoded by the codecs that metadata names, skipped where Zarr skips them (a chunk
equal to the fill value everywhere, by Zarr's own test). tests/test_store_direct.py checks the
files are byte for byte those Zarr writes. Anything else — another store, codec, key encoding
or dtype — `plan` declines, and the caller (io.BulkWriter) takes Zarr's path.
Chunk keys are Zarr's default encoding with either separator (the schema's is ".": no folders).

Files are written in place, not through a temporary name as Zarr does: every caller writes where
no reader looks until a later commit (a checkpoint's free slot, a group staged under another name
and renamed into place, a run's final arrays before the commit that marks it complete), and a
crash before that commit leaves the committed state, which the next run rewrites over.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import NDBuffer
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV3Metadata

from sketchmine.store.columns import Columns

WORKERS = 2
"""Threads encoding and writing: zstd and file writes release the GIL; more did not help on
2 cores (0.13 s vs 0.12 s for AlexNet's final arrays with 4)."""

_GROUP_DOC = GroupMetadata(zarr_format=3).to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
_DOCS: dict[int, tuple[ArrayV3Metadata, bytes, Zstd | None, str | None]] = {}


def _document(meta: ArrayV3Metadata) -> tuple[bytes, Zstd | None, str | None]:
    """(zarr.json bytes, zstd codec or None, the separator of Zarr's default chunk keys or None
    for another encoding) of `meta`, kept per metadata object (io._metadata reuses them;
    serialising one costs ~0.3 ms)."""
    hit = _DOCS.get(id(meta))
    if hit is None or hit[0] is not meta:
        doc: dict[str, Any] = dict(meta.to_dict())
        key = doc["chunk_key_encoding"]
        sep = key.get("configuration", {}).get("separator", "/") if key.get("name") == "default" else None
        text = meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
        hit = _DOCS[id(meta)] = (meta, text, _compressor(doc["codecs"]), sep if sep in ("/", ".") else None)
    return hit[1], hit[2], hit[3]


def _root(group: zarr.Group) -> Path | None:
    store = group.store
    if not isinstance(store, zarr.storage.LocalStore) or store.read_only:
        return None
    return Path(store.root)


def _compressor(chain: list[dict[str, Any]]) -> Zstd | None:
    """The zstd codec of a [bytes (little-endian or none), zstd] chain; None for any other."""
    if len(chain) != 2 or chain[0]["name"] != "bytes" or chain[1]["name"] != "zstd":
        return None
    endian = chain[0].get("configuration", {}).get("endian", "little")
    if endian != "little" or sys.byteorder != "little":
        return None
    conf = chain[1].get("configuration", {})
    return Zstd(level=int(conf.get("level", 0)), checksum=bool(conf.get("checksum", False)))


def _chunks(arr: np.ndarray | Columns, sep: str) -> list[tuple[str, np.ndarray]]:
    """(chunk key, whole chunk) of each chunk holding data: the array as one chunk, or a
    `Columns`' data blocks, an edge block padded with the fill as Zarr pads it; Zarr's default
    keys with separator `sep`."""
    if isinstance(arr, Columns):
        width = arr.chunks()[1]
        out = []
        for cols, block in arr.chunk_blocks():
            if block.shape[1] < width:
                block = np.concatenate([block, np.full((block.shape[0], width - block.shape[1]), arr.fill, arr.dtype)], 1)
            out.append((sep.join(("c", "0", str(cols.start // width))), block))
        return out
    return [(sep.join(["c"] + ["0"] * arr.ndim), arr)]


Job = tuple[Path, Any, ArrayV3Metadata, bytes, Zstd, str]
"""One array's write: (its folder, data, metadata, metadata document, zstd codec, chunk key separator)."""


def plan(group: zarr.Group, arrays: dict[str, np.ndarray | Columns], metadata: dict[str, ArrayV3Metadata]
         ) -> list[Job] | None:
    """The writes of `arrays` (path relative to `group` -> its data, with `metadata[path]`) as
    whole arrays, replacing any there, once their missing parent groups are created; None
    (nothing done) when the store, a codec chain or a dtype is not one this writes as Zarr would."""
    root = _root(group)
    if root is None or zarr.config.get("array.write_empty_chunks"):
        return None
    base = root / group.path if group.path else root
    jobs: list[Job] = []
    for name, arr in arrays.items():
        meta = metadata[name]
        doc, zstd, sep = _document(meta)
        if zstd is None or sep is None or arr.dtype.kind not in "biuf" or arr.dtype.byteorder not in "=<|":
            return None
        jobs.append((base / name, arr, meta, doc, zstd, sep))
    for name in arrays:  # parents first, in order, before threads write into them
        parent = (base / name).parent
        missing = []
        while parent != base and not (parent / "zarr.json").exists():
            missing.append(parent)
            parent = parent.parent
        for p in reversed(missing):
            p.mkdir(parents=True, exist_ok=True)
            (p / "zarr.json").write_bytes(_GROUP_DOC)
    return jobs


def write(job: Job) -> None:
    """One planned array's files."""
    where, arr, meta, doc, zstd, sep = job
    if where.exists():
        shutil.rmtree(where)  # Zarr's overwrite: the array there before (ours: the same path)
    where.mkdir(parents=True)
    (where / "zarr.json").write_bytes(doc)
    if 0 in arr.shape:
        return
    for key, chunk in _chunks(arr, sep):
        chunk = np.ascontiguousarray(chunk)
        if NDBuffer.from_numpy_array(chunk).all_equal(meta.fill_value):
            continue  # Zarr writes no chunk that is all fill value (write_empty_chunks off)
        path = where / key
        if sep == "/":
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstd.encode(chunk))
