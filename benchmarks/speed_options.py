"""The opt-in speed options of `sketchmine.mine`, side by side with the default pass.

    python -m benchmarks.speed_options [--model alexnet] [--images 128] [--batch-size 32] [--repeats 2]

AlexNet (random init, fixed seed) over the first N embedded images at 224 px. Each row is
one `mine` call (min over repeats, a fresh model each call since channels_last converts it):

* default vs channels_last vs autocast bf16 / fp16, every conv and linear layer;
* default vs logits=False, the conv layers only (the forward ends after the last conv).

For autocast, the top-9 recall against the float32 run (|top-9 ∩ top-9| / 9, averaged over
units, then over layers) and the largest value difference relative to the layer's range.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .common import build_model, conv_linear_layers, machine_info, make_dataset


def _mine(model_name: str, ds, layers: list[str], batch_size: int, workers: int, out: Path, **options) -> float:
    import sketchmine

    model = build_model(model_name)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    sketchmine.mine(model, ds, layers=layers, out=out, batch_size=batch_size, num_workers=workers,
                    progress=_Quiet(), **options)
    return time.perf_counter() - t0


class _Quiet:
    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...


def _agreement(run_dir: Path, ref_dir: Path, layers: list[str]) -> tuple[float, float]:
    """Top-k recall vs the reference (mean over layers of the mean over units) and the largest
    |value difference| / (value range of the layer)."""
    from sketchmine.run import open_run

    run, ref = open_run(run_dir), open_run(ref_dir)
    recalls, worst = [], 0.0
    for layer in layers:
        v, i, _ = run.topk(layer)
        rv, ri, _ = ref.topk(layer)
        recalls.append(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(i, ri)]))
        span = float(np.nanmax(rv) - np.nanmin(rv)) or 1.0
        worst = max(worst, float(np.nanmax(np.abs(v - rv))) / span)
    return float(np.mean(recalls)), worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    ds = make_dataset(args.images)
    probe: nn.Module = build_model(args.model)
    every = conv_linear_layers(probe)
    convs = [n for n, m in probe.named_modules() if isinstance(m, nn.Conv2d)]
    configs = [
        ("default", every, {}),
        ("channels_last", every, {"channels_last": True}),
        ("autocast bf16", every, {"autocast": "bf16"}),
        ("autocast fp16", every, {"autocast": "fp16"}),
        ("default (convs)", convs, {}),
        ("logits=False (convs)", convs, {"logits": False}),
    ]
    info = machine_info()
    print(f"{args.model}, {args.images} images at 224 px, batch {args.batch_size}, workers {args.workers}, "
          f"min of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{info.get('cpu', '')}")
    tmp = Path(tempfile.mkdtemp(prefix="sketchmine-speed-"))
    try:
        times: dict[str, float] = {}
        for r in range(args.repeats):  # interleaved, so drift hits every config alike
            for label, layers, options in configs:
                t = _mine(args.model, ds, layers, args.batch_size, args.workers, tmp / f"{r}-{label}.zarr", **options)
                times[label] = min(times.get(label, float("inf")), t)
        rows = []
        for label, layers, options in configs:
            base = "default (convs)" if label.endswith("(convs)") else "default"
            recall = worst = None
            if "autocast" in options:
                recall, worst = _agreement(tmp / f"0-{label}.zarr", tmp / f"0-{base}.zarr", layers)
            elif "channels_last" in options:
                recall, worst = _agreement(tmp / f"0-{label}.zarr", tmp / f"0-{base}.zarr", layers)
            rows.append((label, len(layers), times[label], times[base] / times[label], recall, worst))
        print(f"{'config':<22}{'layers':>7}{'time s':>9}{'speed-up':>10}{'top-9 recall':>14}{'max |Δv|/range':>16}")
        for label, n, t, up, recall, worst in rows:
            rec = f"{recall:.3f}" if recall is not None else "—"
            dv = f"{worst:.2e}" if worst is not None else "—"
            print(f"{label:<22}{n:>7}{t:>9.2f}{up:>9.2f}×{rec:>14}{dv:>16}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
