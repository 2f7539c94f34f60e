"""Model zoo: a small AlexNet-style CNN, a small ResNet, a CNN + GRU, and the bundled
trained models ("demo", "demo-resnet", "demo-gru"; see `EMBEDDED` and data/README.md).

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

__all__ = ["SketchNet", "SketchResNet", "SketchGRU", "load_demo_model", "load_embedded", "EMBEDDED",
           "DEMO_WEIGHTS", "DEMO_METADATA"]

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


class SketchResNet(nn.Module):
    """A small ResNet for 28x28 single-channel images: a 3x3 stem and three stages of
    torchvision BasicBlocks (widths 16, 32, 64; strides 1, 2, 2: 28 -> 28 -> 14 -> 7),
    global average pooling, one linear classifier. Block outputs are named like
    torchvision's ResNets (``layer1.0`` ... ``layer3.1``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64),
                 blocks: int = 2) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for s, width in enumerate(widths):
            stride = 1 if s == 0 else 2
            layers = []
            for b in range(blocks):
                down = None
                if b == 0 and (stride != 1 or inplanes != width):
                    down = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(width))
                layers.append(BasicBlock(inplanes, width, stride if b == 0 else 1, down))
                inplanes = width
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 28, 28) -> (N, num_classes) logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        for s in range(self.stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SketchGRU(nn.Module):
    """CNN + GRU: reads a sketch as a sequence of partial drawings (see sequences.py).

    Input (N, T, C, 28, 28). A small CNN encodes every frame (the T frames of all N
    sequences go through it as one (N*T, C, 28, 28) batch, so each conv is called once
    per forward), ``embed`` maps each frame to 128 features, the GRU (batch_first) reads
    the T frames, and ``classifier`` maps every step's hidden state to class logits.
    ``forward`` returns the last step's logits; ``step_logits`` all of them (N, T, classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.hidden = num_classes, in_channels, hidden
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=5, padding=2),  # 0
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),                                       # 28 -> 14
            nn.Conv2d(16, 32, kernel_size=3, padding=1),           # 3
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),                                       # 14 -> 7
            nn.Conv2d(32, 64, kernel_size=3, padding=1),           # 6
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),                                       # 7 -> 3
        )
        self.embed = nn.Sequential(nn.Linear(64 * 3 * 3, 128), nn.ReLU(inplace=True))
        self.gru = nn.GRU(128, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def step_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, T, num_classes): a prediction after every step."""
        frames = x.flatten(0, 1)                               # (N*T, C, H, W)
        f = self.embed(torch.flatten(self.features(frames), 1))
        seq, _ = self.gru(f.unflatten(0, x.shape[:2]))         # (N, T, hidden)
        return self.classifier(seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, num_classes): the prediction after the last step."""
        return self.step_logits(x)[:, -1]


EMBEDDED: dict[str, tuple[type[nn.Module], str]] = {
    "demo": (SketchNet, "sketchnet_animal"),
    "demo-resnet": (SketchResNet, "sketchresnet_animal"),
    "demo-gru": (SketchGRU, "sketchgru_animal"),
}
"""Embedded trained models by spec name: (class, file stem of data/<stem>.pt/.json)."""

ARCHS: dict[str, type[nn.Module]] = {"sketchnet": SketchNet, "sketchresnet": SketchResNet, "sketchgru": SketchGRU}
"""This package's architectures by name, for `--model NAME --weights FILE` (e.g. a model
retrained with scripts/train_demo_model.py) and checkpoints {'arch': NAME, ...}."""


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
    fallback = Path(__file__).resolve().parents[3] / "data" / name
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


def load_embedded(name: str) -> tuple[nn.Module, dict[str, Any]]:
    """Load an embedded trained model by spec name ("demo", "demo-resnet", "demo-gru"),
    in eval mode, with its metadata (preprocessing, accuracy, sequence steps, ...)."""
    if name == "demo":
        return load_demo_model()
    cls, stem = EMBEDDED[name]
    meta: dict[str, Any] = json.loads(_read_embedded(f"{stem}.json").decode("utf-8"))
    model = cls(num_classes=int(meta.get("num_classes", 10)), in_channels=int(meta.get("in_channels", 1)))
    state = torch.load(io.BytesIO(_read_embedded(f"{stem}.pt")), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta
