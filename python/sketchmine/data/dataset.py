"""The miner's view of any dataset: (index, image, label, note) samples in a stable global
order. A note is "" for a clean sample, "converted:<mode>" when an image's channel count was
converted, and "error:<message>" for an unreadable file, so that the main process (not a
DataLoader worker) decides whether to stop, skip or warn.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sketchmine.data.preprocess import Preprocessing
from sketchmine.errors import MACHINE_ERRNOS, SketchmineError, SketchmineFailure, machine_fix


def error_note(exc: BaseException) -> str:
    """The note of a sample whose file could not be read: "error:<type>: <message>". A read the
    machine failed (`MACHINE_ERRNOS`) raises instead: noted, the image was refused as unreadable
    ("fix or remove it") or, with skip_bad_images, left out of the run for good."""
    if isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS:
        raise SketchmineFailure(f"cannot read image {exc.filename}: {exc.strerror}; the file is not at fault: "
                                f"{machine_fix(exc)}, and re-run the same command to resume") from None
    return f"error:{type(exc).__name__}: {exc}"


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

    if TYPE_CHECKING:  # every dataset the miner reads has a length (torch's Dataset does not declare one)
        def __len__(self) -> int: ...

    def path(self, i: int) -> str:
        return f"#{i}"

    def describe(self) -> dict[str, Any]:
        """How to find this dataset again (recorded in the run for later passes)."""
        return {"kind": "python", "type": type(self).__name__}

    def fingerprint(self) -> str:
        raise NotImplementedError

    def content_digests(self) -> list[str] | None:
        """Each image's own digest, as its `fingerprint` hashed it (a folder's files), which the run
        keeps so that a resume refused for changed content can name the files; None: no file of its own."""
        return None

    def labels(self) -> np.ndarray | None:
        """All labels without reading images, or None when only a pass can tell."""
        return None

    def skipped_note(self) -> str | None:
        """One line `mine` says about what the dataset's listing left out (a folder's); None: nothing."""
        return None

    def input_note(self) -> str | None:
        """One line `mine` says about how the samples were taken as input (a torch Dataset's); None: nothing."""
        return None


def first_readable(ds: MinerDataset, limit: int = 64) -> tuple[int, torch.Tensor]:
    """The index and model input of `ds`'s first readable sample among its first `limit` (the one
    the model is probed on), or an error naming the first that could not be read."""
    first = ""
    for i in range(min(len(ds), limit)):
        _, x, _, note = ds[i]
        if not note.startswith("error:"):
            return i, x
        first = first or f" (the first, {ds.path(i)}: {note[6:]})"
    raise SketchmineError(f"none of the first {min(len(ds), limit)} images of the dataset can be read{first}")


def shapes_differ(first: str, a: tuple[int, ...], other: str, b: tuple[int, ...], probed: bool = False) -> str:
    """The error for two samples of different shapes, named `first` and `other` (`probed`: the first is
    the one the model was probed with). Sequences (T, C, H, W) of different step counts are told so:
    the image-size advice cannot make their lengths equal."""
    as_input = " as model input" if probed else ""
    if len(a) == len(b) == 4 and a[0] != b[0] and a[1] == b[1]:  # not volumes (C, D, H, W) of other channel counts
        frames = ("; their frames differ in size too (pass --image-size, image_size=, to resize them)"
                  if a[1:] != b[1:] else "")
        return (f"sequences differ in length: {first} has {a[0]} steps{as_input}, {other} has {b[0]} steps; sketchmine "
                "mines sequences of one length: give every sequence the same step count (pad or cut them; progressive "
                f"drawings take theirs from --steps, steps=){frames}")
    return (f"images differ in size: {first} is {a}{as_input}, {other} is {b}; pass --image-size (image_size=) to "
            "resize them all")


def collate(batch: list[tuple[int, torch.Tensor, int, str]], path: Callable[[int], str] | None = None,
            probed: tuple[int, tuple[int, ...]] | None = None):
    """Stack samples; an unreadable image's placeholder takes the shape of the readable ones,
    and differing image sizes raise an error that names two of them (by `path`, else number).
    `probed`: (index, model input shape) of the dataset's first readable image, which the model
    was probed with; the two named are then that image and the first of another shape, in
    dataset order, as the batched route names them (batchprep.DevicePreparer), whatever the
    batches. Without it: the batch's first readable image and its first of another shape."""
    good = [s for s in batch if not s[3].startswith("error:")]
    first, shape = (good[0][0], good[0][1].shape) if good else (batch[0][0], batch[0][1].shape)
    if probed is not None:
        first, shape = probed[0], torch.Size(probed[1])
    name = path or (lambda i: f"image #{i}")
    images = []
    for i, x, _, note in batch:
        if note.startswith("error:"):
            x = torch.zeros(shape)
        elif x.shape != shape:
            raise SketchmineError(shapes_differ(name(first), tuple(shape), name(i), tuple(x.shape), probed is not None))
        images.append(x)
    # default_collate stacks into shared memory inside a worker: no extra copy on the way back
    return (torch.tensor([s[0] for s in batch]), torch.utils.data.default_collate(images),
            torch.tensor([s[2] for s in batch]), [s[3] for s in batch])
