"""Datasets and preprocessing: ImageFolder directories, the embedded Animal-Shape set,
and any torch Dataset, all seen by the miner as (index, image, label, note) samples in a
stable global order.

A note is "" for a clean sample, "converted:<mode>" when an image's channel count was
converted, and "error:<message>" for an unreadable file, so that the main process (not a
DataLoader worker) decides whether to stop, skip or warn.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import SketchmineError

READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What reading a damaged or hostile image file raises (PIL and the OS)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The files an ImageFolder reads: torchvision's `datasets.folder.IMG_EXTENSIONS` (no .gif), so
that image indices match torchvision's ImageFolder on the same folder."""

OTHER_IMAGE_EXTENSIONS = (".gif", ".apng", ".jfif", ".jpe", ".avif", ".heic", ".heif", ".ico", ".tga", ".pbm", ".pnm",
                          ".qoi", ".jp2", ".j2k", ".dib", ".psd", ".svg")
"""Image files an ImageFolder does not read: a folder holding only these is refused, not skipped."""

LUMA = (0.299, 0.587, 0.114)
"""Colour → grey weights (ITU-R 601-2 luma, PIL's convert("L")), the one grey conversion of
every route: `convert_channels` applies it to arrays, files and tensors alike."""


def parse_size(value: Any, what: str) -> tuple[int | None, tuple[int, int]]:
    """A size argument as (channels or None, (H, W)): an int S (S×S), (H, W) or (C, H, W) with
    positive ints; anything else (zero, negative, floats, bools, other lengths) is refused, naming it."""
    def positive(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and int(v) > 0

    if positive(value):
        return None, (int(value), int(value))
    if isinstance(value, (tuple, list, torch.Size)) and len(value) in (2, 3) and all(positive(v) for v in value):
        v = [int(x) for x in value]
        return (v[0] if len(v) == 3 else None), (v[-2], v[-1])
    raise SketchmineError(f"{what} must be a positive int S (S×S), (H, W) or (C, H, W) of positive ints; "
                          f"got {value!r}")


def as_size(value: Any, what: str, channels: int | None = None) -> tuple[int, int]:
    """`parse_size`'s (H, W); a (C, H, W) whose C differs from `channels` (when known) is refused."""
    c, hw = parse_size(value, what)
    if c is not None and channels is not None and c != channels:
        raise SketchmineError(f"{what} {tuple(value)} has {c} channels but the model takes {channels}; "
                              f"pass (H, W) or ({channels}, H, W)")
    return hw


@dataclass
class Preprocessing:
    """How raw pixels become model input: resize, scale to [0, 1], normalise per channel.

    preset: "imagenet", "dataset" (mean/std of this dataset, computed in one pass) or
    "none"; mean/std hold the numbers actually used and are recorded in the run.
    """

    preset: str = "none"
    channels: int = 3
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.size is not None:
            self.size = as_size(self.size, "the preprocessing size", self.channels)

    def same_normalisation(self, other: Preprocessing) -> bool:
        """Same preset, channels and numbers (a "dataset" preset whose numbers one side has not
        computed yet matches on the preset)."""
        if (self.preset, self.channels) != (other.preset, other.channels):
            return False
        return not (self.mean and other.mean) or (tuple(self.mean), tuple(self.std)) == (tuple(other.mean), tuple(other.std))

    def describe(self) -> str:
        """Short human form for messages: preset, channels, numbers, size."""
        nums = f" mean {list(self.mean)} std {list(self.std)}" if self.mean else ""
        size = f" size {self.size[0]}×{self.size[1]}" if self.size else " size as stored"
        return f"{self.preset!r} ({self.channels} channel(s){nums},{size})"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C, H, W) float in [0, 1] → normalised input."""
        if not self.mean:
            return x
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, c, H, W) float in [0, 1], any channels and size → model input (N, channels,
        *size), normalised: what every dataset does to its images (a drawing to each frame)."""
        if x.shape[1] != self.channels:
            x = convert_channels(x, self.channels)
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True)
        return self.normalise(x)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def preset(name: str, channels: int, size: tuple[int, int] | None) -> Preprocessing:
    """A named preset; "dataset" starts without numbers (see `compute_mean_std`)."""
    if name == "imagenet":
        mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,) * channels
        std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,) * channels
        return Preprocessing("imagenet", channels, size, tuple(mean), tuple(std))
    if name in ("dataset", "none"):
        return Preprocessing(name, channels, size)
    raise SketchmineError(f"unknown preprocessing preset {name!r}; expected imagenet, dataset or none")


class MinerDataset(Dataset):
    """Base of the datasets the miner reads: yields (index, image, label, note)."""

    preprocessing: Preprocessing | None = None
    preprocessing_explicit: bool = True
    """False when the preprocessing is a default nobody chose (`animal_shape()` without one):
    `mine` then gives the dataset its own resolved preprocessing (`as_miner_dataset`)."""
    class_names: list[str] = []

    def with_preprocessing(self, preprocessing: Preprocessing) -> MinerDataset:
        """The same images under another preprocessing (a shallow copy; this one is unchanged)."""
        ds = copy.copy(self)
        ds.preprocessing, ds.preprocessing_explicit = preprocessing, True
        return ds

    def path(self, i: int) -> str:
        return f"#{i}"

    def describe(self) -> dict[str, Any]:
        """How to find this dataset again (recorded in the run for later passes)."""
        return {"kind": "python", "type": type(self).__name__}

    def fingerprint(self) -> str:
        raise NotImplementedError

    def labels(self) -> np.ndarray | None:
        """All labels without reading images, or None when only a pass can tell."""
        return None


class ImageFolderDataset(MinerDataset):
    """root/<class>/<image>: the listing of torchvision's `ImageFolder` on the same folder, so
    image indices and labels match it:

    - classes: the root's entries that are directories (symlinks followed, hidden ones
      included), sorted by name;
    - images: `sorted(os.walk(class_dir, followlinks=True))`, files sorted within each
      directory, kept when their lowercased name ends with one of `IMAGE_EXTENSIONS`
      (torchvision's list: no .gif).

    Differences, on purpose: a folder without images (``notes/``) is skipped instead of
    refused, so it neither becomes a class nor shifts the labels of the classes after it; a
    sketchmine run stored in the root (a directory with a zarr.json) is never a class; macOS
    archive metadata (a ``__MACOSX/`` folder, ``._name.png`` AppleDouble files) is not read. Both are named in `skipped` (and noted by `mine`). A folder
    with no listed image but files PIL reads under other extensions (e.g. only .gif) is
    refused: it looks like a class that would silently vanish.

    `preprocessing_explicit`: False when built by `mine` itself, so that another resolution
    may replace the preprocessing (see `as_miner_dataset`)."""

    def __init__(self, root: str | os.PathLike, preprocessing: Preprocessing, *, explicit: bool = True) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise SketchmineError(f"dataset directory {self.root} does not exist")
        if not self.root.is_dir():
            raise SketchmineError(f"dataset {self.root} is not a directory of class folders")
        folders = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not folders:
            raise SketchmineError(
                f"dataset directory {self.root} has no class folders; expected {self.root}/<class>/<image>.png"
            )
        self.skipped: dict[str, str] = {}
        listed: dict[str, list[str]] = {}
        for name in folders:
            if _is_run_dir(self.root / name):
                self.skipped[name] = "a sketchmine run"
                continue
            if name == "__MACOSX":  # what a zip made on macOS adds: AppleDouble metadata, never a class
                self.skipped[name] = "macOS archive metadata"
                continue
            files, others = _list_images(self.root, name)
            if files:
                listed[name] = files
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
        self.class_names = list(listed)
        self.samples: list[tuple[str, int]] = [(rel, label) for label, name in enumerate(self.class_names)
                                               for rel in listed[name]]
        self.preprocessing = preprocessing
        self.preprocessing_explicit = explicit

    def skipped_note(self) -> str | None:
        """One line naming the folders that are not classes, or None."""
        if not self.skipped:
            return None
        parts = [f"{name}/ ({why})" for name, why in self.skipped.items()]
        return f"not classes, skipped in {self.root}: " + ", ".join(parts)

    @classmethod
    def from_samples(cls, root: str | os.PathLike, samples: list[tuple[str, int]], class_names: list[str],
                     preprocessing: Preprocessing) -> ImageFolderDataset:
        """A dataset over recorded (relative path, label) samples, without rescanning `root`:
        a later pass keeps the global indices of the run even if files were added since."""
        ds = cls.__new__(cls)
        ds.root, ds.samples, ds.class_names = Path(root), list(samples), list(class_names)
        ds.preprocessing, ds.preprocessing_explicit, ds.skipped = preprocessing, True, {}
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
        for (rel, label), digest in zip(self.samples, content_hashes(self.root, [r for r, _ in self.samples])):
            h.update(f"{rel}\0{label}\0{digest}\n".encode())
        return h.hexdigest()

    def load_pil(self, i: int):
        """The image as an 8-bit PIL image, "L" for grey files and "RGB" for the others (alpha
        and palettes resolved by PIL), and a note saying when its channels differ from the
        preprocessing's (raises READ_ERRORS). The channel conversion itself is
        `convert_channels`', as for arrays: one grey conversion for every route."""
        path = self.root / self.samples[i][0]
        mode = "L" if self.preprocessing.channels == 1 else "RGB"
        with Image.open(path) as im:
            im.load()
            note = "" if im.mode == mode else f"converted:{im.mode}"
            im = _to_8bit(im)
            native = "L" if im.mode in ("1", "L", "LA", "La") else "RGB"
            return im.convert(native), note

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
            return i, torch.zeros(p.channels, *size), label, f"error:{type(exc).__name__}: {exc}"
        return i, p.prepare(chw(image)[None])[0], label, note


class ArrayDataset(MinerDataset):
    """In-memory uint8 images (N, H, W) or (N, H, W, C) with labels: the embedded data."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                 preprocessing: Preprocessing, description: dict[str, Any], *, explicit: bool = True) -> None:
        self.images, self._labels = images, labels.astype(np.int64)
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.preprocessing_explicit = explicit
        self._description = description

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> str:
        return f"{self._description.get('name', 'array')}/{self._description.get('split', '')}/{i:05d}"

    def labels(self) -> np.ndarray:
        return self._labels

    def describe(self) -> dict[str, Any]:
        return dict(self._description)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self._labels).tobytes())
        return h.hexdigest()

    def image_array(self, i: int) -> tuple[np.ndarray, str]:
        """The stored uint8 image, (H, W) or (H, W, C), and an empty note."""
        return np.asarray(self.images[i], dtype=np.uint8), ""

    def __getitem__(self, i: int):
        return i, self.preprocessing.prepare(chw(self.image_array(i)[0])[None])[0], int(self._labels[i]), ""


class TorchDataset(MinerDataset):
    """Wraps a user's torch Dataset of (image tensor, int label).

    Its tensors are the model input as they are (preprocessing None, recorded as null), unless
    a preprocessing is given: `mine(..., preprocessing=<not "auto">)` or `image_size=`. Then the
    tensors are taken as pixels, (C, H, W) or a sequence (T, C, H, W), float in [0, 1] or
    uint8 (divided by 255), and `Preprocessing.prepare` is applied (channels, resize,
    normalisation) and recorded; a float tensor outside [0, 1] is refused when the preprocessing
    normalises (it looks normalised already)."""

    def __init__(self, dataset: Dataset, preprocessing: Preprocessing | None = None) -> None:
        self.dataset = dataset
        self.class_names = list(getattr(dataset, "classes", []) or [])
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def path(self, i: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        return str(samples[i][0]) if samples else f"#{i}"

    def describe(self) -> dict[str, Any]:
        return {"kind": "python", "type": type(self.dataset).__name__}

    def fingerprint(self) -> str:
        """Length plus the bytes of up to 8 evenly spaced samples."""
        n = len(self)
        h = hashlib.sha256(f"{type(self.dataset).__name__}:{n}".encode())
        for i in sorted({(j * (n - 1)) // 7 for j in range(8)} if n else set()):
            x, y = self.dataset[i][:2]
            h.update(torch.as_tensor(x).float().numpy().tobytes())
            h.update(str(int(y)).encode())
        return h.hexdigest()

    def __getitem__(self, i: int):
        try:
            x, y = self.dataset[i][:2]
        except READ_ERRORS as exc:  # the dataset's own file read failed: skip_bad_images decides
            return i, torch.zeros(1), -1, f"error:{type(exc).__name__}: {exc}"
        x = torch.as_tensor(x)
        p = self.preprocessing
        if p is None:
            return i, x, int(y), ""
        if x.ndim not in (3, 4):
            raise SketchmineError(f"sample #{i} of the dataset has shape {tuple(x.shape)}; a preprocessing applies to "
                                  "(C, H, W) images or (T, C, H, W) sequences (pass preprocessing='auto' to use the "
                                  "tensors as they are)")
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        if p.mean and x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise SketchmineError(
                f"sample #{i} of the dataset holds values in [{float(x.min()):.3g}, {float(x.max()):.3g}], not pixels in "
                f"[0, 1], so the {p.preset!r} normalisation asked cannot be applied to it; pass preprocessing='auto' "
                "(and no image_size) to use the tensors as they are, or yield unnormalised tensors (ToTensor())")
        return i, (p.prepare(x[None])[0] if x.ndim == 3 else p.prepare(x)), int(y), ""


def cache_dir() -> Path:
    """sketchmine's cache: $XDG_CACHE_HOME/sketchmine, else ~/.cache/sketchmine."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sketchmine"


_HASH_CACHE: dict[str, dict[str, list[Any]]] = {}
"""Per dataset root (absolute): relative path → [size, mtime_ns, ctime_ns, inode, digest]."""


def content_hashes(root: str | os.PathLike, rels: list[str]) -> list[str]:
    """blake2b-128 (hex) of the bytes of each file root/rel: what an ImageFolder fingerprint is made of.

    Hashed once per file and cached by (size, mtime_ns, ctime_ns, inode): in memory for the
    process, and on disk in `cache_dir()`/fingerprints/<sha256 of the root>.json (written
    atomically; a cache that cannot be read or written is ignored, never an error). The
    ctime is in the key because restoring a rewritten file's mtime (os.utime) cannot restore
    it. A missing or unreadable file gets "missing" / "unreadable" in place of its digest
    (the pass then reports the file itself). Cost on the 2,000-image Animal-Shape export
    (28×28 PNGs; two busy cores): 0.2-0.4 s uncached, 20-80 ms cached, against 10-40 ms for
    the names-and-sizes fingerprint it replaces; uncached, it reads every byte once (a large
    dataset's first `mine` pays about one extra read of its files)."""
    root = Path(root).resolve()
    key = str(root)
    cache_file = cache_dir() / "fingerprints" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    cache = _HASH_CACHE.get(key)
    if cache is None:
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
            cache = cache if isinstance(cache, dict) else {}
        except (OSError, ValueError):
            cache = {}
        _HASH_CACHE[key] = cache
    out, changed = [], False
    for rel in rels:
        path = os.path.join(key, rel)
        try:
            st = os.stat(path)
        except OSError:
            out.append("missing")
            continue
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = cache.get(rel)
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == stamp:
            out.append(hit[4])
            continue
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
        except OSError:
            out.append("unreadable")
            continue
        cache[rel], changed = [*stamp, digest], True
        out.append(digest)
    if changed:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return out


def _is_run_dir(path: Path) -> bool:
    """A sketchmine run (a Zarr group whose zarr.json records a schema_version), read-only."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return "schema_version" in (json.loads(meta.read_text(encoding="utf-8")).get("attributes") or {})
    except (OSError, ValueError, AttributeError):
        return True  # an unreadable Zarr group: not images either way


def _list_images(root: Path, name: str) -> tuple[list[str], list[str]]:
    """(images, other image-like files) of class folder `name`, paths relative to root, in
    torchvision's `make_dataset` order."""
    images, others = [], []
    for dirpath, _, filenames in sorted(os.walk(root / name, followlinks=True)):
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


def _to_8bit(im):
    """16- and 32-bit grey images scaled to 8 bits (PIL's own convert("L") would clip them to white)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() <= 65535 else float(a.max())
        return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        return Image.fromarray(np.rint((a - lo) * (255.0 / (hi - lo or 1.0))).astype(np.uint8), "L")
    return im


def chw(image: np.ndarray) -> torch.Tensor:
    """uint8 pixels (H, W) or (H, W, c) → float (c, H, W) in [0, 1] (a new tensor)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8))
    return (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)).float().div_(255)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., c, H, W) → (..., channels, H, W): grey is repeated, alpha dropped, colour made grey
    by `LUMA` (R*0.299 + G*0.587 + B*0.114, in float: files, arrays and tensors alike; files are
    no longer made grey by PIL, whose integer luma rounds to 8 bits)."""
    if x.shape[-3] in (2, 4):
        x = x[..., :-1, :, :]
    if channels == 1:
        if x.shape[-3] == 3:
            w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
            return (x * w).sum(dim=-3, keepdim=True)
        return x.mean(dim=-3, keepdim=True)
    return x.expand(*x.shape[:-3], channels, -1, -1).clone() if x.shape[-3] == 1 else x[..., :channels, :, :]


def embedded_path(name: str) -> Path:
    """A file shipped in data/ (package sketchmine._embedded), also from a source checkout."""
    try:
        p = Path(str(importlib.resources.files("sketchmine._embedded") / name))
        if p.exists():
            return p
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "data" / name


def animal_shape(split: str = "test", preprocessing: Preprocessing | None = None) -> ArrayDataset:
    """The embedded Animal-Shape silhouettes (28×28, 10 classes); split "train", "test" or "all".
    Without `preprocessing` the images are raw pixels in [0, 1] ("none") until `mine` gives
    them the model's preprocessing (the dataset's is not explicit)."""
    with np.load(embedded_path("animal_shape.npz"), allow_pickle=False) as z:
        images, labels, names, split_ids = z["images"], z["labels"], z["class_names"], z["split"]
    if split != "all":
        if split not in ("train", "test"):
            raise SketchmineError(f"unknown split {split!r}; expected train, test or all")
        keep = split_ids == (1 if split == "test" else 0)
        images, labels = images[keep], labels[keep]
    pre = preprocessing or Preprocessing("none", 1, None)
    desc = {"kind": "embedded", "name": "animal_shape", "split": split}
    return ArrayDataset(images, labels, [str(n) for n in names], pre, desc, explicit=preprocessing is not None)


def as_miner_dataset(dataset: Any, preprocessing: Preprocessing | None, *, chosen: bool = True) -> MinerDataset:
    """Accept a MinerDataset, a directory path (ImageFolder layout) or a torch Dataset, under
    one preprocessing rule for every kind: `preprocessing` is the resolved one (from `mine`'s
    preprocessing= and image_size=, or a run's record), `chosen` says whether its preset was
    asked for (not "auto"); its size, when set, was asked for.

    - a directory: read with `preprocessing`;
    - a sketchmine dataset whose preprocessing was never set (`animal_shape()`): takes
      `preprocessing` (`with_preprocessing`), and so does a SequenceDataset over one;
    - a sketchmine dataset built with its own: kept, unless a chosen preset or an asked size
      differs from it, which is an error naming both;
    - a torch Dataset: its tensors as they are when nothing was chosen (preprocessing None, or
      not `chosen` and no size); with "auto" and a size, only resized ("none" with that size);
      a chosen preprocessing is applied to them (see `TorchDataset`).
    """
    if isinstance(dataset, MinerDataset):
        have = dataset.preprocessing
        if preprocessing is None or have is None:
            return dataset
        if not dataset.preprocessing_explicit:
            return dataset.with_preprocessing(preprocessing)
        conflicts = []
        if chosen and not have.same_normalisation(preprocessing):
            conflicts.append(f"preprocessing {preprocessing.describe()} asked, the dataset was built with {have.describe()}")
        if preprocessing.size is not None and tuple(preprocessing.size) != tuple(have.size or ()):
            conflicts.append(f"image size {preprocessing.size[0]}×{preprocessing.size[1]} asked, the dataset's is "
                             + (f"{have.size[0]}×{have.size[1]}" if have.size else "none (images as stored)"))
        if conflicts:
            raise SketchmineError("the dataset's own preprocessing conflicts with the one asked: " + "; ".join(conflicts)
                                  + ". Build the dataset without a preprocessing (mine gives it the one asked), "
                                  "or leave preprocessing='auto' and image_size=None to use the dataset's")
        return dataset
    if isinstance(dataset, (str, os.PathLike)):
        if preprocessing is None:
            raise SketchmineError("an ImageFolder directory needs a preprocessing")
        return ImageFolderDataset(dataset, preprocessing)
    if isinstance(dataset, Dataset) or hasattr(dataset, "__getitem__"):
        if preprocessing is not None and not chosen:  # "auto": the tensors as they are, resized when a size was asked
            preprocessing = Preprocessing("none", preprocessing.channels, preprocessing.size) if preprocessing.size else None
        ds = TorchDataset(dataset, preprocessing)
        if len(ds) == 0:
            raise SketchmineError("the dataset is empty")
        return ds
    raise SketchmineError(f"expected a torch Dataset or an ImageFolder directory, got {type(dataset).__name__}")


def compute_mean_std(dataset: MinerDataset, batch_size: int = 256, num_workers: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the dataset's pixels in [0, 1], in one pass (float64 sums)."""
    from torch.utils.data import DataLoader

    total = sq = None
    count = 0
    for _, x, _, note in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate):
        ok = torch.tensor([not n.startswith("error:") for n in note])
        x = x[ok].double()
        s, s2 = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        sq = s2 if sq is None else sq + s2
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if not count:
        raise SketchmineError("cannot compute the dataset mean: no readable images")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def export_image_folder(dataset: ArrayDataset, root: str | os.PathLike) -> Path:
    """Write an in-memory dataset as PNGs in ImageFolder layout (for CLI use and tests)."""
    root = Path(root)
    for i in range(len(dataset)):
        label = int(dataset.labels()[i])
        folder = root / dataset.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(dataset.images[i])).save(folder / f"{i:05d}.png")
    return root


def collate(batch: list[tuple[int, torch.Tensor, int, str]]):
    """Stack samples; an unreadable image's placeholder takes the shape of the readable ones,
    and differing image sizes raise an error that says what to do."""
    good = [s for s in batch if not s[3].startswith("error:")]
    shape = good[0][1].shape if good else batch[0][1].shape
    images = []
    for i, x, _, note in batch:
        if note.startswith("error:"):
            x = torch.zeros(shape)
        elif x.shape != shape:
            raise SketchmineError(
                f"images differ in size: image #{batch[0][0]} is {tuple(shape)}, image #{i} is {tuple(x.shape)}; "
                "pass --image-size (image_size=) to resize them all"
            )
        images.append(x)
    # default_collate stacks into shared memory inside a worker: no extra copy on the way back
    return (torch.tensor([s[0] for s in batch]), torch.utils.data.default_collate(images),
            torch.tensor([s[2] for s in batch]), [s[3] for s in batch])
