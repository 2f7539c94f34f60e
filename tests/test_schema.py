"""The run store's schema versions: a complete run of the released 0.1.0 (schema version 1)
reads as before; its unfinished runs and versions no release wrote are refused clearly."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import sketchmine
from sketchmine import SketchmineError
from sketchmine.store import schema

LAYERS = ["features.3", "classifier.4"]


@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, small_test_set):
    out = tmp_path_factory.mktemp("schema") / "run.zarr"
    sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=out, batch_size=100,
                    distributions=True)
    return out


def _with_attrs(src, dst, **changes):
    """A copy of the run `src` as another sketchmine wrote it: root attributes changed, and
    without the record of its attributes' checksums (released versions wrote none)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "zarr.json").read_text())
    meta["attributes"].pop(schema.ATTRIBUTE_SUMS)
    for key, value in changes.items():
        meta["attributes"][key] = value
    (dst / "zarr.json").write_text(json.dumps(meta))
    return dst


def test_complete_release_run_reads_as_before(tmp_path, mined):
    old = sketchmine.open_run(_with_attrs(mined, tmp_path / "v1.zarr", schema_version=1))
    new = sketchmine.open_run(mined)
    assert new.attrs["schema_version"] == schema.SCHEMA_VERSION
    for layer in LAYERS:
        for a, b in zip(old.topk(layer), new.topk(layer)):
            np.testing.assert_array_equal(a, b)
    assert old.class_accuracy().equals(new.class_accuracy())


def test_unfinished_release_run_is_refused_naming_the_version(tmp_path, mined):
    progress = json.loads((mined / "zarr.json").read_text())["attributes"]["progress"]
    path = _with_attrs(mined, tmp_path / "v1.zarr", schema_version=1, progress={**progress, "complete": False})
    with pytest.raises(SketchmineError, match=r"0\.1\.0 \(schema version 1\).*finish it with sketchmine 0\.1\.0"):
        sketchmine.open_run(path)


@pytest.mark.parametrize("version", [0, -3, True, "2"])
def test_versions_no_release_wrote_are_refused(tmp_path, mined, version):
    with pytest.raises(SketchmineError, match="schema version"):
        sketchmine.open_run(_with_attrs(mined, tmp_path / "odd.zarr", schema_version=version))


def test_xarray_reads_the_positions_as_data_not_as_a_coordinate(mined):
    """`yx`'s last axis is "axis": named "yx" (the array's own name), xarray made the top-k
    positions the coordinate of that dimension, left them out of the data variables and
    attached them to bottom_yx."""
    xr = pytest.importorskip("xarray")
    run = sketchmine.open_run(mined)
    tree = xr.open_datatree(str(mined), engine="zarr", consolidated=False)
    for layer in LAYERS:
        ds = tree[f"layers/{layer}"].to_dataset()
        assert "yx" in ds.data_vars and "yx" not in ds.coords and "axis" not in ds.coords
        assert ds["yx"].dims == ds["bottom_yx"].dims == ("unit", "rank", "axis")
        assert "yx" not in ds["bottom_yx"].coords
        np.testing.assert_array_equal(ds["yx"].values, run.topk(layer)[2])
        np.testing.assert_array_equal(ds["bottom_yx"].values, run.bottomk(layer)[2])
        np.testing.assert_array_equal(ds["yx"].sel(axis=1).values, run.topk(layer)[2][..., 1])
        flat = xr.open_zarr(str(mined), group=f"layers/{layer}", consolidated=False)
        assert "yx" in flat.data_vars and flat["yx"].dims == ("unit", "rank", "axis")


def test_xarray_opens_a_run_with_its_example_pictures(tmp_path, mined, small_test_set, demo_model):
    """bin_pictures hold bins × examples entries per unit (136), not k: their own dimension, or
    xarray's DataTree refuses the run as "not aligned with its parents"."""
    xr = pytest.importorskip("xarray")
    run = tmp_path / "pictured.zarr"
    shutil.copytree(mined, run)
    sketchmine.visualize(sketchmine.open_run(run), layers=["features.3"], examples="all", data=small_test_set,
                         model=demo_model.module)
    tree = xr.open_datatree(str(run), engine="zarr", consolidated=False)
    bins = tree["layers/features.3/bin_pictures"].to_dataset()
    assert bins["patches"].dims[:2] == ("unit", "bin_entry") and bins.sizes["bin_entry"] == 17 * 8
    bottom = tree["layers/features.3/bottom_pictures"].to_dataset()
    assert bottom["patches"].dims[:2] == ("unit", "rank") and bottom.sizes["rank"] == 3


def test_a_run_written_with_the_old_yx_axis_name_reads_as_before(tmp_path, mined):
    old = tmp_path / "old.zarr"
    shutil.copytree(mined, old)
    for layer in LAYERS:
        for name in ("yx", "bottom_yx"):
            meta_path = old / "layers" / layer / name / "zarr.json"
            meta = json.loads(meta_path.read_text())
            assert meta["dimension_names"] == ["unit", "rank", "axis"]
            meta["dimension_names"] = ["unit", "rank", "yx"]
            meta_path.write_text(json.dumps(meta))
    before, now = sketchmine.open_run(old), sketchmine.open_run(mined)
    for layer in LAYERS:
        for a, b in zip(before.topk(layer) + before.bottomk(layer), now.topk(layer) + now.bottomk(layer)):
            np.testing.assert_array_equal(a, b)
    xr = pytest.importorskip("xarray")
    ds = xr.open_datatree(str(old), engine="zarr", consolidated=False)[f"layers/{LAYERS[0]}"].to_dataset()
    np.testing.assert_array_equal(ds["yx"].values, now.topk(LAYERS[0])[2])  # a coordinate there, as it was


def test_xarray_labels_the_output_axis_with_the_class_each_output_is_scored_against(tmp_path, mined,
                                                                                    small_test_set, demo_model):
    """The logits' and the effects' `output` axis read class names (the root `output`
    coordinate); a run mined without logits has no such coordinate, and still opens."""
    xr = pytest.importorskip("xarray")
    run = tmp_path / "effects.zarr"
    shutil.copytree(mined, run)
    sketchmine.unit_effects(run, "classifier.4", model=demo_model.module, data=small_test_set, batch_size=50)
    names = sketchmine.open_run(run).class_names
    tree = xr.open_datatree(str(run), engine="zarr", consolidated=False)
    logits = tree["eval"]["logits"]
    assert list(logits.coords["output"].values) == names
    np.testing.assert_array_equal(logits.sel(output=names[1]).values, zarr.open_array(str(run / "eval" / "logits"))[:, 1])
    delta = tree["layers/classifier.4/effects"]["logit_delta"]
    assert delta.dims == ("unit", "output") and list(delta.coords["output"].values) == names
    assert not sketchmine.verify_run(run).damaged
    bare = sketchmine.mine(demo_model.module, small_test_set, layers=["features.3"], k=1, logits=False,
                           out=tmp_path / "bare.zarr")
    assert "output" not in xr.open_datatree(str(bare.path), engine="zarr", consolidated=False).coords


def test_the_store_page_names_every_attribute_and_array_of_a_run(mined):
    """docs/store.md's layout is what a reader without sketchmine goes by: every root attribute
    and every array of a complete run (distributions included) is named there (it lacked
    `attribute_sums`, which every complete run holds)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "store.md").read_text()
    layout = page.split("```text", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"[A-Za-z_]\w*", layout))
    group = zarr.open_group(mined, mode="r")
    arrays = {path.rpartition("/")[2] for path, _ in _arrays(group)}
    assert sorted(set(group.attrs) - named) == [] and sorted(arrays - named) == []


def _arrays(group, prefix=""):
    for name, array in group.arrays():
        yield prefix + name, array
    for name, sub in group.groups():
        yield from _arrays(sub, f"{prefix}{name}/")
