"""The streaming pass, orchestrated: `mine` resolves the model, dataset, layers and options,
opens (or resumes) the run store, and hands the batch loop (loop.py) to the accumulators.

One pass over the dataset in its stable order; every `flush_every` batches every
accumulator's state is checkpointed so that re-running the same call resumes and ends
identical to an uninterrupted run (the top-k order is total, so results do not depend on
where the pass was cut, nor on batch size).
"""
from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine import __version__
from sketchmine.data import (ArrayDataset, ImageFolderDataset, MinerDataset, Preprocessing, as_miner_dataset, as_size,
                             compute_mean_std, first_readable, parse_size, sequences)
from sketchmine.data.batchprep import choose
from sketchmine.data.preprocess import preset_names
from sketchmine.device import as_device
from sketchmine.errors import SketchmineError, layer_list
from sketchmine.mining import distributed
from sketchmine.mining.channels import accepted_channels, channels_stated
from sketchmine.mining.checks import (DRAWINGS, check_classes, check_layouts, check_readable, check_resumable,
                                     check_sketch_size, note_dead_units, note_followers,
                                     note_left_out, preprocessing_key)
from sketchmine.mining.loop import check_labels, run_pass
from sketchmine.mining.memory import one_image
from sketchmine.mining.options import LoadOptions, SpeedOptions, check_counts, check_flags
from sketchmine.model.backend import (MODEL_SWITCHES, algorithm_of, input_channels, model_switches,
                                      recorded_weights, weights_hash_aside)
from sketchmine.model.forward import TorchForward, as_forward, layer_field, probe
from sketchmine.model.graph import shared_traces
from sketchmine.model.models import (LoadedModel, guessed_normalisation, is_model_path, load_model,
                                     preprocessing_for)
from sketchmine.model.modes import eval_mode, input_dtype, memory_format
from sketchmine.model.output_softmax import mark_probabilities
from sketchmine.model.pretrained import is_weights_name
from sketchmine.model.taps import SOFTMAX, storable
from sketchmine.progress import Progress, Silent
from sketchmine.results.run import Run
from sketchmine.store.lock import enclosing_run, out_path
from sketchmine.store.runstore import RunLock, RunStore, check_new_out, is_run, root_attrs_guessed
from sketchmine.store.schema import DEVICE, LAYER_NAMES, PREPROCESS


def _model_spec(model: nn.Module | LoadedModel | str, weights: str | os.PathLike | None, seed: int | None = None) -> dict[str, Any]:
    """How a later pass (visualize, importance) can load the model again: the spec string
    and weights file as absolute paths, or None for an in-memory module (it must be passed);
    the seed of a randomly initialised model."""
    if isinstance(model, (nn.Module, LoadedModel)):  # in memory: later passes are given the model
        return {"spec": None, "weights": None}
    spec = str(model)
    if is_model_path(spec):  # a name ("demo", "alexnet") stays a name, whatever the working directory holds
        spec = str(Path(spec).resolve())
    weights_file = weights is not None and not is_weights_name(str(weights))  # else a torchvision weight name
    record = {"spec": spec, "weights": str(Path(weights).resolve()) if weights_file else (str(weights) if weights else None)}
    return record if seed is None else {**record, "seed": int(seed)}


def _resolve_preprocessing(loaded: LoadedModel, preprocessing: str | Preprocessing,
                           image_size: Any) -> tuple[Preprocessing, bool]:
    """`mine`'s preprocessing= and image_size= as one Preprocessing, and whether its preset was
    chosen (anything but "auto"); see `data.as_miner_dataset` for how every dataset kind takes it."""
    if isinstance(preprocessing, str):
        return preprocessing_for(loaded, preprocessing, image_size), preprocessing != "auto"
    if not isinstance(preprocessing, Preprocessing):
        raise SketchmineError(f"preprocessing must be a preset name ({preset_names()}) or a "
                              f"Preprocessing, got {type(preprocessing).__name__} {preprocessing!r}")
    size = preprocessing.size or (parse_size(image_size, "image_size")[1] if image_size is not None else None)
    channels = input_channels(loaded.module, preprocessing.channels, size)  # the Preprocessing's when it cannot tell
    if preprocessing.channels != channels:
        raise SketchmineError(f"the Preprocessing passed makes {preprocessing.channels}-channel input but model "
                              f"{loaded.model_id} takes {channels} channels")
    if image_size is not None:
        size = as_size(image_size, "image_size", preprocessing.channels)
        if preprocessing.size is not None and tuple(preprocessing.size) != size:
            raise SketchmineError(f"image_size {size} conflicts with the size {tuple(preprocessing.size)} of the "
                                  "Preprocessing passed; give one of them")
        preprocessing = dataclasses.replace(preprocessing, size=size)
    return preprocessing, True


def _versions() -> dict[str, str]:
    from importlib.metadata import version  # the store alone imports zarr

    return {"sketchmine": __version__, "torch": torch.__version__, "zarr": version("zarr"),
            "numpy": np.__version__, "python": platform.python_version()}


def _as_sequences(ds: MinerDataset, loaded: LoadedModel, steps: int | None, ink: str) -> MinerDataset:
    """`ds` as progressive drawings when `steps` asks for them, or, with steps=None, when the
    model was trained on them (its recorded steps) and `ds` holds images; else `ds` unchanged."""
    recorded = loaded.sequence or {}
    sequences.check_ink(ink)
    if isinstance(ds, sequences.SequenceDataset):  # drawings already: steps and ink are checked against its own
        return sequences.progressive(ds, ds.steps if steps is None else steps, ink)
    if steps is None and (not recorded or not isinstance(ds, (ArrayDataset, ImageFolderDataset))):
        if ink != "auto":
            why = ("no steps given, and the model records none" if not recorded else
                   f"a {type(ds).__name__} is used as it is: drawings are made from an ArrayDataset or an image folder")
            raise SketchmineError(f"ink={ink!r} applies to progressive drawings, and none are made here ({why}); "
                                  "pass steps=T (--steps T) or leave ink='auto'")
        if recorded and len(shape := tuple(first_readable(ds)[1].shape)) == 3:
            raise SketchmineError(
                f"model {loaded.model_id} was trained on progressive drawings of {recorded.get('steps')} steps, "
                f"(T, C, H, W) a sample, and the {type(ds).__name__} given holds single images {shape}: pass an "
                "ArrayDataset or an image folder (drawn for it), or a sketchmine.SequenceDataset of them")
        return ds  # the caller's own dataset of sequences
    if steps is None:
        steps = sequences.recorded_steps(recorded, f"model {loaded.model_id}'s training")
    return sequences.progressive(ds, steps, ink)


@shared_traces()  # one torch.fx graph for the input channels, the fields and the notes of a call
def mine(
    model: nn.Module | LoadedModel | str,
    dataset: Any,
    layers: list[str] | None = None,
    k: int = 9,
    out: str | os.PathLike = "run.zarr",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    *,
    weights: str | os.PathLike | None = None,
    preprocessing: str | Preprocessing = "auto",
    image_size: int | tuple[int, ...] | None = None,
    num_workers: int = 0,
    flush_every: int = 50,
    skip_bad_images: bool = False,
    progress: Progress | None = None,
    logits: bool = True,
    channels_last: bool = False,
    autocast: str | None = None,
    compile: bool = False,
    prefetch_factor: int | None = None,
    pin_memory: bool | None = None,
    overlap_flushes: bool = True,
    steps: int | None = None,
    ink: str = "auto",
    seed: int | None = None,
    distributions: bool | None = None,
    preprocess: str | None = None,
) -> Run:
    """Stream `dataset` through `model` once and keep the top-k images of every unit.

    model: nn.Module, torchvision name, 'demo', checkpoint path, or .onnx file (ONNX Runtime). A module
    stays on `device` (as `module.to(device)` leaves it); each submodule's train/eval flag is given back.
    dataset: torch Dataset of (image, label), an ImageFolder directory, or a sketchmine dataset.
    preprocessing ("auto": the model's recorded normalisation, else ImageNet's; "model",
    "imagenet", "dataset", "none", "pixels" (0-255 values), or a Preprocessing) and image_size (int, (H, W) or (C, H, W))
    resolve to one Preprocessing, which is what the model sees and what the run records, for
    every dataset kind (data.as_miner_dataset): a folder is read with it; a sketchmine dataset
    built without one (animal_shape()) takes it; one built with its own keeps it, and a chosen
    preset or size that differs is an error; a torch Dataset's float tensors are used as they are
    under "auto" (resized when image_size is given), its uint8 tensors are pixels and get the
    resolved preprocessing, and a chosen preset is applied to them as pixels in [0, 1]
    (data.torchdata). Output i of the model is scored against class i (mining/checks.py).
    layers: qualified module names, or one name (None = every conv, linear and softmax). Re-running on an
    unfinished `out` resumes. Under torch.distributed (or torchrun) each rank mines a shard and
    rank 0 writes the store (see distributed.py).
    Opt-in speed options (torch models only, but logits=False): logits=False ends each forward pass
    after the deepest tapped layer (no logits, predictions or accuracy; not with the softmax layer;
    an ONNX graph runs whole and its logits are dropped: a model of other classes than the dataset's);
    channels_last=True runs model and batches in channels-last memory format; autocast="bf16"
    or "fp16" runs the forward under torch.autocast (activations are cast to float32 for top-k);
    compile=True runs each forward through torch.compile (see forward.TorchForward._open_compiled).
    Loading: num_workers DataLoader processes, each `prefetch_factor` batches ahead (workers
    only; torch's default 2); pin_memory (None: pinned when the device is CUDA).
    overlap_flushes=False writes each periodic checkpoint in the loop instead of on a
    background thread while the next batches compute (the default; same store either way).
    Sequences (CNN + recurrent models): steps=T shows each image to the model as a progressive
    drawing of T frames (sequences.py; `ink` says which pixels are ink: "light" on black,
    "dark" on white, or "auto" per image); None takes the steps a model was trained with
    when it records them (the embedded 'demo-gru'), else single images.
    seed: how a model named without weights (a torchvision name, 'sketchnet') is initialised
    (None: 0), recorded in the run so later passes rebuild the same random weights; refused
    for any other model. weights: refused for a model that carries its own (module, checkpoint,
    embedded). ink: refused unless drawings are made (steps, or a model trained on them).
    k larger than the dataset is clamped to its size (said once).
    distributions=True also keeps each unit's whole distribution (exact histogram, quantile sketch,
    example images per activation bin, bottom-k; Run.histogram, .quantiles, .quantile_examples,
    .bottomk). Opt-in because on a small network they cost as much as the rest of `mine` does: they
    add 5-8 % to AlexNet's forward at 768 images on a 2-core CPU, at most about 3 % to VGG-19's
    (benchmarks/RESULTS.md, sessions 20 and 22), where the rest of `mine` takes 4-6 % and 1.6 %
    (sessions 25-26; 3.6 % on AlexNet at 4,096 images). None: the run's setting
    on resume, else off. Recorded, and a resume must agree. The top-k, class statistics, mean and
    firing density are always kept.
    preprocess: "device" makes each batch model input in one batched op on `device` (stored
    uint8 pixels copied there; data/batchprep.py), "cpu" each image in the loader; None: the
    run's on resume, else "device" for arrays and image folders, "cpu" for other datasets.
    Same rule either way (equal on the CPU); recorded, and a resume must agree.
    """
    check_counts(k=k, batch_size=batch_size, flush_every=flush_every, num_workers=num_workers)
    check_flags(skip_bad_images=skip_bad_images, logits=logits, channels_last=channels_last, compile=compile,
                pin_memory=pin_memory, overlap_flushes=overlap_flushes, distributions=distributions)
    k, batch_size, flush_every, num_workers = int(k), int(batch_size), int(flush_every), int(num_workers)  # numpy ints
    team, device = distributed.team(as_device(device))  # one process unless torch.distributed says otherwise
    progress = team.progress(progress or Silent())
    loaded = load_model(model, weights, seed=seed)
    if loaded.random_init:
        progress.note(f"{loaded.model_id} has random weights (initialised from seed {seed or 0}; no --weights given): "
                      "its units show what an untrained network responds to")
    net, model_id = loaded.module, loaded.model_id
    forward = as_forward(net)
    hashed_with = team.on_writer(lambda: algorithm_of(recorded_weights(root_attrs_guessed(out))))  # sha256: older runs
    hashed = weights_hash_aside(forward, hashed_with)  # once; again below only for a run put at `out` meanwhile
    stated = channels_stated(dataset, preprocessing, image_size)  # else a conv-less model's are tried on an image
    preprocessing, chosen = _resolve_preprocessing(loaded, preprocessing, image_size)
    ds = _as_sequences(as_miner_dataset(dataset, preprocessing, chosen=chosen), loaded, steps, ink)
    ds = accepted_channels(forward, net, ds, stated, progress)
    implicit = not (isinstance(dataset, MinerDataset) and dataset.preprocessing_explicit)  # not the dataset's own
    # said once the run is open: a refusal before it stays the one line on stderr
    guessed = implicit and guessed_normalisation(loaded, ds.preprocessing, chosen)
    for said in (ds.skipped_note(), ds.input_note()):
        if said:  # what a folder's listing left out; how "auto" took a torch Dataset
            progress.note(said)
    if len(ds) == 0:
        shown = (d := ds.describe()).get("root") or d.get("name") or d.get("type") or type(ds).__name__
        raise SketchmineError(f"the dataset ({shown}) is empty: mine needs at least one image")
    if k > len(ds):
        progress.note(f"k={k} is more than the {len(ds)} images of the dataset: keeping k={len(ds)}")
        k = len(ds)
    layers = layer_list(layers, "mine", "for every conv, linear and softmax layer")  # a generator read once
    names = storable(forward.resolve_layers(layers))  # each a folder of the run, whatever the backend
    if not logits and layers is None:  # the default layers without the virtual softmax (it needs the logits)
        names = [n for n in names if n != SOFTMAX]
    load = LoadOptions.checked(batch_size, num_workers, prefetch_factor, pin_memory, device)
    speed = SpeedOptions.checked(torch_model=isinstance(forward, TorchForward), logits=logits,
                                 softmax_mined=SOFTMAX in names, channels_last=channels_last, autocast=autocast,
                                 compile=compile, overlap_flushes=overlap_flushes)
    if channels_last and not any(p.ndim == 4 for p in net.parameters()):  # recorded, and asked again on resume
        raise SketchmineError(f"channels_last (--channels-last) lays out 4-D convolution weights; {model_id} has none, "
                              "so it would change nothing: leave it out")
    out = out_path(out)  # a link loop, a dangling link, the current folder: refused by name, nothing created
    if (outer := enclosing_run(out, itself=False)) is not None:  # Zarr readers of the outer run would list the new run as one of its groups
        raise SketchmineError(f"out {out} is inside the run {outer}; choose a folder outside any run")
    team.on_writer(lambda: check_new_out(out), share=False)  # a foreign folder: refused before anything is made
    existing = team.writes and is_run(out)  # only rank 0 reads or writes the store
    store = RunStore.open(out, mode="r+") if existing else None
    pre = ds.preprocessing
    # what a resumed run recorded (runs made before the records: per image, without distributions),
    # from rank 0 to every rank; a new run: the defaults
    recorded, recorded_distributions, weights_algorithm = team.on_writer(
        lambda: (store.attrs.get(PREPROCESS, "cpu"), bool(store.attrs.get("distributions", False)),
                 algorithm_of(recorded_weights(store.attrs))) if store else (None, False, None))
    if distributions is None:
        distributions = recorded_distributions
    check_sketch_size(len(ds), bool(distributions))
    load = dataclasses.replace(load, preprocess=choose(preprocess, ds, recorded))
    _dataset_normalisation(ds, store, load, progress)
    weights_digest = hashed if weights_algorithm == hashed_with else weights_hash_aside(forward, weights_algorithm)
    drawn = ds.drawn() if isinstance(ds, sequences.SequenceDataset) else None
    want = {
        "model": model_id,
        "weights_hash": None,  # weights_digest(): the run's records and the checks below wait for it
        LAYER_NAMES: names,
        "k": k,
        # drawings: their images hashed once (a folder's every file), for both
        "dataset_fingerprint": ds.fingerprint() if drawn is None else sequences.drawings_fingerprint(**drawn),
        DRAWINGS: drawn,
        "preprocessing_key": preprocessing_key(pre),
        "forward_options": speed.forward_options(),
    }
    check_readable(ds, skip_bad_images)  # a file this user may not open: refused before the run is made
    # recorded either way (runs from before the statistics existed lack it: False); a resume must agree
    want["distributions"] = bool(distributions)
    if switches := model_switches(loaded.module):  # recorded only for models that have them
        want[MODEL_SWITCHES] = switches
    want[PREPROCESS] = load.preprocess
    if store is not None or team.size > 1:  # compared now, with the run's and the other ranks'
        want["weights_hash"] = weights_digest()
    team.check_same({**want, "logits": logits, "batch_size": batch_size, "flush_every": flush_every,
                     "skip_bad_images": skip_bad_images, "class_names": list(ds.class_names),
                     "out": str(out)})  # as given: ranks in other folders name one run alike
    # before the model is touched (and again under the lock); a refusal on rank 0 reaches every rank
    # (the default layers are known after the probe: a module never called is left out then)
    early = want if layers is not None else {key: v for key, v in want.items() if key != LAYER_NAMES}
    team.on_writer(lambda: check_resumable(store, early, logits, ds) if store is not None else None)
    forward.to(device)
    if compile:
        forward.compile = True
    if isinstance(forward, TorchForward):  # the probe runs the forward as mining will: a refusal comes before the run
        forward.autocast = speed.autocast
    with eval_mode(net):  # eval: as a trained model computes (flags back after, whatever happens)
        with one_image("making the first image model input"):
            first_index, first = first_readable(ds)
        spec, num_classes, left = probe(forward, names, first[None].to(device), optional=layers is None, logits=logits)
        mark_probabilities(spec, net, first[None].to(device))  # a model ending in a softmax: no second one
        note_left_out(left, progress)
        if left:
            names = want[LAYER_NAMES] = [l.name for l in spec]
        if logits:
            empty = [name for name, why in getattr(ds, "skipped", {}).items() if why == "no images"]
            check_classes(num_classes, loaded.categories, ds.class_names, progress, loaded.logits_from, empty)
        if not logits:
            forward.stop_after = forward.order[-1]
            num_classes = None
        known = ds.labels()
        if not logits and not ds.class_names and (known is None or bool((known >= 0).any())):
            progress.note("the dataset names no classes (no `classes` or `class_to_idx`) and logits=False (--no-logits) "
                          "leaves the model's output count unknown: its labels are stored, but no per-class statistics "
                          "(class means, class histograms, ink density) are kept; set `classes` on the dataset, or "
                          "keep the logits")
        if known is not None:  # streamed labels are checked batch by batch
            check_labels(ds, np.arange(len(known)), known, len(ds.class_names) or num_classes or 0)

        rectified = note_followers(net, names, progress, tuple(first.shape))  # what the taps read before (a BatchNorm, a ReLU)
        lock = RunLock(out)

        def open_store() -> RunStore:
            """Rank 0's store, locked before the run is read or created: an existing run checked
            against this call, or a new one (laid out aside and renamed into place, see
            RunStore.create). A second `mine` started at once on the same --out is refused while
            this one holds the lock, and finds the run whole afterwards."""
            lock.acquire()
            want["weights_hash"] = weights_digest()
            if is_run(out):  # read afresh under the lock: another writer may have created it or moved it on
                current = RunStore.open(out, mode="r+", checked=store)  # writable: walked once, by the first
                check_resumable(current, want, logits, ds)
                check_layouts(current, spec)
                recorded = current.attrs.get("preprocessing") or {}
                if store is None and pre is not None and pre.preset == "dataset" and recorded.get("mean"):
                    pre.mean, pre.std = tuple(recorded["mean"]), tuple(recorded["std"])  # created meanwhile
                # a crash can lose the newest writes: start before them (a complete run has no checkpoint left)
                damaged = None if current.progress.get("complete") else current.resume_from_intact()
                if damaged:
                    progress.note(damaged)
                # allowed (a batch that fits after an out-of-memory), recorded and said
                was = None if current.progress.get("complete") else current.resume_batch_size(batch_size)
                if was is not None:
                    progress.note(f"resuming at batch size {batch_size}, mined so far at {was}: CPU matrix products "
                                  "round the last bit by batch size, so ties within that rounding may rank as "
                                  f"neither uninterrupted run would; --batch-size {was} resumes bit-identically")
                moved = None if current.progress.get("complete") else current.resume_device(device.type)
                if moved is not None:
                    progress.note(f"resuming on {device.type}, mined so far on {moved}: the two round otherwise (the "
                                  "GPU adds the float64 sums behind unit and class means a block at a time), so the "
                                  f"last bits differ from a run on one device; --device {moved} resumes bit-identically")
                return current
            fields = forward.fields(tuple(first.shape), progress) if first.ndim >= 3 else {}
            labels = known
            # a half model's activations are its dtype's (readers say so; float32: no record)
            half = input_dtype(net) if isinstance(net, nn.Module) else net.weights_dtype()
            attrs = {**{key: v for key, v in want.items() if key != DRAWINGS},  # in `dataset` already, in words
                     "batch_size": batch_size, DEVICE: device.type,
                     "preprocessing": None if pre is None else pre.to_dict(),
                     **({"model_dtype": str(half).removeprefix("torch.")} if half in (torch.float16, torch.bfloat16) else {}),
                     "model_spec": _model_spec(model, weights, (seed or 0) if loaded.random_init else None),
                     "dataset": {**ds.describe(), "size": len(ds)}, "num_classes": num_classes,
                     "versions": _versions(), "bad_images": []}
            if not logits:  # recorded only when set, so default runs keep their attributes
                attrs["logits"] = False
            # a dataset without class names: the output numbers, so the class axis has its coordinate
            names = ds.class_names or [str(i) for i in range(num_classes or 0)]
            return RunStore.create(out, attrs, len(ds), names, ds.path, labels, digests=ds.content_digests(),
                                   row_chunk=batch_size * flush_every,  # a flush writes whole new chunks
                                   layers={l.name: {**l.attrs, "shape": [l.channels, *l.spatial], "kind": l.kind,
                                                    "receptive_field": layer_field(l, fields)}
                                           for l in spec})

        if channels_last:  # the caller's module gets its memory format back whatever happens
            was = memory_format(forward.net)
            forward.net.to(memory_format=torch.channels_last)
        try:
            run_store = team.store(open_store)  # ranks other than 0: the run's attributes, read-only
            if guessed:
                progress.note(guessed)
            return note_dead_units(run_pass(run_store, forward, ds, spec, k, device, load, speed, flush_every,
                                            skip_bad_images, progress, needs_labels=known is None,
                                            input_shape=(first_index, tuple(first.shape)), team=team),
                                   rectified, progress)
        except BaseException as exc:
            team.stopped(exc)  # this rank's own error reaches the ranks waiting for it (distributed.py)
            raise
        finally:
            lock.release()
            if channels_last:
                forward.net.to(memory_format=was)


def _dataset_normalisation(ds: MinerDataset, store: RunStore | None, load: LoadOptions, progress: Progress) -> None:
    """Fill in the "dataset" preset's mean and std: the ones a resumed run recorded, else one
    pass over the images (of a drawing's base dataset: its frames are those images, partly drawn)."""
    pre = ds.preprocessing
    if pre is None or pre.preset != "dataset" or pre.mean:
        return
    recorded = store.attrs.get("preprocessing") if store else None
    if recorded and recorded.get("mean"):
        pre.mean, pre.std = tuple(recorded["mean"]), tuple(recorded["std"])
    else:
        progress.note("computing the dataset mean and std (one pass)")
        pre.mean, pre.std = compute_mean_std(getattr(ds, "base", ds), load.batch_size, load.num_workers)
