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

from sketchmine.errors import SketchmineFailure, machine_fix
from sketchmine.store import direct, schema
from sketchmine.store.checksums import block_sums, digest, stored_sums
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
        _METADATA[key] = _from_template(arr.dtype.str, {"dtype": arr.dtype}, arr.shape, chunks, dims,
                                        {"fill_value": fill} if columns else {})
    return _METADATA[key]


def _from_template(name: str, create: dict[str, Any], shape: tuple[int, ...], chunks: tuple[int, ...],
                   dims: tuple[str, ...], extra: dict[str, Any]) -> ArrayV3Metadata:
    """The metadata of Zarr's create_array(**create) (made once per template `name`, in memory)
    with this shape, chunks, dimension names, the schema's chunk keys and `extra` fields."""
    if name not in _TEMPLATES:
        _TEMPLATES[name] = zarr.create_array(zarr.storage.MemoryStore(), shape=(1,), **create).metadata.to_dict()
    doc = copy.deepcopy(_TEMPLATES[name])
    doc["shape"] = list(shape)
    doc["chunk_grid"]["configuration"]["chunk_shape"] = list(chunks)
    doc["dimension_names"] = list(dims)
    doc["chunk_key_encoding"] = {"name": schema.CHUNK_KEY_ENCODING["name"],
                                 "configuration": {"separator": schema.CHUNK_KEY_ENCODING["separator"]}}
    return ArrayV3Metadata.from_dict({**doc, **extra})


async def create_nodes(group: zarr.Group, nodes: Mapping[str, GroupMetadata | ArrayV3Metadata]) -> dict[str, Any]:
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
    caller computes the next part; elsewhere, and for an array store.direct does not write (text),
    the arrays go to Zarr in one event-loop call on leaving the block (Zarr's per-call overhead,
    ~3 ms an array, was ten times the file I/O).
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
        for k, a in arrays.items():  # each on its own: one array Zarr must write (strings) sends no other there
            jobs = direct.plan(self.group, {k: a}, {k: nodes[k]})
            if jobs is None:
                self._to_zarr[k], self._to_zarr_nodes[k] = a, nodes[k]
                continue
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
    put_slices(arrays, {k: (rows, v) for k, v in values.items()})


def _row_metadata(path: str, shape: tuple[int, ...], rows: int) -> ArrayV3Metadata:
    """The metadata `create_array` writes for the per-image array `path` (a key of schema.ARRAYS:
    its dtype, fill value and chunking, `rows` the run's row chunk), built as `_metadata` builds
    whole arrays' (tests/test_store.py checks it equals Zarr's)."""
    spec = schema.ARRAYS[path]
    chunks = spec.chunks(shape, rows)
    key = ("rows", path, tuple(shape), chunks, schema.CHUNK_KEY_ENCODING["separator"])
    if key not in _METADATA:
        create = {"dtype": spec.dtype, **({} if spec.fill_value is None else {"fill_value": spec.fill_value})}
        _METADATA[key] = _from_template(f"rows:{path}", create, shape, chunks,
                                        schema.dimension_names(path, len(shape)), {})
    return _METADATA[key]


def new_arrays(group: zarr.Group, shapes: Mapping[str, tuple[int, ...]], rows: int,
               groups: Mapping[str, GroupMetadata] | None = None) -> dict[str, zarr.Array]:
    """Create the per-image arrays `shapes` (keys of schema.ARRAYS -> shape) under the root
    `group`, and the `groups` given, in one event-loop call (Zarr's create_array is a round trip
    each, ~2 ms); returns the arrays by path."""
    nodes: dict[str, GroupMetadata | ArrayV3Metadata] = dict(groups or {})
    nodes.update({path: _row_metadata(path, shape, rows) for path, shape in shapes.items()})
    made = sync(create_nodes(group, nodes))
    return {path: zarr.Array(made[path]) for path in shapes}


def lay_out_run(group: zarr.Group, attrs: dict[str, Any], n_images: int, class_names: list[str],
                path_of: Callable[[int], str], labels: np.ndarray | None, row_chunk: int | None,
                groups: Mapping[str, GroupMetadata] | None = None, digests: list[str] | None = None) -> None:
    """A new run's skeleton in the empty root `group`: the dataset/, eval/ and layers/ groups and
    `groups` (the layers' own), labels (when known), paths (and each file's content digest, when
    given) and class names with their checksums, and the root attributes (`attrs` plus the schema
    version, row chunk and an empty progress)."""
    rows = min(max(n_images, 1), row_chunk or schema.ROW_CHUNK)
    per_image = (schema.PATHS, schema.IMAGE_COORD, *((schema.DIGESTS,) if digests is not None else ()))
    made = new_arrays(group, {schema.LABELS: (n_images,), **{name: (n_images,) for name in per_image},
                              schema.CLASS_NAMES: (len(class_names),), schema.CLASS_COORD: (len(class_names),)},
                      rows, {**{name: GroupMetadata() for name in (schema.DATASET, schema.EVAL, schema.LAYERS)},
                             **(groups or {})})
    names = np.array(class_names, dtype=str)
    first: dict[str, np.ndarray] = {}  # written with the first block of paths: one call
    if class_names:
        first.update({schema.CLASS_NAMES: names, schema.CLASS_COORD: names})
    if labels is not None and n_images:
        first[schema.LABELS] = np.asarray(labels)
    path_sums, digest_sums = [], []
    for start in range(0, n_images, rows):  # a chunk at a time: flat memory for any size
        stop = min(start + rows, n_images)
        block = np.array([path_of(i) for i in range(start, stop)], dtype=str)
        if digests is not None:
            first[schema.DIGESTS] = hashed = np.array(digests[start:stop], dtype=str)
            digest_sums.append(digest(hashed))
        put_slices(made, {schema.PATHS: (slice(start, stop), block), schema.IMAGE_COORD: (slice(start, stop), block),
                           **{k: (slice(start, stop) if k == schema.DIGESTS else slice(0, len(v)), v)
                              for k, v in first.items()}})
        first = {}
        path_sums.append(digest(block))
    if first:  # no images: the class names alone
        put_slices(made, {k: (slice(0, len(v)), v) for k, v in first.items()})
    sums = {schema.PATHS: {"rows": rows, "sums": path_sums, "dtype": "str"}, schema.CLASS_NAMES: block_sums(names)}
    sums.update({schema.IMAGE_COORD: sums[schema.PATHS], schema.CLASS_COORD: sums[schema.CLASS_NAMES]})
    if digests is not None:
        sums[schema.DIGESTS] = {"rows": rows, "sums": digest_sums, "dtype": "str"}
    if labels is not None and n_images:  # as stored (its dtype): `finish` checks them against it
        sums[schema.LABELS] = stored_sums(made[schema.LABELS])
    group.update_attributes({**attrs, schema.VERSION_ATTR: schema.SCHEMA_VERSION, schema.ROW_CHUNK_ATTR: rows,
                             schema.CHECKSUMS: sums,
                             schema.PROGRESS: {"images_done": 0, "slot": None, "complete": False, "updated": time.time()}})


def put_slices(arrays: Mapping[str, zarr.Array], values: Mapping[str, tuple[slice, np.ndarray]]) -> None:
    """arrays[k][where] = v for every k: (where, v) in `values`, in one event-loop call."""
    async def write() -> None:
        await asyncio.gather(*(arrays[k].async_array.setitem(where, v) for k, (where, v) in values.items()))

    sync(write())


def io_errors(method: Callable) -> Callable:
    """A failed write (disk full, directory made read-only, quota) becomes a clear error; the
    committed state is untouched, so re-running the same command resumes from it."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""  # which folder or file refused, where known
            fix = machine_fix(exc) or "make room (or make it writable)"
            raise SketchmineFailure(
                f"cannot write to {self.path}: {exc.strerror or exc}{where}; nothing committed is lost — "
                f"{fix} and re-run the same command to resume") from None

    return wrapper
