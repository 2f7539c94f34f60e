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
from sketchmine.store.io import put_all, put_rows

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
    create_array(data=...) gives it; arrays not replaced stay as they were."""
    root = tmp_path_factory.mktemp("put_all")
    got = zarr.open_group(str(root / "bulk.zarr"), mode="w")
    want = zarr.open_group(str(root / "zarr.zarr"), mode="w")
    got.create_group("layers/x.1").attrs["kept"] = 1  # an existing parent group keeps its attributes
    for batch in (first, second):
        put_all(got, batch)
        for key, arr in batch.items():
            want.create_array(key, data=arr, chunks=tuple(max(n, 1) for n in arr.shape), overwrite=True,
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
