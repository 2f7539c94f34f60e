"""The listing of an ImageFolder's class folders (torchvision's order, no folder entered twice),
and which file extensions it reads. A folder this user may not list is refused, naming it: os.walk
skips what it cannot list, so an unreadable class folder was "a folder without images" (skipped,
the labels after it shifted) and an unreadable subfolder lost its images without a word."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from sketchmine.errors import SketchmineError
from sketchmine.names import printable


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The files an ImageFolder reads: torchvision's `datasets.folder.IMG_EXTENSIONS` (no .gif), so
that image indices match torchvision's ImageFolder on the same folder."""


OTHER_IMAGE_EXTENSIONS = (".gif", ".apng", ".jfif", ".jpe", ".avif", ".heic", ".heif", ".ico", ".tga", ".pbm", ".pnm",
                          ".qoi", ".jp2", ".j2k", ".dib", ".psd", ".svg")
"""Image files an ImageFolder does not read: a folder holding only these is refused, not skipped."""


def unlistable(folder: Path, root: Path, exc: OSError) -> SketchmineError:
    """The refusal of a folder of the dataset at `root` that cannot be listed (`exc`)."""
    shown = printable(str(folder))
    what = f"dataset directory {shown}" if folder == root else f"folder {shown} of dataset {printable(str(root))}"
    left_out = "" if folder == root else ": its images would be left out without a word"
    return SketchmineError(f"cannot list {what} ({exc.strerror or exc}){left_out}; make it readable by this user (as "
                           f"its owner: chmod -R u+rX {shown}, or g+rX for a group)"
                           + ("" if folder == root else ", or move it out of the dataset root"))


def check_listable(folder: Path, root: Path) -> None:
    """Refuse a folder of the dataset this user may not list or enter (its permissions: no r, or r
    without x as after `chmod -R 644`), before it is taken for a folder without images or its
    entries are looked for. One access call, not a listing: the listing that follows (`walk`)
    refuses through its onerror what else keeps a folder from being listed."""
    if not os.access(folder, os.R_OK | os.X_OK):
        raise unlistable(folder, root, PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder)))


def is_run_dir(path: Path) -> bool:
    """A sketchmine run (a Zarr group whose zarr.json records a schema_version), read-only."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return "schema_version" in (json.loads(meta.read_text(encoding="utf-8")).get("attributes") or {})
    except (OSError, ValueError, AttributeError):
        return True  # an unreadable Zarr group: not images either way


def list_images(root: Path, name: str, not_followed: list[str]) -> tuple[list[str], list[str]]:
    """(images, other image-like files) of class folder `name`, paths relative to root, in
    torchvision's `make_dataset` order."""
    images, others = [], []
    for dirpath, filenames in walk(root / name, root, not_followed):
        for f in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            low = f.lower()
            if f.startswith("._"):
                continue  # macOS AppleDouble metadata ("._x.png" beside x.png): not an image
            if low.endswith(IMAGE_EXTENSIONS):
                images.append(rel)
            elif os.path.splitext(low)[1] in OTHER_IMAGE_EXTENSIONS:
                others.append(rel)
    return images, others


def walk(top: Path, root: Path, not_followed: list[str]) -> list[tuple[str, list[str]]]:
    """(dirpath, filenames) of `os.walk(top, followlinks=True)` sorted by dirpath, entering no
    folder twice: a symlinked folder whose real path lies in a tree the walk enters anyway (the
    class folder's, or one an earlier link led to) or holds the folder it sits in (a loop,
    `bear/again -> .`), and a folder first reached through a link, are not entered and are
    named in `not_followed` ("link → target"). os.walk itself follows a loop until the path
    is too long (each image listed ~40 times), and two loops double the listing at every level."""
    trees = [os.path.realpath(top)]
    real_root = os.path.realpath(root)
    out = []

    def refuse(exc: OSError) -> None:  # os.walk skips a folder it cannot list: its images would vanish
        if not isinstance(exc, FileNotFoundError):  # removed during the walk: nothing to list, as before
            raise unlistable(Path(exc.filename or top), root, exc)

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=refuse):
        here, keep = os.path.realpath(dirpath), []
        for d in sorted(dirnames):
            path = os.path.join(dirpath, d)
            real, link = os.path.realpath(path), os.path.islink(path)
            if (any(inside(real, t) for t in trees) or inside(here, real)) if link else real in trees:
                shown = os.path.relpath(real, real_root) if inside(real, real_root) else real
                not_followed.append(f"{os.path.relpath(path, root)} → {shown}")
                continue
            if link:
                trees.append(real)
            check_listable(Path(path), root)  # os.walk would skip it, or list files it cannot open
            keep.append(d)
        dirnames[:] = keep
        out.append((dirpath, filenames))
    return sorted(out)


def inside(path: str, tree: str) -> bool:
    """`path` is `tree` or lies under it (both real paths)."""
    return path == tree or path.startswith(tree.rstrip(os.sep) + os.sep)
