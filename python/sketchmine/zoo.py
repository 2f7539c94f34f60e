"""Model zoo: a small AlexNet-style CNN and the bundled demo model.

The miner studies which units of an AlexNet-like network respond to which
inputs.  Full AlexNet is far too large to ship or train on CPU, so SketchNet
keeps AlexNet's *layout* (five conv layers with interleaved max-pools, then
fc6/fc7/fc8 with dropout) at a size that fits 28x28 silhouettes, trains in
minutes on a laptop and ships as a ~2 MB file.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["SketchNet", "load_demo_model", "DEMO_WEIGHTS", "DEMO_METADATA"]

DEMO_WEIGHTS = "sketchnet_animal.pt"
DEMO_METADATA = "sketchnet_animal.json"


class SketchNet(nn.Module):
    """AlexNet-shaped CNN for 28x28 single-channel images.

    Spatial sizes: 28 -conv1/pool-> 14 -conv2/pool-> 7 -conv3..5/pool-> 3,
    so ``classifier`` sees 64 * 3 * 3 = 576 features.  Layer indices inside
    ``features``/``classifier`` are stable and may be used to name layers
    (e.g. ``features.10`` is conv5's ReLU).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),  # 0 conv1
            nn.ReLU(inplace=True),                                 # 1
            nn.MaxPool2d(2),                                       # 2
            nn.Conv2d(32, 64, kernel_size=3, padding=1),           # 3 conv2
            nn.ReLU(inplace=True),                                 # 4
            nn.MaxPool2d(2),                                       # 5
            nn.Conv2d(64, 96, kernel_size=3, padding=1),           # 6 conv3
            nn.ReLU(inplace=True),                                 # 7
            nn.Conv2d(96, 96, kernel_size=3, padding=1),           # 8 conv4
            nn.ReLU(inplace=True),                                 # 9
            nn.Conv2d(96, 64, kernel_size=3, padding=1),           # 10 conv5
            nn.ReLU(inplace=True),                                 # 11
            nn.MaxPool2d(2),                                       # 12
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),                                     # 0
            nn.Linear(64 * 3 * 3, 256),                            # 1 fc6
            nn.ReLU(inplace=True),                                 # 2
            nn.Dropout(p=0.5),                                     # 3
            nn.Linear(256, 256),                                   # 4 fc7
            nn.ReLU(inplace=True),                                 # 5
            nn.Linear(256, num_classes),                           # 6 fc8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape (N, num_classes) for (N, C, 28, 28)."""
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _read_embedded(name: str) -> bytes:
    """Read a file of ``sketchmine._embedded``.

    The installed package carries the repo's ``data/`` directory as
    ``sketchmine._embedded``; in a source checkout that is not yet installed
    we fall back to ``<repo>/data`` so development works without pip.
    Reading bytes (not a path) also works for zip-imported installs.
    """
    try:
        candidate = resources.files("sketchmine._embedded").joinpath(name)
        if candidate.is_file():
            return candidate.read_bytes()
    except ModuleNotFoundError:
        pass
    fallback = Path(__file__).resolve().parents[2] / "data" / name
    if fallback.is_file():
        return fallback.read_bytes()
    raise FileNotFoundError(
        f"{name} not found in sketchmine._embedded or {fallback.parent}; "
        "run scripts/train_demo_model.py to create it"
    )


def load_demo_model() -> tuple[nn.Module, dict[str, Any]]:
    """Load the bundled SketchNet trained on Animal-Shape, in eval mode.

    Returns the model and its metadata (preprocessing mean/std, class names,
    accuracy, ...) so callers can preprocess inputs exactly as in training.
    ``weights_only=True`` keeps loading free of arbitrary unpickling.
    """
    meta: dict[str, Any] = json.loads(_read_embedded(DEMO_METADATA).decode("utf-8"))
    model = SketchNet(
        num_classes=int(meta.get("num_classes", 10)),
        in_channels=int(meta.get("in_channels", 1)),
    )
    state = torch.load(
        io.BytesIO(_read_embedded(DEMO_WEIGHTS)), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    model.eval()
    return model, meta
