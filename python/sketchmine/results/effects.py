"""Unit effects and correlated units in the run store, written by the effects pass
(passes/effects.py) and read back through `Run.unit_effects` / `Run.correlated_units`:

    layers/<name>/effects/{logit_delta, prob_delta}   float64 (C, K): mean change of each
        class's logit / probability when the unit is zeroed (ablated minus clean, mean over
        all images); attrs images, classes, method, units_per_pass, ablation, delta
    layers/<name>/correlated/{unit, r}   int32 / float32 (C, m): the m most correlated units
        of the same layer (Pearson r of image maxima), -1 / NaN pad; attrs m, images, ...

Each group is written as a unit by the pass (passes/effects.py, `write_effects`): an interrupted
write leaves the earlier result, or none. Kept apart from the pass so run.py reads without
importing it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sketchmine.errors import SketchmineError
from sketchmine.names import command, layer_arg
from sketchmine.store import schema

if TYPE_CHECKING:  # annotations only: run.py imports this module
    from sketchmine.results.run import Run

KINDS = tuple(schema.EFFECT_ARRAYS)
EFFECT_KEYS = tuple(schema.EFFECT_ARRAYS.values())
CORRELATED_KEYS = tuple(schema.CORRELATED_ARRAYS)


def onnx_run(run: Run) -> bool:
    """Whether the run was mined from an ONNX file (ONNX Runtime): its weights identity is the
    file's, so no torch model ever matches it, and its units cannot be ablated."""
    return str(run.attrs.get("model") or "").startswith("onnx:")


def logits_layer(run: Run) -> str | None:
    """The mined layer that computes the logits, as far as the run shows it: the last mined layer
    (not the virtual softmax) whose output is one value per class; None when none is mined."""
    def find() -> str | None:
        classes = int(run.attrs.get("num_classes") or len(run.class_names) or 0)
        found = [n for n in run.layers if n != "softmax" and list(run.layer_attrs(n).get("shape") or []) == [classes]]
        return found[-1] if classes and found else None

    return run.once("logits_layer", find)


def class_units(run: Run, layer: str) -> list[str] | None:
    """The class of each unit of `layer` when its units are the classes (the virtual softmax, the
    layer that computes the logits: mining matched the model's outputs to the classes), else None:
    the views name such a unit by its class, not only by its number."""
    if run.attrs.get("logits", True) is False or layer not in ("softmax", logits_layer(run)):
        return None
    names = [str(c) for c in run.class_names]
    return names if list(run.layer_attrs(layer).get("shape") or []) == [len(names)] else None


def not_ablatable(run: Run, layer: str) -> str | None:
    """Why no unit of `layer` can be ablated (so no effects or importance can ever be computed
    for it, and no hint should point at a command that refuses), or None. Why: the virtual
    'softmax' layer has no module to zero, and an ONNX run has no torch model with its weights."""
    if onnx_run(run):
        return (f"run {run.path} was mined from an ONNX file ({run.attrs.get('model')}): ablation zeroes units in a "
                "torch model and a torch model's weights never match an ONNX run's, so its units cannot be ablated; "
                "mine the torch model into a new run to compute effects and importance")
    if layer == "softmax":
        target = logits_layer(run)
        where = (f"ablate the layer that computes the logits instead: {command('--layers', layer_arg([target]))}" if target
                 else "mine the layer that computes the logits to ablate it")
        return ("nothing can be ablated at 'softmax': it is the model's output (virtual, no module to zero; its "
                f"units are the classes); {where}")
    return None


def missing_note(run: Run, layer: str, what: str = "unit effects or correlated units") -> str:
    """Why `layer` has no `what` of the effects pass (which computes both), and how to add them."""
    why = not_ablatable(run, layer)
    if why is not None:
        return f"run {run.path} has no {what} for {layer!r}: {why}"
    return (f"run {run.path} has no {what} for {layer!r}; compute them with "
            f"`{command('sketchmine', 'effects', run.path, '--layers', layer_arg([layer]))}` (or sketchmine.unit_effects)")


def _missing(run: Run, layer: str, what: str) -> SketchmineError:
    return SketchmineError(missing_note(run, layer, what))


def has_effects(run: Run, layer: str) -> bool:
    """True when `layer` has whole stored effects and correlated units."""
    return (run.layer_result(layer, schema.EFFECTS, EFFECT_KEYS) is not None
            and run.layer_result(layer, schema.CORRELATED, CORRELATED_KEYS) is not None)


def read_effects(run: Run, layer: str, kind: str = "prob") -> pd.DataFrame:
    """unit × class DataFrame (index "unit", columns the class names) of the mean change of
    each class's probability (kind="prob") or logit (kind="logit") when the unit is zeroed:
    ablated minus clean, mean over all images; the group's attrs in `.attrs`."""
    if kind not in KINDS:
        raise SketchmineError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    found = run.layer_result(layer, schema.EFFECTS, EFFECT_KEYS)
    if found is None:
        raise _missing(run, layer, "unit effects")
    arrays, attrs = found
    values = arrays[schema.EFFECT_ARRAYS[kind]]
    names = run.class_names
    columns = names if len(names) == values.shape[1] else [str(i) for i in range(values.shape[1])]
    df = pd.DataFrame(values, index=pd.RangeIndex(values.shape[0], name="unit"),
                      columns=pd.Index(columns, name="class"))
    attrs.pop(schema.COMPLETE, None)
    df.attrs.update({**attrs, "kind": kind})
    return df


def read_correlated(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(unit (C, m) int32, r (C, m) float32): per unit, the m units of the layer whose image
    maxima correlate most with it, largest r first (-1 / NaN where fewer have a defined r)."""
    found = run.layer_result(layer, schema.CORRELATED, CORRELATED_KEYS)
    if found is None:
        raise _missing(run, layer, "correlated units")
    arrays, _ = found
    return arrays["unit"], arrays["r"]


def uncorrelated_notes(run: Run, layer: str) -> dict[int, str]:
    """Why each unit of `layer` without a correlated unit has none (unit -> words): a unit constant
    over the dataset (a dead ReLU unit) has no correlation at all, and a unit whose every partner
    is constant, or shares too few images with finite maxima, has none defined. Correlations
    stored before the pass recorded which units are constant say what the counts still tell."""
    found = run.layer_result(layer, schema.CORRELATED, CORRELATED_KEYS)
    if found is None:
        raise _missing(run, layer, "correlated units")
    arrays, attrs = found
    alone = [int(u) for u in np.flatnonzero((np.asarray(arrays["unit"]) < 0).all(axis=1))]
    units, images = len(arrays["unit"]), f"{int(attrs.get('images') or 0):,}"
    constant_note = f"constant over the {images} images: no correlation"
    if attrs.get("nonfinite"):  # an all-NaN unit counts as constant too: say it may be that
        constant_note = f"constant over the {images} images, or without two finite image maxima: no correlation"
    if "constant" in attrs:
        constant = {int(u) for u in attrs["constant"]}
        varying = units - len(constant)
        other = (f"every other unit is constant over the {images} images: no correlation" if varying == 1 else
                 "no other unit shares two or more images with it where both maxima are finite: no correlation")
        return {u: constant_note if u in constant else other for u in alone}
    counted = int(attrs.get("constant_units", -1))
    if counted == units or (attrs.get("nonfinite") == 0 and units - counted >= 2):
        return dict.fromkeys(alone, constant_note)  # any two varying units with finite maxima have an r
    return dict.fromkeys(alone, f"no correlation defined with any unit over the {images} images (it is constant, or "
                                "too few of its images have finite maxima; computed before sketchmine recorded which)")
