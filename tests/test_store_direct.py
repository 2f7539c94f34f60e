"""store.direct writes whole arrays into a local store's files itself: they must be the files,
byte for byte, that Zarr's own path (create_hierarchy + setitem) writes, and read back equal."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sketchmine.store import io as store_io
from sketchmine.store.columns import Columns
from sketchmine.store import direct

DTYPES = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_, np.uint32]
NAMES = ["values", "image_index", "yx", "sub/counts", "sub/deeper/edges", "eval_like"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _nodes(arrays: dict) -> dict:
    return {k: store_io._metadata(a, store_io.schema.dimension_names(k, a.ndim)) for k, a in arrays.items()}


def _direct(group: zarr.Group, arrays: dict) -> bool:
    """The direct path alone: whether it takes `arrays`, and their files when it does."""
    jobs = direct.plan(group, arrays, _nodes(arrays))
    for job in jobs or []:
        direct.write(job)
    return jobs is not None


@st.composite
def arrays_to_write(draw) -> dict:
    out: dict = {}
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True)):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
        kind = draw(st.sampled_from(["random", "fill", "negzero", "nan"]))
        arr = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True)))
        if kind == "fill":
            arr = np.zeros(shape, dtype)  # all fill value: Zarr writes no chunk
        elif kind == "negzero" and dtype.kind == "f":
            arr = np.full(shape, -0.0, dtype)  # not the fill 0.0 bit for bit: Zarr writes it
        elif kind == "nan" and dtype.kind == "f":
            arr = np.full(shape, np.nan, dtype)
        out[name] = arr
    if draw(st.booleans()):  # a mostly-fill table written by its data columns
        rows, k = draw(st.integers(1, 4)), draw(st.sampled_from([1, 5, 64, 100, 150]))
        picked = draw(st.sets(st.integers(0, k - 1), max_size=min(k, 6))) | {k - 1}  # the edge block padded
        at = np.array(sorted(picked), dtype=np.int64)
        fill = draw(st.sampled_from([np.nan, 0.0]))
        values = draw(hnp.arrays(np.float32, (rows, len(at)), elements=st.floats(-5, 5, width=32)))
        out["table"] = Columns((rows, k), fill, at, values)
    return out


@settings(max_examples=60, deadline=None)
@given(arrays_to_write(), st.booleans())
def test_direct_files_are_zarrs_files(arrays: dict, nested_group: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(tmp) / "direct.zarr", Path(tmp) / "zarr.zarr"]
        groups = []
        for root in roots:
            g = zarr.open_group(root, mode="w")
            groups.append(g.create_group("layers").create_group("conv") if nested_group else g)
        assert _direct(groups[0], arrays)
        store_io._put_with_zarr(groups[1], arrays, _nodes(arrays))  # Zarr's own path
        direct, reference = _tree(roots[0]), _tree(roots[1])
        assert direct.keys() == reference.keys()
        for name in direct:
            assert direct[name] == reference[name], name
        reread = zarr.open_group(roots[0], mode="r")
        base = "layers/conv/" if nested_group else ""
        for k, a in arrays.items():
            np.testing.assert_array_equal(reread[base + k][...], np.asarray(a))


def test_direct_replaces_an_array_and_declines_other_stores(tmp_path: Path) -> None:
    g = zarr.open_group(tmp_path / "r.zarr", mode="w")
    first = {"a": np.arange(12, dtype=np.float32).reshape(3, 4) + 1}
    store_io.put_all(g, first)
    second = {"a": np.arange(6, dtype=np.int64).reshape(2, 3) - 7}
    store_io.put_all(g, second)
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "r.zarr", mode="r")["a"][...], second["a"])
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    assert not _direct(memory, second)  # not a local store: Zarr's path writes it
    assert not _direct(g, {"s": np.array(["a", "bc"])})


def test_bulk_writer_writes_every_part_on_either_path(tmp_path: Path) -> None:
    parts = [{"a": np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5},
             {"b/c": np.arange(4, dtype=np.int64) - 2, "t": Columns((2, 70), np.nan, np.array([3, 69]),
                                                                     np.array([[1, 2], [3, 4]], np.float32))},
             {}]
    for group in (zarr.open_group(tmp_path / "r.zarr", mode="w"), zarr.open_group(zarr.storage.MemoryStore(), mode="w")):
        with store_io.BulkWriter(group) as writer:
            for part in parts:
                writer.put(part)
        for part in parts:
            for k, a in part.items():
                np.testing.assert_array_equal(group[k][...], np.asarray(a))


def test_one_text_array_sends_no_other_through_zarr(tmp_path: Path) -> None:
    """A text array in the first part (mine's `output` names) sent every later part of the run's
    final arrays through Zarr's own path, 0.35-0.45 s more a `mine` call of AlexNet at finish; now
    only the text array goes there, the rest to store.direct, every array read back as put."""
    g = zarr.open_group(tmp_path / "r.zarr", mode="w")
    parts = [{"names": np.array(["cat", "dög"]), "acc": np.array([0.25, 0.5])},
             {"layers/l/values": np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5}]
    with store_io.BulkWriter(g) as writer:
        for part in parts:
            writer.put(part)
        assert sorted(writer._to_zarr) == ["names"]
    for part in parts:
        for k, a in part.items():
            np.testing.assert_array_equal(zarr.open_group(tmp_path / "r.zarr", mode="r")[k][...], a)


@pytest.mark.parametrize("name", ["blocked", "blocked/x"])
def test_bulk_writer_raises_a_failed_write(tmp_path: Path, name: str) -> None:
    """A file where an array's folder (written on a thread) or its parent group goes."""
    g = zarr.open_group(tmp_path / "r.zarr", mode="w")
    (tmp_path / "r.zarr" / "blocked").write_text("not a folder")
    with pytest.raises(OSError), store_io.BulkWriter(g) as writer:
        writer.put({"ok": np.ones(3, np.float32), name: np.ones(3, np.float32)})
