"""Review of the quantile argument check: numbers of any Python type are numbers."""
from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import sketchmine
from sketchmine.errors import SketchmineError


def test_quantiles_given_as_fractions_or_decimals_are_numbers(tmp_path, small_test_set):
    """The check that refuses strings read numpy's dtype kind: a Fraction or a Decimal (an object
    array) was refused with "quantiles are numbers from 0 to 1, got [Fraction(1, 2)]", a number
    from 0 to 1 that numpy converts exactly; strings and bools, alone or among them, are refused."""
    images = small_test_set.subset(np.arange(0, 300, 15))
    run = sketchmine.mine("demo", images, layers=["features.0"], k=2, out=tmp_path / "d.zarr", distributions=True)
    want = run.quantiles("features.0", [0.25, 0.5])
    assert np.isfinite(want).all() and not np.array_equal(want[:, 0], want[:, 1])
    np.testing.assert_array_equal(run.quantiles("features.0", [Fraction(1, 4), Fraction(1, 2)]), want)
    np.testing.assert_array_equal(run.quantiles("features.0", [Decimal("0.25"), Decimal("0.5")]), want)
    np.testing.assert_array_equal(run.quantiles("features.0", Fraction(1, 2)), want[:, 1:])
    for q in ([Fraction(1, 2), "0.5"], [Decimal("0.5"), True], "0.5"):
        with pytest.raises(SketchmineError, match="quantiles are numbers from 0 to 1"):
            run.quantiles("features.0", q)
