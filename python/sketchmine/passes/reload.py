"""Load a run's model and dataset again, for passes after mining (visualize, importance).

The run records how it was made (attrs `model_spec`, `weights_hash`, `dataset`,
`preprocessing`, and the per-image `dataset/paths`); these functions rebuild the same
inputs from that record and refuse anything that no longer matches, so a second pass
never silently reads other images or another model.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine.data import ArrayDataset, ImageFolderDataset, MinerDataset, Preprocessing, animal_shape, as_miner_dataset
from sketchmine.data.folder import unreadable_error
from sketchmine.errors import SketchmineError
from sketchmine.mining.dataset_diff import images_otherwise
from sketchmine.model.backend import switches_differ
from sketchmine.model.models import LoadedModel, load_model, recorded_weights, weights_match
from sketchmine.model.output_softmax import check_marked
from sketchmine.model.taps import SOFTMAX
from sketchmine.names import hidden_by_locale, locale_advice, printable
from sketchmine.results.distribution import SUBSET_OF_SPLIT
from sketchmine.results.run import Run


def run_model(run: Run, model: nn.Module | LoadedModel | str | None = None,
              weights: str | os.PathLike | None = None) -> LoadedModel:
    """The run's model: `model` when given (a spec as `load_model` takes, or a model it
    loaded, used as it is), else the recorded spec; its weights must hash to the run's
    recorded identity (`weights_hash`)."""
    attrs = run.attrs
    recorded = attrs.get("model_spec") or {}
    if isinstance(model, LoadedModel):
        if weights is not None:
            raise SketchmineError(f"weights file {weights} given with a loaded model ({model.model_id}), which "
                                  "carries its own weights; load the model with them (load_model(spec, weights)) "
                                  "or drop the weights")
        loaded = model
    else:
        if model is None:
            spec = recorded.get("spec")
            if spec is None:
                raise SketchmineError(f"run {run.path} was mined from an in-memory model ({attrs.get('model')}); "
                                      "pass the same model (model=...)")
            weights = weights or recorded.get("weights")
            model = spec
        seed = recorded.get("seed")
        loaded = load_model(model, weights, seed=seed if isinstance(seed, int) else None)
    if not weights_match(loaded.module, attrs):
        method, _, digits = str(recorded_weights(attrs)).rpartition(":")  # 12 digits after any method's name
        raise SketchmineError(f"the model's weights differ from those run {run.path} was mined with "
                              f"({method}:{digits[:12]}…); pass the same model")
    if differ := switches_differ(loaded.module, attrs):  # the same weights, computing something else
        raise SketchmineError(f"the model's {'; '.join(differ)} differs from the run {run.path}'s; set it as the "
                              "run was mined (the JSON beside the weights, or the checkpoint's dict)")
    return loaded


def run_preprocessing(run: Run) -> Preprocessing | None:
    """The recorded preprocessing (None for a plain torch Dataset)."""
    rec: dict[str, Any] | None = run.attrs.get("preprocessing")
    if not rec:
        return None
    return Preprocessing(rec["preset"], int(rec["channels"]), tuple(rec["size"]) if rec.get("size") else None,
                         tuple(rec.get("mean") or ()), tuple(rec.get("std") or ()))


def run_dataset(run: Run, data: Any = None) -> MinerDataset:
    """The dataset the run was mined on, in the same global order (as progressive drawings
    again when the run mined sequences).

    data: None (the recorded dataset), a directory (a moved ImageFolder root: the recorded
    relative paths are read under it), or a dataset object (used as given, fingerprint-checked;
    an array or folder dataset of a run of drawings is drawn again as the run records, as `mine`
    drew it from that object).
    """
    from sketchmine.data.sequences import reopen

    desc = dict(run.attrs.get("dataset") or {})
    pre = run_preprocessing(run) or Preprocessing("none")
    if data is not None and not isinstance(data, (str, os.PathLike)):
        ds = as_miner_dataset(data, run_preprocessing(run))  # the recorded one (None: tensors as they were)
        if isinstance(ds, (ArrayDataset, ImageFolderDataset)):  # the images mine made the run's drawings from
            ds = reopen(desc, ds) or ds
        _check_fingerprint(run, ds)
        return ds
    base = _recorded_base(run, desc, pre, data)
    ds = reopen(desc, base) or base
    if isinstance(base, ImageFolderDataset):
        missing = missing_images(base, np.arange(len(base)))
        if hidden := next((m for m in missing if hidden_by_locale(m)), None):  # there, under another locale
            raise SketchmineError(f"image {printable(hidden)} of run {printable(str(run.path))} is on disk, but "
                                  f"{locale_advice()}")
        if missing:  # named first: clearer than a fingerprint that differs
            raise SketchmineError(f"{len(missing)} image(s) of run {run.path} are missing, e.g. {missing[0]}; "
                                  "pass --data DIR (data=) if the images moved")
    # a folder's content hashes are cached by file (data.content_hashes), so this re-reads
    # only files changed since mining or a folder that moved
    _check_fingerprint(run, ds)
    return ds


def _recorded_base(run: Run, desc: dict[str, Any], pre: Preprocessing, data: str | os.PathLike | None) -> MinerDataset:
    """The images the run's record names: its ImageFolder (under `data` if it moved) or the
    embedded split."""
    kind = desc.get("kind")
    if data is not None and kind not in ("image_folder", None):  # its fingerprint is of pixels, not of a folder's files
        raise SketchmineError(f"run {run.path} was mined from {_object(desc)}, not from a folder: a folder (--data "
                              f"{data}) cannot stand for it, as its files hash otherwise; {_same_object()}")
    if kind == "image_folder" or data is not None:
        root = Path(data) if data is not None else Path(desc["root"])
        if not root.is_dir() and hidden_by_locale(root):
            raise SketchmineError(f"dataset root {printable(str(root))} of run {printable(str(run.path))} is on disk, "
                                  f"but {locale_advice()}")
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise SketchmineError(f"dataset root {root} of run {run.path} {what}; "
                                  "pass --data DIR (data=) if the images moved")
        samples = list(zip((str(p) for p in run.paths), (int(l) for l in run.labels)))
        return ImageFolderDataset.from_samples(root, samples, run.class_names, pre)
    if kind == "embedded" and "subset" not in desc:
        return animal_shape(desc.get("split", "test"), pre)
    if kind == "embedded" and SUBSET_OF_SPLIT.fullmatch(str(desc["subset"])):  # .subset of it, once or again
        numbers = [re.fullmatch(r".*/(\d+)", str(p)) for p in run.paths]
        if all(numbers):  # its paths keep the images' numbers in the split (ArrayDataset.subset)
            return animal_shape(desc.get("split", "test"), pre).subset(np.array([int(m[1]) for m in numbers if m]))
    raise SketchmineError(f"run {run.path} was mined from {_object(desc)} that cannot be reopened from the store; "
                          f"{_same_object()}")


def _object(desc: dict[str, Any]) -> str:
    """The dataset object a run records, with its article: 'an ImageFolder dataset object'."""
    name = str(desc.get("type", "Python"))
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} dataset object"


def _same_object() -> str:
    """What reopens a run mined from a dataset object: that object, which only Python can pass."""
    return "pass the same dataset object from Python (data=..., as sketchmine.visualize(run, data=dataset) takes it)"


def missing_images(ds: MinerDataset, indices: np.ndarray) -> list[str]:
    """Paths of the given images that are not on disk (ImageFolder datasets only)."""
    if not isinstance(ds, ImageFolderDataset):
        return []
    return [str(ds.root / ds.samples[i][0]) for i in indices if not (ds.root / ds.samples[i][0]).is_file()]


def _check_fingerprint(run: Run, ds: MinerDataset) -> None:
    if len(ds) != run.labels.shape[0] or ds.fingerprint() != run.attrs.get("dataset_fingerprint"):
        if refused := unreadable_error(ds, f"then run the command again (run {run.path} was mined with it readable)"):
            raise refused  # named: clearer than a fingerprint that differs
        which = images_otherwise(run.store, ds)
        raise SketchmineError(f"the dataset given ({len(ds)} images) is not the one run {run.path} was mined on "
                              f"({run.labels.shape[0]} images, fingerprint {str(run.attrs.get('dataset_fingerprint'))[:12]}…)"
                              + (f": {which}" if which else ""))


def softmax_mined_once(run: Run, names: list[str], net: nn.Module, first: Callable[[], torch.Tensor]) -> None:
    """Refuse to picture the virtual softmax of a run an older sketchmine mined as the softmax of an
    output that is a softmax already (`output_softmax.mined_twice`): its top-k rank a second
    softmax, while this version's deconvolution reads the model's own (`first`: one model input)."""
    if SOFTMAX in names:
        check_marked(run.layer_attrs(SOFTMAX), net, first(), run.path)
