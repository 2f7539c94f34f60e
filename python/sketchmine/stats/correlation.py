"""Which units of a layer co-vary: the Pearson correlation of their image maxima (each map's
spatial maximum, NaN ignored: the statistic the top-k ranks) over a dataset, and for each
unit the m units of the same layer most correlated with it.

Memory is bounded for wide layers: the (C, C) correlation matrix is never held. Units are
taken `block_units` at a time; for a block, its float64 cross-product with every unit is
accumulated over the images in row chunks of `block_units` images, reduced to the block's
top m, and dropped. Working memory: the block's accumulator(s) and one row chunk, about
2 × block_units × C × 8 bytes (C = 4,096, block 1,024: 64 MB), plus the (N, C) float32 maxima
themselves and a finiteness mask of them: N × C × 5 bytes, which grows with the dataset, so
`check_maxima_memory` refuses before the pass where that does not fit in the memory available.
Values are centred on each unit's mean first, so large offsets (maxima of 10^3 varying by 1) do
not cancel.

Non-finite maxima (an all-NaN map, ±inf) are excluded pairwise: r(i, j) uses the images
where both units' maxima are finite (as pandas' DataFrame.corr). That needs six accumulators
(counts, sums, squares, cross-products restricted to each pair's images), so the block
shrinks to block_units // 6 units and the memory bound stays. When every maximum is finite
(the common case) one Gram block suffices.

r is NaN (never listed) where it is undefined: a unit constant over the dataset (fewer than
two distinct finite maxima), a pair with fewer than two common finite images, or a pair over
whose common images a unit is constant (variance below 1e-10 of its second moment: rounding
of an exact zero).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sketchmine.errors import SketchmineError
from sketchmine.lazy import lazy

if TYPE_CHECKING:
    import torch
else:  # imported on first use: reading a run does not need it (sketchmine/lazy.py)
    torch = lazy("torch", globals())

BLOCK_UNITS = 1024
"""Units per block (see the module docstring for the memory this bounds)."""
PAIRWISE_ACCUMULATORS = 6
FLOOR = 1e-10
"""A pair's variance at most FLOOR × its second moment (about the unit mean) counts as zero."""
ORDER = "r descending (most positively correlated first); equal float32 r: smaller unit index first"
MAXIMA_BYTES = 4 + 1
"""Bytes held per image and unit: its float32 maximum and its finiteness mask (bool)."""


@dataclass
class Correlated:
    """unit (C, m) int32 (-1 pad), r (C, m) float32 (NaN pad), and how they were computed."""

    unit: np.ndarray
    r: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


def image_maxima(act: torch.Tensor) -> torch.Tensor:
    """(B, units) float32: each map's maximum over its positions ignoring NaN, NaN when the
    whole map is NaN (the top-k's statistic); act (B, units, *positions) or (B, units)."""
    a = act.float()
    if a.ndim == 2:
        return a
    flat = a.flatten(2)
    nan = torch.isnan(flat)
    best = flat.masked_fill(nan, float("-inf")).amax(dim=2)
    return best.masked_fill(nan.all(dim=2), float("nan"))


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get: Linux's MemAvailable (free pages plus the page
    cache it would give back; the free pages alone understate it after reading a dataset), else
    the free physical pages; None where neither can be read."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_maxima_memory(layer: str, images: int, units: int, available: int | None = None) -> None:
    """Refuse, before a pass, correlations whose (images, units) maxima and mask (MAXIMA_BYTES
    each) do not fit in `available` bytes (None: read now, `available_memory`; no check where it
    cannot be read): they grow with the dataset, and an allocation the machine cannot give is a
    crash (or the kernel's OOM killer) hours in."""
    need = images * units * MAXIMA_BYTES
    if available is None:
        available = available_memory()
    if available is not None and need > available:
        gib = 2**30
        raise SketchmineError(
            f"layer {layer!r}: its unit correlations hold every image's maximum of every unit, {images:,} images x "
            f"{units:,} units x {MAXIMA_BYTES} bytes (float32 maxima and a finiteness mask) = {need / gib:,.1f} GiB, "
            f"and {available / gib:,.1f} GiB of memory is available; compute effects for a layer with fewer units, "
            f"or mine a subset of the dataset into a new run")


def maxima_array(layer: str, images: int, units: int) -> np.ndarray:
    """(images, units) float32, uninitialised: the image maxima, filled batch by batch (one copy,
    not a list of batches concatenated), once `check_maxima_memory` let it."""
    check_maxima_memory(layer, images, units)
    return np.empty((images, units), dtype=np.float32)


def _rows(n: int, step: int) -> Iterator[slice]:
    for s in range(0, n, step):
        yield slice(s, min(s + step, n))


def _centre(x: torch.Tensor, valid: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of each unit's finite maxima (float64, 0 if none), constant mask: fewer than two
    distinct finite maxima)."""
    c = x.shape[1]
    sums = torch.zeros(c, dtype=torch.float64)
    lo = torch.full((c,), float("inf"))
    hi = torch.full((c,), float("-inf"))
    for rows in _rows(x.shape[0], step):
        xc, v = x[rows], valid[rows]
        sums += torch.where(v, xc.double(), 0.0).sum(0)
        lo = torch.minimum(lo, torch.where(v, xc, float("inf")).amin(0))
        hi = torch.maximum(hi, torch.where(v, xc, float("-inf")).amax(0))
    return sums / valid.sum(0).clamp(min=1), ~(lo < hi)


def _complete_block(x: torch.Tensor, centre: torch.Tensor, var: torch.Tensor, b: slice, step: int,
                    device: torch.device) -> torch.Tensor:
    """(block, C) r when every maximum is finite: one centred Gram block over row chunks."""
    gram = torch.zeros(b.stop - b.start, x.shape[1], dtype=torch.float64, device=device)
    for rows in _rows(x.shape[0], step):
        z = x[rows].to(device).double() - centre
        gram += z[:, b].T @ z
    return gram / torch.sqrt(var[b, None] * var[None, :])


def _pairwise_block(x: torch.Tensor, valid: torch.Tensor, centre: torch.Tensor, b: slice, step: int,
                    device: torch.device) -> torch.Tensor:
    """(block, C) r over each pair's common finite images."""
    shape = (b.stop - b.start, x.shape[1])
    n, sx, sy, sxx, syy, sxy = (torch.zeros(shape, dtype=torch.float64, device=device)
                                for _ in range(PAIRWISE_ACCUMULATORS))
    for rows in _rows(x.shape[0], step):
        v = valid[rows].to(device)
        z = torch.where(v, x[rows].to(device).double() - centre, 0.0)
        m = v.double()
        zb, mb = z[:, b], m[:, b]
        n += mb.T @ m
        sx += zb.T @ m
        sy += mb.T @ z
        sxx += (zb * zb).T @ m
        syy += mb.T @ (z * z)
        sxy += zb.T @ z
    cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
    ok = (n >= 2) & (vx > FLOOR * sxx) & (vy > FLOOR * syy)
    return torch.where(ok, cov / torch.sqrt(vx * vy), float("nan"))


def _top(r: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the m largest finite r (ORDER), -1 / NaN padded to m columns."""
    r32 = r.float()
    key = torch.where(torch.isnan(r32), float("inf"), -r32)
    order = torch.sort(key, dim=1, stable=True).indices[:, :m]
    top = r32.gather(1, order)
    ok = ~torch.isnan(top)
    unit = torch.full((r.shape[0], m), -1, dtype=torch.int32)
    val = torch.full((r.shape[0], m), float("nan"))
    unit[:, :order.shape[1]] = torch.where(ok, order, -1).int()
    val[:, :order.shape[1]] = torch.where(ok, top, float("nan"))
    return unit, val


def top_correlated(maxima: np.ndarray | torch.Tensor, m: int = 8, block_units: int = BLOCK_UNITS,
                   device: str | torch.device = "cpu") -> Correlated:
    """The m units most correlated with each unit (see the module docstring).

    maxima (N, C): per image and unit, the image maximum (float32; NaN/±inf excluded
    pairwise). block_units: units per block (memory bound); the result does not depend on it
    (up to float rounding of r). device: where the float64 products run (a GPU for wide layers).
    """
    if m < 1 or block_units < 1:
        raise ValueError(f"m and block_units must be at least 1, got {m} and {block_units}")
    x = torch.as_tensor(np.asarray(maxima, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"maxima must be (images, units), got shape {tuple(x.shape)}")
    device = torch.device(device)
    c = x.shape[1]
    valid = torch.isfinite(x)
    complete = bool(valid.all())
    centre, constant = _centre(x, valid, block_units)
    block = block_units if complete else max(1, block_units // PAIRWISE_ACCUMULATORS)
    var = torch.zeros(c, dtype=torch.float64)
    if complete:
        for rows in _rows(x.shape[0], block_units):
            var += ((x[rows].double() - centre) ** 2).sum(0)
    centre_d, var_d, constant_d = centre.to(device), var.to(device), constant.to(device)
    unit = torch.full((c, m), -1, dtype=torch.int32)
    r = torch.full((c, m), float("nan"))
    for b in _rows(c, block):
        if complete:
            corr = _complete_block(x, centre_d, var_d, b, block_units, device)
        else:
            corr = _pairwise_block(x, valid, centre_d, b, block_units, device)
        corr = corr.clamp(-1.0, 1.0)
        corr[:, constant_d] = float("nan")
        corr[constant_d[b]] = float("nan")
        own = torch.arange(b.stop - b.start, device=device)
        corr[own, own + b.start] = float("nan")  # a unit is not its own partner
        unit[b], r[b] = _top(corr.cpu(), m)
    return Correlated(unit.numpy(), r.numpy(), {
        "m": m, "images": int(x.shape[0]), "nonfinite": valid.numel() - int(valid.sum()),  # no second (N, C) mask
        "constant_units": int(constant.sum()),
        "constant": [int(u) for u in torch.nonzero(constant).flatten()],  # which: the views say why a unit has none
        "block_units": block, "order": ORDER, "statistic": "Pearson r of per-image maxima over the images where "
        "both units' maxima are finite (pairwise)"})
