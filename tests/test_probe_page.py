"""The live probe page in headless Chromium, off the demo's path: a colour run's dataset images are
probed in RGB at the values the run mined, loaded files are read as the miner reads them (EXIF
orientation not applied, transparency refused), a stroke over an image leaves the image's own
pixels, undo takes back any change, a logits=False run names outputs, not classes, a run without
dataset images says why when asked for one, and a missing probe file is named instead of a page
stuck loading; probabilities read 100 or 0 only when exact
and unit values as the report's columns write them."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.data.folder import ImageFolderDataset
from sketchmine.data.preprocess import Preprocessing, preset
from sketchmine.model.models import load_model
from sketchmine.passes.probe import build_probe
from sketchmine.present.report import write_report
from sketchmine.results.numbers import column, percent, percents
from tests.test_probe import (draw, open_page, ready, report, settled, subset,  # noqa: F401 - fixtures
                               torch_reference, vendored)
from tests.test_probe_sequence import base, gru, gru_report, python_frames  # noqa: F401 - fixtures


def pixels(page) -> np.ndarray:
    return np.array(page.evaluate("Array.from(window.sketchmine.pixels())"), np.float32)


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """A 3-channel model over coloured squares (red and blue weigh differently), mined, its
    classifier visualized (whole-image patches), reported with the probe."""
    vendored()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 16 * 16, 4)).eval()
    with torch.no_grad():
        net[0].weight[:, 0] *= 3
        net[0].weight[:, 2] *= -3
    rng = np.random.default_rng(0)
    imgs = np.zeros((40, 32, 32, 3), np.uint8)
    for i in range(40):
        y, x = rng.integers(4, 20, 2)
        imgs[i, y:y + 10, x:x + 10] = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)][i % 4]
    ds = ArrayDataset(imgs, np.arange(40) % 4, ["red", "blue", "green", "yellow"], preset("imagenet", 3, (32, 32)),
                      {"name": "colour squares"})
    root = tmp_path_factory.mktemp("colour")
    run = sketchmine.mine(net, ds, out=root / "run.zarr", batch_size=40, layers=["0", "4"])
    sketchmine.visualize(run, layers=["4"], model=net, data=ds, batch_size=40)
    return net, ds, run, write_report(run, root / "report", probe=build_probe(run, model=net))


def test_a_colour_runs_dataset_images_are_probed_in_rgb_at_the_mined_values(colour, browser, tmp_path):  # noqa: F811
    net, ds, run, index = colour
    page, problems = open_page(browser, (index.parent / "probe.html").as_uri())
    ready(page)
    assert "32×32 RGB" in page.inner_text(".note")
    values, image, _ = run.topk("4")
    shown = page.evaluate("window.sketchmine.meta.images.map(im => im.index)")
    page.click("#pick")
    checked = 0
    for n, i in enumerate(shown[:8]):
        page.click(f"canvas.thumb >> nth={n}")
        r = settled(page)
        assert (pixels(page).reshape(32, 32, 3) == ds.images[i]).all()  # the mined image, not its grey
        got = dict(r["layers"]["4"])
        for u, k in zip(*np.nonzero(image == i)):
            assert abs(got[int(u)] - float(values[u, k])) < 1e-4  # the value the run stored for it
            checked += 1
        with torch.no_grad():
            ref = torch.softmax(net(ds.preprocessing.prepare(torch.from_numpy(ds.images[i:i + 1]).permute(0, 3, 1, 2)
                                                             .float() / 255)), 1)[0].numpy()
        assert np.abs(np.array(r["probs"]) - ref).max() < 1e-4
    assert checked >= 4
    # a colour file is loaded in RGB, as the miner's folder loader reads it for a 3-channel run
    (tmp_path / "c" / "x").mkdir(parents=True)
    big = np.kron(ds.images[5], np.ones((2, 3, 1), np.uint8))  # 64×96
    Image.fromarray(big).save(tmp_path / "c" / "x" / "big.png")
    miner = ImageFolderDataset(tmp_path / "c", ds.preprocessing)[0][1]
    page.set_input_files("#file", str(tmp_path / "c" / "x" / "big.png"))
    settled(page)
    assert "colour (RGB)" in page.inner_text("#convert-note")
    want = (miner * torch.tensor(ds.preprocessing.std).view(3, 1, 1) + torch.tensor(ds.preprocessing.mean).view(3, 1, 1))
    assert np.abs(pixels(page).reshape(32, 32, 3) - want.permute(1, 2, 0).numpy() * 255).max() <= 0.5 + 1e-3
    assert problems == []


def test_files_are_read_as_the_miner_reads_them(report, browser, tmp_path, subset):  # noqa: F811
    """An EXIF-rotated JPEG gives the stored (unrotated) pixels; a transparent PNG is refused
    (the browser loses the colour under alpha that the miner keeps) and leaves the pad as it was."""
    (tmp_path / "d" / "x").mkdir(parents=True)
    art = np.zeros((40, 60), np.uint8)
    art[5:15, 5:50] = 255
    art[20:38, 40:46] = 200
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    Image.fromarray(art).save(tmp_path / "d" / "x" / "rot.jpg", exif=exif.tobytes(), quality=100)
    pre = subset.preprocessing
    miner = ImageFolderDataset(tmp_path / "d", Preprocessing(pre.preset, 1, (28, 28), pre.mean, pre.std))[0][1]
    page, problems = open_page(browser, (report.parent / "probe.html").as_uri())
    ready(page)
    page.set_input_files("#file", str(tmp_path / "d" / "x" / "rot.jpg"))
    settled(page)
    assert "EXIF orientation (rotated 90°) not applied" in page.inner_text("#convert-note")
    want = (miner[0].numpy() * pre.std[0] + pre.mean[0]) * 255
    assert np.abs(pixels(page).reshape(28, 28) - want).max() <= 0.5 + 1e-3
    before = pixels(page)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[8:20, 8:20, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    page.set_input_files("#file", str(tmp_path / "t.png"))
    page.wait_for_function("() => document.getElementById('convert-note').textContent.startsWith('Not loaded')")
    assert "t.png has transparent pixels" in page.inner_text("#convert-note")
    assert (pixels(page) == before).all()
    Image.fromarray(art).save(tmp_path / "plain.png")  # no EXIF orientation: nothing said of one (it said "rotated 0°")
    page.set_input_files("#file", str(tmp_path / "plain.png"))
    page.wait_for_function("() => document.getElementById('convert-note').textContent.includes('plain.png')")
    assert page.inner_text("#convert-note") == ("Loaded plain.png: 60×40 grey, resized to 28×28 by antialiased "
                                                "bilinear, as the miner converts images.")
    assert problems == []


def test_a_stroke_over_an_image_leaves_its_pixels_and_undo_takes_back_any_change(report, browser, subset):  # noqa: F811
    page, problems = open_page(browser, (report.parent / "probe.html").as_uri())
    ready(page)
    draw(page, [[(0.2, 0.2), (0.8, 0.8)]])
    settled(page)
    drawn = pixels(page)
    page.click("#pick")
    page.click("canvas.thumb >> nth=2")
    settled(page)
    picked = pixels(page)
    assert "Dataset image" in page.inner_text("#convert-note")
    draw(page, [[(0.05, 0.05), (0.1, 0.1)]])  # a short stroke in the top-left corner
    settled(page)
    both = pixels(page).reshape(28, 28)
    far = np.ones((28, 28), bool)
    far[:8, :8] = False
    assert (both[far] == picked.reshape(28, 28)[far]).all()  # the image's own pixels away from the stroke
    assert (both[:8, :8] != picked.reshape(28, 28)[:8, :8]).any()
    page.click("#undo")  # the stroke
    settled(page)
    assert (pixels(page) == picked).all()
    page.click("#undo")  # the picked image: the drawing before it comes back, and the note goes
    settled(page)
    assert (pixels(page) == drawn).all() and page.inner_text("#convert-note") == ""
    page.click("#clear")
    page.wait_for_function("() => document.body.getAttribute('data-empty') === '1'")
    page.click("#undo")  # the clear
    settled(page)
    assert (pixels(page) == drawn).all()
    assert problems == []


def test_a_run_without_logits_names_outputs_not_classes(tmp_path, browser, subset):  # noqa: F811
    vendored()
    keep = subset.labels() < 3
    three = ArrayDataset(subset.images[keep], subset.labels()[keep], ["cup", "tree", "car"], subset.preprocessing,
                         {"name": "three"})
    run = sketchmine.mine("demo", three, out=tmp_path / "run.zarr", batch_size=50, logits=False,
                          layers=["features.0", "classifier.1"])
    index = write_report(run, tmp_path / "rep", probe=build_probe(run))
    page, problems = open_page(browser, (index.parent / "probe.html").as_uri())
    ready(page)
    assert page.inner_text("#preds-title") == "Model outputs (not the run's classes)"
    assert "logits=False" in page.inner_text(".note")
    draw(page, [[(0.3, 0.3), (0.7, 0.7)]])
    settled(page)
    names = [row.split("\t")[0] for row in page.inner_text("#preds").splitlines()]
    own = load_model("demo").categories  # the embedded model names its outputs: those, not the run's classes
    assert own and names and set(names) <= set(own) and not set(names) & {"cup", "tree", "car"}
    assert problems == []
    module = load_model("demo").module  # a bare module names nothing: its outputs are numbered
    index = write_report(run, tmp_path / "rep2", probe=build_probe(run, model=module))
    page, problems = open_page(browser, (index.parent / "probe.html").as_uri())
    ready(page)
    draw(page, [[(0.3, 0.3), (0.7, 0.7)]])
    settled(page)
    names = [row.split("\t")[0] for row in page.inner_text("#preds").splitlines()]
    assert names and all(n.startswith("output ") for n in names)
    assert problems == []


def test_pick_on_a_run_without_dataset_images_says_why_and_how_to_add_them(tmp_path, browser, subset):  # noqa: F811
    vendored()
    run = sketchmine.mine("demo", subset, out=tmp_path / "run.zarr", batch_size=50, layers=["features.0", "classifier.1"])
    index = write_report(run, tmp_path / "rep", probe=build_probe(run), montages=0)  # no visualize: no whole-image patches
    page, problems = open_page(browser, (index.parent / "probe.html").as_uri())
    ready(page)
    assert not page.is_visible("#images")
    page.click("#pick")
    said = page.inner_text("#images")  # shown where the gallery would open
    assert page.is_visible("#images") and said.startswith("no dataset images: ")
    assert said.endswith("(sketchmine visualize RUN --layers LAYER adds them)"), said
    page.click("#pick")  # folded away again, as the gallery is
    assert not page.is_visible("#images")
    assert problems == []


@pytest.mark.parametrize("gone", ["probe/ort.wasm.min.js", "probe/model.js", "probe/graph-000.js", "probe/ort-loader.js",
                                  "assets/dom.js"])
def test_a_missing_probe_file_is_named(gone, report, browser, tmp_path):  # noqa: F811
    copy = tmp_path / "rep"
    shutil.copytree(report.parent, copy)
    (copy / gone).unlink()
    page, _ = open_page(browser, (copy / "probe.html").as_uri())
    page.wait_for_function("() => document.body.getAttribute('data-failed') === '1'", timeout=30_000)
    assert f"{gone} is missing or did not load" in page.inner_text("#probe-status")


SHOWN = """() => ({
    preds: [...document.querySelectorAll('#preds tr')].map(t => [t.cells[0].textContent, t.cells[1].textContent.trim()]),
    layers: Object.fromEntries([...document.querySelectorAll('.probe-layer')].map(s => [s.querySelector('h3').textContent
        .split(' (')[0], [...s.querySelectorAll('.probe-unit .num')].map(c => c.textContent)])),
    steps: [...document.querySelectorAll('.probe-step .num')].map(c => c.textContent)})"""


def test_a_sure_prediction_reads_100_only_when_exact(report, browser, subset, demo_model):  # noqa: F811
    """The demo model is sure of some dataset images (a sheep at 0.9999542): toFixed wrote it
    "100.0 %" and its runners-up "0.0 %". Each probability reads as the report writes a column of
    them (numbers.percents: the probe's one decimal, more where it would read 100 or 0 and is not),
    each unit's value as a card writes its values (numbers.column, not toPrecision's "-0.5060")."""
    page, problems = open_page(browser, (report.parent / "probe.html").as_uri())
    ready(page)
    classes = page.evaluate("window.sketchmine.meta.classes")
    pre = subset.preprocessing
    page.click("#pick")
    sure = 0
    for k in range(page.locator("canvas.thumb").count()):
        page.click(f"canvas.thumb >> nth={k}")
        r = settled(page)
        got, shown = np.array(r["probs"]), page.evaluate(SHOWN)
        ref, _ = torch_reference(demo_model.module, pixels(page).astype(np.uint8).reshape(1, 28, 28), pre.mean[0],
                                 pre.std[0], [])
        assert np.abs(got - ref[0]).max() < 1e-4  # the page's probabilities are the model's
        top = sorted(range(len(got)), key=lambda c: (-got[c], c))[:5]
        assert [name for name, _ in shown["preds"]] == [classes[c] for c in top]
        assert [text for _, text in shown["preds"]] == [t + " %" for t in percents([float(got[c]) for c in top], 1)]
        for c, (_, text) in zip(top, shown["preds"]):
            assert (text == "100.0 %") == (got[c] == 1) and (text == "0.0 %") == (got[c] == 0), (k, got[c], text)
        if f"{ref[0].max() * 100:.1f}" == "100.0" and ref[0].max() < 1:  # torch too: within rounding of 1, not 1
            sure += 1
            assert shown["preds"][0][1] != "100.0 %" and all(t != "0.0 %" for _, t in shown["preds"][1:])
        assert shown["layers"] == {name: column([v for _, v in units]) for name, units in r["layers"].items()}
    assert sure, "no dataset image the model is sure of: the case this checks is missing"
    assert problems == []


def test_the_strip_reads_100_only_when_exact(gru_report, browser, gru, tmp_path):  # noqa: F811
    """The recurrent run's strip under the canvas: a step's probability with no decimals (as
    before), more where it would read 100 or 0 and is not (toFixed(0) wrote 0.996 as "100 %").
    The test image the model is surest of at some step, short of 1, is loaded as a file."""
    from sketchmine.data import animal_shape
    from sketchmine.model.models import preprocessing_for

    test = animal_shape("test", preprocessing_for(gru))
    pre, best = test.preprocessing, []
    for at in range(0, len(test.images), 250):  # torch's per-step probabilities of each test image
        frames = np.stack([python_frames(im) for im in test.images[at:at + 250]])
        with torch.no_grad():
            x = (torch.from_numpy(frames).float()[:, :, None] / 255 - pre.mean[0]) / pre.std[0]
            best.append(torch.softmax(gru.module.step_logits(x), 2).amax(2).numpy())
    tops = np.concatenate(best)
    i = int(np.where(tops < 1, tops, 0).max(1).argmax())
    assert 0.995 <= tops[i].max() < 1, tops[i]  # a step toFixed(0) wrote as "100 %"
    Image.fromarray(test.images[i]).save(tmp_path / "sure.png")
    page, problems = open_page(browser, (gru_report.parent / "probe.html").as_uri())
    ready(page)
    page.set_input_files("#file", str(tmp_path / "sure.png"))
    r = settled(page)
    assert (pixels(page) == test.images[i].reshape(-1)).all()
    shown, steps = page.evaluate(SHOWN)["steps"], [max(p) for p in r["steps"]]
    assert np.abs(np.array(steps) - tops[i]).max() < 1e-4  # the page's probabilities are torch's
    assert shown == [percent(p, 0) + " %" for p in steps]
    assert all((t == "100 %") == (p == 1) for t, p in zip(shown, steps)), (shown, steps)
    assert problems == []
