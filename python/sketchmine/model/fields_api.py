"""`sketchmine.receptive_fields`: the receptive fields of a model given as `mine` takes it (a
module, a LoadedModel, or a name or checkpoint path with `weights`). Apart from receptive_field.py
because loading a model by name (models.py) imports the forward pass, which imports the field
analysis: that module cannot import the loader back."""
from __future__ import annotations

import os

from torch import nn

from sketchmine.model import receptive_field
from sketchmine.model.backend import LoadedModel
from sketchmine.model.models import torch_model
from sketchmine.model.receptive_field import ReceptiveField


def receptive_fields(model: nn.Module | LoadedModel | str | os.PathLike, input_size: int | tuple[int, ...],
                     leading: tuple[int, ...] = (), channels: int | None = None, *,
                     weights: str | os.PathLike | None = None) -> dict[str, ReceptiveField]:
    """Receptive field of every module with a spatial output, by qualified name
    (`receptive_field.receptive_fields`: `input_size`, `leading` and `channels` as there). model: a
    torch module, its LoadedModel, or a name or checkpoint path with `weights`, loaded as `mine`
    loads it (`models.torch_model`: the same names, weights rule and refusals)."""
    return receptive_field.receptive_fields(torch_model(model, weights, "receptive_fields"), input_size, leading,
                                            channels)
