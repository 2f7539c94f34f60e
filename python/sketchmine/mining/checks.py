"""What `mine` checks before it mines: that a run it resumes was mined the same way, and that the
model's outputs and the dataset's classes can be scored against each other; and what it says
about the values its layers are read at (before a reversing BatchNorm, before a ReLU).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from sketchmine.data import Preprocessing
from sketchmine.data.folder import unreadable_error
from sketchmine.data.sequences import TRANSFORM, drawings_fingerprint
from sketchmine.mining.dataset_diff import images_otherwise, names_as_stored
from sketchmine.errors import SketchmineError
from sketchmine.model.backend import MODEL_SWITCHES, recorded_weights, switches_differ_from
from sketchmine.model.followers import followers
from sketchmine.model.layouts import CHANNELS_LAST, FEATURES_LAST
from sketchmine.model.output_softmax import mined_twice
from sketchmine.progress import Progress
from sketchmine.results.run import Run
from sketchmine.store.runstore import RunStore
from sketchmine.store.schema import CLASS_NAMES, FORWARD_OPTIONS, LAYER_NAMES, PLAIN_FORWARD_OPTIONS, PREPROCESS


SKETCH_IMAGES = 2**31 - 1
"""The most images a run with distributions can mine: the quantile sketch counts a unit's images
per bucket in int32 (stats/sketch.py, the compiled kernel and the store's sketch_counts)."""


def check_readable(ds: Any, skip_bad_images: bool) -> None:
    """Refuse, before the run is made, the images of a folder this user may not open (`fingerprint`
    found them): mined, the first batch failed after the run was made, recording the files as
    unreadable in its fingerprint, so that the re-run after fixing them was refused as another dataset."""
    if not skip_bad_images and (refused := unreadable_error(ds, "or pass --skip-bad-images (skip_bad_images=True) "
                                                                "to mine without it; nothing was written")):
        raise refused


def check_sketch_size(images: int, distributions: bool) -> None:
    """Refuse distributions over more images than a sketch bucket can count (it would wrap)."""
    if distributions and images > SKETCH_IMAGES:
        raise SketchmineError(f"the dataset has {images:,} images; distributions=True (--distributions) counts each "
                              f"unit's images in int32 quantile-sketch buckets, at most {SKETCH_IMAGES:,}: mine it "
                              "without distributions, or in parts of fewer images")


def check_classes(num_classes: int | None, categories: list[str] | None, class_names: list[str],
                  progress: Progress, logits_from: str | None = None, empty: list[str] | None = None) -> None:
    """Output i of the model is scored against the dataset's class i (a folder's i-th class in
    sorted order). Refused when the counts differ, or when the model names its outputs
    (`LoadedModel.categories`: an embedded model's or a checkpoint's class_names, torchvision's
    categories) and a class sits at another position in the dataset: every accuracy would be
    another class's. Names that differ altogether (ImageNet's synset folders against the
    weights' English names) cannot be matched, and are said once. `logits_from`: which of the
    model's outputs the logits are, where it has several (`LoadedModel.logits_from`); `empty`: class
    folders skipped for having no images, named in the refusal (a split missing a class)."""
    if num_classes is None or not class_names:
        return
    shown = f"{', '.join(class_names[:5])}{', …' if len(class_names) > 5 else ''}"
    if num_classes != len(class_names):
        raise SketchmineError(f"the model has {num_classes} output{'' if num_classes == 1 else 's'}"
                              + (f" ({logits_from})" if logits_from else "") + f" but the dataset has "
                              f"{len(class_names)} class{'' if len(class_names) == 1 else 'es'} ({shown}"
                              + (f"; not classes, as they hold no images: {', '.join(f'{e}/' for e in empty)}"
                                 if empty else "") + "): its predictions would be "
                              "scored against other labels. Pass the model trained on these classes"
                              + (", with its logits as its first output" if logits_from else "")
                              + ", or logits=False (--no-logits) to mine the layers without predictions")
    if not categories or len(categories) != num_classes or list(categories) == list(class_names):
        return
    output: dict[str, list[int]] = {}  # a name may repeat (ImageNet's two "crane"s): each of its positions
    for i, name in enumerate(categories):
        output.setdefault(name, []).append(i)
    moved = [(i, name, output[name][0]) for i, name in enumerate(class_names) if i not in output.get(name, [i])]
    if moved:
        i, name, j = moved[0]
        raise SketchmineError(
            f"the model names its outputs, and they are in another order than the dataset's classes: class {i} of the "
            f"dataset, {name!r}, is the model's output {j} ({len(moved)} of {num_classes} classes at other positions), "
            "so every prediction would be scored against another class. Give the dataset its classes in the model's "
            f"order (the model's: {', '.join(categories[:5])}{', …' if num_classes > 5 else ''}), or logits=False "
            "(--no-logits) to mine the layers without predictions")
    i = next(i for i, (a, b) in enumerate(zip(categories, class_names)) if a != b)
    progress.note(f"the model names its outputs otherwise than the dataset's classes (output {i}: {categories[i]!r}, "
                  f"class {i}: {class_names[i]!r}): each output is scored against the class at its position")


def note_left_out(left: dict[str, str], progress: Progress) -> None:
    """Say which default layers the probe left out (`forward.probe`), a note per reason."""
    for why in dict.fromkeys(left.values()):
        unused = [name for name, w in left.items() if w == why]
        progress.note(f"{len(unused)} of the model's layers are not mined because {why}: "
                      f"{', '.join(unused[:4])}{', …' if len(unused) > 4 else ''}")


def note_followers(net: nn.Module, layers: list[str], progress: Progress,
                   sample: tuple[int, ...] | None = None) -> frozenset[str]:
    """Say once which mined layers feed a BatchNorm that reverses some of their units (their
    top-k are the images the network passes on as the least active), and return the layers
    the network passes on only through a ReLU (for `note_dead_units`). Best effort: a model
    that cannot be traced gets no note."""
    found = followers(net, layers, sample)
    if found.reversed:
        shown = ", ".join(f"{r.layer}: {r.units} of {r.channels} units (mine {r.norm} instead)"
                          for r in found.reversed[:6])
        more = f", and {len(found.reversed) - 6} more layers" if len(found.reversed) > 6 else ""
        progress.note(f"{len(found.reversed)} mined layer(s) are read before a BatchNorm whose scale (gamma) is "
                      "negative on some units, which reverses those units' order: their top-k are the images the "
                      f"network passes on as the least active. {shown}{more}")
    return found.rectified


def note_dead_units(run: Run | None, rectified: frozenset[str], progress: Progress) -> Run | None:
    """Say once how many units of each layer read before its ReLU never rose above 0 on any
    image (the best value of their top-k is at most 0): the network passes on 0 for them every
    time, yet their top-k are ranked and counted like any other unit's. `run` is returned."""
    if run is None:  # a rank that cannot see the run
        return run
    dead = []
    for layer in (name for name in run.layers if name in rectified):
        best = (run.layer_array(layer, "values") if run.complete else run.topk(layer)[0])[:, 0]
        count = int((np.isfinite(best) & (best <= 0)).sum())  # -inf: an empty slot (no value), not a dead unit
        if count:
            dead.append(f"{layer}: {count} of {len(best)} units")
    if dead:
        progress.note(f"{', '.join(dead)} never rose above 0 on any image (read before the ReLU that follows, which "
                      "passes on 0 for them every time): their top-k are values of at most 0, ranked all the same, and "
                      "they count in the layer's class histogram like any other unit's")
    return run


def _short(value: Any) -> Any:
    """A hash or fingerprint (40+ hex digits) cut for a message; a name (a model id) is kept
    whole: two ids cut alike read as one."""
    digits = str(value).rpartition(":")[2]  # after a method's name ("xxh3_128:…")
    hashed = isinstance(value, str) and len(digits) >= 24 and all(c in "0123456789abcdef" for c in digits.lower())
    return str(value)[:len(value) - len(digits) + 16] + "…" if hashed else value


RESUME_CHECKS: dict[str, str] = {
    "model": "model id", "weights_hash": "model weights", LAYER_NAMES: "layers", "k": "k",
    "dataset_fingerprint": "dataset", "preprocessing_key": "preprocessing"}
"""What makes two passes mine the same run, by root attribute, with its name in a message: a resume
must agree with the run (check_resumable), every rank with rank 0 (distributed.py)."""


DRAWINGS = "drawings"
"""`want`'s key for how the dataset's images are drawn (`SequenceDataset.drawn`; None: single
images): not compared itself, it names steps or ink where only they change the fingerprint."""


def _drawn_otherwise(attrs: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The dataset's difference in words where the images are the run's and only their drawing
    differs (steps, ink, or drawings against single images); None where the images differ."""
    was = (attrs.get("dataset") or {}).get("sequence")
    was = was if isinstance(was, dict) and was.get("transform") == TRANSFORM else None
    now = want.get(DRAWINGS)
    images = now["base"] if now else want["dataset_fingerprint"]
    fingerprint = attrs.get("dataset_fingerprint")
    if was is None:
        if now is None or images != fingerprint:
            return None
        return f"progressive drawings (run: single images, now: {now['steps']} steps; leave steps / --steps out)"
    steps, ink = was.get("steps"), was.get("ink", "light")  # runs made before the ink option drew "light"
    if not isinstance(steps, int) or drawings_fingerprint(images, steps, ink) != fingerprint:
        return None
    said = f"pass steps={steps}, ink={ink!r} (--steps {steps} --ink {ink})"
    if now is None:
        return f"progressive drawings (run: {steps} steps, ink {ink}; now: single images; {said})"
    differ = [f"{what} (run: {a}, now: {b})" for what, a, b in (("steps", steps, now["steps"]), ("ink", ink, now["ink"]))
              if a != b]
    return f"{'; '.join(differ)} of the progressive drawings; {said}"


def preprocessing_key(pre: Preprocessing | None) -> str | None:
    """What the resume check compares of the preprocessing, as a run records it: preset, channels,
    size and the numbers (a "dataset" preset's numbers are the run's own, taken on resume)."""
    if pre is None:
        return None
    numbers = "" if not pre.mean else "/" + ",".join(f"{v:.9g}" for v in (*pre.mean, *pre.std))
    return f"{pre.preset}/{pre.channels}/{pre.size}{numbers}"


def _preprocessing_parts(a: Any, b: Any) -> str | None:
    """The parts of two `preprocessing_key`s (preset/channels/size/numbers) that differ, named (an
    image size of None: the images' own)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return None
    names = ("preset", "channels", "image size", "mean and std")
    shown = {"None": "the images' own", "": "none"}
    pairs = [(n, x, y) for n, x, y in zip(names, (a.split("/", 3) + [""] * 4)[:4], (b.split("/", 3) + [""] * 4)[:4])
             if x != y]
    return "; ".join(f"preprocessing {n} (run: {shown.get(x, _short(x))}, now: {shown.get(y, _short(y))})"
                     for n, x, y in pairs) or None


def _classes_otherwise(current: RunStore, ds: Any) -> str | None:
    """The class names `ds` gives where the run recorded others. The fingerprint covers images and
    labels only, so a dataset renamed its classes would resume under the run's old names."""
    now = names_as_stored(ds)
    if not now:  # a dataset naming no classes: the run holds the output numbers
        return None
    run = [str(c) for c in current.read(CLASS_NAMES)]
    if run == now:
        return None
    at = next((i for i, (a, b) in enumerate(zip(run, now)) if a != b), min(len(run), len(now)))
    first = (f"class {at}: {run[at]!r} in the run, {now[at]!r} now" if at < min(len(run), len(now)) else
             f"{len(run)} classes in the run, {len(now)} now")
    return f"class names ({first})"


def check_resumable(current: RunStore, want: dict[str, Any], logits: bool, ds: Any = None) -> None:
    """Refuse to resume a run mined otherwise, naming each difference: RESUME_CHECKS (model id,
    weights, layers, k, dataset, preprocessing; each only when `want` names it), the class names `ds`
    gives, every forward
    option, the model switches (when the run recorded them), the logits setting, distributions and
    the preprocess route. `ds`, the dataset given: a different one is said by file where it can be."""
    attrs, diffs = current.attrs, []
    checks = [(key, label) for key, label in RESUME_CHECKS.items() if key in want]
    # runs that predate the record of forward options were mined with the plain forward
    options = attrs.get(FORWARD_OPTIONS) or PLAIN_FORWARD_OPTIONS
    attrs = {**attrs, "weights_hash": recorded_weights(attrs)}
    checks += [(f"forward_options.{o}", f"forward option {o}") for o in want["forward_options"]]
    attrs = {**attrs, **{f"forward_options.{o}": v for o, v in options.items()}}
    want = {**want, **{f"forward_options.{o}": v for o, v in want["forward_options"].items()}}
    compared = False
    for key, label in checks:
        a, b = attrs.get(key), want.get(key)
        if a != b:
            said = (_drawn_otherwise(attrs, want) if key == "dataset_fingerprint" else
                    _preprocessing_parts(a, b) if key == "preprocessing_key" else None)
            which, unreadable = None, None
            if key == "dataset_fingerprint" and not said:  # an image unreadable now (--skip-bad-images): not "changed"
                unreadable = unreadable_error(ds, "then resume")
                which = str(unreadable) if unreadable else images_otherwise(current, ds)
            diffs.append(said or f"{label} (run: {_short(a)}, now: {_short(b)}{': ' + which if which else ''})")
            compared = compared or (which is not None and not unreadable)  # images_otherwise said the class names
    if not compared and (named := _classes_otherwise(current, ds)) is not None:
        diffs.append(named)
    if MODEL_SWITCHES in attrs:  # runs before the record, and of models without switches: not compared
        diffs += [f"model switch {d}" for d in switches_differ_from(attrs[MODEL_SWITCHES], want.get(MODEL_SWITCHES, {}))]
    # a run mined with logits before a model without any was refused has no predictions: its resume
    # with logits=False (what that refusal says to pass) mines it as it was mined
    without = logits is False and attrs.get("logits", True) is True and attrs.get("num_classes", 0) is None
    if attrs.get("logits", True) != logits and not without:
        diffs.append(f"logits (run: {attrs.get('logits', True)}, now: {logits})")
    had, has = bool(attrs.get("distributions", False)), bool(want.get("distributions", False))
    if had != has:
        diffs.append(f"distributions (run: {had}, now: {has}; pass distributions={had} / "
                     f"--{'' if had else 'no-'}distributions to resume it)")
    route, asked = attrs.get(PREPROCESS, "cpu"), want.get(PREPROCESS, "cpu")  # runs before the record: per image
    if route != asked:
        diffs.append(f"preprocess (run: {route}, now: {asked}; pass --preprocess {route})")
    if diffs:
        progress = current.progress
        empty = not progress.get("complete") and progress.get("slot") is None  # no checkpoint committed
        what = "is complete, mined" if progress.get("complete") else "cannot be resumed: it was mined"
        raise SketchmineError(f"run {current.path} {what} with other settings: " + "; ".join(diffs)
                              + ". Use another --out for a new run" + (
                                  f" (this one holds no mined image yet, as a call that stopped before its first "
                                  f"checkpoint leaves it: remove {current.path} to mine there anew)" if empty else ""))


def check_layouts(current: RunStore, spec: list[Any]) -> None:
    """Refuse to resume a layer whose units the run read along another axis than this sketchmine
    does (a run mined before the graph placed units: a ConvNeXt LayerNorm read along H): the top-k
    so far would be of other units, or not fit at all."""
    said = {None: "along axis 1, (N, C, ...)", CHANNELS_LAST: "last, (N, H, W, C)", FEATURES_LAST: "last, (N, T, F)"}
    for layer in spec:
        if current.layer_attrs(layer.name).get("of") != layer.attrs.get("of"):  # the virtual softmax's
            raise mined_twice(current.path)
        was, now = current.layer_attrs(layer.name).get("layout"), layer.attrs.get("layout")
        if was != now and {was, now} & {CHANNELS_LAST, FEATURES_LAST}:
            raise SketchmineError(
                f"layer {layer.name!r} of {current.path} was mined reading its units {said.get(was, was)}; this "
                f"sketchmine reads them {said.get(now, now)}, where the model's graph holds them, so the results so "
                "far are of other units: mine it into a new --out")
