"""Units whose objective gives the input no gradient at any step (read after a ReLU that is
0 where the objective reads it, from the start image on): the optimisation never moves them,
so their "optimised" image is the starting noise. The API marks them and the stored pass says so."""
from __future__ import annotations

import logging

import numpy as np
import torch

import sketchmine
from sketchmine.passes.featvis import feature_visualization
from sketchmine.passes.visualize import visualize


def test_units_without_gradient_are_marked(demo_model):
    units = list(range(8))
    r = feature_visualization(demo_model, "features.7", units, steps=4)  # SketchNet's ReLU after features.6
    start = feature_visualization(demo_model, "features.7", units, steps=1)
    flat = np.flatnonzero(r.no_gradient)
    assert 0 < len(flat) < len(units)
    for u in range(len(units)):  # marked exactly where the image never left the starting noise
        assert torch.equal(r.images[u], start.images[u]) == bool(r.no_gradient[u]), u
    conv = feature_visualization(demo_model, "features.6", units, steps=4)  # the conv before it: all move
    assert not conv.no_gradient.any()


def test_the_stored_pass_says_which_units_were_not_optimised(small_test_set, tmp_path, caplog):
    run = sketchmine.mine("demo", small_test_set, layers=["features.7"], k=1, out=tmp_path / "r.zarr")
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        visualize(run, data=small_test_set, batch_size=48, optimize=True, optimize_steps=2, max_units=8)
    want = feature_visualization("demo", "features.7", list(range(48)), steps=2).no_gradient[:8]
    notes = [r.getMessage() for r in caplog.records if "no gradient" in r.getMessage()]
    assert want.any() and len(notes) == 1, notes
    assert f"units {', '.join(str(u) for u in np.flatnonzero(want))} " in notes[0]
    assert "starting noise" in notes[0]
