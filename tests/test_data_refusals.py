"""The data side refuses what it would otherwise mine as garbage, and draws what it documents:
folders resized before they are drawn, uint8 arrays only, image tensors only, sketchmine's own
output folders and non-UTF-8 names in an ImageFolder root. Real embedded images throughout."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import sketchmine
from sketchmine.data import (ArrayDataset, ImageFolderDataset, Preprocessing, TorchDataset, animal_shape, chw,
                             export_image_folder)
from sketchmine.data import folder as folder_module
from sketchmine.data.sequences import SequenceDataset, background_of, progressive_drawing
from sketchmine.data.resolve import as_miner_dataset
from sketchmine.errors import SketchmineError
from sketchmine.model.models import preprocessing_for
from tests.helpers import per_class_subset


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Fingerprint hashes cached under the test's own folder, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def few(demo_test_set):
    """40 real test silhouettes (4 per class), preprocessed for the demo CNN."""
    return per_class_subset(demo_test_set, 4, "refusals")


# ---- progressive drawings: resized first, then drawn ----------------------------------------------------


def test_a_folder_is_resized_before_it_is_drawn(tmp_path, demo_test_set):
    """Files stored at 56 px, mined at 28: each frame is the drawing of the 28-px image (the
    resize rule's floats, ordered by their 8-bit pixels), not a 56-px drawing shrunk."""
    pre = preprocessing_for("demo-gru", "auto", 28)
    ds = per_class_subset(demo_test_set, 2, "seq56")
    root = tmp_path / "big"
    for i, (image, label) in enumerate(zip(ds.images, ds.labels())):
        (root / ds.class_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((56, 56), Image.NEAREST).save(root / ds.class_names[label] / f"{i:03d}.png")
    base = ImageFolderDataset(root, pre)
    seq = SequenceDataset(base, 8)
    half_level = 0.5 / 255 / pre.std[0]  # the rounding the reference takes, in normalised units
    for i in range(0, len(seq), 3):
        small = pre.resize(chw(base.image_array(i)[0])[None])[0, 0]
        pixels = small.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
        want = pre.prepare(torch.stack([chw(f) for f in progressive_drawing(pixels, 8, background_of(pixels))]))
        got = seq[i][1]
        assert got.shape == (8, 1, 28, 28)
        assert float((got - want).abs().max()) <= half_level * 1.001, i
        assert torch.equal(got[-1], base[i][1])  # the last frame is what the CNN alone is fed


@pytest.mark.parametrize("channels", [1, 3])
def test_drawings_at_the_stored_size_are_unchanged(few, channels):
    """No resize: the frames are the uint8 drawing preprocessed, bit for bit (also grey → RGB)."""
    pre = preprocessing_for("demo") if channels == 1 else sketchmine.data.preset("imagenet", 3, None)
    seq = SequenceDataset(few.with_preprocessing(pre), 6)  # type: ignore[arg-type]
    for i in (0, 17, 39):
        image = few.images[i]
        frames = progressive_drawing(image, 6, background_of(image))
        assert torch.equal(seq[i][1], pre.prepare(torch.stack([chw(f) for f in frames])))


# ---- ArrayDataset: uint8 (N, H, W[, C]) and labels it can name ------------------------------------------


def _array(few, images, labels=None, names=None) -> ArrayDataset:
    return ArrayDataset(images, few.labels() if labels is None else labels,
                        few.class_names if names is None else names, few.preprocessing, {"name": "t"})


def test_arrays_must_be_uint8_pixels(few):
    with pytest.raises(SketchmineError, match=r"float32; expected uint8 pixels 0-255.*\(images \* 255\)\.round"):
        _array(few, few.images.astype(np.float32) / 255)
    with pytest.raises(SketchmineError, match=r"uint16; expected uint8.*// 257"):
        _array(few, few.images.astype(np.uint16) * 257)
    with pytest.raises(SketchmineError, match=r"bool; expected uint8"):
        _array(few, few.images > 127)
    assert _array(few, few.images)[3][1].shape == (1, 28, 28)


def test_arrays_must_be_channels_last(few):
    rgb = np.repeat(few.images[..., None], 3, axis=-1)
    with pytest.raises(SketchmineError, match=r"\(40, 3, 28, 28\).*channels-first\? use images\.transpose\(0, 2, 3, 1\)"):
        _array(few, np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
    with pytest.raises(SketchmineError, match=r"\(40, 28, 28, 5\); expected .* C in 1-4") as info:
        _array(few, np.concatenate([rgb, rgb[..., :2]], axis=-1))
    assert "transpose" not in str(info.value)
    with pytest.raises(SketchmineError, match=r"\(40, 784\)"):
        _array(few, few.images.reshape(40, -1))
    for c in (1, 2, 3, 4):
        image = np.repeat(few.images[..., None], c, axis=-1)
        assert _array(few, image)[5][1].shape == (1, 28, 28)
        torch.testing.assert_close(_array(few, image)[5][1], _array(few, few.images)[5][1], atol=1e-6, rtol=0)


def test_array_labels_must_name_a_class_or_be_unlabelled(few):
    labels = few.labels().copy()
    labels[[7, 30]] = -3
    with pytest.raises(SketchmineError, match=r"label -3 of image 7 is below -1 \(2 such"):
        _array(few, few.images, labels)
    labels = few.labels().copy()
    labels[[12, 13]] = 10
    with pytest.raises(SketchmineError, match=r"label 10 of image 12 names no class: 10 class names.*0-9"):
        _array(few, few.images, labels)
    assert len(_array(few, few.images, labels, names=[])) == 40  # unnamed classes: the miner checks the range
    with pytest.raises(SketchmineError, match=r"label 2\.5 of image 0 is not a whole number"):
        _array(few, few.images, np.full(40, 2.5))
    with pytest.raises(SketchmineError, match=r"labels have shape \(39,\); expected one per image, \(40,\)"):
        _array(few, few.images, few.labels()[:39])
    unlabelled = _array(few, few.images, np.full(40, -1))
    assert (unlabelled.labels() == -1).all()
    assert (_array(few, few.images, few.labels().astype(np.float64)).labels() == few.labels()).all()


# ---- TorchDataset: image tensors only -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_folder(few, tmp_path_factory) -> Path:
    """The 40 silhouettes as RGB PNGs in an ImageFolder (what a torchvision ImageFolder reads)."""
    rgb = ArrayDataset(np.repeat(few.images[..., None], 3, axis=-1), few.labels(), few.class_names,
                       few.preprocessing, {"name": "rgb"})
    return export_image_folder(rgb, tmp_path_factory.mktemp("rgb") / "images")


def test_pil_samples_are_refused_naming_the_fix(rgb_folder, tmp_path):
    tv = torchvision.datasets.ImageFolder(str(rgb_folder))  # no transform: PIL images
    with pytest.raises(SketchmineError, match=r"sample #0 of the dataset is a PIL\.Image\.Image.*ToTensor\(\)"):
        sketchmine.mine("demo", tv, layers=["features.0"], k=2, out=tmp_path / "r.zarr")
    with pytest.raises(SketchmineError, match=r"sample #5 .*PIL"):
        TorchDataset(tv)[5]


def test_channels_last_samples_are_refused_under_a_preprocessing(rgb_folder, tmp_path):
    tv = torchvision.datasets.ImageFolder(str(rgb_folder), transform=np.array)  # (28, 28, 3) uint8
    for kw in ({"image_size": 28}, {"preprocessing": "model"}):
        with pytest.raises(SketchmineError, match=r"sample #0 .*\(28, 28, 3\): looks like \(H, W, C\)\?.*permute\(2, 0, 1\)"):
            sketchmine.mine("demo", tv, layers=["features.0"], k=2, out=tmp_path / "r.zarr", **kw)
    with pytest.raises(SketchmineError, match=r"sample #9 .*looks like \(H, W, C\)"):
        TorchDataset(tv, Preprocessing("none", 1, (28, 28)))[9]
    chw_tv = torchvision.datasets.ImageFolder(str(rgb_folder), transform=lambda im: np.array(im).transpose(2, 0, 1))
    ok = TorchDataset(chw_tv, Preprocessing("none", 1, (28, 28)))
    assert ok[9][1].shape == (1, 28, 28) and ok.fingerprint()  # a (C, H, W) array is a tensor
    with pytest.raises(SketchmineError, match=r"sample #9 of the dataset is a uint8 tensor"):
        TorchDataset(chw_tv)[9]  # no preprocessing: used as it is, and uint8 is no model input
    assert as_miner_dataset(chw_tv, preprocessing_for("demo"), chosen=False)[9][1].shape == (1, 28, 28)  # pixels


# ---- an ImageFolder root: sketchmine's own outputs are not classes ---------------------------------------


def test_a_report_beside_a_run_in_the_root_is_not_a_class(tmp_path, few):
    from sketchmine.present import report_folder, report_probe
    from sketchmine.present.report import write_report

    root = export_image_folder(few, tmp_path / "images")
    run = sketchmine.mine("demo", root, out=root / "run.zarr", layers=["features.0"], k=2)
    write_report(run, root / "run-report")
    assert list((root / "run-report").rglob("*.png"))  # images a class would be made of
    listing = ImageFolderDataset(root, Preprocessing("none", 1))
    assert listing.class_names == few.class_names and len(listing) == 40
    assert listing.skipped == {"run-report": "a sketchmine report", "run.zarr": "a sketchmine run"}
    assert "run-report/ (a sketchmine report)" in (listing.skipped_note() or "")
    again = sketchmine.mine("demo", root, out=tmp_path / "again.zarr", layers=["features.0"], k=2)
    assert again.class_names == few.class_names and again.accuracy() == run.accuracy()
    assert folder_module.SKETCHMINE_OUTPUTS.keys() == {report_folder.MARKER, report_probe.MARKER}  # one name each


# ---- names that are not UTF-8 -----------------------------------------------------------------------------


def _rename_to_bytes(path: Path, name: bytes) -> None:
    """Rename `path` to a raw byte name beside it (skips where the file system refuses one)."""
    try:
        os.rename(bytes(path), os.path.join(os.fsencode(path.parent), name))
    except OSError as exc:
        pytest.skip(f"this file system takes no non-UTF-8 names: {exc}")


def test_a_non_utf8_file_name_is_refused_before_mining(tmp_path, few):
    root = export_image_folder(few, tmp_path / "images")
    _rename_to_bytes(sorted((root / "bear").iterdir())[0], b"caf\xe9.png")
    with pytest.raises(SketchmineError, match=r"file name 'bear/caf\\xe9\.png' in .* is not valid UTF-8.*rename"):
        ImageFolderDataset(root, Preprocessing("none", 1))
    out = tmp_path / "r.zarr"
    with pytest.raises(SketchmineError, match=r"caf\\xe9\.png"):
        sketchmine.mine("demo", root, layers=["features.0"], k=2, out=out)
    assert not out.exists()
    _rename_to_bytes(root / "bear", b"b\xe4r")
    with pytest.raises(SketchmineError, match=r"class folder name 'b\\xe4r' in"):
        ImageFolderDataset(root, Preprocessing("none", 1))


def test_a_non_utf8_root_is_mined_and_fingerprinted(tmp_path, few):
    export_image_folder(few, tmp_path / "images")
    _rename_to_bytes(tmp_path / "images", b"d\xf6ta")
    root = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"d\xf6ta"))
    (Path(root) / "notes").mkdir()
    listing = ImageFolderDataset(root, Preprocessing("none", 1))
    assert listing.fingerprint() == ImageFolderDataset(root, Preprocessing("none", 1)).fingerprint()
    assert "d\\xf6ta" in (listing.skipped_note() or "")  # printable on any stream
    (listing.skipped_note() or "").encode("utf-8")
    run = sketchmine.mine("demo", root, layers=["features.0"], k=2, out=tmp_path / "r.zarr")
    assert len(run.labels) == 40 and run.attrs["dataset"]["root"] == str(Path(root).resolve())
    shutil.rmtree(root)


# ---- 32-bit and float files: one scale for every file -------------------------------------------------


def test_wide_grey_files_take_one_fixed_scale(tmp_path, few):
    """A float TIFF is read as 0-1 and a 32-bit integer one as 16-bit, whatever range the file
    happens to span: the same value is the same grey in every file. Values outside are refused
    naming the file (or skipped with skip_bad_images)."""
    silhouette = few.images[3].astype(np.float64) / 255  # a real image, 0-1
    root = tmp_path / "wide"
    (root / "a").mkdir(parents=True)
    Image.fromarray(silhouette.astype(np.float32), "F").save(root / "a" / "full.tif")
    Image.fromarray((silhouette / 2).astype(np.float32), "F").save(root / "a" / "half.tif")
    Image.fromarray(np.rint(silhouette * 65535).astype(np.int32), "I").save(root / "a" / "int.tif")
    ds = ImageFolderDataset(root, Preprocessing("none", 1))
    full, half, whole = (ds.image_array(i)[0].astype(np.int64) for i in range(3))
    stored = [silhouette.astype(np.float32).astype(np.float64), (silhouette / 2).astype(np.float32).astype(np.float64)]
    np.testing.assert_array_equal(full, np.rint(stored[0] * 255))
    np.testing.assert_array_equal(half, np.rint(stored[1] * 255))  # not stretched back to white
    assert half.max() == 128
    np.testing.assert_array_equal(whole, full)
    Image.fromarray((silhouette * 2).astype(np.float32), "F").save(root / "a" / "over.tif")
    Image.fromarray(np.full((28, 28), 70000, np.int32), "I").save(root / "a" / "wide.tif")
    ds = ImageFolderDataset(root, Preprocessing("none", 1))
    over = [p for p, _ in ds.samples].index(os.path.join("a", "over.tif"))
    with pytest.raises(ValueError, match=r"float pixels range 0 to 2; float images are read as 0 to 1"):
        ds.image_array(over)
    with pytest.raises(SketchmineError, match=r"cannot read image a/over\.tif: .*float pixels range 0 to 2"):
        sketchmine.mine("demo", str(root), layers=["features.0"], out=tmp_path / "r.zarr", logits=False)
    run = sketchmine.mine("demo", str(root), layers=["features.0"], out=tmp_path / "s.zarr", logits=False,
                          skip_bad_images=True)
    assert sorted(b["path"] for b in run.attrs["bad_images"]) == ["a/over.tif", "a/wide.tif"]


def test_a_named_pipe_named_like_an_image_is_refused_not_waited_on(tmp_path, few):
    """`mine` hung without a word: the fingerprint opened the FIFO and waited for a writer.
    Run in a subprocess, so that the old behaviour fails the test instead of hanging it."""
    import subprocess
    import sys

    root = export_image_folder(few, tmp_path / "images")
    os.mkfifo(root / "bear" / "zz.png")
    out = tmp_path / "r.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run([sys.executable, "-m", "sketchmine", "mine", "--model", "demo", "--data", str(root),
                               "--out", str(out), "--layers", "features.0"], capture_output=True, text=True, timeout=120,
                              env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("mine waited on the named pipe")
    assert done.returncode == 3, done.stderr
    assert f"image {root}/bear/zz.png is a named pipe (FIFO), not an image file: remove it" in done.stderr
    assert not out.exists()
    ds = ImageFolderDataset(root, Preprocessing("none", 1))  # read without a fingerprint: refused alike
    pipe = next(i for i in range(len(ds)) if ds.path(i).endswith("zz.png"))
    with pytest.raises(SketchmineError, match="is a named pipe"):
        ds.file_bytes(pipe)


def test_export_refuses_unlabelled_images_and_a_folder_holding_files(tmp_path, few):
    """Unlabelled images (-1) were filed under the last class (class_names[-1]) and then mined as
    that class; an export into a folder with files replaced and mixed in without a word."""
    labels = few.labels().copy()
    labels[[1, 3]] = -1
    unlabelled = ArrayDataset(few.images, labels, few.class_names, few.preprocessing, {})
    with pytest.raises(SketchmineError, match=r"2 of the 40 images have no label \(-1; the first: image 1\)"):
        export_image_folder(unlabelled, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    root = export_image_folder(few, tmp_path / "images")
    before = sorted((p, p.read_bytes()) for p in root.rglob("*.png"))
    with pytest.raises(SketchmineError, match=r"images exists and is not empty; export into a new or empty folder"):
        export_image_folder(few, root)
    assert sorted((p, p.read_bytes()) for p in root.rglob("*.png")) == before
    (tmp_path / "empty").mkdir()
    assert len(list(export_image_folder(few, tmp_path / "empty").rglob("*.png"))) == 40


def test_an_array_dataset_of_images_labels_and_names_takes_the_models_preprocessing(tmp_path, demo_test_set):
    """The refusals of other inputs point to sketchmine.data.ArrayDataset, which also needed a
    preprocessing and a description (a TypeError without them)."""
    from torch.utils.data import Subset

    raw = animal_shape("test")  # no preprocessing set: mine gives it the model's
    ds = ArrayDataset(raw.images[:40], raw.labels()[:40], raw.class_names)
    assert ds.path(3) == "arrays/images/00003"
    run = sketchmine.mine("demo", ds, layers=["features.0"], k=2, out=tmp_path / "a.zarr")
    ref = sketchmine.mine("demo", Subset(raw, range(40)), layers=["features.0"], k=2, out=tmp_path / "b.zarr")
    assert run.attrs["preprocessing"] == ref.attrs["preprocessing"] and run.accuracy() == ref.accuracy()
    for a, b in zip(run.topk("features.0"), ref.topk("features.0")):
        np.testing.assert_array_equal(a, b)
