"""CPU time of each mining accumulator per batch, on real activations (issue 16's profile).

AlexNet (random init, eval, 224 px, every conv + linear), the embedded images, batches of 64:
the activations of a few batches are computed once, then every accumulator of the registry
(distributions on) is fed them in order, and its process CPU time per batch is kept (minimum
over repeats). With --threads 1 this is the work itself; with 2 on a busy machine it also shows
what short parallel regions cost (threads spinning while the other waits to be scheduled).

    python -m benchmarks.accumulator_cost [--images 384] [--repeats 3] [--threads 1] [--torch-path]
        [--classes 1000]

--torch-path runs the distribution statistics' pure-torch references instead of the kernels.
--classes: the class statistics' class count, fed the images' real labels (1000: what mine keeps
for AlexNet's unnamed 1000-way head, as in the mine-vs-bare suite; 0 leaves them out).
"""
from __future__ import annotations

import argparse
import time

import torch

from .common import build_model, conv_linear_layers, make_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--torch-path", action="store_true")
    p.add_argument("--classes", type=int, default=1000)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sketchmine.stats import accumulators as acc
    from sketchmine.stats import ops

    if args.torch_path:
        ops.compiled_here = lambda t: False
    model = build_model("alexnet", 0)
    layers = conv_linear_layers(model)
    modules = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}
    for name in layers:
        modules[name].register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o.detach().contiguous()))
    ds = make_dataset(args.images)
    xs = torch.stack([ds[i][1] for i in range(len(ds))])
    labels = torch.tensor([ds[i][2] for i in range(len(ds))], dtype=torch.int64)
    batches, forward = [], []
    with torch.inference_mode():
        for s in range(0, len(ds), 64):
            outs.clear()
            t = time.process_time()
            model(xs[s:s + 64])
            forward.append(time.process_time() - t)
            batches.append((torch.arange(s, min(s + 64, len(ds))), dict(outs)))
    spec = tuple(acc.LayerSpec(n, batches[0][1][n].shape[1], tuple(batches[0][1][n].shape[2:])) for n in layers)
    setup = acc.Setup(spec, 9, torch.device("cpu"), num_classes=args.classes, distributions=True)
    best: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        made = acc.build(setup)
        took: dict[str, list[float]] = {a.key: [] for a in made}
        for index, acts in batches:
            batch = acc.Batch(index, labels[index], xs[index])
            for a in made:
                t = time.process_time()
                a.start_batch(batch)
                for name in layers:
                    a.update(name, acts[name], batch)
                a.end_batch(batch)
                took[a.key].append(time.process_time() - t)
        for key, v in took.items():
            best[key] = [min(x, y) for x, y in zip(best.get(key, v), v)]
    print(f"forward CPU s per batch of 64 ({args.threads} thread(s)): " + " ".join(f"{x:.2f}" for x in forward))
    for key, v in best.items():
        print(f"{key:10s} ms CPU per batch: " + " ".join(f"{x * 1000:7.1f}" for x in v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
