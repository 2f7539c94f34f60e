"""`visualize` against the per-call way of attribution libraries: one unit at a time.

Both compute, for the first N units of every conv and linear layer of AlexNet (random
init, 224 px, top-9 over the first images of the embedded data), the receptive-field
patch and the deconvnet crop of each top-k entry.

    sketchmine   visualize(): blocks of units, one truncated forward + backward per batch of
                 entries; whole-image (FC) entries of one image share its forward
    loop         per unit (Captum/zennit style): ReLU backward hooks registered for the
                 call, a full forward of the unit's 9 images, one backward from the unit,
                 hooks removed, crops sliced per image

Per-unit cost is the same for every unit of a layer (each unit has k entries), so the
time over all units of the layer is the per-unit time × channels; the run prints both
the measured and the extrapolated figures. The loop's crops are checked against
sketchmine's (±1 grey level) so both compute the same thing.

    python -m benchmarks.visualize_vs_loop [--images 256] [--units 64] [--loop-units 8] [--device cuda]

On a GPU (`--device cuda`) both sides run there; a per-unit loop of 9 images is then mostly
launch latency, which batching removes, so the ratio differs from the CPU's.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .common import build_model, conv_linear_layers, machine_info, make_dataset, set_tf32


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer reads the time it took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loop_unit(model: nn.Module, layer: nn.Module, images: torch.Tensor, channel: int, yx: np.ndarray,
               boxes: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Deconvnet crops of one unit over its top-k images, the way a per-call library does it;
    also the seconds of its forward and of its backward."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_full_backward_hook(lambda m, gi, go: (go[0].clamp_min(0),)) for m in relus]
    captured: list[torch.Tensor] = []
    handles.append(layer.register_forward_hook(lambda m, i, o: captured.append(o)))
    try:
        x = images.clone().requires_grad_(True)
        t0 = time.perf_counter()
        model(x)
        out = captured[0]
        n = torch.arange(len(x), device=x.device)
        unit = out[n, channel, torch.as_tensor(yx[:, 0], device=x.device), torch.as_tensor(yx[:, 1], device=x.device)] \
            if out.ndim == 4 else out[:, channel]
        _sync(x.device)
        t1 = time.perf_counter()
        (grad,) = torch.autograd.grad(unit.sum(), x)
        grad = grad.cpu()
        t2 = time.perf_counter()
    finally:
        for h in handles:
            h.remove()
    crops = []
    h, w = images.shape[-2:]
    for j, (top, left, bottom, right) in enumerate(boxes):
        crop = torch.zeros(grad.shape[1], bottom - top + 1, right - left + 1)
        y0, y1, x0, x1 = max(top, 0), min(bottom + 1, h), max(left, 0), min(right + 1, w)
        crop[:, y0 - top:y1 - top, x0 - left:x1 - left] = grad[j, :, y0:y1, x0:x1]
        peak = crop.abs().max()
        crops.append((128 + 127 * crop / peak if peak > 0 else torch.full_like(crop, 128)).round().clamp(0, 255))
    return torch.stack(crops).to(torch.uint8).permute(0, 2, 3, 1).numpy(), t1 - t0, t2 - t1


def run(images: int, units: int, loop_units: int, batch_size: int, seed: int, device: str = "cpu") -> dict:
    import sketchmine
    from sketchmine.passes.visualize import visualize

    torch.manual_seed(seed)
    dev = torch.device(device)
    tf32 = set_tf32(False) if dev.type == "cuda" else None  # both sides in true float32
    model = build_model("alexnet", seed).to(dev)
    for m in model.modules():  # full backward hooks cannot follow in-place ReLUs
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ds = make_dataset(images)
    layers = conv_linear_layers(model)
    out = Path(tempfile.mkdtemp(prefix="sketchmine-vis-bench-")) / "run.zarr"
    t = time.perf_counter()
    run_ = sketchmine.mine(model, ds, layers=layers, k=9, out=out, batch_size=64, device=dev)
    t_mine = time.perf_counter() - t
    modules = dict(model.named_modules())
    rows = []
    for layer in layers:
        channels = run_.layer_shape(layer)[0]
        t = time.perf_counter()
        visualize(run_, [layer], model=model, data=ds, batch_size=batch_size, max_units=units, max_patch=10**6,
                  device=dev)
        _sync(dev)
        t_ours = time.perf_counter() - t
        g = run_.store.group[f"layers/{layer}"]
        done = int(g.attrs["visualized"]["units_done"])
        _, index, yx = run_.topk(layer)
        boxes = np.asarray(g["boxes"][:loop_units])
        ours = np.asarray(g["deconv"][:loop_units])
        t = time.perf_counter()
        worst, t_fwd, t_bwd = 0, 0.0, 0.0
        for c in range(min(loop_units, channels)):
            imgs = torch.stack([ds[int(i)][1] for i in index[c]]).to(dev)
            crops, tf, tb = _loop_unit(model, modules[layer], imgs, c, yx[c], boxes[c])
            t_fwd, t_bwd = t_fwd + tf, t_bwd + tb
            worst = max(worst, int(np.abs(crops.astype(int) - ours[c].astype(int)).max()))
        t_loop = time.perf_counter() - t
        n_loop = min(loop_units, channels)
        # whole-image units share each image's forward among its entries (Deconvolver.shared):
        # how many entries each distinct image has in the units measured (an upper bound of the
        # sharing; it grows with the units per image, i.e. fewer images or more units)
        shared = float((index[:done] >= 0).sum() / max(1, len(np.unique(index[:done][index[:done] >= 0]))))
        rows.append({"layer": layer, "channels": channels, "units_ours": done, "seconds_ours": t_ours,
                     "entries_per_image": shared,
                     "units_loop": n_loop, "seconds_loop": t_loop, "max_abs_diff": worst,
                     "per_unit_ours": t_ours / done, "per_unit_loop": t_loop / n_loop,
                     "per_unit_loop_forward": t_fwd / n_loop, "per_unit_loop_backward": t_bwd / n_loop})
        r = rows[-1]
        print(f"{layer:14s} C={channels:5d}  sketchmine {r['per_unit_ours'] * 1e3:8.1f} ms/unit ({done} units)  "
              f"loop {r['per_unit_loop'] * 1e3:8.1f} ms/unit ({n_loop} units)  "
              f"speed-up {r['per_unit_loop'] / r['per_unit_ours']:6.1f}x  max |diff| {worst}  "
              f"entries/image {shared:.1f}", flush=True)
    total_ours = sum(r["per_unit_ours"] * r["channels"] for r in rows)
    total_loop = sum(r["per_unit_loop"] * r["channels"] for r in rows)
    conv = [r for r in rows if len(run_.layer_shape(r["layer"])) == 3]
    conv_ours = sum(r["per_unit_ours"] * r["channels"] for r in conv)
    conv_loop = sum(r["per_unit_loop"] * r["channels"] for r in conv)
    # A unit without a grid (FC) sees the whole image: whatever the method, each of its k
    # entries needs its own backward through the whole conv stack (the deconvnet signal is
    # rectified at every ReLU, so entries cannot share one; sketchmine shares the forward
    # only). Even with conv units free and every forward shared, all units cannot take less
    # than the FC units' backward passes.
    fc_floor = sum(r["per_unit_loop_backward"] * r["channels"] for r in rows if r not in conv)
    summary = {"speedup_bound_all_units": total_loop / fc_floor if fc_floor else None,
               "all_units_seconds_ours": total_ours, "all_units_seconds_loop": total_loop,
               "speedup_all_units": total_loop / total_ours, "conv_units_seconds_ours": conv_ours,
               "conv_units_seconds_loop": conv_loop, "speedup_conv_units": conv_loop / conv_ours,
               "mine_seconds": t_mine}
    print(f"all {sum(r['channels'] for r in rows)} units (extrapolated per layer): sketchmine {total_ours:.0f} s, "
          f"loop {total_loop:.0f} s, speed-up {summary['speedup_all_units']:.1f}x; conv units only: "
          f"{summary['speedup_conv_units']:.1f}x (target >= 10x)")
    if fc_floor:
        print(f"bound for all units: {summary['speedup_bound_all_units']:.1f}x (loop total / the FC units' "
              f"backward passes alone, {fc_floor:.0f} s)")
    return {"machine": machine_info(), "device": str(dev), "tf32": tf32, "images": images, "units": units, "loop_units": loop_units,
            "batch_size": batch_size, "layers": rows, **summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="images mined (top-9 from these)")
    p.add_argument("--units", type=int, default=64, help="units per layer visualized by sketchmine")
    p.add_argument("--loop-units", type=int, default=8, help="units per layer computed by the loop")
    p.add_argument("--batch-size", type=int, default=64, help="(image, unit) pairs per sketchmine batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where both sides run")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    result = run(a.images, a.units, a.loop_units, a.batch_size, a.seed, a.device)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
