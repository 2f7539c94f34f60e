"""Passes after mining take `model=` as a spec, an nn.Module or a LoadedModel (what
`load_model` returns, as `feature_visualization` takes it): a loaded model is used as it is,
still checked against the run's recorded weights; weights beside a loaded model are refused."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.model.models import load_model
from tests.helpers import per_class_subset

LAYER = "features.0"


@pytest.fixture(scope="module")
def subset(demo_test_set):
    return per_class_subset(demo_test_set, 6, "0:60")


@pytest.fixture(scope="module")
def mined(tmp_path_factory, subset):
    out = tmp_path_factory.mktemp("reload") / "run.zarr"
    return sketchmine.mine("demo", subset, layers=[LAYER, "softmax"], k=3, out=out, batch_size=30)


def test_unit_effects_and_importance_accept_a_loaded_model(mined, demo_model, subset):
    loaded = load_model("demo")
    by_loaded = sketchmine.unit_effects(mined, LAYER, model=loaded, data=subset, batch_size=30)
    by_module = sketchmine.unit_effects(mined, LAYER, model=demo_model.module, data=subset, batch_size=30)
    pd.testing.assert_frame_equal(by_loaded, by_module)
    assert by_loaded.shape == (32, 10) and np.isfinite(by_loaded.to_numpy()).all()
    imp_loaded = sketchmine.unit_importance(mined, LAYER, model=loaded, dataset=subset, batch_size=30)
    imp_spec = sketchmine.unit_importance(mined, LAYER, model="demo", dataset=subset, batch_size=30)
    pd.testing.assert_frame_equal(imp_loaded, imp_spec)


def test_a_loaded_model_is_still_checked_against_the_run(mined, subset):
    other = load_model("sketchnet", seed=0)  # the same architecture, random weights
    with pytest.raises(SketchmineError, match=r"the model's weights differ from those run .* was mined with"):
        sketchmine.unit_effects(mined, LAYER, model=other, data=subset)
    with pytest.raises(SketchmineError, match=r"weights file w\.pth given with a loaded model \(demo:.*\), which "
                       r"carries its own weights"):
        sketchmine.unit_importance(mined, LAYER, model=load_model("demo"), dataset=subset, weights="w.pth")


def test_mine_takes_a_loaded_model_as_its_spec(tmp_path, mined, subset):
    """The loaded model keeps what the spec recorded (its id, normalisation): the same run."""
    run = sketchmine.mine(load_model("demo"), subset, layers=[LAYER, "softmax"], k=3, out=tmp_path / "r.zarr",
                          batch_size=30)
    assert run.attrs["model"] == mined.attrs["model"] and run.accuracy() == mined.accuracy()
    for name in (LAYER, "softmax"):
        for got, want in zip(run.topk(name), mined.topk(name)):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(SketchmineError, match=r"is loaded already: weights= and seed= apply when loading"):
        sketchmine.mine(load_model("demo"), subset, out=tmp_path / "s.zarr", seed=1)
