"""Test utilities: brute-force references built from plain torch, no sketchmine code paths."""
from __future__ import annotations

import numpy as np
import torch
import zarr


def all_activations(model, dataset, layers):
    """Every tapped output for the whole dataset, in one pass of plain forward hooks."""
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs[n].append(o.detach().clone()))
               for n in layers if n != "softmax"]
    logits = []
    try:
        with torch.inference_mode():
            for s in range(0, len(dataset), 128):
                x = torch.stack([dataset[i][1] for i in range(s, min(s + 128, len(dataset)))])
                logits.append(model(x))
    finally:
        for h in handles:
            h.remove()
    acts = {n: torch.cat(v) for n, v in outs.items() if v}
    lg = torch.cat(logits)
    if "softmax" in layers:
        acts["softmax"] = torch.softmax(lg, 1)
    return acts, lg


def topk_equals_hooks(run, model, ds, layers) -> None:
    """Each layer's stored top-k (values, images, positions) equals plain forward hooks + brute_topk."""
    acts, _ = all_activations(model, ds, [name for name in layers if name != "softmax"])
    for name in acts:
        values, index, yx = run.topk(name)
        bv, bi, bp = brute_topk(acts[name], run.k)
        np.testing.assert_array_equal(index, bi, err_msg=name)
        np.testing.assert_allclose(values, bv, rtol=1e-5, atol=1e-6, err_msg=name)
        shape = run.layer_shape(name)
        assert shape == tuple(acts[name].shape[1:]), name
        if len(shape) == 3:
            np.testing.assert_array_equal(yx[..., 0] * shape[2] + yx[..., 1], bp, err_msg=name)


def brute_topk(acts: torch.Tensor, k: int):
    """Top-k per channel by sorting every (image, channel) spatial max: (values, index, position)."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1).float()
    best = flat.max(dim=2)
    pos = torch.stack([torch.nonzero(flat[i, j] == best.values[i, j])[0, 0] for i in range(n) for j in range(c)]).view(n, c)
    values, index, position = [], [], []
    for j in range(c):
        order = sorted(range(n), key=lambda i: (-best.values[i, j].item(), i))[:k]
        values.append([best.values[i, j].item() for i in order] + [float("-inf")] * (k - len(order)))
        index.append(order + [-1] * (k - len(order)))
        position.append([pos[i, j].item() for i in order] + [-1] * (k - len(order)))
    return np.array(values, np.float32), np.array(index), np.array(position)


def log_odds64(logits) -> np.ndarray:
    """(N, C) float64 log-odds z_c = logit_c - logsumexp_{j != c} logit_j of each image's softmax
    probability, from the float32 logits: the order the softmax layer's top-k must follow."""
    x = torch.as_tensor(np.asarray(logits)).double()
    others = x[:, None, :].expand(-1, x.shape[1], -1).masked_fill(torch.eye(x.shape[1], dtype=torch.bool), float("-inf"))
    return (x - torch.logsumexp(others, 2)).numpy()


def ranked64(key: np.ndarray, k: int) -> np.ndarray:
    """(C, k) image indices of each column's k largest float64 `key` (N, C), ties to the smaller index."""
    n = key.shape[0]
    return np.stack([np.lexsort((np.arange(n), -key[:, c]))[:k] for c in range(key.shape[1])])


def store_arrays(path) -> dict[str, np.ndarray]:
    """Every array of a Zarr store by path, for array-by-array comparison."""
    root = zarr.open_group(str(path), mode="r")
    out = {}

    def walk(g, prefix):
        for name, arr in g.arrays():
            out[prefix + name] = np.asarray(arr[...])
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    walk(root, "")
    return out


def assert_same_store(got, want) -> None:
    """The two stores hold the same arrays, each bit for bit (a resumed or otherwise
    differently made run against an uninterrupted reference)."""
    a, b = store_arrays(got), store_arrays(want)
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class StopAfter:
    """A progress reporter that interrupts a pass (a crash stand-in): after `n` images, or
    after `n` progress calls (batches of `mine`, unit blocks of `visualize`) with calls=True.
    Notes the pass prints are kept in `notes`."""

    def __init__(self, n: int, *, calls: bool = False, exc: type[BaseException] = KeyboardInterrupt) -> None:
        self.n, self.calls, self.exc = n, calls, exc
        self.seen = 0
        self.notes: list[str] = []

    def start(self, total: int, done: int) -> None: ...

    def note(self, message: str) -> None:
        self.notes.append(message)

    def advance(self, n: int) -> None:
        self.seen += 1 if self.calls else n
        if self.seen >= self.n:
            raise self.exc


def per_class_subset(ds, n: int, tag: str):
    """The first `n` images of every class, kept in the dataset's stable order (real images,
    fewer of them, for quicker passes); `tag` marks the description as a subset."""
    from sketchmine.data import ArrayDataset

    labels = ds.labels()
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:n] for c in range(len(ds.class_names))]))
    return ArrayDataset(ds.images[keep], labels[keep], ds.class_names, ds.preprocessing,
                        {**ds.describe(), "subset": tag})


def image_folder(ds, root, per_class: int = 12):
    """The first `per_class` real test images of every class of `ds`, as PNGs in
    root/<class>/<image>.png (the ImageFolder the CLI tests mine)."""
    from sketchmine.data import ArrayDataset, export_image_folder

    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:per_class] for c in range(len(ds.class_names))])
    sub = ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names, ds.preprocessing, ds.describe())
    return export_image_folder(sub, root)


def as_mined_without(run_path, layer: str, names) -> None:
    """Make a copy of a run look mined by a version without arrays `names` of `layer`: the arrays
    gone and so are their checksums (a run that recorded checksums for an array it has lost is
    damaged, not old), and the checksums of its attributes (recorded later than these arrays)."""
    import json
    import shutil
    from pathlib import Path

    root = Path(run_path)
    for name in names:
        shutil.rmtree(root / "layers" / layer / name)
    meta = json.loads((root / "zarr.json").read_text())
    sums = meta["attributes"].get("checksums") or {}
    for name in names:
        sums.pop(f"layers/{layer}/{name}", None)
    meta["attributes"].pop("attribute_sums", None)
    (root / "zarr.json").write_text(json.dumps(meta))


def two_sketches_a_class() -> list[tuple[str, np.ndarray]]:
    """(class, uint8 (28, 28)): the first two real test sketches of every class."""
    from sketchmine.data import animal_shape

    ds = animal_shape("test")
    labels = ds.labels()
    return [(name, np.asarray(ds.images[np.nonzero(labels == c)[0][j]]))
            for c, name in enumerate(ds.class_names) for j in range(2)]


def write_class_folder(root, sketches, save):
    """root/<class>/img<j>.<ext>, each file written by save(j, sketch, path without extension)."""
    for j, (name, a) in enumerate(sketches):
        (root / name).mkdir(parents=True, exist_ok=True)
        save(j, a, root / name / f"img{j}")
    return root



class Conv1dFrames(torch.nn.Module):
    """Each frame of a grey 28×28 drawing read by a Conv1d (frames folded into the batch), a GRU
    over the steps: `rows`, the frame's 28 rows are the conv's channels; else the frame flattened
    to a 1-channel signal of 784 samples."""

    def __init__(self, rows: bool = False) -> None:
        super().__init__()
        self.rows = rows
        self.conv = torch.nn.Conv1d(28, 8, 3, stride=2) if rows else torch.nn.Conv1d(1, 4, 9, stride=8)
        self.gru = torch.nn.GRU(8 * 13 if rows else 4 * 97, 6, batch_first=True)
        self.fc = torch.nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        frames = x.flatten(0, 2) if self.rows else x.flatten(0, 1).flatten(2)  # (N*T, 28, 28) or (N*T, 1, 784)
        _, h = self.gru(torch.relu(self.conv(frames)).reshape(n, t, -1))
        return self.fc(h[-1])


def pixels_reached(modules: dict, model, x: torch.Tensor) -> dict:
    """{name: (oh, ow, h, w) bool} for each of `modules` (name -> module of `model`): the pixels of
    x (1, C, h, w, requires_grad) whose input gradient of the module's unit (y, x), summed over
    its channels, is non-zero: the reference the receptive-field tests hold the fields to."""
    h, w = x.shape[-2:]
    acts: dict = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n, m in modules.items()]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for n, o in acts.items():
        units = o[0].sum(0).reshape(-1)
        (grad,) = torch.autograd.grad(units, x, torch.eye(len(units), dtype=units.dtype), retain_graph=True,
                                      is_grads_batched=True)
        out[n] = (grad[:, 0].abs().sum(1) > 0).reshape(*o.shape[-2:], h, w)
    return out


def _opened(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy with positive weights and biases: every ReLU passes, so every pixel of a
    unit's cone reaches it (a max pool's window its maximum only)."""
    import copy

    m = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_().add_(0.05)
    return m


def fields_hold(model: torch.nn.Module, names: list[str], fields: dict, images: torch.Tensor) -> None:
    """Every pixel reaching every unit lies in its box; the corner, border and centre units reach some."""
    m = _opened(model)
    for image in images:
        reached = pixels_reached({n: m.get_submodule(n) for n in names}, m,
                                 image[None].double().requires_grad_(True))
        for name, hits in reached.items():
            gh, gw, h, w = hits.shape
            units = torch.cartesian_prod(torch.arange(gh), torch.arange(gw))
            top, left, bottom, right = fields[name].boxes(units).T[:, :, None, None]
            rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
            inside = (rows >= top) & (rows <= bottom) & (cols >= left) & (cols <= right)
            outside = hits.reshape(-1, h, w) & ~inside
            assert not outside.any(), (name, units[outside.flatten(1).any(1)][:3].tolist())
            for y, x in {(0, 0), (gh - 1, gw - 1), (0, gw // 2), (gh // 2, gw // 2), (gh - 1, 0)}:
                assert hits[y, x].any(), (name, y, x)


def pictures_hold(run, model, ds, fields: dict, deconvolved: list[str]) -> None:
    """Each top-1 entry's stored box is its layer's field at the unit's peak, its patch the image's pixels
    there, and (for the layers `deconvolved`) its stored deconvolution the unit's whole-image one
    (`sketchmine.deconvolve`) cropped to the box, within a grey level."""
    import sketchmine
    from sketchmine.stats.ops import crop_patches_reference

    for layer in fields:
        g = run.store.group[f"layers/{layer}"]
        patches, boxes, deconv = (np.asarray(g[k][...]) for k in ("patches", "boxes", "deconv"))
        _, index, yx = run.topk(layer)
        for c in range(index.shape[0]):
            i = int(index[c, 0])
            top, left, bottom, right = fields[layer].box(*yx[c, 0])
            assert tuple(boxes[c, 0]) == (top, left, bottom, right)
            pixels = torch.from_numpy(np.asarray(ds.images[i]))[None, None]
            crop = crop_patches_reference(pixels, torch.tensor([0]), torch.tensor([[top, left]]),
                                          bottom - top + 1, right - left + 1)[0].permute(1, 2, 0).numpy()
            assert np.array_equal(patches[c, 0, :bottom - top + 1, :right - left + 1], crop), (layer, c)
            if layer in deconvolved:
                sig = sketchmine.deconvolve(model, ds[i][1][None], layer, [c], yx[c, :1])
                want = crop_patches_reference(sig, torch.tensor([0]), torch.tensor([[top, left]]),
                                              bottom - top + 1, right - left + 1)[0]
                want = (128 + 127 * want / want.abs().max()).round().clamp(0, 255).permute(1, 2, 0).numpy()
                assert np.abs(deconv[c, 0].astype(int) - want.astype(int)).max() <= 1, (layer, c)


def report_with_hook(run, tmp_path, sitecustomize: str, **popen):
    """`sketchmine report RUN --out tmp_path/rep --no-probe` in a process that imports `sitecustomize`
    first (a test's audit hook that kills or signals it at a chosen point): (completed process, rep)."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(sitecustomize)
    rep = tmp_path / "rep"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "sketchmine", "report", str(run.path), "--out", str(rep), "--no-probe"],
                          capture_output=True, text=True, env=env, **popen), rep

