"""Ablation importance: batched (`sketchmine.passes.importance`) vs a one-unit-per-forward loop.

    python -m benchmarks.ablation                 # 5 layers of 2 models, 2,000 test images (~5 min, 2 cores)
    python -m benchmarks.ablation --quick         # 500 images, one layer (< 1 min)
    python -m benchmarks.ablation --json out.json

Both sides compute the same numbers over the same images and batch size: per unit, the
correct-class probability and correctness of every image with that unit zeroed. The loop
is what one writes by hand: for each unit, a forward hook zeroing that channel (in place,
no copy) and a full pass over the dataset. Every unit costs the loop the same full pass, so
it is timed on the first `--loop-units` units (default 16) and scaled to all units
(`loop_s` = measured × units / timed; `--loop-units 0` times them all). The batched side
always does every unit.

`bound` is the largest speed-up any exact method can have over the loop: a full forward per
unit (loop) over the forward of the network after the layer per unit (zeroing one unit
changes every value downstream of it, so that part must be recomputed for each unit). For
early layers, where most of the network lies after the layer, it is small whatever the
implementation; `of_bound` says how close the batched side gets. The minimum over repeats is reported; results are compared on the
units both computed (max |Δ prob_drop|).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from sketchmine.data import ArrayDataset, animal_shape
from sketchmine.passes.ablation import Split, ablation_importance
from sketchmine.model.models import preprocessing_for
from sketchmine.model.models import load_model
from sketchmine.data.sequences import SequenceDataset

from .common import machine_info

CASES = [("demo-gru", "gru"), ("demo", "features.10"), ("demo", "classifier.1"), ("demo-resnet", "layer3.0"),
         ("demo", "features.6"), ("demo", "features.3")]


def loop_importance(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str, batch: int,
                    limit: int = 0) -> np.ndarray:
    """prob_drop per unit, one unit zeroed per full pass over the data (the baseline); the
    first `limit` units only when limit > 0."""
    module = dict(net.named_modules())[layer]

    def probs() -> torch.Tensor:
        out = torch.cat([net(x[s:s + batch]) for s in range(0, len(x), batch)]).double()
        return torch.softmax(out, 1).gather(1, y[:, None])[:, 0]

    with torch.inference_mode():
        base = probs()
        units = None
        drops = []
        u = 0
        while (units is None or u < units) and (not limit or u < limit):
            def zero(m, i, o, u=u):
                nonlocal units
                if isinstance(m, torch.nn.RNNBase):  # (output (N, T, H) batch-first, h_n): a hidden unit, every step
                    units = o[0].shape[-1]
                    o[0][..., u] = 0
                    return o
                units = o.shape[1]
                o[:, u] = 0  # in place: the cheapest possible ablation
                return o

            h = module.register_forward_hook(zero)
            try:
                drops.append(float((base - probs()).mean()))
            finally:
                h.remove()
            u += 1
    return np.array(drops)


def suffix_bound(net: torch.nn.Module, x: torch.Tensor, layer: str, batch: int, repeats: int = 2) -> dict:
    """The best speed-up any exact ablation can reach over the loop: the loop pays a full
    forward per unit, an exact batched method at least the network after the layer per unit
    (zeroing a unit changes everything downstream of it). Both timed here over the same images."""
    split = Split(net, layer)
    full, rest = [], []
    with torch.inference_mode():
        states = [split.prepare(x[s:s + batch]) for s in range(0, len(x), batch)]
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, len(x), batch):
                net(x[s:s + batch])
            full.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for st in states:
                split.run(st, [], 1)
            rest.append(time.perf_counter() - t0)
    return {"full_forward_s": min(full), "suffix_forward_s": min(rest), "bound": min(full) / min(rest)}


def bench_case(spec: str, layer: str, images: int, batch: int, repeats: int, loop_units: int) -> dict:
    loaded = load_model(spec)
    net = loaded.module
    ds = animal_shape("test", preprocessing_for(loaded))
    if images < len(ds):
        keep = np.linspace(0, len(ds) - 1, images).astype(int)
        ds = ArrayDataset(ds.images[keep], ds.labels()[keep], ds.class_names, ds.preprocessing, ds.describe())
    if loaded.sequence:  # a CNN + GRU: the progressive drawings it was trained on
        ds = SequenceDataset(ds, int(loaded.sequence["steps"]))
    x = torch.stack([ds[i][1] for i in range(len(ds))])
    y = torch.as_tensor(ds.labels())
    t_batched, t_loop = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = ablation_importance(net, ds, layer, ds.labels(), batch_size=batch)
        t_batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        drops = loop_importance(net, x, y, layer, batch, loop_units)
        t_loop.append(time.perf_counter() - t0)
    bound = suffix_bound(net, x, layer, batch)
    units = len(result.prob_drop)
    diff = float(np.abs(drops - result.prob_drop[:len(drops)]).max())
    loop_s = min(t_loop) * units / len(drops)
    row = {"model": spec, "layer": layer, "units": units, "images": len(ds), "batch": batch,
           "method": result.attrs["method"], "units_per_pass": result.attrs["units_per_pass"],
           "batched_s": min(t_batched), "loop_units_timed": len(drops), "loop_timed_s": min(t_loop),
           "loop_s": loop_s, "speedup": loop_s / min(t_batched), "max_abs_diff_prob_drop": diff, **bound,
           "of_bound": loop_s / min(t_batched) / bound["bound"]}
    print(f"{spec:12s} {layer:14s} {units:4d} units  batched {row['batched_s']:7.2f} s "
          f"({row['method']}, {row['units_per_pass']}/pass)  loop {loop_s:7.2f} s "
          f"({len(drops)} units timed: {min(t_loop):.2f} s)  speed-up {row['speedup']:6.1f}x  "
          f"(bound {bound['bound']:.1f}x: full / after-layer forward)  max|Δ| {diff:.1e}",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loop-units", type=int, default=16, help="units the loop is timed on (0: all)")
    ap.add_argument("--cases", help="comma-separated model:layer pairs (default: the suite's)")
    ap.add_argument("--quick", action="store_true", help="500 images, demo features.10 only")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [tuple(c.split(":")) for c in args.cases.split(",")] if args.cases else CASES
    if args.quick:
        cases, args.images = [("demo", "features.10")], 500
    info = machine_info()
    print(f"{info.get('cpu')}, {args.threads} threads; {args.images} images, batch {args.batch_size}")
    rows = [bench_case(m, l, args.images, args.batch_size, args.repeats, args.loop_units) for m, l in cases]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
