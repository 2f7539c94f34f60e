"""One preprocessing rule for every kind of dataset `mine` accepts.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

from sketchmine.data.arrays import TorchDataset
from sketchmine.data.dataset import MinerDataset, collate
from sketchmine.data.folder import ImageFolderDataset
from sketchmine.data.preprocess import Preprocessing
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
