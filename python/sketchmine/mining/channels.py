"""The channel count of a model whose input reaches no convolution that tells it (a GRU or a Linear
over flattened frames, a Conv1d over rows taking neither 1 nor 3 channels): its graph cannot tell it
(`graph.module_input_channels` falls back to 3), so grey images were made RGB for a model that takes
one channel. What the model accepts decides instead: it is run on the first readable sample made 1-
and 3-channel."""
from __future__ import annotations

import dataclasses
from typing import Any

from sketchmine.data import MinerDataset, Preprocessing, first_readable, parse_size, preset
from sketchmine.data.resolve import sketchmine_subset
from sketchmine.errors import SketchmineError, first_line
from sketchmine.model.backend import Forward
from sketchmine.model.modes import eval_mode
from sketchmine.model.onnx_backend import OnnxRunError
from sketchmine.progress import Progress


def channels_stated(dataset: Any, preprocessing: Any, image_size: Any) -> bool:
    """Whether `mine`'s caller said the channels: a Preprocessing passed, an image_size
    (C, H, W), or a sketchmine dataset built with its own preprocessing."""
    given = sketchmine_subset(dataset)
    try:
        sized = image_size is not None and parse_size(image_size, "image_size")[0] is not None
    except SketchmineError:  # refused where `mine` reads the size, in its order
        sized = False
    return (isinstance(preprocessing, Preprocessing) or sized
            or (isinstance(given, MinerDataset) and given.preprocessing is not None and given.preprocessing_explicit))


def accepted_channels(forward: Forward, net: Any, ds: MinerDataset, stated: bool, progress: Progress) -> MinerDataset:
    """`ds`, or `ds` under the other channel count (1 ↔ 3) when the model's graph does not
    tell its channels, nobody stated them, and only the other count runs on the first readable
    sample (said in a note). A model that runs on both is mined as `ds` is, and the note says
    how to choose; one that runs on neither is left to the probe's refusal. A preprocessing
    whose numbers are per channel (a model's recorded normalisation) states its channels; a
    stated count the model fails on, where the other runs, is refused naming the one to state
    (`preprocessing_for` a model without a conv states 3)."""
    pre = ds.preprocessing
    if pre is None or forward.input_channels(0):
        return ds
    other = _with_channels(pre, 4 - pre.channels)
    if other is None:
        return ds
    alt = ds.with_preprocessing(other)
    why = "its input reaches no convolution that tells its channel count"
    with eval_mode(net):
        failed = {pre.channels: _fails(forward, ds)}
        if stated and not failed[pre.channels]:
            return ds
        failed[other.channels] = _fails(forward, alt)
    if stated and not failed[other.channels]:  # a count stated (preprocessing_for(model) says 3: `why`) that fails
        raise SketchmineError(f"the model takes {other.channels}-channel input, as a forward pass on the first image "
                              f"showed ({why}; {pre.channels}-channel input failed: {failed[pre.channels]}), and "
                              f"{pre.channels} channels were stated (by the preprocessing given or the dataset's own): "
                              f"state {other.channels}, as Preprocessing(..., channels={other.channels}) or "
                              f"image_size=({other.channels}, H, W)")
    if stated:
        return ds
    if failed[pre.channels] and not failed[other.channels]:
        progress.note(f"the model takes {other.channels}-channel input, as a forward pass on the first image showed "
                      f"({why}; {pre.channels}-channel input failed: {failed[pre.channels]})")
        return alt
    if not failed[pre.channels] and not failed[other.channels]:
        progress.note(f"the model runs on 1- and 3-channel input alike ({why}): mined as {pre.channels}-channel "
                      "input; where it was trained on grey images, mine it from Python with image_size=(1, H, W) or a "
                      "Preprocessing of 1 channel")
    return ds


def _with_channels(pre: Preprocessing, channels: int) -> Preprocessing | None:
    """`pre` for `channels`, where its numbers do not fix them (ImageNet's are made for either)."""
    if pre.preset in ("imagenet", "pixels"):
        return preset(pre.preset, channels, pre.size)
    return None if pre.mean else dataclasses.replace(pre, channels=channels)


def _fails(forward: Forward, ds: MinerDataset) -> str | None:
    """The first line of the error the model raises on `ds`'s first readable sample; None when it runs."""
    try:
        forward.shapes([], first_readable(ds)[1][None])
    except (RuntimeError, ValueError, IndexError, TypeError, OnnxRunError, SketchmineError) as exc:
        return first_line(exc)
    return None
