"""What the per-unit distribution statistics cost per image as a function of how many images'
maxima they take at a time (stats/held.py holds up to 512): histogram, quantile sketch, quantile
examples and moments over AlexNet's tapped widths (10,344 units), fed the same maxima in blocks of
64 (one batch, the update before held blocks) to 1,024 images, in one process.

    python -m benchmarks.held_maxima [--images 4096] [--blocks 64,256,512,1024] [--transposed]

The maxima are random (a unit-dependent scale, rectified: half are 0, as after a ReLU), so the
grids and sketch tops settle as on real data; the point is the per-image cost of touching each
unit's state, not the values.
"""
from __future__ import annotations

import argparse
import time

import torch

WIDTHS = {"features.0": 64, "features.3": 192, "features.6": 384, "features.8": 256, "features.10": 256,
          "classifier.1": 4096, "classifier.4": 4096, "classifier.6": 1000}


def per_64_images(cls, data: dict[str, torch.Tensor], ids: torch.Tensor, block: int, transposed: bool) -> float:
    """ms per 64 images of `cls.add` fed `data` in blocks of `block` images."""
    from sketchmine.stats.examples import QuantileExamples

    acc = cls(WIDTHS)
    n = len(ids)
    t0 = time.perf_counter()
    for s in range(0, n, block):
        for name in WIDTHS:
            m = data[name][s:s + block]
            if transposed:  # unit-major storage, the same (rows, units) view
                m = m.t().contiguous().t()
            if cls is QuantileExamples:
                acc.add(name, m, ids[s:s + block])
            else:
                acc.add(name, m)
    return 1000 * (time.perf_counter() - t0) / (n / 64)


def main() -> None:
    from sketchmine.stats.examples import QuantileExamples
    from sketchmine.stats.histogram import RunningHistogram
    from sketchmine.stats.moments import RunningMoments
    from sketchmine.stats.sketch import QuantileSketch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--blocks", default="64,256,512,1024")
    p.add_argument("--transposed", action="store_true", help="also feed unit-major blocks")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    data = {n: (torch.randn(args.images, c, generator=g) * torch.rand(c, generator=g) * 3).relu_()
            for n, c in WIDTHS.items()}
    ids = torch.arange(args.images)
    classes = (RunningHistogram, QuantileSketch, QuantileExamples, RunningMoments)
    print(f"ms per 64 images, {args.images} images, {sum(WIDTHS.values())} units, {torch.get_num_threads()} threads")
    print(f"{'block':>6} {'layout':>10} " + " ".join(f"{c.__name__:>17}" for c in classes))
    for layout in (["rows", "unit-major"] if args.transposed else ["rows"]):
        for block in (int(b) for b in args.blocks.split(",")):
            times = [per_64_images(c, data, ids, block, layout != "rows") for c in classes]
            print(f"{block:>6} {layout:>10} " + " ".join(f"{t:17.2f}" for t in times))


if __name__ == "__main__":
    main()
