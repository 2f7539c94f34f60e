"""A small U-Net mined and visualized end to end: the layers after its upsampling, its
concatenation with the skip and its transposed conv have each unit's own box (field_tables.py),
and their stored patches and deconvolutions are the image and the unit's whole-image
deconvolution cropped to exactly that box."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sketchmine
from sketchmine import receptive_fields
from sketchmine.passes.visualize import visualize
from sketchmine.stats.ops import crop_patches_reference
from tests.helpers import per_class_subset


class TinyUNet(nn.Module):
    """A U-Net in small: two levels down, a bilinear upsampling concatenated with the skip, a conv,
    a transposed conv up to twice the input's size, an interpolation back to it, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fuse = nn.Conv2d(10, 4, 3, padding=1)
        self.upconv = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down1(x)
        joined = torch.cat([self.up(self.down2(skip)), skip], dim=1)
        big = self.upconv(F.relu(self.fuse(joined)))
        out = F.relu(self.head(F.interpolate(big, size=x.shape[-2:], mode="nearest")))
        return self.fc(out.mean(dim=(2, 3)))


UNET_LAYERS = ["fuse", "upconv", "head"]


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory, small_test_set):
    torch.manual_seed(0)
    model, ds = TinyUNet().eval(), per_class_subset(small_test_set, 6, "unet")
    out = tmp_path_factory.mktemp("unet") / "run.zarr"
    sketchmine.mine(model, ds, layers=UNET_LAYERS, k=3, out=out, batch_size=30)
    return visualize(out, model=model, data=ds, batch_size=12), model, ds


def test_a_unet_is_mined_and_visualized_with_the_exact_boxes(unet_run):
    """Each stored box is the layer's field at the unit's peak; the patch holds the image's pixels
    of that box (0 outside the image and past a box smaller than the layer's largest)."""
    run, model, ds = unet_run
    fields = receptive_fields(model, 28)
    assert _check_unet_fields(model, fields)
    smaller = 0  # entries whose box is smaller than the layer's largest: the rest of their patch is masked
    for layer in UNET_LAYERS:
        g = run.store.group[f"layers/{layer}"]
        patches, boxes, inside = (np.asarray(g[k][...]) for k in ("patches", "boxes", "inside"))
        assert g.attrs["visualized"]["complete"]
        assert tuple(patches.shape[2:4]) == fields[layer].size
        _, index, yx = run.topk(layer)
        for c in range(index.shape[0]):
            for s in range(index.shape[1]):
                i = int(index[c, s])
                top, left, bottom, right = fields[layer].box(*yx[c, s])
                assert tuple(boxes[c, s]) == (top, left, bottom, right)
                pixels = torch.from_numpy(np.asarray(ds.images[i]))[None, None]
                want = np.zeros_like(patches[c, s])
                crop = crop_patches_reference(pixels, torch.tensor([0]), torch.tensor([[top, left]]),
                                              bottom - top + 1, right - left + 1)[0]
                want[:bottom - top + 1, :right - left + 1] = crop.permute(1, 2, 0).numpy()
                assert np.array_equal(patches[c, s], want), (layer, c, s)
                assert tuple(inside[c, s]) == (max(top, 0), max(left, 0), min(bottom, 27), min(right, 27))
                smaller += (bottom - top + 1, right - left + 1) != fields[layer].size
    assert smaller > 0


def _check_unet_fields(model: nn.Module, fields: dict) -> bool:
    """Every unit of the mined layers reads only its box, on the U-Net's own graph (gradient support)."""
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    acts: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n in UNET_LAYERS]
    model(x)
    for hook in hooks:
        hook.remove()
    for name, o in acts.items():
        units = o[0].sum(0).reshape(-1)
        (grad,) = torch.autograd.grad(units, x, torch.eye(len(units)), retain_graph=True, is_grads_batched=True)
        support = (grad[:, 0, 0] != 0).reshape(*o.shape[-2:], 28, 28)
        for y in range(0, support.shape[0], 3):
            for x_ in range(0, support.shape[1], 3):
                ys, xs = torch.nonzero(support[y, x_], as_tuple=True)
                top, left, bottom, right = fields[name].box(y, x_)
                assert len(ys) == 0 or (top <= ys.min() and ys.max() <= bottom and left <= xs.min()
                                        and xs.max() <= right), (name, y, x_)
    return True


def test_a_unet_unit_is_deconvolved_on_its_exact_box(unet_run):
    """The stored deconvolution is the unit's whole-image deconvolution cropped to its box, grey
    (no signal) past a box smaller than the largest."""
    run, model, ds = unet_run
    fields = receptive_fields(model, 28)
    for layer in ("fuse", "upconv"):
        g = run.store.group[f"layers/{layer}"]
        deconv = np.asarray(g["deconv"][...])
        _, index, yx = run.topk(layer)
        for c in range(index.shape[0]):
            i = int(index[c, 0])
            sig = sketchmine.deconvolve(model, ds[i][1][None], layer, [c], yx[c, :1], method="deconvnet")
            top, left, bottom, right = fields[layer].box(*yx[c, 0])
            crop = crop_patches_reference(sig, torch.tensor([0]), torch.tensor([[top, left]]),
                                          bottom - top + 1, right - left + 1)[0]
            want = np.full_like(deconv[c, 0], 128)
            scaled = (128 + 127 * crop / crop.abs().max()).round().clamp(0, 255).permute(1, 2, 0).numpy()
            want[:bottom - top + 1, :right - left + 1] = scaled
            assert np.abs(deconv[c, 0].astype(int) - want.astype(int)).max() <= 1, (layer, c)


def test_the_probe_takes_no_dataset_image_from_a_layer_of_boxes(unet_run):
    """The probe's gallery takes a layer's stored patches as whole images where its field is the
    model's input size; behind an upsampling a patch is one unit's box, zeroed past a smaller box
    than the layer's largest, which the probe would have shown as a dataset image."""
    from sketchmine.passes.probe import dataset_images

    run, model, ds = unet_run
    for layer in UNET_LAYERS:  # as if the model's input were the layer's largest box
        assert dataset_images(run, receptive_fields(model, 28)[layer].size) == [], layer


@pytest.mark.parametrize("damage", ["a row short", "not pairs"])
def test_a_partial_runs_spans_that_do_not_fit_its_grid_are_refused_as_damage(tmp_path, small_test_set, damage):
    """A partial run's layer attributes have no sums yet, so only their checks stand between an
    edited `spans` and the readers; spans a row short of the layer's grid, or not [first, last]
    pairs, were read as they were (the checks knew size, stride and offset only)."""
    import json

    from sketchmine.errors import RunDamaged
    from tests.helpers import StopAfter

    torch.manual_seed(0)
    ds = per_class_subset(small_test_set, 6, "unet")
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(TinyUNet().eval(), ds, layers=UNET_LAYERS, k=3, out=tmp_path / "r.zarr", batch_size=10,
                        flush_every=1, progress=StopAfter(30))
    run = sketchmine.open_run(tmp_path / "r.zarr")
    assert not run.complete and run.layer_attrs("fuse")["receptive_field"]["spans"]  # as mined: accepted
    meta = tmp_path / "r.zarr" / "layers" / "fuse" / "zarr.json"
    doc = json.loads(meta.read_text())
    spans = doc["attributes"]["receptive_field"]["spans"]
    spans[0] = spans[0][:-1] if damage == "a row short" else [first for first, _ in spans[0]]
    meta.write_text(json.dumps(doc))
    with pytest.raises(RunDamaged, match=r"layer 'fuse' attribute 'receptive_field' 'spans' should be two lists"):
        sketchmine.open_run(tmp_path / "r.zarr").layer_attrs("fuse")


def test_a_resampled_layer_s_unit_says_its_field_is_up_to_the_largest_box(unet_run):
    """`unit`, its JSON and the slides gave the largest box as every unit's receptive field, where a
    resampled layer's boxes differ by position (smaller at the border): they say "up to" it."""
    from sketchmine.results.unit_summary import unit_summary

    run, model, ds = unet_run
    fields = receptive_fields(model, 28)
    for layer in UNET_LAYERS:  # each behind the upsampling or the transposed conv
        d = unit_summary(run, layer, 0)
        assert fields[layer].spans is not None
        assert d["receptive_field"] == list(fields[layer].size) and d["receptive_field_varies"] is True
