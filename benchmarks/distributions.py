"""What the unit-distribution statistics cost (issue 16): bare forward vs `mine` without them
(distributions=False, the default) vs `mine` with them (distributions=True), interleaved in one process, the order
rotating every repeat; then peak RSS of `mine` with them at two dataset sizes, each in a fresh
subprocess (mine_vs_forward.child_main), and the store bytes per unit of each distribution array.

    python -m benchmarks.distributions [--model alexnet] [--images 768] [--repeats 3] [--reference] [--floor]
                                       [--preprocess cpu] [--classes 10] [--methods bare,off] [--split]
                                       [--memory-images 768,3072] [--json out.json]

--floor adds "read": the bare forward with every tapped output read once in a hook (methods.read_forward),
the floor under any miner's ratio on this machine, and "glibc": the bare forward with glibc's own malloc
thresholds (what a plain script gets; the other references keep freed memory as `mine` does). --reference adds `mine` with the statistics on their pure-torch path (the code before the
compiled kernels, as session 16 measured it) to the rotation.

On a shared machine other processes only add time: the minimum over repeats is the primary
estimate, the median and the process CPU time (steadier under contention) are shown too.

--split times the model's own convolutions and linear layers in every run (a timer around
torch.nn.functional.conv2d / linear as the modules call them), so each wall splits into "layers"
(the same work in every method) and the rest. On a VM whose speed drifts by 5-15 % within minutes,
the layers' time moves with it while the rest is mostly the method's own: "accounted" is the bare
forward's median wall plus the median difference of the rest, over the bare median. It leaves out
any slowdown a method causes inside the layers' own calls (their "layers" columns show it; the
page faults and system time beside them say whether the heap's layout, not the method, moved them).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import LayerClock, Meter, build_model, conv_linear_layers, git_revision, make_dataset, median
from .methods import bare_forward, mine_once, read_forward
from .mine_vs_forward import loadavg, run_child

DISTRIBUTION_ARRAYS = ("hist_edges", "hist_counts", "max_range", "sketch_counts", "sketch_top", "sketch_special",
                       "example_edges", "example_index", "bottom_values", "bottom_image_index", "bottom_yx")


def torch_path(on: bool) -> None:
    """Route the distribution statistics through their pure-torch references (the code before the
    compiled kernels, session 16) when on; back to the kernels when off."""
    from sketchmine.stats import ops

    if on:
        ops.compiled_here = lambda t: False
    else:
        ops.compiled_here = ORIGINAL_COMPILED_HERE


def _original():
    from sketchmine.stats import ops

    return ops.compiled_here


ORIGINAL_COMPILED_HERE = _original()


def side_by_side(model_name: str, images: int, batch_size: int, repeats: int, num_workers: int, log,
                 reference: bool = False, preprocess: str | None = None, floor: bool = False,
                 classes: int = 1000, methods: list[str] | None = None, split: bool = False) -> dict:
    model = build_model(model_name, 0, classes)
    layers = conv_linear_layers(model)
    ds = make_dataset(images, named=classes == 10)
    warm = make_dataset(min(batch_size, images), named=classes == 10)
    bare_forward(model, warm, batch_size, num_workers)
    mine_once(model, warm, layers, batch_size, num_workers, distributions=True, preprocess=preprocess)
    mine_once(model, warm, layers, batch_size, num_workers, distributions=False, preprocess=preprocess)
    order = ["bare"] + (["read", "glibc"] if floor else []) + ["off", "on"] + (["torch"] if reference else [])
    order = [m for m in order if methods is None or m in methods]
    runs: dict[str, list[dict]] = {m: [] for m in order}
    for r in range(repeats):
        for method in order[r % len(order):] + order[:r % len(order)]:
            gc.collect()
            load = loadavg()
            layer_clock = LayerClock() if split else contextlib.nullcontext()
            m = Meter()
            with layer_clock:
                if method in ("bare", "glibc"):
                    with m:
                        bare_forward(model, ds, batch_size, num_workers, glibc=method == "glibc")
                elif method == "read":
                    with m:
                        read_forward(model, ds, layers, batch_size, num_workers)
                else:
                    torch_path(method == "torch")
                    try:  # the Meter times the mine call alone (mine_once)
                        mine_once(model, ds, layers, batch_size, num_workers, distributions=method != "off",
                                  preprocess=preprocess, timed=m)
                    finally:
                        torch_path(False)
            row = {**m.as_dict(), "loadavg_before": load}
            if split:
                row.update(layers=layer_clock.seconds, rest=m.wall - layer_clock.seconds)
            runs[method].append(row)
            log(f"{model_name} {images} images: repeat {r + 1}/{repeats} {method:4s} {m.wall:7.2f}s wall "
                f"{m.cpu:7.2f}s cpu, others {m.others_cpu:6.2f}s cpu, load {load[:1]}"
                + (f", layers {row['layers']:.2f}s rest {row['rest']:.2f}s, {m.faults / 1e6:.2f}M faults "
                   f"{m.sys:.1f}s sys" if split else ""))

    def stat(method: str, key: str) -> dict[str, float]:
        xs = [x[key] for x in runs[method]]
        return {"min": min(xs), "median": median(xs)}

    out: dict = {"model": model_name, "images": images, "batch_size": batch_size, "repeats": repeats,
                 "num_workers": num_workers, "classes": classes, "runs": runs, "ratios": {}}
    pairs = ([("read", "bare"), ("on", "glibc")] if floor else []) + [("on", "bare"), ("off", "bare"), ("on", "off")] + (
        [("torch", "off")] if reference else [])
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        for key in ("wall", "cpu"):
            sa, sb = stat(a, key), stat(b, key)
            out["ratios"][f"{a}/{b} {key}"] = {"min": sa["min"] / sb["min"], "median": sa["median"] / sb["median"]}
        paired = [x["wall"] / y["wall"] for x, y in zip(runs[a], runs[b])]
        out["ratios"][f"{a}/{b} wall paired median"] = median(paired)
        if split:
            base = stat(b, "wall")["median"]
            extra = stat(a, "rest")["median"] - stat(b, "rest")["median"]
            out["ratios"][f"{a}/{b} accounted"] = (base + extra) / base
            out["ratios"][f"{a}/{b} layers"] = stat(a, "layers")["median"] / stat(b, "layers")["median"]
    return out


def store_bytes_per_unit(model_name: str, batch_size: int) -> dict:
    """Uncompressed bytes per unit of each distribution array, from a small real run (they do
    not depend on the image count; zarr compresses them on disk)."""
    import sketchmine

    model = build_model(model_name, 0)
    layers = conv_linear_layers(model)
    with tempfile.TemporaryDirectory() as tmp:
        run = sketchmine.mine(model, make_dataset(batch_size), layers=layers, out=Path(tmp) / "r.zarr",
                              batch_size=batch_size, device="cpu", num_workers=0, distributions=True)
        layer = run.layers[0]
        c = run.layer_array(layer, "values").shape[0]
        per_unit = {name: int(np.asarray(run.layer_array(layer, name)).nbytes // c) for name in DISTRIBUTION_ARRAYS}
        disk = sum(f.stat().st_size for name in DISTRIBUTION_ARRAYS for l in run.layers
                   for f in (Path(tmp) / "r.zarr" / "layers" / l / name).rglob("*") if f.is_file())
        units = sum(run.layer_array(l, "values").shape[0] for l in run.layers)
    return {"k": 9, "bytes_per_unit": per_unit, "total_per_unit": sum(per_unit.values()), "units": units,
            "disk_bytes_per_unit_after_compression": disk / units}


def memory(model_name: str, sizes: list[int], batch_size: int, num_workers: int, log) -> list[dict]:
    rows = []
    for n in sizes:
        r = run_child({"model": model_name, "batch_size": batch_size, "threads": os.cpu_count() or 1,
                       "num_workers": num_workers, "seed": 0, "kind": "mine", "images": n})
        log(f"{model_name}: mine (distributions on) {n} images: peak {r['peak_run_mib']:.0f} MiB "
            f"(before {r['rss_before_mib']:.0f}), {r['phases_s']['total']:.1f}s")
        rows.append({k: r[k] for k in ("images", "peak_run_mib", "rss_before_mib", "phases_s", "meter")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--images", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--memory-images", default="768,3072", help="comma list ('' to skip)")
    p.add_argument("--no-side-by-side", action="store_true")
    p.add_argument("--floor", action="store_true", help="add the bare forward that reads every tapped output once")
    p.add_argument("--reference", action="store_true",
                   help="also mine with the statistics' pure-torch path (before the compiled kernels)")
    p.add_argument("--preprocess", choices=["cpu", "device"], default=None,
                   help="mine's preprocess (default: mine's own; 'cpu' loads per image as the bare loop does)")
    p.add_argument("--classes", type=int, choices=[10, 1000], default=1000,
                   help="the head's width: 1000 (ImageNet's, the labels unnamed) or 10 (the dataset's named classes)")
    p.add_argument("--methods", default=None,
                   help="comma list of the methods to time (default all of bare,read,glibc,off,on,torch asked for)")
    p.add_argument("--split", action="store_true",
                   help="time the model's conv and linear calls in every run; adds the 'accounted' ratio")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    out: dict = {"commit": git_revision(), "loadavg_start": loadavg(), "cpus": os.cpu_count()}
    out["store"] = store_bytes_per_unit(args.model, args.batch_size)
    log(f"store per unit: {out['store']}")
    if not args.no_side_by_side:
        out["side_by_side"] = side_by_side(args.model, args.images, args.batch_size, args.repeats, args.workers, log,
                                           args.reference, args.preprocess, args.floor, args.classes,
                                           args.methods.split(",") if args.methods else None, args.split)
        for name, v in out["side_by_side"]["ratios"].items():
            log(f"{name}: {v if isinstance(v, float) else ', '.join(f'{k} {x:.3f}' for k, x in v.items())}")
    sizes = [int(x) for x in args.memory_images.split(",") if x]
    if sizes:
        out["memory"] = memory(args.model, sizes, args.batch_size, args.workers, log)
    out["loadavg_end"] = loadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
