"""Receptive fields that no stride describes: after an op that resamples the grid (nn.Upsample,
F.interpolate, ConvTranspose2d), each unit's box is kept per axis, unit by unit.

Such an op reads, for each output position along an axis, input positions that no sliding window
gives (a 2× nearest upsampling reads position i // 2; a bilinear one two neighbours, one at the
clamped border; a stride-2 transposed conv every other position), so the boxes of its units are not
an offset plus a multiple of a stride. A unit's box is the union of the boxes of the positions it
reads, and a field becomes a table per axis: the first and last input pixel of every unit
(`field_spans.Table`). Windows, pads and joins after it work on the table position by position
(`field_spans`, shared with the ONNX analysis); this module says which positions torch's resampling
ops read.

Which positions an interpolation reads is asked of torch: one-hot rows interpolated with the call's
own arguments, in the model's dtype, so a weight that rounds to zero (a source position that falls
on a pixel) reaches nothing, as in the model's own forward on the CPU. A transposed conv's reads
are integer arithmetic.
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from sketchmine.errors import SketchmineError
from sketchmine.model.field_calls import window_of
from sketchmine.model.field_spans import transposed_reach

_INTERPOLATE = inspect.signature(torch.nn.functional.interpolate)
_PROBE_DTYPES = (torch.float32, torch.float64)


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
