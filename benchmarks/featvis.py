"""Feature visualisation benchmark (issue 18): units per second batched vs one unit at a time
(same steps, same code), against torch-lucent 0.1.8 one objective at a time (same steps and
resolution; skipped, and said so, when it does not import), the optimised images against the
run's top-1 images per layer, and the regularisers' figure (docs/featvis.png).

    python3 -m benchmarks.featvis [--steps 16] [--alexnet-units 32] [--ratio-steps 256]
                                  [--ratio-units 16] [--ratio-spread] [--ratio-models demo demo-resnet]
                                  [--skip-lucent] [--threads 2] [--parts ceiling speed ratio figure]

Writes benchmarks/results_featvis.json. Every number is measured in this process, side by side.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import REPO, cpu_model

LUCENT_VERSION = "0.1.8"


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def speed_case(name: str, model: Any, layer: str, units: list[int], size: int, steps: int,
               lucent: bool) -> dict[str, Any]:
    """units/s of one batched call, of one call per unit, and of lucent per unit."""
    from sketchmine.passes.featvis import feature_visualization

    feature_visualization(model, layer, units[:1], steps=1, size=size)  # warm-up (allocations, lazy imports)
    batched, t_b = _timed(lambda: feature_visualization(model, layer, units, steps=steps, size=size))
    singles, t_s = _timed(lambda: [feature_visualization(model, layer, [u], steps=steps, size=size) for u in units])
    same = max(float((torch.cat([s.images for s in singles]) - batched.images).abs().max()), 0.0)
    row: dict[str, Any] = {"case": name, "layer": layer, "units": len(units), "size": size, "steps": steps,
                           "batched_s": round(t_b, 3), "one_at_a_time_s": round(t_s, 3),
                           "batched_units_per_s": round(len(units) / t_b, 3),
                           "one_at_a_time_units_per_s": round(len(units) / t_s, 3),
                           "speedup": round(t_s / t_b, 2), "max_abs_diff_batched_vs_single": same}
    if lucent:
        row.update(lucent_case(model, layer, units, size, steps))
    return row


def ceiling_case(name: str, model: Any, layer: str, units: int, size: int, repeats: int) -> dict[str, Any]:
    """The bound on the batched speed-up: one step's forward to the layer and backward to the
    input (featvis.LayerReader and its objective, nothing else) for `units` images in one batch
    against `units` batch-1 calls, interleaved, `repeats` times (median and best). Whatever
    else a step does (parameterisation, transforms, optimiser) is elementwise and batches at
    least as well; on a CPU whose GEMMs one image already fills, this ratio is the ceiling."""
    from sketchmine.model.models import load_model, preprocessing_for
    from sketchmine.passes.featvis import LayerReader

    loaded = load_model(model) if not hasattr(model, "module") else model
    net = loaded.module.eval()
    reader = LayerReader(net, layer)
    channels = preprocessing_for(loaded).channels
    x = torch.rand((units, channels, size, size), generator=torch.Generator().manual_seed(0))
    idx = torch.arange(units)

    def step(lo: int, hi: int) -> torch.Tensor:
        p = x[lo:hi].clone().requires_grad_(True)
        return torch.autograd.grad(reader.objective(reader(p), idx[lo:hi]).sum(), p)[0]

    step(0, units)
    step(0, 1)
    batched, single = [], []
    for _ in range(repeats):
        batched.append(_timed(lambda: step(0, units))[1])
        single.append(_timed(lambda: [step(u, u + 1) for u in range(units)])[1])
    med = float(np.median(single) / np.median(batched))
    return {"case": name, "layer": layer, "units": units, "size": size, "repeats": repeats,
            "batched_ms_per_unit": round(1000 * float(np.median(batched)) / units, 2),
            "one_at_a_time_ms_per_unit": round(1000 * float(np.median(single)) / units, 2),
            "ceiling_median": round(med, 2), "ceiling_best": round(float(min(single) / min(batched)), 2)}


def lucent_case(model: Any, layer: str, units: list[int], size: int, steps: int) -> dict[str, Any]:
    """torch-lucent's render_vis per unit (it optimises one objective at a time): its defaults
    (fft + decorrelation for colour, standard_transforms, Adam 0.05, channel objective) at the
    same size and steps, the model's own normalisation as the last transform."""
    try:
        import kornia  # lucent 0.1.8 calls kornia.get_rotation_matrix2d, which kornia >= 0.6 moved

        if not hasattr(kornia, "get_rotation_matrix2d"):
            kornia.get_rotation_matrix2d = kornia.geometry.transform.get_rotation_matrix2d
            kornia.warp_affine = kornia.geometry.transform.warp_affine
        from lucent.optvis import param, render
    except Exception as exc:  # not installed, or does not import with this torch
        return {"lucent": f"skipped: torch-lucent {LUCENT_VERSION} does not import ({type(exc).__name__}: {exc})"}
    from sketchmine.model.models import load_model, preprocessing_for

    loaded = load_model(model) if not hasattr(model, "module") else model
    pre = preprocessing_for(loaded)
    net = loaded.module.eval()
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    transforms = [*__import__("lucent.optvis.transform", fromlist=["x"]).standard_transforms,
                  lambda x: (x - mean) / std]
    grey = pre.channels == 1
    name = layer.replace(".", "_")

    def one(u: int) -> Any:
        def param_f() -> Any:
            return param.image(size, channels=pre.channels, decorrelate=not grey)
        return render.render_vis(net, f"{name}:{u}", param_f, transforms=transforms, thresholds=(steps,),
                          preprocess=False, progress=False, show_image=False, fixed_image_size=size)

    one(units[0])  # warm-up
    _, t = _timed(lambda: [one(u) for u in units])
    return {"lucent": f"torch-lucent {LUCENT_VERSION}", "lucent_s": round(t, 3),
            "lucent_units_per_s": round(len(units) / t, 3)}


def ratio_rows(model_spec: str, steps: int, per_layer: int, method: str = "fourier",
               regularizers: str | dict[str, Any] = "default", spread: bool = False,
               layers: list[str] | None = None) -> list[dict[str, Any]]:
    """Per layer of a run mined on the embedded test split: the share of units whose spatial
    maximum at the optimised image reaches the run's top-1 value, and the median and least
    ratio over the units whose top-1 value is positive. `per_layer` units: the first ones, or with
    `spread` evenly spaced over the layer (a sample not tied to the first channels). `layers`:
    the layers mined and visualised (default: the miner's)."""
    import tempfile

    import sketchmine
    from sketchmine.passes.featvis import feature_visualization

    loaded = sketchmine.load_model(model_spec)
    ds = sketchmine.animal_shape("test", sketchmine.preprocessing_for(loaded))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = sketchmine.mine(model_spec, ds, k=1, out=Path(tmp) / "run.zarr", layers=layers)
        for layer in run.layers:
            top1 = run.topk(layer)[0][:, 0]
            if per_layer <= 0 or per_layer >= len(top1):
                units = list(range(len(top1)))
            elif spread:
                units = sorted({int(u) for u in np.linspace(0, len(top1) - 1, per_layer).round()})
            else:
                units = list(range(per_layer))
            r, t = _timed(lambda: feature_visualization(loaded, layer, units, steps=steps, method=method,
                                                        regularizers=regularizers))
            ratio = r.peak / np.where(top1[units] > 0, top1[units], np.nan)  # a top-1 <= 0: no ratio, only >=
            rows.append({"model": model_spec, "layer": layer, "units": len(units), "of_units": len(top1),
                         "no_gradient": int(r.no_gradient.sum()),
                         "sample": "spread" if spread and len(units) < len(top1) else "first",
                         "steps": steps, "method": method,
                         "regularizers": regularizers, "share_ge_1": round(float((r.peak >= top1[units]).mean()), 3),
                         "units_ge_1": int((r.peak >= top1[units]).sum()),
                         "min_ratio": round(float(np.nanmin(ratio)), 3),
                         "median_ratio": round(float(np.nanmedian(ratio)), 3), "seconds": round(t, 1)})
            print(rows[-1], flush=True)
    return rows


def figure(path: Path, steps: int) -> None:
    """Unregularised vs each family, side by side, for a few SketchNet units (docs/featvis.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sketchmine.passes.featvis import feature_visualization

    picks = [("features.6", [0, 1, 2]), ("classifier.6", [0, 4, 9])]
    rows = [("unregularised (pixels)", "pixel", "none"), ("deconvnet era (pixel, DVT)", "pixel", "default"),
            ("lucent era (fourier)", "fourier", "default")]
    cols = [(layer, u) for layer, units in picks for u in units]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.3 * len(cols), 1.45 * len(rows)), dpi=80)
    for i, (label, method, reg) in enumerate(rows):
        images: list[np.ndarray] = []
        for layer, units in picks:
            images += list(feature_visualization("demo", layer, units, steps=steps, method=method,
                                                 regularizers=reg).pixels)
        for j, img in enumerate(images):
            ax = axes[i, j]
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{cols[j][0]}:{cols[j][1]}", fontsize=6)
            if j == 0:
                ax.set_ylabel(label, fontsize=5)
    fig.suptitle(f"SketchNet 'demo', {steps} steps", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=16, help="steps of the speed cases (same for every contender)")
    p.add_argument("--alexnet-units", type=int, default=32, help="AlexNet conv5 units timed (of 256)")
    p.add_argument("--ratio-steps", type=int, default=256)
    p.add_argument("--ratio-units", type=int, default=16, help="units per layer in the top-1 comparison (0: all)")
    p.add_argument("--ratio-spread", action="store_true",
                   help="take the top-1 comparison's units evenly spaced over each layer instead of the first ones")
    p.add_argument("--ratio-models", nargs="+", default=["demo", "demo-resnet"])
    p.add_argument("--ratio-regularizers", type=json.loads, default=None,
                   help='the ratio part\'s regularizers as JSON, e.g. \'{"transforms": false}\'')
    p.add_argument("--ratio-layers", nargs="+", default=None,
                   help="the layers the top-1 comparison mines and visualises (default: the miner's)")
    p.add_argument("--figure-steps", type=int, default=128)
    p.add_argument("--skip-lucent", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 on a loaded box: OpenMP barriers wait "
                   "on descheduled threads)")
    p.add_argument("--ceiling-repeats", type=int, default=5)
    p.add_argument("--parts", nargs="+", default=["ceiling", "speed", "ratio", "figure"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results_featvis.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if Path(a.out).is_file():
        out = {**json.loads(Path(a.out).read_text()), **out}
    if "ceiling" in a.parts:
        from sketchmine.model.models import build, load_model

        out["ceiling"] = [ceiling_case("SketchNet demo conv5, all units", load_model("demo"), "features.10", 64, 28,
                                       a.ceiling_repeats),
                          ceiling_case(f"AlexNet conv5 (random weights), {a.alexnet_units} units",
                                       load_model(build("alexnet", seed=0)), "features.10", a.alexnet_units, 224,
                                       a.ceiling_repeats)]
        print(out["ceiling"], flush=True)
    if "speed" in a.parts:
        from sketchmine.model.models import build, load_model

        out["speed"] = [speed_case("SketchNet demo conv5, all units", load_model("demo"), "features.10",
                                   list(range(64)), 28, a.steps, not a.skip_lucent)]
        print(out["speed"][-1], flush=True)
        alexnet = load_model(build("alexnet", seed=0))
        out["speed"].append(speed_case(f"AlexNet conv5 (random weights), first {a.alexnet_units} of 256 units",
                                       alexnet, "features.10", list(range(a.alexnet_units)), 224, a.steps,
                                       not a.skip_lucent))
        print(out["speed"][-1], flush=True)
    if "ratio" in a.parts:
        done = [r for r in out.get("ratio", []) if r["model"] not in a.ratio_models]
        out["ratio"] = done + [r for m in a.ratio_models for r in ratio_rows(m, a.ratio_steps, a.ratio_units,
                                                                                 regularizers=a.ratio_regularizers or "default",
                                                                                 spread=a.ratio_spread,
                                                                                 layers=a.ratio_layers)]
    if "figure" in a.parts:
        figure(REPO / "docs" / "featvis.png", a.figure_steps)
        out["figure"] = {"path": "docs/featvis.png", "steps": a.figure_steps}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
