"""What each unit does to the output: for every unit of a tapped layer, the mean change of
each class's logit and softmax probability when the unit is zeroed (ablated minus clean,
mean over ALL the run's images: no labels needed), and the units of the same layer whose
image maxima correlate most with it (stats/correlation.py), in one pass over the dataset.

The ablation is importance's (ablation.py: the network split at the layer, or replicated,
`units_per_pass` units zeroed per tail run); the clean forward of each chunk also gives the
image maxima the correlations need. Results are stored here (`write_effects`) and read back
with `Run.unit_effects(layer, kind)` and `Run.correlated_units(layer)` (results/effects.py).

The output layer (the Linear computing the logits) is ablated like any layer: zeroing unit c
sets logit c to 0, so its row of logit_delta is minus the mean logit c in column c and 0
elsewhere. The virtual 'softmax' layer has no module to zero and is refused; recurrent
layers are ablated at every step and in h_n (as importance), their '.cell' views are refused.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from sketchmine.data import MinerDataset
from sketchmine.device import as_device
from sketchmine.errors import SketchmineError, optional_whole_number, whole_number
from sketchmine.model.taps import SOFTMAX
from sketchmine.names import command, layer_arg
from sketchmine.passes.ablation import ABLATION, Replicate, ablated_batches
from sketchmine.results.effects import EFFECT_KEYS, logits_layer, not_ablatable, onnx_run
from sketchmine.results.run import Run, open_run
from sketchmine.stats.correlation import (BLOCK_UNITS, Correlated, check_maxima_memory, image_maxima, maxima_array,
                                          top_correlated)
from sketchmine.store import schema
from sketchmine.store.layer_results import write_layer_results
from sketchmine.store.access import check_run_writable
from sketchmine.store.lock import RunLock

__all__ = ["Correlated", "Effects", "EffectsPass", "ablation_effects", "check_ablatable", "check_run_ablatable", "torch_net",
           "unique", "unit_effects"]

DELTA = "ablated minus clean, mean over all images of the dataset (labels not used)"


@dataclass
class Effects:
    """logit_delta, prob_delta (units, classes) float64; maxima (images, units) float32: the
    clean image maxima (for the correlations); attrs: how they were computed."""

    logit_delta: np.ndarray
    prob_delta: np.ndarray
    maxima: np.ndarray
    attrs: dict[str, Any]


def check_ablatable(layer: str, net: nn.Module | None = None, run: Run | None = None) -> None:
    """Refuse, before any computation, a layer no unit of which can be zeroed: the virtual
    'softmax' output (given the run: naming the layer computing the logits), and (given the
    model) an LSTM's read-only '.cell' view."""
    if layer == SOFTMAX:
        target = logits_layer(run) if run is not None else None
        raise SketchmineError("layer 'softmax' is the model's output (virtual): it has no module to zero; its units "
                              "are the classes, ablate the layer that computes the logits instead"
                              + (f" ({command('--layers', layer_arg([target]))})" if target else ""))
    if net is not None:
        Replicate(net, layer)  # resolves the module and its ablation dims, or says why not


def check_run_ablatable(run: Run) -> None:
    """Refuse a run whose units cannot be ablated at all (mined from an ONNX file), before its
    model is loaded: a torch model given for it would only be refused for differing weights."""
    if onnx_run(run):
        raise SketchmineError(str(not_ablatable(run, "")))


def torch_net(run: Run, module: Any) -> nn.Module:
    """The loaded model as the torch module ablation runs, or why an ONNX model cannot be ablated."""
    if not isinstance(module, nn.Module):
        raise SketchmineError(f"run {run.path}: {module.path.name if hasattr(module, 'path') else 'this model'} runs in "
                              "ONNX Runtime, and ablation zeroes units in a torch model: an ONNX model cannot be "
                              "ablated; mine the torch model into a new run to compute effects and importance")
    return module


def ablation_net(run: Run, names: list[str], model: Any, weights: str | os.PathLike | None) -> nn.Module:
    """The torch model to ablate `names` of `run` in, every layer checked first: in the run,
    ablatable (not softmax, not an ONNX run), then found in the loaded model, and the run not
    being written by another process; so a refusal comes before any computation or write."""
    for name in names:
        run.layer_attrs(name)  # a layer the run does not have is refused with the run's layers
        check_ablatable(name, run=run)
    check_run_ablatable(run)
    RunLock(run.path).check_shareable()
    check_run_writable(run.path, "importance and effects store their results in it")  # refused before the ablation
    from sketchmine.passes import reload

    net = torch_net(run, reload.run_model(run, model, weights).module)
    for name in names:
        check_ablatable(name, net)
    return net


def skipped_images(run: Run) -> set[int]:
    """The images `mine --skip-bad-images` left out of the run as unreadable (attr `bad_images`):
    the ablation passes average over the run's images, as its statistics do."""
    return {int(b["index"]) for b in run.attrs.get("bad_images") or []}


def unique(names: list[str]) -> list[str]:
    """`names` without repeats, in order: a layer given twice is computed once."""
    return list(dict.fromkeys(names))


def ablation_effects(net: nn.Module, dataset: MinerDataset, layer: str, batch_size: int = 256,
                     device: str | torch.device = "cpu", units_per_pass: int | None = None,
                     known: Mapping[str, Any] | None = None, left_out: Collection[int] = (),
                     check_batch: bool = True) -> Effects:
    """Zero each unit of `layer` in turn over `dataset` (batched as ablation.py) and average
    the change of every class's logit and probability; keep the clean image maxima. known: the
    layer's attributes as the run recorded them (its layout); None finds them with one image.
    left_out: images the run skipped as unreadable (`skipped_images`), left out here too.
    check_batch: as `ablation_importance`'s."""
    check_ablatable(layer)
    device = torch.device(device)
    net = net.to(device)
    method: str | None = None
    groups: list[list[int]] = []
    logit_sum = prob_sum = torch.zeros(0, dtype=torch.float64)
    maxima = np.empty((0, 0), dtype=np.float32)
    n_images = 0
    # closed on a failure in this loop too, so the flags come back at once
    with contextlib.closing(ablated_batches(net, dataset, layer, batch_size, device, units_per_pass,
                                            known, left_out, check_batch)) as batches:
        for b in batches:
            if not n_images:  # the layer's width is known now: refused here when it cannot be held
                maxima = maxima_array(layer, len(dataset), b.act.shape[1])
                logit_sum = torch.zeros(b.act.shape[1], b.logits.shape[1], dtype=torch.float64)
                prob_sum = torch.zeros_like(logit_sum)
            maxima[n_images:n_images + len(b.x)] = image_maxima(b.act).cpu().numpy()
            groups, method = b.groups, b.method
            base = b.logits.double()
            base_p = torch.softmax(base, 1)
            for group, out in b.outputs():
                units = slice(group[0], group[-1] + 1)  # groups are runs of consecutive units
                logit_sum[units] += (out - base[None]).sum(1).cpu()
                prob_sum[units] += (torch.softmax(out, 2) - base_p[None]).sum(1).cpu()
            n_images += len(b.x)
    if not n_images:
        raise SketchmineError("the dataset is empty: no images to ablate over")
    return Effects(
        logit_delta=(logit_sum / n_images).numpy(), prob_delta=(prob_sum / n_images).numpy(),
        maxima=maxima[:n_images],
        attrs={"images": n_images, "classes": int(logit_sum.shape[1]),
               "method": method, "units_per_pass": len(groups[0]) if groups else 0,
               "ablation": ABLATION,
               "delta": DELTA})


def write_effects(run: Run, layer: str, effects: Effects, correlated: Correlated, lock: RunLock | None = None) -> None:
    """Store a layer's correlated units, then its effects (each group replacing an earlier one
    whole): layers/<layer>/{correlated, effects} (schema.CORRELATED_ARRAYS, EFFECT_ARRAYS).
    `lock`: the pass's shared hold on the run (RunLock.share)."""
    run.layer_attrs(layer)  # a layer the run does not have is refused with the run's layers
    write_layer_results(run.path, layer, {
        schema.CORRELATED: ({key: np.asarray(getattr(correlated, key), dtype=dtype)
                             for key, dtype in schema.CORRELATED_ARRAYS.items()}, dict(correlated.attrs)),
        schema.EFFECTS: ({key: np.asarray(getattr(effects, key), dtype=np.float64) for key in EFFECT_KEYS},
                         dict(effects.attrs))}, lock)


def unit_effects(run: Run | str | os.PathLike, layers: str | list[str], model: Any = None, data: Any = None,
                 *, weights: str | os.PathLike | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu", units_per_pass: int | None = None, correlated: int = 8,
                 block_units: int = BLOCK_UNITS) -> pd.DataFrame:
    """Compute and store, for each unit of `layers` (a name or a list) of a mined run, its
    effects on every class (logit and probability) and its `correlated` most correlated units;
    returns the (last) layer's probability effects as `Run.unit_effects` reads them back.

    model/data: as mined; None reloads them from the run's record (reload.py); the model's
    weights must be those the run was mined with. block_units bounds the correlation's memory
    (stats/correlation.py). Every layer is checked before any computation.
    """
    names = unique([layers] if isinstance(layers, str) else list(layers))
    stored = EffectsPass(run, names, model, data, weights=weights, batch_size=batch_size, device=device,
                         units_per_pass=units_per_pass, correlated=correlated, block_units=block_units)
    for _ in stored:
        pass
    return open_run(stored.run.path).unit_effects(names[-1])


class LayerPass:
    """A pass that computes each layer for minutes, then stores it: it holds the run shared from
    the moment it is made (`hold`: no writer takes the run whole meanwhile, RunLock.share) until
    its iteration ends, however it ends (or, never iterated, until it is dropped)."""

    lock: RunLock

    def hold(self, run: Run) -> None:
        self.lock = RunLock(run.path).share()

    def each(self, names: list[str], store: Callable[[str, bool], None]) -> Iterator[str]:
        """`store(name, check_batch)` for each layer in turn, yielding its name once stored; the
        model's batch check (`check_images_apart`) with the first layer only: it is the model's."""
        try:
            for i, name in enumerate(names):
                store(name, i == 0)
                yield name
        finally:
            self.lock.release()

    def __del__(self) -> None:
        if hasattr(self, "lock"):
            self.lock.release()


class EffectsPass(LayerPass):
    """`unit_effects`'s work: every argument checked (and the run opened, and every layer's maxima
    found to fit in memory) when it is made, then each layer's effects computed and stored as it
    is iterated, yielding the layer's name the moment it is stored (so the CLI can say on Ctrl-C
    which layers are)."""

    def __init__(self, run: Run | str | os.PathLike, names: list[str], model: Any = None, data: Any = None, *,
                 weights: str | os.PathLike | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu", units_per_pass: int | None = None, correlated: int = 8,
                 block_units: int = BLOCK_UNITS) -> None:
        batch_size, correlated, block_units = (whole_number(v, name) for name, v in (
            ("batch_size", batch_size), ("correlated", correlated), ("block_units", block_units)))  # numpy ints too
        units_per_pass = optional_whole_number(units_per_pass, "units_per_pass", "to size passes by memory")
        self.device = as_device(device)
        if not names:
            raise SketchmineError("no layer given; name the layers to ablate")
        self.run = run if isinstance(run, Run) else open_run(run)
        self.net = ablation_net(self.run, names, model, weights)
        from sketchmine.passes import reload

        self.ds = reload.run_dataset(self.run, data)
        for name in names:  # every layer's maxima fit (one layer's at a time), or nothing is computed
            check_maxima_memory(name, len(self.ds), self.run.layer_shape(name)[0])
        self.names, self.batch_size, self.units_per_pass = names, batch_size, units_per_pass
        self.correlated, self.block_units = correlated, block_units
        self.hold(self.run)

    def __iter__(self) -> Iterator[str]:
        return self.each(self.names, self._store)

    def _store(self, name: str, check_batch: bool) -> None:  # the layer's maxima go when it returns
        result = ablation_effects(self.net, self.ds, name, self.batch_size, self.device, self.units_per_pass,
                                  self.run.layer_attrs(name), skipped_images(self.run), check_batch)
        write_effects(self.run, name, result, top_correlated(result.maxima, self.correlated, self.block_units,
                                                             self.device), self.lock)
