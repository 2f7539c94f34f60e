"""The store's bulk writer against Zarr's own one-array-at-a-time path: every final array
goes through `put_all` (one event-loop call for hundreds of arrays), so what it writes must
read back, through plain Zarr, exactly as `create_array(data=...)` would have stored it."""
from __future__ import annotations

import numpy as np
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sketchmine.store import schema
from sketchmine.store.io import new_arrays, put_all, put_rows

DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])


@st.composite
def arrays(draw) -> np.ndarray:
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=7))
    elements = None if dtype is not np.float32 else st.floats(width=32, allow_nan=True, allow_infinity=True)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=25, deadline=None)
@given(first=st.dictionaries(st.sampled_from(["a", "b/c", "layers/x.1/values", "layers/x.1/yx"]), arrays(),
                             min_size=1),
       second=st.dictionaries(st.sampled_from(["a", "b/c", "layers/x.1/values"]), arrays(), min_size=1))
def testput_all_equals_zarr_create_array_and_replaces(tmp_path_factory, first, second):
    """Written, then partly replaced with other shapes and dtypes (a resumed finalize): each array
    reads back equal (NaN where NaN), with the dtype, shape, fill value and codecs Zarr's
    create_array(data=...) gives it (with the schema's chunk keys); arrays not replaced stay as they were."""
    root = tmp_path_factory.mktemp("put_all")
    got = zarr.open_group(str(root / "bulk.zarr"), mode="w")
    want = zarr.open_group(str(root / "zarr.zarr"), mode="w")
    got.create_group("layers/x.1").attrs["kept"] = 1  # an existing parent group keeps its attributes
    for batch in (first, second):
        put_all(got, batch)
        for key, arr in batch.items():
            want.create_array(key, data=arr, chunks=tuple(max(n, 1) for n in arr.shape), overwrite=True,
                              chunk_key_encoding=schema.CHUNK_KEY_ENCODING,
                              dimension_names=schema.dimension_names(key, arr.ndim))
    expected = {**first, **second}
    reopened = zarr.open_group(str(root / "bulk.zarr"), mode="r")
    assert reopened["layers/x.1"].attrs["kept"] == 1
    for key, arr in expected.items():
        a, b = reopened[key], want[key]
        np.testing.assert_array_equal(a[...], arr)
        assert (a.dtype, a.shape, a.chunks) == (b.dtype, b.shape, b.chunks), key
        assert a.metadata.to_dict() == b.metadata.to_dict(), key


def testput_all_under_a_subgroup(tmp_path):
    """Keys are relative to the group given (the checkpoint slot's case)."""
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w").create_group("_checkpoint/slot0")
    rng = np.random.default_rng(3)
    data = {"values": rng.standard_normal(40).astype(np.float32), "index": rng.integers(0, 9, 40)}
    put_all(g, data)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    for key, arr in data.items():
        np.testing.assert_array_equal(root[f"_checkpoint/slot0/{key}"][...], arr)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), width=st.integers(1, 12), rows=st.integers(1, 16))
def test_new_arrays_equal_zarr_create_array(tmp_path_factory, n, width, rows):
    """The per-image arrays made in one call (a run's layout, its first logits) have the metadata
    Zarr's create_array gives them from the schema's spec, and are usable as made."""
    root = tmp_path_factory.mktemp("new_arrays")
    got = zarr.open_group(str(root / "bulk.zarr"), mode="w")
    want = zarr.open_group(str(root / "zarr.zarr"), mode="w")
    shapes = {path: ((n, width) if path == schema.LOGITS else (n,)) for path in schema.ARRAYS}
    made = new_arrays(got, shapes, rows, {"dataset": zarr.core.group.GroupMetadata(),
                                          "eval": zarr.core.group.GroupMetadata()})
    for path, shape in shapes.items():
        spec = schema.ARRAYS[path]
        parent, _, name = path.rpartition("/")
        extra = {} if spec.fill_value is None else {"fill_value": spec.fill_value}
        b = want.require_group(parent).create_array(
            name, shape=shape, dtype=spec.dtype, chunks=spec.chunks(shape, rows), **extra,
            chunk_key_encoding=schema.CHUNK_KEY_ENCODING, dimension_names=schema.dimension_names(path, len(shape)))
        a = zarr.open_group(str(root / "bulk.zarr"), mode="r")[path]
        assert a.metadata.to_dict() == b.metadata.to_dict(), path
        assert made[path].shape == shape
    if n:
        made[schema.LABELS][:] = np.arange(n) % 7 - 1
        np.testing.assert_array_equal(zarr.open_group(str(root / "bulk.zarr"))[schema.LABELS][...], np.arange(n) % 7 - 1)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), chunk=st.integers(1, 5), data=st.data())
def test_put_rows_equals_one_slice_assignment_per_array(tmp_path_factory, rows, chunk, data):
    """`put_rows` (a visualize block's arrays in one Zarr call) writes what `arr[a:b] = v` per
    array would: across chunk boundaries, leaving the other rows as they were."""
    root = tmp_path_factory.mktemp("put_rows")
    a = data.draw(st.integers(0, rows - 1))
    b = data.draw(st.integers(a + 1, rows))
    specs = {"patches": ((rows, 3, 2), np.uint8, 0), "boxes": ((rows, 4), np.int32, -1)}
    groups = [zarr.open_group(str(root / f"{n}.zarr"), mode="w") for n in ("bulk", "plain")]
    made = [{k: g.create_array(k, shape=s, dtype=t, chunks=(chunk, *s[1:]), fill_value=f)
             for k, (s, t, f) in specs.items()} for g in groups]
    values = {k: data.draw(hnp.arrays(t, (b - a, *s[1:]))) for k, (s, t, f) in specs.items()}
    put_rows(made[0], slice(a, b), values)
    for k, v in values.items():
        made[1][k][a:b] = v
    for k in specs:
        np.testing.assert_array_equal(zarr.open_group(str(root / "bulk.zarr"))[k][...],
                                      zarr.open_group(str(root / "plain.zarr"))[k][...])
        np.testing.assert_array_equal(made[0][k][a:b], values[k])


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), k=st.integers(1, 200), dtype=st.sampled_from([np.float64, np.int64]), data=st.data())
def test_columns_write_and_checksum_the_array_they_stand_for(tmp_path_factory, rows, k, dtype, data):
    """A `Columns` (a table that is its fill value outside some columns) reads back as the whole
    array, writes only the chunks of its data columns, and its streamed checksums equal those of
    the whole array in the same blocks, so `mismatch` accepts what is read and finds a lost chunk."""
    from sketchmine.store import checksums
    from sketchmine.store.columns import COLUMN_CHUNK, Columns

    at = np.array(sorted(data.draw(st.sets(st.integers(0, k - 1), max_size=min(k, 12)))), dtype=np.int64)
    fill = np.nan if dtype is np.float64 else 0
    elements = (st.floats(-1e6, 1e6) | st.just(np.nan)) if dtype is np.float64 else st.integers(-5, 10**6)
    values = data.draw(hnp.arrays(dtype, (rows, len(at)), elements=elements))
    table = Columns((rows, k), fill, at, values)
    whole = np.full((rows, k), fill, dtype=dtype)
    whole[:, at] = values
    np.testing.assert_array_equal(np.asarray(table), whole)
    root = tmp_path_factory.mktemp("columns") / "c.zarr"
    put_all(zarr.open_group(str(root), mode="w"), {"layers/x.1/class_mean": table})
    arr = zarr.open_group(str(root), mode="r")["layers/x.1/class_mean"]
    read = arr[...]
    np.testing.assert_array_equal(read, whole)
    assert read.dtype == dtype and arr.metadata.dimension_names == ("unit", "class")
    files = [f for f in (root / "layers/x.1/class_mean").iterdir() if f.name != "zarr.json"]
    written = {int(f.name.split(".")[2]) for f in files}  # chunk keys c.0.<column block>
    data_chunks = {int(a) // COLUMN_CHUNK for a in at}
    assert written <= data_chunks  # only the data columns' chunks (Zarr skips one that is all fill)
    assert written == {j for j in data_chunks
                       if not np.array_equal(whole[:, j * COLUMN_CHUNK:(j + 1) * COLUMN_CHUNK], np.full(
                           (rows, len(range(k)[j * COLUMN_CHUNK:(j + 1) * COLUMN_CHUNK])), fill, dtype=dtype),
                           equal_nan=dtype is np.float64)}
    sums = table.block_sums()
    assert sums == checksums.block_sums(whole, sums["rows"])
    assert checksums.mismatch(read, sums, 0, len(sums["sums"]) - 1, rows) is None
    if files:
        files[0].unlink()
        lost = zarr.open_group(str(root), mode="r")["layers/x.1/class_mean"][...]
        if not np.array_equal(lost, whole, equal_nan=dtype is np.float64):  # a chunk of only fill-equal data is no loss
            assert checksums.mismatch(lost, sums, 0, len(sums["sums"]) - 1, rows) is not None


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 30), width=st.integers(1, 5), chunk=st.integers(1, 7), budget=st.integers(1, 400),
       data=st.data())
def test_stored_sums_read_in_pieces_equal_the_whole_arrays(tmp_path_factory, n, width, chunk, budget, data):
    """`stored_sums` (a complete run's logits, labels and predictions, read a piece of whole
    chunks at a time so a dataset's logits need not fit in memory) records the checksums of the
    whole array in blocks of its chunks, for any piece size."""
    from sketchmine.store import checksums

    values = data.draw(hnp.arrays(np.float32, (n, width), elements=st.floats(-1e3, 1e3, width=32) | st.just(np.nan)))
    arr = zarr.open_group(str(tmp_path_factory.mktemp("pieces") / "p.zarr"), mode="w").create_array(
        "logits", shape=(n, width), dtype=np.float32, chunks=(chunk, width))
    arr[...] = values
    pieces = checksums.pieces(arr, budget)
    assert [s.start for s in pieces] == list(range(0, max(n, 1), pieces[0].stop))
    assert pieces[0].stop % chunk == 0 and (pieces[0].stop == chunk or pieces[0].stop * width * 4 <= budget)
    assert checksums.stored_sums(arr) == checksums.block_sums(values, chunk)
    sums = {"rows": chunk, "sums": [s for p in pieces for s in checksums.block_sums(arr[p], chunk)["sums"]]}
    assert sums["sums"] == checksums.block_sums(values, chunk)["sums"]
