"""Files an ImageFolder meets in the wild, mined on both preprocessing routes: symlink loops,
EXIF orientation, drawings held in the alpha channel, 16-bit colour, JPEG decompression bombs
before the device route's decoder, image files that are not read. Real sketches (the embedded
test split) written with Pillow; the demo model; real stores in tmp_path."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sketchmine
from sketchmine.data import ImageFolderDataset, preset
from sketchmine.data.batchprep import DevicePreparer, NativeSamples, collate_native
from sketchmine.errors import SketchmineError
from tests.helpers import assert_same_store, two_sketches_a_class, write_class_folder as write

NOT_APPLIED = "L (EXIF orientation not applied)"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Fingerprint hashes cached under the test's own folder, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sketches() -> list[tuple[str, np.ndarray]]:
    return two_sketches_a_class()


def png(j, a, stem):
    Image.fromarray(a).save(f"{stem}.png")


def mine_both(root: Path, tmp_path: Path, **kw) -> dict:
    """The folder mined on each route; the two stores hold the same arrays bit for bit."""
    runs = {p: sketchmine.mine("demo", root, out=tmp_path / f"{p}.zarr", preprocess=p, layers=["features.0"], k=3,
                               **kw) for p in ("cpu", "device")}
    assert_same_store(tmp_path / "device.zarr", tmp_path / "cpu.zarr")
    return runs


def listing(root: Path, timeout: float = 60.0) -> ImageFolderDataset:
    """The folder's listing, made in a thread so that a walk that never ends fails the test."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(ImageFolderDataset(root, preset("none", 1, None))), daemon=True)
    worker.start()
    worker.join(timeout)
    assert out, f"listing {root} did not end within {timeout:.0f} s"
    return out[0]


def notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sketchmine"]


def test_a_symlink_loop_in_a_class_lists_its_images_once(tmp_path, sketches, caplog):
    root = write(tmp_path / "d", sketches, png)
    os.symlink(".", root / "bear" / "again")  # e.g. left by a backup tool
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        runs = mine_both(root, tmp_path)
    on_disk = sorted(str(p.relative_to(root)) for p in root.glob("*/*.png"))
    for run in runs.values():
        assert sorted(str(p) for p in run.paths) == on_disk
        assert run.class_accuracy().loc["bear", "count"] == 2
    said = [n for n in notes(caplog) if "not followed" in n]
    assert len(said) == 2 and all("bear/again → bear" in n for n in said)  # once per mine


def test_links_are_followed_but_no_folder_is_entered_twice(tmp_path, sketches):
    root = write(tmp_path / "d", sketches[:4], png)  # bear/img0, img1; bird/img2, img3
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(sketches[5][1]).save(outside / "o.png")
    for name, target in [("l1", "."), ("l2", "."), ("up", ".."), ("ext1", outside), ("ext2", outside)]:
        os.symlink(target, root / "bear" / name)
    os.symlink(outside, outside / "self")  # a loop outside the dataset, reached through ext1
    os.symlink("bear", root / "bear_link")  # a class folder that is a link: a class, as before
    os.symlink("../bear/img0.png", root / "bird" / "linked.png")  # a linked file: an image, as before
    ds = listing(root)
    assert ds.class_names == ["bear", "bear_link", "bird"]
    assert [p for p, _ in ds.samples] == [
        "bear/img0.png", "bear/img1.png", "bear/ext1/o.png",
        "bear_link/img0.png", "bear_link/img1.png", "bear_link/ext1/o.png",
        "bird/img2.png", "bird/img3.png", "bird/linked.png"]
    note = ds.skipped_note() or ""
    assert f"bear/ext2 → {outside.resolve()}" in note and "bear/l1 → bear" in note and "more" in note
    assert ds[len(ds) - 1][3] == ""  # the linked file reads


def test_exif_orientation_is_counted_and_not_applied_on_both_routes(tmp_path, sketches, caplog):
    """Files stored sideways that ask to be shown upright: mined as stored (as torchvision
    reads them, and as visualize crops them), said once, counted per run."""
    def save(j, a, stem):
        if j % 3 == 0:
            exif = Image.Exif()
            exif[0x0112] = 6  # "rotate 90° clockwise to display"
            Image.fromarray(a).transpose(Image.Transpose.ROTATE_90).save(f"{stem}.jpg", quality=95,
                                                                           exif=exif.tobytes())
        elif j % 3 == 1:
            exif = Image.Exif()
            exif[0x0112] = 8
            Image.fromarray(a).transpose(Image.Transpose.ROTATE_270).save(f"{stem}.png", exif=exif.tobytes())
        else:
            Image.fromarray(a).save(f"{stem}.jpg", quality=95)

    root = write(tmp_path / "d", sketches, save)
    ds = ImageFolderDataset(root, preset("none", 1, None))
    rotated = sum(1 for j in range(len(sketches)) if j % 3 != 2)
    for i in range(len(ds)):
        with Image.open(root / ds.path(i)) as im:
            stored = torch.from_numpy(np.asarray(im, np.float32) / 255)
        assert torch.equal(ds[i][1][0], stored)
    assert sum(ds[i][3] == f"converted:{NOT_APPLIED}" for i in range(len(ds))) == rotated
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        runs = mine_both(root, tmp_path)
    for run in runs.values():
        assert run.attrs["converted_images"] == {NOT_APPLIED: rotated}
    assert sum("EXIF orientation not applied" in n for n in notes(caplog)) == 2  # once per mine
    # the device route's own JPEG decoder (CUDA's in `mine`; here on the CPU) gives the same notes
    idx, packed, _, sample_notes = collate_native([NativeSamples(ds, jpeg_bytes=True)[i] for i in range(len(ds))])
    assert len(packed[1]) == sum(ds.path(i).endswith(".jpg") for i in range(len(ds)))
    _, sample_notes = DevicePreparer(ds, torch.device("cpu"))(idx, packed, sample_notes)
    assert sample_notes == [ds[i][3] for i in range(len(ds))]


def test_a_tiffs_orientation_is_applied_as_torchvision_reads_it_and_counted(tmp_path, sketches, caplog):
    """PIL turns a TIFF upright as it decodes it and drops the tag: it was mined turned, and said
    nothing (the note looked for the tag after decoding). It is counted and said now; the pixels
    are torchvision's loader's."""
    from torchvision.datasets.folder import pil_loader

    def save(j, a, stem):
        Image.fromarray(a).save(f"{stem}.tif", tiffinfo={0x0112: 6} if j % 2 == 0 else {})

    root = write(tmp_path / "d", sketches, save)
    ds = ImageFolderDataset(root, preset("none", 1, None))
    turned = sum(1 for j in range(len(sketches)) if j % 2 == 0)
    for i in range(len(ds)):
        want = torch.from_numpy(np.asarray(pil_loader(str(root / ds.path(i))).convert("L"), np.float32) / 255)
        assert torch.equal(ds[i][1][0], want)
    assert sum(ds[i][3] == "converted:L (TIFF orientation applied)" for i in range(len(ds))) == turned
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        runs = mine_both(root, tmp_path)
    for run in runs.values():
        assert run.attrs["converted_images"] == {"L (TIFF orientation applied)": turned}
    assert sum("TIFF images turned upright by their orientation tag" in n for n in notes(caplog)) == 2


def test_a_drawing_held_in_the_alpha_channel_is_refused_naming_the_file(tmp_path, sketches):
    """Ink only in alpha (RGB one colour everywhere, a canvas export) would be a blank input once
    alpha is dropped, and so would dark ink of two colours on transparent black (it passed, being
    no one colour); ink in the colour channels on a transparent background, and a cut-out whose
    own pixels differ from the background's, still read."""
    def save(j, a, stem):
        rgba = np.zeros((*a.shape, 4), np.uint8)
        if j == 3:  # black everywhere, the strokes in alpha
            rgba[..., 3] = a
        elif j == 5:  # black and dark blue strokes, a stray white pixel, on transparent black
            rgba[..., 3] = np.where(a > 0, 255, 0)
            rgba[14:, :, :3] = np.where(a[14:, :, None] > 0, np.array([20, 20, 110], np.uint8), 0)
            rgba[0, 0] = (255, 255, 255, 255)
        elif j in (6, 7):  # the strokes in colour, a transparent white background
            rgba[..., :3], rgba[..., 3] = a[..., None], np.where(a > 0, 255, 0)
        elif j == 8:  # a dark textured cut-out on transparent black: its own pixels stay, so it reads
            texture = np.random.default_rng(j).integers(10, 90, (*a.shape, 3))
            rgba[..., :3], rgba[..., 3] = np.where(a[..., None] > 0, texture, 0), np.where(a > 0, 255, 0)
        else:
            Image.fromarray(a).save(f"{stem}.png")
            return
        Image.fromarray(rgba, "RGBA").save(f"{stem}.png")

    root = write(tmp_path / "d", sketches, save)
    for route in ("cpu", "device"):
        with pytest.raises(SketchmineError, match=r"cannot read image bird/img3\.png: ValueError: the drawing is in "
                                                  r"its alpha channel .* which sketchmine drops"):
            sketchmine.mine("demo", root, out=tmp_path / f"refused-{route}.zarr", preprocess=route)
    runs = mine_both(root, tmp_path, skip_bad_images=True)
    for run in runs.values():
        assert [b["path"] for b in run.attrs["bad_images"]] == ["bird/img3.png", "cat/img5.png"]
        assert run.attrs["converted_images"] == {"RGBA": 3}


def png16(path: Path, a: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG (Pillow writes none in colour): grey (0), RGB (2), grey + alpha (4), RGBA (6)."""
    h, w = a.shape[:2]
    raw = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_colour_takes_the_one_16_bit_rule(tmp_path, sketches):
    """16-bit RGB, RGBA and grey + alpha PNGs scaled by rint(v * 255 / 65535), as 16-bit grey
    files are (Pillow alone keeps each sample's high byte), and counted as converted."""
    def wide(a):
        low = (np.arange(a.size).reshape(a.shape) * 37) % 256  # low bytes that move the rule's rounding
        return np.clip(a.astype(np.int64) * 256 + low - 128, 0, 65535).astype(np.uint16)

    kinds = [("RGB;16", 2), ("RGBA;16", 6), ("LA;16", 4)]
    expected = {}

    def save(j, a, stem):
        v = wide(a)
        kind, colour_type = kinds[j % 3]
        samples = {2: lambda: np.stack([v, v // 2, 65535 - v], -1), 6: lambda: np.stack([v, v // 3, v, v * 0 + 65535], -1),
                   4: lambda: np.stack([v, v * 0 + 65535], -1)}[colour_type]()
        png16(Path(f"{stem}.png"), samples, colour_type)
        rule = np.rint(samples.astype(np.float64) * 255 / 65535).astype(np.uint8)
        expected[f"{Path(stem).parent.name}/{Path(stem).name}.png"] = (kind, rule[..., :3] if colour_type == 6 else
                                                                        rule[..., 0] if colour_type == 4 else rule)

    root = write(tmp_path / "d", sketches, save)
    ds = ImageFolderDataset(root, preset("none", 3, None))
    for i in range(len(ds)):
        kind, rule = expected[ds.path(i)]
        image, note = ds.image_array(i)
        assert note == f"converted:{kind}"
        np.testing.assert_array_equal(image, rule, err_msg=ds.path(i))
    runs = mine_both(root, tmp_path)
    for run in runs.values():
        assert run.attrs["converted_images"] == {"RGB;16": 7, "RGBA;16": 7, "LA;16": 6}


def forged_bomb(a: np.ndarray, size: tuple[int, int]) -> bytes:
    """A small JPEG whose header declares `size` (H, W): what a decompression bomb's header says."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", *size)
    return bytes(data)


def test_the_device_routes_jpeg_decoder_keeps_pils_pixel_limit(tmp_path, sketches, monkeypatch):
    """The device route hands .jpg bytes to torchvision's decode_jpeg (on CUDA), which has no
    pixel limit: the header is checked first, with PIL's limit and message, as the cpu route does."""
    def save(j, a, stem):
        if j == 0:
            Path(f"{stem}.jpg").write_bytes(forged_bomb(a, (13000, 14000)))  # 182 megapixels
        else:
            Image.fromarray(a).save(f"{stem}.jpg", quality=90)

    root = write(tmp_path / "d", sketches[:3], save)
    ds = ImageFolderDataset(root, preset("none", 1, None))
    native = NativeSamples(ds, jpeg_bytes=True)
    assert ds[0][3].startswith("error:DecompressionBombError: Image size (182000000 pixels) exceeds limit")
    assert native[0][3] == ds[0][3]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # a 28×28 file (784 px) is over twice the limit
    assert native[1][3] == ds[1][3] and ds[1][3].startswith("error:DecompressionBombError")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over the limit, under twice it: warned, read
    with pytest.warns(Image.DecompressionBombWarning):
        assert native[1][3] == "jpeg"
    with pytest.warns(Image.DecompressionBombWarning):
        batch = [native[i] for i in range(len(ds))]
    idx, packed, _, sample_notes = collate_native(batch)
    _, sample_notes = DevicePreparer(ds, torch.device("cpu"))(idx, packed, sample_notes)
    assert sample_notes[0].startswith("error:DecompressionBombError") and sample_notes[1:] == ["", ""]


def test_image_files_that_are_not_read_are_said_once(tmp_path, sketches, caplog):
    root = write(tmp_path / "d", sketches, png)
    for ext, fmt in ((".gif", "GIF"), (".jfif", "JPEG")):
        Image.fromarray(sketches[0][1]).save(root / "bear" / f"extra{ext}", format=fmt)
    Image.fromarray(sketches[1][1]).save(root / "loose.png")
    note = ImageFolderDataset(root, preset("none", 1, None)).skipped_note() or ""
    assert "2 image file(s) beside the images are not read (.gif, .jfif" in note and "bear/extra.gif" in note
    assert f"1 image file(s) directly in {root} are not mined (loose.png)" in note
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        run = sketchmine.mine("demo", root, out=tmp_path / "r.zarr", layers=["features.0"])
    assert len(run.paths) == len(sketches)
    assert [n for n in notes(caplog) if "not read" in n] == [note]


def test_class_names_differing_only_in_unicode_form_are_refused(tmp_path, sketches):
    """NFC and NFD "café" printed alike and became two classes, each with part of the images."""
    import unicodedata

    root = tmp_path / "data"
    for j, form in enumerate(("NFC", "NFD")):
        folder = root / unicodedata.normalize(form, "café")
        folder.mkdir(parents=True)
        Image.fromarray(sketches[j][1]).save(folder / "a.png")
    (root / "dog").mkdir()
    Image.fromarray(sketches[2][1]).save(root / "dog" / "a.png")
    with pytest.raises(SketchmineError, match=r"two class folders named 'café', in different Unicode forms"):
        ImageFolderDataset(root, preset("none", 1, None))


def test_files_hashed_on_threads_give_the_digests_of_one_thread(tmp_path, monkeypatch):
    """A first fingerprint hashes on several threads: each file's digest lands in its own place,
    missing files stay missing, and the cache holds what one thread would have written."""
    from sketchmine.data import folder

    monkeypatch.setattr(folder, "usable_cores", lambda: 4)
    rng = np.random.default_rng(0)
    rels = [f"c/{i:03d}.png" for i in range(300)]
    (tmp_path / "c").mkdir()
    for rel in rels[::-1]:  # sizes unlike each other, files written in another order than listed
        (tmp_path / rel).write_bytes(rng.bytes(int(rng.integers(1, 5000))))
    asked = [*rels[:150], "c/gone.png", *rels[150:]]
    want = [hashlib.blake2b((tmp_path / r).read_bytes(), digest_size=16).hexdigest() if r != "c/gone.png"
            else "missing" for r in asked]
    used = []
    monkeypatch.setattr(folder, "ThreadPoolExecutor", lambda n: used.append(n) or ThreadPoolExecutor(n))
    folder._HASH_CACHE.clear()
    assert folder.content_hashes(tmp_path, asked) == want and used == [4]
    folder._HASH_CACHE.clear()  # read back from the cache file the threads' hashes went into
    monkeypatch.setattr(folder, "_file_digest", lambda path: pytest.fail(f"{path} hashed again"))
    assert folder.content_hashes(tmp_path, asked) == want
