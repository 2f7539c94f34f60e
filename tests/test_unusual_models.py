"""Models that are legal in torch but unusual (found by an audit): double and integer outputs,
TorchScript modules, a head the forward never calls, a model kept channels-last, a half model's
receptive fields. Real sketches, small models; each test failed before its fix."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine import SketchmineError
from tests.helpers import brute_topk, per_class_subset


@pytest.fixture(scope="module")
def sketches(small_test_set):
    """40 real test sketches as a torch Dataset of (1, 28, 28) tensors in [0, 1]."""
    sub = per_class_subset(small_test_set, 4, "unusual")
    x = torch.from_numpy(np.asarray(sub.images)).float().div(255)[:, None]
    return torch.utils.data.TensorDataset(x, torch.from_numpy(sub.labels()).long())


def _output(net: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module`'s output in one plain forward of `x` (a forward hook): the brute force's input."""
    got: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
    try:
        with torch.inference_mode():
            net(x)
    finally:
        handle.remove()
    return got[0]


class _Net(nn.Module):
    """conv, global max, a head; `aux` runs only in training (GoogLeNet's auxiliary heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.fc = nn.Linear(8, 10)
        self.aux = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor):
        h = torch.relu(self.conv1(x))
        out = self.fc(torch.relu(self.conv2(h)).amax(dim=(2, 3)))
        return (out, self.aux(h.amax(dim=(2, 3)))) if self.training else out


def _net(seed: int = 5) -> _Net:
    torch.manual_seed(seed)
    return _Net().eval()


def test_a_double_model_is_refused_naming_the_layer(sketches, tmp_path):
    """Its activations were ranked at float32 precision (ties broken by index) and its bottom-k
    positions all read the last cell; the statistics are float32, so a double model is refused."""
    double = torch.utils.data.TensorDataset(sketches.tensors[0].double(), sketches.tensors[1])
    with pytest.raises(SketchmineError, match=r"layer 'conv1' outputs float64 .*model\.float\(\)"):
        sketchmine.mine(_net().double(), double, layers=["conv1"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


def test_an_integer_output_is_refused_before_the_run_exists(sketches, tmp_path):
    class Counts(nn.Module):
        def forward(self, x):
            return (x > 0.5).sum(dim=1, dtype=torch.int32)

    net = _net()
    net.counts = Counts()
    net.forward = lambda x: (net.counts(x), _Net.forward(net, x))[1]  # type: ignore[method-assign]
    with pytest.raises(SketchmineError, match=r"layer 'counts' outputs int32 .*floating-point"):
        sketchmine.mine(net, sketches, layers=["counts", "conv1"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.parametrize("make", [torch.jit.trace, lambda net, x: torch.jit.script(net)])
@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_a_torchscript_module_is_refused(sketches, tmp_path, make):
    """No hook fires inside its graph: the default layers were silently only the softmax."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 24 * 24, 10)).eval()
    with pytest.raises(SketchmineError, match="TorchScript module .* pass the nn.Module"):
        sketchmine.mine(make(net, sketches[0][0][None]), sketches, out=tmp_path / "r.zarr")


def test_the_default_layers_leave_out_a_head_the_forward_never_calls(sketches, tmp_path, caplog):
    net = _net()
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(net, sketches, k=3, out=tmp_path / "r.zarr", batch_size=16)
    assert run.layers == ["conv1", "conv2", "fc", "softmax"]
    assert any("not called" in r.getMessage() and "aux" in r.getMessage() for r in caplog.records)
    acts = _output(net, net.conv2, sketches.tensors[0])
    values, index, _ = run.topk("conv2")
    want_values, want_index = brute_topk(acts, 3)[:2]
    assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)
    again = sketchmine.mine(net, sketches, k=3, out=tmp_path / "r.zarr", batch_size=16)  # resumes: the same layers
    assert again.layers == run.layers
    with pytest.raises(SketchmineError, match="layer 'aux' was not called during the forward pass"):  # named: refused
        sketchmine.mine(net, sketches, layers=["conv1", "aux"], out=tmp_path / "named.zarr")
    # every such layer in one refusal: a user naming many modules learned them one call at a time
    net.spare = nn.Conv2d(1, 2, 1)  # never called either
    with pytest.raises(SketchmineError, match=r"layers 'aux', 'spare' were not called during the forward pass; they"):
        sketchmine.mine(net, sketches, layers=["aux", "conv1", "spare"], out=tmp_path / "named.zarr")


def test_a_channels_last_model_stays_channels_last(sketches, tmp_path):
    net = _net().to(memory_format=torch.channels_last)
    before = net.conv2.weight.stride()
    sketchmine.mine(net, sketches, layers=["conv2"], k=2, out=tmp_path / "r.zarr", channels_last=True)
    assert net.conv2.weight.stride() == before and not net.conv2.weight.is_contiguous()
    plain = _net()
    sketchmine.mine(plain, sketches, layers=["conv2"], k=2, out=tmp_path / "p.zarr", channels_last=True)
    assert plain.conv2.weight.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_model_has_receptive_fields(dtype):
    """The shape propagation fed a float input to a half model and failed: no fields, and
    visualize refused every grid layer, blaming the input size."""
    fields = sketchmine.receptive_fields(_net().to(dtype), 28)
    assert fields["conv2"] == sketchmine.receptive_fields(_net(), 28)["conv2"]
    assert fields["conv2"].size == (7, 7) and fields["conv2"].stride == (2, 2)


class _Flipped(nn.Module):
    """Test-time augmentation: conv1 sees the batch doubled, [every image, every flip]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(torch.cat([x, x.flip(3)]))).amax(dim=(2, 3))
        return self.fc(h.reshape(2, -1, h.shape[1]).sum(0))


class _Attention(nn.Module):
    """A time-first attention layer over the image's rows: (L, N, E) whatever N is."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(28, 4)
        self.fc = nn.Linear(28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0].permute(1, 0, 2)  # (L=28, N, E=28)
        return self.fc(self.attn(rows, rows, rows)[0].mean(0))


class _Patches(nn.Module):
    """Four quadrants of each image through one conv, folded into the batch image by image:
    (N, 4, 1, 14, 14) -> (N*4, ...), the order a time-distributed CNN has."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.unfold(2, 14, 14).unfold(3, 14, 14).permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, 14, 14)
        h = torch.relu(self.conv1(q)).amax(dim=(2, 3)).view(len(x), 4, 6).amax(1)
        return self.fc(h)


@pytest.mark.parametrize("make,layer", [(_Flipped, "conv1"), (_Attention, "attn")])
def test_rows_that_are_not_each_images_in_turn_are_refused(sketches, tmp_path, make, layer):
    """The doubled batch's rows were read as two frames of each image (top-k image indices
    wrong, and changing with the batch size); the attention's L rows as frames of one image,
    its units fused into one."""
    torch.manual_seed(0)
    with pytest.raises(SketchmineError, match=rf"layer '{layer}' returns \d+ rows per image, and they are not"):
        sketchmine.mine(make().eval(), sketches, layers=[layer], out=tmp_path / "r.zarr", batch_size=16)
    assert not (tmp_path / "r.zarr").exists()


def test_rows_folded_image_by_image_are_mined_per_image(sketches, tmp_path):
    torch.manual_seed(0)
    net = _Patches().eval()
    per_image = _output(net, net.conv1, sketches.tensors[0]).view(len(sketches), 4, 6, 12, 12).movedim(1, 2).flatten(2, 3)  # quadrants stacked along y
    for batch_size in (16, 40):
        run = sketchmine.mine(net, sketches, layers=["conv1"], k=3, out=tmp_path / f"r{batch_size}.zarr",
                              batch_size=batch_size)
        values, index, yx = run.topk("conv1")
        want_values, want_index, want_flat = brute_topk(per_image, 3)
        assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)
        assert np.array_equal(yx[..., 0] * 12 + yx[..., 1], want_flat)


class _Volume(nn.Module):
    """A Conv3d over the sketch stacked with its flips as a depth of 3 (a video model's layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3 = nn.Conv3d(1, 5, (2, 5, 5))
        self.fc = nn.Linear(5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.stack([x, x.flip(-1), x.flip(-2)], dim=2)  # (N, 1, 3, 28, 28)
        return self.fc(torch.relu(self.conv3(v)).amax(dim=(2, 3, 4)))


def test_a_conv3d_layer_keeps_its_positions_stacked_along_y(sketches, tmp_path):
    """Its (d, y, x) peaks were stored as (-1, -1), the mark of a layer without positions."""
    torch.manual_seed(0)
    net = _Volume().eval()
    acts = _output(net, net.conv3, sketches.tensors[0])  # (N, 5, 2, 24, 24)
    run = sketchmine.mine(net, sketches, layers=["conv3"], k=3, out=tmp_path / "r.zarr", batch_size=16)
    assert run.layer_shape("conv3") == (5, 48, 24)
    assert run.layer_attrs("conv3")["yx"] == "(d * frame_height + y, x)"
    values, index, yx = run.topk("conv3")
    want_values, want_index, want_flat = brute_topk(acts, 3)
    assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)
    d, y, x = np.unravel_index(want_flat, (2, 24, 24))
    assert np.array_equal(yx[..., 0], d * 24 + y) and np.array_equal(yx[..., 1], x)
    assert (yx >= 0).all()


def test_dict_outputs_are_refused_naming_what(sketches, tmp_path):
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _net()

        def forward(self, x):
            return {"logits": self.body(x)}

    with pytest.raises(SketchmineError, match="the model returns a dict; .* wrap the model"):
        sketchmine.mine(Heads().eval(), sketches, layers=["body.conv1"], out=tmp_path / "r.zarr")

    class Named(nn.Module):
        def forward(self, x):
            return {"x": x}

    net = _net()
    net.named = Named()
    net.forward = lambda x: _Net.forward(net, net.named(x)["x"])  # type: ignore[method-assign]
    with pytest.raises(SketchmineError, match="layer 'named' returns a dict; a tap reads a tensor"):
        sketchmine.mine(net, sketches, layers=["named"], out=tmp_path / "r2.zarr")
    assert not (tmp_path / "r.zarr").exists() and not (tmp_path / "r2.zarr").exists()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_an_onnx_tensor_whose_rows_are_not_the_images_is_refused(sketches, tmp_path):
    torch.manual_seed(0)
    net = _Flipped().eval()
    path = tmp_path / "flipped.onnx"
    torch.onnx.export(net, (sketches.tensors[0][:2],), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    with pytest.raises(SketchmineError, match=r"layer 'conv1' of flipped.onnx returns 2 rows for 1 image"):
        sketchmine.mine(str(path), sketches, layers=["conv1"], out=tmp_path / "r.zarr")


def test_a_half_model_is_fed_half_input(small_test_set, tmp_path):
    """A bfloat16 model mined from arrays (float32 batches) was refused at the probe, blaming the
    input size; its results equal a plain-hook brute force in its own dtype."""
    data = per_class_subset(small_test_set, 3, "unusual_half")
    net = _net().to(torch.bfloat16)
    run = sketchmine.mine(net, data, layers=["conv2"], k=3, out=tmp_path / "r.zarr", batch_size=16)
    x = torch.stack([data[i][1] for i in range(len(data))]).to(torch.bfloat16)
    values, index, _ = run.topk("conv2")
    want_values, want_index = brute_topk(_output(net, net.conv2, x).float(), 3)[:2]
    assert np.array_equal(index, want_index) and np.array_equal(values, want_values)
    assert run.attrs["model_dtype"] == "bfloat16" and run.precision == "bfloat16"  # readers say it
    assert "bfloat16" in repr(run)


def test_channels_last_on_a_model_without_4d_weights_is_refused(sketches, tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with pytest.raises(SketchmineError, match="channels_last .* has none, so it would change nothing"):
        sketchmine.mine(mlp, sketches, out=tmp_path / "r.zarr", channels_last=True)


class _Shared(nn.Module):
    """One conv registered under two names (CoaT's shared position encoding), and a head whose
    weight is another module's too (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.mix_again = self.mix
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 4)
        self.tied = nn.Linear(4, 4, bias=False)
        self.tied.weight = self.fc.weight
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.mix(self.conv1(x))).amax((2, 3))
        return self.head(self.tied(self.fc(y)))


def test_a_module_under_two_names_and_tied_weights_are_left_as_they_were(sketches, tmp_path):
    """The shape probe swapped in meta tensors and, for the second name of a shared module, put
    one back as its "original": the caller's model kept meta weights, every layer after them was
    mined wrong, and the model no longer ran."""
    torch.manual_seed(0)
    net = _Shared().eval()
    before = {n: p.detach().clone() for n, p in net.named_parameters(remove_duplicate=False)}
    run = sketchmine.mine(net, sketches, layers=["act", "tied"], k=3, out=tmp_path / "r.zarr")
    after = dict(net.named_parameters(remove_duplicate=False))
    assert all(not p.is_meta and torch.equal(p.detach(), before[n]) for n, p in after.items())
    assert net.mix_again is net.mix and net.tied.weight is net.fc.weight
    for layer in ("act", "tied"):
        acts = _output(net, dict(net.named_modules())[layer], sketches.tensors[0])
        values, index, _ = run.topk(layer)
        want_values, want_index, _ = brute_topk(acts, 3)
        assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6), layer


def test_weights_shared_by_two_modules_keep_the_meta_shape_path():
    """Swapped for meta tensors under one module's name only, the other module ran its real
    weights on meta inputs: a norm refused the mix, and the shapes took a real forward."""
    from sketchmine.model.meta import meta_call

    class Trident(nn.Module):  # three dilations of one conv and one norm (TridentNet)
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(1, 4, 3, padding=d, dilation=d) for d in (1, 2, 3))
            self.norms = nn.ModuleList(nn.GroupNorm(2, 4) for _ in range(3))
            for conv, norm in zip(self.convs[1:], self.norms[1:]):
                conv.weight, conv.bias, norm.weight, norm.bias = (self.convs[0].weight, self.convs[0].bias,
                                                                  self.norms[0].weight, self.norms[0].bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return sum(n(c(x)) for c, n in zip(self.convs, self.norms))

    net = Trident().eval()
    out = meta_call(net, torch.rand(2, 1, 12, 12))
    assert out.is_meta and out.shape == (2, 4, 12, 12)
    assert not any(p.is_meta for p in net.parameters()) and net.convs[2].weight is net.convs[0].weight


def test_a_lazy_model_and_an_old_weight_norm_are_left_as_a_forward_leaves_them(sketches, tmp_path):
    """A lazy model not yet run is refused, saying how to make it (it was "takes 0-channel input",
    and the receptive fields' meta call made its weights meta tensors for good); the old
    weight_norm's computed `weight` was left a meta tensor until the next forward."""
    import warnings

    from sketchmine.model.receptive_field import receptive_fields

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, and still in models
        net = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.utils.weight_norm(nn.Conv2d(4, 4, 3)), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    with pytest.raises(SketchmineError, match=r"lazy modules not made yet \(0\): run it once on an input of its size"):
        sketchmine.mine(net, sketches, layers=["1", "3"], k=3, out=tmp_path / "lazy.zarr")
    with torch.no_grad():
        net(sketches.tensors[0][:1])  # as the refusal says
    assert receptive_fields(net, (1, 28, 28))["3"].size == (5, 5) and not net[2].weight.is_meta
    run = sketchmine.mine(net, sketches, layers=["1", "3"], k=3, out=tmp_path / "r.zarr")
    assert not any(t.is_meta for t in (*net.parameters(), net[2].weight))
    for layer in ("1", "3"):
        acts = _output(net, net[int(layer)], sketches.tensors[0])
        values, index, _ = run.topk(layer)
        want_values, want_index, _ = brute_topk(acts, 3)
        assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6), layer
