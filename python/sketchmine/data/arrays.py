"""In-memory datasets: uint8 arrays, the embedded Animal-Shape set among them.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np

from sketchmine.data.dataset import MinerDataset
from sketchmine.data.preprocess import Preprocessing, chw
from sketchmine.errors import SketchmineError


class ArrayDataset(MinerDataset):
    """In-memory uint8 images (N, H, W) or (N, H, W, C), C in 1-4, with labels (-1: unlabelled):
    the embedded data. Anything else is refused here (`check_images`, `check_labels`), since a
    cast to uint8 or a channels-first array read as channels-last would be mined as garbage."""

    index: np.ndarray | None = None
    """Each image's number in the dataset it was taken from (`subset`), for its path; None: its own."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                 preprocessing: Preprocessing | None = None, description: dict[str, Any] | None = None, *,
                 explicit: bool = True) -> None:
        """`ArrayDataset(images, labels, class_names)` is enough: without a preprocessing, `mine`
        gives the images the model's (as it does `animal_shape()`'s); the description names the
        images' paths ("arrays/images/00012")."""
        self.images = check_images(images if isinstance(images, np.ndarray) else np.asarray(images))
        # names as the store writes them: an HDF5 file's bytes (b'bear') crashed the model's class check
        self.class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in class_names]
        self._labels = check_labels(labels, len(self.images), len(self.class_names))
        if preprocessing is None:  # stand-in channels until `mine` sets the model's preprocessing
            preprocessing, explicit = Preprocessing("none", 1 if self.images.ndim == 3 else 3), False
        self.preprocessing = preprocessing
        self.preprocessing_explicit = explicit
        self._description = {"name": "arrays", "split": "images"} if description is None else description

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> str:
        number = i if self.index is None else int(self.index[i])
        return f"{self._description.get('name', 'array')}/{self._description.get('split', '')}/{number:05d}"

    def subset(self, index: np.ndarray) -> ArrayDataset:
        """The images at `index` (a torch Subset of this dataset, as `mine` takes it): numbered
        0..n-1 as the run's images, their paths keep their numbers here, and the description
        says how many of how many were taken (the paths say which)."""
        ds = copy.copy(self)
        ds.images, ds._labels = self.images[index], self._labels[index]
        ds.index = index if self.index is None else self.index[index]
        taken = f"{len(index)} of {len(self)} images"
        was = self._description.get("subset")
        ds._description = {**self._description, "subset": f"{was}, then {taken}" if was else taken}
        return ds

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

LABELS_EXPECTED = "expected integer class indices (-1: unlabelled)"
"""What every dataset kind's labels must be (`check_labels`; a torch Dataset's: `torchdata.as_label`)."""


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
                                  f"{LABELS_EXPECTED}")
    elif raw.dtype.kind not in "iub":
        raise SketchmineError(f"ArrayDataset labels are {raw.dtype}; {LABELS_EXPECTED}")
    if raw.dtype.kind in "uf":  # int64 would wrap 2**63 (or cast 1e20) to -2**63, named as "below -1"
        wide64 = raw.astype(np.float64) if raw.dtype.kind == "f" else raw  # float16 cannot hold 2**63: no overflow warning
        wide = np.flatnonzero((wide64 >= 2**63) | (wide64 < -(2**63)))
        if len(wide):
            i = int(wide[0])
            raise SketchmineError(f"ArrayDataset label {raw[i]} of image {i} is beyond any class index (int64; "
                                  f"{len(wide)} such image(s)); {LABELS_EXPECTED}")
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
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        raise SketchmineError(f"preprocessing must be a Preprocessing (e.g. preprocessing_for(model)) or None, got "
                              f"{type(preprocessing).__name__} {preprocessing!r}")
    with np.load(embedded_path("animal_shape.npz"), allow_pickle=False) as z:
        images, labels, names, split_ids = z["images"], z["labels"], z["class_names"], z["split"]
    if split != "all":
        if split not in ("train", "test"):
            raise SketchmineError(f"unknown split {split!r}; expected train, test or all")
        keep = split_ids == (1 if split == "test" else 0)
        images, labels = images[keep], labels[keep]
    pre = preprocessing or Preprocessing("none", 1, None)
    # the split's size: a run of fewer images without a recorded subset was not mined from all of it
    desc = {"kind": "embedded", "name": "animal_shape", "split": split, "split_size": len(images)}
    return ArrayDataset(images, labels, [str(n) for n in names], pre, desc, explicit=preprocessing is not None)
