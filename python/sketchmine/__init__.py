"""sketchmine: what does every filter of every layer of a CNN respond to?

Public API: `mine`, `open_run`, `Run`; see DESIGN.md for the run store layout.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import SketchmineError  # noqa: E402
from .run import Run, open_run  # noqa: E402
from .miner import mine  # noqa: E402
from .receptive_field import ReceptiveField, receptive_fields  # noqa: E402
from .deconv import deconvolve  # noqa: E402
from .visualize import visualize  # noqa: E402
from .compare import compare  # noqa: E402
from .importance import unit_importance  # noqa: E402
from .plots import plot_importance  # noqa: E402

__all__ = ["ReceptiveField", "Run", "SketchmineError", "compare", "deconvolve", "mine", "open_run", "receptive_fields", "visualize",
           "unit_importance", "plot_importance", "__version__"]
