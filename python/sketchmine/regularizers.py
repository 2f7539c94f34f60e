"""The regulariser settings of feature visualisation: each family's defaults, the presets, what
each setting takes, and `settings`, which turns a preset name or a dict of overrides into the full
settings a pass runs with and records. Without torch, so the views (results/) can name a layer's
settings (`how_made`) without importing the optimisation (passes/featvis_params.py)."""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from sketchmine.errors import SketchmineError

PIXEL_DEFAULTS: dict[str, float] = {"decay": 1e-4, "blur_radius": 1.0, "blur_every": 4, "norm_pct": 0.0,
                                    "contrib_pct": 0.0, "lr": 0.02, "init_std": 10 / 255, "redirect_relu": True}
"""Deconvnet-era defaults. decay, blur_radius (px), blur_every (steps), norm_pct and contrib_pct
(percentiles θ_n_pct, θ_c_pct) are the paper's; lr is a step in pixel units (0..1) per pixel of
a gradient normalised to unit RMS per unit (the paper's constant rate of 100 on Caffe's raw
0..255 gradient depends on the model's activation scale; the normalised step does not);
init_std: the paper's start, the mean plus N(0, 10) on the 0..255 scale. redirect_relu (both
families): ReLUs pass a dead unit's gradient on (featvis_relu.py), so units read after a ReLU
that is 0 at the start are optimised, not left as the starting noise."""

PIXEL_PRESETS: dict[str, dict[str, float]] = {
    "yosinski1": {"decay": 0.0, "blur_radius": 0.5, "blur_every": 4, "norm_pct": 50.0, "contrib_pct": 0.0},
    "yosinski2": {"decay": 0.3, "blur_radius": 0.0, "blur_every": 0, "norm_pct": 20.0, "contrib_pct": 0.0},
    "yosinski3": {"decay": 1e-4, "blur_radius": 1.0, "blur_every": 4, "norm_pct": 0.0, "contrib_pct": 0.0},
    "yosinski4": {"decay": 0.0, "blur_radius": 0.5, "blur_every": 4, "norm_pct": 0.0, "contrib_pct": 90.0},
}
"""The four rows of Yosinski et al. 2015, Table 1 (DVT doc/running-optimize-image.md)."""

FOURIER_DEFAULTS: dict[str, Any] = {"decay_power": 1.0, "decorrelate": True, "transforms": True, "lr": 0.05,
                                    "init_std": 0.01, "polish": 0.75, "reset": True, "redirect_relu": True}
"""Lucent-era defaults (lucent 0.1.8: fft_image sd 0.01, decay_power 1, Adam lr 0.05,
standard_transforms), plus two departures. polish: the share of the last steps run without the
transforms (0 is lucent's loop); reset: Adam restarts when the polish begins. The transforms
make the objective a mean over jittered, scaled and rotated copies, while the unit is judged
(and the run ranked its images) on the image as it is: with transforms to the end, SketchNet's
first conv layer reached its top-1 dataset image for 7 of 16 units; with the last quarter
without them, 13; the last half, 15; the last three quarters and a restarted Adam (whose
moments were averaged over transformed gradients), 16 (benchmarks/RESULTS.md, session 17). The
first quarter gives the image its robust structure; the rest brings the unit to its maximum
on the image itself."""

NONE: dict[str, dict[str, Any]] = {
    "pixel": {"decay": 0.0, "blur_radius": 0.0, "blur_every": 0, "norm_pct": 0.0, "contrib_pct": 0.0,
              "redirect_relu": False},
    "fourier": {"decay_power": 0.0, "decorrelate": False, "transforms": False, "redirect_relu": False},
}
"""regularizers="none": every regulariser of the family off (plain gradient ascent on the
pixels; a plain sigmoid-of-FFT image without 1/f scaling, decorrelation or transforms), and the
plain gradient at every ReLU."""

BEFORE: dict[str, Any] = {"redirect_relu": False}
"""What a run's claim recorded before a setting existed did: a claim without the key was
optimised so (featvis_run resumes it so, rather than mixing two rules in one layer)."""


def as_run(regs: dict[str, Any]) -> dict[str, Any]:
    """A claim's settings as its pass ran them: a setting the claim predates at what that version
    did (`BEFORE`)."""
    return {**BEFORE, **regs}

def settings(method: str, regularizers: str | dict[str, Any] | None) -> dict[str, Any]:
    """The full settings of a family: its defaults, a preset by name ("default", "none", or a
    `PIXEL_PRESETS` row) or a dict of overrides; unknown names and keys are refused."""
    if method not in ("pixel", "fourier"):
        raise SketchmineError(f"unknown feature visualisation method {method!r}; expected 'fourier' or 'pixel'")
    base: dict[str, Any] = dict(PIXEL_DEFAULTS if method == "pixel" else FOURIER_DEFAULTS)
    if regularizers is None or regularizers == "none":
        return {**base, **NONE[method]}
    if isinstance(regularizers, str):
        presets = PIXEL_PRESETS if method == "pixel" else {}
        if regularizers == "default":
            return base
        if regularizers not in presets:
            raise SketchmineError(f"unknown regularizers {regularizers!r} for method {method!r}; expected 'default', "
                                  f"'none'{''.join(', ' + repr(p) for p in presets)} or a dict of {sorted(base)}")
        return {**base, **presets[regularizers]}
    if not isinstance(regularizers, dict):
        raise SketchmineError(f"regularizers must be 'default', 'none', a preset name or a dict of {method} settings "
                              f"({', '.join(sorted(base))}); got {type(regularizers).__name__} {regularizers!r}")
    unknown = sorted(set(regularizers) - set(base))
    if unknown:
        raise SketchmineError(f"unknown regularizer setting(s) {', '.join(map(repr, unknown))} for method {method!r}; "
                              f"its settings: {', '.join(sorted(base))}")
    return {**base, **{key: _checked(key, value) for key, value in regularizers.items()}}


CHECKS: dict[str, tuple[str, float | None, float | None]] = {
    "decay": ("number", 0, 1), "blur_radius": ("number", 0, None), "blur_every": ("whole", 0, None),
    "norm_pct": ("number", 0, 100), "contrib_pct": ("number", 0, 100), "lr": ("positive", None, None),
    "init_std": ("number", 0, None), "decay_power": ("number", None, None), "polish": ("number", 0, 1),
    "decorrelate": ("bool", None, None), "transforms": ("bool", None, None), "reset": ("bool", None, None),
    "redirect_relu": ("bool", None, None)}
"""What each setting takes (kind, lowest, highest): the loop reads them by truthiness, int() and
float(), which would take "no" for True, truncate 2.5 to 2 and run a NaN rate to NaN images."""


def _checked(key: str, value: Any) -> Any:
    """`value` of setting `key` as a plain Python value when CHECKS allows it, else refused."""
    kind, low, high = CHECKS[key]
    value = value.item() if isinstance(value, np.generic) else value
    if kind == "bool":
        if not isinstance(value, bool):
            what = " (restart Adam when the polish begins)" if key == "reset" else ""
            raise SketchmineError(f"regularizer setting {key!r}{what} is a bool, True or False; got {value!r}")
        return value
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "whole":
        if not number or value != int(value) or value < 0:
            raise SketchmineError(f"regularizer setting {key!r} is a whole number of steps, at least 0 (0: never); "
                                  f"got {value!r}")
        return int(value)
    if kind == "positive":
        if not number or value <= 0:
            raise SketchmineError(f"regularizer setting {key!r} is a finite number above 0; got {value!r}")
        return value
    if not number or (low is not None and value < low) or (high is not None and value > high):
        if key == "polish":
            raise SketchmineError(f"regularizer setting 'polish' is the share of the last steps run without the "
                                  f"transforms, a number from 0 to 1; got {value!r}")
        want = (f"a number from {low} to {high}" if high is not None else
                f"a finite number of at least {low}" if low is not None else "a finite number")
        raise SketchmineError(f"regularizer setting {key!r} is {want}; got {value!r}")
    return value


def preset_of(method: str, regs: dict[str, Any]) -> str | None:
    """The name of the preset ("default", "none", a `PIXEL_PRESETS` row) whose settings `regs`
    are, or None."""
    for name in ("default", "none", *(PIXEL_PRESETS if method == "pixel" else {})):
        if settings(method, name) == regs:
            return name
    return None


def described(method: str, regs: dict[str, Any]) -> str:
    """A layer's settings in a few words: "" for the defaults, "regularisers yosinski1" for a
    preset, else the settings that differ from the defaults; "plain ReLU gradients" where the
    ReLUs did not redirect (a claim from before the setting records none: it did not)."""
    if method not in ("pixel", "fourier"):
        return ""
    regs = as_run(regs)
    name = preset_of(method, regs) or preset_of(method, {**regs, "redirect_relu": True})
    words = []
    if name is None:  # some setting beyond the ReLU rule differs from the defaults
        base = settings(method, "default")
        changed = [f"{k} {regs[k]}" for k in sorted(regs) if k != "redirect_relu" and regs[k] != base.get(k)]
        words.append("regularisers " + ", ".join(changed))
    elif name != "default":
        words.append(f"regularisers {name}")
    if not regs.get("redirect_relu") and name != "none":
        words.append("plain ReLU gradients")
    return ", ".join(words)
