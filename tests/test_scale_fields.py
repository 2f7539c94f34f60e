"""Receptive fields asked at an input smaller than the model takes: one clear refusal, and
nothing else on stderr (torch's fake tensors logged each failing meta kernel's traceback)."""
from __future__ import annotations

import pytest

import sketchmine
from sketchmine.errors import SketchmineError


@pytest.mark.parametrize("size", [(1, 4, 4), (1, 8, 8)])
def test_a_too_small_input_is_refused_in_one_line(demo_model, capfd, size):
    capfd.readouterr()
    with pytest.raises(SketchmineError, match=f"SketchNet cannot take a {size[0]}×{size[1]}×{size[2]} input"):
        sketchmine.receptive_fields(demo_model.module, size)
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "failed while attempting to run meta" not in err, err[:500]
    assert err.strip() == "" and out == ""
    # the size the model takes still works (docs/mining.md: features.6 sees 20 px)
    assert sketchmine.receptive_fields(demo_model.module, (1, 28, 28))["features.6"].size == (20, 20)
