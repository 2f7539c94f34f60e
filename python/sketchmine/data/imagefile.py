"""One image file as 8-bit pixels: the decoding every route shares (the cpu route per image, the
device route for every file its JPEG decoder does not take), and the note that says what was
converted.

A file is read as stored: the first frame of a multi-frame file (TIFF pages, animated
WebP/APNG), EXIF orientation not applied (counted in the note; a TIFF's is, by PIL's decoder, as
torchvision reads it: counted too), 16- and 32-bit samples scaled
to 8 bits by one rule, a transparency key (a PNG's tRNS) made the alpha it is, alpha dropped
later by `convert_channels`, except where the alpha channel is the drawing.
"""
from __future__ import annotations

import io
import os
import stat
import sys
import warnings
from typing import Any

import numpy as np
from PIL import Image

from sketchmine.errors import SketchmineError
from sketchmine.names import printable

READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What reading a damaged or hostile image file raises (PIL and the OS)."""


ORIENTATION = 0x0112
"""The EXIF (and TIFF) orientation tag: 1 is upright, 2-8 rotate and/or mirror for display."""


EXIF_NOT_APPLIED = " (EXIF orientation not applied)"
"""Added to a note's mode when the file asks to be shown rotated or mirrored: counted in
`converted_images` under its own key, so a run says how many such files it mined as stored."""
TIFF_APPLIED = " (TIFF orientation applied)"
"""Added instead for a TIFF: PIL turns a TIFF upright as it decodes it (and drops the tag), as
torchvision's loader reads it too; counted under its own key, so a run says how many it turned."""


_OTHER_END = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_LOW_BYTE = {f"{mode};16{end}": f"{mode};16{other}"
             for mode in ("RGB", "RGBA", "RGBX", "CMYK") for end, other in _OTHER_END.items()} | {"LA;16B": "RGBA"}
"""16-bit colour rawmodes (PNG; TIFF, big-, little- or native-endian when libtiff decodes it) that
PIL cuts to each sample's high byte → the rawmode that unpacks the same decoded bytes keeping
the low byte instead (for 16-bit grey + alpha, PNG's "LA;16B" read as RGBA: 8 bits a band, L
high, L low, A high, A low). Premultiplied "RGBa;16" is not among them: its unpacker divides by
the alpha's high byte."""


_GREY_16 = ("I;16", "I;16B", "I;16L", "I;16N")
"""Modes PIL opens unsigned 16-bit grey files in (PNG, TIFF of either byte order); a 16-bit PGM
opens as "I", its samples scaled by PIL to 0-65535 by its maxval. All are counted as "I;16"."""


class _Named(io.BytesIO):
    """A file's bytes read once, shown as the file's path in PIL's errors ("cannot identify
    image file '/data/x.png'", as when PIL opens the path itself)."""

    def __init__(self, data: bytes, path: str | os.PathLike) -> None:
        super().__init__(data)
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return repr(self.path)


def _source(path: str | os.PathLike, data: bytes | None) -> Any:
    return path if data is None else _Named(data, path)


def read_image(path: str | os.PathLike, mode: str, data: bytes | None = None) -> tuple[Image.Image, str]:
    """The file as an 8-bit PIL image, "L" for grey files and "RGB" for the others, and its
    note (`conversion_note`) against the model's `mode` ("L" or "RGB"); raises READ_ERRORS
    (a ValueError for a drawing held in the alpha channel). PIL's decompression-bomb limit
    (`Image.MAX_IMAGE_PIXELS`) applies at `Image.open`. `data`: the file's bytes, already read
    (and checked: folder.ImageFolderDataset.file_bytes), decoded instead of reading `path`."""
    with Image.open(_source(path, data)) as im:
        wide = _wide_rawmode(im)
        tiles = list(im.tile)
        turned = exif_orientation(im) if im.format == "TIFF" else 1  # the decoder applies it and drops the tag
        im.load()
        stored, orientation = im.mode, exif_orientation(im)
        if im.mode in _GREY_16 or (im.mode == "I" and im.format == "PPM"):  # a PGM over 8 bits opens as "I"
            stored = "I;16"  # one name, whatever the format or byte order
        turned = turned if turned in range(2, 9) and orientation != turned else 1
        key = im.info.get("transparency")  # a PNG's tRNS: one colour (or palette entries) transparent
        if wide is not None:
            stored = "LA;16" if wide == "LA;16B" else f"{im.mode};16"
            if wide in _LOW_BYTE:
                im = _full_depth(_source(path, data), tiles, wide, im, key)
                stored = "RGBA;16" if im.mode == "RGBA" and stored == "RGB;16" else stored
        elif im.mode == "RGB" and tiles and tiles[0].codec_name == "ppm" and _maxval(tiles[0]) > 255:
            stored = "RGB;16"  # PIL scales a 16-bit PPM by its maxval itself: the same rule
        im, stored = _keyed_alpha(im, stored, key)
        im = _to_8bit(im)
        _refuse_alpha_drawing(im)
        native = "L" if im.mode in ("1", "L", "LA", "La") else "RGB"
        return im.convert(native), conversion_note(stored, mode, orientation, turned != 1)


def conversion_note(stored: str, mode: str, orientation: int = 1, turned: bool = False) -> str:
    """A sample's note: "" when the file's pixels are the model's as stored, else
    "converted:<stored mode>" (channels or bit depth converted: "RGBA", "I;16", "RGB;16"),
    with `EXIF_NOT_APPLIED` when the file carries an orientation other than 1 (the pixels stay
    as stored, as torchvision reads them, on both routes), `TIFF_APPLIED` for a TIFF that PIL
    turned upright as it decoded it (`turned`)."""
    rotated = orientation in range(2, 9)
    if stored == mode and not rotated and not turned:
        return ""
    return f"converted:{stored}{TIFF_APPLIED if turned else EXIF_NOT_APPLIED if rotated else ''}"


def conversion_words(mode: str, channels: int) -> str:
    """What a note says of a mode `conversion_note` counted (said once a call)."""
    stored = mode.removesuffix(EXIF_NOT_APPLIED).removesuffix(TIFF_APPLIED)
    stored = "1-bit" if stored == "1" else stored  # not "converting 1 images"
    if mode.endswith(EXIF_NOT_APPLIED):
        return f"reading {stored} images as stored (their EXIF orientation not applied) as the model's {channels}-channel input"
    if mode.endswith(TIFF_APPLIED):
        return (f"reading {stored} TIFF images turned upright by their orientation tag (as PIL and torchvision "
                f"decode them) as the model's {channels}-channel input")
    return f"converting {stored} images to the model's {channels}-channel input"


def exif_orientation(im: Image.Image) -> int:
    """The orientation a loaded image asks to be displayed with (1 when it says none). Looked up
    only where the file has metadata that can hold it (EXIF, XMP, a TIFF's own tags), so a
    plain PNG pays one dict lookup per key. A damaged EXIF block says nothing about the pixels,
    which are read as stored either way: it counts as no orientation."""
    tags = getattr(im, "tag_v2", None)
    try:
        if tags is not None:
            value = tags.get(ORIENTATION, 1)
        elif any(k in im.info for k in ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")):
            value = im.getexif().get(ORIENTATION, 1)
        else:
            return 1
        return int(value)
    except Exception:  # noqa: BLE001 - see the docstring: unreadable metadata is no orientation
        return 1


def header_orientation(data: bytes) -> int:
    """Read a file's header as `read_image` opens it (PIL's decompression-bomb limit,
    `Image.MAX_IMAGE_PIXELS`, refused or warned alike; not an image: UnidentifiedImageError) and
    return its EXIF orientation: what the device route checks before its own JPEG decoder,
    which has neither the limit nor the note."""
    with Image.open(io.BytesIO(data)) as im:
        return exif_orientation(im)


def _wide_rawmode(im: Image.Image) -> str | None:
    """The rawmode of an opened (not loaded) image whose colour samples are 16-bit and which PIL
    cuts to 8 bits by their high byte, else None (grey 16-bit is "I;16", read whole)."""
    modes = {_rawmode(t.args) for t in im.tile}
    if len(modes) != 1 or im.mode not in ("RGB", "RGBA", "CMYK"):
        return None
    raw = modes.pop()
    return raw if raw is not None and raw.endswith((";16B", ";16L", ";16N")) else None


def _rawmode(args: object) -> str | None:
    if isinstance(args, str):
        return args
    return args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else None


def _maxval(tile: object) -> int:
    args = getattr(tile, "args", None)
    return int(args[1]) if isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int) else 255


def _full_depth(path: Any, tiles: list, rawmode: str, high: Image.Image, key: Any = None) -> Image.Image:
    """16-bit colour samples scaled by the one 16-bit rule, rint(v * 255 / 65535), as grey
    16-bit files are (PIL alone keeps each sample's high byte, up to one level off): the same
    tiles decoded again with the unpacker that keeps the low byte. An RGB `key` (a tRNS colour,
    16-bit) makes its pixels transparent: RGBA, as `_keyed_alpha` does at 8 bits."""
    with Image.open(path) as again:
        again.tile = [t._replace(args=_LOW_BYTE[rawmode] if isinstance(t.args, str)
                                 else (_LOW_BYTE[rawmode], *t.args[1:])) for t in tiles]
        again.load()
        low = np.asarray(again).astype(np.uint32)
    if rawmode == "LA;16B":
        value, out_mode = np.stack([low[..., 0] << 8 | low[..., 1], low[..., 2] << 8 | low[..., 3]], -1), "LA"
    else:
        value, out_mode = np.asarray(high).astype(np.uint32) << 8 | low, high.mode
    if out_mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        clear = (value == np.array(key, np.uint32)).all(axis=-1, keepdims=True)
        value, out_mode = np.concatenate([value, np.where(clear, 0, 65535)], axis=-1), "RGBA"
    pixels = np.rint(value * (255.0 / 65535.0)).astype(np.uint8)
    return Image.frombytes(out_mode, high.size, pixels.tobytes())


def _keyed_alpha(im: Image.Image, stored: str, key: Any) -> tuple[Image.Image, str]:
    """A file whose transparency is a key (a PNG's tRNS: palette entries, or one grey or RGB
    value) read as the RGBA or grey + alpha image it is, and counted so ("RGBA", "LA", "LA;16"):
    the alpha rules (`_refuse_alpha_drawing`, alpha dropped and said) then see it as they see an
    RGBA file, instead of PIL's convert dropping the transparency without a word."""
    if key is None or im.mode not in ("1", "L", "P", "RGB", "I", "I;16", "I;16B", "I;16L"):
        return im, stored
    if im.mode.startswith("I"):  # 16-bit grey: the key is a 16-bit value, compared before the scaling
        alpha = Image.fromarray(np.where(np.asarray(im) == key, 0, 255).astype(np.uint8), "L")
        return Image.merge("LA", (_to_8bit(im), alpha)), "LA;16"
    mode = "LA" if im.mode in ("1", "L") else "RGBA"
    with warnings.catch_warnings():  # PIL asks for the RGBA conversion this is
        warnings.simplefilter("ignore")
        return im.convert(mode), mode


BACKGROUND_SHARE, LOOK_ALIKE, VANISHED = 0.1, 16, 1 / 3
"""A file's drawing is in its alpha channel when its transparent pixels (alpha < 128) are at least
a tenth of it (a background), and more than a third of its opaque ones lie within 16 levels, in
every channel, of the colour under that background: once alpha is dropped they vanish into it.
Strokes of another colour than the background's, and a photo cut out on it, stay."""


def _refuse_alpha_drawing(im: Image.Image) -> None:
    """A drawing held in the alpha channel (the strokes opaque, the background transparent, and
    the colour under most strokes the background's: a canvas export of ink on transparent black,
    in one colour or several) would become a flat or near-flat image once alpha is dropped:
    refused (ValueError: unreadable, named, skippable) instead of mined as a blank."""
    if im.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in im.info:
        return
    with warnings.catch_warnings():  # PIL asks for the RGBA conversion this is
        warnings.simplefilter("ignore")
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    a = np.asarray(rgba)
    step = max(1, int((a.shape[0] * a.shape[1] / 2**20) ** 0.5))  # a million pixels at most: as telling
    a = a[::step, ::step]
    clear = a[..., 3] < 128
    if clear.mean() < BACKGROUND_SHARE or clear.all():
        return
    background = np.median(a[clear][:, :3], axis=0)
    solid = a[~clear][:, :3].astype(np.int16)
    alike = float((np.abs(solid - background.astype(np.int16)).max(axis=1) <= LOOK_ALIKE).mean())
    if alike <= VANISHED:
        return
    raise ValueError(f"the drawing is in its alpha channel ({im.mode}: {alike:.0%} of its opaque pixels have the colour "
                     f"under its transparent background, {tuple(int(c) for c in background)}), which sketchmine drops: "
                     "the model would see its strokes vanish into the background; flatten it onto a background first "
                     "(e.g. ImageMagick `mogrify -background white -flatten`)")


def _to_8bit(im: Image.Image) -> Image.Image:
    """16- and 32-bit grey images scaled to 8 bits by one fixed rule (PIL's own convert("L")
    would clip them to white): integers as 16-bit (0-65535), floats as 0-1. A scale taken from
    each image's own range would make the same value a different grey in every file, so values
    outside the rule's range are refused (ValueError: unreadable, named, skippable)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{im.mode} pixels range {a.min():g} to {a.max():g}; integer images are read as "
                             "16-bit, 0 to 65535: save it as 8 or 16-bit")
        return Image.fromarray(np.rint(a * (255.0 / 65535.0)).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError(f"float pixels range {np.nanmin(a):g} to {np.nanmax(a):g}{' with NaN' if np.isnan(a).any() else ''}; "
                             "float images are read as 0 to 1: save it as 8 or 16-bit")
        return Image.fromarray(np.rint(a * 255.0).astype(np.uint8), "L")
    return im


def regular_stat(path: str | os.PathLike, fd: int | None = None) -> os.stat_result:
    """`os.stat(path)` (of `fd`, open on it, where given), refused where it is not a regular file
    (a FIFO, a device, a socket): reading one waits for a writer or never ends, so the command
    would hang without a word."""
    st = os.stat(path) if fd is None else os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise SketchmineError(f"image {printable(str(path))} is {kind}, not an image file: remove it from the dataset "
                              "folder (or rename it without an image extension)")
    return st
