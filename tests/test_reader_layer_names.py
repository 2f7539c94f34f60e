"""A layer is read back by its name, which the run stores as a folder: a module whose name holds a
path separator is refused before mining, not mined and then read back as a damaged run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.errors import SketchmineError
from tests.helpers import per_class_subset


class Named(torch.nn.Module):
    """A conv named `name` (any string add_module takes) and a linear head over 10 classes."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.add_module(name, torch.nn.Conv2d(1, 4, 3))
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(getattr(self, self.name)(x)).mean((2, 3)))


@pytest.mark.parametrize("name", ["a/b", "a\\b", "c" * 256, "é" * 128], ids=["slash", "backslash", "256c", "128e"])
def test_a_module_name_with_a_path_separator_is_refused_before_mining(tmp_path, demo_test_set, name):
    """Before, "a/b" was mined, then refused on reading as damaged ("attribute 'layer_names'
    should be ... (no '/' or '..')"), and "a\\b" failed the run's creation with a bare KeyError;
    a name of over 255 bytes failed it with "File name too long; fix that and re-run", which no
    re-run mends (the report audit)."""
    ds = per_class_subset(demo_test_set, 2, "0:20")
    for layers in (None, [name]):
        with pytest.raises(SketchmineError, match=r"cannot name a layer of a run .* rename the module"):
            sketchmine.mine(Named(name), ds, layers=layers, out=tmp_path / "run.zarr")
        assert not (tmp_path / "run.zarr").exists()
    run = sketchmine.mine(Named(name), ds, layers=["fc"], out=tmp_path / "run.zarr")  # the other layers: mined
    assert run.layers == ["fc"] and sketchmine.open_run(run.path).topk("fc")[1].shape == (10, 9)


def test_a_module_name_with_a_path_separator_is_visualized_without_a_run():
    """Only a run stores a layer as a folder: feature_visualization of "a/b" (no run) was refused
    as "cannot name a layer of a run" once the refusal sat in the name check every pass shares. It
    optimises the same images as for the same conv named otherwise."""
    torch.manual_seed(0)
    nets = [Named(name) for name in ("a/b", "ab")]
    nets[1].load_state_dict({k.replace("a/b", "ab"): v for k, v in nets[0].state_dict().items()})
    got, want = (sketchmine.feature_visualization(net, net.name, [0, 3], steps=4, size=16) for net in nets)
    assert got.images.shape == (2, 1, 16, 16) and got.images.std() > 0
    torch.testing.assert_close(got.images, want.images, rtol=0, atol=0)


def test_an_onnx_node_name_with_a_backslash_is_refused_before_mining(tmp_path, demo_model, demo_test_set):
    """A '/' of an ONNX name is written '|', but a node named "conv\\0" (mined by default) failed the
    run's creation with a bare KeyError 'layers/conv\\\\0', the torch module's twin; refused now
    as the module is, and the graph's other layers are mined as the unrenamed graph's."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from tests.test_onnx import export

    proto = onnx.load(str(export(demo_model.module, tmp_path / "demo.onnx")))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    conv.name = "conv\\0"
    onnx.save(proto, str(tmp_path / "named.onnx"))
    ds = per_class_subset(demo_test_set, 2, "0:20")
    for layers in (None, ["conv\\0"]):
        with pytest.raises(SketchmineError, match=r"layer 'conv\\\\0': .*cannot name a layer of a run .* ONNX graph: "
                                                  r"the node"):
            sketchmine.mine(str(tmp_path / "named.onnx"), ds, layers=layers, out=tmp_path / "run.zarr")
        assert not (tmp_path / "run.zarr").exists()
    run = sketchmine.mine(str(tmp_path / "named.onnx"), ds, layers=["softmax"], out=tmp_path / "run.zarr", k=3)
    plain = sketchmine.mine(str(tmp_path / "demo.onnx"), ds, layers=["softmax"], out=tmp_path / "plain.zarr", k=3)
    assert run.accuracy() == plain.accuracy() > 0.5
    np.testing.assert_array_equal(run.topk("softmax")[1], plain.topk("softmax")[1])
