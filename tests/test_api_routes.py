"""The Python API's parameters across routes: a parameter one route takes is taken alike on the
others, or refused there with a SketchmineError that names it (never used up, dropped, or
refused for a false reason). Real data: 20 embedded test images and the embedded models."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

import sketchmine
from sketchmine import SketchmineError
from sketchmine.data import animal_shape, preset


@pytest.fixture(scope="module")
def images():
    """20 real test images, as a torch Subset of the embedded split (a run of it reopens its data)."""
    return Subset(animal_shape("test"), list(range(0, 2000, 100)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, images):
    out = tmp_path_factory.mktemp("routes") / "run.zarr"
    sketchmine.mine("demo", images, layers=["features.0", "classifier.6"], k=2, out=out, batch_size=20)
    return out


# ---- layers=: a list, a tuple, one name or a generator, read once --------------------------------
def test_mine_reads_a_generator_of_layer_names_once(tmp_path, images):
    """list(layers) checked a generator for emptiness, used it up, and the run was made with no
    layer: a store `open_run` then calls damaged."""
    run = sketchmine.mine("demo", images, layers=(name for name in ["features.3"]), k=2, out=tmp_path / "r.zarr",
                          batch_size=20)
    assert run.complete and run.layers == ["features.3"]


def test_visualize_reads_a_generator_of_layer_names_once(run_copy):
    """visualize returned without visualizing anything: the used-up generator named no layer."""
    run = sketchmine.visualize(run_copy, iter(["classifier.6"]))
    assert run.patches_done("classifier.6") == 10 and run.patches_done("features.0") == 0


@pytest.mark.parametrize("layers", [3, [0], ["features.0", None]])
def test_layers_that_are_no_names_are_refused_by_name(tmp_path, images, run_copy, layers):
    with pytest.raises(SketchmineError, match="layers are named by strings"):
        sketchmine.mine("demo", images, layers=layers, out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
    with pytest.raises(SketchmineError, match="layers are named by strings"):
        sketchmine.visualize(run_copy, layers)


# ---- data= of the passes: the object mine was given --------------------------------------------
def test_passes_draw_the_dataset_object_they_are_given_as_mine_drew_it(tmp_path, images):
    """mine("demo-gru", images) draws the images (the model's 8 steps); the passes given the same
    object as data= compared its images' fingerprint with the drawings' and refused it, saying an
    image had changed since the run was made."""
    run = sketchmine.mine("demo-gru", images, layers=["classifier"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    assert run.attrs["dataset"]["sequence"]["steps"] == 8
    reopened = sketchmine.unit_importance(run, "classifier")  # the recorded images, drawn again
    given = sketchmine.unit_importance(run, "classifier", data=images)
    assert given.equals(reopened)
    assert sketchmine.visualize(run, "classifier", data=images).patches_done("classifier") == 10


# ---- feature_visualization(preprocessing=): as mine takes it --------------------------------------
def test_feature_visualization_takes_a_preset_name_as_mine_does():
    """A preset name reached `.size` as an AttributeError; "imagenet" is now ImageNet's numbers,
    exactly as the Preprocessing preprocessing_for builds for it."""
    from sketchmine.passes.featvis import feature_visualization

    by_name = feature_visualization("demo", "classifier.6", [1], steps=3, preprocessing="imagenet")
    by_object = feature_visualization("demo", "classifier.6", [1], steps=3,
                                      preprocessing=sketchmine.preprocessing_for("demo", "imagenet"))
    assert torch.equal(by_name.images, by_object.images)
    auto = feature_visualization("demo", "classifier.6", [1], steps=3, preprocessing="auto")
    assert torch.equal(auto.images, feature_visualization("demo", "classifier.6", [1], steps=3).images)


@pytest.mark.parametrize("preprocessing, match", [
    ("dataset", "feature visualisation has no images"),
    (preset("dataset", 1, None), "feature visualisation has no images"),  # was optimised unnormalised
    ({"mean": [0.5]}, "preprocessing must be a preset name"),
])
def test_feature_visualization_refuses_a_preprocessing_it_cannot_apply(preprocessing, match):
    with pytest.raises(SketchmineError, match=match):
        sketchmine.feature_visualization("demo", "classifier.6", [1], steps=2, preprocessing=preprocessing)


# ---- build_probe: its cap and preprocessing ---------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"max_mb": float("nan")}, r"max_mb must be a number above 0"),  # capped nothing
    ({"max_mb": "5"}, "max_mb"), ({"max_mb": 0}, "max_mb"), ({"max_mb": True}, "max_mb"),
    ({"preprocessing": 3}, "preprocessing must be a preset name"),  # an AttributeError
    ({"preprocessing": "imagenet"}, "differs from the one run"),  # a preset name is made for the model, then checked
])
def test_build_probe_refuses_a_cap_or_preprocessing_of_another_kind(run_dir, kwargs, match):
    pytest.importorskip("onnx")
    from sketchmine.passes.probe import build_probe

    with pytest.raises(SketchmineError, match=match):
        build_probe(run_dir, **kwargs)


def test_build_probe_takes_a_preset_name_as_mine_does(tmp_path, images):
    """A name is made for the model ("auto": the demo's recorded normalisation, its size left open)
    and agrees with the run's record of a folder mined at 28 px; a Preprocessing was required."""
    pytest.importorskip("onnx")
    from sketchmine.data import export_image_folder
    from sketchmine.passes.probe import build_probe

    export_image_folder(images, tmp_path / "folder")
    run = sketchmine.mine("demo", tmp_path / "folder", layers=["features.0"], k=2, out=tmp_path / "r.zarr",
                          batch_size=20, image_size=28)
    named = build_probe(run, preprocessing="auto")["model.js"]
    assert named == build_probe(run)["model.js"] and b"size 28\\u00d728" in named


def test_build_probe_takes_dataset_for_a_run_mined_with_it(tmp_path, images):
    """"dataset" is the mean and std of the images mined, which the run records: its own. It was
    refused as 'the probe has no images: pass the numbers ... or another preset' (another preset
    is then refused as differing from the run's)."""
    pytest.importorskip("onnx")
    from sketchmine.data import export_image_folder
    from sketchmine.passes.probe import build_probe

    export_image_folder(images, tmp_path / "folder")
    run = sketchmine.mine("demo", tmp_path / "folder", layers=["features.0"], k=2, out=tmp_path / "r.zarr",
                          batch_size=20, image_size=28, preprocessing="dataset")
    assert run.attrs["preprocessing"]["preset"] == "dataset" and run.attrs["preprocessing"]["mean"]
    named = build_probe(run, preprocessing="dataset")["model.js"]
    assert named == build_probe(run)["model.js"] and b"'dataset' (1 channel mean" in named


# ---- model=: deconvolve and receptive_fields take a model as mine does ------------------------------
def test_deconvolve_and_receptive_fields_take_a_loaded_model(tmp_path):
    """A LoadedModel failed as "cannot trace LoadedModel with torch.fx ... no attribute 'forward'";
    an ONNX graph is refused as one, naming what to pass."""
    loaded = sketchmine.load_model("demo")
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    want = sketchmine.deconvolve(loaded.module, x, "features.3", [0, 5], [[1, 2], [3, 4]])
    torch.testing.assert_close(sketchmine.deconvolve(loaded, x, "features.3", [0, 5], [[1, 2], [3, 4]]), want)
    assert sketchmine.receptive_fields(loaded, 28) == sketchmine.receptive_fields(loaded.module, 28)
    pytest.importorskip("onnxruntime")
    from tests.test_onnx import export

    onnx = sketchmine.load_model(export(loaded.module, tmp_path / "demo.onnx"))
    for call in (lambda: sketchmine.deconvolve(onnx, x, "features.3", [0, 5], [[1, 2], [3, 4]]),
                 lambda: sketchmine.receptive_fields(onnx, 28)):
        with pytest.raises(SketchmineError, match="runs a torch model .* pass the torch model it was exported from"):
            call()


def test_deconvolve_receptive_fields_and_featvis_take_a_name_and_weights_as_mine_does(tmp_path):
    """deconvolve and receptive_fields refused "demo" (asking for load_model first) where mine
    takes it, and feature_visualization had no weights=: a name now loads as mine loads it, a
    weights file applies to a named architecture, and an unknown name or weights a model does not
    take are refused in mine's words."""
    loaded = sketchmine.load_model("demo")
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    args = (x, "features.3", [0, 5], [[1, 2], [3, 4]])
    want = sketchmine.deconvolve(loaded, *args)
    torch.testing.assert_close(sketchmine.deconvolve("demo", *args), want)
    assert sketchmine.receptive_fields("demo", 28) == sketchmine.receptive_fields(loaded, 28)
    weights = tmp_path / "sketchnet.pt"
    torch.save(loaded.module.state_dict(), weights)  # the demo's trained weights, for its architecture by name
    torch.testing.assert_close(sketchmine.deconvolve("sketchnet", *args, weights=weights), want)
    assert not torch.allclose(sketchmine.deconvolve("sketchnet", *args), want)  # random init without them
    assert sketchmine.receptive_fields("sketchnet", 28, weights=weights) == sketchmine.receptive_fields(loaded, 28)
    from sketchmine.model.models import preprocessing_for

    kw = {"steps": 4, "size": 28, "preprocessing": preprocessing_for(loaded)}  # the state_dict records none
    torch.testing.assert_close(sketchmine.feature_visualization("sketchnet", "features.3", [1], weights=weights, **kw)
                               .images, sketchmine.feature_visualization(loaded, "features.3", [1], **kw).images)
    for name, weights_of in (("alexnt", None), ("demo", weights)):
        with pytest.raises(SketchmineError) as mined:
            sketchmine.mine(name, animal_shape("test"), out=tmp_path / "no.zarr", weights=weights_of)
        for call in (lambda: sketchmine.deconvolve(name, *args, weights=weights_of),
                     lambda: sketchmine.receptive_fields(name, 28, weights=weights_of),
                     lambda: sketchmine.feature_visualization(name, "features.3", [1], weights=weights_of, **kw)):
            with pytest.raises(SketchmineError) as got:
                call()
            assert str(got.value) == str(mined.value)
    assert not (tmp_path / "no.zarr").exists()



def test_deconvolve_takes_the_seed_a_random_architecture_was_mined_with(tmp_path):
    """A named architecture without weights is built from a seed (mine's seed=, 0 by default):
    deconvolve("sketchnet", ...) built seed 0's weights where the run was mined with seed=3, and
    nothing said so; it takes seed= as mine does, and refuses it with a module as load_model does."""
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    args = (x, "features.3", [0, 5], [[1, 2], [3, 4]])
    want = sketchmine.deconvolve(sketchmine.load_model("sketchnet", seed=3), *args)
    torch.testing.assert_close(sketchmine.deconvolve("sketchnet", *args, seed=3), want)
    assert not torch.allclose(sketchmine.deconvolve("sketchnet", *args), want)
    with pytest.raises(SketchmineError, match="seed"):
        sketchmine.deconvolve(sketchmine.load_model("demo"), *args, seed=3)


def test_feature_visualization_takes_the_seed_a_random_architecture_was_mined_with():
    """As deconvolve: feature_visualization("sketchnet", ...) optimised against seed 0's random
    weights whatever seed the run was mined with (its seed= is the optimisation's); model_seed= now
    builds the mined weights, and is refused with a loaded model."""
    kw = dict(steps=3, seed=1)
    want = sketchmine.feature_visualization(sketchmine.load_model("sketchnet", seed=3), "features.3", [1], **kw).images
    torch.testing.assert_close(sketchmine.feature_visualization("sketchnet", "features.3", [1], model_seed=3,
                                                                **kw).images, want)
    assert not torch.allclose(sketchmine.feature_visualization("sketchnet", "features.3", [1], **kw).images, want)
    with pytest.raises(SketchmineError, match="seed"):
        sketchmine.feature_visualization(sketchmine.load_model("demo"), "features.3", [1], model_seed=3, **kw)

# ---- steps=None with a model of drawings: a torch Dataset of single images --------------------------
def test_a_drawings_model_given_single_images_in_a_torch_dataset_is_told_so(tmp_path):
    """The GRU was fed single images and the refusal said to resize them (--image-size)."""
    arrays = animal_shape("test")
    plain = torch.utils.data.TensorDataset(torch.from_numpy(arrays.images[:20]).unsqueeze(1),
                                           torch.from_numpy(arrays.labels()[:20]))
    with pytest.raises(SketchmineError, match=r"trained on progressive drawings of 8 steps.*single images \(1, 28, 28\)"
                                              r".*SequenceDataset"):
        sketchmine.mine("demo-gru", plain, out=tmp_path / "r.zarr", k=2, batch_size=10, layers=["features.0"])
    assert not (tmp_path / "r.zarr").exists()
