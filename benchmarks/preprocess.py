"""mine by both preprocessing routes vs the pure forward (issue 20, items 1-2).

The embedded Animal-Shape test split (2,000 28×28 silhouettes; --images N below 2,000 picks N spread
evenly over the split, so every class is in it; above 2,000 the split repeats) resized to 224 px,
ImageNet preset (grey → 3 channels), on torchvision
AlexNet (and VGG-19 with --models alexnet,vgg19) with a 10-way head, random init, every
nn.Conv2d and nn.Linear mined, k = 9, side by side and interleaved (the order rotates every
repeat):

  pure         the model over the same batches, made beforehand and stacked (no loading);
  mine cpu     sketchmine.mine(..., preprocess="cpu"): each image prepared in the loader;
  mine device  sketchmine.mine(..., preprocess="device"): uint8 batches prepared in one op
               on the mining device (here the CPU, in the main process).

Prints each route's ratio to pure (median and minimum over repeats, and the per-repeat
paired ratios), the top-9 agreement of the two routes' stores (share of identical top-9
sets per unit, max |Δ activation|), and the load average.

Correctness: on --check-images distinct images (arrays), each float32 route's store is compared
with an independent reference, torch.topk over the per-channel spatial maxima that plain forward
hooks read from the same batches (methods.compare_with_run): the run exits 1 unless every route
keeps the reference's image (or one the reference's maxima rate as good: a tie) in ≥ 99 % of the
top-9 slots with values within 1e-4 (relative). Missed speed
targets never fail it. The JSON is rewritten after every model, so a run cut short keeps what it
measured. On a GPU, TF32 is off unless --tf32 (true float32 arms; recorded in the JSON).

--autocast bf16 adds two methods: "pure-bf16" (the pure forward under torch.autocast) and
"bf16" (mine --preprocess device --autocast bf16), its ratio taken to pure-bf16, and the top-9
recall of its store against the float32 device route's (|top-9 ∩ top-9| / 9, mean over units).

    python -m benchmarks.preprocess [--models alexnet,vgg19] [--images N] [--repeats R] [--split] [--json F]
    python -m benchmarks.preprocess --device cuda --images 16384 --folder --workers 12   # a GPU session
    python -m benchmarks.preprocess --methods device,pure-bf16,bf16 ...   # some methods only
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import (LayerClock, Meter, PhaseClock, QuietWaiter, conv_linear_layers, loader, machine_info, median,
                     set_tf32, topk_recall)
from .methods import MAX_REL_DIFF, MIN_INDEX_MATCH, compare_with_run, malloc_as, passes

ROUTES = ("cpu", "device")
METHODS = ("pure", "cpu", "device", "pure-bf16", "bf16")
CPU = torch.device("cpu")


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def picks(n: int | None, total: int) -> np.ndarray:
    """Indices of the n images used: fewer than the split's spread evenly over it (the split is
    sorted by class, so its first images are one class), else the split in order, repeated."""
    n = total if n is None else n
    return np.arange(n) * total // n if n < total else np.arange(n) % total


def dataset(n: int | None, size: int, folder: Path | None = None):
    """n images of the embedded test split (see picks), ImageNet preset at size px, 10 named
    classes; written as PNGs into `folder` and read from there when given."""
    from sketchmine import data

    full = data.animal_shape("test", data.preset("imagenet", 3, (size, size)))
    pick = picks(n, len(full))
    ds = data.ArrayDataset(full.images[pick], full.labels()[pick], full.class_names, full.preprocessing,
                           {**full.describe(), "first": len(pick)})
    if folder is None:
        return ds
    data.export_image_folder(ds, folder)
    return data.ImageFolderDataset(folder, full.preprocessing)


def stacked(ds, batch_size: int, workers: int = 0):
    """The same batches mine makes, prepared by the per-image rule beforehand (in `workers` loader
    processes, as the cpu route prepares them): yields each batch."""
    for _idx, x, _y, _notes in loader(ds, batch_size, workers):
        yield x


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pure(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device,
         autocast: torch.dtype | None = None) -> None:
    """The forward over batches already made (and, on a GPU, already on the device), with
    freed memory kept as `mine` keeps it on the CPU (methods.malloc_as)."""
    with torch.inference_mode(), malloc_as(False), \
            torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        for x in batches:
            model(x)
    sync(device)


def mine(model, ds, layers, batch_size: int, route: str, out: Path, workers: int,
         device: torch.device) -> dict[str, float]:
    """route: "cpu", "device", or "bf16" (the device route under --autocast bf16)."""
    import sketchmine

    clock = PhaseClock()
    t0 = time.perf_counter()
    sketchmine.mine(model, ds, layers=layers, k=9, out=out, batch_size=batch_size, num_workers=workers,
                    preprocess="device" if route == "bf16" else route, progress=clock, device=device,
                    autocast="bf16" if route == "bf16" else None)
    sync(device)
    return clock.phases(t0, time.perf_counter())


def reference_topk(model: torch.nn.Module, batches, layers: list[str], k: int = 9) -> tuple[dict, dict]:
    """The top-k of every unit without sketchmine: forward hooks read each layer's per-channel
    maximum over its positions (a copy, in the hook: an in-place ReLU changes the output after it),
    and one torch.topk over all images per layer. ({layer: (values (C, k) best first, image
    indices)}, {layer: the maxima, (images, C)})."""
    modules = dict(model.named_modules())
    maxima: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook(name: str):
        def read(_module, _inputs, out: torch.Tensor) -> None:
            maxima[name].append((out.flatten(2).amax(2) if out.ndim > 2 else out).to(CPU, torch.float32, copy=True))

        return read

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        with torch.inference_mode():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    top, every = {}, {}
    for name, parts in maxima.items():
        every[name] = torch.cat(parts)  # (images, channels)
        t = torch.topk(every[name].T, min(k, len(every[name])), dim=1)
        top[name] = (t.values.numpy(), t.indices.numpy())
    return top, {name: a.numpy() for name, a in every.items()}


def reference_check(model: torch.nn.Module, layers: list[str], batch_size: int, workers: int,
                    device: torch.device, n: int, routes: list[str], tmp: Path) -> dict:
    """Each float32 route's store over n distinct images (arrays) against reference_topk over the
    same batches; "ok" when every route passes (methods.passes: the reference's image, or one as good
    by the reference's own maxima, in MIN_INDEX_MATCH of the slots; values within MAX_REL_DIFF)."""
    ds = dataset(min(n, 2000), 224)
    reference, maxima = reference_topk(model, [x.to(device) for x in stacked(ds, batch_size, workers)], layers)
    out: dict = {"images": len(ds), "min_index_match": MIN_INDEX_MATCH, "max_rel_value_diff": MAX_REL_DIFF,
                 "reference": "torch.topk over forward-hook spatial maxima", "routes": {}}
    for route in routes:
        mine(model, ds, layers, batch_size, route, tmp / f"check-{route}.zarr", workers, device)
        c = compare_with_run(tmp / f"check-{route}.zarr", reference, maxima)
        c["ok"] = passes(c)
        out["routes"][route] = c
    out["ok"] = all(c["ok"] for c in out["routes"].values())
    return out


def agreement(a: Path, b: Path, layers: list[str]) -> dict[str, float]:
    """Share of units whose top-9 image sets are identical, and max |Δ value| over the top-9."""
    import sketchmine

    ra, rb = sketchmine.open_run(a), sketchmine.open_run(b)
    same = units = 0
    delta = 0.0
    for name in layers:
        ia, ib = ra.layer_array(name, "image_index"), rb.layer_array(name, "image_index")
        va, vb = ra.layer_array(name, "values"), rb.layer_array(name, "values")
        same += sum(set(x) == set(y) for x, y in zip(ia.tolist(), ib.tolist()))
        units += len(ia)
        finite = np.isfinite(va) & np.isfinite(vb)
        delta = max(delta, float(np.abs(va[finite].astype(np.float64) - vb[finite]).max(initial=0.0)))
    return {"units": units, "identical_top9_share": same / units, "max_abs_delta": delta}


def recall(a: Path, reference: Path, layers: list[str]) -> dict[str, float]:
    """Top-9 recall of run `a` against `reference` (common.topk_recall): mean and minimum over
    every unit, and the share of units that lost none."""
    import sketchmine

    ra, rr = sketchmine.open_run(a), sketchmine.open_run(reference)
    per_unit = np.concatenate([topk_recall(ra, rr, name) for name in layers])
    return {"units": len(per_unit), "top9_recall_mean": float(np.mean(per_unit)),
            "top9_recall_min": float(np.min(per_unit)), "units_all_nine": float(np.mean(np.equal(per_unit, 1.0)))}


def bench(name: str, images: int | None, batch_size: int, repeats: int, workers: int, quiet: QuietWaiter,
          log, device: torch.device = CPU, folder: bool = False, methods: tuple[str, ...] = METHODS[:3],
          split: bool = False, check_images: int = 0) -> dict:
    """`methods` (of METHODS) side by side; ratios where both sides ran: cpu and device to pure,
    bf16 to pure-bf16; the bf16 recall against the device route. check_images > 0: reference_check
    of the float32 routes that ran."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval().to(device)
    layers = conv_linear_layers(model)
    tmp = Path(tempfile.mkdtemp(prefix="sketchmine-prep-"))
    order = [m for m in METHODS if m in methods]
    runs: dict[str, list[dict]] = {m: [] for m in order}
    mined = [m for m in order if not m.startswith("pure")]
    try:
        ds = dataset(images, 224, tmp / "images" if folder else None)
        batches = [x.to(device) for x in stacked(ds, batch_size, workers)] if any(
            m.startswith("pure") for m in order) else []
        warm = dataset(min(batch_size, len(ds)), 224)  # imports, allocator, threads: no first-call cost timed
        for route in mined:
            mine(model, warm, layers, batch_size, route, tmp / f"warm-{route}.zarr", workers, device)
        for method in order:
            if method.startswith("pure"):
                pure(model, batches[:1], device, torch.bfloat16 if method == "pure-bf16" else None)
        for r in range(repeats):
            for method in order[r % len(order):] + order[:r % len(order)]:
                busy = quiet()
                out = tmp / f"{method}-{r}.zarr"
                layer_clock = LayerClock(model) if split else contextlib.nullcontext()
                with layer_clock, Meter() as m:
                    if method.startswith("pure"):
                        phases = pure(model, batches, device, torch.bfloat16 if method == "pure-bf16" else None)
                    else:
                        phases = mine(model, ds, layers, batch_size, method, out, workers, device)
                row = {**m.as_dict(), "busy_before": busy, "repeat": r, **(phases or {})}
                if split:
                    row.update(layers=layer_clock.seconds, rest=m.wall - layer_clock.seconds)
                runs[method].append(row)
                log(f"{name} repeat {r} {method}: {m.wall:.2f}s"
                    + (f" (layers {row['layers']:.2f}s, rest {row['rest']:.2f}s)" if split else ""))
        del batches
        both = all(route in runs for route in ROUTES)
        agree = agreement(tmp / "device-0.zarr", tmp / "cpu-0.zarr", layers) if both and repeats else None
        bf16_recall = (recall(tmp / "bf16-0.zarr", tmp / "device-0.zarr", layers)
                       if {"bf16", "device"} <= set(runs) and repeats else None)
        check = None
        if check_images > 0 and not folder and any(route in runs for route in ROUTES):
            check = reference_check(model, layers, batch_size, workers, device, check_images,
                                    [route for route in ROUTES if route in runs], tmp)
            log(f"{name} reference check ({check['images']} images): "
                + ", ".join(f"{route} index match {c['image_index_match']:.4f} ({c['tie_aware_match']:.4f} with ties), max rel diff "
                            f"{c['max_rel_value_diff']:.2e}{'' if c['ok'] else ' FAILED'}"
                            for route, c in check["routes"].items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    walls = {k: [x["wall"] for x in v] for k, v in runs.items()}

    def ratio(a: str, b: str) -> dict:
        out = {"median": median(walls[a]) / median(walls[b]), "min": min(walls[a]) / min(walls[b]),
               "paired": [x / y for x, y in zip(walls[a], walls[b])]}
        if split:  # as distributions.py: the reference's wall plus the median difference of the rest
            rest = {k: median([x["rest"] for x in runs[k]]) for k in (a, b)}
            out["accounted"] = (median(walls[b]) + rest[a] - rest[b]) / median(walls[b])
            out["layers"] = median([x["layers"] for x in runs[a]]) / median([x["layers"] for x in runs[b]])
        return out

    pairs = {"cpu": "pure", "device": "pure", "bf16": "pure-bf16"}
    ratios = {a: ratio(a, b) for a, b in pairs.items() if a in runs and b in runs and repeats}
    return {"model": name, "images": len(ds), "device": str(device), "source": "folder" if folder else "arrays",
            "batch_size": batch_size, "layers": len(layers), "methods": order, "runs": runs, "ratios": ratios,
            "device_over_cpu_median": (median(walls["device"]) / median(walls["cpu"])
                                       if all(route in runs for route in ROUTES) else None),
            "agreement_device_vs_cpu": agree, "bf16_recall_vs_fp32": bf16_recall, "reference_check": check,
            "images_per_s_median": {k: len(ds) / median(w) for k, w in walls.items()}}


def op_only(images: int, batch_size: int, repeats: int) -> dict[str, float]:
    """The preprocessing alone, 28 → 224 px ImageNet input on the CPU: per image (the cpu
    route's work) vs one `prepare_uint8` per batch (the device route's), median seconds; with
    freed memory kept as `mine` keeps it (a fresh 38 MB batch would add its page faults)."""
    from sketchmine.data.batchprep import prepare_uint8

    ds = dataset(images, 224)
    raw = torch.from_numpy(np.ascontiguousarray(ds.images)).unsqueeze(-1)
    per, batched = [], []
    with malloc_as(False):
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, len(ds), batch_size):
                torch.stack([ds[i][1] for i in range(s, min(s + batch_size, len(ds)))])
            t1 = time.perf_counter()
            for s in range(0, len(ds), batch_size):
                prepare_uint8(raw[s:s + batch_size], ds.preprocessing)
            per.append(t1 - t0)
            batched.append(time.perf_counter() - t1)
    return {"images": len(ds), "per_image_s": median(per), "batched_s": median(batched),
            "ratio": median(per) / median(batched)}


def demo_agreement(log, device: torch.device = CPU) -> dict:
    """The two routes on the embedded SketchNet ("demo") over the whole test split."""
    import sketchmine

    tmp = Path(tempfile.mkdtemp(prefix="sketchmine-prep-demo-"))
    try:
        from sketchmine import data

        ds = data.animal_shape("test")
        walls: dict[str, list[float]] = {route: [] for route in ROUTES}
        for r in range(3):  # the first pair warms up; walls of the last two, interleaved
            for route in ROUTES if r % 2 else ROUTES[::-1]:
                t0 = time.perf_counter()
                sketchmine.mine("demo", ds, out=tmp / f"{route}{r}.zarr", preprocess=route, device=device)
                if r:
                    walls[route].append(time.perf_counter() - t0)
        layers = sketchmine.open_run(tmp / "cpu0.zarr").layers
        agree = {**agreement(tmp / "device0.zarr", tmp / "cpu0.zarr", list(layers)),
                 **{f"{route}_wall_s": median(w) for route, w in walls.items()}}
        log(f"demo: {agree}")
        return agree
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict) -> None:
    """The console summary of what ran (a method left out is left out of every line)."""
    m0 = results["machine"]
    print(f"load average start {results['loadavg_start']} end {results.get('loadavg_end')}; "
          f"machine {m0['cpu']} ({m0['cpus_usable']} cores), git {m0['git']}; TF32 {results['tf32']}")
    if results.get("demo_agreement"):
        print(f"demo (SketchNet, test split): device vs cpu {results['demo_agreement']}")
    o = results.get("op_only")
    if o:
        print(f"preprocessing alone, {o['images']} images 28 → 224 px on the CPU: per image {o['per_image_s']:.2f}s, "
              f"batched {o['batched_s']:.2f}s ({o['ratio']:.1f}×)")

    def fmt(value: float | None, spec: str, width: int) -> str:
        return f"{value:{width}{spec}}" if value is not None else f"{'—':>{width}}"

    print(f"{'model':8} {'source':7} {'images':>6} {'pure s':>7} {'cpu s':>7} {'device s':>8} {'cpu/pure':>9} "
          f"{'device/pure':>11} {'device/cpu':>10}  top-9 identical, max|Δ|")
    for m in results["models"]:
        w = {k: median([x["wall"] for x in v]) for k, v in m["runs"].items()}
        r = {k: v["median"] for k, v in m["ratios"].items()}
        a = m["agreement_device_vs_cpu"]
        print(f"{m['model']:8} {m['source']:7} {m['images']:>6} {fmt(w.get('pure'), '.2f', 7)} "
              f"{fmt(w.get('cpu'), '.2f', 7)} {fmt(w.get('device'), '.2f', 8)} {fmt(r.get('cpu'), '.3f', 9)} "
              f"{fmt(r.get('device'), '.3f', 11)} {fmt(m['device_over_cpu_median'], '.3f', 10)}  "
              + (f"{a['identical_top9_share']:.4f}, {a['max_abs_delta']:.3g}" if a else "—"))
    for m in results["models"]:
        if m.get("bf16_recall_vs_fp32"):
            b = m["bf16_recall_vs_fp32"]
            bf16 = m["ratios"].get("bf16")
            print(f"{m['model']:8} {m['source']:7} bf16: mine/pure-bf16 "
                  + (f"{bf16['median']:.3f} (median)" if bf16 else "—")
                  + f", top-9 recall vs float32{' (TF32)' if (results['tf32'] or {}).get('cudnn_allow_tf32') else ''} "
                  f"mean {b['top9_recall_mean']:.4f}, min {b['top9_recall_min']:.3f}, "
                  f"units with all nine {b['units_all_nine']:.4f}")
        print(f"{m['model']:8} {m['source']:7} images/s (median): " +
              ", ".join(f"{k} {v:.0f}" for k, v in m["images_per_s_median"].items()))
        c = m.get("reference_check")
        if c:
            print(f"{m['model']:8} {m['source']:7} reference check, {c['images']} images: " + "; ".join(
                f"{route} index match {x['image_index_match']:.4f} ({x['tie_aware_match']:.4f} with ties), "
                f"max rel diff {x['max_rel_value_diff']:.2e} "
                f"{'ok' if x['ok'] else 'FAILED'}" for route, x in c["routes"].items()))
    for m in results["models"]:
        if "accounted" in m["ratios"].get("device", {}):
            print(f"{m['model']:8} {m['source']:7} accounted (layers): " + ", ".join(
                f"{route}/pure {m['ratios'][route]['accounted']:.3f} ({m['ratios'][route]['layers']:.3f})"
                for route in ROUTES if route in m["ratios"]))
    for m in results["models"]:
        c = {k: median([x["cpu"] for x in v]) for k, v in m["runs"].items()}
        if "pure" in c:
            print(f"{m['model']:8} {m['source']:7} CPU time (this process, median s): "
                  + " ".join(f"{k} {v:.2f}" for k, v in c.items()) + "; "
                  + " ".join(f"{route}/pure {c[route] / c['pure']:.3f}" for route in ROUTES if route in c))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="alexnet", help="comma-separated: alexnet, vgg19")
    p.add_argument("--images", type=int, default=None,
                   help="N test images, spread over the classes (default: all 2,000; more repeat the split)")
    p.add_argument("--vgg19-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--vgg19-batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0,
                   help="loader workers of both mine routes (and of making pure's batches beforehand)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-wait-quiet", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda (pure: batches already on the device)")
    p.add_argument("--folder", action="store_true", help="also read the images as an ImageFolder of PNGs")
    p.add_argument("--autocast", choices=["bf16"], default=None,
                   help="also time the pure forward and the device route under autocast, with the top-9 recall")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated, of {', '.join(METHODS)} (default: pure,cpu,device, and pure-bf16,bf16 "
                        "with --autocast bf16); bf16's recall needs device, each ratio both its sides")
    p.add_argument("--check-images", type=int, default=256,
                   help="distinct images of the reference check of each model (0: none)")
    p.add_argument("--no-demo", action="store_true", help="skip the two routes on the demo model (SketchNet)")
    p.add_argument("--op-only", action="store_true",
                   help="time the preprocessing alone on the CPU also when --device is not cpu (at most 2,000 images)")
    p.add_argument("--no-op-only", action="store_true", help="skip the preprocessing-alone timing")
    p.add_argument("--tf32", action="store_true",
                   help="let CUDA convolutions and matmuls use TF32 (default: off, true float32 in every arm)")
    p.add_argument("--split", action="store_true",
                   help="time the model's leaf modules (their forward, not the hooks after it) in every run; "
                        "adds the 'accounted' ratio (distributions.py's: the pure wall plus the median "
                        "difference of the rest)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.split and args.device != "cpu":
        p.error("--split times the model's calls, which return before a GPU's kernels finish: use it on the CPU")
    methods = (args.methods.split(",") if args.methods
               else list(METHODS[:3]) + (list(METHODS[3:]) if args.autocast == "bf16" else []))
    methods = [m.strip() for m in methods if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    counts = [(args.vgg19_images if name == "vgg19" else args.images) or 2000 for name in args.models.split(",")]
    if args.folder and min(counts) < 10:
        p.error("--folder needs at least 10 images (one of each class; the head is 10-way)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tf32 = set_tf32(args.tf32) if device.type == "cuda" else None
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    quiet = QuietWaiter(enabled=not args.no_wait_quiet)
    results: dict = {"machine": machine_info(), "loadavg_start": loadavg(),
                     "args": {k: str(v) for k, v in vars(args).items()}, "methods": methods, "tf32": tf32,
                     "complete": False, "demo_agreement": None, "op_only": None, "models": []}
    log(f"git {results['machine']['git']}; methods {','.join(methods)}; TF32 {tf32}")

    def save() -> None:  # after every step, so that a run cut short keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))

    save()
    if not args.no_demo:
        results["demo_agreement"] = demo_agreement(log, device)
        save()
    if (device.type == "cpu" or args.op_only) and not args.no_op_only:
        results["op_only"] = op_only(min(args.images or 2000, 2000), args.batch_size, 5)
        log(f"preprocessing alone: {results['op_only']}")
        save()
    for name in args.models.split(","):
        n = args.vgg19_images if name == "vgg19" else args.images
        bs = args.vgg19_batch_size if name == "vgg19" else args.batch_size
        for folder in (False, True) if args.folder else (False,):
            results["models"].append(bench(name, n, bs, args.repeats, args.workers, quiet, log, device, folder,
                                           tuple(methods), args.split, args.check_images))
            save()
    results["loadavg_end"] = loadavg()
    failed = [f"{m['model']} {route}" for m in results["models"] if m.get("reference_check")
              for route, c in m["reference_check"]["routes"].items() if not c["ok"]]
    results["reference_check_failed"] = failed
    results["complete"] = True
    save()
    report(results)
    if failed:
        print(f"FAILED: the reference check of {', '.join(failed)} (see reference_check in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
