"""One preprocessing rule for every kind of dataset `mine` accepts.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from sketchmine.ctrl_c import started
from sketchmine.data.arrays import ArrayDataset
from sketchmine.data.dataset import MinerDataset, collate
from sketchmine.data.folder import ImageFolderDataset
from sketchmine.data.preprocess import Preprocessing
from sketchmine.data.torchdata import TorchDataset, torch_dataset
from sketchmine.errors import SketchmineError


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
    - a torch Subset of a sketchmine dataset: that dataset's kind over those images (`subset`),
      then as above;
    - a torch Dataset: a chosen preprocessing is applied to its tensors as pixels; under "auto"
      uint8 tensors are pixels and take `preprocessing`, other tensors go in as they are, only
      resized ("none") when a size was asked; None: as they are (`torchdata.torch_dataset`).
    """
    dataset = sketchmine_subset(dataset)
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
        return torch_dataset(dataset, preprocessing, chosen=chosen)
    hint = ": pass its dataset, loader.dataset (mine batches it itself: batch_size=, num_workers=)" \
        if isinstance(dataset, DataLoader) else ""
    raise SketchmineError(f"expected a torch Dataset or an ImageFolder directory, got {type(dataset).__name__}{hint}")


def sketchmine_subset(dataset: Any) -> Any:
    """A torch Subset (nested or not; `random_split` makes them) of a sketchmine dataset as a
    sketchmine dataset over those images (`subset`); anything else as it is."""
    chain = []
    inner = dataset
    while isinstance(inner, Subset):
        chain.append(inner.indices)
        inner = inner.dataset
    if not chain or not isinstance(inner, MinerDataset):
        return dataset
    index = np.arange(len(inner))
    for indices in reversed(chain):  # the innermost Subset's first
        picked = np.asarray(indices).reshape(-1)
        if picked.size and picked.dtype.kind not in "iu":
            raise SketchmineError(f"a Subset's indices are {picked.dtype}; expected integer image indices")
        outside = picked[(picked >= len(index)) | (picked < -len(index))]
        if len(outside):
            raise SketchmineError(f"Subset index {int(outside[0])} is outside the {len(index)} images it selects from")
        index = index[picked.astype(np.int64)]
    return subset(inner, index)


def subset(ds: MinerDataset, index: np.ndarray) -> MinerDataset:
    """The images of `ds` at `index`, as the same kind of dataset: an array's rows or a folder's
    files (so every route, the batched preprocessing and progressive drawings among them, takes
    it as it takes the whole, and a folder's run reopens from its recorded paths), the drawings
    over such a base, a torch Dataset's Subset; another kind is refused, saying how to slice."""
    if isinstance(ds, ArrayDataset):
        return ds.subset(index)
    part = copy.copy(ds)
    if isinstance(ds, ImageFolderDataset):
        part.samples = [ds.samples[int(i)] for i in index]  # type: ignore[attr-defined]
    elif isinstance(ds, TorchDataset):
        part.dataset = Subset(ds.dataset, index.tolist())  # type: ignore[attr-defined]
    elif isinstance(getattr(ds, "base", None), MinerDataset):  # progressive drawings: the same over the base's images
        part.base = subset(ds.base, index)  # type: ignore[attr-defined]
    else:
        raise SketchmineError(f"a Subset of a sketchmine {type(ds).__name__} cannot be mined: build the "
                              f"{type(ds).__name__} over the images you want instead (e.g. ArrayDataset(images[idx], "
                              "labels[idx], ...))")
    return part


def compute_mean_std(dataset: MinerDataset, batch_size: int = 256, num_workers: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the dataset's pixels in [0, 1], in one pass (float64 sums)."""
    from torch.utils.data import DataLoader

    total = sq = None
    count = 0
    batches = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    for _, x, _, note in started(batches):  # its workers fork with Ctrl-C held (sketchmine/ctrl_c.py)
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


def export_image_folder(dataset: Any, root: str | os.PathLike) -> Path:
    """Write an in-memory dataset (an ArrayDataset such as `animal_shape(...)`, or a torch Subset
    of one, as `mine` takes it) as PNGs in ImageFolder layout (for CLI use and tests). A file is
    named by the image's number in the dataset it came from, as the run of that Subset names it
    ("arrays/test/01700" is "<class>/01700.png"); an image the Subset takes again gets "-2", …"""
    dataset = sketchmine_subset(dataset) if not isinstance(dataset, ArrayDataset) else dataset
    if not isinstance(dataset, ArrayDataset):
        raise SketchmineError(f"export_image_folder writes an in-memory dataset (animal_shape(...), an ArrayDataset "
                              f"or a torch Subset of one), got {type(dataset).__name__}")
    root = Path(root)
    labels = dataset.labels()
    if (unlabelled := np.flatnonzero(labels < 0)).size:  # class_names[-1] would file them under the last class
        raise SketchmineError(f"{unlabelled.size} of the {len(labels)} images have no label (-1; the first: image "
                              f"{int(unlabelled[0])}), and an ImageFolder files every image under its class: export "
                              "the labelled ones (a torch Subset of them)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):  # nothing of the user's replaced or mixed in
        raise SketchmineError(f"{root} exists and is {'not a folder' if not root.is_dir() else 'not empty'}; "
                              "export into a new or empty folder")
    numbers = np.arange(len(dataset)) if dataset.index is None else np.asarray(dataset.index)
    seen: dict[int, int] = {}
    for i in range(len(dataset)):
        label, number = int(labels[i]), int(numbers[i])
        folder = root / dataset.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        seen[number] = again = seen.get(number, 0) + 1  # a repeat would overwrite the image's first file
        name = f"{number:05d}" + (f"-{again}" if again > 1 else "")
        Image.fromarray(np.asarray(dataset.images[i])).save(folder / f"{name}.png")
    return root
