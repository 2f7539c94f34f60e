"""Pads in the receptive-field analysis: how far a pad shifts a field, and when a pad that copies
pixels keeps every unit's pixels inside its box.

A constant pad (negative: a crop) renumbers the units and adds units that hold no pixel: a shift.
A pad that copies (reflection, replication) puts pixels at positions whose box does not hold them,
so its own border units have no box; a conv that reads it through a valid window keeps the copies
inside its units' boxes when they come from within the kernel's reach: each side's reflection at most
half the dilated kernel's reach (the first unit's box ends `reach - pad` past the edge, the copies
`pad` past it), each side's replication at most the reach (the copies are the edge pixel). A conv's
own `padding_mode` is the same computation (pad, then a valid conv) and is checked by the same rule.
Circular padding wraps the far side of the image into the border units, which no box holds.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from sketchmine.errors import SketchmineError
from sketchmine.model.field_calls import Window, window_of

_COPIED = {"reflect": "reflected", "replicate": "replicated"}
_RULE = {"reflect": "each side's pad at most half the reach", "replicate": "each side's pad at most the reach"}
_COPYING_MODULES = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}
# pads of another grid than (H, W), or that wrap: named in their refusal, not taken for unknown ops
_OTHER_PADS = (nn.ReflectionPad1d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad3d, nn.ConstantPad1d,
               nn.ConstantPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)

Sides = tuple[tuple[int, int], tuple[int, int]]
"""Per axis (y, x), a pad's amounts (before, after)."""


def pair(v: Any) -> tuple[int, int]:
    """A kernel, stride, padding or dilation as (y, x) ints."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def conv_padding(p: Any, k: Any, d: Any) -> tuple[int, int]:
    """A window's padding before the first unit (top, left) as ints: "valid" pads nothing, "same"
    pads d*(k-1) in all and torch puts the smaller half first."""
    if p == "valid":
        return (0, 0)
    if p == "same":
        k, d = pair(k), pair(d)
        return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return pair(p)


def conv_reach(conv: nn.Conv2d | Window) -> tuple[int, int]:
    """Per axis, how many input positions past its first one a conv's window reads: d*(k-1)."""
    k, d = pair(conv.kernel_size), pair(conv.dilation)
    return (d[0] * (k[0] - 1), d[1] * (k[1] - 1))


def conv_sides(conv: nn.Conv2d | Window) -> Sides:
    """A conv's padding per axis and side: "same" with an even kernel pads more after."""
    before = conv_padding(conv.padding, conv.kernel_size, conv.dilation)
    if conv.padding == "same":
        reach = conv_reach(conv)
        return (before[0], reach[0] - before[0]), (before[1], reach[1] - before[1])
    return (before[0], before[0]), (before[1], before[1])


def copies_past_box(mode: str, sides: tuple[int, int], reach: int) -> bool:
    """Whether a pad by `mode` of (before, after) along one axis, read by a valid window of this
    reach, brings pixels from outside a unit's box into it."""
    widest = max(sides)
    return (2 * widest if mode == "reflect" else widest) > reach


def check_padding_mode(name: str, conv: nn.Conv2d) -> None:
    """A conv that pads by copying keeps the box only if the copies come from inside it (module doc)."""
    mode = conv.padding_mode
    if mode == "zeros":
        return
    sides, reach = conv_sides(conv), conv_reach(conv)
    widest = tuple(max(s) for s in sides)
    if mode == "circular" and any(widest):
        raise SketchmineError(f"receptive fields: {name} pads circularly (padding_mode='circular'): its border units "
                              "see the far side of the image, which no box holds; not supported")
    if any(copies_past_box(mode, sides[a], reach[a]) for a in range(2)):
        raise SketchmineError(f"receptive fields: {name} pads by {mode} {widest} on a side, more than its "
                              f"kernel's reach {reach} allows: its border units copy pixels from outside "
                              "their box; not supported")


@dataclass(frozen=True)
class Pad:
    """A pad met in the graph: `name` in words for messages, `mode` ("constant", "reflect" or
    "replicate") and its amounts per axis and side (negative: a crop)."""

    name: str
    mode: str
    sides: Sides

    @property
    def shift(self) -> tuple[int, int]:
        """(top, left): unit i of the result is unit i - shift of its input along each axis."""
        return self.sides[0][0], self.sides[1][0]

    @property
    def copies(self) -> bool:
        """Whether it puts pixels of the image at more than one place (its border units have no box)."""
        return self.mode != "constant"


def _sides(pad: tuple[int, ...]) -> Sides:
    """F.pad's order, pairs from the last dim: (left, right, top, bottom) → ((top, bottom), (left, right))."""
    left, right, top, bottom = (*pad, 0, 0, 0, 0)[:4]
    return (top, bottom), (left, right)


def _amounts(pad: tuple[int, ...]) -> str:
    return str(pad[0]) if len(set(pad)) == 1 else str(tuple(pad))


def pad_of(node: fx.Node, modules: dict[str, nn.Module]) -> Pad | None:
    """The pad a node applies to the (H, W) grid, None when it is no pad; a pad the analysis
    cannot follow (circular, of another grid, an amount known only at run time, a copying pad that
    also crops) is refused naming it."""
    if node.op == "call_module":
        return _module_pad(str(node.target), modules[str(node.target)])
    if node.op == "call_function" and node.target is torch.nn.functional.pad:
        return _function_pad(node)
    return None


def _module_pad(name: str, m: nn.Module) -> Pad | None:
    """A pad module's amounts (left, right, top, bottom), as `F.pad` takes them; other pads named."""
    if isinstance(m, nn.ConstantPad2d):  # ZeroPad2d too
        mode = "constant"
    elif type(m) in _COPYING_MODULES:
        mode = _COPYING_MODULES[type(m)]
    elif isinstance(m, _OTHER_PADS):
        raise SketchmineError(f"receptive fields: {type(m).__name__} {name!r} pads "
                              + ("circularly: its border units see the far side of the grid, which no box holds"
                                 if "Circular" in type(m).__name__ else "another grid than (H, W)") + "; not supported")
    else:
        return None
    pad = tuple(int(p) for p in m.padding)
    return _checked(Pad(f"{type(m).__name__}({_amounts(pad)}) {name!r}", mode, _sides(pad)))


def _function_pad(node: fx.Node) -> Pad:
    """`F.pad(x, pad, mode)`, read from the traced call: static amounts only (a traced size is a node)."""
    amounts: Any = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None)
    mode: Any = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    static = isinstance(amounts, (tuple, list)) and all(isinstance(p, int) for p in amounts)
    if not static or mode not in ("constant", *_COPIED):
        raise SketchmineError(f"receptive fields: pad at {node.name} (mode {mode!r}, pad {amounts!r}) wraps pixels "
                              "around or pads by an amount known only at run time; not supported")
    if mode != "constant" and len(amounts) != 4:  # torch pads the last len/2 dims by copying
        raise SketchmineError(f"receptive fields: pad at {node.name} (mode {mode!r}, pad {tuple(amounts)}) pads "
                              "another grid than (H, W); not supported")
    return _checked(Pad(f"F.pad {node.name!r} (mode {mode!r}, pad {tuple(amounts)})", mode, _sides(tuple(amounts))))


def _checked(pad: Pad) -> Pad:
    """A copying pad that crops a side as well would put a crop's dependence on the image's
    size (`coupling`) where no check names it: refused."""
    if pad.copies and min(min(s) for s in pad.sides) < 0:
        raise SketchmineError(f"receptive fields: {pad.name} crops a side (a negative amount) as well as "
                              "copying pixels; not supported")
    return pad


def copy_carriers(node: fx.Node, pad: Pad, modules: dict[str, nn.Module],
                  pointwise: Callable[[fx.Node], bool]) -> list[fx.Node]:
    """The nodes whose border units are copies from a copying pad: the pad's and the pointwise
    ops' between it and the convs that read it (they get no field; the convs do). Refused naming
    the pad and why unless every path from it, through pointwise ops, ends in a conv with no
    padding of its own whose reach keeps the copies inside its units' boxes."""
    carriers, todo, seen = [node], list(node.users), {node}
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        module = modules.get(str(user.target)) if user.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            _check_reader(pad, str(user.target), module)
        elif (call := window_of(user)) is not None and call.conv and not call.transposed:  # F.conv2d
            _check_reader(pad, f"conv2d at {user.name}", call)
        elif user.op != "output" and "tensor_meta" not in user.meta:
            continue  # a size or a shape: no pixels
        elif user.op == "output" or not pointwise(user):
            what = "the model's output" if user.op == "output" else (
                f"{type(module).__name__} {str(user.target)!r}" if module is not None
                else f"{getattr(user.target, '__name__', user.target)} at {user.name}")
            raise SketchmineError(f"receptive fields: {pad.name} feeds {what}: after a pad that copies pixels only a "
                                  "conv with no padding of its own is followed, whose reach is checked to keep the "
                                  "copies inside its units' fields; not supported")
        else:
            carriers.append(user)
            todo.extend(user.users)
    return carriers


def _check_reader(pad: Pad, name: str, conv: nn.Conv2d | Window) -> None:
    """A conv reading a copying pad: a valid window whose reach holds the copies (module doc)."""
    if any(any(s) for s in conv_sides(conv)):
        raise SketchmineError(f"receptive fields: {pad.name} feeds conv {name!r}, which pads as well (padding "
                              f"{conv.padding!r}): only a copying pad read by a conv with no padding is followed")
    reach = conv_reach(conv)
    if any(copies_past_box(pad.mode, pad.sides[a], reach[a]) for a in range(2)):
        k = pair(conv.kernel_size)
        raise SketchmineError(f"receptive fields: {pad.name} feeds a {k[0]}×{k[1]} conv {name!r} (reach {reach}): "
                              f"the {_COPIED[pad.mode]} pixels lie outside the unit's field ({_RULE[pad.mode]} keeps "
                              "them in); not supported")
