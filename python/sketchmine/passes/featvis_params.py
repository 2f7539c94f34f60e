"""The two regularisation families of feature visualisation, as batched image parameterisations.

Every piece acts on each batch element (one unit) on its own, so no unit reads another's in a
batch (the forward's batch-size rounding aside: featvis.py): per-unit initial noise (a generator per unit),
per-unit statistics (percentiles, gradient norms), elementwise optimisers; the random
transforms of a step are drawn once and applied to every element alike.

- `PixelImage`, deconvnet era (Yosinski et al. 2015, the Deep Visualization Toolbox): gradient
  ascent on the pixels themselves with L2 decay towards the mean pixel, a Gaussian blur every
  n steps and clipping of small-norm and small-contribution pixels. Defaults: the setting the
  paper used for most of its images (Table 1, third row: decay 1e-4, blur radius 1 px every
  4 steps, no clipping); `regularizers.PIXEL_PRESETS` holds all four rows (the settings, their
  defaults and checks live in sketchmine/regularizers.py, without torch).
- `FourierImage`, lucid/lucent era (Olah et al. 2017): the image is the sigmoid of an inverse
  FFT of a spectrum scaled by 1/f, colour-decorrelated for 3 channels (identity for grey),
  optimised with Adam under random jitter, scale and rotation (`random_transform`).

Images are in [0, 1] pixel space; the caller normalises them into the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


COLOR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
"""lucid's square root of ImageNet's colour correlation matrix (its columns' max norm scales it)."""


def unit_noise(units: np.ndarray, shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    """(U, *shape) N(0, std) noise, each unit's from its own generator seeded by (seed, unit):
    a unit starts from the same noise in any batch."""
    out = torch.empty((len(units), *shape))
    for i, u in enumerate(units.tolist()):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(u)]).generate_state(1)[0]))
        out[i] = torch.randn(shape, generator=g) * std
    return out


class Adam:
    """Elementwise Adam ascent on one tensor whose units that `active` clears stay where they are."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def restart(self) -> None:
        """Forget the moments: the next step is a fresh Adam's first."""
        self.m = self.v = None
        self.t = 0

    def step(self, p: torch.Tensor, g: torch.Tensor, active: torch.Tensor) -> None:
        b1, b2 = self.betas
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros_like(p), torch.zeros_like(p)
        self.t += 1
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = self.m / (1 - b1 ** self.t)
        v_hat = self.v / (1 - b2 ** self.t)
        p.add_(_mask(self.lr * m_hat / (v_hat.sqrt() + self.eps), active))


def _mask(t: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    return t * active.view(-1, *[1] * (t.ndim - 1)).to(t.dtype)


@dataclass
class FourierImage:
    """lucent's fft_image + to_valid_rgb: spectrum (U, C, H, W//2+1) complex (as real pairs)."""

    spectrum: torch.Tensor
    scale: torch.Tensor
    size: tuple[int, int]
    decorrelate: bool
    opt: Adam

    @classmethod
    def create(cls, units: np.ndarray, channels: int, size: tuple[int, int], seed: int, s: dict[str, Any],
               device: torch.device) -> FourierImage:
        h, w = size
        fy = torch.fft.fftfreq(h).view(-1, 1)
        fx = torch.fft.rfftfreq(w).view(1, -1)
        freqs = (fx * fx + fy * fy).sqrt()
        scale = 1.0 / freqs.clamp_min(1.0 / max(h, w)) ** float(s["decay_power"])
        spectrum = unit_noise(units, (channels, h, w // 2 + 1, 2), seed, float(s["init_std"])).to(device)
        return cls(spectrum, scale.to(device)[None, None, :, :, None], size, bool(s["decorrelate"]) and channels == 3,
                   Adam(float(s["lr"])))

    @property
    def params(self) -> torch.Tensor:
        return self.spectrum

    def image(self) -> torch.Tensor:
        """(U, C, H, W) in [0, 1]."""
        spec = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        x = torch.fft.irfftn(spec, s=self.size, dim=(-2, -1), norm="ortho") / 4.0  # lucent's "magic" 4
        if self.decorrelate:
            m = COLOR_SVD_SQRT.to(x.device, x.dtype)
            m = m / m.norm(dim=0).max()
            x = torch.einsum("uchw,dc->udhw", x, m)
        return torch.sigmoid(x)

    def update(self, grad: torch.Tensor, active: torch.Tensor, step: int) -> None:
        with torch.no_grad():
            self.opt.step(self.spectrum, grad, active)


@dataclass
class PixelImage:
    """Pixels (U, C, H, W) in [0, 1], moved by normalised gradient ascent, then regularised."""

    x: torch.Tensor
    mean: torch.Tensor  # (1, C, 1, 1): the pixel decay and clipping pull towards (0.5 without a recorded mean)
    s: dict[str, Any]

    @classmethod
    def create(cls, units: np.ndarray, channels: int, size: tuple[int, int], seed: int, s: dict[str, Any],
               device: torch.device, mean: tuple[float, ...]) -> PixelImage:
        m = torch.tensor(mean if mean else (0.5,) * channels, dtype=torch.float32).view(1, -1, 1, 1).to(device)
        x = (m + unit_noise(units, (channels, *size), seed, float(s["init_std"])).to(device)).clamp(0, 1)
        return cls(x, m, s)

    @property
    def params(self) -> torch.Tensor:
        return self.x

    def image(self) -> torch.Tensor:
        return self.x

    def update(self, grad: torch.Tensor, active: torch.Tensor, step: int) -> None:
        """One step of the DVT loop: ascend, clip to the valid range, decay, blur every n, clip
        small-norm and small-contribution pixels to the mean."""
        s = self.s
        with torch.no_grad():
            g = grad / grad.flatten(1).abs().amax(1).clamp_min(1e-30).view(-1, 1, 1, 1)  # no overflow in the square
            g = g / g.flatten(1).square().mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1)
            old = self.x.clone()
            c = self.x + float(s["lr"]) * g - self.mean
            c = (c + self.mean).clamp(0, 1) - self.mean
            c = c * (1 - float(s["decay"]))
            if s["blur_every"] and s["blur_radius"] > 0 and step % int(s["blur_every"]) == 0:
                c = blur(c, float(s["blur_radius"]))
            if s["norm_pct"] > 0:
                c = c * ~_below(c.norm(dim=1), float(s["norm_pct"]))[:, None]
            if s["contrib_pct"] > 0:
                c = c * ~_below((grad * -c).sum(1).abs(), float(s["contrib_pct"]))[:, None]
            new = (c + self.mean).clamp(0, 1)
            self.x = torch.where(active.view(-1, 1, 1, 1), new, old)


def _below(v: torch.Tensor, pct: float) -> torch.Tensor:
    """(U, H, W) mask of values under each unit's `pct` percentile (strictly, as the DVT)."""
    q = torch.quantile(v.flatten(1), pct / 100, dim=1, interpolation="linear")
    return v < q.view(-1, 1, 1)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (U, C, H, W) with mirrored borders: scipy's gaussian_filter
    (the DVT's blur) with mode="mirror" and its default truncate=4 (the kernel is cut to the
    image on images smaller than 4σ + 1)."""
    r = min(int(4 * sigma + 0.5), min(x.shape[-2:]) - 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


SCALES = [1 + (i - 5) / 50 for i in range(11)]
ANGLES = list(range(-10, 11)) + [0] * 5
"""lucent's standard_transforms: random_scale and random_rotate's choices (degrees)."""


def random_transform(x: torch.Tensor, g: torch.Generator, fill: float = 0.5) -> torch.Tensor:
    """lucent's standard_transforms (pad 12 with 0.5, jitter 8, scale, rotate, jitter 4), one
    draw from `g` for the whole batch, as one size-keeping affine warp: the model sees an input
    of its own size (FC heads need it). Shifts scale with the image (8 and 4 px at 224 px, at
    least 1 px); what moves in from outside is `fill`, as lucent's padding."""
    h, w = x.shape[-2:]
    big = max(h, w)
    j1, j2 = max(1, round(8 * big / 224)), max(1, round(4 * big / 224))

    def pick(n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=g))

    dy1, dx1 = pick(2 * j1 + 1) - j1, pick(2 * j1 + 1) - j1
    s = SCALES[pick(len(SCALES))]
    a = math.radians(ANGLES[pick(len(ANGLES))])
    dy2, dx2 = pick(2 * j2 + 1) - j2, pick(2 * j2 + 1) - j2
    # output pixel p reads input at R(-a) (p - t2) / s - t1 in pixels (centre origin); in the
    # grid's coordinates, x / (w/2) and y / (h/2), the rotation's off-diagonal terms take the
    # aspect ratio (without it a wide image is sheared, not rotated)
    cos, sin = math.cos(a) / s, math.sin(a) / s
    xy, yx = sin * (h / w), sin * (w / h)  # square: sin itself, as before
    tx2, ty2 = 2 * dx2 / w, 2 * dy2 / h
    theta = torch.tensor([[cos, xy, -(cos * tx2 + xy * ty2) - 2 * dx1 / w],
                          [-yx, cos, -(-yx * tx2 + cos * ty2) - 2 * dy1 / h]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
