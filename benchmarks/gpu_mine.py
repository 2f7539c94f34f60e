"""Mining on a CUDA device: bare forward vs `sketchmine.mine`, side by side in one run.

    python -m benchmarks.gpu_mine [--images 2048] [--batch-size 128] [--workers 8]

Both read the same DataLoader over in-memory 224 px images (the embedded Animal-Shape
silhouettes, upscaled, 3 channels), so the ratio isolates the cost of the taps, the
compiled top-k kernels and the store. Also reports the forward over tensors already on
the device (the floor) and the top-k op alone on the layer outputs.

TF32 is off in every arm unless --tf32 (true float32; recorded in the JSON), and the JSON (--json)
is rewritten after each model, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

from .common import git_revision, set_tf32


class _Images(Dataset):
    """n real silhouettes as (3, 224, 224) float tensors, prepared once in memory."""

    def __init__(self, n: int) -> None:
        from sketchmine.data import animal_shape, preset

        src = animal_shape("test", preset("imagenet", 3, None))
        idx = np.arange(n) % len(src)
        x = torch.from_numpy(src.images[idx]).float().div_(255)[:, None]
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear").expand(-1, 3, -1, -1)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.x = ((x - mean) / std).contiguous()
        self.y = torch.from_numpy(src.labels()[idx])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def _bare(model, ds, batch_size, workers, device) -> float:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            out = model(x.to(device, non_blocking=True))
            out.float().cpu()  # the miner also keeps the logits
    torch.cuda.synchronize()
    return time.perf_counter() - t


def _mine(model, ds, layers, batch_size, workers, device) -> float:
    import sketchmine

    with tempfile.TemporaryDirectory() as tmp:
        torch.cuda.synchronize()
        t = time.perf_counter()
        sketchmine.mine(model, ds, layers=layers, out=Path(tmp) / "r.zarr", batch_size=batch_size,
                        device=device, num_workers=workers, preprocessing="auto")
        torch.cuda.synchronize()
        return time.perf_counter() - t


def _floor(model, ds, batch_size, device) -> float:
    xs = [ds.x[i:i + batch_size].to(device) for i in range(0, len(ds), batch_size)]
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.inference_mode():
        for x in xs:
            model(x)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="alexnet,vgg19", help="comma-separated, in this order")
    p.add_argument("--tf32", action="store_true", help="let convolutions and matmuls use TF32 (default: off)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device("cuda")
    tf32 = set_tf32(args.tf32)
    ds = _Images(args.images)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "git": git_revision(),
               "tf32": tf32, "images": args.images, "batch_size": args.batch_size, "workers": args.workers,
               "complete": False, "models": {}}
    print(f"git {results['git']}; TF32 {tf32}", flush=True)

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval().to(device)
        layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        _bare(model, torch.utils.data.Subset(ds, range(args.batch_size * 2)), args.batch_size, 0, device)  # warm-up
        bare, mined, floor = [], [], []
        for _ in range(args.repeats):  # interleaved
            bare.append(_bare(model, ds, args.batch_size, args.workers, device))
            mined.append(_mine(model, ds, layers, args.batch_size, args.workers, device))
            floor.append(_floor(model, ds, args.batch_size, device))
        r = {"bare_s": float(np.median(bare)), "mine_s": float(np.median(mined)), "floor_s": float(np.median(floor)),
             "ratio_mine_over_bare": float(np.median(mined) / np.median(bare)),
             "mine_images_per_s": args.images / float(np.median(mined)), "layers": len(layers)}
        results["models"][name] = r
        print(f"{name:8s} bare {r['bare_s']:.3f}s  mine {r['mine_s']:.3f}s  ratio {r['ratio_mine_over_bare']:.3f}  "
              f"floor(on-device forward) {r['floor_s']:.3f}s  mine {r['mine_images_per_s']:.0f} img/s", flush=True)
        save()
    results["complete"] = True
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
