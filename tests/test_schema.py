"""The run store's schema versions: a complete run of the released 0.1.0 (schema version 1)
reads as before; its unfinished runs and versions no release wrote are refused clearly."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import sketchmine
from sketchmine import SketchmineError
from sketchmine.store import schema

LAYERS = ["features.3", "classifier.4"]


@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, small_test_set):
    out = tmp_path_factory.mktemp("schema") / "run.zarr"
    sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=out, batch_size=100)
    return out


def _with_attrs(src, dst, **changes):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "zarr.json").read_text())
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
