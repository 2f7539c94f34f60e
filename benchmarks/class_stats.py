"""Cost of the per-class statistics for a model with many classes (ImageNet's 1,000), the
part of `mine` that grows with classes × units rather than with the images.

    python -m benchmarks.class_stats                      # ResNet-50, VGG-19, AlexNet, 1,000 classes
    python -m benchmarks.class_stats --models resnet50 --json out.json

Per model, every conv/linear layer's width (ResNet-50: 54 layers, 27,560 units), batches of 64
image maxima (random, real shapes) with random labels:
  batch_ms       adding one batch of every layer (the mining loop's part, per batch)
  pack_s         the flush's copy of the state, taken in the loop (`packed`)
  checkpoint_s   writing that copy into a real run store's checkpoint slot, with checksums
                 (the flush thread's part; overlapped with the next batches)
  checkpoint_mib the slot's size on disk
A GPU runs ResNet-50 at thousands of images a second, so at the default flush (50 batches of
64) the flush thread has ~1-2 s: a checkpoint slower than that makes mining wait for it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sketchmine.stats.classstats import RunningClassStats
from sketchmine.store import RunStore
from sketchmine.stats.topk import RunningTopK

from .common import build_model, conv_linear_layers, machine_info


def _widths(name: str) -> dict[str, int]:
    model = build_model(name)
    modules = dict(model.named_modules())
    return {n: getattr(modules[n], "out_channels", None) or modules[n].out_features for n in conv_linear_layers(model)}


def _disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def measure(name: str, classes: int, batch: int, batches: int, flushes: int) -> dict:
    widths = _widths(name)
    stats = RunningClassStats(widths, classes)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, classes, (batch,), generator=g),
             {n: torch.rand(batch, c, generator=g) for n, c in widths.items()}) for _ in range(4)]
    times = []
    for b in range(batches):
        labels, maxima = data[b % len(data)]
        t = time.perf_counter()
        for n, m in maxima.items():
            stats.add(n, m, labels)
        stats.end_batch()
        times.append(time.perf_counter() - t)
    pack, write = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore.create(Path(tmp) / "run.zarr", {}, 1, [str(i) for i in range(classes)], str, None)
        topk = {k: v.numpy() for k, v in RunningTopK(1, 9).state_dict().items()}  # not measured here
        for _ in range(flushes):
            t = time.perf_counter()
            arrays = stats.state()
            pack.append(time.perf_counter() - t)
            t = time.perf_counter()
            store.write_checkpoint({"topk": topk, "classes": arrays}, 0, {})
            write.append(time.perf_counter() - t)
        slot = store.progress["slot"]
        size = _disk_mib(Path(tmp) / "run.zarr" / "_checkpoint" / slot)
    return {"model": name, "layers": len(widths), "units": sum(widths.values()), "classes": classes,
            "batch_ms": 1e3 * float(np.median(times)), "pack_s": float(np.median(pack)),
            "checkpoint_s": float(np.median(write)), "checkpoint_mib": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "vgg19", "alexnet"])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--flushes", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = [measure(m, args.classes, args.batch, args.batches, args.flushes) for m in args.models]
    print(f"{'model':10} {'units':>7} {'batch ms':>9} {'pack s':>7} {'ckpt s':>7} {'ckpt MiB':>9}")
    for r in rows:
        print(f"{r['model']:10} {r['units']:7d} {r['batch_ms']:9.1f} {r['pack_s']:7.2f} {r['checkpoint_s']:7.2f} "
              f"{r['checkpoint_mib']:9.1f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
