"""Models written with functional ops (F.relu, F.max_pool2d, F.softmax, x.view, ...) against their
twins of nn modules with the same weights: every analysis gives both the same answers.

The twins are the demo network (SketchNet, trained): once as modules with names of their own, once
with every op but the convs and linears called as a function, in the spellings people use."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sketchmine import deconvolve
from tests.test_picture_audit_softmax import _close, _Rule, confident  # noqa: F401  (confident: a fixture)

_NAMES = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
          "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}


class _Convs(nn.Module):
    """SketchNet's convs and linears under names of their own."""

    def __init__(self, demo: nn.Module) -> None:
        super().__init__()
        parts = dict(demo.named_modules())
        for old, new in _NAMES.items():
            self.add_module(new, copy.deepcopy(parts[old]))


class ModuleNet(_Convs):
    """SketchNet with ReLU, max-pool, dropout and (head="softmax") softmax modules; head="read":
    a Linear reads the probabilities (as a calibration or a mixture head does)."""

    def __init__(self, demo: nn.Module, head: str = "") -> None:
        super().__init__(demo)
        self.relu = nn.ModuleList(nn.ReLU(inplace=True) for _ in range(7))
        self.pool = nn.ModuleList(nn.MaxPool2d(2) for _ in range(3))
        self.drop = nn.ModuleList(nn.Dropout(0.5) for _ in range(2))
        self.head = head
        if head:
            self.prob = nn.Softmax(dim=1)
        if head == "read":
            self.read = nn.Linear(10, 10)
            with torch.no_grad():
                self.read.weight.copy_(torch.eye(10))
                self.read.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, p, d = self.relu, self.pool, self.drop
        x = p[0](r[0](self.conv1(x)))
        x = p[1](r[1](self.conv2(x)))
        x = r[3](self.conv4(r[2](self.conv3(x))))
        x = torch.flatten(p[2](r[4](self.conv5(x))), 1)
        x = self.fc8(r[6](self.fc7(d[1](r[5](self.fc6(d[0](x)))))))
        if self.head:
            x = self.prob(x)
        return self.read(x) if self.head == "read" else x


class FunctionalNet(ModuleNet):
    """The same weights, every op but the convs and linears a function; `soft` spells the softmax."""

    def __init__(self, demo: nn.Module, head: str = "", soft: str = "F.softmax") -> None:
        super().__init__(demo, head)
        del self.relu, self.pool, self.drop
        if head:
            del self.prob
        self.soft = soft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(self.conv2(x).relu(), 2)
        x = F.relu(self.conv4(torch.relu_(self.conv3(x))), inplace=True)
        x = F.max_pool2d(torch.relu(self.conv5(x)), kernel_size=2, stride=2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc6(F.dropout(x, 0.5, training=self.training)))
        x = self.fc8(F.relu(self.fc7(F.dropout(x, 0.5, training=self.training))))
        if self.head:
            x = {"F.softmax": lambda: F.softmax(x, dim=1), "torch.softmax": lambda: torch.softmax(x, -1),
                 "method": lambda: x.softmax(-1), "viewed": lambda: F.softmax(x, 1).view(x.size(0), -1)}[self.soft]()
        return self.read(x) if self.head == "read" else x


class _RuleReLU(nn.Module):
    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method

    def forward(self, x):
        return _Rule.apply(x, self.method)


def _probabilities64(module_net: ModuleNet, images: torch.Tensor, method: str) -> torch.Tensor:
    """float64 signal of probability c of image c, through the module twin with the rule at each
    ReLU module (float64 keeps 1 - p_c for these images: their margins are far below 36)."""
    m = copy.deepcopy(module_net).double().eval()
    m.relu = nn.ModuleList(_RuleReLU(method) for _ in range(7))
    m.head = ""  # the logits; the softmax below
    x = images.double().requires_grad_(True)
    p = torch.softmax(m(x), 1)
    (g,) = torch.autograd.grad(p[torch.arange(len(x)), torch.arange(len(x))].sum(), x)
    return g.float()


@pytest.mark.parametrize("soft", ["F.softmax", "torch.softmax", "method"])
@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_a_functional_softmax_gets_the_stable_backward_of_the_module(demo_model, confident, soft, method):  # noqa: F811
    """A Linear reading the probabilities (weights the identity: its unit c is p_c) of a model
    whose softmax is a function call: its deconvolution on the surest images is the float64 one,
    as through an nn.Softmax module (torch's own softmax backward gave rounding noise there)."""
    images, p = confident
    assert (1 - p.double()).min() < 1e-6  # saturated in float32
    twin = ModuleNet(demo_model.module, "read").eval()
    want = _probabilities64(twin, images, method)
    _close(deconvolve(twin, images, "read", list(range(4)), method=method), want)
    functional = FunctionalNet(demo_model.module, "read", soft).eval()
    _close(deconvolve(functional, images, "read", list(range(4)), method=method), want)


class _Normalised(FunctionalNet):
    """The functional twin normalising its input itself, `(x - mean) / std`, as training scripts do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(-((0.5 - x) / 2.0).clamp(-4, 4).sigmoid().neg().tanh())


@pytest.mark.parametrize("twin", [FunctionalNet, _Normalised])
def test_functional_ops_have_the_receptive_fields_of_their_modules(demo_model, demo_test_set, twin):
    """torch.relu_, F.relu(inplace=True), x.relu(), F.max_pool2d, x.view and pointwise arithmetic
    have the module twin's fields (torch.relu_ left conv4 on without one: 'function relu_ is not
    supported', and visualize refused those layers), and every field holds the pixels that reach
    its unit (the gradient's support, float64, on real images, at the centre and the corners)."""
    from sketchmine import receptive_fields

    modules = receptive_fields(ModuleNet(demo_model.module).eval(), (1, 28, 28))
    net = twin(demo_model.module).eval()
    fields = receptive_fields(net, (1, 28, 28))
    convs = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert {n: fields[n] for n in convs} == {n: modules[n] for n in convs}
    x = torch.stack([demo_test_set[i][1] for i in range(4)]).double().requires_grad_(True)
    m = copy.deepcopy(net).double()
    for name in convs:
        got: list[torch.Tensor] = []
        handle = getattr(m, name).register_forward_hook(lambda mod, i, o: got.append(o.clone()))  # before an in-place ReLU
        m(x)
        handle.remove()
        out, f = got[0], fields[name]
        for y, xx in [(0, 0), (out.shape[2] // 2, out.shape[3] // 2), (out.shape[2] - 1, out.shape[3] - 1)]:
            (g,) = torch.autograd.grad(out[:, 0, y, xx].sum(), x, retain_graph=True)
            hit = torch.nonzero(g.abs().sum((0, 1)))
            assert len(hit) > 0
            top, left = f.offset[0] + y * f.stride[0], f.offset[1] + xx * f.stride[1]
            assert top <= int(hit[:, 0].min()) and int(hit[:, 0].max()) < top + f.size[0], (name, y, xx)
            assert left <= int(hit[:, 1].min()) and int(hit[:, 1].max()) < left + f.size[1], (name, y, xx)


@pytest.fixture(scope="module")
def twin_runs(demo_model, small_test_set, tmp_path_factory):
    """The softmax-ended twins mined on 300 real images: the module one's nn.Softmax 'prob', the
    functional one's virtual softmax (its default), and the module one's virtual softmax, named."""
    from sketchmine import mine

    out = tmp_path_factory.mktemp("twins")
    module = ModuleNet(demo_model.module, "softmax").eval()
    functional = FunctionalNet(demo_model.module, "softmax").eval()
    return (mine(module, small_test_set, out=out / "m.zarr", k=5, batch_size=100, distributions=True),
            mine(functional, small_test_set, out=out / "f.zarr", k=5, batch_size=100, distributions=True),
            mine(module, small_test_set, ["softmax"], out=out / "named.zarr", k=5, batch_size=100))


def test_the_softmax_of_a_model_that_outputs_probabilities_is_not_taken_twice(twin_runs):
    """A model ending in F.softmax mined by default gets the virtual softmax of its output: it was
    the softmax of the probabilities (top-1 values 0.23 where the nn.Softmax twin has 1.0, the top-k
    in another order, class statistics flattened to ~1/C). It is the output itself now, ranked by
    the log-odds of log p, and every array equals the module twin's 'prob' layer; so does the module
    twin's own virtual softmax when it is named."""
    import numpy as np

    module, functional, named = twin_runs
    assert "softmax" in functional.layers and "prob" in module.layers
    want = module.topk("prob")
    assert float(want[0][:, 0].min()) > 0.99  # the surest images: p rounds to 1 in float32
    for got in (functional.topk("softmax"), named.topk("softmax")):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    for name in ("class_mean", "max_mean", "hist_counts", "bottom_image_index", "example_index"):
        np.testing.assert_allclose(np.asarray(functional.layer_group("softmax")[name][...]),
                                   np.asarray(module.layer_group("prob")[name][...]), rtol=1e-6, err_msg=name)


def test_visualize_refuses_the_softmax_an_older_version_took_of_probabilities(twin_runs, demo_model, small_test_set,
                                                                              tmp_path):
    """A run mined before the output softmax was marked (its virtual softmax the softmax of the
    probabilities, ranked so) was visualized without a word: the pictures read the model's own
    softmax, which the stored top-k did not rank. It is refused as a resume is; a marked run is not."""
    import shutil

    import zarr

    from sketchmine import visualize
    from sketchmine.errors import SketchmineError

    _, functional, _ = twin_runs
    old = shutil.copytree(functional.path, tmp_path / "old.zarr")
    del zarr.open_group(str(old), mode="r+").attrs["attribute_sums"]  # runs of that version hold none
    del zarr.open_group(str(old), mode="r+")["layers/softmax"].attrs["of"]  # nor the mark
    net = FunctionalNet(demo_model.module, "softmax").eval()
    with pytest.raises(SketchmineError, match="'softmax' of .* was mined as the softmax of the model's output, which "
                                              "is a softmax already .* mine the run again into a new --out"):
        visualize(old, ["softmax"], model=net, data=small_test_set, max_units=1)
    marked = shutil.copytree(functional.path, tmp_path / "marked.zarr")
    assert visualize(marked, ["softmax"], model=net, data=small_test_set, max_units=1).layer_attrs("softmax")["visualized"]


@pytest.mark.parametrize("method", ["deconvnet", "gradient"])
def test_the_virtual_softmax_of_probabilities_is_deconvolved_as_the_module(demo_model, confident, method):  # noqa: F811
    """deconvolve(..., "softmax") on a model ending in x.softmax(-1) (or a view of F.softmax's
    result): the float64 signal of p_c, as
    the nn.Softmax twin's 'prob' (it was the signal of a softmax of p: cosine 0.46 for deconvnet)."""
    images, _ = confident
    twin = ModuleNet(demo_model.module, "softmax").eval()
    want = _probabilities64(twin, images, method)
    _close(deconvolve(twin, images, "prob", list(range(4)), method=method), want)
    _close(deconvolve(twin, images, "softmax", list(range(4)), method=method), want)
    for soft in ("method", "viewed"):
        functional = FunctionalNet(demo_model.module, "softmax", soft).eval()
        _close(deconvolve(functional, images, "softmax", list(range(4)), method=method), want)


def test_feature_visualisation_of_the_virtual_softmax_reads_the_logits(demo_model, demo_test_set):
    """The virtual softmax of a model ending in F.softmax is optimised on the logits its softmax
    was fed and its peak is p, as the nn.Softmax twin's layer (it pushed the probability and
    reported a softmax of it: peaks of 0.23 against 0.9999)."""
    import numpy as np

    from sketchmine import feature_visualization

    module = ModuleNet(demo_model.module, "softmax").eval()
    functional = FunctionalNet(demo_model.module, "softmax").eval()
    want = feature_visualization(module, "prob", [0, 1], steps=6, size=28,
                                 preprocessing=demo_test_set.preprocessing)
    got = feature_visualization(functional, "softmax", [0, 1], steps=6, size=28,
                                 preprocessing=demo_test_set.preprocessing)
    torch.testing.assert_close(got.images, want.images)
    np.testing.assert_allclose(got.peak, want.peak, rtol=1e-6)


class _BlockF(nn.Module):
    """torchvision's BasicBlock written with F.relu and `out + identity` (no shared ReLU module)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + identity)


class _ResNetF(nn.Module):
    """The embedded demo ResNet, its ReLUs, adds and global pooling called as functions."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.fc, self.stages = net.conv1, net.bn1, net.fc, net.stages
        for s in range(net.stages):
            setattr(self, f"layer{s + 1}", nn.Sequential(*[_BlockF(b) for b in getattr(net, f"layer{s + 1}")]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        for s in range(self.stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_a_functional_resnet_is_deconvolved_as_its_modules(demo_test_set, method):
    """The demo ResNet (its block ReLU a module called twice) and its functional twin: the same
    signal for a stem conv, a block conv behind residual adds, the classifier and the softmax,
    on real images, within float32 rounding."""
    from sketchmine.model.models import load_model

    module = copy.deepcopy(load_model("demo-resnet").module).eval()
    functional = _ResNetF(copy.deepcopy(module)).eval()
    x = torch.stack([demo_test_set[i][1] for i in range(0, 400, 100)])
    units = [0, 1, 2, 3]
    for layer, yx in [("conv1", [[3, 4], [27, 0], [14, 14], [0, 27]]), ("layer2.1.conv2", [[0, 0], [6, 7], [13, 13], [2, 9]]),
                      ("fc", None), ("softmax", None)]:
        want = deconvolve(module, x, layer, units, yx, method=method)
        got = deconvolve(functional, x, layer, units, yx, method=method)
        assert want.abs().amax((1, 2, 3)).min() > 0, layer
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_the_virtual_softmax_of_an_onnx_graph_ending_in_softmax_is_its_output(demo_model, small_test_set, tmp_path):
    """The functional twin exported to ONNX ends in a Softmax node: the virtual softmax, named,
    was a softmax of its probabilities (top-1 0.23); it is the node's output, as that layer."""
    import numpy as np

    from sketchmine import mine

    path = tmp_path / "twin.onnx"
    net = FunctionalNet(demo_model.module, "softmax").eval()
    torch.onnx.export(net, small_test_set[0][1][None], str(path), input_names=["x"], output_names=["p"],
                      dynamic_axes={"x": {0: "n"}, "p": {0: "n"}}, dynamo=False)
    run = mine(str(path), small_test_set, out=tmp_path / "run.zarr", k=5, batch_size=100,
               preprocessing=small_test_set.preprocessing)
    node = [name for name in run.layers if name.endswith("Softmax")]
    assert len(node) == 1
    named = mine(str(path), small_test_set, ["softmax"], out=tmp_path / "named.zarr", k=5, batch_size=100,
                 preprocessing=small_test_set.preprocessing)
    assert float(named.topk("softmax")[0][:, 0].min()) > 0.99
    for got, want in zip(named.topk("softmax"), run.topk(node[0])):
        np.testing.assert_array_equal(got, want)
