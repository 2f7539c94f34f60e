"""ImageFolder directories: torchvision's listing, the content-hash fingerprint and the
decoding of one file into [0, 1] pixels."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchmine.cores import usable_cores
from sketchmine.data.dataset import MinerDataset, error_note
from sketchmine.data.imagefile import READ_ERRORS, read_image, regular_stat
from sketchmine.data.listing import (IMAGE_EXTENSIONS, OTHER_IMAGE_EXTENSIONS, check_listable, is_run_dir,
                                      list_images, unlistable)
from sketchmine.data.preprocess import Preprocessing, chw
from sketchmine.errors import SketchmineError
from sketchmine.names import printable


SKETCHMINE_OUTPUTS = {".sketchmine-report": "a sketchmine report", ".sketchmine-probe": "a sketchmine probe page"}
"""Marker file → what a folder holding it is: folders sketchmine wrote (`present.report_folder.MARKER`
and `present.report_probe.MARKER`, named here because data may not import the presentation). A
run's default report (RUN-report) lands beside a run stored in the data root; its PNGs are no class."""


class ImageFolderDataset(MinerDataset):
    """root/<class>/<image>: the listing of torchvision's `ImageFolder` on the same folder, so
    image indices and labels match it:

    - classes: the root's entries that are directories (symlinks followed, hidden ones
      included), sorted by name;
    - images: `sorted(os.walk(class_dir, followlinks=True))`, files sorted within each
      directory, kept when their lowercased name ends with one of `IMAGE_EXTENSIONS`
      (torchvision's list: no .gif); symlinked files and class folders are followed.

    Differences, on purpose: a folder without images (``notes/``) is skipped instead of
    refused, so it neither becomes a class nor shifts the labels of the classes after it; a
    sketchmine run stored in the root (a directory with a zarr.json) is never a class, nor is a
    report or probe folder sketchmine wrote (`SKETCHMINE_OUTPUTS`); macOS archive metadata (a
    ``__MACOSX/`` folder, ``._name.png`` AppleDouble files) is not read. All are named in
    `skipped` (and noted by `mine`). No folder is entered twice within a class: a symlink loop
    (``bear/again -> .``) or a second link to a folder listed already is not followed, so each
    image is listed once (torchvision lists a loop's images until the path is too long). What
    is left out besides (those links, unread image files such as .gif beside the images,
    images in the root itself) is named in `left_out` and `skipped_note`. A folder with no
    listed image but files PIL reads under other extensions (e.g. only .gif) is refused: it looks
    like a class that would silently vanish. A class or file name that is not valid UTF-8 is refused
    at once, naming it: the run stores names as text. A folder this user may not list is refused,
    naming it (`listing.check_listable`); the images it may not read are `unreadable` after `fingerprint`.

    `preprocessing_explicit`: False when built by `mine` itself, so that another resolution
    may replace the preprocessing (see `as_miner_dataset`)."""

    def __init__(self, root: str | os.PathLike, preprocessing: Preprocessing, *, explicit: bool = True) -> None:
        self.root = Path(root)
        if not self.root.exists():  # a symlink loop or a dangling link does not exist either: said apart
            raise SketchmineError(f"dataset directory {self.root} " + ("is a symbolic link that leads to no folder (a "
                                  "loop, or a missing target)" if self.root.is_symlink() else "does not exist"))
        if not self.root.is_dir():
            raise SketchmineError(f"dataset {self.root} is not a directory of class folders")
        try:
            entries = list(os.scandir(self.root))
        except OSError as exc:  # its permissions: said as a refusal naming it, not a bare OSError
            raise unlistable(self.root, self.root, exc) from None
        folders = sorted(e.name for e in entries if e.is_dir())
        loose = sorted(e.name for e in entries if not e.is_dir() and not e.name.startswith("._")
                       and e.name.lower().endswith(IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS))
        if not folders:  # a flat folder with a labels file is a common layout, which sketchmine does not read
            flat = (f", only {len(loose)} images directly in it (a class is the folder an image lies in; no labels "
                    "file is read): move each into its class's folder, or pass sketchmine.mine a torch Dataset of "
                    "(image, label)") if loose else ""
            raise SketchmineError(f"dataset directory {self.root} has no class folders{flat}; expected "
                                  f"{self.root}/<class>/<image>.png")
        self.skipped: dict[str, str] = {}
        listed: dict[str, list[str]] = {}
        not_followed: list[str] = []
        unread: list[str] = []
        for name in folders:
            if name == "lost+found" and not os.access(self.root / name, os.R_OK | os.X_OK):
                self.skipped[name] = "the file system's recovery folder"  # a data disk's root: root's, 0700
                continue
            if name != "__MACOSX":  # one this user may not list is refused, not taken for a folder without images
                check_listable(self.root / name, self.root)
            if is_run_dir(self.root / name):
                self.skipped[name] = "a sketchmine run"
                continue
            output = next((what for marker, what in SKETCHMINE_OUTPUTS.items() if (self.root / name / marker).is_file()),
                          None)
            if output:
                self.skipped[name] = output
                continue
            if name == "__MACOSX":  # what a zip made on macOS adds: AppleDouble metadata, never a class
                self.skipped[name] = "macOS archive metadata"
                continue
            files, others = list_images(self.root, name, not_followed)
            if files:
                listed[name] = files
                unread += others
            elif others:
                raise SketchmineError(
                    f"folder {self.root / name} holds no {'/'.join(IMAGE_EXTENSIONS)} image but {len(others)} other "
                    f"image file(s) ({', '.join(sorted({Path(o).suffix.lower() for o in others}))}, e.g. {others[0]}), "
                    "which an ImageFolder (sketchmine's and torchvision's) does not read: convert them to PNG, "
                    "or move the folder out of the dataset root")
            else:
                self.skipped[name] = "no images"
        if not listed:
            raise SketchmineError(
                f"dataset directory {self.root} has folders but no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        _check_storable(self.root, listed)
        _check_distinct(self.root, list(listed))
        self.class_names = list(listed)
        self.samples: list[tuple[str, int]] = [(rel, label) for label, name in enumerate(self.class_names)
                                               for rel in listed[name]]
        self.preprocessing = preprocessing
        self.preprocessing_explicit = explicit
        self.left_out = _left_out(self.root, not_followed, unread, loose)
        self._hashed: tuple[np.ndarray, np.ndarray] | None = None  # `fingerprint`'s (digests, stamps)
        self.unreadable: list[str] = []  # relative paths `fingerprint` could not open

    def skipped_note(self) -> str | None:
        """One line naming what the listing leaves out: the folders that are not classes, the
        symlinked folders not followed, unread image files beside the images and images in the
        root itself; None when nothing is."""
        parts = list(self.left_out)
        if self.skipped:
            named = [f"{printable(name)}/ ({why})" for name, why in self.skipped.items()]
            parts.insert(0, f"not classes, skipped in {printable(str(self.root))}: " + ", ".join(named))
        return "; ".join(parts) or None

    @classmethod
    def from_samples(cls, root: str | os.PathLike, samples: list[tuple[str, int]], class_names: list[str],
                     preprocessing: Preprocessing) -> ImageFolderDataset:
        """A dataset over recorded (relative path, label) samples, without rescanning `root`:
        a later pass keeps the global indices of the run even if files were added since."""
        ds = cls.__new__(cls)
        ds.root, ds.samples, ds.class_names = Path(root), list(samples), list(class_names)
        ds.preprocessing, ds.preprocessing_explicit, ds.skipped, ds.left_out = preprocessing, True, {}, []
        ds._hashed, ds.unreadable = None, []
        return ds

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, i: int) -> str:
        return self.samples[i][0]

    def labels(self) -> np.ndarray:
        return np.array([s[1] for s in self.samples], dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {"kind": "image_folder", "root": str(self.root.resolve())}

    def fingerprint(self) -> str:
        """sha256 over every sample's relative path, label and content hash (blake2b of the
        file's bytes, see `content_hashes`): an image rewritten in place is another dataset."""
        h = hashlib.sha256(b"image_folder/content-v1\n")
        stamps: list[list[int]] = []
        digests = content_hashes(self.root, [r for r, _ in self.samples], stamps)
        for (rel, label), digest in zip(self.samples, digests):
            h.update(f"{rel}\0{label}\0{digest}\n".encode("utf-8", "surrogateescape"))
        # what `mine` refuses before it makes the run (unless it skips bad images), and later passes name
        self.unreadable = [rel for (rel, _), digest in zip(self.samples, digests) if digest == "unreadable"]
        self._digests = digests  # "missing" / "unreadable" in place of a file's digest, as hashed
        # 48 bytes an image (60 MB for ImageNet) to check each file as it is read: `file_bytes`
        self._hashed = (np.array([bytes.fromhex(d) if len(d) == 32 else bytes(16) for d in digests], dtype="S16"),
                        np.array(stamps, dtype=np.int64).reshape(len(stamps), 4))
        return h.hexdigest()

    def content_digests(self) -> list[str] | None:
        """blake2b-128 (hex) of each file's bytes as `fingerprint` hashed them (None before it)."""
        return getattr(self, "_digests", None)

    def file_bytes(self, i: int) -> bytes:
        """Image i's file, read once; after `fingerprint`, checked against its stamp or hash (a file replaced mid-run)."""
        path = self.root / self.samples[i][0]
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # non-blocking: a FIFO refused, not waited on
            before, data, after = _stamp(regular_stat(path, f.fileno())), f.read(), _stamp(os.fstat(f.fileno()))
        if self._hashed is None or before == after == self._hashed[1][i].tolist():
            return data  # not fingerprinted, or as hashed (the hash cache's own rule)
        if hashlib.blake2b(data, digest_size=16).digest() != self._hashed[0][i].ljust(16, b"\0"):  # touched, or changed?
            raise SketchmineError(f"image {path} changed after the run began (its bytes "
                                  "differ from those the run's dataset fingerprint was made of): put it back as it was "
                                  "and re-run to resume, or mine the folder as it is now into a new --out")
        return data

    def load_pil(self, i: int):
        """The image as an 8-bit PIL image, "L" for grey files and "RGB" for the others (alpha
        and palettes resolved by PIL), and a note saying what differs from the model's input as
        stored (channels, bit depth, an EXIF orientation not applied: `imagefile.read_image`;
        raises READ_ERRORS). The channel conversion itself is `convert_channels`', as for
        arrays: one grey conversion for every route."""
        return read_image((self.root / self.samples[i][0]).absolute(),  # its errors alike from any folder
                          "L" if self.preprocessing.channels == 1 else "RGB", self.file_bytes(i))

    def image_array(self, i: int) -> tuple[np.ndarray, str]:
        """The image as uint8 (H, W) or (H, W, C) at its own size, and a note (raises
        READ_ERRORS). Resizing is `Preprocessing.prepare`'s, as for arrays: a file and the
        same pixels in memory give the same model input at any size."""
        im, note = self.load_pil(i)
        return np.asarray(im, dtype=np.uint8).copy(), note

    def __getitem__(self, i: int):
        p = self.preprocessing
        label = self.samples[i][1]
        try:
            image, note = self.image_array(i)
        except READ_ERRORS as exc:
            size = p.size or (1, 1)
            return i, torch.zeros(p.channels, *size), label, error_note(exc)
        return i, p.prepare(chw(image)[None])[0], label, note


def cache_dir() -> Path:
    """sketchmine's cache: $XDG_CACHE_HOME/sketchmine, else ~/.cache/sketchmine."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sketchmine"


_HASH_CACHE: dict[str, dict[str, list[Any]]] = {}
"""Per dataset root (absolute): relative path → [size, mtime_ns, ctime_ns, inode, digest]."""


def _stamp(st: os.stat_result) -> list[int]:
    """A file unchanged since hashed keeps these: size, mtime, ctime (no os.utime restores it), inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def content_hashes(root: str | os.PathLike, rels: list[str], stamps: list[list[int]] | None = None) -> list[str]:
    """blake2b-128 (hex) of the bytes of each file root/rel: what an ImageFolder fingerprint is made of.

    Hashed once per file and cached by (size, mtime_ns, ctime_ns, inode): in memory for the
    process, and on disk in `cache_dir()`/fingerprints/<sha256 of the root>.json (written
    atomically, only below a home folder that exists; a cache that cannot be read or written is
    ignored, never an error). The
    ctime is in the key because restoring a rewritten file's mtime (os.utime) cannot restore
    it. A missing or unreadable file gets "missing" / "unreadable" in place of its digest
    (the pass then reports the file itself). Cost on the 2,000-image Animal-Shape export
    (28×28 PNGs; two busy cores): 0.2-0.4 s uncached, 20-80 ms cached, against 10-40 ms for
    the names-and-sizes fingerprint it replaces; uncached, it reads every byte once (a large
    dataset's first `mine` pays about one extra read of its files, hashed on up to HASH_THREADS
    threads, one per usable core: benchmarks/fingerprint.py). `stamps`, when given, gets
    each file's `_stamp` (-1s for a missing one)."""
    key = str(Path(root).resolve())
    name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    cache_file = cache_dir() / "fingerprints" / f"{name}.json"
    cache = _HASH_CACHE.get(key)
    if cache is None:
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
            cache = cache if isinstance(cache, dict) else {}
        except (OSError, ValueError):
            cache = {}
        _HASH_CACHE[key] = cache
    out: list[str] = []
    todo: list[tuple[int, str, list[int]]] = []  # files to hash: (position in `out`, rel, stamp)
    for rel in rels:
        path = os.path.join(key, rel)
        denied = False
        try:
            stamp = _stamp(regular_stat(path))
        except OSError as exc:
            stamp, denied = None, isinstance(exc, PermissionError)
        if stamps is not None:
            stamps.append(stamp or [-1] * 4)
        hit = cache.get(rel) if stamp is not None else None
        if stamp is None:
            out.append("unreadable" if denied else "missing")
        elif isinstance(hit, list) and len(hit) == 5 and hit[:4] == stamp:
            out.append(hit[4])
        else:
            todo.append((len(out), rel, stamp))
            out.append("unreadable")  # until hashed
    # reading and hashing release the GIL: a first `mine` of a large folder hashes on every core
    threads = min(usable_cores(), HASH_THREADS, max(1, len(todo) // 64))
    with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
        for start in range(0, len(todo), 4096):  # a block at a time: a future per file, not per folder
            block = todo[start:start + 4096]
            digests = (pool.map if pool else map)(lambda item: _file_digest(os.path.join(key, item[1])), block)
            for (i, rel, stamp), digest in zip(block, digests):
                if digest is not None:
                    cache[rel], out[i] = [*stamp, digest], digest
    changed = any(out[i] != "unreadable" for i, _, _ in todo)
    if changed:
        try:
            if not cache_dir().parent.parent.is_dir():  # HOME=/nonexistent, the no-home convention: root made it
                raise FileNotFoundError(cache_dir())  # (the folder above ~/.cache or $XDG_CACHE_HOME must exist)
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(cache, separators=(",", ":")), encoding="utf-8")
                os.replace(tmp, cache_file)
            finally:  # a full disk leaves no half-written copy behind in the user's cache
                tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return out


HASH_THREADS = 16
"""At most this many files are hashed at once: beyond it a disk, not the cores, bounds the hashing."""


def _file_digest(path: str) -> str | None:
    """blake2b-128 (hex) of the file's bytes; None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except OSError:
        return None


def _check_storable(root: Path, listed: dict[str, list[str]]) -> None:
    """Refuse a class or file name that is not valid UTF-8 (os.listdir hands its bytes back as
    lone surrogates): the run stores class names and paths as UTF-8 text, so mining it would
    fail at the first write, after the dataset was read and hashed. A UTF-8 name that a non-UTF-8
    locale decoded so is the locale's fault, and the error says to change that, not the name."""
    for name, files in listed.items():
        for rel in (name, *files):
            if printable(rel) == rel:
                continue
            what = "class folder" if rel == name else "file"
            shown = f"{what} name '{printable(rel)}' in {printable(str(root))}"
            try:  # the bytes on disk behind the decoded name
                os.fsencode(rel).decode("utf-8")
                utf8_on_disk = True
            except (UnicodeEncodeError, UnicodeDecodeError):
                utf8_on_disk = False
            if utf8_on_disk and sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
                # the name is fine: this Python decodes file names in another encoding (a C/POSIX or
                # Latin-1 locale without UTF-8 mode); renaming would encode it twice
                raise SketchmineError(f"{shown} is UTF-8, but this Python reads file names as "
                                      f"{sys.getfilesystemencoding()} (the locale's encoding), so it cannot store "
                                      "the name as text: run sketchmine under a UTF-8 locale (LC_ALL=C.UTF-8) or "
                                      "in Python's UTF-8 mode (PYTHONUTF8=1)")
            raise SketchmineError(f"{shown} is not valid UTF-8; a run stores image paths and class names as "
                                  "UTF-8 text: rename it (e.g. convmv -f latin1 -t utf8)")


def _left_out(root: Path, not_followed: list[str], unread: list[str], loose: list[str]) -> list[str]:
    """The listing's notes on files it does not mine, one clause each, names made printable."""
    def some(names: list[str]) -> str:
        return ", ".join(printable(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    out = []
    if not_followed:
        out.append(f"symlinked folders not followed, so that each image is listed once (a loop, or a folder "
                   f"listed already): {some(not_followed)}")
    if unread:
        exts = ", ".join(sorted({os.path.splitext(u)[1].lower() for u in unread}))
        out.append(f"{len(unread)} image file(s) beside the images are not read ({exts}: not among "
                   f"{' '.join(IMAGE_EXTENSIONS)}; e.g. {some(unread)}): convert them to PNG to mine them")
    if loose:
        out.append(f"{len(loose)} image file(s) directly in {printable(str(root))} are not mined ({some(loose)}): "
                   "images are read from <root>/<class>/<image> only")
    return out


def _check_distinct(root: Path, names: list[str]) -> None:
    """Refuse two class folders whose names differ only in Unicode form (NFC "café" and NFD
    "café", as macOS and Linux tools may write them): they print alike but would be two classes,
    each with part of the images."""
    seen: dict[str, str] = {}
    for name in names:
        key = unicodedata.normalize("NFC", name)
        if key in seen:
            raise SketchmineError(f"dataset directory {root} has two class folders named {key!r}, in different "
                                  f"Unicode forms ({ascii(seen[key])} and {ascii(name)}): they would be two classes "
                                  "that look the same; merge them into one folder")
        seen[key] = name


def unreadable_error(ds: object, fix: str) -> SketchmineError | None:
    """The refusal of the images of an ImageFolder dataset `ds` (or of the one its drawings are made
    of) that its `fingerprint` could not open, None where there are none; `fix`: what else to do."""
    base = getattr(ds, "base", ds)
    bad = base.unreadable if isinstance(base, ImageFolderDataset) else []
    if not bad:
        return None
    try:
        with open(base.root / bad[0], "rb"):
            why = "it could not be opened when the dataset was read"
    except OSError as exc:
        why = exc.strerror or str(exc)
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return SketchmineError(f"cannot read image {printable(bad[0])}{more} of dataset {printable(str(base.root))} "
                           f"({why}): make it readable by this user (as its owner: chmod u+r, or g+r for a group), {fix}")
