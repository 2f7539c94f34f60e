"""A layer optimised with other settings than this call's, refused naming what differs and the
option that gives the run's (or --redo); the regularisers of the stored pass, checked before
anything is written."""
from __future__ import annotations

import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.passes.visualize import visualize
from sketchmine.store import schema
from sketchmine.store.optimized import optimized_state, write_optimized
from sketchmine.store.runstore import RunStore


def test_other_regularizers_are_named(small_test_set, tmp_path):
    run = sketchmine.mine("demo", small_test_set, layers=["classifier.6"], k=1, out=tmp_path / "r.zarr")
    run = visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_steps=2, max_units=4)
    store = RunStore.open(run.path, mode="r+")  # as another version's defaults left it
    claim = dict(optimized_state(store, "classifier.6")[0] or {})
    claim["regularizers"] = {**claim["regularizers"], "polish": 0.5}
    write_optimized(store, "classifier.6", slice(0, 0), {}, claim)
    with pytest.raises(SketchmineError, match=r"regularizers \(run: polish 0.5; now: polish 0.75\).*--redo") as e:
        visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_steps=2)
    assert "--optimize-steps" not in str(e.value)  # not the options the call gave as the run has them
    assert "pass the same --optimize-regularizers, or --redo" in str(e.value)
    assert sketchmine.open_run(run.path).layer_attrs("classifier.6")[schema.OPTIMIZED]["units_done"] == 4  # kept
    with pytest.raises(SketchmineError, match=r"steps \(run: 2; now: 3\).*--optimize-steps"):
        visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_steps=3)


def test_the_command_says_it_made_optimised_inputs(demo_test_set, tmp_path):
    import subprocess
    import sys

    from tests.helpers import image_folder

    root = image_folder(demo_test_set, tmp_path / "images", per_class=3)
    sm = [sys.executable, "-m", "sketchmine"]
    out = str(tmp_path / "c.zarr")
    mined = subprocess.run([*sm, "mine", "--model", "demo", "--data", str(root), "--out", out, "-k", "1",
                            "--layers", "classifier.6"], capture_output=True, text=True)
    assert mined.returncode == 0, mined.stderr
    proc = subprocess.run([*sm, "visualize", out, "--optimize", "--optimize-steps", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "and optimised inputs (fourier, 2 steps) of 1 layer" in proc.stdout, proc.stdout


def test_the_stored_pass_takes_the_regularizers(small_test_set, tmp_path):
    """optimize_regularizers reaches the pass (its images are feature_visualization's with them),
    is recorded whole, and is refused clearly: without optimize, unknown, or another on resume."""
    import numpy as np

    from sketchmine.passes.featvis import feature_visualization

    run = sketchmine.mine("demo", small_test_set, layers=["classifier.4"], k=1, out=tmp_path / "r.zarr")
    with pytest.raises(SketchmineError, match="apply to the feature visualisation pass only"):
        visualize(run, data=small_test_set, optimize_regularizers="none")
    with pytest.raises(SketchmineError, match="unknown regularizers 'yosinski9' for method 'pixel'"):
        visualize(run, data=small_test_set, optimize=True, optimize_method="pixel", optimize_regularizers="yosinski9")
    with pytest.raises(SketchmineError, match="unknown regularizer setting\\(s\\) 'blur'"):
        visualize(run, data=small_test_set, optimize=True, optimize_regularizers={"blur": 1})
    assert "optimized" not in sketchmine.open_run(run.path).layer_attrs("classifier.4")  # refused before any write
    run = visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_method="pixel",
                    optimize_regularizers="yosinski1", optimize_steps=3, max_units=4)
    want = feature_visualization("demo", "classifier.4", [0, 1, 2, 3], steps=3, method="pixel",
                                 regularizers="yosinski1")
    np.testing.assert_array_equal(run.optimized("classifier.4"), want.pixels)
    claim = run.layer_attrs("classifier.4")[schema.OPTIMIZED]
    assert claim["regularizers"] == want.regularizers and claim["regularizers"]["norm_pct"] == 50.0
    from sketchmine.results.optimized import how_made

    assert how_made(claim) == "pixel, 3 steps, regularisers yosinski1"  # what the card and the slide say
    with pytest.raises(SketchmineError, match=r"regularizers \(run: .*\).*pass the same --optimize-regularizers"):
        visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_method="pixel", optimize_steps=3)


def test_the_hint_for_missing_optimised_images_is_a_command_the_pass_takes(demo_test_set, tmp_path):
    """A layer visualized with --method guided was told to run `visualize … --optimize`, which
    the pass then refused ("visualized with other settings"): the hint repeats the pictures'
    --method and --max-patch, and that very command adds the images."""
    import shlex

    from sketchmine.cli.main import main
    from tests.helpers import image_folder

    root = image_folder(demo_test_set, tmp_path / "images", per_class=3)  # a folder the command reopens
    run = sketchmine.mine("demo", root, layers=["features.3"], k=2, out=tmp_path / "r.zarr")
    visualize(run, method="guided", max_patch=6, max_units=3)
    with pytest.raises(SketchmineError, match=r"has no optimised images; run `(.*)`") as e:
        sketchmine.open_run(run.path).optimized("features.3")
    said = shlex.split(str(e.value).split("run `")[1].rstrip("`"))
    assert said[:2] == ["sketchmine", "visualize"] and said[said.index("--method") + 1] == "guided"
    assert said[said.index("--max-patch") + 1] == "6"
    assert main([*said[1:], "--optimize-steps", "2", "-q"]) == 0
    assert sketchmine.open_run(run.path).layer_attrs("features.3")[schema.OPTIMIZED]["complete"]


def test_the_hints_defaults_are_visualizes():
    import inspect

    from sketchmine.results.optimized import PICTURES_DEFAULTS

    params = inspect.signature(visualize).parameters
    assert params["method"].default is None  # the run's: PICTURES_DEFAULTS["method"] for a torch run
    assert {key: params[key].default for key in PICTURES_DEFAULTS if key != "method"} == {
        key: v for key, v in PICTURES_DEFAULTS.items() if key != "method"}
