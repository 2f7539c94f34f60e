"""What a run of an ordinary `torch.onnx.export` graph recorded stays what the ONNX backend
reads of it: the weights hash a resume compares, over the graph's initializers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sketchmine
from sketchmine.model.backend import WEIGHTS_HASH, weights_hash, weights_hasher
from sketchmine.model.models import load_model
from tests.helpers import StopAfter
from tests.test_onnx import export, subset

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402


class Resampled(nn.Module):
    """The demo model behind a nearest x2 upsampling and a 2x2 average pool (the same image
    again): its export keeps the Resize scales and the pool's none in Constant nodes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.avg_pool2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), 2))


def initializers_hash(path) -> str:
    """The hash runs of a graph with initializers recorded: its initializers', in graph order."""
    h = weights_hasher(WEIGHTS_HASH)
    for t in onnx.load(str(path)).graph.initializer:
        h.update(f"{t.name}:{tuple(t.dims)}:{t.data_type}\n".encode())
        h.update(np.ascontiguousarray(numpy_helper.to_array(t)).reshape(-1).view(np.uint8).data)
    return f"{WEIGHTS_HASH}:{h.hexdigest()}"


def test_an_exported_upsampling_keeps_the_hash_its_runs_recorded(tmp_path, demo_model, small_test_set):
    """A torch export of a model that upsamples (nn.Upsample, F.interpolate) holds its Resize
    scales, floating values, in a Constant node; the hash read them too, so every run of such a
    graph recorded before was refused on resume as mined with other weights. A run of such a graph
    resumes to the same run, and a run that recorded plain xxh3_128 (the initializers alone, in a
    graph that has them) is checked that way."""
    path = export(Resampled(demo_model.module).eval(), tmp_path / "resampled.onnx")
    consts = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Constant"
              and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT and np.prod(n.attribute[0].t.dims) > 1]
    assert consts, "the export keeps its Resize scales in a Constant node"
    ds = subset(small_test_set, 40)
    out = tmp_path / "r.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(str(path), ds, out=out, batch_size=10, flush_every=1, progress=StopAfter(20))
    run = sketchmine.mine(str(path), ds, out=out, batch_size=10, flush_every=1)
    assert run.complete and run.attrs["weights_hash"] == weights_hash(load_model(str(path)).module)
    # what runs of it recorded before xxh3_128+nodes (the initializers alone) still checks them
    assert weights_hash(load_model(str(path)).module, WEIGHTS_HASH) == initializers_hash(path)
    whole = sketchmine.mine(demo_model.module, ds, out=tmp_path / "t.zarr", batch_size=10)
    assert run.accuracy() == whole.accuracy() > 0.9
