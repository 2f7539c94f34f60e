"""The stored feature visualisation pass against an uninterrupted one, where a call stopped
inside a block (max_units) or a later call resumes inside one: a unit's optimised image
depends on the batch it was optimised in (rounding differences grow over the steps), so
the pass must optimise each block with the same units whatever the calls were."""
from __future__ import annotations

import shutil

import numpy as np

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
