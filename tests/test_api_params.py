"""The Python API's parameters: each one is applied on every path that takes it, or the call
refuses with a SketchmineError naming it (a numpy integer is a whole number; a float, a bool or
a string where a count belongs is refused, never truncated or passed deep into torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

import sketchmine
from sketchmine import SketchmineError
from sketchmine.data import animal_shape


@pytest.fixture(scope="module")
def images():
    """20 real test images, as a torch Subset of the embedded split (a run of it reopens its data)."""
    return Subset(animal_shape("test"), list(range(0, 2000, 100)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, images):
    out = tmp_path_factory.mktemp("api") / "run.zarr"
    sketchmine.mine("demo", images, layers=["features.0", "classifier.6", "softmax"], k=2, out=out, batch_size=20)
    return out


# ---- mine -------------------------------------------------------------------------------------
def test_mine_takes_numpy_counts_and_one_layer_name(tmp_path, images):
    run = sketchmine.mine("demo", images, layers="features.3", k=np.int64(3), batch_size=np.int64(8),
                          out=tmp_path / "r.zarr")
    assert run.complete and run.layers == ["features.3"] and run.k == 3 and run.attrs["batch_size"] == 8
    run = sketchmine.mine("demo", images, layers="features.3", out=tmp_path / "n.zarr", logits=np.bool_(False),
                          distributions=np.True_, pin_memory=None)  # numpy's bools are bools
    assert run.attrs["logits"] is False and run.attrs["distributions"] is True


@pytest.mark.parametrize("kwargs, match", [
    ({"preprocessing": None}, "preprocessing must be a preset name"),
    ({"num_workers": 1, "prefetch_factor": 2.5}, "prefetch_factor"),
    ({"num_workers": 1, "prefetch_factor": "2"}, "prefetch_factor"),
    ({"logits": None}, r"logits must be True or False, got None"),  # mined without logits before
    ({"skip_bad_images": 1}, r"skip_bad_images must be True or False, got 1"),
    ({"distributions": "no"}, r"distributions must be True or False \(or None for the run's setting"),
    ({"pin_memory": 0}, "pin_memory must be True or False"),
    ({"channels_last": "yes"}, "channels_last"), ({"compile": 0}, "compile"), ({"overlap_flushes": None}, "overlap"),
])
def test_mine_refuses_wrong_types(tmp_path, images, kwargs, match):
    with pytest.raises(SketchmineError, match=match):
        sketchmine.mine("demo", images, layers=["features.0"], out=tmp_path / "r.zarr", **kwargs)
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.parametrize("steps", [2.5, True, "4"])
def test_steps_must_be_a_whole_number(tmp_path, images, steps):
    with pytest.raises(SketchmineError, match="steps"):
        sketchmine.mine("demo-gru", images, steps=steps, out=tmp_path / "r.zarr")
    with pytest.raises(SketchmineError, match="steps"):
        sketchmine.SequenceDataset(animal_shape("test"), steps)


def test_ink_against_a_sequence_dataset_names_its_ink(tmp_path):
    drawings = sketchmine.SequenceDataset(animal_shape("test").subset(np.arange(10)), 4)
    with pytest.raises(SketchmineError, match="already a sequence drawn with ink='auto'; ink='dark' asked"):
        sketchmine.mine("demo-gru", drawings, ink="dark", out=tmp_path / "r.zarr")


def test_ink_against_a_torch_dataset_says_why_no_drawings_are_made(tmp_path, demo_test_set):
    tensors = torch.utils.data.TensorDataset(torch.stack([demo_test_set[i][1] for i in range(4)]), torch.arange(4))
    with pytest.raises(SketchmineError, match="a TorchDataset is used as it is"):  # demo-gru records its steps
        sketchmine.mine("demo-gru", tensors, ink="dark", out=tmp_path / "r.zarr")


@pytest.mark.parametrize("seed", [1.5, True, "3"])
def test_load_model_refuses_a_seed_that_is_no_whole_number(seed):
    with pytest.raises(SketchmineError, match="seed must be a whole number"):
        sketchmine.load_model("sketchnet", seed=seed)


def test_load_model_refuses_a_spec_of_another_type():
    with pytest.raises(SketchmineError, match="a model is an nn.Module"):
        sketchmine.load_model(3)


def test_animal_shape_refuses_a_preset_name():
    with pytest.raises(SketchmineError, match="preprocessing must be a Preprocessing"):
        animal_shape("test", "imagenet")


# ---- visualize, importance, effects -------------------------------------------------------------
def test_visualize_layers_one_name_and_empty_list(run_copy):
    with pytest.raises(SketchmineError, match=r"layers=\[\] names no layer"):
        sketchmine.visualize(run_copy, [])
    run = sketchmine.visualize(run_copy, "classifier.6", batch_size=np.int64(8))
    assert run.patches_done("classifier.6") == 10
    assert run.patches_done("features.0") == 0 and run.patches_done("softmax") == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"max_units": True}, "max_units"), ({"max_units": 2.5}, "max_units"),
    ({"batch_size": 2.5}, "batch_size"), ({"batch_size": "8"}, "batch_size"), ({"max_patch": 2.5}, "max_patch"),
    ({"optimize": True, "optimize_steps": 2.5}, "optimize_steps"),
    ({"optimize": True, "optimize_steps": True}, "optimize_steps"),
    ({"optimize": True, "optimize_steps": 0}, "optimize_steps"),
    ({"redo": None}, "redo must be True or False"), ({"optimize": "yes"}, "optimize must be True or False"),
])
def test_visualize_refuses_counts_of_other_types(run_copy, kwargs, match):
    with pytest.raises(SketchmineError, match=match):
        sketchmine.visualize(run_copy, ["classifier.6"], **kwargs)
    assert sketchmine.open_run(run_copy).patches_done("classifier.6") == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 2.5}, "batch_size"), ({"batch_size": True}, "batch_size"), ({"batch_size": "8"}, "batch_size"),
    ({"units_per_pass": 2.5}, "units_per_pass"), ({"units_per_pass": True}, "units_per_pass"),
])
def test_importance_refuses_counts_of_other_types(run_copy, kwargs, match):
    with pytest.raises(SketchmineError, match=match):
        sketchmine.unit_importance(run_copy, "features.0", **kwargs)


def test_importance_and_effects_take_numpy_counts(run_copy):
    table = sketchmine.unit_importance(run_copy, "classifier.6", batch_size=np.int64(8),
                                       units_per_pass=np.int64(4))
    assert len(table) == 10
    effects = sketchmine.unit_effects(run_copy, "classifier.6", batch_size=np.int64(8), correlated=np.int64(2))
    assert effects.shape == (10, 10)


# ---- feature visualisation, deconvolution, receptive fields ---------------------------------------
def test_feature_visualization_seed_and_steps():
    with pytest.raises(SketchmineError, match="seed"):
        sketchmine.feature_visualization("demo", "features.3", [0], steps=2, seed=-1)
    got = sketchmine.feature_visualization("demo", "features.3", [0], steps=np.int64(2))
    assert got.images.shape == (1, 1, 28, 28)


@pytest.fixture(scope="module")
def three_images(demo_test_set):
    return torch.stack([demo_test_set[i][1] for i in range(3)])


@pytest.mark.parametrize("channels, yx", [
    ([0.5, 1, 2], [[1, 1]] * 3),        # a float unit: was read as unit 0
    ([0, 1, 2], [[1.5, 1]] * 3),        # a float position: was read as row 1
    (0, [[1, 1]] * 3),                  # a scalar: torch's "len() of a 0-d tensor"
    ([0, 1], [[1, 1]] * 3),             # a unit short: torch's IndexError
])
def test_deconvolve_refuses_units_it_would_truncate_or_broadcast(demo_model, three_images, channels, yx):
    ints = sketchmine.deconvolve(demo_model.module, three_images, "features.3", np.array([0, 1, 2]), np.ones((3, 2), int))
    assert torch.equal(ints, sketchmine.deconvolve(demo_model.module, three_images, "features.3", [0, 1, 2], [[1, 1]] * 3))
    with pytest.raises(SketchmineError, match="must be integers of shape"):
        sketchmine.deconvolve(demo_model.module, three_images, "features.3", channels, yx)


def test_deconvolve_takes_a_float_numpy_array_and_refuses_other_images(demo_model, three_images):
    got = sketchmine.deconvolve(demo_model.module, three_images.numpy(), "features.3", [0, 1, 2], [[1, 1]] * 3)
    assert torch.equal(got, sketchmine.deconvolve(demo_model.module, three_images, "features.3", [0, 1, 2], [[1, 1]] * 3))
    assert got.abs().sum() > 0
    for images in ((three_images * 255).to(torch.uint8), (three_images.numpy() * 255).astype(np.uint8),
                   three_images.tolist()):  # pixels before preprocessing, a list: were raw torch errors
        with pytest.raises(SketchmineError, match="images must be a float tensor or numpy array of model input"):
            sketchmine.deconvolve(demo_model.module, images, "features.3", [0, 1, 2], [[1, 1]] * 3)


def test_receptive_fields_of_an_input_too_small_is_one_line_no_traceback(capsys):
    """torch.fx's ShapeProp printed a traceback per failed attempt (three) before the clear error."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    with pytest.raises(SketchmineError, match=r"cannot take a 1×2×2 input: RuntimeError: .*Kernel size can't be greater"):
        sketchmine.receptive_fields(net, (1, 2, 2))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kwargs, match", [({"leading": 4}, "leading"), ({"channels": 0}, "channels"),
                                           ({"channels": True}, "channels")])
def test_receptive_fields_refuses_wrong_leading_and_channels(demo_model, kwargs, match):
    with pytest.raises(SketchmineError, match=match):
        sketchmine.receptive_fields(demo_model.module, 28, **kwargs)


# ---- plots --------------------------------------------------------------------------------------
def test_plots_check_n_formats_layers_and_path(run_dir, tmp_path):
    run = sketchmine.open_run(run_dir)
    with pytest.raises(SketchmineError, match="n must be a whole number"):
        sketchmine.plots.summary_figure(run, -1)
    from sketchmine.present.summary_grid import grid

    with pytest.raises(SketchmineError, match="rows hold more than n=3 classes a side"):
        sketchmine.plots.summary_figure(run, 3, rows=grid(run, 5))  # rows made for another n, refused
    same = [t.get_text() for t in sketchmine.plots.summary_figure(run, 5, rows=grid(run, 5)).axes[0].texts]
    assert same == [t.get_text() for t in sketchmine.plots.summary_figure(run, 5).axes[0].texts]
    assert sketchmine.plots.ink_plot(run, tmp_path / "ink", formats="png") == [tmp_path / "ink.png"]
    with pytest.raises(SketchmineError, match="unknown plot format"):
        sketchmine.plots.ink_plot(run, tmp_path / "ink2", formats=("bmpx",))
    assert not (tmp_path / "ink2.png").exists()
    with pytest.raises(SketchmineError, match=r"layers=\[\] names no layer"):
        sketchmine.plot_importance(run, [])
    with pytest.raises(SketchmineError, match="unknown format 'bmpx'"):
        sketchmine.plot_importance(run, path=tmp_path / "imp.bmpx")
    for dpi in (0, True):
        with pytest.raises(SketchmineError, match="dpi must be a whole number"):
            sketchmine.plots.save_figure(sketchmine.plots.ink_figure(run), tmp_path / "ink3.png", dpi)


# ---- Run readers --------------------------------------------------------------------------------
@pytest.mark.parametrize("q", ["a", [0.5, "x"], True, "0.5", ["0.25", "0.75"]])
def test_quantiles_refuses_what_is_no_number(tmp_path, images, q):
    run = sketchmine.mine("demo", images, layers=["features.0"], k=2, out=tmp_path / "d.zarr", distributions=True)
    with pytest.raises(SketchmineError, match="quantiles are numbers from 0 to 1"):
        run.quantiles("features.0", q)


def test_run_array_readers_check_rows_and_names(run_dir):
    run = sketchmine.open_run(run_dir)
    assert run.layer_array("features.0", "values", slice(1, 3)).shape == (2, 2)
    with pytest.raises(SketchmineError, match="rows must be a slice"):
        run.layer_array("features.0", "values", 3)
    assert run.dataset_array("class_image_count").sum() == 20
    for name in ("../eval", "class_count"):
        with pytest.raises(SketchmineError, match="unknown dataset array name"):
            run.dataset_array(name)
        with pytest.raises(SketchmineError, match="unknown dataset array name"):
            run.has_dataset_array(name)
    for name in ("../..", "importanse"):  # a path out of the layer returned None ("not computed")
        with pytest.raises(SketchmineError, match="unknown layer result name"):
            run.layer_result("features.0", name, ("values",))


def test_unit_montage_refuses_another_units_summary(run_copy):
    from sketchmine.results.unit_summary import unit_summary

    run = sketchmine.visualize(run_copy, ["classifier.6"], max_units=2)
    fig = sketchmine.plots.unit_montage(run, "classifier.6", 1, unit_summary(run, "classifier.6", 1))
    assert fig.get_size_inches()[0] > 0
    with pytest.raises(SketchmineError, match="not of 'classifier.6' unit 1"):  # unit 0's max and classes
        sketchmine.plots.unit_montage(run, "classifier.6", 1, unit_summary(run, "classifier.6", 0))
