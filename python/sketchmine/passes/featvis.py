"""Feature visualisation by optimisation, many units at once: the input that drives each unit
hardest, under one of two regularisation families (featvis_params.py).

Batched over units: one batch element per unit, one forward and one backward per step for
the whole batch, each element's objective its own unit (a gather). Every piece acts per
element (model in eval mode, per-unit initial noise, elementwise optimiser, transforms shared
by the batch), so no unit reads another's; the forward's rounding still depends on the batch
size, and hundreds of steps amplify it, so a unit's image is reproducible for the same batch
(docs/visualize.md), not equal to its image alone.

The objective of a unit, on the layer's output in the miner's layout (taps.to_units):
- grid units (conv): the unit at the centre of the grid, as the Deep Visualization Toolbox
  pushed it. Chosen over the mean over positions because the run ranks a unit by one position
  (its spatial maximum) and shows the patch under one receptive field beside the image: the
  centre gives one receptive field's worth of image, comparable with the patches, and it drives
  the spatial maximum higher than spreading the same steps over every position;
- FC units (and an LSTM's cell state): the output itself;
- softmax (the virtual layer or an nn.Softmax module): the logit, the softmax's input (the
  probability saturates and its gradient vanishes; the logit's does not);
- recurrent layers (time as the position): the mean over steps of the whole output.
Models that read sequences of drawings (demo-gru) are refused: their input is not one image.
The forward stops right after the layer (cut.stop_after): nothing after it is computed; a module
the forward calls more than once is refused (the one full probe forward that counts the layer's
units counts its calls too).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchmine.data import Preprocessing
from sketchmine.data.preprocess import as_size
from sketchmine.device import as_device
from sketchmine.errors import SketchmineError, whole_number
from sketchmine.model import cut
from sketchmine.model.backend import LoadedModel, first_tensor
from sketchmine.model.models import given_preprocessing, load_model
from sketchmine.model.modes import eval_mode, input_dtype
from sketchmine.model.output_softmax import softmax_logits
from sketchmine.model.taps import SOFTMAX, probe_layouts, resolve_layers, tapped_element, to_units
from sketchmine.passes.featvis_params import FourierImage, PixelImage, random_transform
from sketchmine.passes.featvis_relu import redirected_relus
from sketchmine.regularizers import settings

METHODS = ("fourier", "pixel")
DEFAULT_SIZE = 224
"""Input size when neither `size` nor the model's recorded preprocessing gives one (ImageNet's)."""


@dataclass
class FeatureVisualization:
    """Optimised images of `units` of `layer`. Unpacks as (images, pixels).

    images (U, C, H, W) float32: model input (normalised as the model was trained);
    pixels (U, H, W, C) uint8: the same images for display;
    objective (U,): each unit's objective at its final image (float, untransformed);
    peak (U,): the unit's spatial maximum at the uint8 image, as the run's top-k ranks it;
    stopped (U,): the step at which a non-finite value stopped the unit (its image is the last
    finite one), -1 for units that ran every step;
    no_gradient (U,) bool: the unit's objective gave the input a zero gradient at every step (a
    unit read after a ReLU that is 0 where the objective reads it, from the start image on), so
    its image is the starting noise (as the regularisers left it), not an optimised input."""

    layer: str
    units: np.ndarray
    images: torch.Tensor
    pixels: np.ndarray
    objective: np.ndarray
    peak: np.ndarray
    stopped: np.ndarray
    method: str
    steps: int
    seed: int
    regularizers: dict[str, Any] = field(default_factory=dict)
    no_gradient: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __iter__(self) -> Iterator[Any]:
        return iter((self.images, self.pixels))


class LayerReader:
    """Reads one layer's output, in the miner's (N, units, *positions) layout, from a forward
    that stops right after it; `objective` and `peak` pick each element's own unit."""

    def __init__(self, net: nn.Module, layer: str, known: dict[str, Any] | None = None) -> None:
        resolve_layers(net, [layer])  # unknown names: the closest ones
        self.net, self.layer = net, layer
        self.known = known  # how the miner read the layer (`Run.layer_attrs`); else the graph's, at the first call
        if layer == SOFTMAX:
            self.module: nn.Module = net
            self.target, self.centre = "", False
        else:
            self.target, self.module = cut.cut_module(net, layer)
            self.centre = not isinstance(self.module, (nn.RNNBase, nn.Linear, nn.Softmax)) and self.target == layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for float32 input `x`, as float32; the model is fed its parameters'
        dtype (a half model refuses float32), so the optimised image stays float32."""
        x = x.to(input_dtype(self.net))
        if self.layer == SOFTMAX:  # the logits: the output, or what the model's own final softmax was fed
            out, fed = softmax_logits(lambda: self.net(x))
            return (first_tensor(out) if fed is None else fed).float()
        self._learn(x)
        got: list[torch.Tensor] = []

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            got.append(self._read(module, inputs, output, x.shape[0]))

        handle = self.module.register_forward_hook(hook)
        try:
            with cut.stop_after(self.net, self.layer) as run:
                run(x)
        finally:
            handle.remove()
        return got[0].float()

    def _read(self, module: nn.Module, inputs: tuple, output: Any, batch: int) -> torch.Tensor:
        """The layer's output in the miner's layout from one call of its module (a softmax: the logits)."""
        if isinstance(module, nn.Softmax):
            return inputs[0]
        cell = self.target != self.layer
        return to_units(self.layer, module, tapped_element(self.layer, module, output, cell), batch, cell,
                        self.known)[0]

    def _learn(self, x: torch.Tensor) -> None:
        """The layer's layout from the graph, for input like `x`, unless the run's was given: a
        module between a ConvNeXt block's permutes holds its units last, a per-step Linear may be
        time-first: `probe_layouts`, one image, as the miner's probe)."""
        if self.known is None:
            with torch.no_grad():
                one = x[:1].detach().to(input_dtype(self.net))  # a half model takes half input
                self.known = dict(probe_layouts(self.net, [self.layer], one).get(self.layer, {}))

    def unit_count(self, x: torch.Tensor) -> int:
        """The layer's unit count, from one full forward that also refuses a module the forward
        calls more than once (ResNet's shared block ReLU), as the miner does: `__call__` stops at
        its first call and would optimise that call only. A forward that fails after the first
        call (the layers after it need another input size) has no second call before the failure
        and ends the count there. The first call is read after the forward, so a second call is
        refused before anything wrong with the first (as two forwards, counting then reading, did)."""
        if self.layer == SOFTMAX:
            return int(self(x).shape[1])
        calls: list[tuple[nn.Module, tuple, Any]] = []

        def count(module: nn.Module, inputs: tuple, output: Any) -> None:
            if calls:
                raise SketchmineError(f"layer {self.layer!r} ({type(module).__name__}) is called more than once per "
                                      "forward pass, so one objective would mix its calls; visualise the modules "
                                      "around it instead (e.g. the conv or the block output)")
            calls.append((module, inputs, output))

        handle = self.module.register_forward_hook(count)
        try:
            self.net(x.to(input_dtype(self.net)))
        except SketchmineError:
            raise
        except Exception:
            if not calls:
                raise
        finally:
            handle.remove()
        if not calls:
            raise SketchmineError(f"the forward pass did not reach layer {self.layer!r}")
        self._learn(x)
        return int(self._read(*calls[0], x.shape[0]).shape[1])

    def objective(self, out: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """(U,) each element's unit: centre position (conv), mean over positions (recurrent,
        per-step linear), the value (FC, logit)."""
        per = out[torch.arange(out.shape[0], device=out.device), units].reshape(out.shape[0], -1)
        if per.shape[1] == 1:
            return per[:, 0]
        if self.centre:
            pos = out.shape[2:]
            centre = 0
            for n in pos:
                centre = centre * n + n // 2
            return per[:, centre]
        return per.mean(1)

    def peak(self, out: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """(U,) each element's unit's maximum over positions (what the top-k ranks): for a
        softmax, the probability (the top-k's value), not the logit the objective pushes."""
        if self.layer == SOFTMAX or isinstance(self.module, nn.Softmax):
            dim = getattr(self.module, "dim", None)
            out = torch.softmax(out, dim=1 if dim is None else dim)
        return out[torch.arange(out.shape[0], device=out.device), units].reshape(out.shape[0], -1).amax(1)


def feature_visualization(model: nn.Module | LoadedModel | str, layer: str, units: Sequence[int] | int, *,
                          steps: int = 256, size: int | tuple[int, int] | None = None, method: str = "fourier",
                          regularizers: str | dict[str, Any] | None = "default", seed: int = 0,
                          device: str | torch.device = "cpu", preprocessing: str | Preprocessing | None = None,
                          weights: str | os.PathLike | None = None,
                          model_seed: int | None = None) -> FeatureVisualization:
    """Optimise one input image per unit of `layer` (all units in one batch).

    model: a spec as `load_model` takes (as `mine`: a name or checkpoint path, `weights` for a name, and
    for a randomly initialised architecture `model_seed`, the seed `mine` built it from: 0 by default),
    or a loaded one; `seed` is the optimisation's own (its starting image). layer: a mined layer name (a module,
    "<lstm>.cell" or the virtual "softmax"); units: unit indices. method: "fourier" (lucent
    era) or "pixel" (deconvnet era); regularizers: "default", "none" (or None: plain ascent), a preset (pixel:
    "yosinski1".."yosinski4") or a dict overriding the family's settings (sketchmine.regularizers).
    size: an int S or (H, W); default the model's recorded preprocessing size, else the input size
    its metadata records (the embedded models: 28), else 224.
    preprocessing: the normalisation the model was trained with: a Preprocessing, or a preset name
    as `mine` takes it ("auto", the default: `preprocessing_for`; "model", "imagenet", "none", "pixels").
    The channel count is the model's (1: a grey image; 3: colour). Deterministic for a seed and the
    same `units` (docs/visualize.md). A module stays on `device` (as `module.to(device)` leaves it,
    as `mine` does); its train/eval flags are given back.
    """
    loaded = load_model(model, weights, model_seed)  # a LoadedModel as it is; weights or a seed with one are refused
    net = loaded.module
    if not isinstance(net, nn.Module):
        raise SketchmineError(f"{loaded.model_id} runs in {type(net).__name__} (ONNX Runtime), which gives no gradients; "
                              "feature visualisation needs the torch module")
    if loaded.sequence:
        raise SketchmineError(f"{loaded.model_id} reads sequences of drawings ({loaded.sequence.get('steps')} steps), "
                              "not one image; feature visualisation optimises one input image per unit")
    steps = whole_number(steps, "steps")
    seed = whole_number(seed, "seed", low=0)  # numpy's seeding refuses a negative one
    if seed >= 2 ** 64:  # torch's generator takes 64 bits
        raise SketchmineError(f"seed must be a whole number below 2**64 (torch's generators take 64 bits), got {seed}")
    s = settings(method, regularizers)
    pre = given_preprocessing(loaded, preprocessing, "feature visualisation")
    hw = as_size(size, "size", pre.channels) if size is not None else \
        (pre.size or loaded.input_size or (DEFAULT_SIZE, DEFAULT_SIZE))
    device = as_device(device)
    net = net.to(device)
    reader = LayerReader(net, layer)
    with eval_mode(net):  # the caller's flags back after
        unit_arr = _check_units(reader, units, pre.channels, hw, device)
        return optimize(reader, unit_arr, pre, tuple(hw), method, s, int(steps), int(seed), device)  # type: ignore[arg-type]


def _check_units(reader: LayerReader, units: Sequence[int] | int, channels: int, hw: tuple[int, int],
                 device: torch.device) -> np.ndarray:
    """The unit indices as an int64 array, each checked against the layer's unit count (a
    probe forward of a grey image), and the layer checked to be called once per forward."""
    arr = np.atleast_1d(np.asarray(units))
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise SketchmineError(f"units must be unit indices (ints), got {units!r}")
    if arr.size == 0:
        raise SketchmineError(f"no units given for layer {reader.layer!r}")
    with torch.no_grad():
        try:
            n = reader.unit_count(torch.zeros((1, channels, *hw), device=device))
        except SketchmineError:
            raise
        except RuntimeError as exc:
            raise SketchmineError(f"the model did not run on a ({channels}, {hw[0]}, {hw[1]}) input up to layer "
                                  f"{reader.layer!r}: {str(exc).splitlines()[0]}; pass its input size (size=), or, where the "
                                  f"channels are wrong, the preprocessing it was trained with (preprocessing=; "
                                  f"this one gives {channels} channel{'s' if channels > 1 else ''})") from None
    bad = [int(u) for u in arr if not 0 <= int(u) < n]
    if bad:
        raise SketchmineError(f"unit(s) {', '.join(map(str, bad[:5]))} out of range for layer {reader.layer!r}, which "
                              f"has {n} units (0 to {n - 1})")
    return arr.astype(np.int64)


def optimize(reader: LayerReader, units: np.ndarray, pre: Preprocessing, hw: tuple[int, int], method: str,
             s: dict[str, Any], steps: int, seed: int, device: torch.device) -> FeatureVisualization:
    """The optimisation loop: one batched forward and backward per step."""
    idx = torch.from_numpy(units).to(device)
    if method == "fourier":
        param: FourierImage | PixelImage = FourierImage.create(units, pre.channels, hw, seed, s, device)
    else:
        param = PixelImage.create(units, pre.channels, hw, seed, s, device, tuple(pre.mean))
    g = torch.Generator().manual_seed(int(seed))  # the transforms: one draw per step for every unit
    robust = steps - round(float(s.get("polish", 0.0)) * steps) if method == "fourier" and s["transforms"] else 0
    normalise = _normaliser(pre, device)
    active = torch.ones(len(units), dtype=torch.bool, device=device)
    stopped = np.full(len(units), -1, dtype=np.int64)
    moved = torch.zeros(len(units), dtype=torch.bool, device=device)
    for step in range(steps):
        p = param.params.detach().requires_grad_(True)
        with torch.enable_grad():
            with redirected_relus() if s.get("redirect_relu") else contextlib.nullcontext():  # the forward only
                img = _image_of(param, p)
                seen = random_transform(img, g) if step < robust else img  # then polish
                out = reader(normalise(seen))
            if not out.requires_grad:
                raise SketchmineError(f"layer {reader.layer!r} ({type(reader.module).__name__}) gives no gradient "
                                      "with respect to the input (not differentiable); visualise another layer")
            obj = reader.objective(out, idx)
            (grad,) = torch.autograd.grad(obj[active].sum(), p, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(p)
        moved |= (grad != 0).flatten(1).any(1)
        bad = ~torch.isfinite(obj.detach()) | ~torch.isfinite(grad).flatten(1).all(1)
        newly = bad & active
        if newly.any():
            stopped[newly.cpu().numpy()] = step
            active &= ~bad
        grad = torch.where(active.view(-1, *[1] * (grad.ndim - 1)), grad, torch.zeros_like(grad))
        if not active.any():
            break
        if step == robust and step > 0 and isinstance(param, FourierImage) and s["reset"]:
            param.opt.restart()  # the polish's gradients are not the transformed ones Adam averaged
        param.update(grad, active, step)
    with torch.no_grad():
        img = param.image().clamp(0, 1)
        images = normalise(img)
        objective = reader.objective(reader(images), idx)
        pixels = (img * 255).round().to(torch.uint8)
        peak = reader.peak(reader(normalise(pixels.float() / 255)), idx)
    return FeatureVisualization(reader.layer, units, images.cpu(), pixels.permute(0, 2, 3, 1).cpu().numpy(),
                                objective.float().cpu().numpy(), peak.float().cpu().numpy(), stopped, method,
                                steps, seed, s, no_gradient=(~moved).cpu().numpy())


def _image_of(param: FourierImage | PixelImage, p: torch.Tensor) -> torch.Tensor:
    """The image from parameters `p` (a leaf requiring grad standing in for param.params)."""
    if isinstance(param, FourierImage):
        return FourierImage(p, param.scale, param.size, param.decorrelate, param.opt).image()
    return p


def _normaliser(pre: Preprocessing, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """[0, 1] pixels (U, C, H, W) → model input, by the recorded mean/std."""
    if not pre.mean:
        return lambda x: x
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std
