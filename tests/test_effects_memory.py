"""`effects` holds every image's maximum of every unit (for the correlations): N x C x 5 bytes
that grow with the dataset. Where they cannot fit the pass is refused before it starts, with
the numbers and what to do, instead of failing (or being killed) once the memory runs out."""
from __future__ import annotations

import pytest

from sketchmine.errors import SketchmineError
from sketchmine.stats.correlation import MAXIMA_BYTES, available_memory, check_maxima_memory, maxima_array


def test_maxima_that_do_not_fit_are_refused_with_the_numbers():
    images, units = 1_281_167, 4096  # ImageNet's training images x AlexNet's fc6
    need = images * units * MAXIMA_BYTES
    with pytest.raises(SketchmineError) as err:
        check_maxima_memory("classifier.1", images, units, available=16 * 2**30)
    text = str(err.value)
    for words in ("'classifier.1'", "1,281,167 images", "4,096 units", f"{need / 2**30:,.1f} GiB", "16.0 GiB",
                  "fewer units", "mine a subset of the dataset into a new run"):
        assert words in text, words
    check_maxima_memory("classifier.1", images, units, available=need)  # exactly enough: no refusal


def test_the_machines_memory_is_read_and_an_array_that_fits_is_made():
    free = available_memory()
    assert free is not None and free > 0  # Linux: MemAvailable
    with pytest.raises(SketchmineError, match="'wide'"):
        # four times the room the machine had a moment ago: its free memory moves meanwhile (another
        # process ends, the page cache grows), and one image more was sometimes room enough by then
        maxima_array("wide", 4 * (free // MAXIMA_BYTES) + 1, 1)
    assert maxima_array("fc", 10, 3).shape == (10, 3)
