"""Batched preprocessing on the mining device (`mine(..., preprocess="device")`).

The loader yields images as stored (uint8, native size; a JPEG file's bytes when the device
decodes JPEGs); a batch is collated by size, moved to the device as uint8 and made model input
there in one batched op per size: `Preprocessing.prepare`, the one rule every route shares
(luma grey, bilinear antialiased resize, normalisation), applied to (N, c, H, W) instead of
(1, c, H, W). On the CPU the two paths give the same floats (tests/test_preprocess_device.py);
on a GPU they agree within float rounding (RESULTS.md, session 17).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sketchmine.data.arrays import ArrayDataset
from sketchmine.data.dataset import MinerDataset, error_note, shapes_differ
from sketchmine.data.folder import READ_ERRORS, ImageFolderDataset
from sketchmine.data.imagefile import conversion_note, header_orientation
from sketchmine.data.preprocess import Preprocessing
from sketchmine.errors import SketchmineError

PREPROCESS = ("device", "cpu")
"""device: one batched op per batch on the mining device; cpu: `Preprocessing.prepare` per
image in the loader (the DataLoader workers when there are any)."""

JPEG = (".jpg", ".jpeg")
JPEG_NOTE = "jpeg"
"""The note of a sample whose payload is a JPEG file's bytes, decoded on the device; "jpeg:6"
when the file carries EXIF orientation 6, for the note the decoded image then gets."""


def supports_device(ds: MinerDataset) -> bool:
    """Datasets of stored pixels (arrays, image folders) under a preprocessing; a torch
    Dataset's tensors and progressive drawings are prepared per sample."""
    return isinstance(ds, (ArrayDataset, ImageFolderDataset)) and ds.preprocessing is not None


def choose(preprocess: str | None, ds: MinerDataset, recorded: str | None) -> str:
    """The preprocessing route of this pass: the one asked, else the run's on resume (runs that
    predate the record were "cpu"), else "device" where the dataset allows it, else "cpu"."""
    if preprocess is not None and preprocess not in PREPROCESS:
        raise SketchmineError(f"preprocess must be 'device' or 'cpu' (or None), got {preprocess!r}")
    if preprocess == "device" and not supports_device(ds):
        what = "progressive drawing" if type(ds).__name__ == "SequenceDataset" else type(ds).__name__
        raise SketchmineError(f"preprocess='device' prepares stored pixels (arrays, image folders) in batches; a "
                              f"{what} is prepared per sample: pass preprocess='cpu' (--preprocess cpu)")
    if preprocess is None:
        preprocess = recorded or ("device" if supports_device(ds) else "cpu")
    return preprocess


class NativeSamples(Dataset):
    """A dataset's images as stored: (index, uint8 (H, W, c) tensor, label, note); with
    `jpeg_bytes`, a .jpg/.jpeg file's bytes (1-D uint8) and the note `JPEG_NOTE` instead, once
    its header passed the cpu route's checks (PIL's decompression-bomb limit: a 2 MB JPEG of
    182 megapixels is refused by the same error, not decoded)."""

    def __init__(self, ds: ArrayDataset | ImageFolderDataset, jpeg_bytes: bool = False) -> None:
        self.ds, self.jpeg_bytes = ds, jpeg_bytes and isinstance(ds, ImageFolderDataset)
        self.labels = ds.labels()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int, str]:
        label = int(self.labels[i])
        try:
            if self.jpeg_bytes and self.ds.path(i).lower().endswith(JPEG):
                data = self.ds.file_bytes(i)  # type: ignore[union-attr]
                orientation = header_orientation(data)
                note = JPEG_NOTE if orientation == 1 else f"{JPEG_NOTE}:{orientation}"
                return i, torch.frombuffer(bytearray(data), dtype=torch.uint8), label, note
            image, note = self.ds.image_array(i)
        except READ_ERRORS as exc:  # OSError among them: a JPEG's read as well
            return i, torch.zeros(0, dtype=torch.uint8), label, error_note(exc)
        return i, as_uint8_hwc(image), label, note


def collate_native(batch: list[tuple[int, torch.Tensor, int, str]]):
    """(index, (groups, jpegs), label, notes): `groups` one (positions, uint8 (n, H, W, c)) per
    stored shape, in order of first appearance; `jpegs` (position, bytes) to decode on the
    device. Plain tuples and lists, so the DataLoader pins them."""
    shapes: dict[tuple[int, ...], list[int]] = {}
    jpegs = []
    for j, (_, x, _, note) in enumerate(batch):
        if note.partition(":")[0] == JPEG_NOTE:
            jpegs.append((j, x))
        elif not note.startswith("error:"):
            shapes.setdefault(tuple(x.shape), []).append(j)
    groups = [(torch.tensor(pos), torch.stack([batch[j][1] for j in pos])) for pos in shapes.values()]
    return (torch.tensor([s[0] for s in batch]), (groups, jpegs), torch.tensor([s[2] for s in batch]),
            [s[3] for s in batch])


PREPARE_BYTES = 64 << 20
"""float32 bytes of stored pixels made model input at once: the float copy of a batch and the
resize's and conversion's intermediates are several times its uint8 size (8 photos of 4000 x
3000 px took 1.2-2.6 GB above the batch), so a batch of large images is prepared a few
images at a time; the rule is per image, so the floats are the same either way."""


def prepare_uint8(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 (N, H, W, c) → model input (N, channels, *size) float32, contiguous: the rule of
    `Preprocessing.prepare` on the whole batch, on x's device, PREPARE_BYTES of it at a time."""
    step = max(1, PREPARE_BYTES // max(1, 4 * x[0].numel())) if len(x) else 1
    parts = [pre.prepare(x[s:s + step].permute(0, 3, 1, 2).float().div_(255)) for s in range(0, max(len(x), 1), step)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    # the standard strides, also for one channel (where "contiguous" is ambiguous and a conv may
    # take the channels-last kernel, which rounds differently)
    return out if out.stride() == _strides(out.shape) else out.clone(memory_format=torch.contiguous_format)


def _strides(shape: torch.Size) -> tuple[int, ...]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


class DevicePreparer:
    """Turns a native batch into model input on `device`: uint8 copies (non-blocking from
    pinned memory), JPEG decoding there (`decode_jpeg` on CUDA; an image it cannot decode is
    decoded by PIL instead and counted in `fallbacks`), one `prepare_uint8` per size."""

    def __init__(self, ds: ArrayDataset | ImageFolderDataset, device: torch.device,
                 probed: tuple[int, tuple[int, ...]] | None = None) -> None:
        """`probed`: (index, model input shape) of the image the model was probed with (see
        `_check_sizes`)."""
        if ds.preprocessing is None:
            raise SketchmineError("batched preprocessing needs a preprocessing")
        self.ds, self.pre, self.device, self.probed = ds, ds.preprocessing, device, probed
        self.fallbacks: list[str] = []

    def __call__(self, idx: torch.Tensor, packed: Any, notes: list[str]) -> tuple[torch.Tensor, list[str]]:
        groups, jpegs = packed
        notes = list(notes)
        groups = [(pos, x.to(self.device, non_blocking=True)) for pos, x in groups]
        if jpegs:
            groups += self.decode(idx, jpegs, notes)
        self._check_sizes(idx, groups)
        n = len(idx)
        if len(groups) == 1 and len(groups[0][0]) == n:
            return prepare_uint8(groups[0][1], self.pre), notes
        size = self.pre.size or (tuple(groups[0][1].shape[1:3]) if groups else (1, 1))
        out = torch.zeros(n, self.pre.channels, *size, device=self.device)
        for pos, x in groups:
            out[pos.to(self.device)] = prepare_uint8(x, self.pre)
        return out, notes

    def decode(self, idx: torch.Tensor, jpegs: list[tuple[int, torch.Tensor]],
               notes: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Decode the batch's JPEGs on the device, one by one where the batched call fails;
        what the device decoder refuses is decoded by PIL (the cpu route's decoder)."""
        images = decode_jpegs([b for _, b in jpegs], self.device)
        mode = "L" if self.pre.channels == 1 else "RGB"
        by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for (j, _), image in zip(jpegs, images):
            i = int(idx[j])
            if image is None:
                try:
                    array, note = self.ds.image_array(i)
                except READ_ERRORS as exc:  # unreadable by either decoder: a bad image, not a fallback
                    notes[j] = error_note(exc)
                    continue
                self.fallbacks.append(self.ds.path(i))
                image = as_uint8_hwc(array).to(self.device)
                notes[j] = note
            else:  # the cpu route's note for the same file (PIL's "L" or "RGB")
                orientation = int(notes[j].partition(":")[2] or 1)
                notes[j] = conversion_note("L" if image.shape[-1] == 1 else "RGB", mode, orientation)
            by_shape.setdefault(tuple(image.shape), []).append((j, image))
        return [(torch.tensor([j for j, _ in items]), torch.stack([im for _, im in items]))
                for items in by_shape.values()]

    def _check_sizes(self, idx: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Images kept at their stored size must all have one size: else name two of them, as the
        cpu route does (`dataset.collate`): the probed image and the first of another size in
        dataset order (without `probed`: the batch's first image and its first of another size),
        whatever the grouping by stored shape and the JPEGs decoded apart did to the order."""
        if self.pre.size is not None:
            return
        size = {int(j): tuple(x.shape[1:3]) for pos, x in groups for j in pos}  # batch position → (H, W)
        c = self.pre.channels
        first, want = ((self.probed[0], tuple(self.probed[1])) if self.probed is not None else
                       (int(idx[min(size)]), (c, *size[min(size)])) if size else (0, ()))
        other = next((j for j in sorted(size) if (c, *size[j]) != want), None)
        if other is not None:
            raise SketchmineError(shapes_differ(self.ds.path(first), want, self.ds.path(int(idx[other])),
                                                (c, *size[other]), self.probed is not None))


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """(H, W, c) uint8 images on `device` decoded by torchvision's `decode_jpeg` (nvJPEG on
    CUDA), grey files as 1 channel and colour as 3 (PIL's "L" and "RGB"); None for a file it
    cannot decode. One batched call, then one call per file when the batch fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def one(b: torch.Tensor) -> torch.Tensor | None:
        try:
            im = decode_jpeg(b, mode=ImageReadMode.UNCHANGED, device=device)
        except RuntimeError:
            return None
        return im.permute(1, 2, 0) if im.shape[0] in (1, 3) else None  # CMYK and the like: PIL's

    if device.type == "cuda":
        # nvJPEG writes outputs allocated on the caller's stream from a stream that does not wait
        # for it (pytorch/vision#9606; its hardware engine ignores the stream it is given,
        # meta-pytorch/torchcodec#1634): a block freed there while queued kernels still read it
        # would be overwritten. With that stream's queued work done, no freed block is still read.
        torch.cuda.current_stream(device).synchronize()
    if device.type == "cuda" and len(data) > 1:
        try:
            ims = decode_jpeg(data, mode=ImageReadMode.UNCHANGED, device=device)
            if all(im.shape[0] in (1, 3) for im in ims):
                return [im.permute(1, 2, 0) for im in ims]
        except RuntimeError:
            pass
    return [one(b) for b in data]


def as_uint8_hwc(image: np.ndarray) -> torch.Tensor:
    """A stored (H, W) or (H, W, c) uint8 image as an (H, W, c) tensor."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8))
    return x.unsqueeze(-1) if x.ndim == 2 else x
