"""`visualize --method none`: the top-k patches and their boxes without deconvolutions. They are the
only pictures of a run mined from an ONNX file (ONNX Runtime gives no gradients, and no torch model
matches the file's weights), made there without a model; before, such a run was refused outright.
On a torch run they are the patches a deconvolution method stores, without its `deconv` array.
Real data: the embedded Animal-Shape test sketches and the demo model, exported with torch.onnx."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import sketchmine
from sketchmine import SketchmineError
from sketchmine.passes.visualize import patches_of
from sketchmine.store import schema
from sketchmine.store.integrity import verify_run
from tests.helpers import per_class_subset
from tests.test_onnx import export

pytest.importorskip("onnxruntime")

LAYERS = ["features.0", "classifier.1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model, small_test_set):
    """(dataset, torch run, ONNX run) of 30 sketches, mined from the demo model and its export."""
    ds = per_class_subset(small_test_set, 3, "patches-only")
    root = tmp_path_factory.mktemp("patches")
    onnx = export(demo_model.module, root / "sketchnet.onnx")
    return (ds, sketchmine.mine(demo_model.module, ds, out=root / "t.zarr", layers=LAYERS, k=3, batch_size=30),
            sketchmine.mine(str(onnx), ds, out=root / "o.zarr", layers=LAYERS, k=3, batch_size=30))


def _copy(run, tmp_path, name: str):
    shutil.copytree(run.path, tmp_path / name)
    return tmp_path / name


def _files(path) -> list:
    return sorted((p.relative_to(path), p.stat().st_size) for p in path.rglob("*") if p.is_file())


def test_patches_only_are_a_deconvolution_passs_patches(runs, demo_model, tmp_path):
    """The same patches, boxes and inside boxes as a deconvnet pass, no deconv array; changing the
    method needs --redo, which adds the deconvolutions."""
    ds, run, _ = runs
    only, full = _copy(run, tmp_path, "only.zarr"), _copy(run, tmp_path, "full.zarr")
    only_run = sketchmine.visualize(only, model=demo_model, data=ds, method="none")
    full_run = sketchmine.visualize(full, model=demo_model, data=ds)
    for layer in LAYERS:
        assert only_run.layer_attrs(layer)[schema.VISUALIZED]["method"] == "none"
        assert not only_run.has_array(layer, "deconv") and full_run.has_array(layer, "deconv")
        for key in ("patches", "boxes", "inside"):
            np.testing.assert_array_equal(only_run.layer_array(layer, key), full_run.layer_array(layer, key))
        assert sorted(patches_of(only_run, layer, 1)) == ["boxes", "inside", "patches"]
    assert not verify_run(only).damaged  # its claim's checksums name no deconv array
    with pytest.raises(SketchmineError, match=r"was visualized with other settings \(none, .*--redo"):
        sketchmine.visualize(only, model=demo_model, data=ds, method="deconvnet")
    redone = sketchmine.visualize(only, model=demo_model, data=ds, method="deconvnet", redo=True)
    for layer in LAYERS:
        np.testing.assert_array_equal(redone.layer_array(layer, "deconv"), full_run.layer_array(layer, "deconv"))
    back = sketchmine.visualize(only, model=demo_model, data=ds, method="none", redo=True)
    assert not back.has_array(LAYERS[0], "deconv")  # the deconvnet pass's array went with its claim


def test_an_onnx_run_gets_its_patches_without_a_model(runs, demo_model, tmp_path):
    """A conv layer's patches are cut at the fields the ONNX graph records (the torch model's), as
    the torch run's are where both ranked the same image and position; a whole-image layer's patches
    are its top-k images' pixels."""
    ds, torch_run, onnx_run = runs
    run = sketchmine.visualize(_copy(onnx_run, tmp_path, "o.zarr"), data=ds)
    twin = sketchmine.visualize(_copy(torch_run, tmp_path, "t.zarr"), model=demo_model, data=ds, method="none")
    assert run.layer_attrs("features.0")["receptive_field"] == twin.layer_attrs("features.0")["receptive_field"]
    _, index, yx = run.topk("features.0")
    _, t_index, t_yx = twin.topk("features.0")
    same = (index == t_index) & (yx == t_yx).all(-1)
    assert same.mean() > 0.9  # float rounding may reorder near-ties
    for key in ("patches", "boxes", "inside"):
        got, want = run.layer_array("features.0", key), twin.layer_array("features.0", key)
        np.testing.assert_array_equal(got[same], want[same])
    assert run.layer_attrs("classifier.1")[schema.VISUALIZED]["method"] == "none"
    assert not run.has_array("classifier.1", "deconv")
    patches = run.layer_array("classifier.1", "patches")
    _, index, _ = run.topk("classifier.1")
    for c in range(index.shape[0]):
        for r in range(index.shape[1]):
            assert np.array_equal(patches[c, r, ..., 0], np.asarray(ds.images[int(index[c, r])])), (c, r)
    # the optimised images' reader named `visualize --optimize`, which an ONNX run refuses
    with pytest.raises(SketchmineError, match=r"has no optimised images; it was mined from an ONNX file, and "
                                              r"optimising an input needs a torch model's gradients"):
        run.optimized("classifier.1", 0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "guided"}, r"--method guided deconvolves through a torch model; drop it \(patches only, --method none\)"),
    ({"model": "demo"}, r"drop the model and weights given"),
    ({"examples": "all"}, r"--examples all needs a torch model; mine the torch model into a new run for them"),
    ({"optimize": True}, r"--optimize needs a torch model"),
])
def test_an_onnx_run_refuses_what_needs_a_torch_model(runs, tmp_path, kwargs, match):
    path = _copy(runs[2], tmp_path, "o.zarr")
    before = _files(path)
    with pytest.raises(SketchmineError, match=r"was mined from an ONNX file \(onnx:sketchnet\.onnx\), whose patches "
                                              r"visualize crops without a model .*: " + match):
        sketchmine.visualize(path, layers=["classifier.1"], **kwargs)
    assert _files(path) == before


def _followed(hint: str, path, **kwargs):
    """`sketchmine.visualize` called with the options of the `sketchmine visualize` command in `hint`
    (the run's dataset is a Python object, which only the API takes)."""
    import re
    import shlex

    from sketchmine.cli.parser import build_parser

    words = shlex.split(re.search(r"`(sketchmine visualize [^`]*)`", hint).group(1))[1:]
    args = build_parser().parse_args(words)
    return sketchmine.visualize(path, layers=args.layers, method=args.method, max_patch=args.max_patch,
                                redo=args.redo, **kwargs)


def test_the_commands_said_for_patches_only_pictures_work_when_followed(runs, demo_model, tmp_path):
    """A patches-only layer holds no deconv: reading it said to run the plain `visualize` command,
    which a torch run refused (its pictures' method is another) and which added nothing to an ONNX
    run. A pass stopped part way said the same plain command to continue it, refused too."""
    ds, run, onnx_run = runs
    path = _copy(run, tmp_path, "t.zarr")
    partial = sketchmine.visualize(path, model=demo_model, data=ds, method="none", layers=["features.0"], max_units=2)
    with pytest.raises(SketchmineError, match=r"no patches yet \(2 of 32 units done\); run `.* --method none` to "
                                              r"continue") as stopped:
        patches_of(partial, "features.0", 5)
    done = _followed(str(stopped.value), path, model=demo_model, data=ds)
    assert done.patches_done("features.0") == 32
    with pytest.raises(SketchmineError, match=r"holds no array 'layers/features.0/deconv': its pictures are patches "
                                              r"only \(--method none\); `.*--method deconvnet --redo` replaces") as no:
        done.layer_array("features.0", "deconv")
    assert _followed(str(no.value), path, model=demo_model, data=ds).has_array("features.0", "deconv")
    onnx = sketchmine.visualize(_copy(onnx_run, tmp_path, "o.zarr"), data=ds, layers=["features.0"])
    with pytest.raises(SketchmineError, match=r"patches only \(--method none\), the only ones of a run mined from an "
                                              r"ONNX file, which has no gradients: mine the torch model"):
        onnx.layer_array("features.0", "deconv")


def test_an_onnx_runs_missing_pictures_are_said_to_be_patches(runs):
    """The report's note and the notebook card of a layer not yet visualized offered deconvolutions,
    which `visualize` refuses for a run mined from an ONNX file."""
    from sketchmine.present.report_data import pictures_note

    _, run, onnx_run = runs
    for r, what in ((onnx_run, "patches"), (run, "patches and deconvolutions")):
        note = pictures_note(r, "features.0", r.layer_attrs("features.0"), False, 0, 32, True, 0)
        assert note.endswith(f"--layers features.0` to add {what}")
        card = r.unit("features.0", 1)._repr_html_()
        assert f"to add its {what}</i>" in card


def _as_mined_before_fields(run, tmp_path, name: str):
    """A copy of `run` with the attributes an earlier sketchmine wrote for a graph it did not analyse
    (an ONNX file, a forward computing with its input's size): no field on any layer, no whole-image
    record, and no attribute checksums (the version records 0.1.0 and schema 2 alike)."""
    import zarr

    path = _copy(run, tmp_path, name)
    del zarr.open_group(str(path), mode="r+").attrs[schema.ATTRIBUTE_SUMS]
    for layer in run.layers:
        zarr.open_group(str(path), mode="r+")[f"layers/{layer}"].attrs.update({"receptive_field": None})
    return path


def test_an_onnx_run_mined_before_its_fields_is_told_to_be_mined_again(runs, tmp_path):
    """Such a run was refused blaming an op the analysis cannot follow, where mining it again
    records the fields: the refusal now says so, from this version's analysis of the file."""
    ds, _, onnx_run = runs
    old = _as_mined_before_fields(onnx_run, tmp_path, "old.zarr")
    with pytest.raises(SketchmineError, match=r"no receptive field for layer 'features.0', and this version's graph "
                                              r"analysis of its model gives it one: the run was mined by an earlier "
                                              r"sketchmine .* mine it again into a new --out"):
        sketchmine.visualize(old, data=ds)
    assert sketchmine.visualize(old, ["classifier.1"], data=ds).layer_attrs("classifier.1")[schema.VISUALIZED]
