"""The live probe's latency in headless Chromium: median time from the end of a stroke
(pointerup) to the updated predictions on the page, for the embedded SketchNet ("demo",
28×28), the embedded ResNet ("demo-resnet"), the embedded CNN + GRU ("demo-gru", 8 progressive
frames: the page makes the frames and the graph runs the model on frames 1..t for the strip)
and torchvision's AlexNet at 224 px (random weights, 1000 classes); and the bytes the probe
adds to a report (no size cap here: AlexNet's graph is over the default 100 MB).

    python3 -m benchmarks.probe_latency [--strokes 30] [--models sketchnet,resnet,gru,alexnet] [--json out.json]

Needs Debian's /usr/bin/chromium, playwright and onnxruntime-web vendored
(scripts/vendor_ort_web.sh). Each stroke is a Playwright mouse drag of a few moves; the
page records, per stroke, performance.now() after the predictions and unit cards are in the
DOM minus the pointerup event's timestamp (waiting for an inference still running counts).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import build_model, machine_info, make_dataset

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def probe_folder(run: Any, out: Path, model: Any = None) -> tuple[Path, dict[str, int]]:
    from sketchmine.passes.probe import build_probe
    from sketchmine.present.report_probe import write_probe_folder

    files = build_probe(run, model=model, max_mb=None)
    page = write_probe_folder(out, files)
    # every file the probe page loads: its own folder, the page, its scripts and style under assets/
    scripts = [p for p in out.joinpath("assets").iterdir() if p.suffix in (".js", ".css")]
    sizes = {p.name: p.stat().st_size for p in [*out.joinpath("probe").iterdir(), page, *scripts]}
    return page, sizes


def size_parts(sizes: dict[str, int]) -> dict[str, int]:
    """The probe's bytes by part: the runtime (onnxruntime-web: its script, loader, WebAssembly in
    base64), the model (the graph in base64, model.js with its metadata and dataset images), the page."""
    runtime = sum(v for k, v in sizes.items() if k.startswith(("ort", "wasm-")))
    model = sum(v for k, v in sizes.items() if k.startswith("graph-") or k == "model.js")
    return {"runtime": runtime, "model": model, "page": sum(sizes.values()) - runtime - model}


def measure(page_path: Path, strokes: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        page.goto(page_path.as_uri(), timeout=600_000)
        page.wait_for_function("() => document.body.getAttribute('data-ready') === '1'", timeout=600_000)
        load_s = time.perf_counter() - t0
        box = page.locator("#pad").bounding_box()
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        for i in range(strokes + 2):  # two warm-up strokes
            a, b = 0.15 + 0.6 * ((i * 37) % 10) / 10, 0.15 + 0.6 * ((i * 53) % 10) / 10
            page.mouse.move(x0 + a * w, y0 + b * h)
            page.mouse.down()
            page.mouse.move(x0 + (a + 0.2) * w, y0 + (b + 0.1) * h, steps=3)
            page.mouse.move(x0 + (a + 0.1) * w, y0 + (b + 0.25) * h, steps=3)
            page.mouse.up()
            page.wait_for_function(f"() => window.sketchmine.strokeLatencies.length >= {i + 1}", timeout=120_000)
        lat = page.evaluate("window.sketchmine.strokeLatencies")[2:]
        phases = page.evaluate("window.sketchmine.loadTimes")
        once = page.evaluate("async () => { const p = window.sketchmine.pixels(); const t = performance.now(); "
                             "await window.sketchmine.probe(p); return performance.now() - t; }")
        browser.close()
    return {"strokes": len(lat), "median_ms": statistics.median(lat), "min_ms": min(lat), "max_ms": max(lat),
            "probe_call_ms": once, "page_load_s": load_s,
            "load_ms": {k: round(v) for k, v in phases.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.probe_latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strokes", type=int, default=30)
    ap.add_argument("--models", default="sketchnet,resnet,gru,alexnet",
                    help="comma-separated: sketchnet, resnet, gru, alexnet")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import sketchmine
    from sketchmine.data import ArrayDataset, animal_shape
    from sketchmine.data.sequences import SequenceDataset, recorded_steps
    from sketchmine.model.models import load_model, preprocessing_for

    results: dict[str, Any] = {"machine": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        models = args.models.split(",")
        for key, spec in (("sketchnet", "demo"), ("resnet", "demo-resnet"), ("gru", "demo-gru")):
            if key not in models:
                continue
            loaded = load_model(spec)
            ds = animal_shape("test", preprocessing_for(loaded))
            ds = ArrayDataset(ds.images[:200], ds.labels()[:200], ds.class_names, ds.preprocessing,
                              {**ds.describe(), "subset": "0:200"})  # the run only tells the probe its model
            data = SequenceDataset(ds, recorded_steps(loaded.sequence, spec)) if loaded.sequence else ds
            run = sketchmine.mine(spec, data, out=base / f"{spec}.zarr", batch_size=200)
            page, sizes = probe_folder(run, base / f"{spec}-probe")
            results[key] = {**measure(page, args.strokes), "bytes": sizes, "total_bytes": sum(sizes.values()),
                            "parts": size_parts(sizes)}
            print(f"{spec} 28 px:", json.dumps(results[key]))
        if "alexnet" in models:
            net = build_model("alexnet")
            run = sketchmine.mine(net, make_dataset(8), out=base / "alexnet.zarr", batch_size=8)
            page, sizes = probe_folder(run, base / "alexnet-probe", model=net)
            results["alexnet"] = {**measure(page, max(5, args.strokes // 3)), "bytes": sizes,
                                  "total_bytes": sum(sizes.values()), "parts": size_parts(sizes)}
            print("AlexNet 224 px:", json.dumps(results["alexnet"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
