"""A pass that reloads an ONNX run's graph (probe, the report's probe) refuses other weights naming
the run's recorded identity: cut at 20 characters, "xxh3_128+nodes:" (new runs) left 5 digits of it."""
from __future__ import annotations

import re

import numpy as np
import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.passes.reload import run_model
from tests.test_onnx import export, subset

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402


def test_other_constant_node_weights_are_refused_naming_twelve_digits(tmp_path, demo_model, small_test_set):
    model = onnx.load(str(export(demo_model.module, tmp_path / "plain.onnx")))
    moved = next(t for t in model.graph.initializer if t.name == "features.0.weight")
    nodes = [helper.make_node("Constant", [], [moved.name], value=moved), *model.graph.node]
    kept = [t for t in model.graph.initializer if t.name != moved.name]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    run = sketchmine.mine(str(path), subset(small_test_set, 20), layers=["classifier.6"], out=tmp_path / "r.zarr", k=2)
    identity = run.attrs["weights_hash"]
    assert identity.startswith("xxh3_128+nodes:") and run_model(run).module is not None  # the same graph reloads
    value = model.graph.node[0].attribute[0]
    value.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(value.t) * np.float32(0.5), moved.name))
    onnx.save(model, str(path))  # the weights of its first conv, in a Constant node, halved
    shown = re.escape(identity[:len("xxh3_128+nodes:") + 12])
    with pytest.raises(SketchmineError, match=rf"mined with \({shown}…\); pass the same model"):
        run_model(run)
