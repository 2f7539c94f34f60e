"""torchvision's pretrained weights by name (`--weights DEFAULT`, `IMAGENET1K_V1`,
`ResNet18_Weights.IMAGENET1K_V1`), read from the local cache only.

A weight enum brings the model's own preprocessing (mean, std, input size of its transforms)
and category names. sketchmine never downloads: the file must already be in torch's hub cache
(`$TORCH_HOME/hub/checkpoints`, as torchvision's own loader leaves it); otherwise the error says
where to put it, or to pass a state_dict file instead.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from sketchmine.errors import SketchmineError

_NAME = re.compile(r"(?:[A-Za-z0-9_]+_Weights\.)?(?:DEFAULT|[A-Z0-9_]+)")


def is_weights_name(weights: object) -> bool:
    """True for a torchvision weight name (DEFAULT, IMAGENET1K_V1, ResNet18_Weights.IMAGENET1K_V2),
    not for a file that exists or a name with a file suffix."""
    if not isinstance(weights, str) or Path(weights).exists() or Path(weights).suffix.lower() in (
            ".pt", ".pth", ".ckpt", ".bin", ".json", ".onnx"):
        return False
    return _NAME.fullmatch(weights) is not None


@dataclass
class Pretrained:
    """A torchvision model with its weights loaded, what its transforms normalise with, and
    the names of its outputs."""

    module: nn.Module
    preprocessing: dict[str, Any]
    categories: list[str]
    weights_id: str


def cached_file(url: str) -> Path:
    """Where torch's hub keeps the file of `url` (TORCH_HOME/hub/checkpoints/<name>)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_pretrained(arch: str, name: str) -> Pretrained:
    """torchvision model `arch` with the weights `name` from the local cache, or a
    SketchmineError saying how to provide them."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise SketchmineError(f"--weights {name}: {arch!r} is not a torchvision model with pretrained weights; "
                              "pass a state_dict file") from None
    member = name.rpartition(".")[2]
    if "." in name and name.partition(".")[0] != enum.__name__:
        raise SketchmineError(f"--weights {name}: {arch} has {enum.__name__}, not {name.partition('.')[0]}")
    try:
        weights = enum[member] if member != "DEFAULT" else enum.DEFAULT  # type: ignore[attr-defined]
    except KeyError:
        raise SketchmineError(f"--weights {name}: {arch} has no such weights; expected DEFAULT or one of "
                              f"{', '.join(w.name for w in enum)}") from None
    path = cached_file(weights.url)
    if not path.is_file():
        raise SketchmineError(
            f"{arch} weights {enum.__name__}.{weights.name} are not in the local cache ({path}) and sketchmine does "
            f"not download. Download {weights.url} on a machine with network and put it there (or point "
            f"TORCH_HOME at a folder holding hub/checkpoints/{path.name}), or pass --weights FILE with a state_dict")
    module = torchvision.models.get_model(arch, weights=weights)  # reads the cached file, no network
    transforms = weights.transforms()
    size = getattr(transforms, "crop_size", None)
    pre: dict[str, Any] = {"mean": [float(v) for v in transforms.mean], "std": [float(v) for v in transforms.std]}
    if size:
        pre["size"] = int(size[0]) if isinstance(size, (list, tuple)) else int(size)
    return Pretrained(module.eval(), pre, list(weights.meta.get("categories") or []),
                      f"{arch}:{enum.__name__}.{weights.name}")
