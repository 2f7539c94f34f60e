"""sketchmine.mine vs the bare forward pass vs the Deep Visualization Toolbox loop.

Side by side, in one run, on torchvision AlexNet and VGG-19 (random init, eval, fixed
seed, 224 px), every nn.Conv2d and nn.Linear tapped, k = 9:

  (a) bare    the same DataLoader (dataset, batch size, workers) + model under
              inference_mode, no hooks: isolates mining overhead from data loading;
      pure    forward over pre-stacked tensors (no loading), for reference;
  (b) mine    sketchmine.mine(...) into a fresh temporary directory; ratio mine / bare
              (target <= 1.02), split into setup / streaming loop / finish;
  (c) dvt     one image at a time, batch-1 forward with hooks, per-channel Python top-k
              update (DVT's find_maxes way); bs1-topk: same but one torch.topk per layer;
  (d) memory  peak RSS and time of mine at 1x and 4x the images, each in a fresh
              subprocess (targets: same peak, linear time);
  (e) peer    zennit-crp 0.6 FeatureVisualization.run on the same model, layers and images
              (skipped, and said so, when zennit-crp is not installed);
  (f) visualize  patches + deconvolutions vs a per-unit attribution loop (--visualize).
ResNet-50 joins with --models alexnet,vgg19,resnet50.
Plus a kernel micro-benchmark (topk_update vs torch amax / max on the real layer shapes)
and one instrumented mine call that says where mine's extra time goes.

bare / mine / pure are interleaved (the order rotates every repeat) after a warm-up
batch. On a shared machine other processes only ever add time, so the minimum over
repeats is the primary estimate; medians and per-repeat paired ratios are shown too,
and every measurement records how much CPU other processes used meanwhile.

mine prepares each image as bare's DataLoader does (--preprocess cpu, the default); --preprocess
device times mine's batched route against the same per-image bare loop (not like for like; said
in the report). Correctness: where the one-at-a-time loops ran over all of a model's images
(--dvt-images left at the default, and always under --quick), mine's top-9 is checked against
theirs; the suite exits 1 unless the same image (or one tied with it) is in >= 99 % of the slots
with values within 1e-4 (relative). Missed speed targets never fail it. The JSON (--json) is rewritten after each
model, so a run cut short keeps what it measured.

    python -m benchmarks [--quick] [--json out.json] [--alexnet-images N] [--vgg19-images N] ...
"""
from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import topk_kernel
from .common import (REPO, Meter, QuietWaiter, build_model, conv_linear_layers, current_rss_mib, machine_info,
                     make_dataset, median, peak_rss_mib, peak_rss_since_reset_mib, reset_peak_rss)
from .methods import (MAX_REL_DIFF, MIN_INDEX_MATCH, bare_forward, compare_with_run, mine_once, one_at_a_time,
                      passes, pure_forward, stack_batches)
from .peers import zennit_crp_available, zennit_crp_run
from .profile_mine import instrumented
from .report import CONTENDED, LINEAR_TOLERANCE, MEMORY_TOLERANCE, RATIO_TARGET, print_report

# --quick: tiny counts for a smoke run; each applies unless that flag is given explicitly
QUICK = {"alexnet_images": 8, "alexnet_batch_size": 4, "vgg19_images": 2, "vgg19_batch_size": 2,
         "resnet50_images": 2, "resnet50_batch_size": 2, "peer_images": 2, "repeats": 1,
         "memory_models": "alexnet", "memory_alexnet_images": 4, "profile_models": "alexnet", "no_wait_quiet": True}


@dataclass
class ModelConfig:
    name: str
    images: int
    batch_size: int
    dvt_images: int
    memory_images: int
    peer_images: int = 16


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _contended(m: dict, cores: int) -> bool:
    return m["others_cpu"] > CONTENDED * m["wall"] * cores


# ---- one model, side by side ---------------------------------------------------------------------
def bench_model(cfg: ModelConfig, repeats: int, num_workers: int, seed: int, do_dvt: bool,
                do_profile: bool, do_kernel: bool, quiet: QuietWaiter, log, do_peer: bool = True,
                preprocess: str = "cpu") -> dict:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load_start = loadavg()
    model = build_model(cfg.name, seed)
    layers = conv_linear_layers(model)
    ds = make_dataset(cfg.images)
    out: dict = {"config": asdict(cfg), "layers": layers, "num_layers": len(layers),
                 "repeats": repeats, "num_workers": num_workers, "preprocess": preprocess}

    # Warm-up: one batch through the bare path and through mine (imports zarr, loads the
    # op, touches the allocator) so that no first-call cost lands in a timed run.
    warm = make_dataset(min(cfg.batch_size, cfg.images))
    t0 = time.perf_counter()
    bare_forward(model, warm, cfg.batch_size, num_workers)
    mine_once(model, warm, layers, cfg.batch_size, num_workers, preprocess=preprocess)
    out["warmup_s"] = time.perf_counter() - t0
    log(f"{cfg.name}: {len(layers)} layers tapped, warm-up {out['warmup_s']:.1f}s")

    batches = stack_batches(ds, cfg.batch_size)
    runs: dict[str, list[dict]] = {"bare": [], "mine": [], "pure": []}
    order = ["bare", "mine", "pure"]
    for r in range(repeats):
        rot = order[r % 3:] + order[:r % 3]
        for method in rot:
            gc.collect()
            busy = quiet()
            m = Meter()
            if method == "bare":
                with m:
                    bare_forward(model, ds, cfg.batch_size, num_workers)
            elif method == "mine":  # the Meter times the mine call alone (mine_once)
                phases, _ = mine_once(model, ds, layers, cfg.batch_size, num_workers, preprocess=preprocess, timed=m)
            else:
                with m:
                    pure_forward(model, batches)
            rec = {**m.as_dict(), "busy_before": busy, "repeat": r}
            if method == "mine":
                rec.update({f"mine_{k}": v for k, v in phases.items()})
            rec["contended"] = _contended(rec, cores)
            runs[method].append(rec)
            log(f"{cfg.name}: repeat {r + 1}/{repeats} {method:4s} {m.wall:7.2f}s wall, {m.cpu:6.2f}s cpu, "
                f"others {m.others_cpu:5.2f}s cpu" + ("  [contended]" if rec["contended"] else ""))
    del batches
    out["runs"] = runs

    def stat(method: str, key: str = "wall") -> dict[str, float]:
        xs = [x[key] for x in runs[method]]
        return {"min": min(xs), "median": median(xs)}

    bare, pure, mine = stat("bare"), stat("pure"), stat("mine")
    out["store_mib"] = runs["mine"][-1].get("mine_store_bytes", 0.0) / 2**20
    setup, loop, finish = stat("mine", "mine_setup"), stat("mine", "mine_loop"), stat("mine", "mine_finish")
    out["seconds"] = {"bare": bare, "pure": pure, "mine": mine, "mine_setup": setup, "mine_loop": loop,
                      "mine_finish": finish, "bare_cpu": stat("bare", "cpu"), "mine_cpu": stat("mine", "cpu"),
                      "pure_cpu": stat("pure", "cpu")}
    paired = [m["wall"] / b["wall"] for m, b in zip(runs["mine"], runs["bare"])]
    out["ratios"] = {
        "mine_over_bare_min": mine["min"] / bare["min"],
        "mine_over_bare_median": mine["median"] / bare["median"],
        "mine_over_bare_paired_median": median(paired),
        "mine_over_bare_cpu_min": out["seconds"]["mine_cpu"]["min"] / out["seconds"]["bare_cpu"]["min"],
        "mine_loop_over_bare_min": loop["min"] / bare["min"],
        "mine_over_pure_min": mine["min"] / pure["min"],
        "bare_over_pure_min": bare["min"] / pure["min"],
    }
    out["contended_runs"] = sum(x["contended"] for v in runs.values() for x in v)
    out["target_ratio"] = RATIO_TARGET
    out["target_met"] = out["ratios"]["mine_over_bare_min"] <= RATIO_TARGET

    # Fixed cost (setup + finish) vs per-image overhead in the loop: how many images until
    # the total ratio reaches the target.
    fixed = setup["min"] + finish["min"]
    bare_per_image = bare["min"] / cfg.images
    loop_overhead_per_image = (loop["min"] - bare["min"]) / cfg.images
    headroom = (RATIO_TARGET - 1) * bare_per_image - loop_overhead_per_image
    out["break_even"] = {
        "fixed_s": fixed, "bare_s_per_image": bare_per_image,
        "loop_overhead_s_per_image": loop_overhead_per_image,
        "loop_overhead_fraction": loop_overhead_per_image / bare_per_image,
        "images_for_target": (fixed / headroom) if headroom > 0 else None,
    }
    mine_per_image = mine["min"] / cfg.images

    ref_dvt = ref_vec = None
    if do_dvt:
        dvt_ds = ds if cfg.dvt_images == cfg.images else make_dataset(cfg.dvt_images)
        res = {}
        for key, vec in (("dvt", False), ("bs1_topk", True)):
            gc.collect()
            busy = quiet()
            with Meter() as m:
                _, ref = one_at_a_time(model, dvt_ds, layers, k=9, num_workers=num_workers, vectorised=vec)
            res[key] = {**m.as_dict(), "busy_before": busy, "contended": _contended(m.as_dict(), cores)}
            if vec:
                ref_vec = ref
            else:
                ref_dvt = ref
            log(f"{cfg.name}: {'batch-1 torch.topk loop' if vec else 'DVT loop (per-channel python)'} "
                f"{m.wall:7.2f}s for {cfg.dvt_images} images, others {m.others_cpu:5.2f}s cpu")
        out["dvt"] = {
            "images": cfg.dvt_images, "runs": res,
            "dvt_s_per_image": res["dvt"]["wall"] / cfg.dvt_images,
            "bs1_topk_s_per_image": res["bs1_topk"]["wall"] / cfg.dvt_images,
            "mine_s_per_image": mine_per_image,
            "speedup_vs_dvt": (res["dvt"]["wall"] / cfg.dvt_images) / mine_per_image,
            "speedup_vs_bs1_topk": (res["bs1_topk"]["wall"] / cfg.dvt_images) / mine_per_image,
        }

    if do_peer:
        why = zennit_crp_available()
        if why:
            out["zennit_crp"] = {"skipped": why}
            log(f"{cfg.name}: zennit-crp skipped: {why}")
        else:
            peer_ds = make_dataset(cfg.peer_images)
            gc.collect()
            busy = quiet()
            with Meter() as m:
                zennit_crp_run(model, peer_ds, layers, cfg.batch_size)
            per_image = m.wall / cfg.peer_images
            out["zennit_crp"] = {"images": cfg.peer_images, **m.as_dict(), "busy_before": busy,
                                 "contended": _contended(m.as_dict(), cores), "s_per_image": per_image,
                                 "speedup_of_mine": per_image / mine_per_image}
            log(f"{cfg.name}: zennit-crp FeatureVisualization.run {m.wall:7.2f}s for {cfg.peer_images} images "
                f"({per_image / mine_per_image:.1f}× mine's time per image)")

    if do_kernel:
        n_batches = -(-cfg.images // cfg.batch_size)
        out["kernel"] = {}
        for threads in sorted({1, torch.get_num_threads()}):
            gc.collect()
            quiet()
            with Meter() as m:
                per_layer = topk_kernel.bench_layers(model, layers, cfg.batch_size, threads=threads)
            out["kernel"][f"threads_{threads}"] = {
                "threads": threads, "per_layer": per_layer, "meter": m.as_dict(),
                "contended": _contended(m.as_dict(), cores),
                "summary": topk_kernel.summarize(per_layer, bare["min"] / n_batches)}
            ks = out["kernel"][f"threads_{threads}"]["summary"]
            log(f"{cfg.name}: kernel ({threads} thread{'s' if threads > 1 else ''}) topk_update "
                f"{1000 * ks['topk_update_s_per_batch']:.1f} ms/batch, amax {1000 * ks['amax_s_per_batch']:.1f} "
                f"ms/batch, others {m.others_cpu:.2f}s cpu")

    if do_profile:
        gc.collect()
        quiet()
        with tempfile.TemporaryDirectory(prefix="sketchmine-bench-keep-") as keep_dir:
            keep = Path(keep_dir) / "run.zarr"
            with instrumented(type(ds)) as timers, Meter() as m:
                phases, kept = mine_once(model, ds, layers, cfg.batch_size, num_workers, keep=keep,
                                         preprocess=preprocess)
            log(f"{cfg.name}: instrumented mine {phases['total']:7.2f}s, others {m.others_cpu:5.2f}s cpu")
            shapes = topk_kernel.layer_shapes(model, layers)
            by_layer: dict[str, float] = {}
            for shape, sec in timers.topk_by_shape.items():
                names = "+".join(n for n, s in shapes.items() if s == shape)
                by_layer[names or str(shape)] = sec
            steps = timers.steps()
            for phase in ("setup", "finish"):
                known = sum(v for key, v in steps.items() if key.startswith(phase + ":"))
                steps[f"{phase}: other (unattributed)"] = phases[phase] - known
            topk_total = timers.seconds.get("loop: topk_update op (all layers)", 0.0)
            out["profile"] = {
                "phases_s": phases, "meter": m.as_dict(), "contended": _contended(m.as_dict(), cores),
                "steps_s": steps,
                "calls": dict(timers.calls),
                "topk_update_by_layer_s": dict(sorted(by_layer.items(), key=lambda kv: -kv[1])),
                "loop_minus_bare_s": phases["loop"] - bare["min"],
                "in_loop_residual_s": phases["loop"] - bare["min"] - topk_total,
                "note": ("loop_minus_bare = this call's streaming loop - min(bare); residual = that minus "
                         "topk_update time: hook dispatch, batch/logits handling, per-batch bookkeeping, noise"),
            }
            if ref_dvt is not None and kept is not None and cfg.dvt_images == cfg.images:
                out["cross_check"] = cross_check(kept, ref_dvt, ref_vec)
    if ref_dvt is not None and cfg.dvt_images == cfg.images and "cross_check" not in out:
        # not profiled: one more (untimed) call, its run kept for the check
        with tempfile.TemporaryDirectory(prefix="sketchmine-bench-keep-") as keep_dir:
            _, kept = mine_once(model, ds, layers, cfg.batch_size, num_workers, keep=Path(keep_dir) / "run.zarr",
                                preprocess=preprocess)
            out["cross_check"] = cross_check(kept, ref_dvt, ref_vec)
    if "cross_check" in out:
        c = out["cross_check"]
        log(f"{cfg.name}: cross-check vs the one-at-a-time loops: " + ", ".join(
            f"{key} index match {c[key]['image_index_match']:.4f} ({c[key]['tie_aware_match']:.4f} with ties), "
            f"max rel diff {c[key]['max_rel_value_diff']:.2e}"
            for key in ("vs_dvt", "vs_bs1_topk")) + ("" if c["ok"] else "  FAILED"))
    out["loadavg"] = {"start": load_start, "end": loadavg()}
    del model
    gc.collect()
    return out


def cross_check(kept: Path, ref_dvt: dict, ref_vec: dict) -> dict:
    """mine's run against both one-at-a-time loops; "ok" when both pass (methods.passes: a tie-aware image
    match of at least MIN_INDEX_MATCH, values within MAX_REL_DIFF)."""
    out = {"vs_dvt": compare_with_run(kept, ref_dvt), "vs_bs1_topk": compare_with_run(kept, ref_vec),
           "min_index_match": MIN_INDEX_MATCH, "max_rel_value_diff": MAX_REL_DIFF}
    out["ok"] = all(passes(out[key]) for key in ("vs_dvt", "vs_bs1_topk"))
    return out


# ---- memory and linearity, each measurement in a fresh process -------------------------------------
def child_main(spec: dict) -> dict:
    """Runs inside the subprocess: build, reset the RSS high-water mark, measure, report.

    peak_run_mib is VmHWM after a reset just before the measurement (so model init does
    not mask it); peak_rss_mib is ru_maxrss, for reference only: in a subprocess it also
    holds the parent's peak (the fork image before exec is counted), so it is not usable.
    """
    torch.set_num_threads(spec["threads"])
    import sketchmine.stats.ops  # noqa: F401  (imports zarr, loads the op: not part of the measurement)
    import zarr  # noqa: F401

    model = build_model(spec["model"], spec["seed"])
    layers = conv_linear_layers(model)
    ds = make_dataset(spec["images"])
    gc.collect()
    before = current_rss_mib()
    reset = reset_peak_rss()
    m = Meter()
    if spec["kind"] == "mine":
        phases, _ = mine_once(model, ds, layers, spec["batch_size"], spec["num_workers"],
                              preprocess=spec.get("preprocess", "cpu"), timed=m)
    else:
        with m:
            t = bare_forward(model, ds, spec["batch_size"], spec["num_workers"])
        phases = {"total": t, "setup": 0.0, "loop": t, "finish": 0.0}
    peak_run = peak_rss_since_reset_mib() if reset else peak_rss_mib()
    return {**spec, "rss_before_mib": before, "peak_run_mib": peak_run, "hwm_reset": reset,
            "peak_rss_mib": peak_rss_mib(), "phases_s": phases, "meter": m.as_dict()}


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.mine_vs_forward", "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_checks(cfg: ModelConfig, factor: int, threads: int, num_workers: int, seed: int,
                  quiet: QuietWaiter, log, preprocess: str = "cpu") -> dict:
    base = {"model": cfg.name, "batch_size": cfg.batch_size, "threads": threads,
            "num_workers": num_workers, "seed": seed, "preprocess": preprocess}
    rows = []
    n1 = cfg.memory_images
    for kind, n in (("bare", n1), ("mine", n1), ("mine", n1 * factor)):
        quiet()
        r = run_child({**base, "kind": kind, "images": n})
        log(f"{cfg.name}: memory child {kind} {n:5d} images: peak {r['peak_run_mib']:.0f} MiB "
            f"(+{r['peak_run_mib'] - r['rss_before_mib']:.0f}), {r['phases_s']['total']:.2f}s, "
            f"others {r['meter']['others_cpu']:.2f}s cpu")
        rows.append(r)
    bare1, m1, m4 = rows
    loop1 = m1["phases_s"]["loop"] / m1["images"]
    loop4 = m4["phases_s"]["loop"] / m4["images"]
    p1, p4 = m1["peak_run_mib"], m4["peak_run_mib"]
    peak_same = p4 <= max(p1 * (1 + MEMORY_TOLERANCE), p1 + 32)
    linear = abs(loop4 / loop1 - 1) <= LINEAR_TOLERANCE
    return {
        "model": cfg.name, "factor": factor, "rows": rows,
        "peak_run_mib": {"bare_1x": bare1["peak_run_mib"], "mine_1x": p1, "mine_4x": p4},
        "mine_peak_over_bare_mib": p1 - bare1["peak_run_mib"],
        "mine_peak_growth_mib": p4 - p1,
        "peak_4x_over_1x": p4 / p1,
        "time_4x_over_1x": m4["phases_s"]["total"] / m1["phases_s"]["total"],
        "loop_time_4x_over_1x": m4["phases_s"]["loop"] / m1["phases_s"]["loop"],
        "loop_s_per_image": {"1x": loop1, "4x": loop4},
        "target_same_peak_met": peak_same, "target_linear_met": linear,
    }


# ---- command line ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="alexnet,vgg19,resnet50",
                   help="comma list of alexnet, vgg19, resnet50 (default all three)")
    p.add_argument("--alexnet-images", type=int, default=256)
    p.add_argument("--alexnet-batch-size", type=int, default=64)
    p.add_argument("--vgg19-images", type=int, default=32)
    p.add_argument("--vgg19-batch-size", type=int, default=16)
    p.add_argument("--resnet50-images", type=int, default=32)
    p.add_argument("--resnet50-batch-size", type=int, default=16)
    p.add_argument("--memory-resnet50-images", type=int, default=16)
    p.add_argument("--peer-images", type=int, default=16, help="images for zennit-crp (slow: an LRP backward each)")
    p.add_argument("--no-peer", action="store_true", help="skip zennit-crp")
    p.add_argument("--visualize", action="store_true",
                   help="also run visualize vs a per-unit loop on AlexNet (benchmarks.visualize_vs_loop)")
    p.add_argument("--dvt-images", type=int, default=None,
                   help="images for the one-at-a-time loops (default: same as each model's images)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of bare / mine / pure")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (same for every method)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-models", default="alexnet,vgg19",
                   help="comma list of models for the 1x/4x memory+linearity check ('' to skip)")
    p.add_argument("--memory-alexnet-images", type=int, default=256, help="1x image count of AlexNet's check")
    p.add_argument("--memory-vgg19-images", type=int, default=16, help="1x image count of VGG-19's check")
    p.add_argument("--memory-factor", type=int, default=4)
    p.add_argument("--no-dvt", action="store_true", help="skip the one-image-at-a-time loops")
    p.add_argument("--no-kernel", action="store_true", help="skip the topk_update micro-benchmark")
    p.add_argument("--profile-models", default="alexnet,vgg19",
                   help="models that get one extra instrumented mine call ('' for none)")
    p.add_argument("--no-wait-quiet", action="store_true",
                   help="do not wait for other processes to go quiet before each measurement")
    p.add_argument("--preprocess", choices=["cpu", "device"], default="cpu",
                   help="mine's preprocessing route (default cpu: per image in the loader, as the bare and pure "
                        "arms and the one-at-a-time loops prepare theirs; device: mine's batched route)")
    p.add_argument("--quick", action="store_true",
                   help="tiny counts for a CI smoke run (< 1 min; a flag given explicitly keeps its value), "
                        "the one-at-a-time loops over every image, so the cross-check runs")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # the quick counts as defaults, then parsed again: a flag given explicitly wins
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child_main(json.loads(args.child))))
        return 0
    torch.set_num_threads(args.threads)
    raw = sys.argv[1:] if argv is None else argv
    command = "python -m benchmarks" + ("" if not raw else " " + shlex.join(raw))
    t_suite = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_suite:6.1f}s] {msg}", file=sys.stderr, flush=True)

    sizes = {"alexnet": (args.alexnet_images, args.alexnet_batch_size, args.memory_alexnet_images),
             "vgg19": (args.vgg19_images, args.vgg19_batch_size, args.memory_vgg19_images),
             "resnet50": (args.resnet50_images, args.resnet50_batch_size, args.memory_resnet50_images)}
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    mem_names = [n.strip() for n in args.memory_models.split(",") if n.strip()]
    for n in names + mem_names:
        if n not in sizes:
            raise SystemExit(f"unknown model {n!r}; expected alexnet, vgg19 or resnet50")
    configs = {n: ModelConfig(n, sizes[n][0], sizes[n][1], min(args.dvt_images or sizes[n][0], sizes[n][0]),
                              sizes[n][2], args.peer_images) for n in sizes}
    quiet = QuietWaiter(enabled=not args.no_wait_quiet)
    results: dict = {"machine": {**machine_info(), "loadavg_start": loadavg()}, "command": command,
                     "settings": {"k": 9, "input_px": 224, "repeats": args.repeats, "threads": args.threads,
                                  "num_workers": args.num_workers, "seed": args.seed, "device": "cpu",
                                  "preprocess": args.preprocess, "quick": args.quick,
                                  "estimator": "min over interleaved repeats"},
                     "complete": False, "models": {}, "memory": []}

    def save() -> None:  # after every model, so that a run cut short keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str))

    log(f"machine: {results['machine']['cpu']}, {results['machine']['cpus_usable']} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, git {results['machine']['git']}")
    log(f"mine's preprocessing: --preprocess {args.preprocess}"
        + (" (per image in the loader, as bare's)" if args.preprocess == "cpu"
           else " (batched, while bare and pure prepare per image: not like for like)"))
    profile_names = [n.strip() for n in args.profile_models.split(",")]
    save()
    for n in names:
        results["models"][n] = bench_model(configs[n], args.repeats, args.num_workers, args.seed,
                                           not args.no_dvt, n in profile_names, not args.no_kernel, quiet, log,
                                           do_peer=not args.no_peer, preprocess=args.preprocess)
        save()
    for n in mem_names:
        results["memory"].append(memory_checks(configs[n], args.memory_factor, args.threads, args.num_workers,
                                               args.seed, quiet, log, args.preprocess))
        save()
    if args.visualize:
        from . import visualize_vs_loop

        quiet()
        results["visualize"] = visualize_vs_loop.run(64 if args.quick else 256, 2 if args.quick else 16,
                                                     1 if args.quick else 2, 64, args.seed)
    results["suite_wall_s"] = time.perf_counter() - t_suite
    results["machine"]["loadavg_end"] = loadavg()
    results["quiet_wait"] = {"enabled": quiet.enabled, "waited_s": quiet.waited, "gave_up": quiet.gave_up}
    results["targets"] = {
        f"mine_over_bare_le_{RATIO_TARGET}": {n: r["target_met"] for n, r in results["models"].items()},
        "same_peak_1x_4x": {m["model"]: m["target_same_peak_met"] for m in results["memory"]},
        "linear_time_1x_4x": {m["model"]: m["target_linear_met"] for m in results["memory"]},
        "speedup_vs_zennit_crp_ge_5": {n: r["zennit_crp"]["speedup_of_mine"] >= 5
                                       for n, r in results["models"].items() if "speedup_of_mine" in r.get("zennit_crp", {})},
        "speedup_vs_dvt_ge_3": {n: r["dvt"]["speedup_vs_dvt"] >= 3 for n, r in results["models"].items() if "dvt" in r},
    }
    failed = [n for n, r in results["models"].items() if not r.get("cross_check", {}).get("ok", True)]
    results["cross_check_failed"] = failed
    results["complete"] = True
    save()
    print_report(results)
    print(f"mine's preprocessing: --preprocess {args.preprocess}; cross-check against the one-at-a-time loops: "
          + (", ".join(f"{n} {'ok' if r['cross_check']['ok'] else 'FAILED'}" for n, r in results["models"].items()
                       if "cross_check" in r) or "not run (--dvt-images below the images, or --no-dvt)"))
    if failed:
        print(f"FAILED: mine's top-9 differs from the one-at-a-time loops' for {', '.join(failed)} "
              "(models.*.cross_check in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
