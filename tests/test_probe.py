"""The report's live probe in a real headless Chromium (Debian's /usr/bin/chromium, driven by
playwright): the model run by onnxruntime-web from file:// equals the torch model on the same
pixels, a drawing made with mouse events is predicted as Python predicts its exported pixels,
the page opens offline without console errors, and a model torch.onnx cannot export leaves a
report that says why."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.passes.probe import ORT_DIR, ORT_FILES, build_probe
from sketchmine.present.report import write_report
from sketchmine.present.report_data import PAGE_SIZE
from tests.helpers import per_class_subset

ROOT = Path(__file__).resolve().parents[1]


def vendored() -> None:
    """onnxruntime-web in the assets: scripts/vendor_ort_web.sh (idempotent) when it is missing."""
    import fcntl
    import tempfile

    if all((ORT_DIR / n).is_file() for n in ORT_FILES):
        return
    if not os.path.exists("/usr/bin/npm"):
        pytest.skip("onnxruntime-web is not vendored and npm is missing: run scripts/vendor_ort_web.sh")
    # xdist workers running two probe files would copy into the same folder at once
    lock = os.open(Path(tempfile.gettempdir()) / "sketchmine-vendor-ort.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((ORT_DIR / n).is_file() for n in ORT_FILES):
            subprocess.run([str(ROOT / "scripts" / "vendor_ort_web.sh")], check=True)
    finally:
        os.close(lock)


@pytest.fixture(scope="module")
def subset(demo_test_set):
    return per_class_subset(demo_test_set, 5, "0:50")


@pytest.fixture(scope="module")
def report(tmp_path_factory, subset) -> Path:
    """The demo model mined over 50 real test images (five layers), six units of classifier.1
    visualized (whole-image patches: the probe's dataset images), reported with the probe."""
    vendored()
    base = tmp_path_factory.mktemp("probe")
    run = sketchmine.mine("demo", subset, out=base / "run.zarr", batch_size=50,
                          layers=["features.0", "features.6", "classifier.1", "classifier.4", "classifier.6"])
    sketchmine.visualize(run, layers=["classifier.1"], data=subset, batch_size=64, max_units=6)
    return write_report(run, base / "report", probe=build_probe(run))


def open_page(browser, url: str):
    """A page with every non-file request aborted and recorded, and console errors collected."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def route(r):
        if r.request.url.startswith(("file:", "blob:", "data:")):
            r.continue_()
        else:
            problems.append(f"network request: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    return page, problems


def ready(page) -> None:
    page.wait_for_function("() => document.body.getAttribute('data-ready') === '1'", timeout=60_000)


def torch_reference(model: nn.Module, pixels: np.ndarray, mean: float, std: float, layers: list[str]):
    """Softmax and every layer's per-unit maximum, by plain torch hooks on the model itself."""
    got: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.detach().clone())) for n in layers]
    try:
        with torch.no_grad():
            x = (torch.from_numpy(pixels).float()[:, None] / 255 - mean) / std
            probs = torch.softmax(model.eval()(x), 1)
    finally:
        for h in hooks:
            h.remove()
    return probs.numpy(), {n: (t.flatten(2).amax(2) if t.ndim > 2 else t).numpy() for n, t in got.items()}


def test_probe_equals_torch_on_50_test_images(report, browser, subset, demo_model):
    page, problems = open_page(browser, (report.parent / "probe.html").as_uri())
    ready(page)
    meta = page.evaluate("window.sketchmine.meta.layers.map(l => l.name)")
    pixels = subset.images[:50]
    assert pixels.shape == (50, 28, 28) and pixels.std() > 10
    out = page.evaluate("async (a) => { const r = []; for (const p of a) r.push(await window.sketchmine.probe("
                        "new Uint8Array(p))); return r; }", [p.reshape(-1).tolist() for p in pixels])
    pre = subset.preprocessing
    probs, acts = torch_reference(demo_model.module, pixels, pre.mean[0], pre.std[0], meta)
    got = np.array([o["probs"] for o in out])
    assert got.shape == probs.shape and np.abs(got - probs).max() < 1e-4
    assert (got.argmax(1) == probs.argmax(1)).all()
    for name in meta:
        for i, o in enumerate(out):
            units = [u for u, _ in o["layers"][name]]
            values = np.array([v for _, v in o["layers"][name]])
            ref = acts[name][i]
            order = sorted(range(len(ref)), key=lambda u: (-ref[u], u))[:len(units)]
            tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(values, ref[units], atol=tol)  # the values of the units it names
            np.testing.assert_allclose(values, ref[order], atol=tol)  # ... are the top values
            close = np.abs(ref[units] - ref[order]) > tol
            assert units == order or not close.any(), (name, i, units, order)
    assert problems == []


def draw(page, strokes) -> None:
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        (x, y), rest = stroke[0], stroke[1:]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=4)
        page.mouse.up()


def settled(page) -> dict:
    """The prediction the page shows once it has caught up with the last stroke."""
    page.wait_for_function("() => { const s = window.sketchmine; const n = s.updates; return new Promise(r => "
                           "setTimeout(() => r(s.updates === n), 300)); }")
    return page.evaluate("async () => window.sketchmine.probe(window.sketchmine.pixels())")


def test_drawn_strokes_predicted_as_python_predicts_the_pixels(report, browser, subset, demo_model):
    page, problems = open_page(browser, (report.parent / "probe.html").as_uri())
    ready(page)
    assert page.inner_text("#preds") == "" and "Empty canvas" in page.inner_text("#hint")  # nothing drawn yet
    draw(page, [[(0.2, 0.3), (0.5, 0.2), (0.8, 0.35), (0.75, 0.7)], [(0.3, 0.5), (0.35, 0.85)], [(0.6, 0.8), (0.65, 0.9)]])
    r = settled(page)
    px = np.array(page.evaluate("Array.from(window.sketchmine.pixels())"), np.uint8).reshape(28, 28)
    assert 20 < (px > 127).sum() < 500  # the strokes, light on dark as the embedded set is drawn
    pre = subset.preprocessing
    probs, _ = torch_reference(demo_model.module, px[None], pre.mean[0], pre.std[0], [])
    assert np.abs(np.array(r["probs"]) - probs[0]).max() < 1e-4
    shown = page.inner_text("#preds").splitlines()[0].split("\t")[0]
    assert shown == subset.class_names[int(probs[0].argmax())]
    # the canvas → input resize against torch's antialiased bilinear on the canvas itself
    h, w = page.evaluate("window.sketchmine.canvasSize")
    canvas = torch.tensor(page.evaluate("window.sketchmine.canvasPixels()"), dtype=torch.float32).view(1, 1, h, w)
    ref = torch.nn.functional.interpolate(canvas / 255, size=(28, 28), mode="bilinear", antialias=True)[0, 0] * 255
    assert (h, w) == (280, 280) and np.abs(px - ref.numpy()).max() <= 0.5 + 1e-3  # the rounding to 0-255 only
    # undo and clear: back to the hint, no prediction
    page.click("#undo")
    page.click("#clear")
    page.wait_for_function("() => document.body.getAttribute('data-empty') === '1'")
    assert page.inner_text("#preds") == "" and "Empty canvas" in page.inner_text("#hint")
    # a dataset image (patches the run stores) is probed at its exact pixels
    page.click("#pick")
    page.click("canvas.thumb >> nth=3")
    r = settled(page)
    px = np.array(page.evaluate("Array.from(window.sketchmine.pixels())"), np.uint8).reshape(28, 28)
    assert any((px == im).all() for im in subset.images)
    probs, _ = torch_reference(demo_model.module, px[None], pre.mean[0], pre.std[0], [])
    assert np.abs(np.array(r["probs"]) - probs[0]).max() < 1e-4
    bad = page.evaluate("window.sketchmine.probe(new Uint8Array(5)).then(() => 'ok', e => String(e))")
    assert "28×28 = 784" in bad
    assert problems == []


def test_report_opens_offline_and_links_the_probe(report, browser):
    page, problems = open_page(browser, report.as_uri())
    page.wait_for_load_state("load")
    page.click("#probe-link")
    ready(page)
    link = page.locator(".probe-unit a").first
    assert link.count() == 0  # nothing drawn: no units yet
    draw(page, [[(0.3, 0.3), (0.7, 0.7)]])
    settled(page)
    href = page.locator(".probe-unit a").first.get_attribute("href")
    unit = int(href.rpartition("&unit=")[2])  # the unit's card, not the top of its page
    assert href == f"layers/00-features.0.html#page={unit // PAGE_SIZE + 1}&unit={unit}", href
    page.click(".probe-unit a >> nth=0")
    page.wait_for_selector(f"#unit-{unit}.card.target")
    assert problems == []


class FFTNet(nn.Module):
    """A classifier whose forward uses an FFT, which torch.onnx (opset 17) cannot export."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 15, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.fft.rfft2(self.conv(x)).abs().flatten(1))


def test_model_onnx_cannot_export_gives_a_report_that_says_why(tmp_path, subset, browser):
    vendored()
    torch.manual_seed(0)
    net = FFTNet()
    run = sketchmine.mine(net, subset, out=tmp_path / "fft.zarr", batch_size=50)
    with pytest.raises(sketchmine.SketchmineError, match="torch.onnx cannot export.*fft_rfft2") as exc:
        build_probe(run, model=net, size=(28, 28))
    index = write_report(run, tmp_path / "rep", probe=str(exc.value))
    assert not (tmp_path / "rep" / "probe.html").exists() and not (tmp_path / "rep" / "probe").exists()
    page, problems = open_page(browser, index.as_uri())
    assert "No live probe: torch.onnx cannot export" in page.inner_text("#no-probe")
    # the CLI's probe step on a run of an in-memory model: no probe, and the reason
    from sketchmine.cli.probe import report_probe

    assert "in-memory model" in report_probe(str(run.path))
    assert problems == []


def test_probe_cli_writes_a_probe_folder(tmp_path, report, browser):
    from sketchmine.cli.main import main

    run = report.parent.parent / "run.zarr"
    assert main(["probe", str(run), "--out", str(tmp_path / "p")]) == 0
    assert main(["probe", str(run), "--out", str(tmp_path / "p")]) == 0  # its own folder: rewritten
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "mine.txt").write_text("x")
    assert main(["probe", str(run), "--out", str(tmp_path / "q")]) == 3  # not ours: refused (input error)
    page, problems = open_page(browser, (tmp_path / "p" / "probe.html").as_uri())
    ready(page)
    assert page.evaluate("window.sketchmine.meta.size") == [28, 28]
    assert problems == []


def test_a_probe_folder_stopped_while_written_is_written_again(tmp_path, report):
    """A probe stopped part-way through its files (here: a file name the write refuses, after
    the others were written; a kill leaves the same) leaves a folder the same command writes
    again: it is marked as a probe folder before the first file goes in."""
    from sketchmine.cli.main import main
    from sketchmine.errors import SketchmineError
    from sketchmine.present.report_probe import MARKER, write_probe_folder

    run = report.parent.parent / "run.zarr"
    out = tmp_path / "p"
    with pytest.raises(SketchmineError, match="plain file name"):
        write_probe_folder(out, {**build_probe(sketchmine.open_run(run)), "../x": b""})
    assert (out / MARKER).is_file() and (out / "probe" / "model.js").is_file() and not (out / "probe.html").exists()
    assert main(["probe", str(run), "--out", str(out)]) == 0
    assert (out / "probe.html").is_file()


def graph_outputs(files: dict[str, bytes], pixels: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    """The probe graph (model.js) run by Python's onnxruntime on (n, H, W) uint8 pixels, one at a time."""
    import base64
    import json

    import onnxruntime as ort

    text = files["model.js"].decode()
    meta = json.loads(text[text.index("=") + 1:text.index(";\n")])
    pieces = [files[n].decode() for n in sorted(files) if n.startswith("graph-")]
    graph = b"".join(base64.b64decode(p[p.index('push("') + 6:p.rindex('")')]) for p in pieces)
    assert len(graph) == meta["model_bytes"]
    sess = ort.InferenceSession(graph)
    runs = [sess.run(None, {"pixels": p[None, None].astype(np.float32)}) for p in pixels]
    return meta, [np.stack([r[i].reshape(-1) for r in runs]) for i in range(len(runs[0]))]


def test_run_of_an_onnx_file_reuses_it_with_the_preprocessing_prepended(tmp_path, subset, demo_model):
    """A run mined from an .onnx file: its own graph, the run's normalisation prepended, the
    probs and every layer's unit maxima as outputs (run here by onnxruntime, the same graph
    the page runs), against the torch model the file was exported from."""
    vendored()
    import warnings

    net = demo_model.module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 1, 28, 28),), tmp_path / "demo.onnx", dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    run = sketchmine.mine(str(tmp_path / "demo.onnx"), subset, out=tmp_path / "onnx.zarr", batch_size=50,
                          layers=["features.0", "features.6", "classifier.1"])
    meta, outs = graph_outputs(build_probe(run), subset.images[:20])
    assert meta["size"] == [28, 28] and "demo.onnx" in meta["notes"][-1]
    assert [l["grid"] for l in meta["layers"]] == [[28, 28], [7, 7], None]
    pre = subset.preprocessing
    probs, acts = torch_reference(net, subset.images[:20], pre.mean[0], pre.std[0], ["features.0", "features.6", "classifier.1"])
    assert np.abs(outs[0] - probs).max() < 1e-5
    for i, name in enumerate(["features.0", "features.6", "classifier.1"]):
        np.testing.assert_allclose(outs[1 + 2 * i if i < 2 else 5], acts[name], atol=1e-4 * np.abs(acts[name]).max())


def test_resnet_graph_in_python_and_heat_maps_bounded(tmp_path, demo_test_set):
    """The torch export of another embedded model (ResNet blocks, colour-free), run by Python's
    onnxruntime: the same softmax as the torch model, and maps no larger than MAP_SIDE a side."""
    vendored()
    from sketchmine.model.models import load_model, preprocessing_for
    from sketchmine.passes.probe import MAP_SIDE

    loaded = load_model("demo-resnet")
    ds = per_class_subset(demo_test_set, 2, "0:20")
    run = sketchmine.mine("demo-resnet", ds, out=tmp_path / "r.zarr", batch_size=20)
    meta, outs = graph_outputs(build_probe(run), ds.images)
    pre = preprocessing_for(loaded)
    with torch.no_grad():
        x = pre.normalise(torch.from_numpy(ds.images).float()[:, None] / 255)
        ref = torch.softmax(loaded.module.eval()(x), 1).numpy()
    assert np.abs(outs[0] - ref).max() < 1e-4
    assert all(l["grid"] is None or max(l["grid"]) <= MAP_SIDE for l in meta["layers"])


def test_loaded_image_converted_as_the_miner_would(tmp_path, report, browser, subset, demo_model):
    """A colour image of another size: grey by luma and resized as the miner's Preprocessing.prepare
    does (up to the rounding to 0-255), said once on the page, and predicted as torch predicts it."""
    from PIL import Image

    from sketchmine.data.preprocess import Preprocessing, chw

    rng = np.random.default_rng(0)
    grey = np.kron(subset.images[7], np.ones((3, 2), np.uint8))  # 84×56: another size and aspect
    rgb = np.stack([grey, np.clip(grey * 0.5 + rng.integers(0, 60, grey.shape), 0, 255),
                    255 - grey // 2], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "cat.png")
    page, problems = open_page(browser, (report.parent / "probe.html").as_uri())
    ready(page)
    page.set_input_files("#file", str(tmp_path / "cat.png"))
    r = settled(page)
    note = page.inner_text("#convert-note")
    assert "56×84 colour, made grey by luma" in note and "resized to 28×28 by antialiased bilinear" in note
    px = np.array(page.evaluate("Array.from(window.sketchmine.pixels())"), np.float32).reshape(28, 28)
    pre = subset.preprocessing
    at_size = Preprocessing(pre.preset, pre.channels, (28, 28), pre.mean, pre.std)  # as a run at 28×28
    miner = at_size.prepare(chw(rgb)[None])  # the miner: grey by luma, resized, normalised
    assert np.abs(px - (miner[0, 0].numpy() * pre.std[0] + pre.mean[0]) * 255).max() <= 0.5 + 1e-3
    probs, _ = torch_reference(demo_model.module, px[None].astype(np.uint8), pre.mean[0], pre.std[0], [])
    assert np.abs(np.array(r["probs"]) - probs[0]).max() < 1e-4
    assert problems == []


def test_dataset_images_are_whole_images_not_windows_as_large_as_the_input(tmp_path, subset):
    """SketchNet's features.8 has a 28 × 28 receptive field on 28 × 28 input, but at its grid's
    positions (stride 4, offset −12): its patches are shifted windows padded with zeros. Taken as
    the dataset images (it comes before classifier.1), the probe showed 39 of 40 of them as other
    pictures and predicted them wrongly ("bear #92 → cow"). Only whole-image boxes are taken."""
    from sketchmine.passes.probe import dataset_images

    run = sketchmine.mine("demo", subset, out=tmp_path / "run.zarr", batch_size=50, layers=["features.8", "classifier.1"])
    sketchmine.visualize(run, data=subset, batch_size=64, max_units=4)
    images = dataset_images(run, (28, 28))
    assert len(images) >= 10
    for im in images:
        pixels = np.frombuffer(__import__("base64").b64decode(im["pixels"]), np.uint8).reshape(28, 28)
        np.testing.assert_array_equal(pixels, np.asarray(subset.images[im["index"]]))
