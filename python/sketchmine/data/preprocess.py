"""How pixels become model inputs: the presets, the one grey conversion (luma) and the
one resize rule every route (files, arrays, tensors) shares.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sketchmine import _C  # noqa: F401  (registers torch.ops.sketchmine, the normalisation among them)
from sketchmine.errors import SketchmineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


LUMA = (0.299, 0.587, 0.114)
"""Colour → grey weights (ITU-R 601-2 luma, PIL's convert("L")), the one grey conversion of
every route: `convert_channels` applies it to arrays, files and tensors alike."""


def _positive(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and int(v) > 0


def split_sample(value: Any, what: str) -> tuple[tuple[int, ...], Any]:
    """A size of more than three dims as (its leading dims, the (C, H, W) after them): a sequence's
    sample (T, C, H, W), as `mine` takes it. Leading dims that are not positive ints are refused
    naming `what` (they were said as `leading`, which the caller did not pass); other sizes: ((), value)."""
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) <= 3:
        return (), value
    if not all(_positive(v) for v in value[:-3]):
        raise SketchmineError(f"{what} must be a positive int S (S×S), (H, W), (C, H, W) or a sequence's sample "
                              f"(T, C, H, W) of positive ints; got {value!r}")
    return tuple(int(v) for v in value[:-3]), tuple(value[-3:])


def parse_size(value: Any, what: str) -> tuple[int | None, tuple[int, int]]:
    """A size argument as (channels or None, (H, W)): an int S (S×S), (H, W) or (C, H, W) with
    positive ints; anything else (zero, negative, floats, bools, other lengths) is refused, naming it."""
    if _positive(value):
        return None, (int(value), int(value))
    if isinstance(value, (tuple, list, torch.Size)) and len(value) in (2, 3) and all(_positive(v) for v in value):
        v = [int(x) for x in value]
        return (v[0] if len(v) == 3 else None), (v[-2], v[-1])
    raise SketchmineError(f"{what} must be a positive int S (S×S), (H, W) or (C, H, W) of positive ints; "
                          f"got {value!r}")


def as_size(value: Any, what: str, channels: int | None = None) -> tuple[int, int]:
    """`parse_size`'s (H, W); a (C, H, W) whose C differs from `channels` (when known) is refused."""
    c, hw = parse_size(value, what)
    if c is not None and channels is not None and c != channels:
        raise SketchmineError(f"{what} {tuple(value)} has {c} channels but the model takes {channels}; "
                              f"pass (H, W) or ({channels}, H, W)")
    return hw


@dataclass
class Preprocessing:
    """How raw pixels become model input: resize, scale to [0, 1], normalise per channel.

    preset: "imagenet", "dataset" (mean/std of this dataset, computed in one pass) or
    "none"; mean/std hold the numbers actually used and are recorded in the run.
    """

    preset: str = "none"
    channels: int = 3
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # images become grey or RGB (convert_channels): any other count would be filled from
        # colour planes by position, which no rule defines
        if self.channels not in (1, 3):
            raise SketchmineError(f"preprocessing for {self.channels}-channel input: sketchmine makes images into "
                                  "1-channel (grey) or 3-channel (RGB) model input, and mines models that take one "
                                  "of those")
        if len(self.mean) != len(self.std) or (self.mean and len(self.mean) != self.channels):
            raise SketchmineError(f"preprocessing {self.preset!r}: mean {list(self.mean)} and std {list(self.std)} "
                                  f"need one number per channel ({self.channels}), or none to normalise nothing")
        if self.preset in ("imagenet", "model") and not self.mean:
            raise SketchmineError(f"preprocessing {self.preset!r} without its mean and std would normalise nothing; "
                                  f"take data.preset({self.preset!r}, ...) or sketchmine.preprocessing_for(model)")
        if self.size is not None:
            self.size = as_size(self.size, "the preprocessing size", self.channels)

    def same_normalisation(self, other: Preprocessing) -> bool:
        """Same preset, channels and numbers (a "dataset" preset whose numbers one side has not
        computed yet matches on the preset)."""
        if (self.preset, self.channels) != (other.preset, other.channels):
            return False
        return not (self.mean and other.mean) or (tuple(self.mean), tuple(self.std)) == (tuple(other.mean), tuple(other.std))

    def describe(self, digits: int | None = None) -> str:
        """Short human form for messages: preset, channels, numbers (to `digits` significant
        digits for a page to read; None: every digit, for a message that says two differ), size."""
        def nums(v: tuple[float, ...]) -> str:
            return str(list(v)) if digits is None else "[" + ", ".join(f"{x:.{digits}g}" for x in v) + "]"
        values = f" mean {nums(self.mean)} std {nums(self.std)}" if self.mean else ""
        size = f" size {self.size[0]}×{self.size[1]}" if self.size else " size as stored"
        return f"{self.preset!r} ({self.channels} channel{'' if self.channels == 1 else 's'}{values},{size})"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C, H, W) float in [0, 1] → normalised input. A float32 (N, C, H, W) batch on the
        CPU takes the compiled op: the same floats in one pass (a grey plane repeated by a zero
        stride is read as the one plane it is), 1.2-1.6× faster on a 224-px batch of 64. The op has
        no gradient and no ONNX or compiler form: a tensor that needs a gradient, and a trace or
        compilation (the probe's ONNX export), take torch's ops."""
        if not self.mean:
            return x
        if (x.device.type == "cpu" and x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] == len(self.mean)
                and not (x.requires_grad and torch.is_grad_enabled())
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling()):
            plane = x[:, :1] if x.shape[1] > 1 and x.stride(1) == 0 else x
            return torch.ops.sketchmine.normalise(plane, list(self.mean), list(self.std), len(self.mean))
        mean, std = constant(self.mean, x.dtype, x.device), constant(self.std, x.dtype, x.device)
        # the division in place: the same floats as `(x - mean) / std`, one fresh tensor instead
        # of two (a 224-px batch of 64 is 38 MB, and a fresh one costs its page faults again)
        return (x - mean).div_(std)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, c, H, W) float in [0, 1], any channels and size → model input (N, channels,
        *size), normalised: what every dataset does to its images (a drawing to each frame).
        A grey image for a colour model is resized as one plane and repeated as a view: the
        same floats as resizing the repeated planes, a third of the resize, and the repeat
        is written once, by the normalisation."""
        if x.shape[1] != self.channels:
            if self.channels > 1 and x.shape[1] in (1, 2):
                x = self.resize(x[:, :1])  # grey (its alpha dropped, as convert_channels does)
            x = convert_channels(x, self.channels)
        out = self.normalise(self.resize(x))
        return out if self.mean else out.contiguous()  # no normalisation: the repeat still written

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, c, H, W) float → (N, c, *size): torch's antialiased bilinear resize, the rule's
        only one (no-op without a size or at that size already). Enlarging, its triangle filter
        keeps its width and its weights are plain bilinear's, so torch's bilinear kernel computes
        it: the same weights, 1.8× faster (a 28 → 224 px batch of 64: 2.9-3.6 against 5.2-6.4 ms), the
        floats as close to the exact values as the antialiased kernel's (a few ulps either way;
        tests/test_preprocess_device.py)."""
        if self.size is None or tuple(x.shape[-2:]) == tuple(self.size):
            return x
        h, w = self.size
        if h >= x.shape[-2] and w >= x.shape[-1] and w > 1:  # one pixel wide: the transpose below
            return torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if w == 1 and h > 1:
            # torch 2.14's antialiased resize into a one-pixel-wide output repeats its first row
            # (measured against the filter's weights); one pixel high is right, so resize the transpose
            t = torch.nn.functional.interpolate(x.transpose(-1, -2), size=(1, h), mode="bilinear", antialias=True)
            return t.transpose(-1, -2).contiguous()
        return torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


PRESETS = ("imagenet", "dataset", "none", "pixels")
"""The named presets `preset` makes; `mine` also takes "auto" and "model" (the model's own)."""


def preset_names(*, dataset: bool = True) -> str:
    """The preset names `mine` takes, for messages; without "dataset" for a pass with no images to
    take its numbers from."""
    return ", ".join(n for n in ("auto", "model", *PRESETS) if dataset or n != "dataset")


def preset(name: str, channels: int, size: tuple[int, int] | None) -> Preprocessing:
    """A named preset; "dataset" starts without numbers (see `compute_mean_std`)."""
    if name == "imagenet":
        mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,) * channels
        std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,) * channels
        return Preprocessing("imagenet", channels, size, tuple(mean), tuple(std))
    if name == "pixels":  # 0-255 values, for a graph that normalises its pixels itself (a Keras Rescaling)
        return Preprocessing("pixels", channels, size, (0.0,) * channels, (1 / 255,) * channels)
    if name in ("dataset", "none"):
        return Preprocessing(name, channels, size)
    raise SketchmineError(f"unknown preprocessing preset {name!r}; expected {', '.join(PRESETS)}")


_CONSTANTS: dict[tuple[tuple[float, ...], torch.dtype, torch.device], torch.Tensor] = {}


def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a (len, 1, 1) tensor on `device`: off the CPU made once and kept. Made per
    batch, torch.tensor(..., device="cuda") is a blocking copy that waits for the stream's queued
    work (on the prefetch's side stream, the previous batch's forward: prefetch.py). Kept tensors
    are never written or freed, so every stream may read them; made outside inference mode, so a
    pass that takes gradients through the normalisation may save them. A trace or compilation
    takes a fresh one, as the CPU does."""
    if device.type == "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)
    key = (tuple(values), dtype, device)
    if key not in _CONSTANTS:
        with torch.inference_mode(False):
            _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)
    return _CONSTANTS[key]


def chw(image: np.ndarray) -> torch.Tensor:
    """uint8 pixels (H, W) or (H, W, c) → float (c, H, W) in [0, 1] (a new tensor)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8))
    return (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)).float().div_(255)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., c, H, W) → (..., channels, H, W): grey is repeated (a view), alpha dropped, colour made grey
    by `LUMA` (R*0.299 + G*0.587 + B*0.114, in float: files, arrays and tensors alike; files are
    no longer made grey by PIL, whose integer luma rounds to 8 bits)."""
    if x.shape[-3] in (2, 4):
        x = x[..., :-1, :, :]
    if channels == 1:
        if x.shape[-3] == 3:
            w = constant(LUMA, x.dtype, x.device)
            return (x * w).sum(dim=-3, keepdim=True)
        return x.mean(dim=-3, keepdim=True)
    # grey repeated as a view (nothing copied): the normalisation or the caller writes it
    return x.expand(*x.shape[:-3], channels, -1, -1) if x.shape[-3] == 1 else x[..., :channels, :, :]
