"""The bare forward under three settings of glibc's malloc (issue 20): its defaults, the thresholds
they settle at (mmap above 32 MiB, trim above 64 MiB; where sketchmine leaves them after a pass), and
freed memory kept (sketchmine.mining.allocator, what `mine` uses on the CPU: the heap kept and
blocks of 1 MiB or more reused by the compiled core's block cache). Each setting in a fresh
process (a heap remembers what came before), the settings interleaved, the order rotating.

    python -m benchmarks.allocator [--models alexnet,vgg19] [--batch-size 64] [--forwards 8] [--repeats 2]

Prints per setting the median seconds a batch and the peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .common import REPO, median

SETTINGS = ("glibc", "settled", "kept")

CHILD = r"""
import contextlib, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from benchmarks.common import build_model
from sketchmine.mining import allocator
setting, model_name, batch, forwards = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if setting == "settled":
    assert allocator.settle()
model = build_model(model_name, 0).eval()
x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
times = []
with torch.inference_mode(), (allocator.kept_freed_memory() if setting == "kept" else contextlib.nullcontext()):
    model(x)
    for _ in range(forwards):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def one(setting: str, model: str, batch: int, forwards: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), setting, model, str(batch), str(forwards)],
                          capture_output=True, text=True, check=True, env={**os.environ, "SKETCHMINE_MALLOC": ""})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="alexnet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--forwards", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out: dict = {}
    for model in args.models.split(","):
        runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for r in range(args.repeats):
            for s in SETTINGS[r % 3:] + SETTINGS[:r % 3]:
                runs[s].append(one(s, model, args.batch_size, args.forwards))
        out[model] = {s: {"median_s": median([median(x["times"]) for x in rs]),
                          "per_repeat_s": [round(median(x["times"]), 4) for x in rs],
                          "peak_rss_mib": max(x["peak_rss_mib"] for x in rs)} for s, rs in runs.items()}
        kept = out[model]["kept"]["median_s"]
        for s in SETTINGS:
            o = out[model][s]
            print(f"{model:8s} {s:8s} {o['median_s']:.3f} s a batch of {args.batch_size} (repeats {o['per_repeat_s']}), "
                  f"peak RSS {o['peak_rss_mib']:.0f} MiB, {o['median_s'] / kept:.2f}x kept")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
