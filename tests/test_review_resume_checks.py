"""Review of the resume and out-of-memory checks: a valid resume stays allowed, advice stays true."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.errors import SketchmineError
from sketchmine.mining import memory


def test_a_dataset_naming_its_classes_in_bytes_resumes(tmp_path, demo_model, small_test_set):
    """Class names given as bytes (an HDF5 file's, np.load of an 'S' array) are stored decoded
    (b'bear' as 'bear'): the class-name check compared the stored 'bear' with "b'bear'" and refused
    to resume the very dataset the run was mined on."""
    ds = small_test_set
    names = list(np.array(ds.class_names, dtype="S"))
    given = ArrayDataset(ds.images[:40], ds.labels()[:40], names, ds.preprocessing, ds.describe())
    out = tmp_path / "run.zarr"
    kw = dict(layers=["features.0"], logits=False, k=3, batch_size=20, out=out)
    run = sketchmine.mine(demo_model.module, given, **kw)
    assert run.class_names == [str(c) for c in ds.class_names]
    again = sketchmine.mine(demo_model.module, given, **kw)  # complete: returned as it is
    assert again.images_done == 40
    # with the logits: the model's class check joined the names into its messages (TypeError on bytes)
    kept = sketchmine.mine(demo_model.module, given, layers=["features.0"], k=3, batch_size=20, out=tmp_path / "l.zarr")
    assert kept.complete and kept.class_names == run.class_names
    renamed = ArrayDataset(ds.images[:40], ds.labels()[:40], names[1:] + names[:1], ds.preprocessing, ds.describe())
    with pytest.raises(SketchmineError, match=rf"class names \(class 0: '{ds.class_names[0]}' in the run, "
                                              rf"'{ds.class_names[1]}' now\)"):
        sketchmine.mine(demo_model.module, renamed, **kw)


def test_the_advice_after_one_image_failed_names_no_batch_size():
    """A batch of one image that failed before its peak measured a need by which one image fits:
    the advice said "try --batch-size 1", the batch that had just failed (before, with a measure
    that fit one image: "--batch-size 0")."""
    mib = 2**20
    before = memory.Memory(3941 * mib, 3941 * mib, 4096 * mib)
    for device, peak in (("cpu", 3949), ("cuda", 4000)):
        after = memory.Memory(3949 * mib, peak * mib, 4096 * mib)
        text = memory.message(torch.device(device), 1, before, after, 8 * mib)
        assert "--batch-size" not in text, text
        assert "one image at a time is the smallest batch: free memory, or use a smaller model or images" in text
    # a larger batch keeps its advice
    assert "try --batch-size 500 (batch_size=)" in memory.message(torch.device("cpu"), 1000, before,
                                                                  memory.Memory(3949 * mib, 3949 * mib, 4096 * mib),
                                                                  96 * mib)


def test_other_images_and_other_class_names_are_said_once_each(tmp_path, demo_model, small_test_set):
    """With other images too, the dataset's difference already names the classes ("the same classes
    in another order"), and the refusal said the class names a second time; a dataset naming its
    classes in bytes was said to have other classes (b'bear' for 'bear')."""
    ds = small_test_set
    names = list(ds.class_names)
    kw = dict(layers=["features.0"], logits=False, k=3, batch_size=20, out=tmp_path / "run.zarr")
    sketchmine.mine(demo_model.module, ArrayDataset(ds.images[:40], ds.labels()[:40], names, ds.preprocessing,
                                                    ds.describe()), **kw)
    rotated = ArrayDataset(ds.images[1:40], ds.labels()[1:40], names[1:] + names[:1], ds.preprocessing, ds.describe())
    with pytest.raises(SketchmineError) as refused:
        sketchmine.mine(demo_model.module, rotated, **kw)
    said = str(refused.value)
    assert "the same classes in another order" in said and "images: 1 gone" in said, said
    assert "class names (" not in said, said
    in_bytes = ArrayDataset(ds.images[1:40], ds.labels()[1:40], list(np.array(names, dtype="S")), ds.preprocessing,
                            ds.describe())
    with pytest.raises(SketchmineError) as refused:
        sketchmine.mine(demo_model.module, in_bytes, **kw)
    said = str(refused.value)
    assert "images: 1 gone" in said and "classes" not in said and "class names" not in said, said
