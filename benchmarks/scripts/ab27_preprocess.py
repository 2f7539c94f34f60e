"""Session 27's before/after of the batched preprocessing (RESULTS.md, session 27, "Before and after,
back to back"; benchmarks/results_session27_preprocess_ab.json).

pure vs `mine --preprocess device` with session 26's preprocessing (antialiased resize, torch's
two-pass normalisation) patched back in ("before") vs the code's own ("after"), rotating, the
model's leaf modules timed. Recovered in session 29 from that session's scratch copy (it had not
been committed); run then at 80f805c, from the repository's root, as the equivalent of

    python -m benchmarks.scripts.ab27_preprocess 4 benchmarks/results_session27_preprocess_ab.json

Changed since, only to run against today's benchmarks: `stacked` yields its batches (listed here),
`dataset(64, ...)` for the warm-up now spreads its picks over the classes, the JSON's "git" is
looked up (it was written in by hand: 80f805c), and the layout is ruff's. "before" patches `Preprocessing.resize` and `.normalise`, so it measures session 26's
preprocessing only as long as those two methods are what the device route calls.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from benchmarks.common import LayerClock, conv_linear_layers, git_revision, median
from benchmarks.preprocess import dataset, mine, pure, stacked
from sketchmine.data import preprocess as P

new_resize, new_norm = P.Preprocessing.resize, P.Preprocessing.normalise


def old_resize(self, x):
    if self.size is None or tuple(x.shape[-2:]) == tuple(self.size):
        return x
    h, w = self.size
    if w == 1 and h > 1:
        t = torch.nn.functional.interpolate(x.transpose(-1, -2), size=(1, h), mode="bilinear", antialias=True)
        return t.transpose(-1, -2).contiguous()
    return torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True)


def old_norm(self, x):
    if not self.mean:
        return x
    mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean).div_(std)


def use(old: bool) -> None:
    P.Preprocessing.resize, P.Preprocessing.normalise = (old_resize, old_norm) if old else (new_resize, new_norm)


def main() -> None:
    repeats, out_json = int(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    model = torchvision.models.get_model("alexnet", weights=None, num_classes=10).eval()
    layers = conv_linear_layers(model)
    tmp = Path(tempfile.mkdtemp())
    ds = dataset(2000, 224)
    batches = list(stacked(ds, 64))
    cpu = torch.device("cpu")
    for old in (True, False):
        use(old)
        mine(model, dataset(64, 224), layers, 64, "device", tmp / f"w{old}.zarr", 0, cpu)
    pure(model, batches[:1], cpu)
    order = ["pure", "before", "after"]
    runs: dict[str, list[dict]] = {m: [] for m in order}
    for r in range(repeats):
        for m in order[r % 3:] + order[:r % 3]:
            use(m == "before")
            with LayerClock(model) as lc:
                t0 = time.perf_counter()
                if m == "pure":
                    pure(model, batches, cpu)
                else:
                    mine(model, ds, layers, 64, "device", tmp / f"{m}{r}.zarr", 0, cpu)
                wall = time.perf_counter() - t0
            runs[m].append({"wall": wall, "layers": lc.seconds, "rest": wall - lc.seconds})
            print(r, m, f"{wall:.2f} layers {lc.seconds:.2f} rest {wall - lc.seconds:.3f}", flush=True)
    use(False)
    res: dict = {"git": git_revision(), "runs": runs}

    def w(k: str, key: str) -> float:
        return median([x[key] for x in runs[k]])

    for m in ("before", "after"):
        res[m] = {"median": w(m, "wall") / w("pure", "wall"),
                  "min": min(x["wall"] for x in runs[m]) / min(x["wall"] for x in runs["pure"]),
                  "accounted": (w("pure", "wall") + w(m, "rest") - w("pure", "rest")) / w("pure", "wall"),
                  "layers": w(m, "layers") / w("pure", "layers"), "rest_median": w(m, "rest")}
        print(m, {k: round(v, 4) for k, v in res[m].items()})
    print("after/before paired", [round(a["wall"] / b["wall"], 4) for a, b in zip(runs["after"], runs["before"])])
    out_json.write_text(json.dumps(res, indent=1))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
