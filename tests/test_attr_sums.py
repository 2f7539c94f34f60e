"""A complete run's attributes are checked against the sums recorded when it was completed
(store/attr_sums.py): a changed digit of the accuracy, a layer's receptive field or the root's k
is refused as damage by the readers, by `mine` run again and by `sketchmine verify`, where before
it was read as given; a later visualize pass's claim does not disturb them; a run without the
record (older, or killed between its completion and the record) reads as before. Real test
images, the demo model."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sketchmine
from sketchmine.cli.main import main
from sketchmine.errors import RunDamaged
from sketchmine.store import schema
from tests.helpers import per_class_subset

LAYER = "features.3"


@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, demo_test_set) -> Path:
    out = tmp_path_factory.mktemp("attr_sums") / "run.zarr"
    sketchmine.mine(demo_model.module, per_class_subset(demo_test_set, 6, "6 per class"), out=out, batch_size=20)
    return out


def _edited(mined: Path, tmp_path: Path, node: str, change: Callable[[dict[str, Any]], None]) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(mined, path)
    meta_file = path / node / "zarr.json"
    meta = json.loads(meta_file.read_text())
    change(meta["attributes"])
    meta_file.write_text(json.dumps(meta))
    return path


def test_a_complete_run_records_the_sums_of_its_root_eval_and_every_layer(mined):
    run = sketchmine.open_run(mined)
    recorded = run.attrs[schema.ATTRIBUTE_SUMS]
    assert set(recorded) == {"", schema.EVAL, *(schema.layer_group(n) for n in run.layers)}
    assert "accuracy" in recorded[schema.EVAL]
    assert {"shape", "kind", "receptive_field"} <= set(recorded[schema.layer_group(LAYER)])
    assert {"k", "layer_names", "preprocessing", "checksums"} <= set(recorded[""])
    assert not {"progress", schema.ATTRIBUTE_SUMS} & set(recorded[""])
    assert 0 < run.accuracy() < 1 and run.layer_attrs(LAYER)["receptive_field"]


def test_a_changed_accuracy_is_refused_by_readers_mine_and_verify(mined, tmp_path, capsys, demo_model, demo_test_set):
    path = _edited(mined, tmp_path, schema.EVAL, lambda a: a.update(accuracy=a["accuracy"] + 0.001))
    with pytest.raises(RunDamaged, match="attribute 'accuracy' of eval is not as recorded"):
        sketchmine.open_run(path).accuracy()
    found = sketchmine.verify_run(path)
    assert list(found.damaged) == [schema.EVAL]
    assert main(["verify", str(path)]) == 3
    assert "eval" in capsys.readouterr().out
    with pytest.raises(RunDamaged, match="attribute 'accuracy' of eval"):
        sketchmine.mine(demo_model.module, per_class_subset(demo_test_set, 6, "6 per class"), out=path, batch_size=20)


def test_a_changed_receptive_field_is_refused(mined, tmp_path):
    def shift(a: dict[str, Any]) -> None:
        a["receptive_field"]["offset"][0] += 1

    path = _edited(mined, tmp_path, schema.layer_group(LAYER), shift)
    run = sketchmine.open_run(path)
    with pytest.raises(RunDamaged, match=f"attribute 'receptive_field' of layers/{LAYER} is not"):
        run.layer_attrs(LAYER)
    assert list(sketchmine.verify_run(path).damaged) == [schema.layer_group(LAYER)]
    run.layer_attrs("features.0")  # the other layers are intact


def test_a_changed_root_attribute_is_refused_on_opening(mined, tmp_path):
    path = _edited(mined, tmp_path, "", lambda a: a["preprocessing"]["std"].__setitem__(0, 0.5))
    with pytest.raises(RunDamaged, match="attribute 'preprocessing' of the root"):
        sketchmine.open_run(path)


@pytest.fixture(scope="module")
def visualized(mined, tmp_path_factory, demo_model, demo_test_set) -> Path:
    path = tmp_path_factory.mktemp("attr_sums_visualized") / "run.zarr"
    shutil.copytree(mined, path)
    sketchmine.visualize(path, layers=[LAYER], model=demo_model.module,
                         data=per_class_subset(demo_test_set, 6, "6 per class"))
    return path


def test_a_visualize_pass_claims_leave_the_run_whole(visualized):
    run = sketchmine.open_run(visualized)
    claim = run.layer_attrs(LAYER)["visualized"]
    assert {"method", "patch_size", "units_done"} <= set(claim[schema.ATTRIBUTE_SUMS])
    assert not sketchmine.verify_run(visualized).damaged


def test_a_changed_field_of_a_visualize_claim_is_refused(visualized, tmp_path):
    """The claim's patch size sets the size the report shows the patches at, its method names them."""
    def other(a: dict[str, Any]) -> None:
        a["visualized"]["patch_size"] = [a["visualized"]["patch_size"][0] + 1, a["visualized"]["patch_size"][1]]

    path = _edited(visualized, tmp_path, schema.layer_group(LAYER), other)
    with pytest.raises(RunDamaged, match=f"field 'patch_size' of the 'visualized' attribute of layers/{LAYER} is not"):
        sketchmine.open_run(path).layer_attrs(LAYER)
    assert list(sketchmine.verify_run(path).damaged) == [schema.layer_group(LAYER)]


def test_a_visualize_claim_without_the_record_reads_as_before(visualized, tmp_path):
    path = _edited(visualized, tmp_path, schema.layer_group(LAYER),
                   lambda a: a["visualized"].pop(schema.ATTRIBUTE_SUMS))
    assert sketchmine.open_run(path).layer_attrs(LAYER)["visualized"]["method"]
    assert not sketchmine.verify_run(path).damaged


def test_a_run_without_the_record_reads_as_before(mined, tmp_path):
    path = _edited(mined, tmp_path, "", lambda a: a.pop(schema.ATTRIBUTE_SUMS))
    want = sketchmine.open_run(mined).accuracy()
    meta_file = path / schema.EVAL / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["accuracy"] = want + 0.001
    meta_file.write_text(json.dumps(meta))
    assert sketchmine.open_run(path).accuracy() == pytest.approx(want + 0.001)  # unverified, as before
    assert not sketchmine.verify_run(path).damaged


def test_a_damaged_record_is_refused_not_skipped(mined, tmp_path):
    path = _edited(mined, tmp_path, "", lambda a: a.update({schema.ATTRIBUTE_SUMS: {"": "not sums"}}))
    with pytest.raises(RunDamaged, match="record of the attribute sums of the root does not parse"):
        sketchmine.open_run(path)


def test_mine_run_again_records_what_a_kill_before_the_record_left_out(mined, tmp_path, demo_model, demo_test_set):
    """A kill between the completing commit and the record leaves a complete run without it:
    `mine` run again records it, so the run ends as an uninterrupted one (the same record)."""
    want = json.loads((mined / "zarr.json").read_text())["attributes"][schema.ATTRIBUTE_SUMS]
    path = _edited(mined, tmp_path, "", lambda a: a.pop(schema.ATTRIBUTE_SUMS))
    run = sketchmine.mine(demo_model.module, per_class_subset(demo_test_set, 6, "6 per class"), out=path, batch_size=20)
    assert run.attrs[schema.ATTRIBUTE_SUMS] == want
    meta_file = path / schema.EVAL / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["accuracy"] += 0.001
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(RunDamaged, match="attribute 'accuracy' of eval"):
        sketchmine.open_run(path).accuracy()


@pytest.fixture(scope="module")
def with_importance(mined, tmp_path_factory, demo_model, demo_test_set) -> Path:
    """A copy of the run with a later pass's group (unit importance of LAYER)."""
    path = tmp_path_factory.mktemp("attr_sums_importance") / "run.zarr"
    shutil.copytree(mined, path)
    sketchmine.unit_importance(sketchmine.open_run(path), LAYER, model=demo_model.module,
                               dataset=per_class_subset(demo_test_set, 6, "6 per class"), batch_size=60)
    return path


def test_a_later_pass_group_records_the_sums_of_its_attributes(with_importance):
    group = schema.layer_result(LAYER, schema.IMPORTANCE)
    attrs = json.loads((with_importance / group / "zarr.json").read_text())["attributes"]
    assert {"images", "base_accuracy", "method"} <= set(attrs[schema.ATTRIBUTE_SUMS])
    df = sketchmine.open_run(with_importance).unit_importance(LAYER)
    assert df.attrs["base_accuracy"] == attrs["base_accuracy"] and schema.ATTRIBUTE_SUMS not in df.attrs
    assert not sketchmine.verify_run(with_importance).damaged


def test_a_changed_attribute_of_a_later_pass_group_is_refused(with_importance, tmp_path, capsys):
    """The importance's baseline accuracy is printed by `importance` and the report as given."""
    group = schema.layer_result(LAYER, schema.IMPORTANCE)
    path = _edited(with_importance, tmp_path, group, lambda a: a.update(base_accuracy=a["base_accuracy"] - 0.01))
    with pytest.raises(RunDamaged, match=f"the metadata of '{group}' holds attribute 'base_accuracy' not as written"):
        sketchmine.open_run(path).unit_importance(LAYER)
    assert list(sketchmine.verify_run(path).damaged) == [group]
    assert main(["verify", str(path)]) == 3
    assert "base_accuracy" in capsys.readouterr().out


def test_a_later_pass_group_without_the_record_reads_as_before(with_importance, tmp_path):
    group = schema.layer_result(LAYER, schema.IMPORTANCE)

    def older(a: dict[str, Any]) -> None:
        a.pop(schema.ATTRIBUTE_SUMS)
        a["base_accuracy"] -= 0.01

    path = _edited(with_importance, tmp_path, group, older)
    want = sketchmine.open_run(with_importance).unit_importance(LAYER).attrs["base_accuracy"]
    assert sketchmine.open_run(path).unit_importance(LAYER).attrs["base_accuracy"] == pytest.approx(want - 0.01)
    assert not sketchmine.verify_run(path).damaged
