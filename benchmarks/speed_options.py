"""The speed options of `sketchmine.mine`, side by side with the default pass.

    python -m benchmarks.speed_options [--model alexnet] [--images 128] [--batch-size 32] [--repeats 2]
        [--sections options,compile,loader,flush] [--json out.json]

AlexNet (random init, fixed seed) over the first N embedded images at 224 px. Each row is
one `mine` call (min over repeats, interleaved; a fresh model each call since channels_last
converts it). Sections:

* options: default vs channels_last vs autocast bf16 / fp16, every conv and linear layer;
  default vs logits=False, the conv layers only (the forward ends after the last conv). For
  autocast, the top-9 recall against the float32 run (|top-9 ∩ top-9| / 9, averaged over
  units, then over layers) and the largest value difference relative to the layer's range.
* compile: default vs compile=True. Warm-up (the first batch, which compiles, minus a
  steady batch) apart from the steady state (median batch after the first); the first
  call of the process starts from an empty inductor cache (a temporary one); later calls
  reuse its graph.
* loader: num_workers 0/1/2, prefetch_factor 2/4 with workers, for the bare forward (the
  same DataLoader feeding the model, no hooks, no store) and for mine with preprocess="cpu" (each
  image prepared in the loader, as bare's are): mine/bare per setting. Both under mine's allocator
  setting (freed memory kept: methods.malloc_as(False)).
* flush: flush_every 1 and 2 (a checkpoint after every batch or two: the worst case) with
  the flushes written on the background thread (default) and in the loop
  (overlap_flushes=False); "writes s" is the time spent writing them (rows + checkpoint).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .common import build_model, conv_linear_layers, machine_info, make_dataset, topk_recall
from .methods import malloc_as



class _Clock:
    """A sketchmine progress reporter that timestamps the batches."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.ends: list[float] = []

    def start(self, total: int, done: int) -> None:
        self.t0 = time.perf_counter()

    def advance(self, n: int) -> None:
        self.ends.append(time.perf_counter())

    def note(self, message: str) -> None: ...

    def batches(self) -> np.ndarray:
        return np.diff([self.t0, *self.ends])


def _mine(model_name: str, ds, layers: list[str], batch_size: int, workers: int, out: Path,
          clock: _Clock | None = None, **options) -> float:
    import sketchmine

    model = build_model(model_name)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    sketchmine.mine(model, ds, layers=layers, out=out, batch_size=batch_size, num_workers=workers,
                    progress=clock or _Clock(), **options)
    return time.perf_counter() - t0


def _bare(model_name: str, ds, batch_size: int, workers: int, prefetch: int | None) -> float:
    """The model's forward over the DataLoader `mine` builds with preprocess="cpu" (no hooks, no store),
    freed memory kept as `mine` keeps it on the CPU."""
    from torch.utils.data import DataLoader

    from sketchmine.data import collate

    model = build_model(model_name)
    ahead = {"prefetch_factor": prefetch} if workers and prefetch else {}
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        persistent_workers=False, **ahead)
    t0 = time.perf_counter()
    with torch.inference_mode(), malloc_as(False):
        for _, x, _, _ in loader:
            model(x)
    return time.perf_counter() - t0


def _agreement(run_dir: Path, ref_dir: Path, layers: list[str]) -> tuple[float, float]:
    """Top-k recall vs the reference (mean over layers of the mean over units) and the largest
    |value difference| / (value range of the layer)."""
    from sketchmine.results.run import open_run

    run, ref = open_run(run_dir), open_run(ref_dir)
    recalls, worst = [], 0.0
    for layer in layers:
        v, _, _ = run.topk(layer)
        rv, _, _ = ref.topk(layer)
        recalls.append(float(np.mean(topk_recall(run, ref, layer))))
        span = float(np.nanmax(rv) - np.nanmin(rv)) or 1.0
        worst = max(worst, float(np.nanmax(np.abs(v - rv))) / span)
    return float(np.mean(recalls)), worst


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'—':>{width}}"


def _options(args, ds, every: list[str], convs: list[str], tmp: Path) -> list[dict]:
    configs = [
        ("default", every, {}),
        ("channels_last", every, {"channels_last": True}),
        ("autocast bf16", every, {"autocast": "bf16"}),
        ("autocast fp16", every, {"autocast": "fp16"}),
        ("default (convs)", convs, {}),
        ("logits=False (convs)", convs, {"logits": False}),
    ]
    times: dict[str, float] = {}
    for r in range(args.repeats):  # interleaved, so drift hits every config alike
        for label, layers, options in configs:
            t = _mine(args.model, ds, layers, args.batch_size, args.workers, tmp / f"{r}-{label}.zarr", **options)
            times[label] = min(times.get(label, float("inf")), t)
    rows = []
    print(f"\noptions (workers {args.workers})")
    print(f"{'config':<22}{'layers':>7}{'time s':>9}{'speed-up':>10}{'top-9 recall':>14}{'max |Δv|/range':>16}")
    for label, layers, options in configs:
        base = "default (convs)" if label.endswith("(convs)") else "default"
        recall = worst = None
        if "autocast" in options or "channels_last" in options:
            recall, worst = _agreement(tmp / f"0-{label}.zarr", tmp / f"0-{base}.zarr", layers)
        up = times[base] / times[label]
        rows.append({"config": label, "layers": len(layers), "time_s": times[label], "speedup": up,
                     "top9_recall": recall, "max_dv_over_range": worst})
        print(f"{label:<22}{len(layers):>7}{times[label]:>9.2f}{up:>9.2f}×{_fmt(recall, '.3f', 14)}"
              f"{_fmt(worst, '.2e', 16)}")
    return rows


def _compile(args, ds, every: list[str], convs: list[str], tmp: Path) -> list[dict]:
    configs = [("default", {}), ("compile", {"compile": True})]
    runs: dict[str, list[dict]] = {label: [] for label, _ in configs}
    for r in range(args.repeats):
        for label, options in configs:
            clock = _Clock()
            total = _mine(args.model, ds, every, args.batch_size, args.workers, tmp / f"c{r}-{label}.zarr",
                          clock, **options)
            b = clock.batches()
            steady = float(np.median(b[1:])) if len(b) > 1 else float("nan")
            runs[label].append({"total_s": total, "first_batch_s": float(b[0]), "steady_s_per_batch": steady,
                                "warmup_s": float(b[0]) - steady})
    base = min(x["steady_s_per_batch"] for x in runs["default"])
    rows = []
    print("\ncompile (every conv and linear layer; warm-up = first batch − a steady batch, the first call of the "
          "process, from an empty inductor cache; later calls reuse the graph)")
    print(f"{'config':<10}{'1st call s':>11}{'later s':>9}{'warm-up s':>11}{'steady s/batch':>16}"
          f"{'steady speed-up':>17}{'top-9 recall':>14}{'max |Δv|/range':>16}")
    for label, options in configs:
        first, later = runs[label][0], runs[label][1:]
        steady = min(x["steady_s_per_batch"] for x in runs[label])
        recall = worst = None
        if options:
            recall, worst = _agreement(tmp / f"c0-{label}.zarr", tmp / "c0-default.zarr", every)
        warm = first["warmup_s"] if options else None
        later_total = min(x["total_s"] for x in later) if later else None
        row = {"config": label, "first_call_s": first["total_s"], "later_calls_s": later_total, "warmup_s": warm,
               "steady_s_per_batch": steady, "steady_speedup": base / steady, "top9_recall": recall,
               "max_dv_over_range": worst, "runs": runs[label]}
        rows.append(row)
        print(f"{label:<10}{first['total_s']:>11.2f}{_fmt(later_total, '.2f', 9)}{_fmt(warm, '.2f', 11)}"
              f"{steady:>16.3f}{base / steady:>16.2f}×{_fmt(recall, '.3f', 14)}{_fmt(worst, '.2e', 16)}")
    return rows


def _loader(args, ds, every: list[str], convs: list[str], tmp: Path) -> list[dict]:
    settings = [(0, None), (1, 2), (1, 4), (2, 2), (2, 4)]
    bare: dict[tuple, float] = {}
    mined: dict[tuple, float] = {}
    loop: dict[tuple, float] = {}
    for r in range(args.repeats):
        for workers, prefetch in settings:
            key = (workers, prefetch)
            bare[key] = min(bare.get(key, float("inf")), _bare(args.model, ds, args.batch_size, workers, prefetch))
            clock = _Clock()
            t = _mine(args.model, ds, every, args.batch_size, workers, tmp / f"l{r}-{workers}-{prefetch}.zarr",
                      clock, prefetch_factor=prefetch, preprocess="cpu")
            mined[key] = min(mined.get(key, float("inf")), t)
            loop[key] = min(loop.get(key, float("inf")), clock.ends[-1] - clock.t0)
    rows = []
    print(f"\nloader (mine with preprocess='cpu'; bare = the same DataLoader feeding the model's forward: no hooks, "
          f"no store; mine loop = "
          f"mine without its setup and final writes; {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)")
    print(f"{'workers':>7}{'prefetch':>10}{'bare s':>9}{'mine s':>9}{'mine/bare':>11}{'loop s':>9}{'loop/bare':>11}"
          f"{'mine vs 0 workers':>19}")
    for key in settings:
        workers, prefetch = key
        rows.append({"workers": workers, "prefetch_factor": prefetch, "bare_s": bare[key], "mine_s": mined[key],
                     "mine_over_bare": mined[key] / bare[key], "mine_loop_s": loop[key],
                     "loop_over_bare": loop[key] / bare[key], "mine_speedup_vs_0": mined[(0, None)] / mined[key]})
        print(f"{workers:>7}{prefetch if prefetch else '—':>10}{bare[key]:>9.2f}{mined[key]:>9.2f}"
              f"{mined[key] / bare[key]:>11.3f}{loop[key]:>9.2f}{loop[key] / bare[key]:>11.3f}"
              f"{mined[(0, None)] / mined[key]:>18.2f}×")
    return rows


def _flush(args, ds, every: list[str], convs: list[str], tmp: Path) -> list[dict]:
    from sketchmine.mining import loop

    writes = [0.0]
    original = loop._flush

    def timed(*a, **kw):  # runs on the writer thread when overlapped
        t0 = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            writes[0] += time.perf_counter() - t0

    configs = [(f, overlap) for f in (1, 2) for overlap in (False, True)]
    times: dict[tuple, float] = {}
    spent: dict[tuple, float] = {}
    loop._flush = timed
    try:
        for r in range(args.repeats):
            for key in configs:
                writes[0] = 0.0
                t = _mine(args.model, ds, every, args.batch_size, args.workers, tmp / f"f{r}-{key}.zarr",
                          flush_every=key[0], overlap_flushes=key[1])
                if t < times.get(key, float("inf")):
                    times[key], spent[key] = t, writes[0]
    finally:
        loop._flush = original
    rows = []
    print(f"\nflush (a checkpoint every 1 or 2 batches of {args.batch_size}: the worst case)")
    print(f"{'config':<30}{'flushes':>8}{'time s':>9}{'writes s':>10}{'speed-up':>10}")
    batches = -(-len(ds) // args.batch_size)
    for key in configs:
        every_n, overlap = key
        label = f"flush_every={every_n}, " + ("overlapped" if overlap else "in the loop")
        up = times[(every_n, False)] / times[key]
        n_flushes = batches // every_n
        rows.append({"config": label, "flush_every": every_n, "overlap_flushes": overlap, "flushes": n_flushes,
                     "time_s": times[key], "writes_s": spent[key], "speedup": up})
        print(f"{label:<30}{n_flushes:>8}{times[key]:>9.2f}{spent[key]:>10.2f}{up:>9.2f}×")
    return rows


_SECTIONS = {"options": _options, "compile": _compile, "loader": _loader, "flush": _flush}
SECTIONS = tuple(_SECTIONS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="loader workers of the options, compile and flush rows")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    ds = make_dataset(args.images)
    probe: nn.Module = build_model(args.model)
    every = conv_linear_layers(probe)
    convs = [n for n, m in probe.named_modules() if isinstance(m, nn.Conv2d)]
    info = machine_info()
    load = os.getloadavg()
    print(f"{args.model}, {args.images} images at 224 px, batch {args.batch_size}, min of {args.repeats}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {info.get('cpu', '')}; "
          f"load average {load[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="sketchmine-speed-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor-cache")  # compile starts cold (read at each use)
    results = {"machine": info, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "load_average_start": load}
    try:
        _mine(args.model, ds, every, args.batch_size, args.workers, tmp / "warm-up.zarr")  # untimed: first-call costs
        for section in sections:
            results[section] = _SECTIONS[section](args, ds, every, convs, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    print(f"load average at the end {results['load_average_end'][0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
