"""A model that fails during the pass: said in one line naming the images of the batch, not as
torch's traceback after the run was made.

The probe runs one image, on the meta device where it can (shapes without arithmetic), so a model
that only fails computing for real (a float64 buffer in a float32 matmul) or on some images (an
assertion of its own) first fails inside the pass. Only the model's own errors are turned into a
message: an error raised in sketchmine's code (its taps run inside the forward) stays a
traceback, a bug to report; running out of memory is `memory.guard`'s to say.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from sketchmine.data.dataset import MinerDataset
from sketchmine.errors import SketchmineError, SketchmineFailure
from sketchmine.mining.memory import is_out_of_memory

_OURS = os.path.realpath(Path(__file__).parents[1]) + os.sep


class ModelFailed(SketchmineFailure):
    """The model raised during the pass, on the images named (exit 1, as ONNX Runtime's failures)."""


@contextlib.contextmanager
def model_errors(ds: MinerDataset, idx: torch.Tensor) -> Iterator[None]:
    """Turn an error the model raises on the batch of dataset indices `idx` into a ModelFailed
    naming its first and last image."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, SketchmineError) or is_out_of_memory(exc) or _raised_by_sketchmine(exc):
            raise
        first, last = int(idx[0]), int(idx[-1])
        which = ds.path(first) + (f" … {ds.path(last)}" if last != first else "")
        said = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelFailed(f"the model failed on a batch of {len(idx)} image(s) ({which}): {type(exc).__name__}: "
                          f"{said[:400]}; the run keeps what its last checkpoint holds") from exc


def _raised_by_sketchmine(exc: BaseException) -> bool:
    """Whether `exc` was raised by sketchmine's own code: every frame of its traceback is
    sketchmine's (the ONNX backend, whose model runs in ONNX Runtime, not in Python), or a frame
    of it lies below the first frame that is not (a tap's hook, called by the model's module; the
    frames above the model, this loop's, are sketchmine's in every case). Paths compared with
    their links resolved (a checkout or environment reached through a symlink)."""
    tb, inside = exc.__traceback__, False
    while tb is not None:
        ours = os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(_OURS)
        if inside and ours:
            return True
        inside, tb = inside or not ours, tb.tb_next
    return not inside
