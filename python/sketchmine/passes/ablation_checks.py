"""What an ablation pass checks of a model before it averages over it (ablation.py, effects.py):
its output must be one finite logit per class of each image, computed for each image apart from
the others of its batch; else the means the passes store would be NaN, of another distribution,
or mixed across the copies of a batch they stack, and nothing would say so."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sketchmine.data import MinerDataset
from sketchmine.errors import SketchmineError


def logits_of(out: Any) -> torch.Tensor:
    """The (N, classes) logits of a model's output (a tuple's first element), or why not."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim != 2:
        raise SketchmineError(f"ablation importance needs (N, classes) logits; the model returns {tuple(out.shape)}")
    return out


def check_finite(logits: torch.Tensor, idx: torch.Tensor, dataset: MinerDataset, layer: str,
                 units: list[int] | None = None) -> None:
    """Refuse logits that are NaN or ±inf: importance and effects average every class's
    probability (and logit change) over all images, and a non-finite logit has no probability
    (softmax gives NaN), so one such image would turn every unit's mean into NaN, which the
    tables and dashboards could only show as no effect. logits (G * B, classes), replica-major
    over the chunk's images `idx`; `units`: the units zeroed, one per replica (None: the clean run)."""
    bad = ~torch.isfinite(logits).all(dim=1)
    if not bool(bad.any()):
        return
    where = int(bad.nonzero()[0, 0])
    image = int(idx[where % len(idx)])
    what = ("the model's logits are" if units is None else
            f"zeroing unit {units[where // len(idx)]} of layer {layer!r} makes the model's logits")
    raise SketchmineError(
        f"{what} NaN or infinite on image {dataset.path(image)} (index {image}; {int(bad.sum())} of this chunk's "
        f"{len(logits)} forward rows): ablating layer {layer!r} averages each class's probability over every image, "
        "and a non-finite logit has none; make the model return finite logits (torch.nan_to_num, or clamp them)"
        + (", or ablate other layers" if units is not None else ""))


def check_not_probabilities(logits: torch.Tensor, layer: str) -> None:
    """Refuse a model whose output is already a probability per class (its forward ends in a
    softmax): every row of the chunk >= 0 and summing to 1. The passes take the softmax of the
    output, and the softmax of probabilities is another, flatter distribution, so every
    probability change and drop would be silently wrong (logits: no row of theirs is one)."""
    if logits.shape[1] < 2 or not bool((logits >= 0).all()):
        return
    sums = logits.double().sum(1)
    tolerance = max(1e-4, logits.shape[1] * torch.finfo(logits.dtype).eps)  # a bfloat16 softmax sums to 1 ± 1 %
    if bool(((sums - 1).abs() <= tolerance).all()):
        raise SketchmineError(
            f"ablating layer {layer!r}: the model returns probabilities, not logits (every output row of "
            f"{len(logits)} images is >= 0 and sums to 1): importance and effects take the softmax of the output, "
            "and the softmax of probabilities is not the model's; give a model whose forward returns the logits "
            "(without its final softmax) or their log_softmax")


def check_images_apart(logits: Callable[[torch.Tensor], torch.Tensor], layer: str, x: torch.Tensor,
                       alone: torch.Tensor) -> None:
    """Refuse a model whose logits for an image depend on the other images of its batch (a
    BatchNorm without running statistics normalises with the batch's own, in eval mode too):
    every ablation run stacks copies of the chunk, a different unit zeroed in each, which such a
    model would mix. Told by running the chunk beside as many other inputs: its rows must
    be the logits it has alone (`alone`, the chunk's own logits), up to rounding; and first by
    running it alone again, so a model whose eval mode is random is not said to mix images.
    Logits that are not all finite are left to `check_finite`, which the passes run next and which
    names the image: NaN is unlike itself, and a NaN scale is no tolerance. `logits(x)`: the
    model's logits on input x, as the ablation takes them."""
    if not bool(torch.isfinite(alone).all()):
        return
    other = x.flip(-1) * 0.5 + 0.25 * x.mean()  # any inputs unlike the chunk's
    with torch.inference_mode():
        again = logits(x.clone())
        beside = logits(torch.cat([x, other]))[:len(x)]
    scale = max(float(alone.abs().max()), 1.0)

    # 1e-3 of the logits' scale: above a GPU's TF32 convolutions' rounding; a half model's: 8 of its steps
    tol = max(1e-3, 8 * torch.finfo(alone.dtype).eps)

    def alike(t: torch.Tensor) -> bool:
        return t.shape == alone.shape and torch.allclose(t, alone, rtol=tol, atol=tol * scale)

    if not alike(again):  # told apart from the batch: the same chunk alone gives other logits
        raise SketchmineError(
            f"ablating layer {layer!r}: the model's logits vary from one forward pass to the next on the same "
            f"{len(x)} images (dropout or noise active in eval mode, F.dropout(training=True)): every unit's "
            "effect would carry that noise; make the model's eval mode deterministic to ablate it")
    if not alike(beside):
        raise SketchmineError(
            f"ablating layer {layer!r}: the model's logits for an image depend on the other images of its batch "
            f"(the first {len(x)} images' logits change by up to {float((beside - alone).abs().max()):.3g} when "
            "other images join their batch: a BatchNorm without running statistics, track_running_stats=False, "
            "normalises with the batch's own, in eval mode too). An ablation runs copies of a batch with a "
            "different unit zeroed in each, which such a model would mix, and its results would depend on the "
            "batch size; give the model running statistics (or norms per image) to ablate it")


def check_before_softmax(layer: str, act: torch.Tensor, logits: torch.Tensor, fed: bool | None) -> None:
    """Refuse a layer whose output is the model's final softmax's result, or a copy of it (an
    nn.Softmax named as a layer): the passes read the logits that softmax is fed, which zeroing
    its result leaves as they are, so every unit would read as changing nothing."""
    if not fed or act.shape[0] != logits.shape[0] or act[0].numel() != logits.shape[1]:
        return
    if torch.allclose(act.reshape(logits.shape).to(logits.dtype), torch.softmax(logits, 1), rtol=1e-5, atol=1e-6):
        raise SketchmineError(
            f"layer {layer!r} is the model's final softmax: importance and effects zero units before it and read "
            "the logits it is fed; ablate the layer that computes them")
