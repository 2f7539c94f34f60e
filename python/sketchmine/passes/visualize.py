"""The second pass: for every top-k entry, the input patch under the unit's receptive field
and the deconvolution of that unit (none with method "none": an ONNX run's only pictures), written
into the run store.

Only the top-k images are read (reloaded from the dataset the run recorded). Units are processed in fixed
blocks (floor(batch_size / k) units, one forward and one backward each); a block's arrays are written, then
`units_done` is committed in the layer's attributes, so a killed pass resumes at a block boundary with the
same batches and ends identical to an uninterrupted one.

    layers/<name>/patches  uint8 (C, k, h, w, ch)  pixels as the model saw them (0 outside the image)
    layers/<name>/deconv   uint8 (C, k, h, w, ch)  128 + 127 · signal / max|signal| over the crop (not for "none")
    layers/<name>/boxes    int32 (C, k, 4)  receptive-field box (top, left, bottom, right), unclipped
    layers/<name>/inside   int32 (C, k, 4)  the part of the box inside the image; -1: empty slot
    attrs "visualized": method, patch_size, source_size, units_done, block_units, device, complete

Patches over `max_patch` px a side are resized (area) to fit: FC units' whole-image patches at 224 px take gigabytes.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine.data import MinerDataset
from sketchmine.device import as_device
from sketchmine.errors import (SketchmineError, SketchmineFailure, flag, layer_list, machine_fix, optional_whole_number,
                               whole_number)
from sketchmine.names import command, layer_arg
from sketchmine.model.backend import as_forward
from sketchmine.model.field_record import box_mask, clipped_boxes
from sketchmine.passes.deconv import METHODS, Deconvolver, shared_order
from sketchmine.passes.example_pictures import GROUPS, check_examples, needed_images, picture_examples
from sketchmine.passes.featvis_run import OptimizePass, check_options
from sketchmine.passes.images import ImageCache, fit, signal_to_uint8, to_hwc
from sketchmine.passes.reload import missing_images, run_dataset, run_model, run_preprocessing, softmax_mined_once
from sketchmine.passes.resumed import resumed_on
from sketchmine.passes.traces import write_traces
from sketchmine.passes.visual_plan import Plan, plan_of
from sketchmine.progress import Progress, Silent
from sketchmine.results.effects import onnx_run
from sketchmine.results.optimized import PICTURES_DEFAULTS, visualized_words
from sketchmine.results.run import Run, open_run
from sketchmine.results.unit_summary import pictures_current
from sketchmine.stats.ops import crop_patches
from sketchmine.store import schema
from sketchmine.store.runstore import RunLock, RunStore


def visualize(run: Run | str | os.PathLike, layers: list[str] | None = None, *, model: nn.Module | str | None = None,
              weights: str | os.PathLike | None = None, data: Any = None, method: str | None = None,
              batch_size: int = 64, device: str | torch.device = "cpu", max_patch: int = 128,
              max_units: int | None = None, redo: bool = False, progress: Progress | None = None,
              examples: str = "top", optimize: bool = False, optimize_method: str | None = None,
              optimize_steps: int | None = None, optimize_regularizers: str | dict[str, Any] | None = None) -> Run:
    """Crop the receptive-field patch and the deconvolution of every top-k entry of `layers`
    (default: all mined layers) into the run. Re-running an interrupted call resumes it.

    method: "deconvnet" (the default for a torch run), "guided", "gradient", or "none": patches
    only (the default, and the only method, for a run mined from an ONNX file, which needs no model).
    model/weights: the model the run was mined with (default: reloaded from the run's record);
    data: a moved ImageFolder root, or the dataset object for runs mined from one.
    layers: mined layer names, or one name (None: every mined layer).
    max_units: stop after the first N units of each layer (a later call without it goes on,
    finishing the block it stopped in first); with examples="all", their example pictures too.
    examples: "top" (the top-k only), or "all": also the bottom-k and the example images of
    each activation bin, each layer's sets written whole after its top-k (example_pictures.py).
    optimize: also store one feature visualisation image per unit (featvis_run.py; method
    "fourier" or "pixel", default "fourier"; steps default 256; regularizers as
    `feature_visualization` takes them, default "default"), resumable in blocks of units.
    """
    if method is not None and method not in (*METHODS, schema.PATCHES_ONLY):
        raise SketchmineError(f"unknown deconvolution method {method!r}; expected one of {', '.join(METHODS)}, or "
                              f"{schema.PATCHES_ONLY!r} for patches only")
    batch_size, max_patch = whole_number(batch_size, "batch_size"), whole_number(max_patch, "max_patch")
    max_units = optional_whole_number(max_units, "max_units", "for every unit")  # True would be stored as units_done
    redo, optimize = bool(flag(redo, "redo")), bool(flag(optimize, "optimize"))
    layers = layer_list(layers, "visualize", "for every mined layer")  # one name; a generator read once
    progress = progress or Silent()
    check_examples(examples)
    opt_method, opt_steps, opt_regs = check_options(optimize, optimize_method, optimize_steps, optimize_regularizers)
    run = run if isinstance(run, Run) else open_run(run)
    if not run.complete:
        raise SketchmineError(f"run {run.path} is still being mined ({run.images_done} images done); "
                              "finish it (re-run the same mine command) before visualizing")
    onnx = onnx_run(run)
    method = method or (schema.PATCHES_ONLY if onnx else PICTURES_DEFAULTS["method"])
    if onnx:
        _onnx_refusals(run, method, model, weights, examples, optimize)
    names = list(dict.fromkeys(run.check_layer(l) for l in layers)) if layers else run.layers  # each once
    device = as_device(device)
    ds = run_dataset(run, data)
    needed = np.unique(np.concatenate([np.zeros(0, np.int64)] + [run.topk(l)[1].ravel() for l in names]))
    needed = needed[needed >= 0]
    if examples == "all":
        needed = np.union1d(needed, needed_images(run, names))
    _check_present(ds, needed)
    # the model input's channels and size, from an image it saw: patches are stored like it
    # (a sequence sample, (T, C, H, W), is stored by its frames)
    pre = run_preprocessing(run)
    images = ImageCache(ds, pre)  # decoded once, shared by all layers
    sample = tuple(images.inputs([int(needed[0])])[0].shape) if len(needed) else (1, 1, 1)
    channels, image_hw = sample[-3], (sample[-2], sample[-1])

    def first() -> torch.Tensor:  # an image the run ranked, for the analysis a refusal may ask of the model
        return images.inputs([int(needed[0])])

    field_now = _field_now(run, None if onnx else model, None if onnx else weights, names, first)
    plans = [plan_of(run, name, image_hw, max_patch, field_now) for name in names]
    limit = {p.name: p.channels if max_units is None else min(p.channels, max_units) for p in plans}
    loaded = None if onnx else run_model(run, model, weights)
    # what the optimisation refuses, refused before anything below resets or writes
    opt = OptimizePass(run, loaded, names, limit, pre, sample, opt_method, opt_steps, opt_regs, device) \
        if optimize and loaded is not None else None
    net = None if loaded is None else loaded.module.to(device)
    if net is not None:
        softmax_mined_once(run, names, net, lambda: images.inputs([int(needed[0])]).to(device))
    deconv = None if net is None or method == schema.PATCHES_ONLY else \
        Deconvolver(net, method, layouts={n: run.layer_attrs(n) for n in names}, sample=sample)  # read as mined
    store = RunStore.open(run.path, mode="r+")
    lock = RunLock(store.path)
    lock.acquire()
    try:
        todo = {p.name: _prepare(store, p, run.k, channels, method, _block_units(p, batch_size, run.k), redo,
                                 device.type, progress) for p in plans}
        if examples != "all":
            for p in plans:
                stale_pictures(store, p.name, progress)
        if opt:
            opt.claim(store, batch_size, redo, progress)
        parts = [(limit[n], min(d, limit[n])) for n, (d, _) in todo.items()] + ([(opt.total, opt.done)] if opt else [])
        left = [(t, d) for t, d in parts if d < t]  # what an earlier call finished is no part of this one's progress
        progress.start(sum(t for t, _ in left), sum(d for _, d in left))
        for p in plans:
            done, layer_block = todo[p.name]
            _visualize_layer(store, run, p, done, layer_block, limit[p.name], images, deconv, batch_size, device,
                             progress)
            if examples == "all":
                channels_p = store.shape(schema.layer_array(p.name, "patches"))[-1]
                picture_examples(store, run, p, store.visual_state(p.name)[0], lambda q, i, yx, u0, ch=channels_p:
                                 _block(q, i, yx, u0, images, deconv, batch_size, device, ch),
                                 net, images, batch_size, device, layer_block, limit[p.name])
        if opt:
            opt.run_all(progress)
        if net is not None:  # an ONNX run has no time layers (docs/backends.md: images only)
            write_traces(store, run, names, net, ds, device)  # the report reads them, it runs no model
    finally:
        lock.release()
    return open_run(run.path)


def _field_now(run: Run, model: Any, weights: Any, names: list[str], first: Callable[[], torch.Tensor]
               ) -> Callable[[str], bool]:
    """Whether this version's field analysis of the run's model, at the run's input, gives a layer
    a field: asked only for a layer the run recorded none for, analysed once. A model that does not
    load or run answers no, and the refusal says what the run records."""
    fields: dict[str, Any] = {}

    def has(name: str) -> bool:
        if not fields:
            fields["*"] = None  # analysed: whatever comes of it, once
            try:
                forward = as_forward(run_model(run, model, weights).module)
                x = first()
                forward.shapes(names, x)  # the probe: which layers are tapped, and where their units lie
                fields.update(forward.fields(tuple(x.shape[1:]), Silent()))
            except (SketchmineError, RuntimeError, OSError, ValueError):
                pass
        return bool((fields.get(name) or {}).get("size"))
    return has


def _onnx_refusals(run: Run, method: str, model: Any, weights: Any, examples: str, optimize: bool) -> None:
    """What a run mined from an ONNX file cannot be visualized with: its patches need its recorded
    fields and images only; deconvolutions, optimised images and the bins' positions need a torch
    model's gradients or forward, and none matches an ONNX file's weights (docs/backends.md)."""
    why = (f"run {run.path} was mined from an ONNX file ({run.attrs.get('model')}), whose patches visualize crops "
           "without a model (ONNX Runtime gives no gradients, and no torch model matches the file's weights)")
    fix = "; mine the torch model into a new run for them"
    if method != schema.PATCHES_ONLY:
        raise SketchmineError(f"{why}: --method {method} deconvolves through a torch model; drop it (patches only, "
                              f"--method {schema.PATCHES_ONLY}){fix}")
    if model is not None or weights is not None:
        raise SketchmineError(f"{why}: drop the model and weights given")
    if optimize or examples != "top":
        raise SketchmineError(f"{why}: {'--optimize' if optimize else '--examples ' + examples} needs a torch "
                              f"model{fix}")


WHOLE_IMAGE_GROUPS = 8
"""Groups of `batch_size` entries per block of whole-image units: a larger block holds more
entries of each image, which then share its forward (`Deconvolver.shared`)."""


def _block_units(p: Plan, batch_size: int, k: int) -> int:
    """Units per block (the unit of resumption): one batch of entries for grid units, where
    each entry has its own window; WHOLE_IMAGE_GROUPS batches for whole-image units."""
    return max(1, (batch_size if p.grid else WHOLE_IMAGE_GROUPS * batch_size) // k)


def _prepare(store: RunStore, p: Plan, k: int, ch: int, method: str, block: int, redo: bool, device: str,
             progress: Progress) -> tuple[int, int]:
    """Create the layer's arrays (or check the existing ones match): (units done, block size).

    A resumed layer keeps the block size it was started with, so its batches (and thus
    every floating-point result) are the same as in an uninterrupted pass."""
    want = p.attrs(method, block, device)
    have, whole = store.visual_state(p.name)
    if have is not None and not redo and (whole or have.get("units_done", 0) > 0):
        keys = ("method", "patch_size", "source_size")
        if all(have.get(key) == want[key] for key in keys) and whole:
            _resumed_on(store, p.name, have, device, progress)
            return int(have.get("units_done", 0)), int(have["block_units"])
        if not whole:
            raise SketchmineError(f"layer {p.name!r} of {store.path} is damaged: its patch arrays are missing "
                                  f"({have.get('units_done')} units were done); pass --redo to make them again")
        raise SketchmineError(
            f"layer {p.name!r} of {store.path} was visualized with other settings ({have.get('method')}, patches "
            f"{have.get('patch_size')}); pass the same --method/--max-patch, or --redo to replace them")
    store.reset_visual(p.name, p.channels, k, p.size, ch, want)
    return 0, block


def _resumed_on(store: RunStore, name: str, have: dict[str, Any], kind: str, progress: Progress) -> None:
    """Record and say a layer's pictures resumed on another kind of device (passes/resumed.py)."""
    made = "patches" if have.get("method") == schema.PATCHES_ONLY else f"patches and {visualized_words(have)['name']}"
    stretches = resumed_on(name, have, kind, made, "the device rounds otherwise, so units from {done} on may differ "
                           "by a grey level from a pass on one device", progress)
    if stretches is not None:
        store.write_visual(name, slice(0, 0), {}, {**have, "devices": stretches})


def stale_pictures(store: RunStore, name: str, progress: Progress) -> None:
    """Say when the layer's bottom-k / bin pictures (`--examples all`) were made with other settings
    than its top-k pictures now (after a --redo): the report leaves them out, and this is how to
    make them again. They are not removed (they stay readable until a pass with --examples all
    replaces them)."""
    visualized = store.visual_state(name)[0]
    stale = {}
    for which, group in GROUPS.items():
        found = store.read_group(schema.layer_result(name, group), ())
        if found is not None and not pictures_current(found[1], visualized):
            stale[{"bottom": "bottom-k", "bins": "activation-bin"}.get(which, which)] = found[1]
    if stale:
        old = next(iter(stale.values()))
        settings = f"--method {visualized['method']} --max-patch {max(visualized['patch_size'])}"
        progress.note(f"layer {name!r}: its {' and '.join(stale)} pictures were made with {old.get('method')}, patches "
                      f"{old.get('patch_size')}, not as its top-k pictures now; the report leaves them out until "
                      f"`{command('sketchmine', 'visualize', store.path, '--layers', layer_arg([name]), '--examples', 'all')} {settings}` makes them again")


def _visualize_layer(store: RunStore, run: Run, p: Plan, done: int, block: int, limit: int, images: ImageCache,
                     deconv: Deconvolver | None, batch_size: int, device: torch.device, progress: Progress) -> None:
    visualized = dict(store.visual_state(p.name)[0] or {})
    channels = store.shape(schema.layer_array(p.name, "patches"))[-1]
    _, index, yx = run.topk(p.name)
    u0 = done  # a block boundary, the end, or where a call with max_units stopped
    while u0 < limit:
        u1 = min((u0 // block + 1) * block, limit)  # blocks stay at multiples of `block`
        out = _block(p, index[u0:u1], yx[u0:u1], u0, images, deconv, batch_size, device, channels)
        try:
            visualized.update(units_done=u1, complete=u1 == p.channels)
            store.write_visual(p.name, slice(u0, u1), out, visualized)  # the block's arrays first, then the commit
        except OSError as exc:
            raise SketchmineFailure(f"cannot write to {store.path}: {exc.strerror or exc}; the units done so far are "
                                    f"kept — {machine_fix(exc) or 'make room'} and re-run the same command to resume") from None
        progress.advance(u1 - u0)
        u0 = u1
    if p.channels == 0 or done >= p.channels:
        store.write_visual(p.name, slice(0, 0), {}, {**visualized, "units_done": p.channels, "complete": True})


def _block(p: Plan, index: np.ndarray, yx: np.ndarray, u0: int, images: ImageCache, deconv: Deconvolver | None,
           batch_size: int, device: torch.device, channels: int) -> dict[str, np.ndarray]:
    """Patches, deconvolutions and boxes of units [u0, u0 + len(index)); `channels` those of
    the stored pixels; no deconvolutions without a `deconv` (patches only).

    Grid units are taken as one group of entries (blocks of them are small). Whole-image units
    (FC, softmax, recurrent) share each image's forward (`Deconvolver.shared`), so their entries
    are taken in groups of `batch_size` that keep an image's entries together, each group
    loading only its own images (their blocks are larger: more entries per image)."""
    units, k = index.shape
    filled = index >= 0
    unit_of, slot_of = np.nonzero(filled)
    shown, at = index[filled], yx[filled]  # each entry's image and position
    local = _in_frame(p, at)  # grid positions within the entry's image (or frame)
    boxes = p.field.boxes(local).numpy()  # (M, 4); units without a grid: the whole image
    corners = boxes[:, :2]
    out = {"patches": np.zeros((units, k, *p.size, channels), dtype=np.uint8),
           **({} if deconv is None else {"deconv": np.full((units, k, *p.size, channels), 128, dtype=np.uint8)}),
           "boxes": np.full((units, k, 4), -1, dtype=np.int32), "inside": np.full((units, k, 4), -1, dtype=np.int32)}
    order = np.arange(len(shown)) if p.grid else shared_order(shown).numpy()
    group = len(shown) if p.grid else batch_size
    for s in range(0, len(shown), max(group, 1)):
        e = order[s:s + group]
        x, patches, deconvs = _entries(p, shown[e], at[e], local[e], corners[e], unit_of[e] + u0, images, deconv,
                                       batch_size, device)
        out["patches"][unit_of[e], slot_of[e]] = patches
        if deconvs is not None:
            out["deconv"][unit_of[e], slot_of[e]] = deconvs
        out["boxes"][unit_of[e], slot_of[e]] = boxes[e].astype(np.int32)
        out["inside"][unit_of[e], slot_of[e]] = clipped_boxes(torch.from_numpy(boxes[e]), tuple(x.shape[-2:])).numpy()
    return out


def _entries(p: Plan, shown: np.ndarray, yx: np.ndarray, local: np.ndarray, corners: np.ndarray,
             units: np.ndarray, images: ImageCache, deconv: Deconvolver | None, batch_size: int, device: torch.device
             ) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """The loaded images, and the (n, h, w, ch) uint8 patches and deconvolution crops of n
    entries (image `shown`, unit, position)."""
    uniq, inverse = np.unique(shown, return_inverse=True)
    x = images.inputs(uniq.tolist()).to(device)
    inv = torch.from_numpy(inverse.astype(np.int64).reshape(-1)).to(device)
    corners_t = torch.from_numpy(corners).to(device)
    frames, frame_of = _frames(x, inv, p, yx)
    pixels, _ = _frames(images.pixels(uniq.tolist()).to(device), inv, p, yx)
    crop = crop_patches(pixels, frame_of, corners_t, *p.source)
    if p.spans is not None:  # boxes smaller than the largest: the rest of the crop is no part of them
        crop = crop * box_mask(p.field.boxes(local).to(crop.device), *p.source)
    patches = to_hwc(fit(crop, p.size)).cpu().numpy()
    if deconv is None:
        return x, patches, None
    deconvs = np.empty_like(patches)
    entry_yx = torch.from_numpy(local.astype(np.int64))
    for s in range(0, len(shown), batch_size):
        j = slice(s, s + batch_size)
        units_j = torch.from_numpy(units[j])
        if p.grid:  # each unit on its own receptive field only
            if x.ndim == 5:  # a frame's conv units: windows of that frame, each a one-step sequence
                crop = deconv.field_crops(frames, frame_of[j], p.name, units_j, entry_yx[j], p.field, steps=True)
            else:
                crop = deconv.field_crops(x, inv[j], p.name, units_j, entry_yx[j], p.field)
        else:
            sig = deconv.shared(x, inv[j].cpu(), p.name, units_j, entry_yx[j])
            if sig.ndim == 5:  # a sequence: the signal on every step's frame, summed onto the image plane
                sig = sig.sum(dim=1)
            crop = crop_patches(sig, torch.arange(sig.shape[0], device=sig.device), corners_t[j], *p.source)
        deconvs[j] = to_hwc(signal_to_uint8(fit(crop, p.size))).cpu().numpy()
    return x, patches, deconvs


def _frames(x: torch.Tensor, inv: torch.Tensor, p: Plan, yx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The images patches are cut from, and each entry's index into them. Plain inputs: the
    loaded images. Sequences (B, T, C, H, W): each entry's frame — the drawing at the step the
    unit peaked for layers with a time position, else the last (the whole drawing)."""
    if x.ndim != 5:
        return x, inv
    last = x.shape[1] - 1
    if p.frame_h:
        steps = torch.from_numpy(yx[:, 0].astype(np.int64) // p.frame_h)
    elif p.timed or p.frame_w:  # a line of steps, or of frames of frame_w positions each
        steps = torch.from_numpy(yx[:, 1].astype(np.int64) // max(p.frame_w, 1))
    else:
        steps = torch.full((len(inv),), last, dtype=torch.long)
    return x[inv, steps.clamp(0, last).to(x.device)], torch.arange(len(inv), device=x.device)


def _in_frame(p: Plan, yx: np.ndarray) -> np.ndarray:
    """Entries' grid positions within their own frame (time-distributed convs stack the frames
    along y); unchanged for every other layer."""
    if not p.frame_h:
        return yx
    return np.stack([yx[:, 0] % p.frame_h, yx[:, 1]], axis=1).astype(yx.dtype)


def _check_present(ds: MinerDataset, needed: np.ndarray) -> None:
    missing = missing_images(ds, needed)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SketchmineError(f"{len(missing)} top-k images are missing from the dataset root: "
                              f"{', '.join(missing[:5])}{more}; pass --data DIR (data=) if the dataset moved")


def patches_of(run: Run, layer: str, unit: int) -> dict[str, np.ndarray]:
    """One unit's stored patches, deconvolutions (none for patches only) and boxes (for reports and notebooks)."""
    keys = schema.visual_arrays((run.layer_attrs(layer).get(schema.VISUALIZED) or {}).get("method"))
    unit = run.visualized_unit(layer, unit, keys)
    return {key: run.layer_array(layer, key, slice(unit, unit + 1))[0] for key in keys}

