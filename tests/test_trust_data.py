"""Issue 14, "No silent wrong answers": the data side (preprocessing resolution, ImageFolder
listing, content fingerprints, size arguments, grey conversion). Real embedded data and
models, real stores in tmp_path."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sketchmine
from sketchmine import data
from sketchmine.data import ArrayDataset, ImageFolderDataset, Preprocessing, animal_shape, export_image_folder
from sketchmine.errors import SketchmineError
from sketchmine.model.models import preprocessing_for
from tests.helpers import StopAfter

DEMO_JSON = Path(__file__).resolve().parents[1] / "data" / "sketchnet_animal.json"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Fingerprint hashes cached under the test's own folder, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _subset(n: int, preprocessing: Preprocessing | None = None) -> ArrayDataset:
    """The first `n` test images of every class, as `animal_shape("test", preprocessing)` makes
    them (so the preprocessing is explicit only when given)."""
    ds = animal_shape("test", preprocessing)
    labels = ds.labels()
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:n] for c in range(len(ds.class_names))]))
    ds.images, ds._labels = ds.images[keep], labels[keep]
    ds._description = {**ds.describe(), "subset": f"first {n} per class"}
    return ds


class _Tensors(torch.utils.data.Dataset):
    """A user's torch Dataset: (1, 28, 28) tensors (uint8 or float pixels in [0, 1], or already
    normalised with the demo's numbers) and int labels."""

    def __init__(self, ds: ArrayDataset, kind: str) -> None:
        self.images, self.targets, self.kind = ds.images, ds.labels(), kind
        self.classes = ds.class_names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.images[i]))[None]
        if self.kind == "float":
            x = x.float() / 255
        elif self.kind == "normalised":
            x = (x.float() / 255 - 0.2728) / 0.4056
        return x, int(self.targets[i])


# ---- case 1: one preprocessing rule for every dataset kind -------------------------------------------


def test_default_embedded_dataset_takes_the_models_preprocessing(tmp_path):
    """mine("demo", animal_shape("test")) sees what `sketchmine demo` sees: 97.05 %."""
    run = sketchmine.mine("demo", animal_shape("test"), out=tmp_path / "demo.zarr", batch_size=250)
    assert run.accuracy() == pytest.approx(json.loads(DEMO_JSON.read_text())["test_accuracy"], abs=1e-12)
    assert run.accuracy() == 0.9705
    pre = run.attrs["preprocessing"]
    assert pre["preset"] == "model" and pre["mean"] == [pytest.approx(0.2728150929121649)]


def test_image_size_is_applied_to_an_embedded_dataset(tmp_path):
    """demo-resnet pools globally, so it takes 32×32 images: the layer grids grow with them."""
    small = sketchmine.mine("demo-resnet", _subset(3), out=tmp_path / "s.zarr", layers=["conv1"], k=2)
    run = sketchmine.mine("demo-resnet", _subset(3), out=tmp_path / "r.zarr", image_size=32, layers=["conv1"], k=2)
    assert run.attrs["preprocessing"]["size"] == [32, 32]
    assert run.attrs["preprocessing"]["preset"] == "model"
    assert small.store.group["layers/conv1"].attrs["shape"][1:] == [28, 28]
    assert run.store.group["layers/conv1"].attrs["shape"][1:] == [32, 32]


def test_explicit_dataset_preprocessing_conflicting_with_mine_is_an_error(tmp_path):
    ds = _subset(2, preprocessing_for("demo"))
    with pytest.raises(SketchmineError, match=r"'imagenet'.*'model'"):
        sketchmine.mine("demo", ds, out=tmp_path / "a.zarr", preprocessing="imagenet")
    with pytest.raises(SketchmineError, match=r"image size 32×32 asked.*none"):
        sketchmine.mine("demo", ds, out=tmp_path / "b.zarr", image_size=32)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    # the same preset asked explicitly is no conflict; "auto" keeps the dataset's
    run = sketchmine.mine("demo", ds, out=tmp_path / "c.zarr", preprocessing="model", layers=["features.0"], k=2)
    assert run.attrs["preprocessing"]["preset"] == "model"


def test_explicit_preprocessing_is_applied_to_a_torch_dataset(tmp_path):
    """Pixels in [0, 1] (float or uint8) with preprocessing="model": the same accuracy and
    record as the embedded route; "auto" uses the tensors as they are (recorded null)."""
    base = _subset(5)
    want = sketchmine.mine("demo", base, out=tmp_path / "ref.zarr", layers=["features.0"], k=2)
    for kind in ("float", "uint8"):
        run = sketchmine.mine("demo", _Tensors(base, kind), out=tmp_path / f"{kind}.zarr", preprocessing="model",
                              layers=["features.0"], k=2)
        assert run.accuracy() == want.accuracy()
        assert run.attrs["preprocessing"] == want.attrs["preprocessing"]
        np.testing.assert_array_equal(run.topk("features.0")[0], want.topk("features.0")[0])
    as_is = sketchmine.mine("demo", _Tensors(base, "normalised"), out=tmp_path / "auto.zarr", layers=["features.0"], k=2)
    assert as_is.attrs["preprocessing"] is None
    assert as_is.accuracy() == pytest.approx(want.accuracy(), abs=0.02)
    with pytest.raises(SketchmineError, match=r"not pixels in\s+\[0, 1\].*'model'"):
        sketchmine.mine("demo", _Tensors(base, "normalised"), out=tmp_path / "n.zarr", preprocessing="model")


# ---- case 2: folders that are not classes; output width ----------------------------------------------


def _export(tmp_path: Path, per_class: int = 20) -> tuple[Path, ArrayDataset]:
    ds = _subset(per_class)
    root = export_image_folder(ds, tmp_path / "images")
    return root, ds


def test_image_less_folders_and_runs_in_the_root_are_not_classes(tmp_path):
    root, ds = _export(tmp_path)
    (root / "notes").mkdir()
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "bear").mkdir()  # what a zip made on macOS holds: AppleDouble files named as images
    first = sorted((root / "bear").iterdir())[0].name
    (root / "__MACOSX" / "bear" / f"._{first}").write_bytes(b"\x00\x05\x16\x07resource fork")
    (root / "bear" / f"._{first}").write_bytes(b"\x00\x05\x16\x07resource fork")
    want = sketchmine.mine("demo", ds, out=tmp_path / "array.zarr", layers=["features.0"], k=2).accuracy()
    notes = StopAfter(10 ** 9)
    inside = sketchmine.mine("demo", root, out=root / "run.zarr", layers=["features.0"], k=2, progress=notes)
    assert inside.class_names == ds.class_names and inside.accuracy() == want
    assert any("__MACOSX/" in n and "notes/" in n for n in notes.notes), notes.notes
    folder = ImageFolderDataset(root, Preprocessing("none", 1))
    assert folder.class_names == ds.class_names and len(folder) == 200
    assert folder.skipped == {"__MACOSX": "macOS archive metadata", "notes": "no images",
                              "run.zarr": "a sketchmine run"}
    again = sketchmine.mine("demo", root, out=tmp_path / "again.zarr", layers=["features.0"], k=2)
    assert again.class_names == ds.class_names and again.accuracy() == want


def test_model_output_width_must_match_the_class_count(tmp_path):
    root, _ = _export(tmp_path, 2)
    (root / "zz_extra").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "zz_extra" / "x.png")
    with pytest.raises(SketchmineError, match=r"10 outputs.*11 classes"):
        sketchmine.mine("demo", root, out=tmp_path / "r.zarr")
    run = sketchmine.mine("demo", root, out=tmp_path / "nl.zarr", layers=["features.0"], k=2, logits=False)
    assert len(run.class_names) == 11


def test_a_folder_of_unread_image_files_is_refused(tmp_path):
    root, _ = _export(tmp_path, 1)
    (root / "gifs").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "gifs" / "a.gif")
    with pytest.raises(SketchmineError, match=r"gifs.*\.gif"):
        ImageFolderDataset(root, Preprocessing("none", 1))


# ---- case 4: the fingerprint covers content -------------------------------------------------------------


def test_an_image_rewritten_in_place_is_another_dataset(tmp_path):
    ds = _subset(3)
    root = tmp_path / "bmp"
    for i, (image, label) in enumerate(zip(ds.images, ds.labels())):
        (root / ds.class_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / ds.class_names[label] / f"{i:03d}.bmp")
    out = tmp_path / "r.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", str(root), out=out, batch_size=5, flush_every=1, progress=StopAfter(10))
    before = ImageFolderDataset(root, Preprocessing("none", 1)).fingerprint()
    assert ImageFolderDataset(root, Preprocessing("none", 1)).fingerprint() == before  # stable (and cached)
    victim = sorted(root.rglob("*.bmp"))[-1]  # not yet mined
    st = victim.stat()
    Image.fromarray(255 - np.asarray(Image.open(victim))).save(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # hostile: same size, same mtime
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    assert ImageFolderDataset(root, Preprocessing("none", 1)).fingerprint() != before
    with pytest.raises(SketchmineError, match=r"cannot be resumed: it was mined with other settings: dataset"):
        sketchmine.mine("demo", str(root), out=out, batch_size=5, flush_every=1)
    assert list((tmp_path / "cache" / "sketchmine" / "fingerprints").glob("*.json"))  # the hashes were cached


# ---- case 6: size arguments -----------------------------------------------------------------------------


def test_size_arguments_take_int_hw_or_chw_and_nothing_else():
    import torchvision

    net = torchvision.models.alexnet()
    by_int = sketchmine.receptive_fields(net, 224)
    assert sketchmine.receptive_fields(net, (3, 224, 224)) == by_int == sketchmine.receptive_fields(net, (224, 224))
    with pytest.raises(SketchmineError, match=r"1 channels but AlexNet takes 3"):
        sketchmine.receptive_fields(net, (1, 224, 224))
    for bad in (0, -3, 2.5, (1, 2, 3, 4), (224, 0), (224.0, 224.0), True, "224"):
        with pytest.raises(SketchmineError, match=r"positive int S"):
            sketchmine.receptive_fields(net, bad if bad != (1, 2, 3, 4) else (1, 3, 224, 0))
        with pytest.raises(SketchmineError, match=r"positive int S"):
            data.as_size(bad, "size")
    with pytest.raises(SketchmineError, match=r"AlexNet cannot take a 5×3×224×224 input"):  # (T, C, H, W): frames
        sketchmine.receptive_fields(net, (5, 3, 224, 224))
    # a batch of one image, as other tools write a size: read as one frame, and said so
    with pytest.raises(SketchmineError, match=r"AlexNet cannot take a 1×3×224×224 input: .* \(input_size \(1, 3, 224, "
                                              r"224\) is read as a sequence's sample \(T, C, H, W\), .*for one image "
                                              r"pass \(3, 224, 224\)\)$"):
        sketchmine.receptive_fields(net, [1, 3, 224, 224])
    for bad in ((0, 3, 224, 224), (2.5, 3, 224, 224), (True, 3, 224, 224)):  # said as `leading`, which was not given
        with pytest.raises(SketchmineError, match=r"^receptive_fields input_size must be .*\(T, C, H, W\) of positive"):
            sketchmine.receptive_fields(net, bad)
    assert Preprocessing("none", 1, 28).size == (28, 28)
    assert Preprocessing("none", 1, [1, 20, 30]).size == (20, 30)
    with pytest.raises(SketchmineError, match=r"preprocessing size"):
        Preprocessing("none", 1, (0, 28))


@pytest.mark.parametrize("size", [0, -3, (3, 28, 28), (28, 28, 28, 28)])
def test_mine_refuses_a_bad_image_size(tmp_path, size):
    with pytest.raises(SketchmineError, match=r"image_size"):
        sketchmine.mine("demo", _subset(1), out=tmp_path / "r.zarr", image_size=size)


def test_mine_takes_a_chw_image_size(tmp_path):
    run = sketchmine.mine("demo-resnet", _subset(1), out=tmp_path / "r.zarr", image_size=(1, 32, 30), layers=["conv1"],
                          k=1)
    assert run.attrs["preprocessing"]["size"] == [32, 30]


# ---- case 7: one grey conversion; torchvision's listing ---------------------------------------------------


def test_a_colour_file_and_the_same_array_give_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    (tmp_path / "f" / "cls").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "f" / "cls" / "a.png")
    for channels in (1, 3):
        pre = Preprocessing("none", channels)
        from_file = ImageFolderDataset(tmp_path / "f", pre)[0][1]
        from_array = ArrayDataset(image[None], np.zeros(1), ["cls"], pre, {"name": "x"})[0][1]
        assert torch.equal(from_file, from_array)
    grey = ArrayDataset(image[None], np.zeros(1), ["cls"], Preprocessing("none", 1), {})[0][1][0]
    r, g, b = (torch.from_numpy(image[..., c]).float() / 255 for c in range(3))
    torch.testing.assert_close(grey, 0.299 * r + 0.587 * g + 0.114 * b)  # ITU-R 601-2 luma, as PIL's "L"


def test_folder_listing_equals_torchvisions_image_folder(tmp_path):
    from torchvision.datasets import ImageFolder

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    px = Image.fromarray(np.zeros((4, 4), np.uint8))
    files = ["cat/b.png", "cat/A.PNG", "cat/x/1.png", "cat/x y/2.png", "cat/x/z/3.jpg", "cat/x-/4.bmp",
             "cat/skip.gif", "cat/notes.txt", ".hidden/h.png", "dog/d.webp", "dog/e.tif"]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        if f.endswith(".txt"):
            (root / f).write_text("x")
        else:
            px.save(root / f)
    (elsewhere / "inner").mkdir(parents=True)
    px.save(elsewhere / "inner" / "s.png")
    px.save(elsewhere / "t.ppm")
    os.symlink(elsewhere, root / "bird")  # a symlinked class folder
    os.symlink(elsewhere / "inner", root / "dog" / "linked")  # a symlinked subfolder
    theirs = ImageFolder(str(root))
    ours = ImageFolderDataset(root, Preprocessing("none", 1))
    assert ours.class_names == theirs.classes
    assert ours.samples == [(os.path.relpath(p, root), label) for p, label in theirs.samples]
