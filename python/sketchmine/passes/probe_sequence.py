"""The live probe for runs that mined progressive drawings (a recurrent model, e.g. "demo-gru").

Such a run's model reads a sketch as T frames that `data.sequences.progressive_drawing` makes
from the image (outline first, then the fill; version "outline-then-fill/v1"), not the user's
strokes. So the probe page turns the drawing, brought to the model's input size, into those T
frames in JavaScript exactly as the Python data path does (probe.js `frames`, tested equal to
`progressive_drawing` in Chromium), and the graph takes `frames` (1, T, 1, H, W), 0-255.

"The prediction as the drawing grows" is the model's softmax on the first t frames, t = 1..T
(the graph's `steps` output, (T, classes)): the model itself run on each prefix, inside the graph,
so it holds for any model that accepts shorter sequences (for a causal recurrent model, the
prediction after step t). A model that refuses shorter sequences gets no per-step output, and
the page says why.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sketchmine.data.sequences import recorded_steps
from sketchmine.errors import SketchmineError
from sketchmine.model.backend import first_tensor
from sketchmine.results.run import Run

TIME_POSITIONS = ("time", "time-stacked", "sequence")
"""Layer positions that run over the sequence's steps (taps.to_units)."""


def run_sequence(run: Run) -> dict[str, Any] | None:
    """{"transform", "steps", "ink"} of a run that mined progressive drawings, else None."""
    seq = (run.attrs.get("dataset") or {}).get("sequence")
    if not seq:
        return None
    return {"transform": seq["transform"], "steps": recorded_steps(seq, f"run {run.path}"),
            "ink": str(seq.get("ink", "light"))}


def step_probs(net: nn.Module, x: torch.Tensor, last: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """(T, classes): the softmax of the model on frames 1..t of `x` (1, T, C, H, W), t = 1..T
    (the output as it is when `probabilities`: a softmax already); `last`: the row on all T frames,
    already computed."""
    outs = [first_tensor(net(x[:, :t])).flatten(1) for t in range(1, x.shape[1])]
    rows = [o[0] if probabilities else torch.softmax(o, dim=1)[0] for o in outs]
    return torch.stack(rows + [last])


def prefix_problem(net: nn.Module, x: torch.Tensor) -> str | None:
    """Why the model gives no prediction on a shorter sequence (the first frame of `x` alone, as
    many classes as on all of `x`), or None."""
    try:
        with torch.no_grad():
            classes = first_tensor(net(x)).flatten(1).shape[1]
            out = first_tensor(net(x[:, :1])).flatten(1)
    except Exception as exc:  # noqa: BLE001 - the reason is shown on the page
        return f"the model does not take a shorter sequence ({type(exc).__name__}: {str(exc)[:200]})"
    if out.shape != (1, classes):
        return f"on a shorter sequence the model gives shape {tuple(out.shape)}, not (1, {classes})"
    return None


def last_frame(t: torch.Tensor, layout: dict[str, Any]) -> torch.Tensor:
    """The last step's frame of a time-distributed conv's (1, C, T*h, w) map (frames stacked
    along y, taps.to_units): the units over the whole drawing; other maps as they are."""
    frame = layout.get("frame") or []
    if layout.get("position") == "time-stacked" and len(frame) == 2:
        return t[:, :, t.shape[2] - int(frame[0]):, :]
    return t


def sequence_ink(seq: dict[str, Any] | None) -> tuple[str, str] | None:
    """The pad's ink when the run drew its sequences with a fixed ink, else None (decided by the images)."""
    if seq is None or seq["ink"] not in ("light", "dark"):
        return None
    return seq["ink"], f"the run drew its sequences with ink={seq['ink']}"


def check_sequence_model(seq: dict[str, Any] | None, onnx_file: bool) -> None:
    """Refuse what the probe does not cover for sequence runs: a run of an .onnx file."""
    if seq is not None and onnx_file:
        raise SketchmineError("the run mined progressive drawings with an .onnx model; the probe exports sequence "
                              "runs from torch models only (mine the torch model to probe it)")
