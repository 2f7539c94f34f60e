"""Datasets and preprocessing: ImageFolder directories, the embedded Animal-Shape set,
and any torch Dataset, all seen by the miner as (index, image, label, note) samples in a
stable global order.

A note is "" for a clean sample, "converted:<mode>" when an image's channel count was
converted, and "error:<message>" for an unreadable file, so that the main process (not a
DataLoader worker) decides whether to stop, skip or warn.
"""
from __future__ import annotations

import hashlib
import importlib.resources
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
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
    class_names: list[str] = []

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
    """root/<class>/<image>: classes sorted by name, images sorted by path (stable order)."""

    def __init__(self, root: str | os.PathLike, preprocessing: Preprocessing) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise SketchmineError(f"dataset directory {self.root} does not exist")
        if not self.root.is_dir():
            raise SketchmineError(f"dataset {self.root} is not a directory of class folders")
        self.class_names = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not self.class_names:
            raise SketchmineError(
                f"dataset directory {self.root} has no class folders; expected {self.root}/<class>/<image>.png"
            )
        samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.class_names):
            for dirpath, dirnames, filenames in os.walk(self.root / name):
                dirnames.sort()
                for f in sorted(filenames):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        samples.append((os.path.relpath(os.path.join(dirpath, f), self.root), label))
        if not samples:
            raise SketchmineError(
                f"dataset directory {self.root} has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        self.samples = samples
        self.preprocessing = preprocessing

    @classmethod
    def from_samples(cls, root: str | os.PathLike, samples: list[tuple[str, int]], class_names: list[str],
                     preprocessing: Preprocessing) -> ImageFolderDataset:
        """A dataset over recorded (relative path, label) samples, without rescanning `root`:
        a later pass keeps the global indices of the run even if files were added since."""
        ds = cls.__new__(cls)
        ds.root, ds.samples, ds.class_names = Path(root), list(samples), list(class_names)
        ds.preprocessing = preprocessing
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
        h = hashlib.sha256()
        for rel, label in self.samples:
            h.update(f"{rel}\0{label}\0{os.path.getsize(self.root / rel)}\n".encode())
        return h.hexdigest()

    def load_pil(self, i: int):
        """The image as a PIL image in the preprocessing's mode, and a note (raises READ_ERRORS)."""
        path = self.root / self.samples[i][0]
        mode = "L" if self.preprocessing.channels == 1 else "RGB"
        with Image.open(path) as im:
            im.load()
            note = "" if im.mode == mode else f"converted:{im.mode}"
            return _to_8bit(im).convert(mode), note

    def image_array(self, i: int) -> tuple[np.ndarray, str]:
        """The image as uint8 (H, W) or (H, W, C), resized to the preprocessing's size, and a
        note (raises READ_ERRORS)."""
        im, note = self.load_pil(i)
        size = self.preprocessing.size
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
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
                 preprocessing: Preprocessing, description: dict[str, Any]) -> None:
        self.images, self._labels = images, labels.astype(np.int64)
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
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
    """Wraps a user's torch Dataset of (image tensor, int label): no preprocessing added."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.class_names = list(getattr(dataset, "classes", []) or [])

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
        x, y = self.dataset[i][:2]
        return i, torch.as_tensor(x), int(y), ""


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
    """(..., c, H, W) → (..., channels, H, W): gray is repeated, colour averaged, alpha dropped."""
    if x.shape[-3] in (2, 4):
        x = x[..., :-1, :, :]
    if channels == 1:
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
    """The embedded Animal-Shape silhouettes (28×28, 10 classes); split "train", "test" or "all"."""
    with np.load(embedded_path("animal_shape.npz"), allow_pickle=False) as z:
        images, labels, names, split_ids = z["images"], z["labels"], z["class_names"], z["split"]
    if split != "all":
        if split not in ("train", "test"):
            raise SketchmineError(f"unknown split {split!r}; expected train, test or all")
        keep = split_ids == (1 if split == "test" else 0)
        images, labels = images[keep], labels[keep]
    pre = preprocessing or Preprocessing("none", 1, None)
    desc = {"kind": "embedded", "name": "animal_shape", "split": split}
    return ArrayDataset(images, labels, [str(n) for n in names], pre, desc)


def as_miner_dataset(dataset: Any, preprocessing: Preprocessing) -> MinerDataset:
    """Accept a MinerDataset, a directory path (ImageFolder layout) or a torch Dataset."""
    if isinstance(dataset, MinerDataset):
        return dataset
    if isinstance(dataset, (str, os.PathLike)):
        return ImageFolderDataset(dataset, preprocessing)
    if isinstance(dataset, Dataset) or hasattr(dataset, "__getitem__"):
        ds = TorchDataset(dataset)
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
