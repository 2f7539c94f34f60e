"""Parameters of the readers are checked the same way everywhere: a unit is an integer of the
layer (a float, bool or string is refused, not truncated or matched to nothing; numpy integers
are fine), a count is at least 1, and an array name that is no layer array is called unknown,
not a damaged run. A real run of the demo model over real test images."""
from __future__ import annotations

import numpy as np
import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.results.unit_summary import LayerSummary


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_test_set):
    return sketchmine.mine("demo", small_test_set, layers=["features.6", "classifier.6"],
                           out=tmp_path_factory.mktemp("p") / "run.zarr", batch_size=100)


@pytest.mark.parametrize("unit", [1.5, 2.7, 2.0, True, False, np.bool_(True), "5", None, -1, 96])
def test_a_unit_that_is_no_unit_of_the_layer_is_refused_by_every_reader(run, unit):
    summary = LayerSummary(run, "features.6")
    for read in (lambda: run.unit_classes("features.6", unit), lambda: run.unit("features.6", unit),
                 lambda: summary.unit(unit), lambda: run.check_unit("features.6", unit)):
        with pytest.raises(SketchmineError, match=r"unit .* is not in layer 'features.6' .*its units are 0 to 95 \(integers\)"):
            read()


def test_numpy_integer_units_are_units(run):
    u = np.int64(3)
    assert run.check_unit("features.6", u) == 3 and isinstance(run.check_unit("features.6", u), int)
    assert list(run.unit_classes("features.6", u)["image_index"]) == list(run.unit_classes("features.6", 3)["image_index"])
    assert run.unit("features.6", np.int32(3)).unit == 3
    assert LayerSummary(run, "features.6").unit(np.int16(3))["unit"] == 3


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "3"])
def test_unit_card_top_classes_refuses_a_count_below_one(run, n):
    card = run.unit("features.6", 0)
    with pytest.raises(SketchmineError, match="n must be a whole number of at least 1"):
        card.top_classes(n)
    assert len(card.top_classes(3)) == 3


def test_an_unknown_array_name_is_not_a_damaged_run(run):
    with pytest.raises(SketchmineError, match=r"unknown layer array name 'hist_edge' \(closest: hist_edges.*"
                                              r"a layer's arrays are values, image_index, yx"):
        run.layer_array("features.6", "hist_edge")
    for read in (lambda: run.has_array("features.6", "value"), lambda: run.array_shape("features.6", "value")):
        with pytest.raises(SketchmineError, match="unknown layer array name 'value'"):
            read()
    assert run.layer_array("features.6", "values").shape == (96, run.k)
