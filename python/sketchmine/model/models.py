"""Turning a model spec (module, torchvision name, checkpoint path, .onnx file) into a
LoadedModel, and the input preset for it. Dispatch is by explicit type and file suffix;
the facts the miner needs (weights identity, input channels) come from the model's
registered backend (backend.py; re-exported here). No per-model branches: everything is
read off the module. Imports run one way: models -> {forward, onnx_backend} -> backend."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from sketchmine.data import Preprocessing, as_size, parse_size, preset
from sketchmine.data.preprocess import PRESETS, preset_names
from sketchmine.errors import SketchmineError, closest, whole_number
from sketchmine.model.backend import (TRANSFORM_INPUT, LoadedModel, input_channels, recorded_weights, torch_module,
                                      weights_hash, weights_match)
from sketchmine.model.pretrained import is_weights_name, load_pretrained
from sketchmine.model.forward import TorchForward  # noqa: F401  (importing it registers nn.Module's backend)
from sketchmine.model.onnx_backend import load_onnx  # (registers OnnxModel's backend)
from sketchmine.names import is_model_path

__all__ = ["LoadedModel", "build", "input_channels", "is_model_path", "load_model", "preprocessing_for",
           "recorded_weights", "weights_hash", "weights_match"]


TORCHVISION_BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
"""Builder arguments of torchvision models that need them: without them the builder adds the
auxiliary heads (run only in training, never mined) and warns that its weights are not initialised."""


def _load_state_dict(path: Path, what: str = "weights file") -> dict[str, Any]:
    """A checkpoint read with weights_only=True: no arbitrary unpickling, ever."""
    if path.is_dir():
        raise SketchmineError(f"{what} {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise SketchmineError(f"{what} {path} does not exist")
    if _is_torchscript(path):  # torch.load would warn, then hand it to torch.jit.load and refuse in its own words
        raise SketchmineError(
            f"{path} is a TorchScript archive (torch.jit.save): sketchmine reads a unit through a forward hook on its "
            "module, which a scripted module never calls; save the original model's weights, "
            "torch.save(model.state_dict(), path), and pass --model NAME --weights FILE, or export it to ONNX")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoints
        raise SketchmineError(_not_loaded(path, exc)) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    if isinstance(obj, dict) and (key := _state_dict_key(obj, path)):
        # a training script's checkpoint ({'model': ..., 'optimizer': ..., 'epoch': ...}): the weights under one key
        return {**{k: v for k, v in obj.items() if k != key}, "state_dict": obj[key]}
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        raise SketchmineError(
            f"{path} holds a dict with the keys {keys}, none of them a state_dict: expected a state_dict (names -> "
            f"tensors) or a dict holding one under {' or '.join(repr(k) for k in STATE_DICT_KEYS)}; save "
            "torch.save(model.state_dict(), path)")
    raise SketchmineError(f"{path} holds a {type(obj).__name__}, expected a state_dict or {{'arch', 'state_dict'}}")


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
"""Where training scripts put the weights in a checkpoint dict: 'state_dict' (Lightning, timm),
'model_state_dict' (PyTorch's own checkpoint tutorial), 'model' (torchvision's reference scripts)."""


def _is_state_dict(obj: Any) -> bool:
    """A dict of names to tensors, as model.state_dict() gives."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _state_dict_key(obj: dict[Any, Any], path: Path) -> str | None:
    """The one key of STATE_DICT_KEYS under which `obj` holds a state_dict; None when none
    does; refused when several do, as which one is the model is not ours to guess."""
    found = [k for k in STATE_DICT_KEYS if _is_state_dict(obj.get(k))]
    if len(found) > 1:
        raise SketchmineError(f"{path} holds a state_dict under each of {', '.join(repr(k) for k in found)}: save the "
                              "one to mine alone, torch.save(checkpoint[KEY], path)")
    return found[0] if found else None


def _is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive: a zip holding the scripted code (`code/`)
    and its constants, where torch.save's zip holds data.pkl alone."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.split("/", 1)[-1] == "constants.pkl" for n in names) and any("/code/" in f"/{n}" for n in names)


def _without_module_prefix(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """A state_dict saved from nn.DataParallel or DistributedDataParallel names every tensor
    'module.<name>': the same weights, read without the prefix when the model's own names are
    exactly those; any other state_dict is returned as it is (and fits or is refused)."""
    own = model.state_dict()
    if set(state) == set(own) or not state or not all(k.startswith("module.") for k in state):
        return state
    stripped = {k[len("module."):]: v for k, v in state.items()}
    return stripped if set(stripped) == set(own) else state


def _not_loaded(path: Path, exc: Exception) -> str:
    """Why `path` did not load, in words of our own: torch's message for a weights-only refusal
    advises loading with weights_only=False, which runs whatever the file holds."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip; older torch a pickle
        return f"{path} is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)"
    text = str(exc)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (f"{path} holds Python objects ({found.group(1)}), not only tensors: sketchmine never unpickles them "
                "(it reads checkpoints with weights_only=True); save the model's weights alone, "
                "torch.save(model.state_dict(), path), or a {'arch': name, 'state_dict': ...} dict; or, if you trust "
                "the file, load the module in Python and pass it: sketchmine.mine(module, ...)")
    if "Weights only load failed" in text:
        why = next((line.strip() for line in text.splitlines() if line.strip().startswith("Unsupported")), "")
        return (f"{path} cannot be read with weights_only=True, the only way sketchmine reads a checkpoint"
                f"{f' ({why})' if why else ''}: save it with torch.save(model.state_dict(), path)")
    return (f"{path} is not a loadable checkpoint (read with weights_only=True): {type(exc).__name__}: "
            f"{text.splitlines()[0] if text else ''}")


def _sidecar(weights: Path) -> dict[str, Any]:
    """What the JSON beside a state_dict file (same stem; scripts/train_demo_model.py writes
    one) says of its input and outputs: {"preprocessing": ..., "sequence": ..., "class_names": [...]};
    {} when there is none."""
    path = weights.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SketchmineError(f"{path} (beside the weights {weights.name}) is not readable JSON: {exc}") from None
    got = {k: meta[k] for k in ("preprocessing", "sequence") if isinstance(meta, dict) and isinstance(meta.get(k), dict)}
    if isinstance(meta, dict) and isinstance(meta.get(TRANSFORM_INPUT), bool):
        got[TRANSFORM_INPUT] = meta[TRANSFORM_INPUT]
    if isinstance(meta, dict) and _class_names(meta):
        got["class_names"] = meta["class_names"]
    return got


def _in_channels(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Input channels of the first 4-D weight (the first conv), if any."""
    convs = [t for k, t in state_dict.items() if k.endswith("weight") and t.ndim == 4]
    return int(convs[0].shape[1]) if convs else None


def _num_classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Output width of the classifier: the last 2-D weight (a Linear), else, in a model without
    one, the last 1×1 conv's (SqueezeNet classifies with a conv)."""
    mats = [t for k, t in state_dict.items() if k.endswith("weight") and t.ndim == 2]
    if not mats:
        mats = [t for k, t in state_dict.items() if k.endswith("weight") and t.ndim == 4 and t.shape[2:] == (1, 1)]
    return int(mats[-1].shape[0]) if mats else None


def build(arch: str, num_classes: int | None = None, in_channels: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised model by name: one of this package's architectures (zoo.ARCHS:
    sketchnet, sketchresnet, sketchgru) or any torchvision model. Initialised from `seed`
    (without touching the caller's random state) so a run of an untrained model can be
    resumed, visualized and ablated: the same seed rebuilds the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(arch, num_classes, in_channels)


def _build(arch: str, num_classes: int | None, in_channels: int | None) -> nn.Module:
    import torchvision

    from sketchmine.model import zoo

    if arch.lower() in zoo.ARCHS:
        return zoo.ARCHS[arch.lower()](num_classes=num_classes or 10, in_channels=in_channels or 1)
    names = torchvision.models.list_models()
    if arch not in names:
        hint = closest(arch, names + sorted(zoo.ARCHS) + sorted(zoo.EMBEDDED))
        raise SketchmineError(
            f"unknown model {arch!r}: expected an embedded trained model ({', '.join(repr(a) for a in zoo.EMBEDDED)}), "
            f"a torchvision model name, {', '.join(repr(a) for a in zoo.ARCHS)}, a checkpoint path or an .onnx file"
            + (f"; did you mean {', '.join(hint)}?" if hint else "")
            + (f"; a bare word is a model name: for the file {arch!r} here write ./{arch}" if Path(arch).exists() else "")
        )
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes:
        kwargs["num_classes"] = num_classes
    kwargs.update(TORCHVISION_BUILD_OPTIONS.get(arch, {}))
    return torchvision.models.get_model(arch, **kwargs)


def load_model(spec: str | nn.Module | LoadedModel, weights: str | os.PathLike | None = None, seed: int | None = None) -> LoadedModel:
    """Resolve a model spec.

    spec: a LoadedModel (returned as it is); an nn.Module; 'demo' (the embedded trained SketchNet), 'demo-resnet' (SketchResNet),
    'demo-gru' (CNN + GRU over progressive drawings); a torchvision name or
    'sketchnet' (random init from `seed`, default 0, unless `weights`); or a checkpoint file
    {'arch', 'state_dict'}, named by a path (`is_model_path`: a bare word is always a model name,
    never a file of the working directory). `weights` and `seed` are refused where they would not act.
    A module passed in keeps its training flags (the passes run it in eval mode and put them
    back); the models built here are in eval mode.
    """
    from sketchmine.model import zoo

    if isinstance(spec, LoadedModel):  # loaded already (load_model's own result): as it is
        if weights is not None or seed is not None:
            raise SketchmineError(f"model {spec.model_id} is loaded already: weights= and seed= apply when loading")
        return spec
    if not isinstance(spec, (str, os.PathLike, nn.Module)):
        raise SketchmineError(f"a model is an nn.Module, a LoadedModel, a name or a file path, got {type(spec).__name__} "
                              f"{spec!r}")
    if seed is not None:  # torch.manual_seed would read 1.5 as 1 and "3" as 3, a bool as 0 or 1
        whole_number(seed, "seed", low=None)
    named = not isinstance(spec, nn.Module) and not is_model_path(spec) and spec not in zoo.EMBEDDED
    shown = type(spec).__name__ if isinstance(spec, nn.Module) else repr(str(spec))
    if weights is not None and not named and not str(spec).endswith(".onnx"):
        raise SketchmineError(f"weights file {weights} given with model {shown}, which carries its own weights; "
                              "weights apply to a model named by architecture (a torchvision name, 'sketchnet')")
    if seed is not None and (not named or weights is not None):
        raise SketchmineError(f"seed {seed} given with model {shown}" + (" and a weights file" if named else "")
                              + ": a seed initialises a model named by architecture without weights only")
    if isinstance(spec, nn.Module):  # the caller's, left in its mode: each pass runs it under modes.eval_mode
        return LoadedModel(spec, type(spec).__name__)
    if str(spec).endswith(".onnx"):  # run by ONNX Runtime: `module` is an onnx_backend.OnnxModel
        return load_onnx(spec, weights)
    if spec in zoo.EMBEDDED:  # "demo", "demo-resnet", "demo-gru": the embedded trained models
        model, meta = zoo.load_embedded(spec)
        size = meta.get("input_size")
        return LoadedModel(model.eval(), f"demo:{zoo.EMBEDDED[spec][1]}", meta.get("preprocessing"),
                           meta.get("sequence"), input_size=tuple(size) if size else None,
                           categories=_class_names(meta))
    if named and is_weights_name(weights):  # torchvision's pretrained weights, from the local cache
        got = load_pretrained(str(spec), str(weights))
        return LoadedModel(got.module, got.weights_id, got.preprocessing, None, categories=got.categories)
    path = Path(spec)
    if is_model_path(spec):  # a checkpoint file {'arch', 'state_dict'}
        ckpt = _load_state_dict(path, "checkpoint file")
        arch = ckpt.get("arch")
        if not isinstance(arch, str):
            raise SketchmineError(f"{path} has no 'arch' entry; save {{'arch': NAME, 'state_dict': ...}} or pass --model NAME --weights {path}")
        spec, state = arch, ckpt["state_dict"]
    else:
        ckpt = {**_sidecar(Path(weights)), **_load_state_dict(Path(weights))} if weights else {}
        state = ckpt.get("state_dict")
    pre, seq = ckpt.get("preprocessing"), ckpt.get("sequence")
    model = build(str(spec), _num_classes(state) if state else None, _in_channels(state) if state else None,
                  seed or 0)
    if state is not None:
        source = weights if weights else path
        state = _without_module_prefix(model, state)
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise SketchmineError(f"weights {source} do not fit {spec}: {_misfit(model, state)}; were they trained "
                                  "as another --model?") from None
        if isinstance(getattr(model, TRANSFORM_INPUT, None), bool):
            if not isinstance(ckpt.get(TRANSFORM_INPUT), bool):
                where = (f"the JSON beside them, {Path(weights).with_suffix('.json')}" if weights else
                         f"the checkpoint's dict ({path})")
                raise SketchmineError(
                    f"{spec} has a {TRANSFORM_INPUT} switch that the weights {source} do not record, and it changes "
                    f"every activation: say it in {where} as {{\"{TRANSFORM_INPUT}\": true}} when they were "
                    "fine-tuned from torchvision's pretrained weights (torchvision turns it on then), false when the "
                    "model was trained from scratch")
            setattr(model, TRANSFORM_INPUT, ckpt[TRANSFORM_INPUT])
    return LoadedModel(model.eval(), str(spec), pre if isinstance(pre, dict) else None,
                       seq if isinstance(seq, dict) else None, random_init=state is None, categories=_class_names(ckpt))


def torch_model(model: str | os.PathLike | nn.Module | LoadedModel, weights: str | os.PathLike | None,
                purpose: str, seed: int | None = None) -> nn.Module:
    """The nn.Module `purpose` runs (its graph, its gradients), the model given as `mine` takes it:
    a module, a LoadedModel, or a name or checkpoint path with `weights` (`load_model`, so the same
    names, weights and seed rules and refusals). An ONNX file is refused by `torch_module`: it has no
    graph torch can follow."""
    if isinstance(model, (str, os.PathLike)) or weights is not None or seed is not None:
        model = load_model(os.fspath(model) if isinstance(model, os.PathLike) else model, weights, seed)
    return torch_module(model, purpose)


def _class_names(record: Mapping[str, Any]) -> list[str] | None:
    """The names of a model's outputs when its checkpoint (or the JSON beside its weights)
    records them as `class_names`, in output order; `mine` compares them with the dataset's."""
    names = record.get("class_names")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _misfit(model: nn.Module, state: Mapping[str, Any]) -> str:
    """Why a state_dict does not load, in one line: what is missing, unexpected, or of another
    shape (torch's own message is a multi-line list)."""
    own = model.state_dict()
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} for {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = [f"{len(v)} {what} (first: {', '.join(v[:2])})" for what, v in
             (("tensors missing", missing), ("unexpected tensors", extra), ("tensors of another shape", shapes)) if v]
    return "; ".join(parts) or "torch refused them"


def preprocessing_for(model: LoadedModel | nn.Module | str, name: str = "auto",
                      image_size: int | tuple[int, int] | None = None) -> Preprocessing:
    """The input preset `mine` uses for `model` (a spec as `load_model` takes, or a loaded one):
    "auto" takes the model's recorded normalisation (embedded models, checkpoints that record
    one), else ImageNet's; "model" requires a recorded one; "imagenet", "dataset", "none", "pixels" as
    `data.preset`. image_size: an int S (S×S), (H, W) or (C, H, W) whose C must be the model's
    input channels (`data.as_size`). Build datasets for a model with it, e.g. `animal_shape("test", preprocessing_for("demo"))`."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    lazy = [n for n, m in loaded.module.named_modules() if any(is_lazy(t) for t in m.parameters(recurse=False))] \
        if isinstance(loaded.module, nn.Module) else []
    if lazy:  # its input channels and every shape are unknown until then
        raise SketchmineError(f"model {loaded.model_id} has lazy modules not made yet ({', '.join(lazy[:3])}): run it "
                              "once on an input of its size (model(x)), so that they make their weights, then mine it")
    recorded = loaded.preprocessing if name in ("auto", "model") else None
    # a model whose input reaches no convolution that tells them (a Conv1d over rows) does not: an image_size
    # (C, H, W) or a recorded normalisation does, else 3 (which `mine` tries on an image: mining/channels.py)
    # the size the model will be given, where known: a model torch.fx follows only at a size is traced there
    given_c, given_hw = parse_size(image_size, "image_size") if image_size is not None else (None, None)
    hint = given_hw if given_hw is not None else _recorded_size(recorded)
    channels = (input_channels(loaded.module, 0, hint) or given_c
                or (len(recorded["mean"]) if recorded and recorded.get("mean") else 3))
    if channels not in (1, 3):
        raise SketchmineError(f"model {loaded.model_id} takes {channels}-channel input: sketchmine makes images into "
                              "1-channel (grey) or 3-channel (RGB) model input, and mines models that take one of those")
    if image_size is None and name in ("auto", "model") and loaded.preprocessing and loaded.preprocessing.get("size"):
        image_size = int(loaded.preprocessing["size"])  # the pretrained weights' input size
    size = None if image_size is None else as_size(image_size, "image_size", channels)
    if name in ("auto", "model") and loaded.preprocessing:
        p = loaded.preprocessing
        return Preprocessing("model", channels, size, tuple(p["mean"]), tuple(p["std"]))
    if name == "model":
        raise SketchmineError(f"model {loaded.model_id} records no preprocessing; use {', '.join(PRESETS)}")
    return preset("imagenet" if name == "auto" else name, channels, size)


def guessed_normalisation(loaded: LoadedModel, used: Preprocessing | None, chosen: bool) -> str | None:
    """The note `mine` gives when "auto" normalised a model's images with ImageNet's numbers
    because the model records none: right for torchvision-style training, wrong for a model
    trained with other numbers, whose every activation would change without a word."""
    if chosen or loaded.preprocessing or used is None or used.preset != "imagenet":
        return None
    return (f"{loaded.model_id} records no input normalisation, so its images are normalised with ImageNet's mean "
            f"{tuple(round(m, 3) for m in used.mean)} and std {tuple(round(s, 3) for s in used.std)} (preprocessing "
            "'auto'); if it was trained with other numbers, give them: in a JSON beside its weights file, "
            "{\"preprocessing\": {\"mean\": [...], \"std\": [...]}}, as a preset (--preprocessing), or in Python as "
            "preprocessing=sketchmine.data.Preprocessing(...)")


def given_preprocessing(loaded: LoadedModel, given: str | Preprocessing | None, what: str) -> Preprocessing:
    """`preprocessing=` as `mine` takes it, a preset name (None: "auto") or a Preprocessing, for a
    pass (`what`) that has no images: "dataset" without numbers is refused, as there are none to
    take its mean and std from, and the input would go in unnormalised without a word."""
    if given is None or isinstance(given, str):
        pre = preprocessing_for(loaded, given or "auto")
    elif isinstance(given, Preprocessing):
        pre = given
    else:
        raise SketchmineError(f"preprocessing must be a preset name ({preset_names(dataset=False)}) or a Preprocessing, "
                              f"got {type(given).__name__} {given!r}")
    if pre.preset == "dataset" and not pre.mean:
        raise SketchmineError(f"preprocessing 'dataset' is the mean and std of the images mined, and {what} has no "
                              "images: pass the numbers the model was trained with (Preprocessing('dataset', "
                              "channels, size, mean, std)) or another preset")
    return pre


def _recorded_size(recorded: dict[str, Any] | None) -> tuple[int, int] | None:
    """The pretrained weights' recorded input size as (H, W), if they record one."""
    size = (recorded or {}).get("size")
    return (int(size), int(size)) if isinstance(size, int) and size > 0 else None
