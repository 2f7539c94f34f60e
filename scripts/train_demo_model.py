#!/usr/bin/env python
"""Train the bundled demo models: SketchNet (and friends) on the Animal-Shape train split.

Run by a maintainer after ``scripts/prepare_data.py``:
``python scripts/train_demo_model.py [--arch sketchnet|resnet|cnn_gru]``.  CPU only,
fully seeded, a few minutes on two cores.  Writes ``data/<stem>.pt`` (state_dict) and
``data/<stem>.json`` (preprocessing + evaluation metadata that
``sketchmine.model.zoo.load_embedded`` returns alongside the model); stems:
sketchnet -> sketchnet_animal ("demo"), resnet -> sketchresnet_animal ("demo-resnet"),
cnn_gru -> sketchgru_animal ("demo-gru"; trained on progressive drawings, see
``sketchmine.data.sequences``, with the loss on every step's prediction).
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
from sketchmine.data.sequences import DEFAULT_STEPS, TRANSFORM, progressive_batch  # noqa: E402
from sketchmine.model.zoo import EMBEDDED, SketchGRU, SketchNet, SketchResNet  # noqa: E402

DATA = REPO / "data"
SHIFT = 2  # max random translation in pixels (augmentation)
ARCHS = {"sketchnet": ("demo", SketchNet), "resnet": ("demo-resnet", SketchResNet),
         "cnn_gru": ("demo-gru", SketchGRU)}


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
    n, c, h, w = x.shape  # c > 1: the frames of one sequence, shifted and flipped together
    pad = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=fill)
    dy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
    out = pad[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


@torch.no_grad()
def predict_steps(model: SketchGRU, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """(N, T) predicted class after every step of the sequences."""
    model.eval()
    return torch.cat([model.step_logits(x[i:i + batch]).argmax(2) for i in range(0, len(x), batch)])


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the final prediction; for the CNN+GRU, of the prediction after
    every step (so it learns to recognise partial drawings too)."""
    if isinstance(model, SketchGRU):
        logits = model.step_logits(x)
        return F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(x.shape[1]))
    return F.cross_entropy(model(x), y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sketchnet")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="cnn_gru: drawing steps per sequence")
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
    if args.arch == "cnn_gru":  # (N, T, 1, 28, 28): each frame normalised like an image
        scaled = progressive_batch(images, args.steps).astype(np.float64) / 255.0
        x = torch.from_numpy(((scaled - mean) / std).astype(np.float32)).unsqueeze(2)
    else:
        x = torch.from_numpy(((scaled - mean) / std).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(labels)
    x_tr, y_tr, x_te, y_te = x[train], y[train], x[test], y[test]
    background = -mean / std  # a black (0) pixel after normalisation
    print(f"train {len(x_tr)}  test {len(x_te)}  mean {mean:.6f}  std {std:.6f}")

    spec, arch = ARCHS[args.arch]
    model = arch(num_classes=len(class_names), in_channels=1)
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
            xb = x_tr[idx]
            xb = augment(xb.flatten(1, 2), gen, background).view_as(xb) if xb.ndim == 5 else \
                augment(xb, gen, background)
            loss = loss_of(model, xb, y_tr[idx])
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
    stem = EMBEDDED[spec][1]
    pt = args.out_dir / f"{stem}.pt"
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, pt)
    meta = {
        "architecture": type(model).__name__,
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
    if isinstance(model, SketchGRU):
        steps_acc = (predict_steps(model, x_te) == y_te[:, None]).float().mean(0)
        meta["input_shape"] = [args.steps, 1, 28, 28]
        meta["sequence"] = {"transform": TRANSFORM, "steps": args.steps,
                            "loss": "cross-entropy of every step's prediction"}
        meta["test_accuracy_per_step"] = [round(float(a), 4) for a in steps_acc]
    if spec != "demo":
        meta["model_spec"] = spec
        argv = [a for i, a in enumerate(sys.argv[1:]) if "--out-dir" not in (a, sys.argv[i])]  # i: the previous one
        meta["command"] = " ".join(["python scripts/train_demo_model.py", *argv])
    (args.out_dir / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"test accuracy {test_acc:.4f}  training {train_seconds:.0f}s")
    print(json.dumps(per_class, indent=2))
    print(f"wrote {pt} ({pt.stat().st_size} bytes) sha256 {meta['weights_sha256']}")


if __name__ == "__main__":
    main()
