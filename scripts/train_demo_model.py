#!/usr/bin/env python
"""Train the bundled demo model: SketchNet on the Animal-Shape train split.

Run by a maintainer after ``scripts/prepare_data.py``:
``python scripts/train_demo_model.py``.  CPU only, fully seeded, a few
minutes on two cores.  Writes ``data/sketchnet_animal.pt`` (state_dict) and
``data/sketchnet_animal.json`` (preprocessing + evaluation metadata that
``sketchmine.zoo.load_demo_model`` returns alongside the model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
from sketchmine.zoo import DEMO_METADATA, DEMO_WEIGHTS, SketchNet  # noqa: E402

DATA = REPO / "data"
SHIFT = 2  # max random translation in pixels (augmentation)


def seed_everything(seed: int, threads: int) -> None:
    """Seed every RNG; fix the thread count since it changes float summation order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def augment(x: torch.Tensor, gen: torch.Generator, fill: float) -> torch.Tensor:
    """Random shift by up to SHIFT px (background fill) and horizontal flip.

    A silhouette keeps its class under both, which helps a small training
    set generalise.  All randomness comes from ``gen`` so runs repeat.
    """
    n, _, h, w = x.shape
    pad = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=fill)
    dy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    out = pad[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=DATA)
    args = ap.parse_args()
    seed_everything(args.seed, args.threads)

    with np.load(DATA / "animal_shape.npz", allow_pickle=False) as d:
        images, labels = d["images"], d["labels"]
        class_names = [str(c) for c in d["class_names"]]
        split = d["split"]
    train, test = split == 0, split == 1
    scaled = images.astype(np.float64) / 255.0
    mean = float(scaled[train].mean())
    std = float(scaled[train].std())
    x = torch.from_numpy(((scaled - mean) / std).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(labels)
    x_tr, y_tr, x_te, y_te = x[train], y[train], x[test], y[test]
    background = -mean / std  # a black (0) pixel after normalisation
    print(f"train {len(x_tr)}  test {len(x_te)}  mean {mean:.6f}  std {std:.6f}")

    model = SketchNet(num_classes=len(class_names), in_channels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(x_tr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(augment(x_tr[idx], gen, background)), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = float((predict(model, x_te) == y_te).float().mean())
        print(f"epoch {epoch + 1:2d}  loss {total / len(x_tr):.4f}  test acc {acc:.4f}"
              f"  [{time.perf_counter() - t0:.0f}s]", flush=True)
    train_seconds = time.perf_counter() - t0

    pred = predict(model, x_te)
    test_acc = int((pred == y_te).sum()) / len(y_te)
    per_class = {name: int((pred[y_te == c] == c).sum()) / int((y_te == c).sum())
                 for c, name in enumerate(class_names)}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    pt = args.out_dir / DEMO_WEIGHTS
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, pt)
    meta = {
        "architecture": "SketchNet",
        "num_classes": len(class_names),
        "in_channels": 1,
        "input_size": [28, 28],
        "class_names": class_names,
        "preprocessing": {"scale": 1 / 255, "mean": [mean], "std": [std]},
        "preprocessing_note": "x = (pixel * scale - mean) / std; mean/std of the train split",
        "dataset": "animal_shape.npz (Animal-Shape, animal-mnist==0.4)",
        "train_count": int(train.sum()),
        "test_count": int(test.sum()),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "num_threads": args.threads,
        "augmentation": f"random shift <= {SHIFT} px, random horizontal flip",
        "optimizer": {"name": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
                      "betas": [0.9, 0.999], "schedule": "OneCycleLR"},
        "test_accuracy": test_acc,
        "per_class_test_accuracy": per_class,
        "torch_version": torch.__version__,
        "weights_sha256": hashlib.sha256(pt.read_bytes()).hexdigest(),
    }
    (args.out_dir / DEMO_METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"test accuracy {test_acc:.4f}  training {train_seconds:.0f}s")
    print(json.dumps(per_class, indent=2))
    print(f"wrote {pt} ({pt.stat().st_size} bytes) sha256 {meta['weights_sha256']}")


if __name__ == "__main__":
    main()
