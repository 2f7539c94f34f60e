"""A layer or dataset array a run never held (a partial run, a run mined without the pass that
writes it, or by a version before the array) is said to be absent, with what adds it: the
readers called such a whole run "damaged" and told the user to mine it again."""
import shutil

import numpy as np
import pytest

import sketchmine
from sketchmine.errors import RunDamaged, SketchmineError
from tests.helpers import StopAfter, as_mined_without, per_class_subset


@pytest.fixture(scope="module")
def few(demo_test_set):
    return per_class_subset(demo_test_set, 3, "0:30")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_model, few):
    out = tmp_path_factory.mktemp("upgrade") / "run.zarr"
    sketchmine.mine(demo_model, few, layers=["features.0", "features.3"], k=3, out=out, batch_size=8)
    return out


def refusal(call) -> str:
    with pytest.raises(SketchmineError) as info:
        call()
    assert not isinstance(info.value, RunDamaged), str(info.value)
    return str(info.value)


def test_an_array_of_a_pass_not_run_is_absent_not_damage(run_dir):
    run = sketchmine.open_run(run_dir)
    assert not run.has_array("features.0", "hist_edges")
    message = refusal(lambda: run.layer_array("features.0", "hist_edges"))
    assert "holds no array 'layers/features.0/hist_edges'" in message and "--distributions" in message
    message = refusal(lambda: run.array_shape("features.3", "patches"))
    assert "sketchmine visualize" in message and "--layers features.3" in message
    assert "not damaged" in refusal(lambda: run.dataset_array("content_digests"))
    assert run.layer_array("features.0", "values").shape == (32, 3)  # what it holds reads as before


def test_an_array_an_older_version_did_not_write_is_absent_not_damage(run_copy):
    as_mined_without(run_copy, "features.3", ["nan_count"])
    run = sketchmine.open_run(run_copy)
    message = refusal(lambda: run.layer_array("features.3", "nan_count"))
    assert "did not write it" in message and "not damaged" in message
    assert np.isfinite(run.layer_array("features.0", "nan_count")).all()


def test_an_array_the_run_recorded_and_lost_is_still_damage(run_copy):
    shutil.rmtree(run_copy / "layers" / "features.3" / "nan_count")
    run = sketchmine.open_run(run_copy)
    with pytest.raises(RunDamaged, match="nan_count"):
        run.layer_array("features.3", "nan_count")


def test_a_partial_runs_arrays_are_said_not_written_yet(tmp_path, demo_model, few):
    out = tmp_path / "partial.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model, few, layers=["features.0"], k=3, out=out, batch_size=4, flush_every=2,
                        progress=StopAfter(12))
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done > 0
    message = refusal(lambda: run.layer_array("features.0", "values"))
    assert "is not complete" in message and "holds no 'layers/features.0/values' yet" in message
    assert run.topk("features.0")[0].shape == (32, 3)  # the partial results read from the checkpoint


def test_a_release_run_without_unit_moments_is_not_told_to_mine_distributions(run_copy):
    """0.1.0 (schema version 1) kept no unit moments (max_count, max_mean, firing): its runs were
    told they had been mined without distributions and to mine again with them, which is neither
    the reason nor needed."""
    import json

    for layer in ("features.0", "features.3"):
        as_mined_without(run_copy, layer, ["max_count", "max_mean", "firing"])
    meta = json.loads((run_copy / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 1
    (run_copy / "zarr.json").write_text(json.dumps(meta))
    run = sketchmine.open_run(run_copy)
    for read in (lambda: run.max_mean("features.0"), lambda: run.firing_density("features.3")):
        message = refusal(read)
        assert "unit moments" in message and "schema version 1, sketchmine 0.1.0" in message
        assert "distributions" not in message and "not damaged" in message
    assert "mined without distributions" in refusal(lambda: run.histogram("features.0"))  # those are opt-in
