"""The stored feature visualisation pass against an uninterrupted one, where a call stopped
inside a block (max_units) or a later call resumes inside one: a unit's optimised image
depends on the batch it was optimised in (rounding differences grow over the steps), so
the pass must optimise each block with the same units whatever the calls were."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import sketchmine
from sketchmine.passes.visualize import visualize

KEYS = ("optimized", "optimized_peak", "optimized_stopped")


def test_max_units_inside_a_block_then_resume_equals_an_uninterrupted_pass(small_test_set, tmp_path):
    run = sketchmine.mine("demo", small_test_set, layers=["classifier.6"], k=1, out=tmp_path / "a.zarr")
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    whole = visualize(run, data=small_test_set, batch_size=8, optimize=True, optimize_steps=24)
    part = visualize(tmp_path / "b.zarr", data=small_test_set, batch_size=8, optimize=True, optimize_steps=24,
                     max_units=3)
    for key in KEYS:  # the units stored so far are already those of the uninterrupted pass
        np.testing.assert_array_equal(part.optimized("classifier.6", key=key), whole.optimized("classifier.6", key=key)[:3])
    part = visualize(part, data=small_test_set, batch_size=8, optimize=True, optimize_steps=24, max_units=9)
    part = visualize(part, data=small_test_set, batch_size=8, optimize=True, optimize_steps=24)
    for key in KEYS:
        np.testing.assert_array_equal(part.optimized("classifier.6", key=key), whole.optimized("classifier.6", key=key))


def test_a_resume_at_another_batch_size_keeps_the_blocks_and_says_so(small_test_set, tmp_path, caplog):
    """The images depend on the blocks: a resume with another --batch-size keeps the layer's
    recorded blocks (and so stores what the uninterrupted pass does), and says it did."""
    run = sketchmine.mine("demo", small_test_set, layers=["classifier.6"], k=1, out=tmp_path / "a.zarr")
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    whole = visualize(run, data=small_test_set, batch_size=8, optimize=True, optimize_steps=24)
    part = visualize(tmp_path / "b.zarr", data=small_test_set, batch_size=8, optimize=True, optimize_steps=24,
                     max_units=3)
    caplog.clear()
    part = visualize(part, data=small_test_set, batch_size=4, optimize=True, optimize_steps=24)
    said = [r.getMessage() for r in caplog.records if "resumes its optimised inputs" in r.getMessage()]
    assert said == ["layer 'classifier.6' resumes its optimised inputs in the blocks of 8 units it began with (a "
                    "unit's image depends on the units optimised beside it), not of --batch-size 4"]
    for key in KEYS:
        np.testing.assert_array_equal(part.optimized("classifier.6", key=key), whole.optimized("classifier.6", key=key))
    caplog.clear()
    visualize(part, data=small_test_set, batch_size=4, optimize=True, optimize_steps=24)  # complete: nothing to say
    assert not [r for r in caplog.records if "resumes its optimised inputs" in r.getMessage()]


def test_a_layer_without_optimised_images_names_the_command_for_that_layer(small_test_set, tmp_path):
    """Without --layers the command named would optimise every layer of the run."""
    from sketchmine.errors import SketchmineError

    run = sketchmine.mine("demo", small_test_set, layers=["features.6", "classifier.6"], k=1, out=tmp_path / "a.zarr")
    with pytest.raises(SketchmineError, match=r"run `sketchmine visualize \S+ --layers classifier.6 --optimize`$"):
        run.optimized("classifier.6")
    part = visualize(run, layers=["classifier.6"], data=small_test_set, batch_size=8, optimize=True,
                     optimize_steps=4, max_units=3)
    with pytest.raises(SketchmineError, match=r"--layers classifier.6 --optimize` to continue$"):
        part.optimized("classifier.6", 5)


def test_a_resume_on_another_device_is_said_and_recorded(small_test_set, tmp_path, caplog):
    """A layer's optimisation begun on a GPU and resumed on the CPU: its images from the resume on
    depend on the CPU's rounding, so the resume says so and the claim records each stretch. No
    GPU here: the partial claim is set to the GPU's, sealed as a GPU machine's pass seals it."""
    import zarr

    from sketchmine.store import attr_sums, schema

    run = sketchmine.mine("demo", small_test_set, layers=["classifier.6"], k=1, out=tmp_path / "a.zarr")
    part = visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_steps=4, max_units=4)
    group = zarr.open_group(str(tmp_path / "a.zarr" / "layers" / "classifier.6"), mode="r+")
    claim = {k: v for k, v in group.attrs[schema.OPTIMIZED].items() if k not in attr_sums.CLAIM_SKIPPED}
    assert claim["device"] == "cpu" and claim["units_done"] == 4 and "devices" not in claim
    group.update_attributes({schema.OPTIMIZED: attr_sums.sealed({**group.attrs[schema.OPTIMIZED], "device": "cuda"})})
    caplog.clear()
    part = visualize(part, data=small_test_set, batch_size=4, optimize=True, optimize_steps=4)
    said = [r.getMessage() for r in caplog.records if "resumes its optimised inputs on" in r.getMessage()]
    assert len(said) == 1 and "on cpu, begun on cuda" in said[0] and "units from 4 on differ" in said[0], said
    done = part.layer_attrs("classifier.6")[schema.OPTIMIZED]
    assert done["complete"] and done["devices"] == [[0, "cuda"], [4, "cpu"]]
    assert not sketchmine.verify_run(part.path).damaged
