"""Datasets and preprocessing on real images: presets, bad files mid-stream, size mismatches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sketchmine
from sketchmine.data import ArrayDataset, ImageFolderDataset, export_image_folder, preset
from sketchmine.errors import SketchmineError


@pytest.fixture()
def folder(tmp_path, demo_test_set):
    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:4] for c in range(10)])
    sub = ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names, ds.preprocessing, ds.describe())
    return export_image_folder(sub, tmp_path / "images"), sub


def test_dataset_mean_preset_is_computed_and_recorded(tmp_path, folder):
    root, sub = folder
    run = sketchmine.mine("demo", root, preprocessing="dataset", out=tmp_path / "r.zarr", batch_size=16)
    pre = run.attrs["preprocessing"]
    pixels = sub.images.astype(np.float64) / 255
    assert pre["preset"] == "dataset"
    assert pre["mean"][0] == pytest.approx(pixels.mean(), rel=1e-6)
    assert pre["std"][0] == pytest.approx(pixels.std(), rel=1e-6)


def test_imagenet_preset_and_channel_conversion(folder):
    root, sub = folder
    ds = ImageFolderDataset(root, preset("imagenet", 3, (32, 32)))
    i, x, label, note = ds[5]
    assert x.shape == (3, 32, 32) and note == "converted:L"
    # one resize rule for files and arrays: torch's antialiased bilinear on [0, 1] floats
    pixels = torch.from_numpy(np.asarray(Image.open(root / ds.path(5)).convert("RGB"))).permute(2, 0, 1).double() / 255
    gray = torch.nn.functional.interpolate(pixels[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    want = (gray.permute(1, 2, 0).numpy() - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), want, rtol=1e-5, atol=1e-5)


def test_whole_bad_batch_keeps_rows_aligned(tmp_path, folder, demo_model):
    root, sub = folder
    ds = ImageFolderDataset(root, sketchmine.preprocessing_for(demo_model))
    for j in (2, 3):  # images 2 and 3 form one whole batch of size 2
        (root / ds.path(j)).write_bytes(b"\x89PNG broken")
    run = sketchmine.mine("demo", root, out=tmp_path / "r.zarr", batch_size=2, flush_every=3, skip_bad_images=True)
    assert sorted(b["index"] for b in run.attrs["bad_images"]) == [2, 3]
    logits = np.asarray(run.store.group["eval/logits"][...])
    assert np.isnan(logits[[2, 3]]).all() and not np.isnan(np.delete(logits, [2, 3], axis=0)).any()
    good = [i for i in range(len(ds)) if i not in (2, 3)]
    with torch.inference_mode():
        direct = demo_model.module(torch.stack([ds[i][1] for i in good])).numpy()
    np.testing.assert_allclose(logits[good], direct, rtol=1e-4, atol=1e-4)
    pred = np.asarray(run.store.group["eval/predictions"][...])
    assert (pred[[2, 3]] == -1).all() and (pred[good] == direct.argmax(1)).all()


def test_differing_sizes_give_a_clean_error_from_workers(tmp_path, folder):
    root, sub = folder
    first = next(iter(sorted((root / "cat").glob("*.png"))))
    Image.open(first).resize((40, 40)).save(first)
    with pytest.raises(SketchmineError, match=r"^images differ in size.*--image-size"):
        sketchmine.mine("demo", root, out=tmp_path / "r.zarr", batch_size=8, num_workers=2)
    run = sketchmine.mine("demo", root, out=tmp_path / "s.zarr", batch_size=8, image_size=28)
    assert run.complete


def test_a_subset_of_an_array_dataset_exports_as_mine_takes_it(tmp_path, demo_test_set):
    """`export_image_folder(Subset(animal_shape("test"), ...))` raised AttributeError ('Subset' has
    no labels) though `mine` takes such a Subset as the images it selects. Its files are named by
    the images' numbers in the test split, as the Subset's run names them (they were numbered
    from 0, so "01700.png" was another image than the run's ".../01700"); a repeat keeps both."""
    from torch.utils.data import Subset

    pick = [1700, 3, 250, 999, 3]
    root = export_image_folder(Subset(Subset(demo_test_set, list(range(2000))), pick), tmp_path / "subset")
    files = sorted(root.glob("*/*.png"))
    name = {p: demo_test_set.class_names[int(demo_test_set.labels()[p])] for p in pick}
    assert [(f.parent.name, f.name) for f in files] == sorted(
        [(name[p], f"{p:05d}.png") for p in pick[:4]] + [(name[3], "00003-2.png")])
    for f in files:
        np.testing.assert_array_equal(np.asarray(Image.open(f)), demo_test_set.images[int(f.stem.split("-")[0])])
    from sketchmine.data.resolve import sketchmine_subset

    run_paths = sketchmine_subset(Subset(demo_test_set, pick)).path
    assert [run_paths(i).rsplit("/", 1)[1] for i in range(4)] == [f"{p:05d}" for p in pick[:4]]
    with pytest.raises(SketchmineError, match="in-memory dataset"):
        export_image_folder([(np.zeros((4, 4), np.uint8), 0)], tmp_path / "list")
