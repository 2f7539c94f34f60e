"""What a run was made from, in words: model, weights, dataset, input preprocessing.

`summary`, `summary --json` and the report's index say it from the run's root attributes, so a
table read a week later, or beside another run's, names the weights and the normalisation behind
its numbers (two runs of one architecture differ in nothing else that `summary` showed).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sketchmine.weights_id import recorded_weights

Wrap = Callable[[object], str]
"""How a user's name or path is set among our words: as it is (a terminal, where `safe` escapes
direction controls), or isolated (the report: present/report_data.isolated, isolated_path)."""


def dataset_words(ds: dict[str, Any], name: Wrap = str, path: Wrap = str) -> str:
    """A run's recorded dataset in words ("the embedded animal_shape, test split, as progressive
    drawings (…)"); keys it does not know are listed as key=value."""
    ds = dict(ds)
    kind, seq = ds.pop("kind", None), ds.pop("sequence", None)
    ds.pop("size", None)  # the image count is said beside it
    ds.pop("split_size", None)  # the whole split's: a subset says how many of them it took
    if kind == "embedded":
        text = f"the embedded {ds.pop('name', '?')}, {ds.pop('split', '?')} split"
    elif kind == "image_folder":
        text = f"image folder {path(ds.pop('root', '?'))}"
    elif kind == "python":
        text = f"Python dataset {name(ds.pop('type', '?'))}"
    else:
        text = "dataset" if kind is None else f"{kind} dataset"
    if seq:
        text += (f", as progressive drawings ({seq.get('transform')}, {seq.get('steps')} steps, "
                 f"ink {seq.get('ink', 'light')})")
    extra = ", ".join(f"{name(k)}={name(json.dumps(v, ensure_ascii=False))}" for k, v in ds.items())
    return f"{text} ({extra})" if extra else text


def weights_words(attrs: dict[str, Any], path: Wrap = str) -> str:
    """"weights net.pt (xxh3_128:4387d3d18b99bf33…)": the weights given (a file, a torchvision
    enum; none: random ones from the recorded seed, else the model's own) and the hash of the
    weights mined, which tells two files apart."""
    spec = attrs.get("model_spec") or {}
    given, seed = spec.get("weights"), spec.get("seed")
    digest = recorded_weights(attrs)
    name = (f"weights {path(given)}" if given else f"random weights (seed {seed})" if isinstance(seed, int)
            else "its own weights")
    if isinstance(digest, str) and ":" in digest:
        algorithm, hex_digest = digest.split(":", 1)
        name += f" ({algorithm}:{hex_digest[:16]}…)" if len(hex_digest) > 16 else f" ({digest})"
    return name


def preprocessing_words(pre: dict[str, Any] | None) -> str:
    """"preprocessing 'imagenet': 3 channels, mean 0.485, 0.456, 0.406, std …, 224×224" from the
    recorded Preprocessing (four significant digits: a page to read, not a comparison)."""
    if not pre:
        return "preprocessing not recorded"
    channels = pre.get("channels")
    parts = [f"{channels} channel{'' if channels == 1 else 's'}"] if channels else []
    for key in ("mean", "std"):
        if pre.get(key):
            parts.append(f"{key} " + ", ".join(f"{float(v):.4g}" for v in pre[key]))
    size = pre.get("size")
    parts.append(f"{size[0]}×{size[1]} px" if size else "images at their stored size")
    if not pre.get("mean"):
        parts.append("not normalised")
    return f"preprocessing {pre.get('preset', '?')!r}: " + ", ".join(parts)


def provenance(attrs: dict[str, Any]) -> dict[str, Any]:
    """The run's model, weights, dataset and preprocessing as `summary --json` gives them: the
    recorded values, not words."""
    spec = attrs.get("model_spec") or {}
    return {"model": attrs.get("model"), "weights": spec.get("weights"), "seed": spec.get("seed"),
            "weights_hash": recorded_weights(attrs),
            "dataset": attrs.get("dataset"), "preprocessing": attrs.get("preprocessing")}


def provenance_lines(attrs: dict[str, Any]) -> list[str]:
    """Two lines: "model X, weights …" and "data …; preprocessing …"."""
    return [f"model {attrs.get('model')}, {weights_words(attrs)}",
            f"data: {dataset_words(attrs.get('dataset') or {})}; {preprocessing_words(attrs.get('preprocessing'))}"]
