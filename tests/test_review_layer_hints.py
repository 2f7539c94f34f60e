"""Commands a message names for a layer can be pasted: an ONNX node named "conv,1" is mined as
`--layers 'conv\\,1'`, and the hints that name it (`mine_again`, a Ctrl-C's rest, `visualize`,
`importance`, `effects`) wrote it bare, which the parser reads back as two layers, conv and 1."""
from __future__ import annotations

import shlex

import pytest

import sketchmine
from sketchmine.cli.main import main
from sketchmine.results.distribution import mine_again
from tests.helpers import image_folder
from tests.test_onnx import export

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_the_mine_again_hint_names_a_layer_with_a_comma_as_one(tmp_path, demo_model, small_test_set):
    model = onnx.load(str(export(demo_model.module, tmp_path / "plain.onnx")))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.name = "conv,1"  # a node named by a converter, not by torch's module scopes
    onnx.save(model, str(tmp_path / "comma.onnx"))
    folder = image_folder(small_test_set, tmp_path / "images", per_class=3)
    assert main(["mine", "--model", str(tmp_path / "comma.onnx"), "--data", str(folder), "--layers",
                 "conv\\,1,classifier.6", "-k", "2", "--out", str(tmp_path / "a.zarr"), "-q"]) == 0
    run = sketchmine.open_run(tmp_path / "a.zarr")
    assert run.layers == ["conv,1", "classifier.6"] and run.topk("conv,1")[0].shape[0] == 32
    hint = mine_again(run).strip("`")
    words = shlex.split(hint.replace("NEW_DIR", str(tmp_path / "b.zarr")))
    assert words[:2] == ["sketchmine", "mine"], hint
    assert main([*words[1:], "-q"]) == 0, hint  # pasted as printed: the same two layers, with distributions
    again = sketchmine.open_run(tmp_path / "b.zarr")
    assert again.layers == run.layers and again.attrs["distributions"]
    assert (again.topk("conv,1")[0] == run.topk("conv,1")[0]).all()


def test_a_layer_arg_reads_back_as_the_names_it_was_made_of():
    from sketchmine.cli.layer_args import layer_list
    from sketchmine.names import layer_arg

    names = ["conv,1", "|head|Mat Mul", "a\\b", "fc", "tab\there", "features.6"]
    assert layer_list(layer_arg(names)) == names
    assert layer_arg(["features.6", "classifier.1"]) == "features.6,classifier.1"  # the usual names as they were
