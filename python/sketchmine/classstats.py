"""Per-class statistics over ALL images, accumulated during the mining pass.

The top-k answers "which 9 images excite this unit most"; a class histogram of those 9 is a
biased, tiny sample. `RunningClassStats` keeps, per layer, unit and class, the sum and the
count of the image-level maximum (the same spatial max the top-k ranks) over every labelled
image, so the class preference of a unit can be read from the whole dataset. It also keeps,
per class, the summed ink density of the input images (see `ink_density`).

Like `topk.RunningTopK` it knows nothing about models: add, merge, state, restore.
Labels outside [0, num_classes) (unknown: -1) land in a discarded extra row, so no
host-device synchronisation is needed to filter them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

INK_THRESHOLD = 0.5
"""A pixel is ink when its gray value differs from the image's background by more than this
(pixel values in [0, 1])."""


def num_classes_for(class_names: Sequence[str], logit_width: int | None) -> int:
    """Classes the statistics are kept for: the dataset's class names, else the model's
    output width (a torch Dataset with integer labels but no names); 0 = none."""
    return len(class_names) or int(logit_width or 0)


def gray_levels(x: torch.Tensor, mean: Sequence[float] = (), std: Sequence[float] = ()) -> torch.Tensor:
    """(N, ch, H, W) model input → (N, H, W) float32 gray value in [0, 1]: the channel mean of
    x * std + mean, accumulated channel by channel (one pass over the batch, no full copy)."""
    ch = x.shape[1]
    scale = list(std) if std else [1.0] * ch
    gray = x[:, 0].float() * (scale[0] / ch)
    for c in range(1, ch):
        gray.add_(x[:, c], alpha=scale[c] / ch)
    return gray.add_(sum(mean) / ch) if mean else gray


def ink_density(gray: torch.Tensor) -> torch.Tensor:
    """Fraction of ink pixels per image. gray (N, H, W) in [0, 1] → (N,) float64.

    Polarity is decided per image: the background is the median gray value of the image's
    one-pixel border, ink is every pixel further than INK_THRESHOLD from it. The embedded
    Animal-Shape images are white silhouettes on black (ink = bright pixels); TU-Berlin-style
    sketches are dark strokes on white (ink = dark pixels); both are measured the same way.
    """
    border = torch.cat([gray[:, 0, :], gray[:, -1, :], gray[:, 1:-1, 0], gray[:, 1:-1, -1]], dim=1)
    background = border.median(dim=1).values
    ink = (gray - background[:, None, None]).abs_().gt_(INK_THRESHOLD)
    return ink.flatten(1).sum(dim=1, dtype=torch.float64) / ink[0].numel()


class RunningClassStats:
    """Per layer (C units) × class: sum (float64) and count (int64) of image maxima; per unit the
    NaN maps excluded; per class the summed ink density and image count.

    layers: {name: channels}. mean/std: the normalisation to undo before measuring ink
    (empty: inputs are taken as [0, 1] already).
    """

    def __init__(self, layers: dict[str, int], num_classes: int, device: torch.device | str = "cpu",
                 mean: Sequence[float] = (), std: Sequence[float] = ()) -> None:
        self.num_classes, self.device = num_classes, torch.device(device)
        rows = num_classes + 1  # + the discard row for unknown labels
        self.layers = dict(layers)
        # one (rows, all units) block per statistic, each layer a column slice of it: a batch of
        # every layer is then added with one set of ops instead of one per layer (ResNet-50: 54)
        total = sum(self.layers.values())
        self._sums = torch.zeros(rows, total, dtype=torch.float64, device=device)
        self._counts = torch.zeros(rows, total, dtype=torch.int64, device=device)
        self._nans = torch.zeros(total, dtype=torch.int64, device=device)
        self.sums, self.counts, self.nans = {}, {}, {}
        at = 0
        for n, c in self.layers.items():
            self.sums[n], self.counts[n] = self._sums[:, at:at + c], self._counts[:, at:at + c]
            self.nans[n] = self._nans[at:at + c]
            at += c
        self._pending: dict[str, torch.Tensor] = {}  # this batch's maxima per layer, see add()
        self._labels: torch.Tensor | None = None
        self.ink = torch.zeros(rows, dtype=torch.float64, device=device)
        self.images = torch.zeros(rows, dtype=torch.int64, device=device)
        self._mean, self._std = [float(v) for v in mean], [float(v) for v in std]

    def rows(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels → row index; unknown or out-of-range labels → the discard row."""
        k = self.num_classes
        return torch.where((labels >= 0) & (labels < k), labels, torch.full_like(labels, k))

    def _accumulate(self, target: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        """target[rows[i]] += values[i]. On CPU one index_add (sequential per element, so
        bit-reproducible); on CUDA a one-hot GEMM, because float64 atomics add in any order."""
        values = values.to(target.dtype)
        if target.device.type == "cpu":
            target.index_add_(0, rows, values)
        else:
            onehot = torch.nn.functional.one_hot(rows, target.shape[0]).to(target.dtype)  # (N, rows)
            target.add_((onehot.T @ values.reshape(len(rows), -1)).view_as(target))

    def add(self, layer: str, maxima: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch of a layer: maxima (N, C), the image maxima the top-k ranked (what
        `RunningTopK.add` returns; NaN = an all-NaN map, excluded); labels (N,) int64, same device.

        Held until the batch ends (`end_batch`, or the next batch's labels, or any read), so
        that all layers of a batch are added together."""
        if self._labels is not None and labels is not self._labels:
            self.end_batch()
        self._labels = labels
        self._pending[layer] = maxima

    def end_batch(self) -> None:
        """Add the held batch: one block over all layers when every layer was seen, else per layer."""
        pending, labels = self._pending, self._labels
        self._pending, self._labels = {}, None
        if not pending:
            return
        rows = self.rows(labels)
        if len(pending) == len(self.layers):
            m = torch.cat([pending[n].reshape(len(rows), -1) for n in self.layers], dim=1)
            self._add_block(self._sums, self._counts, self._nans, m, rows)
        else:
            for n, m in pending.items():
                self._add_block(self.sums[n], self.counts[n], self.nans[n], m, rows)

    def _add_block(self, sums: torch.Tensor, counts: torch.Tensor, nans: torch.Tensor, maxima: torch.Tensor,
                   rows: torch.Tensor) -> None:
        m = maxima.double()
        nan = torch.isnan(m)
        if m.device.type == "cpu" and not bool(nan.any()):  # the common case: every map counts
            sums.index_add_(0, rows, m)
            counts.add_(torch.bincount(rows, minlength=self.num_classes + 1)[:, None])
            return
        self._accumulate(sums, rows, m.masked_fill(nan, 0.0))
        counts.index_add_(0, rows, (~nan).long())
        nans.add_(nan.sum(dim=0))

    def add_images(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """The model's input batch x (N, ch, H, W), normalised as in preprocessing."""
        if x.ndim != 4 or min(x.shape[-2:]) < 3:
            return
        rows = self.rows(labels)
        self._accumulate(self.ink, rows, ink_density(gray_levels(x, self._mean, self._std)))
        self.images.index_add_(0, rows, torch.ones_like(rows))

    def merge(self, other: RunningClassStats) -> None:
        """Fold in statistics over disjoint images (another worker or rank)."""
        self.end_batch()
        other.end_batch()
        for n in self.layers:
            self.sums[n].add_(other.sums[n].to(self.device))
            self.counts[n].add_(other.counts[n].to(self.device))
            self.nans[n].add_(other.nans[n].to(self.device))
        self.ink.add_(other.ink.to(self.device))
        self.images.add_(other.images.to(self.device))

    # ---- save / resume: two flat arrays, in layer order --------------------------------------
    def packed(self) -> dict[str, np.ndarray]:
        """{"class_sum": float64, "class_count": int64} flat arrays (layout: layer order, then ink)."""
        self.end_batch()
        names = list(self.layers)
        f = [self.sums[n].cpu().numpy().ravel() for n in names] + [self.ink.cpu().numpy()]
        i = [self.counts[n].cpu().numpy().ravel() for n in names] + [self.nans[n].cpu().numpy() for n in names]
        return {"class_sum": np.concatenate(f), "class_count": np.concatenate([*i, self.images.cpu().numpy()])}

    def load_packed(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from `packed()`; raises ValueError when the layout does not fit."""
        self._pending, self._labels = {}, None
        f, i = np.asarray(arrays["class_sum"]), np.asarray(arrays["class_count"])
        rows, names = self.num_classes + 1, list(self.layers)
        total = sum(self.layers.values())
        if f.shape != (rows * total + rows,) or i.shape != (rows * total + total + rows,):
            raise ValueError(f"packed class statistics of shape {f.shape}/{i.shape} do not fit "
                             f"{len(names)} layers, {total} units, {self.num_classes} classes")
        at = at_n = 0
        for n in names:
            c = self.layers[n]
            self.sums[n].copy_(torch.from_numpy(f[at:at + rows * c].reshape(rows, c)))
            self.counts[n].copy_(torch.from_numpy(i[at:at + rows * c].reshape(rows, c)))
            at += rows * c
        for n in names:
            c = self.layers[n]
            self.nans[n].copy_(torch.from_numpy(i[at + at_n:at + at_n + c]))
            at_n += c
        self.ink.copy_(torch.from_numpy(f[-rows:]))
        self.images.copy_(torch.from_numpy(i[-rows:]))

    # ---- results --------------------------------------------------------------------------
    @property
    def labelled_images(self) -> int:
        return int(self.images[:self.num_classes].sum())

    def results(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(class_mean (C, K) float64, NaN where a class has no image; class_count (C, K) int64)."""
        self.end_batch()
        s = self.sums[layer][:self.num_classes].T.cpu().numpy()
        c = self.counts[layer][:self.num_classes].T.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        return mean, c.copy()

    def ink_results(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ink density per class (K,) float64, NaN for classes without images; images (K,) int64)."""
        s, c = self.ink[:self.num_classes].cpu().numpy(), self.images[:self.num_classes].cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan), c.copy()


def unpack(arrays: dict[str, np.ndarray], layers: dict[str, int], num_classes: int) -> RunningClassStats:
    """A CPU statistics object from a checkpoint's packed arrays (for reading partial runs)."""
    st = RunningClassStats(layers, num_classes)
    st.load_packed(arrays)
    return st


# ---- the miner's hook: start (or resume) and write ------------------------------------------
PACKED_KEYS = ("class_sum", "class_count")


def start(store, layers: dict[str, int], class_names: Sequence[str], preprocessing, device: torch.device,
          resumed: bool) -> RunningClassStats | None:
    """Statistics for a mining pass: None when the dataset has no classes, or when a resumed
    checkpoint predates class statistics (that run then ends without them)."""
    k = num_classes_for(class_names, store.attrs.get("num_classes"))
    if k == 0:
        return None
    pre = preprocessing
    stats = RunningClassStats(layers, k, device, getattr(pre, "mean", ()) or (), getattr(pre, "std", ()) or ())
    if resumed:
        saved = store.read_checkpoint_arrays(PACKED_KEYS)
        if saved is None:
            return None
        stats.load_packed(saved)
    return stats


def final_arrays(stats: RunningClassStats | None) -> dict[str, np.ndarray]:
    """layers/<name>/{class_mean, class_count, class_nan_count} and dataset/{class_ink_density,
    class_image_count} by store path, only when some labelled image was seen (else none)."""
    if stats is None or stats.labelled_images == 0:
        return {}
    arrays: dict[str, np.ndarray] = {}
    for name in stats.layers:
        mean, count = stats.results(name)
        arrays.update({f"layers/{name}/class_mean": mean, f"layers/{name}/class_count": count,
                       f"layers/{name}/class_nan_count": stats.nans[name].cpu().numpy()})
    ink, images = stats.ink_results()
    arrays.update({"dataset/class_ink_density": ink, "dataset/class_image_count": images})
    return arrays
