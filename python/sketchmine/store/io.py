"""Zarr writes in bulk: many whole arrays, or rows of several arrays, in one event-loop call.

Zarr's per-call overhead (a round trip to its loop thread, ~3 ms per created array) dominated
a run's fixed cost; these helpers batch it away. Only the store modules use them.
"""
from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr
from zarr.api.asynchronous import create_hierarchy
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync

from sketchmine.errors import SketchmineFailure
from sketchmine.store import direct, schema
from sketchmine.store.checksums import block_sums, digest
from sketchmine.store.columns import Columns

_TEMPLATES: dict[str, dict[str, Any]] = {}
_METADATA: dict[tuple[Any, ...], ArrayV3Metadata] = {}


def _metadata(arr: np.ndarray | Columns, dims: tuple[str, ...]) -> ArrayV3Metadata:
    """The metadata `create_array(data=arr, dimension_names=dims)` would write (Zarr's default
    codecs for the dtype; the schema's chunk keys), as one chunk (a `Columns`: by column blocks,
    with its fill value).
    Built from a per-dtype template instead of Zarr's creation path, which costs ~2 ms per
    array, and kept per (dtype, shape, dims, chunks, fill, separator): metadata objects are immutable."""
    columns = isinstance(arr, Columns)
    chunks = arr.chunks() if columns else tuple(max(n, 1) for n in arr.shape)
    fill = arr.fill if columns else None
    key = (arr.dtype.str, tuple(arr.shape), dims, chunks, repr(fill), schema.CHUNK_KEY_ENCODING["separator"])
    if key not in _METADATA:
        if arr.dtype.str not in _TEMPLATES:
            probe = zarr.create_array(zarr.storage.MemoryStore(), shape=(1,), dtype=arr.dtype)
            _TEMPLATES[arr.dtype.str] = probe.metadata.to_dict()
        doc = copy.deepcopy(_TEMPLATES[arr.dtype.str])
        doc["shape"] = list(arr.shape)
        doc["chunk_grid"]["configuration"]["chunk_shape"] = list(chunks)
        doc["dimension_names"] = list(dims)
        doc["chunk_key_encoding"] = {"name": schema.CHUNK_KEY_ENCODING["name"],
                                     "configuration": {"separator": schema.CHUNK_KEY_ENCODING["separator"]}}
        if columns:
            doc["fill_value"] = fill
        _METADATA[key] = ArrayV3Metadata.from_dict(doc)
    return _METADATA[key]


async def create_nodes(group: zarr.Group, nodes: dict[str, GroupMetadata | ArrayV3Metadata]) -> dict[str, Any]:
    """Create `nodes` (paths relative to `group`) concurrently, replacing any there; returns the
    created async nodes by the same relative paths."""
    base = f"{group.path}/" if group.path else ""
    made = {path: node async for path, node in
            create_hierarchy(store=group.store, nodes={base + k: v for k, v in nodes.items()}, overwrite=True)}
    return {k: made[base + k] for k in nodes}


def put_all(group: zarr.Group, arrays: dict[str, np.ndarray | Columns], at: str | None = None) -> None:
    """Each of `arrays` as the whole array at its path under `group`, one chunk, replacing an
    earlier one (see BulkWriter)."""
    with BulkWriter(group, at) as writer:
        writer.put(arrays)


class BulkWriter:
    """Whole arrays written as they come, in parts (a pass's statistics' results one after the
    other): on a local store each part's files are written on threads (store.direct) while the
    caller computes the next part; elsewhere every part goes to Zarr in one event-loop call on
    leaving the block (Zarr's per-call overhead, ~3 ms an array, was ten times the file I/O).
    Leaving the block waits for every write and raises the first error. The arrays must not
    change after `put`. `at`: the group's path in the run when opened on its own."""

    def __init__(self, group: zarr.Group, at: str | None = None) -> None:
        self.group = group
        where = group.path if at is None else at
        self._base = f"{where}/" if where else ""
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[Future[None]] = []
        self._to_zarr: dict[str, np.ndarray | Columns] = {}
        self._to_zarr_nodes: dict[str, ArrayV3Metadata] = {}

    def put(self, arrays: Mapping[str, np.ndarray | Columns]) -> None:
        arrays = dict(arrays)
        if not arrays:
            return
        nodes = {k: _metadata(a, schema.dimension_names(self._base + k, a.ndim)) for k, a in arrays.items()}
        jobs = None if self._to_zarr else direct.plan(self.group, arrays, nodes)
        if jobs is None:
            self._to_zarr.update(arrays)
            self._to_zarr_nodes.update(nodes)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(direct.WORKERS, thread_name_prefix="sketchmine-write")
        self._writes += [self._pool.submit(direct.write, job) for job in jobs]

    def __enter__(self) -> BulkWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        try:
            for f in self._writes:
                if kind is None:
                    f.result()
                else:
                    f.cancel()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        if kind is None and self._to_zarr:
            _put_with_zarr(self.group, self._to_zarr, self._to_zarr_nodes)


def _put_with_zarr(group: zarr.Group, arrays: dict[str, np.ndarray | Columns],
                   nodes: dict[str, ArrayV3Metadata]) -> None:
    """`arrays` through Zarr's own path, in one event-loop call (nodes: their metadata)."""

    def writes(made: dict[str, Any]) -> list[Any]:
        out = []
        for k, a in arrays.items():
            if isinstance(a, Columns):  # only the data columns: the other chunks stay unwritten (fill)
                out += [made[k].setitem((slice(None), cols), block) for cols, block in a.chunk_blocks()]
            else:
                out.append(made[k].setitem(..., a))
        return out

    async def write() -> None:
        made = await create_nodes(group, nodes)
        await asyncio.gather(*writes(made))

    sync(write())


def put_rows(arrays: dict[str, zarr.Array], rows: slice, values: dict[str, np.ndarray]) -> None:
    """values[k] into arrays[k][rows] for every k, in one event-loop call (one Zarr call per
    array costs a round trip to Zarr's loop thread each, more than these small writes)."""
    async def write() -> None:
        await asyncio.gather(*(arrays[k].async_array.setitem(rows, v) for k, v in values.items()))

    sync(write())


def new_array(group: zarr.Group, path: str, shape: tuple[int, ...], rows: int) -> zarr.Array:
    """Create the per-image array `path` (a key of schema.ARRAYS) under the root `group`, with the
    dtype, fill value and chunking the schema declares (`rows`: the run's row chunk)."""
    spec = schema.ARRAYS[path]
    parent, _, name = path.rpartition("/")
    extra = {} if spec.fill_value is None else {"fill_value": spec.fill_value}
    return (group[parent] if parent else group).create_array(
        name, shape=shape, dtype=spec.dtype, chunks=spec.chunks(shape, rows), chunk_key_encoding=schema.CHUNK_KEY_ENCODING,
        dimension_names=schema.dimension_names(path, len(shape)), **extra)


def lay_out_run(group: zarr.Group, attrs: dict[str, Any], n_images: int, class_names: list[str],
                path_of: Callable[[int], str], labels: np.ndarray | None, row_chunk: int | None) -> None:
    """A new run's skeleton in the empty root `group`: the dataset/, eval/ and layers/ groups,
    labels (when known), paths and class names with their checksums, and the root attributes
    (`attrs` plus the schema version, row chunk and an empty progress)."""
    for name in (schema.DATASET, schema.EVAL, schema.LAYERS):
        group.create_group(name)
    rows = min(max(n_images, 1), row_chunk or schema.ROW_CHUNK)
    lab = new_array(group, schema.LABELS, (n_images,), rows)
    if labels is not None:
        lab[:] = labels
    pa = new_array(group, schema.PATHS, (n_images,), rows)
    pc = new_array(group, schema.IMAGE_COORD, (n_images,), rows)
    path_sums = []
    for start in range(0, n_images, rows):  # a chunk at a time: flat memory for any size
        stop = min(start + rows, n_images)
        block = np.array([path_of(i) for i in range(start, stop)], dtype=str)
        put_rows({"p": pa, "c": pc}, slice(start, stop), {"p": block, "c": block})
        path_sums.append(digest(block))
    cn = new_array(group, schema.CLASS_NAMES, (len(class_names),), rows)
    cc = new_array(group, schema.CLASS_COORD, (len(class_names),), rows)
    names = np.array(class_names, dtype=str)
    if class_names:
        put_rows({"n": cn, "c": cc}, slice(0, len(names)), {"n": names, "c": names})
    sums = {schema.PATHS: {"rows": rows, "sums": path_sums}, schema.CLASS_NAMES: block_sums(names)}
    group.update_attributes({**attrs, schema.VERSION_ATTR: schema.SCHEMA_VERSION, schema.ROW_CHUNK_ATTR: rows,
                             schema.CHECKSUMS: sums,
                             schema.PROGRESS: {"images_done": 0, "slot": None, "complete": False, "updated": time.time()}})


def io_errors(method: Callable) -> Callable:
    """A failed write (disk full, directory made read-only, quota) becomes a clear error; the
    committed state is untouched, so re-running the same command resumes from it."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise SketchmineFailure(
                f"cannot write to {self.path}: {exc.strerror or exc}; nothing committed is lost — "
                "make room (or make it writable) and re-run the same command to resume") from None

    return wrapper
