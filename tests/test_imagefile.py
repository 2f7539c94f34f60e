"""One image file as 8-bit pixels and its note (data/imagefile.py): transparency held as a key
(a PNG's tRNS) read as the alpha it is, and 16-bit files alike whatever their format, on both
preprocessing routes. Real sketches (the embedded test split) written with Pillow into tmp_path;
the demo model; real stores."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sketchmine
from sketchmine.data import ImageFolderDataset, preset
from sketchmine.errors import SketchmineError
from tests.helpers import assert_same_store, two_sketches_a_class, write_class_folder as write
from tests.test_folder_files import _private_cache  # noqa: F401  (autouse: caches under the test's folder)


@pytest.fixture(scope="module")
def sketches() -> list[tuple[str, np.ndarray]]:
    return two_sketches_a_class()


def mine_both(root: Path, tmp_path: Path, **kw) -> dict:
    """The folder mined on each route; the two stores hold the same arrays bit for bit."""
    runs = {p: sketchmine.mine("demo", root, out=tmp_path / f"{p}.zarr", preprocess=p, layers=["features.0"], k=3,
                               **kw) for p in ("cpu", "device")}
    assert_same_store(tmp_path / "device.zarr", tmp_path / "cpu.zarr")
    return runs


def png(path: Path, samples: np.ndarray, colour_type: int, depth: int = 8, trns: bytes | None = None) -> None:
    """A PNG written chunk by chunk (Pillow writes no 16-bit colour, nor a tRNS on one): grey
    (colour type 0), RGB (2), grey + alpha (4), RGBA (6); `trns` its tRNS chunk."""
    h, w = samples.shape[:2]
    dtype = ">u2" if depth == 16 else "u1"
    raw = b"".join(b"\0" + samples[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))
                     + (chunk(b"tRNS", trns) if trns is not None else b"")
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def palette(a: np.ndarray, ink: tuple[int, int, int]) -> Image.Image:
    """The sketch as a palette image: entry 0 (black) under the background, entry 1 (`ink`) the strokes."""
    p = Image.fromarray((a > 0).astype(np.uint8), "P")
    p.putpalette([0, 0, 0, *ink] + [0] * 762)
    return p


def test_palette_transparency_takes_the_rgba_rules(tmp_path, sketches):
    """A palette PNG whose tRNS makes entry 0 transparent was read as "P", its transparency
    dropped by PIL's convert without a word ("converted:P"): now read as the RGBA file it is,
    pixel for pixel, refused by the same alpha-drawing rule and counted as "RGBA" on both routes."""
    def save(j, a, stem):
        if j % 4 == 1:  # black strokes on transparent black: the drawing is in the alpha channel
            palette(a, (0, 0, 0)).save(f"{stem}.png", transparency=0)
        elif j % 4 == 2:  # white strokes on transparent black (entry 0 transparent)
            palette(a, (255, 255, 255)).save(f"{stem}.png", transparency=0)
        elif j % 4 == 3:  # the same as an RGBA file, for comparison
            palette(a, (255, 255, 255)).convert("RGBA").save(f"{stem}.png")
        else:
            Image.fromarray(a).save(f"{stem}.png")

    root = write(tmp_path / "d", sketches, save)
    ds = ImageFolderDataset(root, preset("none", 1, None))
    for i in range(len(ds)):
        j = int(Path(ds.path(i)).stem[3:])
        if j % 4 == 2:
            as_rgba = palette(sketches[j][1], (255, 255, 255)).convert("RGBA")
            image, note = ds.image_array(i)
            assert note == "converted:RGBA", ds.path(i)
            np.testing.assert_array_equal(image, np.asarray(as_rgba.convert("RGB")))
        elif j % 4 == 1:
            with pytest.raises(ValueError, match=r"the drawing is in its alpha channel \(RGBA: 100%"):
                ds.image_array(i)
    runs = mine_both(root, tmp_path, skip_bad_images=True)
    for run in runs.values():
        assert [b["path"] for b in run.attrs["bad_images"]] == [ds.path(i) for i in range(len(ds))
                                                                 if int(Path(ds.path(i)).stem[3:]) % 4 == 1]
        assert run.attrs["converted_images"] == {"RGBA": 10}


def test_a_transparent_key_colour_is_alpha_at_any_depth(tmp_path, sketches):
    """A tRNS key on a grey, RGB, 16-bit grey or 16-bit RGB PNG: grey (the model's mode, for the
    demo model) was mined with no note at all; 16-bit files lost the key in the scaling. Each is
    now counted as its alpha kind, and one whose strokes are the key's colour is refused."""
    a = np.where(sketches[0][1] > 0, 255, 0).astype(np.uint8)  # white strokes on black
    v = np.where(a > 0, 60000, 3).astype(np.uint16)  # the strokes at 60000; 3 (the key) under the background
    files = {"grey.png": (lambda p: Image.fromarray(np.maximum(a, 7)).save(p, transparency=7), "LA"),
             "rgb.png": (lambda p: Image.fromarray(np.stack([a, a, a // 2], -1)).save(p, transparency=(0, 0, 0)), "RGBA"),
             "grey16.png": (lambda p: png(p, v, 0, 16, struct.pack(">H", 3)), "LA;16"),
             "rgb16.png": (lambda p: png(p, np.stack([v, v, v], -1), 2, 16, struct.pack(">HHH", 3, 3, 3)), "RGBA;16")}
    root = tmp_path / "d"
    (root / "c").mkdir(parents=True)
    for name, (save, _) in files.items():
        save(root / "c" / name)
    ds = ImageFolderDataset(root, preset("none", 1, None))
    for i in range(len(ds)):
        _, note = ds.image_array(i)
        assert note == f"converted:{files[Path(ds.path(i)).name][1]}", ds.path(i)
    dark = tmp_path / "dark"  # dark strokes (within 16 levels of the key's black) on the 16-bit key
    (dark / "c").mkdir(parents=True)
    png(dark / "c" / "x.png", np.where(a > 0, 2000, 3).astype(np.uint16), 0, 16, struct.pack(">H", 3))
    with pytest.raises(SketchmineError, match=r"the drawing is in its alpha channel \(LA: "):
        sketchmine.mine("demo", dark, out=tmp_path / "dark.zarr", layers=["features.0"], k=1)


def test_16_bit_grey_is_one_kind_in_any_format(tmp_path, sketches):
    """The same 16-bit sketch as PNG, binary and plain PGM, and little- and big-endian TIFF: the
    same pixels and model input, and one count, "I;16" (a PGM over 8 bits was counted as "I",
    PIL's mode for it, a big-endian TIFF as "I;16B")."""
    def wide(a: np.ndarray) -> np.ndarray:  # every low byte used, so that a byte lost would show
        low = (np.arange(a.size).reshape(a.shape) * 37) % 256
        return np.clip(a.astype(np.int64) * 256 + low - 128, 0, 65535).astype(np.uint16)

    def save(j, a, stem):
        v = wide(a)
        kind = ("png", "pgm", "plain.pgm", "tif", "be.tif")[j % 5]
        if kind in ("png", "pgm", "tif"):
            Image.fromarray(v).save(f"{stem}.{kind}")
        elif kind == "be.tif":
            Image.frombytes("I;16B", v.shape[::-1], v.astype(">u2").tobytes()).save(f"{stem}.tif")
        else:
            rows = "\n".join(" ".join(str(int(x)) for x in row) for row in v)
            Path(f"{stem}.pgm").write_text(f"P2\n{v.shape[1]} {v.shape[0]}\n65535\n{rows}\n")
        Image.fromarray(v).save(f"{stem}.ref.png")  # the same samples as a 16-bit PNG, beside it

    root = write(tmp_path / "d", sketches, save)
    for p in list(root.rglob("*.ref.png")):
        p.rename(tmp_path / f"{p.parent.name}-{p.name}")  # out of the dataset: compared, not mined
    ds = ImageFolderDataset(root, preset("imagenet", 3, (32, 32)))
    assert sorted({Path(ds.path(i)).suffix for i in range(len(ds))}) == [".pgm", ".png", ".tif"]
    for i in range(len(ds)):
        image, note = ds.image_array(i)
        assert note == "converted:I;16", ds.path(i)
        stem = (root / ds.path(i)).with_suffix("")
        ref = ImageFolderDataset.from_samples(tmp_path, [(f"{stem.parent.name}-{stem.name}.ref.png", 0)], ["c"],
                                              ds.preprocessing)
        want, _ = ref.image_array(0)
        np.testing.assert_array_equal(image, want, err_msg=ds.path(i))
        assert np.array_equal(ds[i][1].numpy(), ref[0][1].numpy()), ds.path(i)
    runs = mine_both(root, tmp_path)
    for run in runs.values():
        assert run.attrs["converted_images"] == {"I;16": 20}
