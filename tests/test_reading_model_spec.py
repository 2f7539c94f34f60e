"""Which model a spec names: a bare word is a model name (an embedded model such as "demo", or an
architecture), whatever the working directory holds; a path (a separator, or a .pt / .pth /
.ckpt / .onnx suffix) is a file. A folder named `demo` beside the user made "demo" a path."""
from __future__ import annotations

import pytest
import torch

from sketchmine.errors import SketchmineError
from sketchmine.model.models import is_model_path, load_model
from sketchmine.model.zoo import SketchNet


def test_the_rule():
    assert not any(is_model_path(s) for s in ("demo", "demo-gru", "alexnet", "sketchnet", "checkpoint"))
    assert all(is_model_path(s) for s in ("./demo", "runs/model", "m.pt", "m.pth", "m.ckpt", "m.onnx", "/abs/demo"))


def test_a_folder_or_file_named_like_a_model_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "sketchnet").mkdir()
    assert load_model("demo").model_id == "demo:sketchnet_animal"
    assert isinstance(load_model("sketchnet", seed=1).module, SketchNet)
    torch.save({"arch": "sketchnet", "state_dict": SketchNet().state_dict()}, tmp_path / "checkpoint")
    with pytest.raises(SketchmineError, match=r"unknown model 'checkpoint'.*for the file 'checkpoint' here write "
                                              r"\./checkpoint"):
        load_model("checkpoint")
    assert isinstance(load_model("./checkpoint").module, SketchNet)
    with pytest.raises(SketchmineError, match=r"checkpoint file .*demo is a directory, not a checkpoint file"):
        load_model(str(tmp_path / "demo"))


def test_mine_records_a_model_name_as_a_name_beside_a_folder_of_that_name(tmp_path, monkeypatch, small_test_set):
    """mine("demo") with a folder `demo` in the working directory records the spec "demo" (it
    recorded the folder's absolute path, so visualize and importance failed to load it)."""
    import sketchmine

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    run = sketchmine.mine("demo", small_test_set, out=tmp_path / "run.zarr", layers=["features.0"], k=2,
                          batch_size=50)
    assert run.attrs["model_spec"]["spec"] == "demo"
    run = sketchmine.visualize(run, layers=["features.0"], data=small_test_set, max_units=2)  # loads "demo" again
    assert run.layer_attrs("features.0")["visualized"]["units_done"] == 2
