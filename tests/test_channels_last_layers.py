"""Modules that hold their channels last: between a ConvNeXt block's permutes, a LayerNorm, a
GELU and the Permute itself return (N, H, W, C). They were mined along dim 1 (H "units", each a
W×C map): wrong units, wrong positions, wrong crops, said nowhere. The graph tells where the
channels are; every pass reads such a module by its channels, as the Linear between them was.
Real sketches, torchvision's own ConvNeXt block; each test fails on the old reading."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.convnext import CNBlock

import sketchmine
from sketchmine.model.layouts import CHANNELS_LAST
from sketchmine.passes.featvis import LayerReader
from sketchmine.passes.probe import ProbeNet
from tests.helpers import brute_topk, per_class_subset

C, SIDE = 8, 14  # channels unlike the grid's sides, so no reading along another dim has the right shape
INSIDE = {"block.block.1": C, "block.block.2": C, "block.block.4": 4 * C}  # Permute, LayerNorm, GELU: (N, H, W, C)


class _ConvNeXtLike(nn.Module):
    """A stem to a 14×14 grid, one torchvision ConvNeXt block, a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, C, 2, stride=2)
        self.block = CNBlock(C, layer_scale=1.0, stochastic_depth_prob=0.0)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


@pytest.fixture(scope="module")
def sketches(small_test_set):
    sub = per_class_subset(small_test_set, 4, "channels-last")
    x = torch.from_numpy(np.asarray(sub.images)).float().div(255)[:, None]
    return torch.utils.data.TensorDataset(x, torch.from_numpy(sub.labels()).long())


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return _ConvNeXtLike().eval()


def _channels_first(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output in one plain forward, as (N, C, H, W): permuted by hand where the
    module returns (N, H, W, C)."""
    got: list[torch.Tensor] = []
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
    try:
        with torch.inference_mode():
            net(x)
    finally:
        handle.remove()
    return got[0].permute(0, 3, 1, 2) if layer in INSIDE or layer == "block.block.3" else got[0]


def test_modules_between_permutes_are_mined_by_their_channels(net, sketches, tmp_path):
    layers = [*INSIDE, "block.block.3", "block"]
    run = sketchmine.mine(net, sketches, layers=layers, k=3, out=tmp_path / "r.zarr", batch_size=len(sketches))
    x = sketches.tensors[0]
    for layer in layers:
        acts = _channels_first(net, layer, x)
        assert run.layer_shape(layer) == tuple(acts.shape[1:]) == (INSIDE.get(layer, 4 * C if "3" in layer else C),
                                                                   SIDE, SIDE), layer
        values, index, yx = run.topk(layer)
        want_values, want_index, want_flat = brute_topk(acts, 3)
        assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6), layer
        assert np.array_equal(yx[..., 0] * SIDE + yx[..., 1], want_flat), layer
        assert (run.layer_attrs(layer).get("layout") == CHANNELS_LAST) == (layer in INSIDE), layer
        assert run.layer_attrs(layer)["receptive_field"]["stride"] == [2, 2], layer  # crops on the grid's own field


def test_ablating_a_unit_between_permutes_zeroes_its_channel(net, sketches, tmp_path):
    layer, unit = "block.block.4", 20  # 32 channels; the old reading had 14 units
    run = sketchmine.mine(net, sketches, layers=[layer], k=2, out=tmp_path / "r.zarr")
    df = sketchmine.unit_importance(run, layer, model=net, dataset=sketches, batch_size=len(sketches))
    assert len(df) == 4 * C
    drop = _drop_last(net, layer, unit, *sketches.tensors)  # the channel: the last dim of (N, H, W, C)
    assert abs(drop) > 1e-6  # a unit whose removal changes something: the test can fail
    assert df.set_index("unit").loc[unit, "prob_drop"] == pytest.approx(drop, abs=1e-6)


def _drop_last(net: nn.Module, layer: str, unit: int, x: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean drop of the correct class's probability when `unit` of the layer's last dim is
    zeroed at every position: plain hooks, the reference of the ablation."""
    def probs(zero: int | None) -> np.ndarray:
        def hook(m, i, o):
            o = o.clone()
            o[..., zero] = 0
            return o

        handle = dict(net.named_modules())[layer].register_forward_hook(hook) if zero is not None else None
        try:
            with torch.inference_mode():
                return torch.softmax(net(x).double(), 1).gather(1, labels[:, None])[:, 0].numpy()
        finally:
            if handle is not None:
                handle.remove()

    return float((probs(None) - probs(unit)).mean())


def test_feature_visualisation_and_deconvolution_read_the_channel(net, sketches):
    layer, unit = "block.block.2", 5
    reader = LayerReader(net, layer)
    assert reader.unit_count(torch.rand(1, 1, 28, 28)) == C
    x = sketches.tensors[0][:2].clone()
    out = reader(x)
    assert torch.equal(out, _channels_first(net, layer, x).float())
    got = sketchmine.deconvolve(net, x, layer, [unit, unit], [(3, 9), (3, 9)], method="gradient")
    want = x.clone().requires_grad_()
    acts: list[torch.Tensor] = []
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        net(want)
    finally:
        handle.remove()
    acts[0][:, 3, 9, unit].sum().backward()  # (N, H, W, C): row 3, column 9, the unit's channel
    assert want.grad.abs().sum() > 0
    assert torch.allclose(got, want.grad, atol=1e-6)


def test_the_live_probe_reads_the_channel(net, sketches, tmp_path):
    layer = "block.block.4"
    run = sketchmine.mine(net, sketches, layers=[layer], k=2, out=tmp_path / "r.zarr")
    from sketchmine.data import Preprocessing

    pre = Preprocessing("none", 1, None, (0.0,), (1.0,))
    probe = ProbeNet(net, [layer], pre, known={layer: run.layer_attrs(layer)}).eval()
    pixels = sketches.tensors[0][:1] * 255
    with torch.no_grad():
        _, per_unit, grid = probe(pixels)
    want = _channels_first(net, layer, pixels / 255)[0]
    assert per_unit.shape == (4 * C,) and torch.allclose(per_unit, want.flatten(1).amax(1))
    assert grid.shape == (4 * C, SIDE, SIDE) and torch.allclose(grid, want)


class _Rows(nn.Module):
    """A per-row Linear over the image's 28 rows, (N, 28, 28) → (N, 28, 16): features last, as a
    per-step classifier's."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Linear(28, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.rows(x[:, 0])).mean(1))


@pytest.mark.parametrize("dynamo", [False, True])
def test_an_onnx_export_is_mined_as_its_torch_module(net, sketches, tmp_path, dynamo):
    """The ONNX backend read every tensor along axis 1: an exported Linear on (N, H, W, F) or
    (N, T, F), a default layer, had H or T "units"; the nodes between the block's Transposes too."""
    pytest.importorskip("onnxruntime")
    from tests.test_onnx import export

    torch.manual_seed(1)
    for model, layers in ((net, ["block.block.0", "block.block.2", "block.block.3", "block.block.4", "block"]),
                          (_Rows().eval(), ["rows"])):
        path = export(model, tmp_path / f"{type(model).__name__}.onnx", dynamo=dynamo)
        onnx = sketchmine.load_model(path)
        want = sketchmine.mine(model, sketches, layers=layers, k=3, out=tmp_path / f"t{len(layers)}.zarr")
        got = sketchmine.mine(onnx, sketches, layers=layers, k=3, out=tmp_path / f"o{len(layers)}.zarr")
        for layer in layers:
            assert got.layer_shape(layer) == want.layer_shape(layer), layer
            (gv, gi, gyx), (wv, wi, wyx) = got.topk(layer), want.topk(layer)
            assert np.array_equal(gi, wi) and np.array_equal(gyx, wyx) and np.allclose(gv, wv, rtol=1e-5, atol=1e-6)
        if model is net:  # by default too: the exported Linears are MatMul nodes, mined by default
            default = sketchmine.mine(onnx, sketches, k=3, out=tmp_path / "default.zarr")
            assert default.layer_shape("block.block.3") == (4 * C, SIDE, SIDE)


def test_an_onnx_tensor_with_its_grid_transposed_is_refused(sketches, tmp_path):
    pytest.importorskip("onnxruntime")
    from tests.test_onnx import export

    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act, self.head = nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.conv(x).transpose(2, 3)).amax((2, 3)))

    onnx = sketchmine.load_model(export(Transposed().eval(), tmp_path / "t.onnx"))
    with pytest.raises(sketchmine.SketchmineError, match=r"holds its axes as \(N, C, W, H\)"):
        sketchmine.mine(onnx, sketches, layers=["act"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


def _transformers() -> list[tuple[nn.Module, list[str], tuple[int, ...]]]:
    """torchvision's Swin (channels last all through, past an attention the fields cannot follow),
    MaxViT (windows partitioned to (N, windows, pixels, C), swapped for the grid attention, an
    einsum attention before a Linear) and ViT (tokens, features last), small: each with its layers
    and the permute to (N, units, ...)."""
    from torchvision.models.maxvit import MaxVit
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(2)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10).eval()
    vit = VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=2, hidden_dim=12, mlp_dim=20,
                            num_classes=10).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts it at zero: every image alike, nothing to ablate
    block = "encoder.layers.encoder_layer_0"
    maxvit = MaxVit(input_size=(28, 28), stem_channels=8, partition_size=7, block_channels=[8], block_layers=[1],
                    head_dim=4, stochastic_depth_prob=0.0, num_classes=10).eval()
    part = "blocks.0.layers.0.layers"
    return [(maxvit, [f"{part}.window_attention.partition_op", f"{part}.window_attention.attn_layer",
                      f"{part}.window_attention.mlp_layer.2", f"{part}.grid_attention.partition_swap"],
             (0, 3, 1, 2)),
            (swin, ["features.1.0.norm1", "features.1.0.attn", "features.1.0", "features.1.0.mlp.1", "features.2",
                    "norm"], (0, 3, 1, 2)),
            (vit, [f"{block}.ln_1", f"{block}.self_attention", f"{block}.mlp.1", block, "encoder.ln"], (0, 2, 1))]


def test_transformer_blocks_are_mined_by_their_channels(sketches, tmp_path):
    x = sketches.tensors[0].expand(-1, 3, -1, -1).contiguous()  # RGB: torchvision's transformers take 3 channels
    rgb = torch.utils.data.TensorDataset(x, sketches.tensors[1])
    for net, layers, perm in _transformers():
        run = sketchmine.mine(net, rgb, layers=layers, k=3, out=tmp_path / f"{type(net).__name__}.zarr",
                              batch_size=len(rgb))
        for layer in layers:
            got: list[torch.Tensor] = []
            handle = dict(net.named_modules())[layer].register_forward_hook(
                lambda m, i, o: got.append((o[0] if isinstance(o, tuple) else o).detach()))
            with torch.inference_mode():
                net(x)
            handle.remove()
            acts = got[0].permute(*perm)  # (N, units, *positions)
            assert run.layer_shape(layer) == tuple(acts.shape[1:]), layer
            values, index, _ = run.topk(layer)
            want_values, want_index, _ = brute_topk(acts, 3)
            assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6), layer
    vit_block, unit = "encoder.layers.encoder_layer_0", 7
    df = sketchmine.unit_importance(run, vit_block, model=net, dataset=rgb, batch_size=len(rgb))
    assert len(df) == 12  # the features, not the 17 tokens
    drop = _drop_last(net, vit_block, unit, x, sketches.tensors[1])  # the feature, at every token
    assert abs(drop) > 1e-6 and df.set_index("unit").loc[unit, "prob_drop"] == pytest.approx(drop, abs=1e-6)


def test_a_module_the_graph_cannot_place_is_said(sketches, tmp_path, caplog):
    """Channels last after an op the graph does not follow (matmul by a tensor): read on axis 1, said."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act, self.head = nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 10)
            self.mix = nn.Parameter(torch.eye(4) + 0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(torch.matmul(self.conv(x).permute(0, 2, 3, 1), self.mix))  # (N, H, W, 4)
            return self.head(y.amax((1, 2)))

    with caplog.at_level("WARNING", logger="sketchmine"):
        sketchmine.mine(Mixed().eval(), sketches, layers=["conv", "act"], k=2, out=tmp_path / "r.zarr")
    said = [r.getMessage() for r in caplog.records if "read with their units on axis 1" in r.getMessage()]
    assert len(said) == 1 and "(act:" in said[0] and "conv" not in said[0].split("(")[1]


def test_an_onnx_tensor_the_graph_cannot_place_is_said(sketches, tmp_path, caplog):
    """A tensor after an op the ONNX graph is not followed through (a cumulative sum) is read
    along axis 1, and said; the conv before it is placed."""
    pytest.importorskip("onnxruntime")
    from tests.test_onnx import export

    class Summed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act, self.head = nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(torch.cumsum(self.conv(x), 1)).amax((2, 3)))

    onnx = sketchmine.load_model(export(Summed().eval(), tmp_path / "summed.onnx"))
    with caplog.at_level("WARNING", logger="sketchmine"):
        sketchmine.mine(onnx, sketches, layers=["conv", "act"], k=2, out=tmp_path / "r.zarr")
    said = [r.getMessage() for r in caplog.records if "read with their units on axis 1" in r.getMessage()]
    assert len(said) == 1 and "(act)" in said[0]


class _Grey3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1)


def test_a_run_that_read_a_module_along_another_axis_is_not_resumed(net, sketches, tmp_path):
    """A run mined before the graph placed units read a LayerNorm between the permutes along H:
    resumed, its top-k so far would be of other units (refused as damage, or mixed silently
    where H == W == C). It is refused, saying why."""
    import json

    from tests.helpers import StopAfter

    out, layer = tmp_path / "r.zarr", "block.block.2"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(net, sketches, out=out, layers=[layer], batch_size=10, flush_every=1, progress=StopAfter(20))
    meta_file = out / "layers" / layer / "zarr.json"
    meta = json.loads(meta_file.read_text())
    assert meta["attributes"].pop("layout") == CHANNELS_LAST  # as an older sketchmine wrote it
    meta["attributes"]["shape"] = [SIDE, SIDE, C]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(sketchmine.SketchmineError, match=r"'block.block.2' of .* was mined reading its units along "
                                                          r"axis 1, \(N, C, \.\.\.\); this sketchmine reads them last"):
        sketchmine.mine(net, sketches, out=out, layers=[layer], batch_size=10)


def test_frames_folded_into_the_batch_are_unfolded_after_the_units_move(sketches, tmp_path):
    """A ConvNeXt block run on each frame of a sequence, (N, T, C, H, W) folded to (N*T, ...): the
    LayerNorm's channels moved to axis 1 and its frames stacked along y, as a conv's there."""

    class Frames(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.block, self.head = nn.Conv2d(1, C, 2, stride=2), CNBlock(C, 1.0, 0.0), nn.Linear(C, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t = x.shape[:2]
            return self.head(self.block(self.stem(x.flatten(0, 1))).mean((2, 3)).unflatten(0, (n, t)).mean(1))

    torch.manual_seed(3)
    model = Frames().eval()
    x = torch.stack([sketches.tensors[0], sketches.tensors[0].flip(-1)], 1)  # two frames a sample
    seq = torch.utils.data.TensorDataset(x, sketches.tensors[1])
    run = sketchmine.mine(model, seq, layers=["block.block.2", "block.block.0"], k=3, out=tmp_path / "r.zarr",
                          batch_size=len(seq))
    got: list[torch.Tensor] = []
    handle = model.block.block[2].register_forward_hook(lambda m, i, o: got.append(o.detach()))
    with torch.inference_mode():
        model(x)
    handle.remove()
    stacked = got[0].permute(0, 3, 1, 2).unflatten(0, (len(seq), 2)).movedim(1, 2).flatten(2, 3)  # (N, C, T*H, W)
    assert run.layer_shape("block.block.2") == run.layer_shape("block.block.0") == (C, 2 * SIDE, SIDE)
    values, index, yx = run.topk("block.block.2")
    want_values, want_index, want_flat = brute_topk(stacked, 3)
    assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)
    assert np.array_equal(yx[..., 0] * SIDE + yx[..., 1], want_flat)


class _Gated(nn.Module):
    """An Inception-style cat of branches along the channels, a CBAM spatial gate, and a
    hand-written channel norm (means over the channels, kept): every module channels first."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.gate = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 5, padding=2), nn.Conv2d(2, 1, 7, padding=3)
        self.joined, self.gated, self.normed, self.head = nn.ReLU(), nn.ReLU(), nn.GELU(), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.joined(torch.cat([self.a(x), self.b(x)], 1))
        y = self.gated(y * torch.sigmoid(self.gate(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1))))
        mean = y.mean(1, keepdim=True)
        y = self.normed((y - mean) / torch.sqrt((y - mean).pow(2).mean(1, keepdim=True) + 1e-6))
        return self.head(y.mean((2, 3)))


def test_channels_first_modules_after_cats_gates_and_channel_means_are_placed(sketches, tmp_path, caplog):
    """They were read right, but said to be unplaceable ("read along the wrong axis")."""
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(_Gated().eval(), sketches, layers=["joined", "gated", "normed"], k=2,
                              out=tmp_path / "r.zarr")
    assert not [r for r in caplog.records if "units on axis 1" in r.getMessage()]
    assert all(run.layer_shape(n) == (8, 28, 28) for n in ("joined", "gated", "normed"))


def test_an_onnx_export_of_channels_first_modules_is_not_said_unplaced(sketches, tmp_path, caplog):
    """Its convs after a Concat were said to be read along the wrong axis, by default."""
    pytest.importorskip("onnxruntime")
    from tests.test_onnx import export

    onnx = sketchmine.load_model(export(_Gated().eval(), tmp_path / "gated.onnx"))
    with caplog.at_level("WARNING", logger="sketchmine"):
        sketchmine.mine(onnx, sketches, k=2, out=tmp_path / "default.zarr")
        sketchmine.mine(onnx, sketches, layers=["joined", "gated", "normed"], k=2, out=tmp_path / "named.zarr")
    assert not [r for r in caplog.records if "units on axis 1" in r.getMessage()]


class _Functional(nn.Module):
    """A weight-standardised conv called as F.conv2d (timm's StdConv2d) and channels split in two
    halves (CSPNet), each half's activation tapped."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 1, 3, 3))
        self.left, self.right, self.head = nn.ReLU(), nn.GELU(), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
        a, b = torch.nn.functional.conv2d(x, w, padding=1).chunk(2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def test_functional_convs_and_split_channels_are_placed(sketches, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(_Functional().eval(), sketches, layers=["left", "right"], k=2, out=tmp_path / "r.zarr")
    assert not [r for r in caplog.records if "units on axis 1" in r.getMessage()]
    assert run.layer_shape("left") == run.layer_shape("right") == (4, 28, 28)


class _WithDefaults(nn.Module):
    """A forward with arguments after the image that have defaults (timm's ViT: attn_mask=None):
    traced as inputs, `mask is not None` took the branch a plain call never does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm, self.act, self.head = nn.Conv2d(1, C, 2, stride=2), nn.LayerNorm(C), nn.GELU(), nn.Linear(C, 10)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        y = self.norm(self.stem(x).permute(0, 2, 3, 1) * scale)  # (N, H, W, C)
        if mask is not None:
            y = torch.matmul(y, mask)
        return self.head(self.act(y).mean((1, 2)))


def test_a_forward_with_defaults_is_traced_as_a_plain_call_runs(sketches, tmp_path, caplog):
    model = _WithDefaults().eval()
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(model, sketches, layers=["norm", "act"], k=2, out=tmp_path / "r.zarr")
    assert not [r for r in caplog.records if "units on axis 1" in r.getMessage() or "no receptive" in r.getMessage()]
    assert run.layer_attrs("act")["layout"] == CHANNELS_LAST and run.layer_shape("act") == (C, SIDE, SIDE)
    assert run.layer_attrs("act")["receptive_field"]["size"] == [2, 2]
    df = sketchmine.unit_importance(run, "act", model=model, dataset=sketches, batch_size=len(sketches))
    assert df.attrs["method"] == "split" and len(df) == C  # the cut traced as a plain call runs, too


def test_visualize_crops_and_deconvolves_a_channels_last_unit_where_it_peaks(net, small_test_set, tmp_path):
    """visualize reads the layer as mined (its recorded layout): each patch is the receptive field
    around the unit's peak (y, x) on the grid, and its deconvolution is `deconvolve`'s of that unit."""
    from sketchmine.stats.ops import crop_patches_reference

    layer = "block.block.2"
    ds = per_class_subset(small_test_set, 2, "channels-last-vis")
    sketchmine.mine(net, ds, layers=[layer], k=2, out=tmp_path / "r.zarr", batch_size=len(ds))
    run = sketchmine.visualize(tmp_path / "r.zarr", model=net, data=ds, batch_size=8)
    assert run.layer_shape(layer) == (C, SIDE, SIDE)  # its channels, on the grid
    g = run.store.group[f"layers/{layer}"]
    patches, boxes, deconv = (np.asarray(g[k][...]) for k in ("patches", "boxes", "deconv"))
    field = sketchmine.ReceptiveField(**{k: tuple(v) for k, v in run.layer_attrs(layer)["receptive_field"].items()})
    _, index, yx = run.topk(layer)
    for c in (0, 3, C - 1):
        i = int(index[c, 0])
        top, left, bottom, right = field.box(*yx[c, 0])
        assert tuple(boxes[c, 0]) == (top, left, bottom, right)
        pixels = torch.from_numpy(np.asarray(ds.images[i]))[None, None]
        want = crop_patches_reference(pixels, torch.tensor([0]), torch.tensor([[top, left]]),
                                      bottom - top + 1, right - left + 1)[0]
        assert np.array_equal(patches[c, 0], want.permute(1, 2, 0).numpy())
        sig = sketchmine.deconvolve(net, ds[i][1][None], layer, [c], yx[c, :1], method="deconvnet")
        crop = crop_patches_reference(sig, torch.tensor([0]), torch.tensor([[top, left]]),
                                      bottom - top + 1, right - left + 1)[0]
        signal = (128 + 127 * crop / crop.abs().max()).round().clamp(0, 255).permute(1, 2, 0).numpy()
        assert np.abs(deconv[c, 0].astype(int) - signal.astype(int)).max() <= 1 and len(np.unique(deconv[c, 0])) > 3


class _IdentityShortcut(nn.Module):
    """A residual block whose shortcut is an empty nn.Sequential (CIFAR ResNets' identity), which
    torch.fx inlines to nothing: a tap on it had no node, so neither a field nor a place."""

    def __init__(self, shortcut: nn.Module) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(1, C, 3, stride=2, padding=1), nn.Conv2d(C, C, 3, padding=1)
        self.shortcut, self.head = shortcut, nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))  # a ReLU feeds it, as in a CIFAR ResNet (the deconvolution rules replace it)
        return self.head(torch.relu(self.conv(y) + self.shortcut(y)).mean((2, 3)))


def test_an_empty_sequential_shortcut_is_its_input(sketches, tmp_path, caplog):
    torch.manual_seed(4)
    model = _IdentityShortcut(nn.Sequential()).eval()
    leaf = _IdentityShortcut(nn.Identity()).eval()  # a leaf module: its own node, the reading to match
    leaf.load_state_dict(model.state_dict())
    fields = sketchmine.receptive_fields(model, SIDE * 4)
    assert fields["shortcut"] == sketchmine.receptive_fields(leaf, SIDE * 4)["shortcut"]
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(model, sketches, layers=["shortcut"], k=2, out=tmp_path / "r.zarr")
    assert not [r for r in caplog.records if "units on axis 1" in r.getMessage()]
    want = sketchmine.mine(leaf, sketches, layers=["shortcut"], k=2, out=tmp_path / "leaf.zarr")
    assert run.layer_attrs("shortcut")["receptive_field"] == want.layer_attrs("shortcut")["receptive_field"]
    for got, expected in zip(run.topk("shortcut"), want.topk("shortcut")):
        np.testing.assert_array_equal(got, expected)
    x = sketches.tensors[0][:2]
    for method in ("deconvnet", "guided", "gradient"):  # the rules replace the ReLU that feeds it
        torch.testing.assert_close(sketchmine.deconvolve(model, x, "shortcut", [0, 1], [[2, 3], [4, 5]], method=method),
                                   sketchmine.deconvolve(leaf, x, "shortcut", [0, 1], [[2, 3], [4, 5]], method=method))


class _OneChannelReshaped(nn.Module):
    """A one-channel map reshaped to itself, or with its channel moved last: no size tells which
    axis of one is the channel (the graph said it could not place them, and read the moved map as
    26 units on a (26, 1) grid)."""

    def __init__(self, last: bool) -> None:
        super().__init__()
        self.last, self.conv, self.act, self.head = last, nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Linear(1, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = self.act(y.reshape(y.shape[0], 28 - 2, 28 - 2, 1) if self.last else y.reshape(y.shape[0], 1, 28 - 2, 28 - 2))
        return self.head(y.mean((1, 2)) if self.last else y.mean((2, 3)))


@pytest.mark.parametrize("last", [False, True])
def test_a_reshape_that_keeps_or_moves_a_single_channel_keeps_it_placed(sketches, tmp_path, caplog, last):
    model = _OneChannelReshaped(last).eval()
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(model, sketches, layers=["act"], k=3, out=tmp_path / "r.zarr")
    assert not [r for r in caplog.records if "units on axis 1" in r.getMessage()]
    assert run.layer_shape("act") == (1, 26, 26)
    got: list[torch.Tensor] = []
    handle = model.act.register_forward_hook(lambda m, i, o: got.append(o.detach()))
    with torch.inference_mode():
        model(sketches.tensors[0])
    handle.remove()
    acts = got[0].permute(0, 3, 1, 2) if last else got[0]
    values, index, _ = run.topk("act")
    want_values, want_index, _ = brute_topk(acts, 3)
    assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)


class _TokensTransposed(nn.Module):
    """A ViT-like stem written with x.mT, torch.nn's TransformerEncoder over its tokens, and a module
    after a matmul by a matrix: each read its own way."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, C, 4, stride=4)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(C, 2, 16, dropout=0.0, batch_first=True), 2,
                                         enable_nested_tensor=False)
        self.mix = nn.Parameter(torch.eye(C) + 0.1)
        self.act, self.head = nn.GELU(), nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.enc(self.patch(x).flatten(2).mT)  # (N, 49, C)
        return self.head(self.act(t @ self.mix).mean(1))


def test_tokens_after_mt_are_placed_and_a_leaf_modules_layers_are_said_apart(sketches, tmp_path, caplog):
    """x.mT was not followed: the encoder after it was read along its 49 tokens as units (said
    as unplaced). A layer inside the encoder (a torch.nn module the graph does not enter) is said
    with that reason, apart from one after a matmul (the first layer's reason was given for all)."""
    torch.manual_seed(0)
    net = _TokensTransposed().eval()
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(net, sketches, layers=["enc", "enc.layers.0", "act"], k=3, out=tmp_path / "r.zarr")
    assert run.layer_shape("enc") == (C, 49) and run.layer_shape("enc.layers.0") == (49, C)
    acts = _channels_first(net, "enc", sketches.tensors[0]).mT  # (N, C, tokens)
    values, index, _ = run.topk("enc")
    want_values, want_index, _ = brute_topk(acts, 3)
    assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)
    said = [r.getMessage() for r in caplog.records if "read with their units on axis 1" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("2 layer(s)")
    assert "(enc.layers.0: it runs inside enc, a torch.nn module the graph does not enter" in said[0]
    assert "; act: the graph does not follow the ops before it)" in said[0]


class _StemWithShape(nn.Module):
    """A stem returning its map and the map's shape, as some models pass a size along."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, C, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        y = self.conv(x)
        return y, y.shape


class _SizedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.act, self.head = _StemWithShape(), nn.ReLU(), nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, size = self.stem(x)
        return self.head(self.act(y).flatten(2).mean(2) * (size[-1] / 28))


def test_a_module_returning_its_maps_shape_keeps_its_field_and_place(sketches, tmp_path, caplog):
    """`y.shape` returned beside the map is no output a tap reads: made a node inside the stem, it
    was taken as the stem's output, which lost its field and was said unplaced."""
    torch.manual_seed(0)
    net = _SizedHead().eval()
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(net, sketches, layers=["stem", "stem.conv"], k=3, out=tmp_path / "r.zarr")
    assert not [r for r in caplog.records if "read with their units on axis 1" in r.getMessage()]
    field = run.layer_attrs("stem")["receptive_field"]
    assert field == run.layer_attrs("stem.conv")["receptive_field"] and field["size"] == [3, 3]
    values, index, _ = run.topk("stem")
    want_values, want_index, _ = brute_topk(_channels_first(net, "stem.conv", sketches.tensors[0]), 3)
    assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)
