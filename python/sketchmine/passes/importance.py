"""Which units matter for the label: ablation importance per unit of a tapped layer, for a
mined run, stored in it and read back.

For every unit (a whole channel, or a recurrent hidden unit at every step and in h_n) of one layer:
the drop in the correct class's probability and in accuracy when the unit is zeroed,
over the run's dataset, plus the unit's mean activation (its per-image maximum over
positions, the statistic the top-k ranks) on correctly and wrongly predicted images.
The ablation itself (batched: network split at the layer, or replicated) is ablation.py;
results are stored here (`write_importance`) and read back by importance_store.py (below run.py);
the console table of them is console.importance_table, the command cli.main (`sketchmine importance`).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch

from sketchmine.data import MinerDataset
from sketchmine.device import as_device
from sketchmine.errors import SketchmineError, optional_whole_number, whole_number
from sketchmine.passes.ablation import Importance, ablation_importance
from sketchmine.passes.effects import LayerPass, ablation_net, skipped_images, unique
from sketchmine.results.importance_store import COLUMNS, has_importance, read_importance
from sketchmine.results.run import Run, open_run
from sketchmine.store import schema
from sketchmine.store.layer_results import write_layer_results
from sketchmine.store.lock import RunLock

__all__ = ["COLUMNS", "Importance", "ImportancePass", "ablation_importance", "has_importance",
           "read_importance", "unit_importance", "write_importance"]


def write_importance(run: Run, layer: str, result: Importance, lock: RunLock | None = None) -> None:
    """layers/<layer>/importance/<column> arrays plus attrs; replaces an earlier result as a
    unit (store.layer_results, RunStore.write_result): an interrupted write leaves the earlier
    result, or none. `lock`: the pass's shared hold on the run (RunLock.share)."""
    run.layer_attrs(layer)  # a layer the run does not have is refused with the run's layers
    write_layer_results(run.path, layer, {schema.IMPORTANCE: (
        {col: np.asarray(getattr(result, col), dtype=np.float64) for col in COLUMNS}, dict(result.attrs))}, lock)


# ---- run API ------------------------------------------------------------------------------
def _labels(run: Run, ds: MinerDataset) -> np.ndarray:
    labels = ds.labels()
    labels = run.labels if labels is None else np.asarray(labels)
    classes = int(run.attrs.get("num_classes") or 0)
    mined = np.ones(len(labels), dtype=bool)  # the images the run skipped as unreadable need none (run.labels: -1)
    mined[[i for i in skipped_images(run) if i < len(labels)]] = False
    if len(labels) != len(ds) or (labels[mined] < 0).any() or not classes or (labels[mined] >= classes).any():
        raise SketchmineError(f"run {run.path}: the dataset has no class label for every image (labels 0..{classes - 1} "
                              "expected); ablation importance measures the correct class, so it needs a labelled dataset")
    return labels


def unit_importance(run: Run | str | os.PathLike, layer: str | list[str], model: Any = None, data: Any = None,
                    *, weights: str | os.PathLike | None = None, batch_size: int = 256,
                    device: str | torch.device = "cpu", units_per_pass: int | None = None,
                    dataset: Any = None) -> pd.DataFrame:
    """Compute and store per-unit ablation importance of `layer` (or each of a list) of a
    mined run; returns the (last) layer's table, as `Run.unit_importance` reads it back.

    model/data: as mined; None reloads them from the run's record (reload.py). The
    model's weights must be those the run was mined with. `data` as in `visualize` and
    `unit_effects`; `dataset=` is accepted too, so calls written for it keep working.
    """
    if dataset is not None:
        if data is not None:
            raise SketchmineError("unit_importance got both data= and dataset= (one name of one argument); pass data=")
        data = dataset
    layers = unique([layer] if isinstance(layer, str) else list(layer))
    stored = ImportancePass(run, layers, model, data, weights=weights, batch_size=batch_size, device=device,
                              units_per_pass=units_per_pass)
    for _ in stored:
        pass
    return open_run(stored.run.path).unit_importance(layers[-1])


class ImportancePass(LayerPass):
    """`unit_importance`'s work: every argument checked (and the run opened) when it is made, then
    each layer's importance computed and stored as it is iterated, yielding the layer's name the
    moment it is stored (so the CLI can say on Ctrl-C which layers are)."""

    def __init__(self, run: Run | str | os.PathLike, layers: list[str], model: Any = None, data: Any = None, *,
                 weights: str | os.PathLike | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu", units_per_pass: int | None = None) -> None:
        units_per_pass = optional_whole_number(units_per_pass, "units_per_pass", "to size passes by memory")
        batch_size = whole_number(batch_size, "batch_size")  # a float: a DataLoader error; numpy ints taken
        self.device = as_device(device)
        if not layers:
            raise SketchmineError("no layer given; name the layers to ablate")
        self.run = run if isinstance(run, Run) else open_run(run)
        self.net = ablation_net(self.run, layers, model, weights)  # every layer checked before any computation
        self.hold(self.run)
        from sketchmine.passes import reload

        self.ds = reload.run_dataset(self.run, data)
        self.labels = _labels(self.run, self.ds)
        self.layers, self.batch_size, self.units_per_pass = layers, batch_size, units_per_pass

    def __iter__(self) -> Iterator[str]:
        return self.each(self.layers, self._store)

    def _store(self, name: str, check_batch: bool) -> None:
        result = ablation_importance(self.net, self.ds, name, self.labels, self.batch_size, self.device,
                                     self.units_per_pass, self.run.layer_attrs(name), skipped_images(self.run),
                                     check_batch)
        write_importance(self.run, name, result, self.lock)
