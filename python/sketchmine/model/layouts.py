"""Where a tapped module's output holds its units, where its type does not fix it: the graph's word
(`unit_axes`), as the `known` layouts a `Taps` reads them with.

A conv, pool or channel norm holds its channels on axis 1, a Linear its features last (taps'
own rules). Any other module (an activation, a LayerNorm, a block) returns what it was fed:
channels last inside a ConvNeXt block's permutes and all through a Swin transformer (N, H, W, C),
features last in a vision transformer's tokens (N, T, D). Such a module whose units the graph
cannot place is read along axis 1 and listed, so that the caller can say so.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from sketchmine.errors import SketchmineError
from sketchmine.model.unit_axes import CHANNELS_FIRST_MODULES

if TYPE_CHECKING:
    from sketchmine.model.receptive_field import FieldAnalysis

CHANNELS_LAST = "(N, H, W, C) → (N, C, H, W)"
"""The `layout` attribute of a module whose 4-D output holds its channels last: its units are
the last axis, its positions (y, x) the two before."""
FEATURES_LAST = "(N, T, F) → (N, F, T)"
"""The `layout` attribute of a module whose 3-D output holds its features last (tokens, steps):
its units are the last axis, its positions the sequence."""

_LAYOUT_FIXED = (*CHANNELS_FIRST_MODULES, nn.Linear, nn.RNNBase)
"""Modules whose output layout their type fixes: channels (or features) where `to_units` reads them."""


def layout_open(model: nn.Module, layers: Sequence[str]) -> bool:
    """Whether any of `layers` is a module whose units only the graph can place."""
    modules = dict(model.named_modules())
    return any(n in modules and not isinstance(modules[n], _LAYOUT_FIXED) for n in layers)


def graph_layouts(model: nn.Module, layers: Sequence[str], analysis: FieldAnalysis | SketchmineError
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The layouts the graph tells for `layers` (the `known` of a `Taps`), from each module's
    units axis and rank (`receptive_field.sample_analysis`'s `unit_axes`), and the modules it
    cannot place, with why (read along axis 1)."""
    axes = analysis if isinstance(analysis, SketchmineError) else analysis.unit_axes
    modules = dict(model.named_modules())
    known: dict[str, dict[str, Any]] = {}
    unplaced: dict[str, str] = {}
    for name in layers:
        if name not in modules or isinstance(modules[name], _LAYOUT_FIXED):
            continue
        got = axes.get(name) if isinstance(axes, dict) else None
        if got is None:
            inside = _leaf_around(modules, name)
            unplaced[name] = (str(axes) if isinstance(axes, SketchmineError) else
                              f"it runs inside {inside}, a torch.nn module the graph does not enter: mine {inside} "
                              "itself, or build its layers as modules of your own" if inside else
                              "the graph does not follow the ops before it")
        elif got[1] in (3, 4) and got[0] == got[1] - 1:
            known[name] = {"layout": CHANNELS_LAST if got[1] == 4 else FEATURES_LAST}
        elif got[0] != 1 and got[1] > 2:
            unplaced[name] = f"its units are axis {got[0]} of {got[1]}"
    return known, unplaced


def _leaf_around(modules: dict[str, nn.Module], name: str) -> str | None:
    """The outermost module around `name` that torch.fx traces as one call (a torch.nn module but
    a container, as an nn.TransformerEncoder holding its layers), whose inside no graph node sees."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        outer = modules.get(".".join(parts[:i]))
        if outer is not None and type(outer).__module__.startswith("torch.nn") and not isinstance(
                outer, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return ".".join(parts[:i])
    return None


TOKENS = {"position": "tokens", "yx": "(0, token)"}
"""How a layer of (N, T, F) tokens of one image (a vision transformer's) is positioned: its
positions are tokens, not the steps of a sequence the input is made of (the views show no step)."""


def tokens_of_images(layouts: dict[str, dict[str, Any]], sample_rank: int) -> dict[str, dict[str, Any]]:
    """`layouts` with each "sequence" or "time" layer read from an input of single images (a sample
    of rank 3, (C, H, W)) positioned as tokens: its T is a vision transformer's tokens or the
    columns a CRNN's recurrent layer reads, not the steps of a drawing (a sample of (T, C, H, W))."""
    if sample_rank != 3:
        return layouts
    return {name: {**info, **TOKENS} if info.get("position") in ("sequence", "time") else info
            for name, info in layouts.items()}


def unplaced_note(names: Sequence[str] | dict[str, str], of: str = "") -> str:
    """What `mine` says, when it makes the run, of the tapped layers read along axis 1 that the
    graph does not place (a dict: each with why, names of one reason listed together; `of`: " of
    FILE" for an ONNX graph)."""
    whys = names if isinstance(names, dict) else dict.fromkeys(names, "")
    groups: dict[str, list[str]] = {}
    for name, why in whys.items():
        groups.setdefault(why, []).append(name)
    listed = "; ".join(", ".join(group[:3]) + (", …" if len(group) > 3 else "") + (f": {why}" if why else "")
                       for why, group in groups.items())
    return (f"{len(whys)} layer(s){of} read with their units on axis 1, (N, C, ...), where the model's graph does "
            f"not place them ({listed}): one holding channels last (N, H, W, C) or tokens (N, T, D) is read along "
            "the wrong axis")


def learn_layouts(model: nn.Module, layers: Sequence[str], sample: Sequence[int]
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """`graph_layouts` for one input of shape `sample`, the graph traced only where a layer needs it."""
    if not layout_open(model, layers):
        return {}, {}
    from sketchmine.model.receptive_field import sample_analysis  # the tracer: only where asked

    return graph_layouts(model, layers, sample_analysis(model, tuple(sample)))
