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
