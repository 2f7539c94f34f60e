"""The options of a mining pass that change how fast it runs, not what it finds, as two
small frozen values checked once (`mine` builds them from its keyword arguments): the
forward pass's (`SpeedOptions`) and the loader's (`LoadOptions`). Private helpers take these
instead of a growing list of loose parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sketchmine.errors import SketchmineError, flag, whole_number

_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_FLAGS = {"k": "-k", "batch_size": "--batch-size", "flush_every": "--flush-every", "num_workers": "--workers"}


@dataclass(frozen=True)
class SpeedOptions:
    """How the forward pass runs (defaults: the plain pass, flushes overlapped).

    channels_last, autocast (bf16/fp16 dtype) and compile change the activations' rounding, so
    a resume must keep them (`forward_options`); overlap_flushes writes each periodic
    checkpoint on a background thread (same store either way)."""

    channels_last: bool = False
    autocast: torch.dtype | None = None
    compile: bool = False
    overlap_flushes: bool = True

    @classmethod
    def checked(cls, *, torch_model: bool, logits: bool, softmax_mined: bool, channels_last: bool = False,
                autocast: str | None = None, compile: bool = False, overlap_flushes: bool = True) -> SpeedOptions:
        """The options `mine` was given, checked against the model and layers."""
        if autocast is not None and str(autocast).lower() not in _AUTOCAST:
            raise SketchmineError(f"autocast must be bf16 or fp16 (or None), got {autocast!r}")
        if not torch_model and (channels_last or autocast is not None or compile):
            raise SketchmineError("channels_last, autocast and compile apply to torch models only, not to the ONNX "
                                  "Runtime backend")
        if not logits and softmax_mined:
            raise SketchmineError("logits=False (--no-logits) cannot mine the virtual 'softmax' layer: it is computed "
                                  "from the logits; leave it out of the layers or keep the logits")
        return cls(bool(channels_last), None if autocast is None else _AUTOCAST[str(autocast).lower()],
                   bool(compile), bool(overlap_flushes))

    def forward_options(self) -> dict[str, Any]:
        """What the run records and a resume compares: the options that change activations."""
        dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast) if self.autocast else None
        return {"autocast": dtype, "channels_last": self.channels_last, "compile": self.compile}


@dataclass(frozen=True)
class LoadOptions:
    """How images reach the model: batches of `batch_size` from `num_workers` DataLoader
    processes, each `prefetch_factor` batches ahead (None: torch's default), pinned when
    `pin_memory` (None: when mining on CUDA); `preprocess` "cpu" prepares each image in the
    loader, "device" each batch on the mining device (data/batchprep.py)."""

    batch_size: int = 64
    num_workers: int = 0
    prefetch_factor: int | None = None
    pin_memory: bool | None = None
    preprocess: str = "cpu"

    @classmethod
    def checked(cls, batch_size: int, num_workers: int = 0, prefetch_factor: int | None = None,
                pin_memory: bool | None = None, device: torch.device | None = None) -> LoadOptions:
        check_counts(batch_size=batch_size, num_workers=num_workers)
        if pin_memory and device is not None and device.type != "cuda":  # torch would warn and not pin
            raise SketchmineError(f"pin_memory (--pin-memory) page-locks loader batches for copies to a CUDA device; "
                                  f"mining on {device} it would do nothing: leave it out, or mine on cuda")
        if prefetch_factor is not None:
            prefetch_factor = whole_number(prefetch_factor, "prefetch_factor (--prefetch-factor)")
            if num_workers < 1:
                raise SketchmineError(f"prefetch_factor ({prefetch_factor}) needs num_workers >= 1: it is how many "
                                      "batches each loader worker prepares ahead")
        return cls(int(batch_size), int(num_workers), prefetch_factor, pin_memory)

    def loader_kwargs(self, device: torch.device) -> dict[str, Any]:
        """DataLoader keyword arguments (besides the dataset, order and collate function)."""
        ahead = {"prefetch_factor": self.prefetch_factor} if self.prefetch_factor and self.num_workers > 0 else {}
        pin = device.type == "cuda" if self.pin_memory is None else self.pin_memory
        return {"batch_size": self.batch_size, "num_workers": self.num_workers, "pin_memory": pin, **ahead}


def check_counts(**counts: int) -> None:
    """Counts that must be positive (k, batch_size, flush_every) or non-negative (num_workers)."""
    for name, value in counts.items():
        whole_number(value, f"{name} ({_FLAGS[name]})", 0 if name == "num_workers" else 1)


_NONE = {"pin_memory": "to pin when the device is CUDA", "distributions": "for the run's setting on resume, else off"}


def check_flags(**flags: object) -> None:
    """`mine`'s switches: True or False (None where it means something: `_NONE`); None, 0 or a
    string would otherwise switch an option off or on without a word."""
    for name, value in flags.items():
        flag(value, name, _NONE.get(name))
