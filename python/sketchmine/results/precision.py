"""The precision a run's mining pass computed in, read from its record (`forward_options`).

A run mined under `autocast="bf16"` or `"fp16"` holds activations, logits and accuracy computed
in that precision: its logits differ from a float32 run's far beyond float rounding, and its
top-k holds other images wherever values were close. Every reader says so where it shows those
numbers, from the words here. `channels_last` and `compile` change only the last bits (as
another batch size does): they are listed in `forward_options` (and `--json`), not shown.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sketchmine.results.run_part import RunPart
from sketchmine.store.schema import DEVICE, FORWARD_OPTIONS, PLAIN_FORWARD_OPTIONS, STRETCHES

if TYPE_CHECKING:
    from sketchmine.results.run import Run

FLOAT32 = "float32"
"""`Run.precision` of a run mined without autocast (and of runs mined before the record)."""
_AUTOCAST = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def forward_options(attrs: dict[str, Any]) -> dict[str, Any]:
    """The run's recorded forward options, every key present (the plain pass's where unrecorded); a damaged
    record was refused when the run was opened (store/attrs.py checks it with the others)."""
    return {**PLAIN_FORWARD_OPTIONS, **(attrs.get(FORWARD_OPTIONS) or {})}


def precision_of(options: dict[str, Any]) -> str:
    """"float32", "bfloat16 autocast" or "float16 autocast" for forward options; an autocast
    this sketchmine does not know (a newer one's) is named as recorded, never read as float32."""
    autocast = options.get("autocast")
    if autocast is None:
        return FLOAT32
    return f"{_AUTOCAST.get(autocast.lower(), autocast)} autocast"


class Precision(RunPart):
    """What `Run` says of the precision its numbers were computed in (a base of `Run`)."""

    @property
    def forward_options(self) -> dict[str, Any]:
        """{autocast: None | "bf16" | "fp16", channels_last: bool, compile: bool}: the mining
        pass's forward options (runs mined before they were recorded: the plain pass)."""
        run = self._as_run
        return forward_options(run.attrs)

    @property
    def precision(self) -> str:
        """The precision the mining pass computed activations, logits and accuracy in: "float32",
        "bfloat16 autocast" / "float16 autocast", or a half model's own dtype ("bfloat16",
        "float16"; `model_dtype`) — values then differ from a float32 run's beyond float
        rounding. Later passes (visualize, importance, effects) run without autocast."""
        run = self._as_run
        own = precision_of(self.forward_options)
        model = run.attrs.get("model_dtype")
        return str(model) if own == FLOAT32 and isinstance(model, str) else own

    @property
    def batch_sizes(self) -> list[tuple[int, int]]:
        """(first image, batch size) of each stretch the mining pass ran at one batch size: one
        stretch, unless a resume changed the size (which changes the last bits, as `compile`
        does); [] where the run did not record it."""
        return [(int(first), int(size)) for first, size in _stretches_of(self._as_run.attrs, "batch_size")]

    @property
    def devices(self) -> list[tuple[int, str]]:
        """(first image, device kind) of each stretch the mining pass ran on one kind of device
        ("cpu", "cuda"): one stretch, unless a resume moved the run; [] where it did not record it."""
        return [(int(first), str(kind)) for first, kind in _stretches_of(self._as_run.attrs, DEVICE)]

    @property
    def reduced_precision(self) -> bool:
        """True when the mining pass ran under autocast (`precision` is not "float32")."""
        return self.precision != FLOAT32


def _stretches_of(attrs: dict[str, Any], key: str) -> list[list[Any]]:
    """The recorded stretches of root attribute `key` (schema.STRETCHES): its record where a resume
    changed it, else one stretch of its value from image 0; [] where the run did not record it."""
    return attrs.get(STRETCHES[key]) or ([[0, attrs[key]]] if key in attrs else [])


def precision_note(run: Run) -> str | None:
    """The sentence a view shows once where a reduced-precision run's numbers are; None for a
    float32 run (its views stay as they were)."""
    if not run.reduced_precision:
        return None
    what = "activations" if run.attrs.get("logits", True) is False else "activations, logits and accuracy"
    return (f"mined under {run.precision}: {what} differ from a float32 run's beyond float rounding (its "
            "top-k can hold other images where values are close)")


def batch_note(run: Run) -> str | None:
    """What `summary` says of a run resumed at another batch size (`Run.batch_sizes`), else None."""
    stretches = run.batch_sizes
    if len(stretches) < 2:
        return None
    return (f"mined at batch size {_stretches(stretches)} (resumed at another size): CPU matrix products round the "
            "last bit by batch size, so near-ties may rank as neither uninterrupted run would")


def device_note(run: Run) -> str | None:
    """What `summary` says of a run resumed on another kind of device (`Run.devices`), else None."""
    stretches = run.devices
    if len(stretches) < 2:
        return None
    return (f"mined on {_stretches(stretches)} (resumed on another device): devices round otherwise (a GPU adds "
            "the float64 sums behind unit and class means a block at a time), so the last bits differ from a run on "
            "one device")


def _stretches(stretches: list[tuple[int, Any]]) -> str:
    """"64 for images 0-99, 32 from image 100"."""
    ends = [first for first, _ in stretches[1:]] + [None]
    return ", ".join(f"{value} for images {first}-{end - 1}" if end is not None else f"{value} from image {first}"
                     for (first, value), end in zip(stretches, ends))


def precision_differs(a: Run, b: Run) -> str | None:
    """What `compare` says when its two runs were mined in different precisions, else None."""
    if a.precision == b.precision:
        return None
    return (f"A was mined in {a.precision}, B in {b.precision}: their activations, logits and accuracy differ "
            "beyond float rounding, so their values are not comparable bit for bit")
