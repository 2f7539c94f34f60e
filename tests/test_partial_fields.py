"""Receptive fields through channels-last stretches (ConvNeXt's permute, LayerNorm, Linear,
permute back), and an op the graph analysis cannot follow costing only the fields after it:
checked against the empirical field (non-zero input gradient), then through mine and visualize
on real images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import sketchmine
from sketchmine import SketchmineError, receptive_fields
from sketchmine.model.receptive_field import field_analysis
from sketchmine.passes.visualize import visualize
from sketchmine.stats.ops import crop_patches_reference
from tests.helpers import per_class_subset
from tests.test_receptive_field import _linearised


@pytest.fixture(scope="module")
def tiny_set(small_test_set):
    """60 real test images (6 per class)."""
    return per_class_subset(small_test_set, 6, "partial_fields")


def _support(model: nn.Module, layer: str, size: int, channels_last: bool) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Bounding box of the input pixels with non-zero gradient for the centre unit of `layer`
    (its output (N, H, W, C) when `channels_last`), and that unit's (y, x)."""
    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    x = (torch.rand(1, model_channels(model), size, size, generator=torch.Generator().manual_seed(3)) + 0.1)
    x.requires_grad_()
    try:
        model(x)
    finally:
        handle.remove()
    o = out["o"]
    if channels_last:
        y, xx = o.shape[1] // 2, o.shape[2] // 2
        o[0, y, xx, 1].backward()
    else:
        y, xx = o.shape[2] // 2, o.shape[3] // 2
        o[0, 1, y, xx].backward()
    rows, cols = np.nonzero(x.grad[0].abs().sum(0).numpy())
    return (rows.min(), cols.min(), rows.max(), cols.max()), (y, xx)


def model_channels(model: nn.Module) -> int:
    return next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def _clipped(box: tuple[int, int, int, int], size: int) -> tuple[int, int, int, int]:
    top, left, bottom, right = box
    return max(top, 0), max(left, 0), min(bottom, size - 1), min(right, size - 1)


@pytest.mark.parametrize("layer,channels_last", [
    ("features.0.0", False), ("features.1.0.block.0", False), ("features.1.0.block.3", True),
    ("features.1.2", False), ("features.2.1", False), ("features.3.0.block.5", True)])
def test_convnext_fields_equal_the_empirical_field(layer, channels_last):
    """ConvNeXt had no fields at all (its LayerNorm permutes to channels-last); its Linear
    layers act per position there, so they keep the field of the conv before them."""
    model = torchvision.models.convnext_tiny(weights=None).eval()
    size = 96
    rf = receptive_fields(model, size)
    (t, l, b, r), (y, x) = _support(_linearised(model), layer, size, channels_last)
    assert (t, l, b, r) == _clipped(rf[layer].box(y, x), size), layer
    assert rf["classifier.2"].stride == (0, 0)


class _Rolled(nn.Module):
    """conv1, then a roll along W (an op the analysis does not know), then conv2 and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(torch.relu(self.conv1(x)), 3, dims=-1)
        return self.fc(torch.relu(self.conv2(y)).amax(dim=(2, 3)))


def test_an_unknown_op_costs_only_the_fields_after_it():
    model = _Rolled()
    analysis = field_analysis(model, 28)
    assert analysis.fields["conv1"] == receptive_fields(nn.Sequential(model.conv1), 28)["0"]
    assert set(analysis.missing) >= {"conv2", "fc"} and "conv1" not in analysis.missing
    assert "roll" in analysis.missing["conv2"]
    with pytest.raises(SketchmineError, match="roll"):  # the strict call still names it
        receptive_fields(model, 28)


def test_mine_records_fields_before_an_unknown_op_and_visualize_uses_them(tmp_path, tiny_set, caplog):
    model = _Rolled().eval()
    out = tmp_path / "run.zarr"
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(model, tiny_set, layers=["conv1", "conv2", "fc"], k=3, out=out, batch_size=32)
    notes = [r.getMessage() for r in caplog.records if "no receptive fields" in r.getMessage()]
    assert len(notes) == 1 and "conv2" in notes[0] and "roll" in notes[0]
    assert run.layer_attrs("conv1")["receptive_field"] == {"size": [5, 5], "stride": [1, 1], "offset": [0, 0]}
    assert run.layer_attrs("conv2")["receptive_field"] is None  # a grid without a field: none, not a guess
    assert run.layer_attrs("fc")["receptive_field"]["stride"] == [0, 0]  # no positions: the whole image
    with pytest.raises(SketchmineError, match="no receptive field for layer 'conv2' .*met an op it cannot follow"):
        visualize(out, ["conv2"], model=model, data=tiny_set)
    run = visualize(out, ["conv1"], model=model, data=tiny_set, batch_size=16)
    g = run.store.group["layers/conv1"]
    patches, boxes = np.asarray(g["patches"][...]), np.asarray(g["boxes"][...])
    _, index, yx = run.topk("conv1")
    for c in range(index.shape[0]):
        i = int(index[c, 0])
        top, left = int(yx[c, 0, 0]), int(yx[c, 0, 1])
        assert tuple(boxes[c, 0]) == (top, left, top + 4, left + 4)
        image = torch.from_numpy(np.asarray(tiny_set.images[i]))[None, None]
        want = crop_patches_reference(image, torch.tensor([0]), torch.tensor([[top, left]]), 5, 5)[0]
        assert np.array_equal(patches[c, 0], want.permute(1, 2, 0).numpy())
        assert len(np.unique(patches[c, 0])) > 1


class _MiniConvNeXt(nn.Module):
    """A ConvNeXt block on grey 28-px sketches: stem, depthwise conv, channels-last LayerNorm
    and Linears, permute back, residual; then global pooling and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(torch.nn.functional.gelu(self.up(self.norm(y)))).permute(0, 3, 1, 2)
        return self.fc((x + y).mean(dim=(2, 3)))


def test_a_channels_last_linear_is_visualized_on_its_field(tmp_path, tiny_set):
    """The per-position Linear's units have the depthwise conv's field (2 + 6*2 = 14 px,
    stride 2); its patches are the crops of those boxes of the images it was mined on."""
    torch.manual_seed(0)
    model = _MiniConvNeXt().eval()
    out = tmp_path / "run.zarr"
    sketchmine.mine(model, tiny_set, layers=["dw", "up"], k=3, out=out, batch_size=32)
    run = visualize(out, ["up"], model=model, data=tiny_set, batch_size=16)
    rf = run.layer_attrs("up")["receptive_field"]
    assert rf == {"size": [14, 14], "stride": [2, 2], "offset": [-6, -6]}
    assert rf == run.layer_attrs("dw")["receptive_field"]
    g = run.store.group["layers/up"]
    patches, boxes = np.asarray(g["patches"][...]), np.asarray(g["boxes"][...])
    _, index, yx = run.topk("up")
    for c in range(0, index.shape[0], 3):
        i = int(index[c, 0])
        top, left = -6 + 2 * int(yx[c, 0, 0]), -6 + 2 * int(yx[c, 0, 1])
        assert tuple(boxes[c, 0]) == (top, left, top + 13, left + 13)
        image = torch.from_numpy(np.asarray(tiny_set.images[i]))[None, None]
        want = crop_patches_reference(image, torch.tensor([0]), torch.tensor([[top, left]]), 14, 14)[0]
        assert np.array_equal(patches[c, 0], want.permute(1, 2, 0).numpy())


class _Reflected(nn.Module):
    """A CycleGAN-style start on grey 28-px sketches: ReflectionPad2d(2) before a 5×5 conv with no
    padding of its own, a residual block's ReflectionPad2d(1) before a 3×3 conv; then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(2)
        self.conv1 = nn.Conv2d(1, 8, 5)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(self.pad(x)))
        x = x + torch.relu(self.conv2(self.pad2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_reflection_padded_model_is_mined_and_visualized_on_its_fields(tmp_path, tiny_set, caplog):
    """The convs after a reflection pad have fields (the pad's own units have none, and are not
    worth a note when not mined); their patches are the image's pixels in the field, clipped at
    its border, and the pad layer itself is refused by visualize, saying why."""
    torch.manual_seed(0)
    model = _Reflected().eval()
    out = tmp_path / "run.zarr"
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(model, tiny_set, layers=["pad", "conv1", "conv2"], k=3, out=out, batch_size=32)
    assert not [r for r in caplog.records if "no receptive fields" in r.getMessage()]
    assert run.layer_attrs("conv1")["receptive_field"] == {"size": [5, 5], "stride": [1, 1], "offset": [-2, -2]}
    assert run.layer_attrs("conv2")["receptive_field"]["size"] == [7, 7]
    assert run.layer_attrs("pad")["receptive_field"] is None
    with pytest.raises(SketchmineError, match="no receptive field for layer 'pad'.*reflection or replication pad"):
        visualize(out, ["pad"], model=model, data=tiny_set)
    run = visualize(out, ["conv1"], model=model, data=tiny_set, batch_size=16)
    g = run.store.group["layers/conv1"]
    boxes = np.asarray(g["boxes"][...])
    _, _, yx = run.topk("conv1")
    for c in range(boxes.shape[0]):
        top, left = int(yx[c, 0, 0]) - 2, int(yx[c, 0, 1]) - 2
        assert tuple(boxes[c, 0]) == (top, left, top + 4, left + 4)
