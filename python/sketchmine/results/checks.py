"""Checks of what a reader of a run is asked for (a count of rows, an array's name): one place,
so every reader refuses the same things in the same words."""
from __future__ import annotations

import numpy as np

from sketchmine.errors import SketchmineError, closest
from sketchmine.store import schema


def check_count(n: int) -> int:
    """A number of rows asked for: at least 1 (pandas would read 0 and -1 as "none" and "all but one")."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SketchmineError(f"n must be a whole number of at least 1, got {n!r}")
    return int(n)


def check_array_name(name: str) -> str:
    """`name` when the schema declares it as a layer array; a typo is an unknown name (listing the
    valid ones), not a run "damaged" by a missing array."""
    if isinstance(name, str) and name in schema.LAYER_DIMENSIONS:
        return name
    hint = closest(name, schema.LAYER_DIMENSIONS) if isinstance(name, str) else []
    raise SketchmineError(f"unknown layer array name {name!r}" + (f" (closest: {', '.join(hint)})" if hint else "")
                          + f"; a layer's arrays are {', '.join(schema.LAYER_DIMENSIONS)}")
