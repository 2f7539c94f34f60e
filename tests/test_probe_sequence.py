"""The live probe of a recurrent run (the embedded CNN + GRU, "demo-gru", over progressive drawings)
in headless Chromium: the page makes the run's frames from a drawing exactly as data/sequences.py
does, the graph equals the torch model (final and per-step predictions, the top units of every
layer, over time included), the strip under the canvas shows the prediction as the drawing
grows; and the probe's size cap, and the demo's reports carrying the probe."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.data.sequences import SequenceDataset, background_of, progressive_drawing
from sketchmine.passes.probe import build_probe
from sketchmine.present.report import write_report
from tests.helpers import per_class_subset
from tests.test_probe import draw, open_page, ready, settled, vendored

STEPS = 8
LAYERS = ["features.0", "features.6", "embed.0", "gru", "classifier"]


@pytest.fixture(scope="module")
def gru():
    from sketchmine.model.models import load_model

    return load_model("demo-gru")


@pytest.fixture(scope="module")
def base(gru):
    from sketchmine.data import animal_shape
    from sketchmine.model.models import preprocessing_for

    return per_class_subset(animal_shape("test", preprocessing_for(gru)), 5, "0:50")


@pytest.fixture(scope="module")
def gru_report(tmp_path_factory, base) -> Path:
    """demo-gru mined over 50 real test images drawn progressively (8 steps, ink auto), three
    softmax units visualized (whole drawings: the probe's dataset images), reported with the probe."""
    vendored()
    root = tmp_path_factory.mktemp("gruprobe")
    ds = SequenceDataset(base, STEPS)
    run = sketchmine.mine("demo-gru", ds, out=root / "gru.zarr", batch_size=50, layers=[*LAYERS, "softmax"])
    sketchmine.visualize(run, layers=["softmax"], data=ds, batch_size=64, max_units=3)
    return write_report(run, root / "report", probe=build_probe(run))


def python_frames(img: np.ndarray, ink: str = "auto") -> np.ndarray:
    return progressive_drawing(img, STEPS, background_of(img, ink))


def torch_reference(net, pre, frames: np.ndarray):
    """Softmax on all frames, on each prefix 1..t, and each layer's per-unit maximum over every
    position and step, by plain hooks on the model's modules (frames: (T, H, W) uint8)."""
    mods = dict(net.named_modules())
    got: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(
        n, (o[0] if isinstance(o, tuple) else o).detach().clone())) for n in LAYERS]
    x = (torch.from_numpy(frames).float()[None, :, None] / 255 - pre.mean[0]) / pre.std[0]
    try:
        with torch.no_grad():
            probs = torch.softmax(net(x), 1)[0]
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        prefix = torch.stack([torch.softmax(net(x[:, :t]), 1)[0] for t in range(1, STEPS + 1)])
        steps = torch.softmax(net.step_logits(x), 2)[0]  # the model's own per-step predictions
    assert torch.allclose(prefix, steps, atol=1e-6)  # causal: the prefix's prediction is step t's
    units = {"features.0": 1, "features.6": 1, "embed.0": 1, "gru": 2, "classifier": 2}  # unit axis
    maxima = {n: t.movedim(units[n], 0).flatten(1).amax(1).numpy() for n, t in got.items()}
    return probs.numpy(), steps.numpy(), maxima


def page_frames(page, images: np.ndarray) -> np.ndarray:
    out = page.evaluate("(a) => a.map(p => Array.from(window.sketchmine.frames(new Uint8Array(p))))",
                        [im.reshape(-1).tolist() for im in images])
    return np.array(out, np.uint8).reshape(len(images), STEPS, *images.shape[1:])


def test_frames_made_in_the_page_equal_the_python_data_path(gru_report, browser, base):
    """The JavaScript port of progressive_drawing against Python's, byte for byte: the 50 real
    test images (light ink, ink auto), the same inverted (dark ink on white: the background is
    decided by the border's lower median, also where its two middle values straddle 128), random
    sparse images (many equal angles), and one-pixel and empty ones."""
    page, problems = open_page(browser, (gru_report.parent / "probe.html").as_uri())
    ready(page)
    assert page.evaluate("window.sketchmine.meta.sequence") == {"transform": "outline-then-fill/v1", "steps": STEPS,
                                                                "ink": "auto"}
    rng = np.random.default_rng(0)
    sparse = (rng.random((20, 28, 28)) < rng.uniform(0.02, 0.6, (20, 1, 1))) * rng.integers(1, 256, (20, 28, 28))
    dot = np.zeros((2, 28, 28), np.int64)
    dot[0, 13, 14] = 200
    # a border half 100, half 200: its two middle values straddle 128; the lower median (100) says light ink
    halves = base.images[:2].astype(np.int64) // 2 + 100
    halves[:, :14], halves[:, 14:] = np.maximum(halves[:, :14], 100), np.maximum(halves[:, 14:], 200)
    images = np.concatenate([base.images[:50], 255 - base.images[:50], sparse, dot, halves]).astype(np.uint8)
    assert images[:50].std() > 10  # real drawings; dark background, then light
    assert [background_of(im) for im in images[:100]] == [0] * 50 + [255] * 50
    assert [background_of(im) for im in images[-2:]] == [0, 0]
    got = page_frames(page, images)
    want = np.stack([python_frames(im) for im in images])
    bad = [i for i in range(len(images)) if not (got[i] == want[i]).all()]
    assert bad == [], f"{len(bad)} images differ, e.g. {bad[:5]}"
    assert (got[:, -1] == images).all() and (got[:50, 0] != got[:50, -1]).any()
    assert problems == []


def test_gru_probe_equals_torch_on_50_test_images(gru_report, browser, base, gru):
    page, problems = open_page(browser, (gru_report.parent / "probe.html").as_uri())
    ready(page)
    assert page.evaluate("window.sketchmine.meta.layers.map(l => l.name)") == LAYERS
    images = base.images[:50]
    out = page.evaluate("async (a) => { const r = []; for (const p of a) r.push(await window.sketchmine.probe("
                        "new Uint8Array(p))); return r; }", [im.reshape(-1).tolist() for im in images])
    pre = base.preprocessing
    for i, (im, o) in enumerate(zip(images, out)):
        probs, steps, maxima = torch_reference(gru.module, pre, python_frames(im))
        assert np.abs(np.array(o["probs"]) - probs).max() < 1e-4, i
        assert np.abs(np.array(o["steps"]) - steps).max() < 1e-4, i
        for name in LAYERS:
            units = [u for u, _ in o["layers"][name]]
            values = np.array([v for _, v in o["layers"][name]])
            ref = maxima[name]
            order = sorted(range(len(ref)), key=lambda u: (-ref[u], u))[:len(units)]
            tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(values, ref[units], atol=tol)
            np.testing.assert_allclose(values, ref[order], atol=tol)
            assert units == order or not (np.abs(ref[units] - ref[order]) > tol).any(), (name, i)
    assert problems == []


def test_drawn_strokes_grow_a_strip_of_predictions(gru_report, browser, base, gru):
    """Mouse strokes: the page's frames of its exported pixels equal Python's, the prediction equals
    torch's on them, and the strip shows each frame with the class torch predicts after it."""
    page, problems = open_page(browser, (gru_report.parent / "probe.html").as_uri())
    ready(page)
    assert "progressive drawings" in page.inner_text(".note")
    assert page.inner_text("#steps") == "" and "Empty canvas" in page.inner_text("#hint")
    draw(page, [[(0.2, 0.3), (0.5, 0.2), (0.8, 0.35), (0.75, 0.7), (0.3, 0.75), (0.2, 0.3)],
                [(0.4, 0.4), (0.6, 0.6)]])
    r = settled(page)
    px = np.array(page.evaluate("Array.from(window.sketchmine.pixels())"), np.uint8).reshape(28, 28)
    assert 20 < (px > 127).sum() < 500
    frames = python_frames(px)
    assert (page_frames(page, px[None])[0] == frames).all()
    probs, steps, _ = torch_reference(gru.module, base.preprocessing, frames)
    assert np.abs(np.array(r["probs"]) - probs).max() < 1e-4 and np.abs(np.array(r["steps"]) - steps).max() < 1e-4
    cells = page.locator(".probe-step")
    assert cells.count() == STEPS and page.locator("canvas.step").count() == STEPS
    shown = [cells.nth(t).locator(".step-class").inner_text() for t in range(STEPS)]
    assert shown == [base.class_names[int(s.argmax())] for s in steps]
    assert page.inner_text("#preds").splitlines()[0].split("\t")[0] == base.class_names[int(probs.argmax())]
    # a dataset image: a whole drawing (the softmax's patches are the last frame), probed at its pixels
    page.click("#pick")
    page.click("canvas.thumb >> nth=1")
    settled(page)
    px = np.array(page.evaluate("Array.from(window.sketchmine.pixels())"), np.uint8).reshape(28, 28)
    assert any((px == im).all() for im in base.images)
    page.click("#clear")
    page.wait_for_function("() => document.body.getAttribute('data-empty') === '1'")
    assert page.inner_text("#steps") == ""
    assert problems == []


def test_size_cap_leaves_the_probe_out_and_says_why(gru_report, tmp_path, browser, gru):
    """A graph over the cap is refused before export (by its weights) or after it (the graph);
    `sketchmine report --probe-max-mb` writes the report without the probe and the index says why;
    0: no cap."""
    from sketchmine.cli.main import main

    run = gru_report.parent.parent / "gru.zarr"
    weights = sum(p.numel() * 4 for p in gru.module.parameters()) / 1e6
    graph = (gru_report.parent / "probe").glob("graph-*.js")
    assert 0.1 < weights < 0.55 < sum(p.stat().st_size for p in graph) * 3 / 4 / 1e6 < 1
    with pytest.raises(sketchmine.SketchmineError, match=rf"its weights alone\) is {weights:.1f} MB, over the "
                                                         r"probe's cap of 0\.1 MB \(the page embeds it\); raise it"):
        build_probe(run, max_mb=0.1)
    with pytest.raises(sketchmine.SketchmineError, match=r"the probe graph of demo:sketchgru_animal is 0\.6 MB, over "
                                                         r"the probe's cap of 0\.55 MB"):
        build_probe(run, max_mb=0.55)  # the weights fit, the graph does not
    assert main(["report", str(run), "--out", str(tmp_path / "capped"), "--probe-max-mb", "0.1"]) == 0
    assert not (tmp_path / "capped" / "probe.html").exists() and not (tmp_path / "capped" / "probe").exists()
    page, problems = open_page(browser, (tmp_path / "capped" / "index.html").as_uri())
    assert "No live probe: the model demo:sketchgru_animal (its weights alone) is" in page.inner_text("#no-probe")
    assert "--probe-max-mb" in page.inner_text("#no-probe")
    assert main(["report", str(run), "--out", str(tmp_path / "nocap"), "--probe-max-mb", "0"]) == 0
    assert (tmp_path / "nocap" / "probe.html").is_file()
    with pytest.raises(SystemExit) as exc:  # argparse refuses a negative size
        main(["report", str(run), "--out", str(tmp_path / "bad"), "--probe-max-mb", "-1"])
    assert exc.value.code == 2
    assert problems == []


def test_demo_reports_carry_the_probe(gru_report, tmp_path, browser):
    """The demo's report step (cli.demo.demo_report) writes the live probe with each report."""
    from rich.console import Console

    from sketchmine.cli.demo import demo_report

    run = sketchmine.open_run(gru_report.parent.parent / "gru.zarr")
    index = demo_report(run, tmp_path / "demo-gru", Console(file=open(tmp_path / "log", "w")))
    page, problems = open_page(browser, index.as_uri())
    page.click("#probe-link")
    ready(page)
    assert page.evaluate("window.sketchmine.meta.step_probs") is True
    assert problems == []


class FixedSteps(torch.nn.Module):
    """A sequence model that needs exactly STEPS frames (its classifier reads all of them at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 5, stride=4)
        self.fc = torch.nn.Linear(STEPS * 4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x.flatten(0, 1)))  # (N*T, 4, 6, 6)
        return self.fc(f.unflatten(0, x.shape[:2]).flatten(1))


def test_model_that_needs_every_step_gets_no_strip_and_says_why(tmp_path, base, browser):
    """A sequence model that refuses a shorter sequence: the probe has no per-step output, the page
    says why, shows the frames without predictions, and the final prediction equals torch's."""
    from sketchmine.present.report_probe import write_probe_folder

    vendored()
    torch.manual_seed(0)
    net = FixedSteps().eval()
    sub = per_class_subset(base, 1, "0:10")
    run = sketchmine.mine(net, SequenceDataset(sub, STEPS), out=tmp_path / "fixed.zarr", batch_size=10)
    page_path = write_probe_folder(tmp_path / "p", build_probe(run, model=net, size=(28, 28)))
    page, problems = open_page(browser, page_path.as_uri())
    ready(page)
    assert page.evaluate("window.sketchmine.meta.step_probs") is False
    assert "no prediction per step: the model does not take a shorter sequence" in page.inner_text(".note")
    im = sub.images[3]
    r = page.evaluate("async (p) => window.sketchmine.probe(new Uint8Array(p))", im.reshape(-1).tolist())
    assert "steps" not in r
    x = (torch.from_numpy(python_frames(im)).float()[None, :, None] / 255 - sub.preprocessing.mean[0]) \
        / sub.preprocessing.std[0]
    with torch.no_grad():
        ref = torch.softmax(net(x), 1)[0].numpy()
    assert np.abs(np.array(r["probs"]) - ref).max() < 1e-4
    draw(page, [[(0.3, 0.3), (0.7, 0.4), (0.5, 0.8)]])
    settled(page)
    assert page.locator("canvas.step").count() == STEPS and page.locator(".step-class").count() == 0
    assert "no prediction per step" in page.inner_text("#steps")
    assert problems == []
