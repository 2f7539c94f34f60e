"""Where `mine`'s time goes apart from the forward (issue 20): its setup and final write (fixed per
call, so they weigh most on the few hundred images users often mine) and each accumulator's own
time per call, from timers wrapped around the accumulators' verbs of one real `mine` call.

    python -m benchmarks.fixed_costs [--model alexnet] [--images 768] [--repeats 3] [--no-distributions]

The timers cost a few microseconds a call; the phases come from PhaseClock (common.py).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from .common import PhaseClock, build_model, conv_linear_layers, make_dataset, median


def timed_accumulators(times: dict[str, float]):
    """A replacement for accumulators.build whose accumulators add each verb's time to `times`."""
    from sketchmine.stats import accumulators

    build = accumulators.build

    def timed(setup, registry=None):
        made = build(setup, registry)
        for acc in made:
            for verb in ("start_batch", "update", "end_batch", "state", "results"):
                fn = getattr(acc, verb)

                def wrapped(*args, _fn=fn, _key=f"{acc.key}.{verb}", **kwargs):
                    t0 = time.perf_counter()
                    try:
                        return _fn(*args, **kwargs)
                    finally:
                        times[_key] = times.get(_key, 0.0) + time.perf_counter() - t0

                setattr(acc, verb, wrapped)
        return made

    return build, timed


def one_call(model, ds, layers: list[str], distributions: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(phases, accumulator seconds by 'key.verb') of one `mine` call into a temporary folder."""
    import sketchmine
    from sketchmine.stats import accumulators

    times: dict[str, float] = {}
    original, timed = timed_accumulators(times)
    tmp = Path(tempfile.mkdtemp(prefix="sketchmine-fixed-"))
    clock = PhaseClock()
    accumulators.build = timed
    try:
        t0 = time.perf_counter()
        sketchmine.mine(model, ds, layers=layers, out=tmp / "run.zarr", batch_size=64, device="cpu", num_workers=0,
                        progress=clock, distributions=distributions, preprocess="cpu")
        return clock.phases(t0, time.perf_counter()), times
    finally:
        accumulators.build = original
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--images", type=int, default=768)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-distributions", action="store_true")
    args = p.parse_args(argv)
    model = build_model(args.model, 0)
    layers = conv_linear_layers(model)
    ds = make_dataset(args.images)
    one_call(model, make_dataset(64), layers, not args.no_distributions)  # warm-up: imports, allocations
    calls = [one_call(model, ds, layers, not args.no_distributions) for _ in range(args.repeats)]
    for phase in ("setup", "loop", "finish", "total"):
        print(f"{phase:8s} median {median([c[0][phase] for c in calls]):7.3f} s  "
              f"min {min(c[0][phase] for c in calls):7.3f} s")
    keys = sorted({k for _, t in calls for k in t}, key=lambda k: -median([t.get(k, 0.0) for _, t in calls]))
    for key in keys:
        m = median([t.get(key, 0.0) for _, t in calls])
        if m >= 0.001:
            print(f"  {key:22s} {m:7.3f} s per call ({m / max(args.images // 64, 1) * 1000:6.1f} ms per batch of 64)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
