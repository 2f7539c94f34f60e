"""The live probe's numbers for models and runs off the demo's path, checked in Python on the graph
the page runs (onnxruntime): a model that ends in a softmax gets none added, a traced branch that
the graph fixed is refused, a run that records no preprocessing is refused unless told it, layers
over tokens are probed, and the pad's ink follows the stored images' border."""
from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sketchmine
from sketchmine.data.preprocess import Preprocessing
from sketchmine.passes.probe import build_probe, ink_polarity
from sketchmine.present.report import write_report
from tests.helpers import per_class_subset
from tests.test_probe import graph_outputs, torch_reference, vendored


@pytest.fixture(scope="module")
def subset(demo_test_set):
    return per_class_subset(demo_test_set, 5, "0:50")


def normalised(subset, images: np.ndarray) -> torch.Tensor:
    pre = subset.preprocessing
    return (torch.from_numpy(images).float()[:, None] / 255 - pre.mean[0]) / pre.std[0]


class SoftmaxOut(nn.Module):
    """The demo model with F.softmax and a reshape as its last ops (no nn.Softmax module)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softmax(self.inner(x), dim=1).reshape(x.shape[0], -1)


@pytest.mark.parametrize("kind", ["nn.Softmax", "F.softmax", "onnx"])
def test_a_model_ending_in_softmax_gets_no_second_one(kind, tmp_path, subset, demo_model):
    """Its output is probabilities already: the probe shows them as they are (a second softmax
    turned 99.9% into 23%), and says so."""
    vendored()
    inner = demo_model.module.eval()
    net = (nn.Sequential(inner, nn.Softmax(dim=1)) if kind == "nn.Softmax" else SoftmaxOut(inner)).eval()
    model: nn.Module | str = net
    if kind == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.rand(1, 1, 28, 28),), tmp_path / "sm.onnx", dynamo=False, input_names=["x"],
                              output_names=["p"], dynamic_axes={"x": {0: "n"}, "p": {0: "n"}})
        model = str(tmp_path / "sm.onnx")
    run = sketchmine.mine(model, subset, out=tmp_path / "run.zarr", batch_size=50)
    meta, outs = graph_outputs(build_probe(run, model=None if kind == "onnx" else net), subset.images[:10])
    with torch.no_grad():
        ref = net(normalised(subset, subset.images[:10])).numpy()
    assert ref.max(1).mean() > 0.9  # confident: a second softmax over 10 classes would flatten these
    assert np.abs(outs[0] - ref).max() < 1e-4
    assert any("softmax already" in n for n in meta["notes"])


class AutoInvert(nn.Module):
    """Flips light backgrounds to dark before the demo model: a branch on the input's values."""

    def __init__(self, inner: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.inner = inner
        self.lo, self.hi = -mean / std, (1 - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > (self.lo + self.hi) / 2:
            x = self.lo + self.hi - x
        return self.inner(x)


def test_a_branch_fixed_by_tracing_is_refused_and_the_report_says_why(tmp_path, subset, demo_model):
    """Tracing keeps the branch its one input took; the graph is run against the model on blank
    canvases, drawings and stored images of both polarities, and differs on one: no probe."""
    vendored()
    pre = subset.preprocessing
    net = AutoInvert(demo_model.module.eval(), pre.mean[0], pre.std[0]).eval()
    run = sketchmine.mine(net, subset, out=tmp_path / "run.zarr", batch_size=50, layers=["inner.features.0"])
    with pytest.raises(sketchmine.SketchmineError, match="differs from the model on") as exc:
        build_probe(run, model=net, size=(28, 28))
    assert "tracing fixed" in str(exc.value) and "test_probe_numbers.py" in str(exc.value)  # the model's own line
    index = write_report(run, tmp_path / "rep", probe=str(exc.value))
    assert "No live probe: the probe graph exported" in index.read_text()


def test_a_run_of_tensors_records_no_preprocessing_and_is_refused_unless_given(tmp_path, subset, demo_model):
    """A torch Dataset of normalised tensors: the probe cannot know how pixels became them."""
    vendored()
    net = demo_model.module.eval()
    x = normalised(subset, subset.images)
    data = TensorDataset(x, torch.from_numpy(subset.labels()).long())
    run = sketchmine.mine(net, data, out=tmp_path / "run.zarr", batch_size=50, layers=["features.0", "classifier.1"])
    assert run.attrs.get("preprocessing") is None
    with pytest.raises(sketchmine.SketchmineError, match="does not record how pixels become the model's input"):
        build_probe(run, model=net)
    pre = subset.preprocessing
    given = Preprocessing(pre.preset, 1, (28, 28), pre.mean, pre.std)
    meta, outs = graph_outputs(build_probe(run, model=net, preprocessing=given), subset.images[:10])
    probs, _ = torch_reference(net, subset.images[:10], pre.mean[0], pre.std[0], [])
    assert np.abs(outs[0] - probs).max() < 1e-4 and meta["preprocessing"] == given.describe(4)
    assert meta["preprocessing"] == (f"{pre.preset!r} (1 channel mean [{pre.mean[0]:.4g}] std [{pre.std[0]:.4g}], "
                                     "size 28×28)")  # for people: it showed [0.2728150929121649] (UX audit)
    named, named_outs = graph_outputs(build_probe(run, model="demo", preprocessing="model"), subset.images[:10])
    assert named["preprocessing"].startswith("'model' (1 channel mean") and named["size"] == [28, 28]
    assert np.abs(named_outs[0] - probs).max() < 1e-4  # a preset name as mine takes it: refused before
    other = tmp_path / "rec.zarr"
    recorded = sketchmine.mine(net, subset, out=other, batch_size=50, layers=["features.0"])
    with pytest.raises(sketchmine.SketchmineError, match="differs from the one run"):
        build_probe(recorded, model=net, preprocessing=Preprocessing("none", 1))


class Tokens(nn.Module):
    """Patches as tokens, an nn.Linear applied per token (position "tokens" in the run), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 4, stride=4)
        self.token_mlp = nn.Linear(8, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.head(torch.relu(self.token_mlp(t)).mean(1))


def test_a_per_token_linear_is_probed_by_its_maximum_over_tokens(tmp_path, subset):
    """Its value on the page is the unit's maximum over the 49 tokens, what the miner ranks."""
    vendored()
    torch.manual_seed(0)
    net = Tokens().eval()
    run = sketchmine.mine(net, subset, out=tmp_path / "run.zarr", batch_size=50, layers=["conv", "token_mlp", "head"])
    assert run.layer_attrs("token_mlp").get("position") == "tokens"  # an image's tokens, not steps
    meta, outs = graph_outputs(build_probe(run, model=net, size=(28, 28)), subset.images[:10])
    assert [l["name"] for l in meta["layers"]] == ["conv", "token_mlp", "head"]
    with torch.no_grad():
        x = normalised(subset, subset.images[:10])
        ref = net.token_mlp(net.conv(x).flatten(2).transpose(1, 2)).amax(1).numpy()
    np.testing.assert_allclose(outs[3], ref, atol=1e-4)  # probs, max0, map0, max1
    values, index, _ = run.topk("token_mlp")
    for u in range(16):  # the run's own top values, where the image is among the ten
        for v, i in zip(values[u], index[u]):
            if 0 <= i < 10:
                assert abs(outs[3][i, u] - v) < 1e-4


def test_ink_follows_the_border_of_the_stored_images():
    """Large light shapes on black: most pixels light, the border dark, so the ink is light."""
    images = []
    for i in range(5):
        a = np.zeros((28, 28), np.uint8)
        a[3:25, 2 + i % 3:26] = 255
        images.append({"pixels": base64.b64encode(a.tobytes()).decode()})
    assert ink_polarity(images, (28, 28))[0] == "light"
    inverted = [{"pixels": base64.b64encode(255 - np.frombuffer(base64.b64decode(im["pixels"]), np.uint8)).decode()}
                for im in images]
    assert ink_polarity(inverted, (28, 28))[0] == "dark"
