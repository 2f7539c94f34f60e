"""Per-class statistics over ALL images, accumulated during the mining pass.

The top-k answers "which 9 images excite this unit most"; a class histogram of those 9 is a
biased, tiny sample. `RunningClassStats` keeps, per layer, unit and class, the sum and the
count of the image-level maximum (the same spatial max the top-k ranks) over every labelled
image, so the class preference of a unit can be read from the whole dataset. It also keeps,
per class, the summed ink density of the input images (stats/ink.py).

Like `topk.RunningTopK` it knows nothing about models: add, merge, state, restore; it is the
pass's accumulator under the key "classes" (accumulators.py), fed the image maxima the top-k
computed. Labels outside [0, num_classes) (unknown: -1) land in a discarded extra row, so no
host-device synchronisation is needed to filter them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sketchmine.errors import SketchmineError
from sketchmine.lazy import lazy
from sketchmine.store import schema
from sketchmine.stats.ink import INK_THRESHOLD, gray_levels, gray_terms, ink_density, unit_range
from sketchmine.store.columns import Columns

if TYPE_CHECKING:
    import torch

    from sketchmine.stats import ops
    from sketchmine.stats.accumulators import Batch, Setup
    from sketchmine.store.runstore import RunStore
else:  # imported on first use: reading a run needs neither (sketchmine/lazy.py)
    torch, ops = lazy("torch", globals()), lazy("sketchmine.stats.ops", globals())

KEY = "classes"
"""The class statistics' namespace in the checkpoint."""


def num_classes_for(class_names: Sequence[str], logit_width: int | None) -> int:
    """Classes the statistics are kept for: the dataset's class names, else the model's
    output width (a torch Dataset with integer labels but no names); 0 = none."""
    return len(class_names) or int(logit_width or 0)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.zeros, on the CPU from calloc'd memory that the kernel zeroes a page at a time when
    first written: a 1,000-class table over a 10-class probe set (AlexNet: 83 MB, 30 ms to zero
    at every `mine` call) touches only the rows of the labels seen."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.zeros(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


class RunningClassStats:
    """Per layer (C units) × class: the sum (float64) of image maxima and the images seen; the
    NaN maps (excluded from sums and counts) per class and unit; per class the summed ink
    density and image count.

    A (class, unit) count is the images of the class the layer saw minus its NaN maps there.
    NaN maps are rare, so their table is allocated at the first one (on CUDA, where checking
    would synchronise, at once) and checkpointed as its non-zero cells: a 1,000-class ResNet-50
    (27,560 units) keeps and checkpoints one 220 MB table per flush instead of two, and a
    batch adds its rows instead of rewriting a dense count table.

    layers: {name: channels}. mean/std: the normalisation to undo before measuring ink
    (empty: inputs are taken as [0, 1] already).
    """

    key, title = KEY, "class statistics"

    def __init__(self, layers: dict[str, int], num_classes: int, device: torch.device | str = "cpu",
                 mean: Sequence[float] = (), std: Sequence[float] = ()) -> None:
        self.num_classes, self.device = num_classes, torch.device(device)
        rows = num_classes + 1  # + the discard row for unknown labels
        self.layers = dict(layers)
        # one (rows, all units) block per statistic, each layer a column slice of it: a batch of
        # every layer is then added with one set of ops instead of one per layer (ResNet-50: 54)
        self._columns: dict[str, slice] = {}
        at = 0
        for n, c in self.layers.items():
            self._columns[n] = slice(at, at + c)
            at += c
        self._index = {n: i for i, n in enumerate(self.layers)}
        self._sums = _zeros((rows, at), torch.float64, self.device)
        self._seen = torch.zeros(rows, len(self.layers), dtype=torch.int64, device=device)  # images per layer
        self._nan_cells: torch.Tensor | None = None  # (rows, units) int64 NaN maps, see _nan_table
        self._nans = torch.zeros(at, dtype=torch.int64, device=device)  # per unit, every label
        self._pending: dict[str, torch.Tensor] = {}  # this batch's maxima per layer, see add()
        self._labels: torch.Tensor | None = None
        self.ink = torch.zeros(rows, dtype=torch.float64, device=device)
        self.images = torch.zeros(rows, dtype=torch.int64, device=device)
        self._mean, self._std = [float(v) for v in mean], [float(v) for v in std]
        # on the host index_add adds sequentially (bit-reproducible) and a NaN check costs no
        # device synchronisation; elsewhere (CUDA) the one-hot GEMM path below
        self.host = self.device.type == "cpu"

    def _nan_table(self) -> torch.Tensor:
        if self._nan_cells is None:
            self._nan_cells = _zeros(tuple(self._sums.shape), torch.int64, self.device)
        return self._nan_cells

    def rows(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels → row index; unknown or out-of-range labels → the discard row."""
        k = self.num_classes
        return torch.where((labels >= 0) & (labels < k), labels, torch.full_like(labels, k))

    def _accumulate(self, target: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        """target[rows[i]] += values[i]. On CPU one index_add (sequential per element, so
        bit-reproducible); on CUDA a one-hot GEMM, because float64 atomics add in any order."""
        values = values.to(target.dtype)
        if self.host:
            target.index_add_(0, rows, values)
            return
        onehot = torch.nn.functional.one_hot(rows, target.shape[0]).to(target.dtype)  # (N, rows)
        flat = values.reshape(len(rows), -1)
        # the GEMM multiplies every value by every row's 0 or 1, and 0 * inf is NaN: an image's
        # ±inf maximum would make every other class's sum NaN. It sums the finite values; the
        # ±inf and NaN are added by index_add, whose atomics are exact here: sums of 0, ±inf and
        # NaN come out the same in any order (the GEMM stays as wide as the values)
        finite = torch.isfinite(flat)
        target.add_((onehot.T @ flat.masked_fill(~finite, 0.0)).view_as(target))
        target.index_add_(0, rows, flat.masked_fill(finite, 0.0).view(len(rows), *target.shape[1:]))

    def add(self, layer: str, maxima: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch of a layer: maxima (N, C), the image maxima the top-k ranked (what
        `RunningTopK.add` returns; NaN = an all-NaN map, excluded); labels (N,) int64, same device.

        Held until the batch ends (`end_batch`, or the next batch's labels, or any read), so
        that all layers of a batch are added together."""
        if self._labels is not None and labels is not self._labels:
            self.end_batch()
        self._labels = labels
        self._pending[layer] = maxima

    def update(self, layer: str, acts: torch.Tensor, batch: Batch) -> None:
        """The accumulator's per-layer step: the batch's image maxima of `layer` (see `add`)."""
        self.add(layer, batch.maxima_of(layer), batch.labels)

    def start_batch(self, batch: Batch) -> None:
        """The ink density of the batch's input images, measured before the forward: the model may
        scale or overwrite its input in place (x.mul_), and the ink is the dataset's, not that."""
        self.add_images(batch.x, batch.labels)

    def end_batch(self, batch: Batch | None = None) -> None:
        """Add the held batch: one block over all layers when every layer was seen, else per
        layer (the accumulator's `batch` adds nothing more: its ink was taken in `start_batch`)."""
        pending, labels = self._pending, self._labels
        self._pending, self._labels = {}, None
        if not pending:
            return
        assert labels is not None  # held with the layers' maxima (add)
        rows = self.rows(labels)
        if self.host:  # one compiled pass per layer, no block copy (see _add_host)
            counts = self._row_counts(rows)
            for n, m in pending.items():
                i, m = self._index[n], m.reshape(len(rows), -1)
                if m.dtype != torch.float32:  # the kernel reads float32; others take the torch path
                    self._add_block(m, rows, self._columns[n], slice(i, i + 1))
                    continue
                self._seen[:, i:i + 1] += counts
                self._add_host(m, rows, self._columns[n])
            return
        if len(pending) == len(self.layers):
            m = torch.cat([pending[n].reshape(len(rows), -1) for n in self.layers], dim=1)
            self._add_block(m, rows, slice(None), slice(None))
        else:
            for n, m in pending.items():
                i = self._index[n]
                self._add_block(m, rows, self._columns[n], slice(i, i + 1))

    def _row_counts(self, rows: torch.Tensor) -> torch.Tensor:
        """(rows, 1) int64 images per row. Off the host an index_add_ of ones: torch.bincount
        reads the labels' min and max back to the host (two synchronisations a batch on CUDA);
        integers add exactly in any order."""
        if self.host:
            return torch.bincount(rows, minlength=self.num_classes + 1)[:, None]
        counts = torch.zeros(self.num_classes + 1, dtype=torch.int64, device=rows.device)
        return counts.index_add_(0, rows, torch.ones_like(rows))[:, None]

    def _add_block(self, maxima: torch.Tensor, rows: torch.Tensor, columns: slice, seen: slice) -> None:
        m = maxima.double()
        self._seen[:, seen] += self._row_counts(rows)
        nan = torch.isnan(m)
        if self.host and not bool(nan.any()):  # the common case: every map counts
            self._sums[:, columns].index_add_(0, rows, m)
            return
        self._accumulate(self._sums[:, columns], rows, m.masked_fill(nan, 0.0))
        self._count_nans(nan, rows, columns)

    def _add_host(self, maxima: torch.Tensor, rows: torch.Tensor, columns: slice) -> None:
        """The host's sums: `ops.class_sums_update` adds each image in order (index_add_'s roundings)
        in one pass without short parallel regions (several times their work in CPU on a busy
        machine: issue 20); the rare NaN maps are then counted with torch ops."""
        if ops.class_sums_update(maxima, rows, self._sums[:, columns]) != 0:
            self._count_nans(torch.isnan(maxima), rows, columns)

    def _count_nans(self, nan: torch.Tensor, rows: torch.Tensor, columns: slice) -> None:
        """The NaN maxima `nan` (N, columns) left out of the sums, per class and per unit."""
        self._nan_table()[:, columns].index_add_(0, rows, nan.long())  # integers: any order adds alike
        self._nans[columns] += nan.sum(dim=0)

    def add_images(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """The ink density of the model's input batch x (N, ch, H, W), normalised as in
        preprocessing. A progressive drawing (N, T, ch, H, W) is measured on its last frame,
        which is the whole drawing (sequences.py: step T is the full image); inputs that are
        no images (other ranks, or smaller than 3×3) get no ink density (NaN), while their
        labelled images still count for the class statistics (`labelled_images`)."""
        if x.ndim == 5:
            x = x[:, -1]
        if x.ndim != 4 or min(x.shape[-2:]) < 3:
            return
        rows = self.rows(labels)
        if self.host and x.dtype == torch.float32:  # one compiled pass, no (N, H, W) temporaries
            scale, offset = gray_terms(x.shape[1], self._mean, self._std)
            ink = ops.ink_density(x, scale, offset, INK_THRESHOLD)
        else:
            ink = ink_density(gray_levels(x, self._mean, self._std))
        measured = torch.ones_like(rows)
        if not self._mean and not self._std:  # no normalisation recorded: only [0, 1] inputs are pixels
            pixels = unit_range(x)  # (normalised or 0-255 tensors: no ink, NaN; masked, no host sync)
            ink, measured = torch.where(pixels, ink, torch.zeros_like(ink)), pixels.to(rows.dtype)
        self._accumulate(self.ink, rows, ink)
        self.images.index_add_(0, rows, measured)

    def merge(self, other: RunningClassStats) -> None:
        """Fold in statistics over disjoint images (another worker or rank)."""
        self.end_batch()
        other.end_batch()
        for mine, theirs in ((self._sums, other._sums), (self._seen, other._seen), (self._nans, other._nans),
                             (self.ink, other.ink), (self.images, other.images)):
            mine.add_(theirs.to(self.device))
        if other._nan_cells is not None:
            self._nan_table().add_(other._nan_cells.to(self.device))

    # ---- save / resume: two flat arrays ---------------------------------------------------------
    def packed(self) -> dict[str, np.ndarray]:
        """{"class_sums": float64 [sums (rows, units) row-major, ink],
        "class_counts": int64 [seen (rows, layers), images, NaN maps per unit, the non-zero
        cells of the NaN table as flat indices, then their counts]}: a copy (the flush writes
        it while later batches change this object)."""
        self.end_batch()
        cells = self._nan_cells
        where = torch.empty(0, dtype=torch.int64) if cells is None else torch.nonzero(cells.ravel())[:, 0]
        counts = [self._seen.ravel(), self.images, self._nans, where.to(self._sums.device),
                  torch.empty(0, dtype=torch.int64) if cells is None else cells.ravel()[where]]
        return {"class_sums": torch.cat([self._sums.ravel(), self.ink]).cpu().numpy(),
                "class_counts": torch.cat([c.to(self._sums.device) for c in counts]).cpu().numpy()}

    def load_packed(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from `packed()`; raises ValueError when the layout does not fit."""
        if "class_sums" not in arrays:
            raise ValueError("no packed class statistics (class_sums) in the state")
        self._pending, self._labels = {}, None
        f, i = np.asarray(arrays["class_sums"]), np.asarray(arrays["class_counts"])
        rows, (layers, units) = self.num_classes + 1, (len(self.layers), self._sums.shape[1])
        fixed = rows * layers + rows + units
        if f.shape != (rows * units + rows,) or i.ndim != 1 or len(i) < fixed or (len(i) - fixed) % 2:
            raise ValueError(f"packed class statistics of shape {f.shape}/{i.shape} do not fit "
                             f"{layers} layers, {units} units, {self.num_classes} classes")
        self._sums.copy_(torch.from_numpy(f[:rows * units].reshape(rows, units)))
        self.ink.copy_(torch.from_numpy(f[rows * units:]))
        parts = np.split(i, np.cumsum([rows * layers, rows, units, (len(i) - fixed) // 2]))
        self._seen.copy_(torch.from_numpy(parts[0].reshape(rows, layers)))
        self.images.copy_(torch.from_numpy(parts[1]))
        self._nans.copy_(torch.from_numpy(parts[2]))
        self._nan_cells = None
        if len(parts[3]):
            if parts[3].min() < 0 or parts[3].max() >= rows * units:
                raise ValueError("packed class statistics name NaN cells outside the table")
            self._nan_table().view(-1)[torch.from_numpy(parts[3]).to(self.device)] = \
                torch.from_numpy(parts[4]).to(self.device)

    def state(self) -> dict[str, np.ndarray]:
        return self.packed()

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        self.load_packed(dict(state))

    def results(self, layer: str | None = None) -> Any:
        """The accumulator's final arrays (no `layer`): layers/<name>/{class_mean, class_count,
        class_nan_count} and dataset/{class_ink_density, class_image_count}, only when some
        labelled image was seen (else none), whether or not its ink density could be measured.
        With `layer`: that layer's (class_mean, class_count), see `results_of` (what analysis reads)."""
        if layer is not None:
            return self.results_of(layer)
        if self.labelled_images == 0:
            return {}
        arrays: dict[str, np.ndarray | Columns] = {}
        for name in self.layers:
            mean, count = self.columns_of(name)
            arrays.update({schema.layer_array(name, "class_mean"): mean,
                           schema.layer_array(name, "class_count"): count,
                           schema.layer_array(name, "class_nan_count"): self.nan_counts(name)})
        arrays.update({schema.dataset_array("class_ink_density"): self.ink_results()[0],
                       schema.dataset_array("class_image_count"): self.class_images()})
        return arrays

    # ---- results --------------------------------------------------------------------------
    @property
    def labelled_images(self) -> int:
        """Labelled images the layers saw (counted from the batches' labels, whatever the input:
        not `images`, which counts only the images whose ink density was measured)."""
        return int(self.class_images().sum())

    def class_images(self) -> np.ndarray:
        """(K,) int64: per class, the images the layers saw (every layer sees every image)."""
        self.end_batch()
        seen = self._seen[:self.num_classes]
        return (seen.amax(dim=1) if seen.shape[1] else seen.sum(dim=1)).cpu().numpy().copy()

    def counts(self, layer: str, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """(rows, C) int64: per class (and the discard row) the layer's non-NaN image maxima; only
        `rows` when given (a 1,000-row table mostly of unseen classes costs 80 MB to subtract)."""
        cols, i = self._columns[layer], self._index[layer]
        seen = self._seen[rows, i:i + 1].expand(-1, cols.stop - cols.start)
        return seen if self._nan_cells is None else seen - self._nan_cells[rows, cols]

    def results_of(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(class_mean (C, K) float64, NaN where a class has no image; class_count (C, K) int64)."""
        mean, count = self.columns_of(layer)
        return mean.whole(), count.whole()

    def columns_of(self, layer: str) -> tuple[Columns, Columns]:
        """`results_of` as the columns of the classes the layer saw (the other columns NaN and 0).

        A 1,000-way head over a 10-class probe set is 99 % empty columns: the store writes these
        without making the tables whole (store/columns.py, issue 20)."""
        self.end_batch()
        cols, i, k = self._columns[layer], self._index[layer], self.num_classes
        units = cols.stop - cols.start
        present = torch.nonzero(self._seen[:k, i] > 0).flatten().to(self.device)
        s = self._sums[present, cols]
        c = self.counts(layer, present)
        mean = torch.where(c > 0, s / c.clamp_min(1), torch.nan).T.contiguous().cpu().numpy()
        at = present.cpu().numpy()
        return (Columns((units, k), np.nan, at, mean),
                Columns((units, k), 0, at, c.T.contiguous().cpu().numpy()))

    def nan_counts(self, layer: str) -> np.ndarray:
        """Per unit of `layer`, the images whose map was all NaN (any label), int64."""
        self.end_batch()
        return self._nans[self._columns[layer]].cpu().numpy().copy()

    def ink_results(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ink density per class (K,) float64, NaN for classes without measured images;
        the images measured (K,) int64)."""
        s, c = self.ink[:self.num_classes].cpu().numpy(), self.images[:self.num_classes].cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan), c.copy()


PACKED_KEYS = ("class_sums", "class_counts")
"""The arrays of `packed()`, i.e. of the accumulator's state."""


def restore(store: RunStore, stats: RunningClassStats) -> bool:
    """Load the statistics of the store's newest intact checkpoint into `stats` (a reader of a
    partial run); False when it holds none. A layout that does not fit is the run's clear error."""
    saved = store.read_checkpoint_state(KEY)
    if saved is None:
        return False
    try:
        stats.restore(saved)
    except (ValueError, KeyError) as exc:
        raise SketchmineError(f"{store.path}: the class statistics in its checkpoint do not fit the run ({exc}); "
                              "mine it again with a new --out") from None
    return True


def accumulator(setup: Setup) -> RunningClassStats | None:
    """The registry's factory: None when the labels name no classes."""
    if setup.num_classes == 0:
        return None
    return RunningClassStats({l.name: l.channels for l in setup.layers}, setup.num_classes, setup.device,
                             setup.mean, setup.std)
