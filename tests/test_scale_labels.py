"""Labels at the edge of their integer type: a label no int64 holds (a uint64 of 2**63, a
float of 1e20) is refused with its own value, from an ArrayDataset and from a torch Dataset,
instead of wrapping to -2**63 ("below -1") or failing in the loader's collate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import sketchmine
from sketchmine.data import ArrayDataset, animal_shape
from sketchmine.errors import SketchmineError


@pytest.mark.parametrize("wide", [np.uint64(2**63), 1e20, -1e20])
def test_an_array_label_beyond_int64_is_named_as_it_is(wide):
    raw = animal_shape("test")
    labels = np.append(raw.labels()[:5].astype(np.asarray(wide).dtype), wide)  # uint64 stays uint64
    with pytest.raises(SketchmineError) as err:
        ArrayDataset(raw.images[:6], labels, raw.class_names)
    text = str(err.value)
    assert f"label {labels[5]} of image 5" in text and "beyond any class index" in text, text
    assert "-9223372036854775808" not in text


class _Drawings(Dataset):
    """Eight real test drawings as float tensors, the last with `last` as its label."""

    def __init__(self, last):
        raw = animal_shape("test")
        self.x = torch.from_numpy(raw.images[:8]).float().div(255)[:, None]
        self.y, self.last, self.classes = raw.labels()[:8], last, list(raw.class_names)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.x[i], self.last if i == 7 else int(self.y[i])


@pytest.mark.parametrize("wide", [np.uint64(2**63), torch.tensor(1e20, dtype=torch.float64), 2**64])
def test_a_torch_dataset_label_beyond_int64_is_refused_naming_the_sample(tmp_path, wide):
    with pytest.raises(SketchmineError, match=r"of sample #7 is beyond any class index"):
        sketchmine.mine("demo", _Drawings(wide), out=tmp_path / "run.zarr", batch_size=4)
    assert not (tmp_path / "run.zarr").exists()


@pytest.mark.parametrize("dtype", [np.float16, np.uint8])
def test_narrow_array_labels_are_taken_without_a_warning(dtype):
    """The int64 range check compared float16 labels with 2**63, which float16 cannot hold: every
    ArrayDataset of float16 labels warned "overflow encountered in cast", of no label."""
    import warnings

    raw = animal_shape("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ArrayDataset(raw.images[:30], raw.labels()[:30].astype(dtype), raw.class_names)
    np.testing.assert_array_equal(ds.labels(), raw.labels()[:30])
