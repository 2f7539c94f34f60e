"""The base of `Run`'s mixins (unit_views.py, correlations.py, precision.py): each family of
readers lives in its own module and reads the run as the `Run` it is part of."""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from sketchmine.results.run import Run


class RunPart:
    """A base class of `Run` whose methods take the run through `_as_run`."""

    @property
    def _as_run(self) -> Run:
        """This object as the `Run` it is a base of (what the reader functions take)."""
        return cast("Run", self)
