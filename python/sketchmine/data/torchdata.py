"""A user's torch Dataset as the miner reads it: each (image, label) sample checked as it is
read, class names and file paths looked up through Subset and ConcatDataset, and the rule that
says whether its tensors are pixels (prepared as any dataset's are) or the model's input as
they are.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset

from sketchmine.data.arrays import CHANNELS, LABELS_EXPECTED
from sketchmine.data.dataset import MinerDataset, error_note
from sketchmine.data.folder import READ_ERRORS
from sketchmine.data.preprocess import Preprocessing
from sketchmine.errors import SketchmineError

IMAGE_KEYS = ("image", "img", "pixel_values")
LABEL_KEYS = ("label", "labels")
"""Where a dict sample (Hugging Face style) holds its image and its label, first found first."""

PEEK = 64
"""How many samples `torch_dataset` tries for a first readable one (as `mine` does for its probe)."""


class TorchDataset(MinerDataset):
    """Wraps a user's torch Dataset of (image tensor, label) samples.

    Its tensors are the model input as they are (preprocessing None, recorded as null), unless
    a preprocessing is given (`torch_dataset` says when). Then the tensors are taken as pixels,
    (C, H, W) or a sequence (T, C, H, W), float in [0, 1] or uint8 (divided by 255), and
    `Preprocessing.prepare` is applied (channels, resize, normalisation) and recorded; a float
    tensor outside [0, 1] is refused (it is no pixels: normalised already, or 0-255 as float).
    As they are, the tensors must be floating-point: the model would read integers unscaled.

    A sample is an (image, label, ...) sequence or a dict with IMAGE_KEYS and LABEL_KEYS; the
    image a tensor (a numpy array is taken as one), the label one integer (`as_label`).
    Anything else is refused, naming the sample. The fingerprint a resume compares is the
    length plus 8 evenly spaced samples: a different dataset that agrees at those samples is not
    detected (the dataset is opaque; an ImageFolder's or array's fingerprint covers every image)."""

    def __init__(self, dataset: Dataset, preprocessing: Preprocessing | None = None) -> None:
        check_dataset(dataset)
        self.dataset = dataset
        self.class_names = class_names(dataset)
        self.preprocessing = preprocessing
        self.uint8_sample: int | None = None  # the uint8 sample that made the tensors pixels under "auto"
        self.note: str | None = None  # said once by `mine`: how "auto" read the tensors

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def path(self, i: int) -> str:
        return sample_path(self.dataset, i) or f"#{i}"

    def input_note(self) -> str | None:
        """What `mine` says once about how the tensors were taken (see `torch_dataset`)."""
        return self.note

    def describe(self) -> dict[str, Any]:
        return {"kind": "python", "type": type(self.dataset).__name__}

    def fingerprint(self) -> str:
        """Length plus the bytes of up to 8 evenly spaced samples (read in this process, so a
        sample `_sample` refuses is refused before mining; one the dataset cannot read counts as
        unreadable, as in the pass). Not the whole dataset: see the class."""
        n = len(self)
        h = hashlib.sha256(f"{type(self.dataset).__name__}:{n}".encode())
        for i in sorted({(j * (n - 1)) // 7 for j in range(8)} if n else set()):
            try:
                x, y = self._sample(i)
            except READ_ERRORS:  # the dataset's own read failed: the pass skips or names it (skip_bad_images)
                h.update(f"unreadable #{i}".encode())
                continue
            h.update(x.float().numpy().tobytes())
            h.update(str(y).encode())
        return h.hexdigest()

    def read(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample i's image tensor and label, whatever the preprocessing; what is no (image,
        label) sample is refused, naming it."""
        try:
            raw = self.dataset[i]
        except IndexError as exc:  # inside len(): the dataset's length is wrong (or its own bug)
            raise SketchmineError(f"the dataset's __len__ says {len(self)} but sample #{i} raises IndexError ({exc}): "
                                  "make __len__ return the number of samples it holds") from None
        x, y = _image_and_label(raw, i)
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            what = f"{type(x).__module__}.{type(x).__name__}"
            raise SketchmineError(f"sample #{i} of the dataset is a {what}, not an image tensor; expected a (C, H, W) "
                                  "tensor: add transforms.ToTensor() to the dataset's transform")
        return torch.as_tensor(x), as_label(y, i)

    def _sample(self, i: int) -> tuple[torch.Tensor, int]:
        """`read`, checked for how the tensors are taken: as they are, floating-point; as pixels,
        a (C, H, W) image or (T, C, H, W) sequence of 1-4 channels."""
        x, y = self.read(i)
        if self.preprocessing is None:
            if not x.is_floating_point():
                raise SketchmineError(
                    f"sample #{i} of the dataset is a {_dtype(x)} tensor; under preprocessing='auto' a torch Dataset's "
                    "tensors go to the model as they are (unless its first sample is uint8), and the model takes "
                    "floating-point input: yield float tensors, or pass a preprocessing (preprocessing='model', "
                    "'imagenet' or 'none') to take them as pixels (uint8 0-255, or float in [0, 1])")
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
            return i, x, y, ""
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise SketchmineError(self._not_pixels(i, x, p))
        return i, (p.prepare(x[None])[0] if x.ndim == 3 else p.prepare(x)), y, ""

    def _not_pixels(self, i: int, x: torch.Tensor, p: Preprocessing) -> str:
        """Why sample i (a float outside [0, 1]) cannot be prepared as the pixels it is taken for."""
        found = f"sample #{i} of the dataset holds values in [{float(x.min()):.3g}, {float(x.max()):.3g}], not pixels in [0, 1]"
        if self.uint8_sample is not None:
            return (f"{found}; sample #{self.uint8_sample} is uint8, so under preprocessing='auto' the samples are taken "
                    f"as pixels and prepared with {p.preset!r}: yield pixels throughout (uint8 0-255, or float in [0, 1])")
        if p.mean:
            return (f"{found}, so the {p.preset!r} normalisation asked cannot be applied to it; pass "
                    "preprocessing='auto' (and no image_size) to use the tensors as they are, or yield unnormalised "
                    "tensors (ToTensor())")
        return (f"{found}; a preprocessing (here {p.preset!r}, asked by preprocessing= or image_size=) takes the tensors "
                "as pixels, float in [0, 1] or uint8 0-255: divide float 0-255 by 255 (or yield uint8), or pass "
                "preprocessing='auto' and no image_size to use the tensors as they are")


def torch_dataset(dataset: Dataset, preprocessing: Preprocessing | None, *, chosen: bool) -> TorchDataset:
    """A torch Dataset under `as_miner_dataset`'s rule: `preprocessing` applied to its tensors as
    pixels when `chosen`; under "auto" (not chosen) uint8 samples are pixels beyond doubt, so
    a first readable sample in uint8 takes `preprocessing` too (the model's normalisation, as an
    array or folder would), else the tensors go in as they are, only resized ("none") when a
    size was asked. What "auto" did is said once (`input_note`), and so is a first float sample
    in [0, 1] (unnormalised pixels, by the look of it) for a model that records a normalisation,
    or one outside [0, 1] (no ink density for it: stats/ink.py)."""
    ds = TorchDataset(dataset, preprocessing if chosen else None)
    if len(ds) == 0:
        raise SketchmineError(f"the torch Dataset {type(dataset).__name__} is empty: its len() is 0, expected at least "
                              "one (image, label) sample")
    if preprocessing is None or chosen:
        return ds
    first = _first_readable(ds)
    if first is not None and first[1].dtype == torch.uint8:
        ds.preprocessing, ds.uint8_sample = preprocessing, first[0]
        ds.note = (f"the dataset's samples are uint8 tensors (sample #{first[0]}): taken as pixels 0-255 and prepared "
                   f"with {preprocessing.describe()}, as an array or image folder is (the run records it)")
        return ds
    if preprocessing.size is not None:
        ds.preprocessing = Preprocessing("none", preprocessing.channels, preprocessing.size)
    if first is not None and first[1].is_floating_point() and first[1].numel():
        i, x = first
        lo, hi = float(x.min()), float(x.max())
        if not (0 <= lo and hi <= 1) and x.ndim >= 3:  # stats/ink.py: no pixel scale, no ink measure
            ds.note = (f"the dataset's float tensors go to the model as they are and leave [0, 1] (sample #{i}: "
                       f"{lo:.3g} to {hi:.3g}): the class statistics' ink density, measured on [0, 1] pixels, is "
                       "left out (NaN) for such images; to have it, give pixels in [0, 1] with preprocessing='model' (or "
                       "a preset)")
        elif 0 <= lo and hi <= 1 and preprocessing.preset == "model":
            ds.note = (f"the dataset's samples look like unnormalised pixels in [0, 1] (sample #{i}: {lo:.3g} to "
                       f"{hi:.3g}) while the model records the normalisation mean {list(preprocessing.mean)} std "
                       f"{list(preprocessing.std)}; under preprocessing='auto' a torch Dataset's float tensors go to "
                       f"the model as they are{' (only resized)' if ds.preprocessing else ''}: pass "
                       "preprocessing='model' if they are pixels")
    return ds


def _first_readable(ds: TorchDataset) -> tuple[int, torch.Tensor] | None:
    """The first of the first `PEEK` samples whose read does not fail (a damaged file is
    skipped here; `mine` decides about it later)."""
    for i in range(min(len(ds), PEEK)):
        try:
            return i, ds.read(i)[0]
        except READ_ERRORS:
            continue
    return None


def check_dataset(dataset: Any) -> None:
    """Refuse what is no map-style dataset of samples, saying what to pass instead."""
    if isinstance(dataset, IterableDataset):
        raise SketchmineError(f"the dataset is an IterableDataset ({type(dataset).__name__}): it streams its samples "
                              "and cannot be read by index, which mine needs (a stable order for resume and for the "
                              "passes that read the top images again); pass a map-style Dataset (__getitem__ and "
                              "__len__), e.g. TensorDataset(images, labels) or a list of (image, label)")
    if isinstance(dataset, (torch.Tensor, np.ndarray)):
        raise SketchmineError(f"the dataset is a {type(dataset).__name__} of shape {tuple(dataset.shape)}, not a dataset "
                              "of (image, label) samples: pass torch.utils.data.TensorDataset(images, labels) (labels -1 "
                              "for unlabelled images), or uint8 (N, H, W[, C]) arrays as sketchmine.data.ArrayDataset")
    if isinstance(dataset, (tuple, list)) and dataset and all(isinstance(p, (torch.Tensor, np.ndarray)) for p in dataset):
        raise SketchmineError(f"the dataset is a {type(dataset).__name__} of {len(dataset)} tensors (images and labels?), "
                              "not a dataset of (image, label) samples: pass torch.utils.data.TensorDataset(images, "
                              "labels), or uint8 arrays as sketchmine.data.ArrayDataset")
    if isinstance(dataset, Mapping):
        raise SketchmineError(f"the dataset is a {type(dataset).__name__} (keys {_keys(dataset)}), not a dataset of "
                              "(image, label) samples: pass torch.utils.data.TensorDataset(images, labels)")
    try:
        len(dataset)
    except TypeError:
        raise SketchmineError(f"the dataset ({type(dataset).__name__}) has no length (__len__); mine reads samples "
                              "0 to len-1 by index: give it a __len__") from None
    for part in _parts(dataset):
        if isinstance(part, MinerDataset):
            raise SketchmineError(f"the dataset holds a sketchmine {type(part).__name__} inside a ConcatDataset; mine "
                                  "takes one sketchmine dataset (or a Subset of one): build one dataset over all the "
                                  "images (animal_shape('all'), one ArrayDataset over the concatenated arrays, or one "
                                  "image folder)")


def _parts(dataset: Any) -> list[Any]:
    """The datasets a Subset or ConcatDataset reads from, however nested (the dataset itself otherwise)."""
    if isinstance(dataset, Subset):
        return _parts(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [leaf for part in dataset.datasets for leaf in _parts(part)]
    return [dataset]


def as_label(y: Any, i: int) -> int:
    """A sample's label as an int: an integer, or a whole float (ArrayDataset's rule: labels
    kept as floats are labels, 2.5 or NaN is not), alone or as a one-element tensor or array.
    Anything else (a bool, a string, None, a one-hot vector) is refused, naming the sample:
    int(y) would cut 2.9999998 to 2, or read '2' as class 2."""
    value = y
    if isinstance(y, (torch.Tensor, np.ndarray)):
        if y.ndim and (y.ndim > 1 or y.shape[0] != 1):
            hint = ": one-hot? yield y.argmax()" if y.ndim == 1 else ""
            raise SketchmineError(f"the label of sample #{i} is a {type(y).__name__} of shape {tuple(y.shape)}; "
                                  f"{LABELS_EXPECTED}, one per sample{hint}")
        value = y.item()
    if isinstance(value, (bool, np.bool_)):
        raise SketchmineError(f"label {value} of sample #{i} is a bool; {LABELS_EXPECTED}: yield int(y) for a "
                              "two-class label")
    if isinstance(value, (float, np.floating)) and not (math.isfinite(value) and float(value).is_integer()):
        raise SketchmineError(f"label {value} of sample #{i} is not a whole number; {LABELS_EXPECTED}")
    if isinstance(value, (int, np.integer, float, np.floating)):
        if not -(2**63) <= int(value) < 2**63:  # the batch's int64 tensor could not hold it
            raise SketchmineError(f"label {value} of sample #{i} is beyond any class index (int64); {LABELS_EXPECTED}")
        return int(value)
    hint = ": class names belong in the dataset's classes, the labels number them" if isinstance(value, str) else ""
    raise SketchmineError(f"label {value!r} of sample #{i} is a {type(value).__name__}; {LABELS_EXPECTED}{hint}")


def _image_and_label(raw: Any, i: int) -> tuple[Any, Any]:
    """The image and label of a sample: items 0 and 1 of a sequence, or a dict's IMAGE_KEYS and
    LABEL_KEYS entries."""
    if isinstance(raw, Mapping):
        image = [k for k in IMAGE_KEYS if k in raw]
        label = [k for k in LABEL_KEYS if k in raw]
        if not image or not label:
            raise SketchmineError(f"sample #{i} of the dataset is a dict with keys {_keys(raw)}; mine reads the image "
                                  f"from {' or '.join(map(repr, IMAGE_KEYS))} and the label from "
                                  f"{' or '.join(map(repr, LABEL_KEYS))} (-1: unlabelled): rename the keys in the "
                                  "dataset's transform")
        return raw[image[0]], raw[label[0]]
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)) and len(raw) >= 2:
        return raw[0], raw[1]
    if isinstance(raw, (torch.Tensor, np.ndarray)):
        what = f"a {type(raw).__name__} of shape {tuple(raw.shape)} alone"
    elif isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
        what = f"a {type(raw).__name__} of {len(raw)} item(s)"
    else:
        what = f"a {type(raw).__module__}.{type(raw).__name__}"
    raise SketchmineError(f"sample #{i} of the dataset is {what}, not an (image, label) pair: mine reads (image, label) "
                          "samples; for images and labels in tensors pass TensorDataset(images, labels) (labels -1 "
                          "for unlabelled images)")


def class_names(dataset: Any) -> list[str]:
    """The names of the classes the labels number: the dataset's own (`own_class_names`), else
    those of the dataset a Subset reads, or of a ConcatDataset's parts, which must agree."""
    own = own_class_names(dataset)
    if own is not None:
        return own
    if isinstance(dataset, Subset):
        return class_names(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        named = [class_names(part) for part in dataset.datasets]
        for j, names in enumerate(named[1:], 1):
            if names != named[0]:
                raise SketchmineError(
                    f"the ConcatDataset's parts 0 and {j} name different classes ({_show(named[0])} against "
                    f"{_show(names)}): each part's labels number its own classes, so one label would stand for two "
                    "classes. Give the parts the same classes in the same order, or set .classes on the "
                    "ConcatDataset to name the classes its labels number")
        return named[0]
    return []


def own_class_names(dataset: Any) -> list[str] | None:
    """Class names from the dataset's own `class_to_idx` (label order; it must number its
    classes 0..n-1, one index each, and name the same classes as `classes`) or `classes`
    (position = label; torchvision ImageNet's tuples of synonyms joined by ", ", its
    class_to_idx maps each synonym and is not inverted). None when it has neither."""
    classes = getattr(dataset, "classes", None)
    listed, synonyms = None, False
    if isinstance(classes, Sequence) and not isinstance(classes, (str, bytes)) and len(classes):
        synonyms = any(isinstance(c, (tuple, list)) for c in classes)
        listed = [", ".join(map(str, c)) if isinstance(c, (tuple, list)) else str(c) for c in classes]
    mapping = getattr(dataset, "class_to_idx", None)
    if not isinstance(mapping, Mapping) or not mapping or synonyms:
        return listed
    names = _invert(mapping)
    if listed is not None and set(listed) != set(names):
        only_listed, only_mapped = sorted(set(listed) - set(names)), sorted(set(names) - set(listed))
        raise SketchmineError(f"the dataset's classes and class_to_idx name different classes (only in classes: "
                              f"{_show(only_listed) or 'none'}; only in class_to_idx: {_show(only_mapped) or 'none'}), "
                              "so its labels cannot be named: make them agree (torchvision's find_classes returns both)")
    return names


def _invert(mapping: Mapping) -> list[str]:
    """class_to_idx's names in label order, refused unless it numbers them 0..n-1, one each."""
    n, by_index = len(mapping), {}
    for name, index in mapping.items():
        if not isinstance(index, (int, np.integer)) or isinstance(index, (bool, np.bool_)):
            raise SketchmineError(f"the dataset's class_to_idx maps {name!r} to {index!r}; expected class indices "
                                  f"0-{n - 1}")
        by_index.setdefault(int(index), []).append(str(name))
    shared = next((f"{' and '.join(map(repr, v))} share index {k}" for k, v in by_index.items() if len(v) > 1), None)
    missing = next((f"no class has index {k}" for k in range(n) if k not in by_index), None)
    if shared or missing:
        raise SketchmineError(f"the dataset's class_to_idx does not number its {n} classes 0-{n - 1}, one index each "
                              f"({shared or missing}), so its labels cannot be named: give each class its own index")
    return [by_index[k][0] for k in range(n)]


def sample_path(dataset: Any, i: int) -> str | None:
    """The file of sample i when the dataset lists its files (`samples`, as torchvision's
    ImageFolder and DatasetFolder do), looked up through Subset and ConcatDataset; else None."""
    while isinstance(dataset, (Subset, ConcatDataset)):
        if isinstance(dataset, Subset):
            dataset, i = dataset.dataset, int(dataset.indices[i])
        else:
            if i < 0:
                i += len(dataset)
            part = bisect.bisect_right(dataset.cumulative_sizes, i)
            dataset, i = dataset.datasets[part], i - (dataset.cumulative_sizes[part - 1] if part else 0)
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, Sequence) or not len(samples):
        return None
    entry = samples[i]
    return str(entry[0] if isinstance(entry, (tuple, list)) else entry)


def _show(names: list[str]) -> str:
    """A few class names for a message."""
    return ", ".join(names[:5]) + (", …" if len(names) > 5 else "")


def _keys(mapping: Mapping) -> str:
    return ", ".join(map(repr, list(mapping)[:8])) + (", …" if len(mapping) > 8 else "")


def _dtype(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")
