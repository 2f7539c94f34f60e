"""What to say when a model cannot take the probe's input: the input in words, the change that
would help (resize, channels first, no --steps), and whether a torch error is about the input's
shape at all. Kept apart from the torch backend so its wording has one owner."""
from __future__ import annotations

import re

import torch

from sketchmine.model.backend import Forward


def input_words(x: torch.Tensor) -> str:
    """What one input of the batch `x` is, in words: an image (C, H, W) or a progressive drawing
    of T frames (T, C, H, W)."""
    if x.ndim == 5:
        return f"a progressive drawing: {x.shape[1]} frames (--steps, steps=) of channels, height, width"
    return "one image: channels, height, width"


def input_advice(x: torch.Tensor, channels: int = 0) -> str:
    """What to change so the model takes the batch `x`: what was given decides (a model that
    cannot read sequences is not helped by resizing, a wrong size is not helped by --steps, and
    neither helps images whose dimension -3 is not the model's `channels`, 0 when unknown: a
    channel count of another kind, or channels last)."""
    if x.ndim == 5:
        return ("--steps (steps=) is for CNN + recurrent models that read sequences of frames: leave it out for a "
                "model of single images, or check the model's image size (--image-size, image_size=)")
    if x.ndim == 4 and channels and x.shape[-3] != channels:
        c, shape = int(x.shape[-3]), tuple(x.shape[1:])
        if x.shape[-1] == channels or (c > 4 and x.shape[-1] <= 4):
            return (f"the images look channels-last, (H, W, C) = {shape}, and the model takes {channels} channel(s) "
                    "first: yield x.permute(2, 0, 1) (transforms.ToTensor() puts channels first)")
        return (f"the images have {c} channel(s) and the model takes {channels}: convert them (a preprocessing "
                "converts grey and colour: preprocessing='model', 'imagenet' or 'none' takes a torch Dataset's tensors "
                f"as pixels in [0, 1]), or give the model trained on {c}-channel images")
    return ("check what the model takes: resize the images with --image-size (image_size=), or give the model "
            "trained at this size")


_INPUT_ERROR = re.compile(r"shape|size|dimension|channel|\b\d+D\b|must match|contain \d+ elements", re.IGNORECASE)
"""Words of torch's errors about what a tensor holds where (a conv's channels, a linear's features,
a pooling larger than its input, 3D for 4D): a model's error on the probe's image that says none of
them (an op without a float16 kernel, mixed dtypes) is not about the input's shape."""


def about_input(error: str) -> bool:
    """Whether a model's error plausibly concerns the shape or channels of its input."""
    return bool(_INPUT_ERROR.search(error))


def model_failed(forward: Forward, x: torch.Tensor, error: str) -> str:
    """The refusal of a model that failed on the probe's image for another reason than its shape:
    the error quoted, and the autocast it ran under (the pass's: TorchForward.autocast)."""
    said = f"the model failed on the first image ({input_words(x)}: {tuple(x.shape[1:])}): {error}"
    cast = getattr(forward, "autocast", None)
    if cast is None:
        return said
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(cast, str(cast))
    return (f"{said}; it ran under torch.autocast with {name} (--autocast {name}, autocast={name!r}), as mining "
            "would: mine without autocast, or with the model in float32 (model.float())")
