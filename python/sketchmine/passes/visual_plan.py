"""How one layer's top-k entries become patches: the crop geometry `visualize` reads from the
layer's recorded receptive field (or the whole image, for layers without a grid)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sketchmine.errors import SketchmineError
from sketchmine.model.field_record import ReceptiveField, recorded_field
from sketchmine.results.run import Run


@dataclass(frozen=True)
class Plan:
    """How one layer's entries become patches."""

    name: str
    channels: int
    grid: bool
    source: tuple[int, int]   # crop size in input pixels (the receptive field, or the whole image)
    size: tuple[int, int]     # stored patch size (source, shrunk to fit max_patch)
    stride: tuple[int, int]
    offset: tuple[int, int]
    timed: bool = False       # a line of time steps (recurrent, per-step linear): yx = (0, t)
    frame_h: int = 0          # time-distributed conv: frames stacked along y, yx = (t * frame_h + y, x)
    frame_w: int = 0          # time-distributed 1-D layer (Conv1d): frames along x, yx = (0, t * frame_w + i)
    spans: Any = None         # each unit's (first, last) pixel per axis, where no stride gives the boxes

    @property
    def field(self) -> ReceptiveField:
        return ReceptiveField(self.source, self.stride, self.offset, self.spans)

    def attrs(self, method: str, block: int, device: str) -> dict[str, Any]:
        return {"method": method, "patch_size": list(self.size), "source_size": list(self.source),
                "block_units": block, "device": device, "units_done": 0, "complete": False}


def plan_of(run: Run, name: str, image_hw: tuple[int, int], max_patch: int,
            field_now: Callable[[str], bool] | None = None) -> Plan:
    """Crop geometry of one layer from its recorded receptive field. `field_now(name)`: whether
    this version's analysis of the run's model gives the layer a field, asked only where the run
    recorded none, so that the refusal can say whether mining again would record it."""
    shape = run.layer_shape(name)
    attrs = run.layer_attrs(name)
    grid = len(shape) == 3
    frame_h = int(attrs["frame"][0]) if grid and time_stacked(run, name) else 0
    if frame_h and not attrs.get("receptive_field"):
        raise SketchmineError(
            f"layer {name!r} of {run.path} is a time-distributed conv (each step's frame stacked along y) and "
            "the run has no receptive field for it (mined before they were computed per frame); mine it again "
            "with this version, or visualize its recurrent, linear and softmax layers")
    if grid:
        if "receptive_field" not in attrs:
            raise SketchmineError(f"run {run.path} was mined before receptive fields were recorded; "
                                  f"mine it again with this version to visualize {name!r}")
        rf = attrs["receptive_field"]
        if rf is None and field_now is not None and field_now(name):
            # the run's attributes do not tell which version made it (0.1.0, schema 2 alike): the
            # analysis does, where it now gives a field the run did not record
            raise SketchmineError(
                f"run {run.path} has no receptive field for layer {name!r}, and this version's graph analysis "
                "of its model gives it one: the run was mined by an earlier sketchmine (before receptive fields "
                "were computed for ONNX graphs and for forwards that compute with their input's size, none was "
                f"recorded for them); mine it again into a new --out to visualize {name!r}")
        if rf is None or not rf.get("size"):
            raise SketchmineError(f"run {run.path} has no receptive field for layer {name!r} (when it was mined, "
                                  "the graph analysis met an op it cannot follow before it, or the layer is a "
                                  "reflection or replication pad, whose border units copy other pixels); only "
                                  "layers without a grid can be visualized")
        grid = 0 not in rf["stride"]  # stride 0: a grid whose units all see the whole image (after global pooling)
        field = recorded_field(rf)  # behind an upsampling: each unit's box (field_record.py)
        source, stride, offset, spans = field.size, field.stride, field.offset, field.spans
        if not grid:
            source, stride, offset, spans = image_hw, (0, 0), (0, 0), None
    else:  # FC, softmax and 1-D layers: the whole image
        source, stride, offset, spans = image_hw, (0, 0), (0, 0), None
    scale = min(1.0, max_patch / max(source))
    size = tuple(max(1, round(s * scale)) for s in source)
    timed = len(shape) == 2 and (attrs.get("position") in ("time", "sequence")
                                 or (attrs.get("position") == "time-stacked" and not attrs.get("frame")))
    frame_w = int(attrs["frame"][0]) if len(shape) == 2 and time_stacked(run, name) else 0
    return Plan(name, shape[0], grid, source, size, stride, offset, timed, frame_h, frame_w,  # type: ignore[arg-type]
                 spans)


def time_stacked(run: Run, name: str) -> bool:
    """A time-distributed layer of a sequence model with a spatial frame per step (frames stacked
    along y); per-step vectors (an empty frame) are a plain line of time steps."""
    attrs = run.layer_attrs(name)
    return attrs.get("position") == "time-stacked" and bool(attrs.get("frame"))
