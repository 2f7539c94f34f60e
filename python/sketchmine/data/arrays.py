"""In-memory datasets: uint8 arrays (the embedded Animal-Shape set among them) and any
torch Dataset.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sketchmine.data.dataset import MinerDataset, error_note
from sketchmine.data.folder import READ_ERRORS
from sketchmine.data.preprocess import Preprocessing, chw
from sketchmine.errors import SketchmineError


class ArrayDataset(MinerDataset):
    """In-memory uint8 images (N, H, W) or (N, H, W, C), C in 1-4, with labels (-1: unlabelled):
    the embedded data. Anything else is refused here (`check_images`, `check_labels`), since a
    cast to uint8 or a channels-first array read as channels-last would be mined as garbage."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                 preprocessing: Preprocessing, description: dict[str, Any], *, explicit: bool = True) -> None:
        self.images = check_images(images if isinstance(images, np.ndarray) else np.asarray(images))
        self.class_names = list(class_names)
        self._labels = check_labels(labels, len(self.images), len(self.class_names))
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


CHANNELS = (1, 2, 3, 4)
"""Channel counts an image may have: grey, grey + alpha, RGB, RGBA."""


def check_images(images: np.ndarray) -> np.ndarray:
    """`images` if they are uint8 (N, H, W) or (N, H, W, C) with C in `CHANNELS`, else a
    SketchmineError saying what was found and how to convert it."""
    shape = tuple(images.shape)
    if images.dtype != np.uint8:
        if images.dtype.kind == "f":
            how = "for floats in [0, 1]: (images * 255).round().astype(np.uint8)"
        elif images.dtype == np.bool_:
            how = "for a mask: images.astype(np.uint8) * 255"
        elif images.dtype == np.uint16:
            how = "for 16-bit pixels: (images // 257).astype(np.uint8)"
        else:
            how = "scale them to 0-255 and take .astype(np.uint8)"
        raise SketchmineError(f"ArrayDataset images are {images.dtype}; expected uint8 pixels 0-255 ({how})")
    if images.ndim == 4 and shape[3] not in CHANNELS:
        hint = "; channels-first? use images.transpose(0, 2, 3, 1)" if shape[1] in CHANNELS else ""
        raise SketchmineError(f"ArrayDataset images have shape {shape}; expected (N, H, W) or (N, H, W, C) with C in "
                              f"1-4 (grey, grey + alpha, RGB, RGBA){hint}")
    if images.ndim not in (3, 4):
        raise SketchmineError(f"ArrayDataset images have shape {shape}; expected (N, H, W) or (N, H, W, C)")
    return images


def check_labels(labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    """`labels` as int64, one per image: whole numbers >= -1 (-1 unlabelled) and, when the
    classes are named, < their count. The first offending image is named."""
    raw = np.asarray(labels)
    if raw.shape != (n,):
        raise SketchmineError(f"ArrayDataset labels have shape {raw.shape}; expected one per image, ({n},)")
    if raw.dtype.kind == "f":  # whole floats (np.zeros(n)) are labels; 2.5 or NaN would be cut silently
        odd = np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))
        if len(odd):
            raise SketchmineError(f"ArrayDataset label {raw[odd[0]]} of image {int(odd[0])} is not a whole number; "
                                  "expected integer class indices (-1: unlabelled)")
    elif raw.dtype.kind not in "iub":
        raise SketchmineError(f"ArrayDataset labels are {raw.dtype}; expected integer class indices (-1: unlabelled)")
    out = raw.astype(np.int64)
    below = np.flatnonzero(out < -1)
    if len(below):
        i = int(below[0])
        raise SketchmineError(f"ArrayDataset label {out[i]} of image {i} is below -1 ({len(below)} such image(s)); "
                              "expected a class index, or -1 for an unlabelled image")
    above = np.flatnonzero(out >= classes) if classes else np.empty(0, np.int64)
    if len(above):
        i = int(above[0])
        raise SketchmineError(f"ArrayDataset label {out[i]} of image {i} names no class: {classes} class names are "
                              f"given, so labels run 0-{classes - 1} ({len(above)} image(s) outside); pass every "
                              "class name, or -1 for an unlabelled image")
    return out


class TorchDataset(MinerDataset):
    """Wraps a user's torch Dataset of (image tensor, int label).

    Its tensors are the model input as they are (preprocessing None, recorded as null), unless
    a preprocessing is given: `mine(..., preprocessing=<not "auto">)` or `image_size=`. Then the
    tensors are taken as pixels, (C, H, W) or a sequence (T, C, H, W), float in [0, 1] or
    uint8 (divided by 255), and `Preprocessing.prepare` is applied (channels, resize,
    normalisation) and recorded; a float tensor outside [0, 1] is refused when the preprocessing
    normalises (it looks normalised already).

    A sample must be a tensor (a numpy array is taken as one); a PIL image or anything else is
    refused, naming the sample, and so is, under a preprocessing, one whose dimension -3 is no
    channel count (an (H, W, C) image). The fingerprint a resume compares is the length plus
    8 evenly spaced samples: a different dataset that agrees at those samples is not detected
    (the dataset is opaque; an ImageFolder's or array's fingerprint covers every image)."""

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
        """Length plus the bytes of up to 8 evenly spaced samples (read in this process, so a
        sample `_sample` refuses is refused before mining). Not the whole dataset: see the class."""
        n = len(self)
        h = hashlib.sha256(f"{type(self.dataset).__name__}:{n}".encode())
        for i in sorted({(j * (n - 1)) // 7 for j in range(8)} if n else set()):
            x, y = self._sample(i)
            h.update(x.float().numpy().tobytes())
            h.update(str(int(y)).encode())
        return h.hexdigest()

    def _sample(self, i: int) -> tuple[torch.Tensor, Any]:
        """Sample i's (image tensor, label); a sample that is no tensor, or (under a
        preprocessing) no (C, H, W) image or (T, C, H, W) sequence, is refused, naming it."""
        x, y = self.dataset[i][:2]
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            what = f"{type(x).__module__}.{type(x).__name__}"
            raise SketchmineError(f"sample #{i} of the dataset is a {what}, not an image tensor; expected a (C, H, W) "
                                  "tensor: add transforms.ToTensor() to the dataset's transform")
        x = torch.as_tensor(x)
        p = self.preprocessing
        if p is None:
            return x, y
        if x.ndim not in (3, 4):
            raise SketchmineError(f"sample #{i} of the dataset has shape {tuple(x.shape)}; a preprocessing applies to "
                                  "(C, H, W) images or (T, C, H, W) sequences (pass preprocessing='auto' to use the "
                                  "tensors as they are)")
        if x.shape[-3] not in CHANNELS:
            shape = tuple(x.shape)
            if x.shape[-1] in CHANNELS:
                order = "(0, 3, 1, 2)" if x.ndim == 4 else "(2, 0, 1)"
                raise SketchmineError(f"sample #{i} of the dataset has shape {shape}: looks like (H, W, C)? expected a "
                                      f"(C, H, W) tensor: add transforms.ToTensor() (it puts channels first), or "
                                      f"yield x.permute{order}")
            raise SketchmineError(f"sample #{i} of the dataset has shape {shape}; expected a (C, H, W) image or "
                                  "(T, C, H, W) sequence with C in 1-4 channels")
        return x, y

    def __getitem__(self, i: int):
        try:
            x, y = self._sample(i)
        except READ_ERRORS as exc:  # the dataset's own file read failed: skip_bad_images decides
            return i, torch.zeros(1), -1, error_note(exc)
        p = self.preprocessing
        if p is None:
            return i, x, int(y), ""
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        if p.mean and x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise SketchmineError(
                f"sample #{i} of the dataset holds values in [{float(x.min()):.3g}, {float(x.max()):.3g}], not pixels in "
                f"[0, 1], so the {p.preset!r} normalisation asked cannot be applied to it; pass preprocessing='auto' "
                "(and no image_size) to use the tensors as they are, or yield unnormalised tensors (ToTensor())")
        return i, (p.prepare(x[None])[0] if x.ndim == 3 else p.prepare(x)), int(y), ""


def embedded_path(name: str) -> Path:
    """A file shipped in data/ (package sketchmine._embedded), also from a source checkout."""
    try:
        p = Path(str(importlib.resources.files("sketchmine._embedded") / name))
        if p.exists():
            return p
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[3] / "data" / name


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


def export_image_folder(dataset: ArrayDataset, root: str | os.PathLike) -> Path:
    """Write an in-memory dataset as PNGs in ImageFolder layout (for CLI use and tests)."""
    root = Path(root)
    for i in range(len(dataset)):
        label = int(dataset.labels()[i])
        folder = root / dataset.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(dataset.images[i])).save(folder / f"{i:05d}.png")
    return root
