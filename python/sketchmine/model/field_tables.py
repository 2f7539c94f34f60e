"""Receptive fields that no stride describes: after an op that resamples the grid (nn.Upsample,
F.interpolate, ConvTranspose2d), each unit's box is kept per axis, unit by unit.

Such an op reads, for each output position along an axis, input positions that no sliding window
gives (a 2× nearest upsampling reads position i // 2; a bilinear one two neighbours, one at the
clamped border; a stride-2 transposed conv every other position), so the boxes of its units are not
an offset plus a multiple of a stride. A unit's box is the union of the boxes of the positions it
reads, and a field becomes a table per axis: the first and last input pixel of every unit (`Table`,
(n, 2) int64). Windows, pads and joins after it work on the table position by position; a position
that reads only padding adds no pixel (the table holds the positions a unit reads, not a stride's
extension past the grid). A unit that reads no position at all (a transposed conv's gap, a pad's
border) has an empty box.

Which positions an interpolation reads is asked of torch: one-hot rows interpolated with the call's
own arguments, in the model's dtype, so a weight that rounds to zero (a source position that falls
on a pixel) reaches nothing, as in the model's own forward on the CPU. A transposed conv's reads
are integer arithmetic.
"""
from __future__ import annotations

import inspect
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from sketchmine.errors import SketchmineError
from sketchmine.model.field_calls import window_of

Table = np.ndarray
"""(n, 2) int64: per unit along an axis, its box's first and last input pixel; empty: (EMPTY, -EMPTY)."""

EMPTY = 2 ** 62
_INTERPOLATE = inspect.signature(torch.nn.functional.interpolate)
_PROBE_DTYPES = (torch.float32, torch.float64)


def strided(jump: int, lo: int, hi: int, n: int) -> Table:
    """The table of a strided field's n units: unit i sees [lo + i·jump, hi + i·jump]."""
    i = np.arange(n, dtype=np.int64) * jump
    return np.stack([lo + i, hi + i], axis=1)


def read(table: Table, reach: np.ndarray) -> Table:
    """The table after an op whose output position o reads the input positions `reach[o]`
    ((n_out, n_in) bool): each unit's box is the union of theirs."""
    lo = np.where(reach, table[None, :, 0], EMPTY).min(axis=1)
    hi = np.where(reach, table[None, :, 1], -EMPTY).max(axis=1)
    return np.stack([lo, hi], axis=1)


def copied(at: np.ndarray, n_in: int, mode: str) -> np.ndarray:
    """Positions `at` along an axis of n_in, where a pad by `mode` reads them: "replicate" the edge's,
    "reflect" the mirrored ones (a dilated window can read a copy without the position copied);
    "zeros" (or a constant) leaves them outside, holding no pixel."""
    if mode == "replicate":
        return np.clip(at, 0, n_in - 1)
    if mode == "reflect" and n_in > 1:
        at = np.abs(at)
        return np.where(at > n_in - 1, 2 * (n_in - 1) - at, at)
    return at


def window_reach(n_in: int, n_out: int, k: int, s: int, before: int, d: int, mode: str = "zeros") -> np.ndarray:
    """(n_out, n_in) bool: the positions a sliding window (conv, pool) reads, padding left out but
    for what a conv's copying `mode` puts there (`copied`)."""
    reach = np.zeros((n_out, n_in), dtype=bool)
    at = copied(np.arange(n_out)[:, None] * s - before + np.arange(k)[None, :] * d, n_in, mode)
    rows = np.broadcast_to(np.arange(n_out)[:, None], at.shape)
    inside = (at >= 0) & (at < n_in)
    reach[rows[inside], at[inside]] = True
    return reach


def transposed_reach(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """(n_out, n_in) bool: the input positions a transposed conv scatters into each output
    position: input i reaches i·s - p + t·d for t < k (output padding adds positions at the end)."""
    reach = np.zeros((n_out, n_in), dtype=bool)
    at = np.arange(n_in)[:, None] * s - p + np.arange(k)[None, :] * d
    cols = np.broadcast_to(np.arange(n_in)[:, None], at.shape)
    inside = (at >= 0) & (at < n_out)
    reach[at[inside], cols[inside]] = True
    return reach


def shifted(table: Table, before: int, n_out: int, mode: str = "constant") -> Table:
    """The table after a pad of `before` positions (negative: a crop) that leaves n_out: a constant
    pad's positions hold no pixel, a copying pad's the boxes of the positions it copies (`copied`)."""
    at = copied(np.arange(n_out) - before, len(table), mode)
    inside = (at >= 0) & (at < len(table))
    out = np.full((n_out, 2), [EMPTY, -EMPTY], dtype=np.int64)
    out[inside] = table[at[inside]]
    return out


def union(tables: list[Table], where: str) -> Table:
    """Branches joined position by position (an addition, a channel concatenation)."""
    if len({len(t) for t in tables}) > 1:
        raise SketchmineError(f"cannot merge receptive fields at {where}: branches have {sorted({len(t) for t in tables})} "
                              "units along an axis")
    return np.stack([np.min([t[:, 0] for t in tables], axis=0), np.max([t[:, 1] for t in tables], axis=0)], axis=1)


def spans(table: Table) -> tuple[tuple[int, int], ...]:
    """The public record of a table: (first, last) pixel per unit; an empty box as (0, -1)."""
    return tuple((int(lo), int(hi)) if lo <= hi else (0, -1) for lo, hi in table)


def summary(table: Table) -> tuple[int, Fraction, int]:
    """(largest box, mean spacing of the boxes' starts, first unit's start) of a table: the size,
    stride and offset a tabled ReceptiveField reports beside its boxes."""
    full = np.nonzero(table[:, 0] <= table[:, 1])[0]
    if len(full) == 0:
        return 0, Fraction(0), 0
    size = int((table[full, 1] - table[full, 0]).max()) + 1
    first, last = int(full[0]), int(full[-1])
    stride = Fraction(int(table[last, 0] - table[first, 0]), last - first) if last > first else Fraction(0)
    return size, stride, int(table[full[0], 0])


def resampler(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The op in words when a node resamples the grid (nn.Upsample, F.interpolate, a transposed conv,
    a max unpooling; modules or functions), else None."""
    m = modules.get(str(node.target)) if node.op == "call_module" else None
    if isinstance(m, (nn.Upsample, nn.ConvTranspose2d, nn.MaxUnpool2d)):
        return f"{type(m).__name__} {node.target!r}"
    if (window := window_of(node)) is not None and window.transposed:  # F.conv_transpose2d, F.max_unpool2d
        return f"{getattr(node.target, '__name__', node.target)} at {node.name}"
    return f"interpolate at {node.name}" if node.target is torch.nn.functional.interpolate else None


def resampling_reach(node: fx.Node, modules: dict[str, nn.Module], where: str, n_in: tuple[int, int],
                     n_out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per axis, (n_out, n_in) bool: the input positions each output position of a `resampler`
    node reads."""
    m = modules.get(str(node.target)) if node.op == "call_module" else None
    window = window_of(node)  # F.conv_transpose2d, F.max_unpool2d (their inputs checked by the analysis)
    if isinstance(m, (nn.ConvTranspose2d, nn.MaxUnpool2d)) or window is not None:
        g: Any = m if window is None else window  # the module's attributes, or the call's by the same names
        k, s, p, d = (g.kernel_size, g.stride, g.padding, getattr(g, "dilation", (1, 1)))
        return (transposed_reach(n_in[0], n_out[0], k[0], s[0], int(p[0]), d[0]),
                transposed_reach(n_in[1], n_out[1], k[1], s[1], int(p[1]), d[1]))
    if isinstance(m, nn.Upsample):
        call = {"size": m.size, "scale_factor": m.scale_factor, "mode": m.mode, "align_corners": m.align_corners,
                "recompute_scale_factor": m.recompute_scale_factor}
    else:
        bound = _INTERPOLATE.bind(*node.args, **node.kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
    meta = node.all_input_nodes[0].meta["tensor_meta"]
    return interpolation_reach(where, call, n_in, n_out, len(meta.shape), meta.dtype)


def interpolation_reach(where: str, call: dict[str, Any], n_in: tuple[int, int], n_out: tuple[int, int],
                        rank: int, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per axis (y, x), (n_out, n_in) bool: the input positions each output position of an
    interpolation takes with a non-zero weight, from torch's own kernel (module doc). Every mode
    of a 4-D interpolation is separable by axis; another rank resamples more than (H, W), and a
    scale factor the traced graph knows only at run time cannot be asked: refused, naming `where`."""
    mode, scale = call.get("mode", "nearest"), call.get("scale_factor")
    if rank != 4:
        raise SketchmineError(f"receptive fields: {where} resamples a {rank}-D tensor (mode {mode!r}), another grid "
                              "than (H, W) alone; not supported")
    by_size = call.get("size") is not None or bool(call.get("recompute_scale_factor"))
    scales: tuple[Any, ...] = (None, None)
    if not by_size:
        scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
        if len(scales) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scales):
            raise SketchmineError(f"receptive fields: {where} resamples by a scale factor known only at run time "
                                  f"({scale!r}): which positions each unit reads depends on it; not supported")
    probe_dtype = dtype if dtype in _PROBE_DTYPES else torch.float32
    reach = []
    for a in range(2):
        # one image per input position, one-hot along the axis, two positions along the other (at one,
        # antialiased kernels read every output from the first position), one channel
        x = torch.eye(n_in[a], dtype=probe_dtype).reshape(n_in[a], 1, *((n_in[a], 1) if a == 0 else (1, n_in[a])))
        x = x.expand(*x.shape[:2], *((n_in[a], 2) if a == 0 else (2, n_in[a]))).contiguous()
        kw = {k: v for k, v in call.items() if k not in ("input", "size", "scale_factor")}
        if by_size:
            kw["size"] = (n_out[0], 2) if a == 0 else (2, n_out[1])
            kw["recompute_scale_factor"] = None
        else:
            kw["scale_factor"] = (float(scales[0]), 1.0) if a == 0 else (1.0, float(scales[1]))
        try:
            out = torch.nn.functional.interpolate(x, **kw)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            raise SketchmineError(f"receptive fields: {where} (mode {mode!r}) cannot be followed: "
                                  f"{str(exc).splitlines()[0]}") from None
        got = out[:, 0, :, 0] if a == 0 else out[:, 0, 0, :]
        if got.shape[1] != n_out[a]:  # the model's call resamples otherwise than the probe: say so, guess nothing
            raise SketchmineError(f"receptive fields: {where} gives {n_out[a]} positions along an axis, its one-hot "
                                  f"probe {got.shape[1]}; not supported")
        reach.append((got != 0).T.numpy())
    return reach[0], reach[1]
