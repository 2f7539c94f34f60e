"""An image size no memory holds: one image of 10^6 x 10^6 px is 4 TB as floats. The first
image, made model input before the run, says so and what to do (a smaller image size; the
batch size cannot help), instead of the CPU allocator's traceback; nothing is written."""
from __future__ import annotations

import pytest

import sketchmine
from sketchmine.data import ArrayDataset, animal_shape
from sketchmine.errors import SketchmineError


def test_an_image_size_no_memory_holds_is_refused_before_the_run(tmp_path):
    raw = animal_shape("test")
    ds = ArrayDataset(raw.images[:4], raw.labels()[:4], raw.class_names)
    with pytest.raises(SketchmineError) as err:
        sketchmine.mine("demo", ds, out=tmp_path / "run.zarr", image_size=10**6)
    text = str(err.value)
    assert "out of memory making the first image model input" in text and "smaller --image-size" in text, text
    assert "GiB asked at once" in text and "whatever the batch size" in text
    assert not (tmp_path / "run.zarr").exists()
