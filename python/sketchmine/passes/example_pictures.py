"""Pictures of a unit's other examples (issue 16): the receptive-field patches and
deconvolutions of its bottom-k images (lucid's negative view) and of the example images of
each activation bin, so a unit page shows every level of its distribution, not only the top.

Opt-in (`visualize(..., examples="all")`, `sketchmine visualize --examples all`): it costs
one more visualize pass per set (bottom-k: as many entries as the top-k; bins: bins × m per
unit) plus, for the bins, one forward pass over their images to find each entry's position.

    layers/<name>/bottom_pictures/{patches, deconv, boxes, inside}  as the top-k's, (U, k, …)
    layers/<name>/bin_pictures/{patches, deconv, boxes, inside}     (U, bins · m, …), entry
        b · m + j is image quantile_examples[c, b, j]; yx (U, bins · m, 2) its position
    attrs: method, patch_size, set, units_done (U), complete (each group is written whole:
        write_result)

U: the layer's first U units, all C of them unless visualize's `max_units` stopped short (a
later call without it makes the groups again, whole).

Positions: the bottom-k carry theirs (like the top-k). A bin example's is found as the top-k
defines it: the layer's output for that image (the same taps as mining), the unit's maximum
ignoring NaN at its first flat position (`ops.spatial_max_reference`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine.errors import SketchmineError
from sketchmine.model.modes import eval_mode, input_dtype
from sketchmine.model.taps import Taps
from sketchmine.passes.images import ImageCache
from sketchmine.results.run import Run
from sketchmine.stats.ops import spatial_max_reference
from sketchmine.stats.topk import flat_to_yx
from sketchmine.store.runstore import RunStore
from sketchmine.store import schema
from sketchmine.store.schema import PICTURE_GROUPS as GROUPS

EXAMPLES = ("top", "all")
"""visualize's `examples`: the top-k only (default), or also the bottom-k and the bin examples."""


def check_examples(examples: str) -> str:
    if examples not in EXAMPLES:
        raise SketchmineError(f"examples must be one of {', '.join(map(repr, EXAMPLES))}, got {examples!r}")
    return examples


def example_sets(run: Run, name: str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{"bottom": (index (C, k), yx (C, k, 2)), "bins": (index (C, bins·m), None: positions to
    find)} from the run's readers; a SketchmineError when the run has neither (mined before
    the distribution sketch)."""
    try:
        _, bottom, yx = run.bottomk(name)
        bins = np.asarray(run.quantile_examples(name))
    except (SketchmineError, AttributeError) as exc:
        raise SketchmineError(f"layer {name!r} of {run.path} has no bottom-k or bin examples to picture ({exc}); "
                              "mine the run again into a new --out with --distributions, or visualize "
                              "with --examples top") from None
    return {"bottom": (np.asarray(bottom), np.asarray(yx)), "bins": (bins.reshape(bins.shape[0], -1), None)}


def positions(net: nn.Module, name: str, shape: tuple[int, ...], index: np.ndarray, images: ImageCache,
              batch: int, device: torch.device, known: Mapping[str, Any] | None = None) -> np.ndarray:
    """(U, n, 2) int32 position of unit c's maximum on image index[c, j], as the top-k records
    it (-1: empty slot, or a layer without a grid). `known`: the layer's recorded attributes,
    read as mining read it (a time-first layer's batch of exactly T images is not (N, T, F))."""
    spatial = tuple(shape[1:])
    if not spatial:
        return np.full((*index.shape, 2), -1, dtype=np.int32)
    uniq = np.unique(index[index >= 0])
    units = index.shape[0]
    pos = np.full((len(uniq), units), -1, dtype=np.int64)
    got: list[torch.Tensor] = []
    dtype = input_dtype(net)  # a half model refuses a float32 input
    # positions taken inside the hook: an in-place op after the layer (ReLU) changes its output
    with eval_mode(net), torch.no_grad(), \
            Taps(net, [name], lambda _, t: got.append(spatial_max_reference(t.detach())[1].cpu()),
                 known={name: known} if known else None):
        for s in range(0, len(uniq), batch):
            got.clear()
            net(images.inputs(uniq[s:s + batch].tolist()).to(device, dtype))
            if len(got) != 1:
                raise SketchmineError(f"layer {name!r} was not called exactly once")
            pos[s:s + batch] = got[0][:, :units].numpy()
    row = np.searchsorted(uniq, np.where(index >= 0, index, uniq[0] if len(uniq) else 0))
    flat = np.where(index >= 0, pos[row, np.arange(units)[:, None]] if len(uniq) else -1, -1)
    return flat_to_yx(flat, index, spatial).astype(np.int32)


def picture_examples(store: RunStore, run: Run, plan: Any, attrs: dict[str, Any], pictures: Any, net: nn.Module,
                     images: ImageCache, batch_size: int, device: torch.device, block: int,
                     limit: int | None = None) -> None:
    """Write the bottom-k and bin pictures of the first `limit` units (None: all) of one layer
    (`plan`, `attrs`: visualize's plan and `visualized` attributes; `pictures(plan, index, yx,
    u0)`: its entry → arrays function), a block of `block` units at a time, each set's group
    committed whole at its end."""
    for which, (index, yx) in example_sets(run, plan.name).items():
        index = index[:limit]
        if yx is None:
            yx = positions(net, plan.name, run.layer_shape(plan.name), index, images, batch_size, device,
                           run.layer_attrs(plan.name))
        yx = yx[:limit]
        keys = schema.visual_arrays(attrs["method"])  # patches only: no deconv
        parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        for u0 in range(0, index.shape[0], block):
            out = pictures(plan, index[u0:u0 + block], yx[u0:u0 + block], u0)
            for key in keys:
                parts[key].append(out[key])
        arrays = {key: np.concatenate(v) if v else np.zeros((0,), np.uint8) for key, v in parts.items()}
        if which == "bins":
            arrays["yx"] = yx
        store.write_result(plan.name, GROUPS[which], arrays,
                           {"method": attrs["method"], "patch_size": attrs["patch_size"], "set": which,
                            "units_done": int(index.shape[0])})


def needed_images(run: Run, names: list[str]) -> np.ndarray:
    """The images the bottom-k and bin examples of `names` show (to check they are present)."""
    found = [s[0].ravel() for n in names for s in example_sets(run, n).values()]
    out = np.unique(np.concatenate([np.zeros(0, np.int64), *found]))
    return out[out >= 0]
