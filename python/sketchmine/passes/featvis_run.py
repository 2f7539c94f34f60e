"""`visualize(..., optimize=True)`: one optimised image per unit of every visualised layer,
stored in the run (schema.OPTIMIZED_ARRAYS) in blocks of units like the patches.

A block is one optimisation batch (`batch_size` units, one forward and backward per step for
all of them); its arrays are written, then `units_done` is committed, so a killed pass resumes
at a block boundary. A unit's image depends on the batch it is optimised in (float rounding
differences grow over hundreds of steps), so a block is always optimised whole, with the same
units, also where a call starts or stops inside it (max_units): a resumed pass stores what an
uninterrupted one does. The images have the size and channels of the run's inputs and
are optimised in the normalisation the run recorded.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sketchmine.data import Preprocessing
from sketchmine.errors import SketchmineError, SketchmineFailure, machine_fix, whole_number
from sketchmine.model.backend import LoadedModel
from sketchmine.model.modes import eval_mode
from sketchmine.passes.featvis import METHODS, LayerReader, optimize
from sketchmine.passes.resumed import resumed_on
from sketchmine.progress import Progress
from sketchmine.regularizers import BEFORE, as_run, settings
from sketchmine.results.run import Run
from sketchmine.store import schema
from sketchmine.store.optimized import optimized_state, reset_optimized, write_optimized
from sketchmine.store.runstore import RunStore

DEFAULT_STEPS = 256


def check_options(optimize: bool, method: str | None, steps: int | None,
                  regularizers: str | dict[str, Any] | None = None) -> tuple[str, int, dict[str, Any]]:
    """The method, steps and full regulariser settings (regularizers.settings) of an optimize
    pass; refused when given without `optimize`."""
    if not optimize:
        if method is not None or steps is not None or regularizers is not None:
            raise SketchmineError("optimize_method / optimize_steps / optimize_regularizers (--optimize-method / "
                                  "--optimize-steps / --optimize-regularizers) apply to the feature visualisation "
                                  "pass only: pass optimize=True (--optimize) as well")
        return "fourier", DEFAULT_STEPS, {}
    method = method or "fourier"
    if method not in METHODS:
        raise SketchmineError(f"unknown feature visualisation method {method!r}; expected one of {', '.join(METHODS)}")
    steps = DEFAULT_STEPS if steps is None else whole_number(steps, "optimize_steps (--optimize-steps)")
    return method, steps, settings(method, "default" if regularizers is None else regularizers)


class OptimizePass:
    """The optimisation of a visualize call. Created before the call resets or writes anything,
    so what it refuses loses nothing; `claim` then claims (or resumes) each layer's arrays, so
    `total` and `done` can join the call's progress bar; `run_all` does the blocks."""

    def __init__(self, run: Run, loaded: LoadedModel, names: list[str], limit: dict[str, int],
                 pre: Preprocessing | None, sample: tuple[int, ...], method: str, steps: int,
                 regularizers: dict[str, Any], device: torch.device) -> None:
        """sample: the shape of one model input, (C, H, W), or (T, C, H, W) for a sequence."""
        if loaded.sequence or len(sample) != 3:
            raise SketchmineError(f"run {run.path} was mined from sequences of drawings ({loaded.model_id}); feature "
                                  "visualisation optimises one input image per unit: visualize without --optimize")
        if pre is None:  # the optimised [0, 1] pixels would need a guess at how pixels became the input
            raise SketchmineError(
                f"run {run.path} does not record how pixels become the model's input (it was mined from a torch "
                "Dataset of tensors, not images), so there is no pixel space to optimise in; visualize without "
                "--optimize, or call feature_visualization(model, layer, units, preprocessing=Preprocessing(...)) "
                "as the dataset prepared its images")
        self.run, self.net = run, loaded.module
        self.pre, self.channels, self.hw = pre, int(sample[0]), (int(sample[1]), int(sample[2]))
        self.method, self.steps, self.device = method, steps, device
        self.settings = regularizers
        self.layer_settings: dict[str, dict[str, Any]] = {}  # a layer resumed as an older version began it
        self.names, self.limit = names, limit
        self.todo: dict[str, tuple[int, int]] = {}
        self.devices: dict[str, list[list[Any]]] = {}  # a layer resumed on another kind of device: its stretches

    def claim(self, store: RunStore, batch_size: int, redo: bool, progress: Progress) -> None:
        """Each layer's (units done, block size), its arrays created when new or `redo`."""
        self.store = store
        self.todo = {n: self._prepare(n, batch_size, redo, progress) for n in self.names}

    @property
    def total(self) -> int:
        return sum(self.limit.values())

    @property
    def done(self) -> int:
        return sum(min(done, self.limit[n]) for n, (done, _) in self.todo.items())

    def _want(self, block: int) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps, "seed": 0, "regularizers": self.settings,
                "size": list(self.hw), "block_units": block, "device": torch.device(self.device).type,
                "units_done": 0, "complete": False}

    def _prepare(self, name: str, batch_size: int, redo: bool, progress: Progress) -> tuple[int, int]:
        """(units done, block size) of a layer, its arrays created when new or `redo`."""
        want = self._want(max(1, batch_size))
        have, whole = optimized_state(self.store, name)
        if have is not None and not redo and (whole or have.get("units_done", 0) > 0):
            keys = ("method", "steps", "seed", "regularizers", "size")
            older = _older_settings(have.get("regularizers"), want["regularizers"])
            if whole and all(have.get(k) == want[k] or (k == "regularizers" and older) for k in keys):
                if older:  # the layer goes on by the rule it began with
                    self.layer_settings[name] = older
                    if not have.get("complete") and older != want["regularizers"]:
                        progress.note(f"layer {name!r} resumes its optimised inputs as an earlier version of "
                                      f"sketchmine began them ({', '.join(f'{k} {older[k]}' for k in BEFORE)}), so "
                                      "the layer is optimised by one rule; --redo makes them again with this "
                                      "version's settings")
                block = int(have["block_units"])
                if block != want["block_units"] and not have.get("complete"):  # its images depend on the blocks
                    progress.note(f"layer {name!r} resumes its optimised inputs in the blocks of {block} units it "
                                  f"began with (a unit's image depends on the units optimised beside it), not of "
                                  f"--batch-size {want['block_units']}")
                self._resumed_on(name, have, want["device"], progress)
                return int(have.get("units_done", 0)), block
            if not whole:
                raise SketchmineError(f"layer {name!r} of {self.store.path} is damaged: its optimised images are "
                                      "missing; pass --redo to make them again")
            differ = [k for k in keys if have.get(k) != want[k]]
            options = [o for k, o in (("method", "--optimize-method"), ("steps", "--optimize-steps"),
                                      ("regularizers", "--optimize-regularizers")) if k in differ]
            raise SketchmineError(f"layer {name!r} of {self.store.path} was optimised with other settings: "
                                  f"{'; '.join(_difference(k, have.get(k), want[k]) for k in differ)}; "
                                  + (f"pass the same {'/'.join(options)}, or --redo to replace them" if options else
                                     "no option of this version gives those (another version made them): pass "
                                     "--redo to make them again"))
        units = self.run.layer_shape(name)[0]
        reset_optimized(self.store, name, units, self.hw, self.channels, want)  # type: ignore[arg-type]
        return 0, want["block_units"]

    def _resumed_on(self, name: str, have: dict[str, Any], kind: str, progress: Progress) -> None:
        """Record and say a layer's pass resumed on another kind of device (passes/resumed.py): a
        unit's image depends on how the device rounds, and the differences grow over the steps."""
        stretches = resumed_on(name, have, kind, "optimised inputs", "a unit's image depends on how the device rounds "
                               "(the differences grow over the steps), so units from {done} on differ from a pass "
                               "on one device", progress)
        if stretches is not None:
            self.devices[name] = stretches

    def run_all(self, progress: Progress) -> None:
        with eval_mode(self.net):  # the caller's flags back after
            for name, (done, block) in self.todo.items():
                self._layer(name, done, block, progress)

    def _layer(self, name: str, done: int, block: int, progress: Progress) -> None:
        attrs = dict(optimized_state(self.store, name)[0] or {})
        if name in self.devices:
            attrs["devices"] = self.devices[name]
        units, limit = self.run.layer_shape(name)[0], self.limit[name]
        reader = LayerReader(self.net, name, self.run.layer_attrs(name))
        u0 = done
        flat: list[int] = []  # units of this call whose objective gave no gradient at any step
        while u0 < limit:
            # the whole block is optimised even where a call starts or stops inside it (max_units):
            # a unit's image depends on its batch (rounding differences grow over the steps), so
            # only the block's own batch gives what an uninterrupted pass stores
            b0 = u0 // block * block
            b1 = min(b0 + block, units)
            u1 = min(b1, limit)
            r = optimize(reader, np.arange(b0, b1), self.pre, self.hw, self.method,  # type: ignore[arg-type]
                         self.layer_settings.get(name, self.settings),
                         self.steps, 0, self.device)
            keep = slice(u0 - b0, u1 - b0)
            stopped = r.stopped[keep]
            flat_here = r.no_gradient[keep] & (stopped < 0)
            flat += [u0 + int(i) for i in np.flatnonzero(flat_here)]
            attrs.update(units_done=u1, complete=u1 == units)
            try:
                write_optimized(self.store, name, slice(u0, u1),
                                {"optimized": r.pixels[keep], "optimized_peak": r.peak[keep],
                                 "optimized_stopped": np.where(flat_here, schema.NO_GRADIENT, stopped)}, attrs)
            except OSError as exc:
                raise SketchmineFailure(f"cannot write to {self.store.path}: {exc.strerror or exc}; the units done so "
                                        f"far are kept — {machine_fix(exc) or 'make room'} and re-run the same command "
                                        "to resume") from None
            if (stopped >= 0).any():
                progress.note(f"layer {name!r}: units {', '.join(str(u0 + i) for i in np.flatnonzero(stopped >= 0))} "
                              "hit a non-finite value while optimised; their images are the last finite ones")
            progress.advance(u1 - u0)
            u0 = u1
        if flat:
            more = f" and {len(flat) - 10} more" if len(flat) > 10 else ""
            redirected = self.layer_settings.get(name, self.settings).get("redirect_relu")
            progress.note(f"layer {name!r}: units {', '.join(map(str, flat[:10]))}{more} ({len(flat)} of "
                          f"{limit - done}) got no gradient at any step: their stored images are the starting noise, "
                          "not optimised; " + ("their gradient vanishes elsewhere than at a ReLU, which passes it on "
                                               "here" if redirected else "they are 0 where the objective reads them, "
                                               "as after a ReLU: redirected ReLU gradients (redirect_relu, on by "
                                               "default; --redo for a layer begun without them) move them"))
        if units == 0 or done >= units:
            write_optimized(self.store, name, slice(0, 0), {}, {**attrs, "units_done": units, "complete": True})


def _older_settings(have: Any, want: dict[str, Any]) -> dict[str, Any] | None:
    """A claim's settings, as it was optimised, where it predates settings this version added
    (`BEFORE`) and agrees with `want` on the rest; else None (same settings, or other ones)."""
    if not isinstance(have, dict) or set(BEFORE) <= set(have):
        return None
    filled = as_run(have)
    return filled if {**want, **{k: v for k, v in BEFORE.items() if k not in have}} == filled else None


def _difference(key: str, have: Any, want: Any) -> str:
    """One setting of a claim, as the run has it and as this call would: of a dict of settings
    (the regularizers), only the entries that differ."""
    if isinstance(have, dict) and isinstance(want, dict):
        keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        have = ", ".join(f"{k} {have.get(k, '-')}" for k in keys)
        want = ", ".join(f"{k} {want.get(k, '-')}" for k in keys)
    return f"{key} (run: {have}; now: {want})"
