"""Reading a feature visualisation pass's images back (`Run.optimized`): one unit's, or a
layer's committed ones, refused clearly where the pass has not reached them; and how the views
name a layer's pictures (`signal_words`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sketchmine.errors import SketchmineError
from sketchmine.names import command, layer_arg
from sketchmine.regularizers import described
from sketchmine.store import schema

if TYPE_CHECKING:
    from sketchmine.results.run import Run


PICTURES_DEFAULTS = {"method": "deconvnet", "max_patch": 128}
"""`visualize`'s defaults for the pictures of a torch run (its `method=None`: deconvnet; an ONNX
run's: patches only; a test holds them to its signature)."""
SIGNALS = {"deconvnet": "deconvolutions", "guided": "guided backpropagation", "gradient": "gradients"}
"""What the pictures beside the patches are, by `visualize --method` (docs/visualize.md): only
deconvnet's are deconvolutions, so the views name them by the layer's method."""


def signal_words(run: Run, layer: str) -> dict[str, str]:
    """How the views name the layer's pictures beside the patches: "method" (as --method names it,
    the default where the pass recorded none), "name" ("guided backpropagation") and "title" (what
    they are and what made them, for a tooltip)."""
    return visualized_words(run.layer_attrs(layer).get(schema.VISUALIZED) or {})


def visualized_words(have: dict[str, Any]) -> dict[str, str]:
    """`signal_words` from a layer's `visualized` attributes (what the pass itself holds)."""
    method = str(have.get("method") or PICTURES_DEFAULTS["method"])
    name = SIGNALS.get(method, method)
    return {"method": method, "name": name,
            "title": f"{name} of the unit, cropped to each patch (visualize --method {method})"}


def default_method(run: Run) -> str:
    """`visualize`'s method when none is given: deconvnet for a torch run, patches only for a run
    mined from an ONNX file (ONNX Runtime gives no gradients)."""
    from sketchmine.results.effects import onnx_run

    return schema.PATCHES_ONLY if onnx_run(run) else str(PICTURES_DEFAULTS["method"])


def pictures_command(run: Run, layer: str, *more: str) -> str:
    """The `visualize` command that continues (or adds to) the layer's pictures: with the --method
    and --max-patch of the pictures it holds where they are not the defaults, which the pass refuses
    to change (a hint without them was refused when followed). Patches shrunk to fit --max-patch
    have it as their larger side; unshrunk ones need one at least as large as their source."""
    have = run.layer_attrs(layer).get(schema.VISUALIZED) or {}
    same: list[str] = []
    if have.get("method", default_method(run)) != default_method(run):
        same += ["--method", str(have["method"])]
    size, source = have.get("patch_size"), have.get("source_size")
    if size and source and max(size) != min(PICTURES_DEFAULTS["max_patch"], max(source)):
        same += ["--max-patch", str(max(size))]
    return command("sketchmine", "visualize", run.path, "--layers", layer_arg([layer]), *same, *more)


def optimize_command(run: Run, layer: str) -> str:
    """The `visualize --optimize` command that adds (or continues) the layer's optimised images
    (`pictures_command`, which the pass's pictures must match)."""
    return pictures_command(run, layer, "--optimize")


def settings(run: Run, layer: str) -> dict[str, Any]:
    """The layer's `optimized` attribute (method, steps, units_done, ...); refused when absent."""
    attrs = run.layer_attrs(layer).get(schema.OPTIMIZED)
    if attrs is None or not all(run.has_array(layer, key) for key in schema.OPTIMIZED_ARRAYS):
        from sketchmine.results.effects import onnx_run

        how = ("it was mined from an ONNX file, and optimising an input needs a torch model's gradients: mine the "
               "torch model into a new run" if onnx_run(run) else f"run `{optimize_command(run, layer)}`")
        raise SketchmineError(f"layer {layer!r} of {run.path} has no optimised images; {how}")
    return dict(attrs)


def optimized(run: Run, layer: str, unit: int | None = None, key: str = "optimized") -> np.ndarray:
    """Array `key` of schema.OPTIMIZED_ARRAYS: of one unit, or of the units done (all when
    complete). Images are (H, W, channels) uint8 per unit."""
    attrs = settings(run, layer)
    if key not in schema.OPTIMIZED_ARRAYS:
        raise SketchmineError(f"{key!r} is not an array of a feature visualisation pass; expected one of "
                              f"{', '.join(schema.OPTIMIZED_ARRAYS)}")
    units, done = run.array_shape(layer, "optimized")[0], int(attrs.get("units_done", 0))
    if unit is None:
        return run.layer_array(layer, key, slice(0, done))
    unit = run.check_unit(layer, unit)
    if unit >= done:
        raise SketchmineError(f"unit {unit} of layer {layer!r} of {run.path} has no optimised image yet ({done} of "
                              f"{units} units done); run `{optimize_command(run, layer)}` to continue")
    return run.layer_array(layer, key, slice(unit, unit + 1))[0]


def never_moved(run: Run, layer: str, unit: int) -> bool:
    """Whether the unit's stored image is the starting noise, not an optimised input: its objective
    gave no gradient at any step (schema.NO_GRADIENT), so its views say so instead of a value."""
    return int(optimized(run, layer, unit, key="optimized_stopped")) == schema.NO_GRADIENT


def how_made(claim: dict[str, Any]) -> str:
    """How a layer's stored images were optimised, from its `optimized` claim, for the views:
    "fourier, 256 steps", then the regularisers where they are not the defaults (a preset's name,
    else the settings that differ) and "plain ReLU gradients" where the ReLUs did not redirect."""
    regs = claim.get("regularizers")
    extra = described(str(claim.get("method")), regs) if isinstance(regs, dict) else ""
    return f"{claim.get('method')}, {claim.get('steps')} steps" + (f", {extra}" if extra else "")
