"""The HTML report in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright):
pages load from file:// without console errors, cards and images render, paging works, a
screenshot is taken, and class names with markup and unicode stay text."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sketchmine
from sketchmine.data import ArrayDataset, export_image_folder
from sketchmine.present.report import PAGE_SIZE, layer_ids, write_report

NASTY = ['<img src=x onerror=alert(1)>', '<b>bold&"quote\'', "ünïcödé 猫 ✓"]
# one folder per output of the demo model (mine checks the count); the rest hold markup too
CLASSES = NASTY + [f"<i>class {c}&amp;" for c in range(3, 10)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_test_set) -> Path:
    """120 real images in ten class folders (one per model output) whose names hold markup and unicode."""
    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:12] for c in range(10)])
    labels = np.repeat(np.arange(10), 12)
    sub = ArrayDataset(ds.images[pick], labels, CLASSES, ds.preprocessing, ds.describe())
    root = export_image_folder(sub, tmp_path_factory.mktemp("img") / "images")
    assert sorted(p.name for p in root.iterdir()) == sorted(CLASSES)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, folder):
    """The same images mined twice: one run visualized (patches, deconvolutions), one not."""
    base = tmp_path_factory.mktemp("runs")
    plain = sketchmine.mine("demo", folder, out=base / "plain.zarr", batch_size=36)
    vis = sketchmine.mine("demo", folder, out=base / "vis.zarr", batch_size=36,
                          layers=["features.0", "features.6", "classifier.1"])
    importlib.import_module("sketchmine.passes.visualize").visualize(vis, batch_size=256)
    return plain, vis


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(url)
    return page, problems


def _images_ok(page) -> tuple[int, int]:
    """(images on the page, images that decoded with a width)."""
    return page.evaluate("""() => { const im = [...document.images];
        return [im.length, im.filter(i => i.complete && i.naturalWidth > 0).length]; }""")


def test_report_files_and_escaping_in_html(tmp_path, runs):
    _, vis = runs
    index = write_report(vis, tmp_path / "rep")
    text = index.read_text()
    for name in NASTY:
        assert name not in text or name == NASTY[2]  # markup never appears raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "ünïcödé 猫 ✓" in text
    assert (tmp_path / "rep" / "summary.png").stat().st_size > 5000 and (tmp_path / "rep" / "summary.svg").exists()
    pages = sorted((tmp_path / "rep" / "data").glob("02-classifier.1/page_*.js"))
    assert len(pages) == 256 // PAGE_SIZE
    payload = pages[0].read_text()
    assert "<" not in payload  # JSON with < escaped: nothing can close a tag
    units = json.loads(payload[payload.index("["):payload.rindex("]") + 1])
    assert len(units) == PAGE_SIZE and {e["class"] for u in units for e in u["entries"]} <= set(CLASSES)
    assert all((tmp_path / "rep" / "layers" / u["patches"]).resolve().is_file() for u in units if u["entries"])
    assert "http://" not in text and "https://" not in text  # offline: no CDN


def test_report_in_chromium(tmp_path, runs, browser):
    _, vis = runs
    index = write_report(vis, tmp_path / "rep")
    page, problems = _open(browser, index.as_uri())
    page.wait_for_load_state("load")
    body = page.inner_text("body")
    for name in NASTY:
        assert name in body  # shown as text
    assert page.query_selector("table b") is None and page.query_selector("table img") is None
    # the ink plot (the summary is a table now, its picture linked) and every image decoded
    assert page.query_selector("#summary-top") and page.query_selector('a[href="summary.png"]')
    assert _images_ok(page)[0] >= 1 and _images_ok(page)[0] == _images_ok(page)[1]
    page.click('a[href="layers/02-classifier.1.html"]')
    page.wait_for_selector(".card")
    assert len(page.query_selector_all(".card")) == PAGE_SIZE
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    total, ok = _images_ok(page)
    assert total >= PAGE_SIZE * 2 * 9 and ok == total
    cards = page.inner_text("#cards")
    assert NASTY[0] in cards and "Classes with performance:" in cards
    assert page.query_selector("#cards b") is None and page.query_selector("#cards img[src='x']") is None
    page.click("#next")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '1'")
    assert page.query_selector(".card").get_attribute("id") == f"unit-{PAGE_SIZE}"
    assert page.inner_text("#page-label") == "page 2 of 4"
    page.click("#prev")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '0'")
    shot = tmp_path / "layer.png"
    page.screenshot(path=str(shot), full_page=False)
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"))
    assert im.size == (1280, 900) and len(np.unique(arr.reshape(-1, 3), axis=0)) > 50
    assert problems == []


@pytest.fixture()
def no_model(monkeypatch):
    """The report must run no model and open no dataset: any module call or reload fails."""
    refuse_models(monkeypatch)


def refuse_models(monkeypatch) -> None:
    """Make every torch module call and every reload of a run's model or dataset fail."""
    import torch

    import sketchmine.passes.reload as reload

    def refuse(*args, **kwargs):
        raise AssertionError("the report ran a model or reopened a dataset")

    monkeypatch.setattr(torch.nn.Module, "__call__", refuse)
    for name in ("run_model", "run_dataset", "run_preprocessing"):
        monkeypatch.setattr(reload, name, refuse)


def test_report_without_patches_says_how_to_add_them(tmp_path, runs, browser, no_model):
    plain, _ = runs
    index = write_report(plain, tmp_path / "rep")
    page, problems = _open(browser, (tmp_path / "rep" / "layers" / "00-features.0.html").as_uri())
    page.wait_for_selector(".card")
    assert f"sketchmine visualize {plain.path} --layers features.0" in page.inner_text("#pictures-note")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    total, ok = _images_ok(page)
    assert ok == total and not (tmp_path / "rep" / "img" / "images").exists()  # no picture the store lacks
    assert index.is_file() and problems == []


def test_report_dataset_argument_is_refused(tmp_path, runs, demo_test_set):
    _, vis = runs
    with pytest.raises(sketchmine.SketchmineError, match="reads the run store only"):
        write_report(vis, tmp_path / "rep", dataset=demo_test_set)
    assert not (tmp_path / "rep").exists()


def test_report_without_the_dataset_or_the_model(tmp_path, demo_test_set, monkeypatch):
    """Mined and visualized from an ImageFolder that is then deleted: the report (API and CLI)
    is written from the store alone, its pictures the stored patches."""
    import shutil

    from tests.test_cli import sm

    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:2] for c in range(10)])
    sub = ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names, ds.preprocessing, ds.describe())
    root = export_image_folder(sub, tmp_path / "images")
    run = sketchmine.mine("demo", root, out=tmp_path / "run.zarr", k=4, batch_size=20,
                          layers=["features.3", "classifier.6"])
    run = sketchmine.visualize(run, batch_size=64)
    shutil.rmtree(root)
    refuse_models(monkeypatch)
    index = write_report(run, tmp_path / "rep")
    assert index.is_file() and "pictures-note" not in (tmp_path / "rep" / "layers" / "00-features.3.html").read_text()
    assert len(list((tmp_path / "rep" / "img" / "00-features.3").glob("*_p.png"))) == run.layer_shape("features.3")[0]
    proc = sm("report", str(run.path), "--out", str(tmp_path / "rep2"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rep2" / "img" / "01-classifier.6" / "0_p.png").is_file()


def test_report_cli_and_partial_run(tmp_path, folder):
    from tests.helpers import StopAfter
    from tests.test_analysis import _Stop
    from tests.test_cli import sm

    out = tmp_path / "cut.zarr"
    with pytest.raises(_Stop):
        sketchmine.mine("demo", folder, out=out, batch_size=8, flush_every=2, progress=StopAfter(3, calls=True, exc=_Stop))
    proc = sm("report", str(out), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    assert "report written" in proc.stdout
    text = (tmp_path / "rep" / "index.html").read_text()
    assert "PARTIAL run: 16 of 120 images" in text
    assert f"<p>image folder {Path(folder).resolve()}; 16 images;" in text  # the dataset in words
    summary = sm("summary", str(out))
    assert summary.returncode == 0 and "PARTIAL" in summary.stdout


# ---- branched and recurrent models, unit importance (issue 8) ------------------------------

@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, folder):
    """The trained demo-resnet over the 120 real images, a residual-block output tapped, and
    ablation importance of that block's units."""
    run = sketchmine.mine("demo-resnet", folder, out=tmp_path_factory.mktemp("rn") / "rn.zarr", batch_size=36,
                          layers=["layer2.0", "fc"])
    sketchmine.unit_importance(run, "layer2.0")
    return sketchmine.open_run(run.path)


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory):
    """The trained demo-gru over progressive drawings of 40 real test images (a subset, so the
    store cannot reopen it: the dataset is passed to the passes, never to the report), with GRU
    unit importance, and the first GRU_UNITS units of the time-distributed conv and the GRU
    visualized (their activation over time stored for every unit)."""
    from sketchmine.data import animal_shape
    from sketchmine.model.models import preprocessing_for
    from sketchmine.model.models import load_model
    from sketchmine.data.sequences import SequenceDataset

    base = animal_shape("test", preprocessing_for(load_model("demo-gru")))
    keep = np.sort(np.concatenate([np.nonzero(base.labels() == c)[0][:4] for c in range(10)]))
    sub = ArrayDataset(base.images[keep], base.labels()[keep], base.class_names, base.preprocessing,
                       {**base.describe(), "subset": len(keep)})
    ds = SequenceDataset(sub, 8)
    run = sketchmine.mine("demo-gru", ds, out=tmp_path_factory.mktemp("gru") / "gru.zarr", batch_size=40,
                          layers=["features.6", "gru", "classifier"])
    sketchmine.unit_importance(run, "gru", dataset=ds)
    sketchmine.visualize(run, ["features.6", "gru"], data=ds, max_units=GRU_UNITS)
    return sketchmine.open_run(run.path), ds


GRU_UNITS = 3


def _sorted_units(page) -> list[float]:
    return page.evaluate("""() => [...document.querySelectorAll('#importance tbody tr')]
        .map(r => r.cells[0].textContent)""")


def _column(page, col: int) -> list[float]:
    return page.evaluate(f"""() => [...document.querySelectorAll('#importance tbody tr')]
        .map(r => parseFloat(r.cells[{col}].getAttribute('data-v')))""")


def test_report_resnet_block_and_importance_in_chromium(tmp_path, resnet_run, browser):
    run = resnet_run
    df = run.unit_importance("layer2.0")
    index = write_report(run, tmp_path / "rep")
    assert (tmp_path / "rep" / "importance" / "00-layer2.0.png").stat().st_size > 3000
    page, problems = _open(browser, index.as_uri())
    page.wait_for_load_state("load")
    page.click('a[href="layers/00-layer2.0.html"]')
    page.wait_for_selector(".card")
    assert len(page.query_selector_all(".card")) == min(PAGE_SIZE, run.layer_shape("layer2.0")[0])
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    total, ok = _images_ok(page)
    assert total >= 1 and ok == total  # the plots (no patches: the cards say how to add them)
    assert NASTY[0] in page.inner_text("#cards") and page.query_selector("#cards b") is None
    assert "importance rank" in page.inner_text("#cards")
    # the table: most important first as written; sorting by a header click, both ways
    units = [int(u) for u in _sorted_units(page)]
    assert units == df["unit"].tolist()
    page.click("#importance th:nth-child(1)")
    assert [int(u) for u in _sorted_units(page)] == sorted(units)
    page.click("#importance th:nth-child(3)")
    acc = _column(page, 2)
    assert acc == sorted(acc, reverse=True)
    page.click("#importance th:nth-child(3)")
    assert _column(page, 2) == sorted(acc)
    page.click("#importance th:nth-child(4)")
    got = [v for v in _column(page, 3) if not np.isnan(v)]
    assert got == sorted(got, reverse=True)
    assert page.get_attribute("#importance", "data-sorted") == "3-"
    assert problems == []


def test_report_gru_steps_and_activation_over_time(tmp_path, gru_run, browser, no_model):
    """Steps, drawings and activation over time read from the store (visualize wrote them)."""
    from sketchmine.results.traces import read_traces
    from sketchmine.passes.visualize import patches_of

    run, ds = gru_run
    stored = read_traces(run, "gru")
    assert stored is not None and stored.shape == (*run.topk("gru")[1].shape, 8)
    index = write_report(run, tmp_path / "rep")
    assert "as progressive drawings (outline-then-fill/v1, 8 steps, ink auto)" in index.read_text()
    # the layer pages say in words what a value per step is (they led with "output[0]: … (N, T, H) → (N, H, T)")
    gru_page = (tmp_path / "rep" / "layers" / "01-gru.html").read_text()
    conv_page = (tmp_path / "rep" / "layers" / "00-features.6.html").read_text()
    assert "A unit of this layer has a value at every step (its state after each step of the drawing)" in gru_page
    assert "A unit of this layer has a value at every step (it reads each of the drawing&#x27;s 8 frames" in conv_page
    payload = (tmp_path / "rep" / "data" / "01-gru" / "page_0000.js").read_text()
    units = json.loads(payload[payload.index("["):payload.rindex("]") + 1])
    values, image_index, yx = run.topk("gru")
    for u in (0, 17):
        for ent in units[u]["entries"]:
            r = ent["rank"]
            assert ent["image_index"] == image_index[u, r] and ent["t"] == yx[u, r, 1] and ent["steps"] == 8
            assert ent["trace"] == [round(float(v), 5) for v in stored[u, r]]
            # the trace is the unit's activation at every step; at the entry's step it is the top-k value
            assert len(ent["trace"]) == 8
            assert ent["trace"][ent["t"]] == pytest.approx(values[u, r], abs=1e-4)
            assert max(ent["trace"]) == pytest.approx(values[u, 0] if r == 0 else max(ent["trace"]), abs=1e-4)
    assert units[0]["patches"] and "patches" not in units[GRU_UNITS]  # visualized units only
    # a stored drawing at an early step has less ink than the finished sketch
    u, early = next((u, e) for u in range(GRU_UNITS) for e in units[u]["entries"] if e["t"] < 4)
    part = patches_of(run, "gru", u)["patches"][early["rank"]].astype(float)
    full = ds.base.images[early["image_index"]]
    assert (part > 127).sum() < (full > 127).sum()
    page, problems = _open(browser, (tmp_path / "rep" / "layers" / "01-gru.html").as_uri())
    page.wait_for_selector(".card")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    total, ok = _images_ok(page)
    assert total >= GRU_UNITS * 2 and ok == total
    cards = page.inner_text("#cards")
    assert "t=" in cards and " of 8" in cards and "activation over time" in cards
    assert len(page.query_selector_all("#cards svg.trace")) == sum(len(u["entries"]) for u in units)
    assert page.query_selector("#importance") is not None
    page.click("#importance th:nth-child(2)")
    drops = _column(page, 1)
    assert drops == sorted(drops) or drops == sorted(drops, reverse=True)
    # a time-distributed conv: steps marked from y // frame height
    page2, problems2 = _open(browser, (tmp_path / "rep" / "layers" / "00-features.6.html").as_uri())
    page2.wait_for_selector(".card")
    assert " of 8" in page2.inner_text("#cards")
    assert problems == [] and problems2 == []
    # the unit's dashboard names each entry's step as its card does
    page3, problems3 = _open(browser, (tmp_path / "rep" / "units" / "01-gru.html").as_uri() + "#unit=0")
    page3.wait_for_function("() => document.body.getAttribute('data-rendered') === '0'")
    steps = [f"t={e['t'] + 1} of 8" for e in units[0]["entries"]]
    shown = page3.inner_text("body")
    assert all(s in shown for s in steps) and problems3 == []


def test_report_gru_visualized_in_chromium(tmp_path, gru_run, browser):
    """The CNN + GRU run visualized: its time-distributed conv and its hidden units show patch
    and deconvolution strips cut from the frame of each entry's step, steps still marked."""
    run, _ = gru_run
    units = GRU_UNITS
    index = write_report(run, tmp_path / "rep")
    page, problems = _open(browser, index.as_uri())
    for lid, name in (("00-features.6", "features.6"), ("01-gru", "gru")):
        page.goto((tmp_path / "rep" / "layers" / f"{lid}.html").as_uri())
        page.wait_for_selector("#unit-0")
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        assert page.inner_text("h1") == name and " of 8" in page.inner_text("#unit-0")
        for u in range(units):
            widths = page.evaluate(f"""() => ['_p.png', '_d.png'].map(end =>
                [...document.querySelectorAll('#unit-{u} img')].filter(i => i.src.endsWith('{u}' + end))
                .map(i => i.naturalWidth))""")
            assert [len(w) for w in widths] == [9, 9] and min(min(w) for w in widths) > 0, (name, u, widths)
        total, ok = _images_ok(page)
        assert ok == total
    assert problems == []


# ---- torchvision GoogLeNet and ResNet-50 at 224 px (issue 8) --------------------------------

TORCHVISION = {  # arch: (constructor options, [a block output, a deep layer (a conv in a branch / the last block), fc])
    "googlenet": ({"aux_logits": False, "init_weights": True, "num_classes": 10},
                  ["inception3a", "inception4e.branch2.1.conv", "fc"]),
    "resnet50": ({"num_classes": 10}, ["layer1.0", "layer4.2", "fc"]),  # one output per class: mine checks it
}


@pytest.fixture(scope="module")
def imagenet_224():
    """30 real test images (3 per class) as 3-channel 224 px ImageNet-normalised inputs."""
    from sketchmine.data import animal_shape, preset
    from tests.helpers import per_class_subset

    return per_class_subset(animal_shape("test", preset("imagenet", 3, (224, 224))), 3, "3 per class")


@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_torchvision_googlenet_and_resnet50_in_chromium(tmp_path, imagenet_224, browser, arch):
    """torchvision GoogLeNet / ResNet-50 (random init, seed 0; no weights offline) at 224 px: an
    Inception / residual block output, a deeper layer and fc mined, the first units visualized
    (block outputs get their receptive field and deconvolution from the graph like any conv),
    and the report opened in Chromium: layer names listed, every patch and deconvolution loads."""
    import torch
    import torchvision

    from sketchmine.passes.deconv import deconvolve
    from sketchmine.passes.visualize import patches_of

    options, layers = TORCHVISION[arch]
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, **options).eval()
    ds, k, units = imagenet_224, 4, 2
    run = sketchmine.mine(net, ds, layers=layers, k=k, out=tmp_path / "run.zarr", batch_size=len(ds))
    assert run.complete and run.layers == layers and run.layer_shape("fc") == (10,)
    # a block output's receptive field comes from the graph: a grid with a stride, not the whole image
    block = layers[0]
    rf = run.store.group[f"layers/{block}"].attrs["receptive_field"]
    assert rf["stride"][0] > 0 and 1 < rf["size"][0] < 224, rf
    # ... and its deconvolution too: with the plain gradient rule it is autograd through the real module
    x = torch.stack([ds[i][1] for i in (0, 17)])
    got: list[torch.Tensor] = []

    class Reached(Exception):
        pass

    def grab(module, inputs, output):
        got.append(output)
        raise Reached  # nothing after the block is needed

    hook = dict(net.named_modules())[block].register_forward_hook(grab)
    xg = x.clone().requires_grad_(True)
    try:
        net(xg)
    except Reached:
        pass
    finally:
        hook.remove()
    (want,) = torch.autograd.grad(got[0][[0, 1], [3, 5], [4, 2], [6, 1]].sum(), xg)
    sig = deconvolve(net, x, block, [3, 5], [[4, 6], [2, 1]], method="gradient")
    assert sig.abs().amax() > 0
    torch.testing.assert_close(sig, want, rtol=1e-4, atol=1e-6)
    # the first units of each layer: one block of `units` units (batch = units · k entries)
    run = sketchmine.visualize(run, model=net, data=ds, batch_size=units * k, max_units=units)
    for name in layers:
        vis = run.store.group[f"layers/{name}"].attrs["visualized"]
        assert vis["units_done"] == units, (name, vis)
    assert patches_of(run, block, 0)["patches"].shape == (k, *rf["size"], 3)  # the field's crop
    index = write_report(run, tmp_path / "rep")
    page, problems = _open(browser, index.as_uri())
    page.wait_for_load_state("load")
    body = page.inner_text("body")
    assert all(name in body for name in layers)
    total, ok = _images_ok(page)
    assert total >= 1 and ok == total
    ids = layer_ids(run)
    for name in layers:
        page.click(f'a[href="layers/{ids[name]}.html"]')
        page.wait_for_selector("#unit-0")
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        assert page.inner_text("h1") == name
        assert f"patches for units 0..{units - 1} only" in page.inner_text("#pictures-note")
        for u in range(units):  # k patches and k deconvolutions per visualized unit, all decoded
            loaded = page.evaluate(f"""() => ['_p.png', '_d.png'].map(end =>
                [...document.querySelectorAll('#unit-{u} img')].filter(i => i.src.endsWith('{u}' + end))
                .map(i => i.naturalWidth))""")
            assert [len(w) for w in loaded] == [k, k] and min(min(w) for w in loaded) > 0, (name, u, loaded)
        total, ok = _images_ok(page)
        assert total == units * 2 * k + 1 and ok == total  # the strips and the class histogram
        page.go_back()  # one press of Back leaves the layer page (its page=1 hash adds no entry)
        page.wait_for_load_state("load")
        assert page.url == index.as_uri(), page.url
    assert problems == []


def test_output_units_are_named_by_their_class(tmp_path, runs, browser):
    """The logits' and the softmax's units are the classes: their cards and dashboards said only
    "unit 7" (UX audit). Named as text (the class names here hold markup); a conv unit is not."""
    plain, _ = runs
    index = write_report(plain, tmp_path / "rep", montages=0)
    ids = {p.stem.split("-", 1)[1]: p.stem for p in (index.parent / "layers").glob("*.html")}
    page, problems = _open(browser, (index.parent / "layers" / f"{ids['classifier.6']}.html").as_uri())
    page.wait_for_selector("#unit-3")
    assert page.inner_text("#unit-3 h3").startswith(f"unit 3 · {plain.class_names[3]} · max ")
    page.goto((index.parent / "units" / f"{ids['softmax']}.html").as_uri() + "#unit=4")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '4'")
    assert page.inner_text("#unit-number") == f"4 of 10 ({plain.class_names[4]})"
    page.goto((index.parent / "layers" / f"{ids['features.0']}.html").as_uri())
    page.wait_for_selector("#unit-3")
    assert page.inner_text("#unit-3 h3").startswith("unit 3 · max ")
    assert page.query_selector("h3 b") is None and problems == []


def test_the_summary_is_a_table_legible_at_800_px(tmp_path, runs, browser):
    """UX audit: the summary plot was a PNG scaled to the column (its cell text ~5 px high at 800 px)
    with no legend for its colours. The index draws the same cells as two tables (top, bottom): every
    layer's classes with their accuracy and count as the API gives them, each coloured as the picture
    colours it on a scale from the lowest accuracy shown (a 0-100 % scale drew a well-trained model's
    classes all one green), a legend, text at the page's size, nothing wider than the window; the
    picture stays linked, with a colour bar."""
    from sketchmine.present.plots import summary_figure
    from sketchmine.present.summary_grid import colour, floor, grid
    from sketchmine.results.numbers import percents

    plain, _ = runs
    index = write_report(plain, tmp_path / "rep")
    low = floor(grid(plain, 5))
    shown = [a for layer in plain.layers for a in plain.top_classes(layer, 5)["accuracy"].tolist()
             + plain.bottom_classes(layer, 5)["accuracy"].tolist() if not np.isnan(a)]
    assert low == min(np.floor(min(shown) * 20) / 20, 0.95)
    page = browser.new_page(viewport={"width": 800, "height": 900})
    page.goto(index.as_uri())
    tied = 0
    for side, classes in (("top", plain.top_classes), ("bottom", plain.bottom_classes)):
        rows = page.evaluate(f"""() => [...document.querySelectorAll('#summary-{side} tr')].slice(1).map(tr =>
            [tr.querySelector('th').textContent, [...tr.querySelectorAll('td')].map(td =>
                [td.innerText, getComputedStyle(td).backgroundColor, parseFloat(getComputedStyle(td).fontSize)])])""")
        assert [r[0] for r in rows] == plain.layers
        for (layer, cells) in rows:
            listed = classes(layer, 5)
            if plain.top_classes(layer, 5).attrs.get("all_tied"):
                tied += 1
                assert len(cells) == 1 and "classes tied" in cells[0][0]
                continue
            want = [*listed.iterrows(), *([None] * (5 - len(listed)))]
            assert len(cells) == 5
            for (text, bg, size), w in zip(cells, want):
                if w is None:
                    assert text == ""
                    continue
                name, r = w
                # one count of decimals in a row: an exact 100 % is "100.00" beside "95.00" (it was "100")
                assert text.split("\n")[:2] == [name, f"{percents([r['accuracy']])[0]} % ({int(r['count'])})"]

                rgb = tuple(int(colour(r["accuracy"], low)[i:i + 2], 16) for i in (1, 3, 5))
                assert bg == f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})" and size >= 10
    assert tied < 2 * len(plain.layers)  # some layer has classes to show
    assert page.inner_text(".legend").startswith(f"class accuracy: {low * 100:g} %")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800  # the two tables stack: nothing off-screen
    for side in ("top", "bottom"):
        assert page.evaluate(f"document.getElementById('summary-{side}').getBoundingClientRect().right") <= 800
    for link in ("summary.png", "summary.svg"):
        assert page.query_selector(f'a[href="{link}"]') and (index.parent / link).is_file()
    assert len(summary_figure(plain).axes) == 2  # the grid and its colour bar
    page.close()
