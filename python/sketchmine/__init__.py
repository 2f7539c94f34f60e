"""sketchmine: what does every filter of every layer of a CNN respond to?

Public API: `mine`, `open_run`, `Run`, the passes (`visualize`, `unit_importance`), and
the helpers listed in `__all__`; see docs/store.md for the run store layout. Names are
imported on first use (PEP 562), so `import sketchmine` loads neither torch nor zarr.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "SketchmineError": "sketchmine.errors",
    "Run": "sketchmine.results.run",
    "open_run": "sketchmine.results.run",
    "mine": "sketchmine.mining.miner",
    "ReceptiveField": "sketchmine.model.receptive_field",
    "receptive_fields": "sketchmine.model.fields_api",
    "load_model": "sketchmine.model.models",
    "preprocessing_for": "sketchmine.model.models",
    "animal_shape": "sketchmine.data",
    "SequenceDataset": "sketchmine.data.sequences",
    "deconvolve": "sketchmine.passes.deconv",
    "visualize": "sketchmine.passes.visualize",
    "unit_importance": "sketchmine.passes.importance",
    "compare": "sketchmine.results.compare",
    "plot_importance": "sketchmine.present.plots",
    "unit_effects": "sketchmine.passes.effects",
    "feature_visualization": "sketchmine.passes.featvis",
    "verify_run": "sketchmine.store.integrity",
}
_MODULES = {"plots": "sketchmine.present.plots", "data": "sketchmine.data"}

__all__ = sorted(_PUBLIC) + sorted(_MODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'sketchmine' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from sketchmine import data, plots  # noqa: F401
    from sketchmine.data import animal_shape  # noqa: F401
    from sketchmine.data.sequences import SequenceDataset  # noqa: F401
    from sketchmine.errors import SketchmineError  # noqa: F401
    from sketchmine.mining.miner import mine  # noqa: F401
    from sketchmine.model.models import load_model, preprocessing_for  # noqa: F401
    from sketchmine.model.fields_api import receptive_fields  # noqa: F401
    from sketchmine.model.receptive_field import ReceptiveField  # noqa: F401
    from sketchmine.passes.deconv import deconvolve  # noqa: F401
    from sketchmine.passes.effects import unit_effects  # noqa: F401
    from sketchmine.passes.featvis import feature_visualization  # noqa: F401
    from sketchmine.passes.importance import unit_importance  # noqa: F401
    from sketchmine.passes.visualize import visualize  # noqa: F401
    from sketchmine.present.plots import plot_importance  # noqa: F401
    from sketchmine.results.compare import compare  # noqa: F401
    from sketchmine.results.run import Run, open_run  # noqa: F401
    from sketchmine.store.integrity import verify_run  # noqa: F401
