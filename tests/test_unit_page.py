"""The unit page (issue 16, presentation): the slide montage, `sketchmine unit` (tables and
--json, its numbers those of the Run readers) and the report's unit dashboard in a real
headless Chromium, on a real mined, visualized run of the embedded demo model.

UPDATE_DOCS_SCREENSHOTS=1 also writes the dashboard's screenshot to docs/unit_page.png."""
from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.present.montage import Slides, save_montage
from sketchmine.present.report import write_report
from sketchmine.present.report_unit import MONTAGES, montage_units
from sketchmine.results.unit_summary import QUANTILES
from tests.helpers import as_mined_without, per_class_subset
from tests.test_cli import sm
from tests.test_report import _images_ok, _open

LAYERS = ["features.6", "classifier.1"]
SHOWN = "features.6"     # visualized, with importance
BARE = "classifier.1"    # neither: its dashboard says how to add them
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def subset(demo_test_set):
    """60 real test images (6 per class)."""
    return per_class_subset(demo_test_set, 6, "unit page")


@pytest.fixture(scope="module")
def run(tmp_path_factory, subset):
    """The subset mined; features.6 visualized (its top-k, bottom-k and bin examples), ranked by
    importance, its effects and correlated units computed; classifier.1 has none of these."""
    base = tmp_path_factory.mktemp("unitpage")
    r = sketchmine.mine("demo", subset, out=base / "run.zarr", batch_size=60, layers=LAYERS, distributions=True)
    sketchmine.visualize(r, [SHOWN], data=subset, batch_size=256, examples="all")
    sketchmine.unit_importance(r, SHOWN, dataset=subset)
    sketchmine.unit_effects(r, SHOWN, data=subset)
    return sketchmine.open_run(r.path)


def test_example_positions_are_found_as_the_topk_defines_them(run, subset):
    """The forward pass that places bin examples, given the top-k's images, finds the top-k's
    own positions (the mining pass's record) on a conv layer (in-place ReLU after it) and a linear one."""
    import torch

    from sketchmine.passes.example_pictures import positions
    from sketchmine.passes.images import ImageCache
    from sketchmine.passes.reload import run_model, run_preprocessing

    net = run_model(run, None, None).module
    images = ImageCache(subset, run_preprocessing(run))
    for layer in LAYERS:
        _, index, yx = run.topk(layer)
        got = positions(net, layer, run.layer_shape(layer), index, images, 16, torch.device("cpu"))
        np.testing.assert_array_equal(got, yx, err_msg=layer)
    assert (yx[index >= 0] == -1).all()  # a linear layer's entries have no position


def test_bottom_and_bin_pictures_match_the_topk_pictures(run):
    """visualize(examples="all"): every image that is both a top-k entry and a bin example (or a
    bottom-k entry) of a unit gets the same position, patch and (within one level: another
    batch) deconvolution in both sets; the bottom-k's boxes are those of their positions."""
    top = {key: run.layer_array(SHOWN, key) for key in ("patches", "deconv", "boxes")}
    _, index, yx = run.topk(SHOWN)
    bins = run.layer_result(SHOWN, "bin_pictures", ("patches",))[0]["patches"]
    bin_deconv = run.layer_result(SHOWN, "bin_pictures", ("deconv",))[0]["deconv"]
    bin_yx = run.layer_result(SHOWN, "bin_pictures", ("yx",))[0]["yx"]
    examples = run.quantile_examples(SHOWN).reshape(len(index), -1)
    assert bins.shape[:2] == examples.shape and bins.shape[2:] == top["patches"].shape[2:]
    shared = 0
    for u in range(len(index)):
        for r, i in enumerate(index[u]):
            for j in np.nonzero(examples[u] == i)[0]:
                shared += 1
                assert (bin_yx[u, j] == yx[u, r]).all()
                np.testing.assert_array_equal(bins[u, j], top["patches"][u, r])
                assert np.abs(bin_deconv[u, j].astype(int) - top["deconv"][u, r]).max() <= 1
    assert shared >= 10
    assert (bin_yx[examples < 0] == -1).all()
    bottom = run.layer_result(SHOWN, "bottom_pictures", ("patches",))[0]["patches"]
    boxes = run.layer_result(SHOWN, "bottom_pictures", ("boxes",))[0]["boxes"]
    _, b_index, b_yx = run.bottomk(SHOWN)
    rf = run.layer_attrs(SHOWN)["receptive_field"]
    assert bottom.shape == top["patches"].shape
    ok = b_index >= 0
    want = np.asarray(rf["offset"]) + b_yx * np.asarray(rf["stride"])
    np.testing.assert_array_equal(boxes[..., :2][ok], want[ok])


def test_montage_is_a_slide_of_the_units_pictures(tmp_path, run):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = sketchmine.plots.unit_montage(run, SHOWN, 3)
    assert plt.get_fignums() == before  # object API: no pyplot figure left open
    assert tuple(fig.get_size_inches()) == (16.0, 9.0)
    shots = [save_montage(run, SHOWN, u, tmp_path / f"{u}.png") for u in (3, 4)]
    with Image.open(shots[0]) as im:
        a = np.asarray(im.convert("RGB"))
    with Image.open(shots[1]) as im:
        b = np.asarray(im.convert("RGB"))
    assert a.shape == (900, 1600, 3)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50 and a.std() > 20  # pictures and text, not blank
    assert (a != b).any()  # another unit, other pictures
    # the stored patches are in it: the darkest stored pixel's value appears in the patch grid
    patches = run.layer_array(SHOWN, "patches", slice(3, 4))[0]
    assert patches.min() in a[:, :560].min(axis=2)
    with pytest.raises(SketchmineError, match=f"sketchmine visualize {run.path} --layers {BARE}"):
        sketchmine.plots.unit_montage(run, BARE, 0)
    with pytest.raises(SketchmineError, match="its units are 0 to 95"):
        sketchmine.plots.unit_montage(run, SHOWN, 96)


def test_a_slide_filled_again_draws_what_a_new_one_draws(tmp_path, run):
    """The report fills one slide with each unit of a layer in turn (building it is a quarter of
    a slide's time): every unit's PNG is byte for byte the slide drawn anew, also after a unit
    with more classes, captions or words than the next (fewer top-k entries, no labels)."""
    from sketchmine.results.unit_summary import unit_summary

    drawn = Slides()
    infos = [unit_summary(run, SHOWN, u) for u in range(8)]
    infos[3] = {**infos[3], "top": infos[3]["top"][:4]}               # four entries: five captions empty
    infos[5] = {**infos[5], "classes_top": [], "moments": infos[5]["moments"]}  # "(no labels)"
    infos[6] = {**infos[6], "classes_top": infos[6]["classes_top"][:1]}
    for u, info in enumerate(infos):
        again = save_montage(run, SHOWN, u, tmp_path / f"again_{u}.png", info, drawn)
        new = save_montage(run, SHOWN, u, tmp_path / f"new_{u}.png", info)
        assert again.read_bytes() == new.read_bytes(), u
    assert drawn.last is not None  # one slide kept and filled again
    assert (tmp_path / "again_3.png").read_bytes() != (tmp_path / "again_2.png").read_bytes()


def _unit_json(run, layer: str, unit: int) -> dict:
    proc = sm("unit", str(run.path), layer, str(unit), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_unit_json_equals_the_run_readers(run):
    u = int(run.unit_importance(SHOWN)["unit"].iloc[1])  # the second most important unit
    d = _unit_json(run, SHOWN, u)
    values, index, yx = run.topk(SHOWN)
    ok = index[u] >= 0
    assert [e["value"] for e in d["top"]] == [float(v) for v in values[u][ok]]
    assert [e["image_index"] for e in d["top"]] == index[u][ok].tolist()
    assert [[e["y"], e["x"]] for e in d["top"]] == yx[u][ok].tolist()
    assert [e["path"] for e in d["top"]] == [str(p) for p in run.paths[index[u][ok]]]
    assert d["max"] == float(values[u, 0])
    # one vocabulary with the DataFrames ("cls", "acc" and "index" were `unit_classes`' class, accuracy, image_index)
    frame = run.unit_classes(SHOWN, u)
    assert set(d["top"][0]) == {"rank", "image_index", "path", "class", "label", "accuracy", "value", "y", "x"}
    for key in ("image_index", "class", "label", "accuracy", "value"):
        assert [e[key] for e in d["top"]] == frame[key].tolist(), key
    assert [e["rank"] for e in d["top"]] == frame.index.tolist()
    # classes among the top-k: counted by hand from the labels
    counts = collections.Counter(run.class_names[run.labels[i]] for i in index[u][ok])
    assert {c["class"]: c["count"] for c in d["classes_top"]} == dict(counts)
    acc = run.class_accuracy()["accuracy"]
    assert all(c["accuracy"] == pytest.approx(acc[c["class"]]) for c in d["classes_top"])
    # moments
    firing, count = run.layer_array(SHOWN, "firing")[u], run.layer_array(SHOWN, "max_count")[u]
    assert d["moments"] == {"images": int(count), "firing": int(firing), "density": firing / count,
                            "mean": float(run.layer_array(SHOWN, "max_mean")[u])}
    # importance: its row and rank
    imp = run.unit_importance(SHOWN)
    assert d["importance"]["rank"] == 2 and d["importance"]["prob_drop"] == float(imp["prob_drop"].iloc[1])
    # classes by mean over all images: the class statistics' row, highest first
    mean, n = run.class_stats(SHOWN)
    best = np.argsort(-mean[u], kind="stable")[:5]
    assert [c["class"] for c in d["class_means"]] == [run.class_names[c] for c in best]
    assert [c["mean"] for c in d["class_means"]] == [float(mean[u, c]) for c in best]
    assert [c["images"] for c in d["class_means"]] == [int(n[u, c]) for c in best]
    # the distribution sections, from their readers (or, on a run without them, a note)
    for section, reader in (("quantiles", "quantiles"), ("histogram", "histogram"), ("bottom", "bottomk"),
                            ("bins", "quantile_examples")):
        if d[section] is None:
            assert d["missing"][section], section
            continue
        assert hasattr(run, reader)
    if d["quantiles"] is not None:
        want = run.quantiles(SHOWN, np.asarray(QUANTILES))[u]
        assert d["quantiles"]["values"] == [None if not np.isfinite(v) else float(v) for v in want]
    if d["histogram"] is not None:
        edges, counts = run.histogram(SHOWN)
        assert d["histogram"]["counts"] == counts[u].tolist() and d["histogram"]["edges"] == edges[u].tolist()
        assert sum(d["histogram"]["counts"]) == count
    if d["bottom"] is not None:
        bv, bi, _ = run.bottomk(SHOWN)
        assert [e["image_index"] for e in d["bottom"]] == bi[u][bi[u] >= 0].tolist()
        assert [e["value"] for e in d["bottom"]] == [float(v) for v in bv[u][bi[u] >= 0]]
    if d["bins"] is not None:
        ex = run.quantile_examples(SHOWN)
        assert [[e["image_index"] for e in b["examples"]] for b in d["bins"]] == [[int(i) for i in row if i >= 0]
                                                                            for row in ex[u]]
    # effects: the unit's own (clean minus ablated, the stored change negated), largest first
    change = run.unit_effects(SHOWN).loc[u].to_numpy()
    effect = -change
    up = [e["effect"] for e in d["effects"]["up"]]
    assert up == sorted(up, reverse=True) and up[0] == float(effect.max()) and all(v > 0 for v in up)
    down = [e["effect"] for e in d["effects"]["down"]]
    assert down == sorted(down) and all(v < 0 for v in down)
    if down:
        assert down[0] == float(effect.min())
    names = list(run.unit_effects(SHOWN).columns)
    assert all(float(effect[names.index(e["class"])]) == e["effect"] for e in d["effects"]["up"] + d["effects"]["down"])
    units, r = run.correlated_units(SHOWN)
    assert [c["unit"] for c in d["correlated"]] == [int(v) for v in units[u] if v >= 0]
    assert [c["r"] for c in d["correlated"]] == [float(v) for v, w in zip(r[u], units[u]) if w >= 0]
    assert d["missing"] == {}
    # a layer without effects: the note names the command that adds them
    bare = _unit_json(run, BARE, 0)
    assert bare["effects"] is None and "sketchmine effects" in bare["missing"]["effects"]
    assert bare["histogram"] is not None  # mined with the distribution sketch: every layer has it


def test_a_run_mined_before_the_distribution_says_how_to_add_it(tmp_path, run, browser):
    """A copy of the run without the distribution arrays (as mined before them): the CLI and the
    dashboard say what is missing and that mining again adds it; nothing fails."""
    old = tmp_path / "old.zarr"
    shutil.copytree(run.path, old)
    as_mined_without(old, SHOWN, ("hist_edges", "hist_counts", "max_range", "sketch_counts", "sketch_top",
                                  "sketch_special", "example_edges", "example_index", "bottom_values",
                                  "bottom_image_index", "bottom_yx"))
    d = _unit_json(sketchmine.open_run(old), SHOWN, 3)
    for section in ("histogram", "quantiles", "bins", "bottom"):
        assert d[section] is None and "mine it again" in d["missing"][section], section
    assert d["top"] and d["effects"] is not None
    index = write_report(old, tmp_path / "rep", montages=0)
    page, problems = _open(browser, (index.parent / "units" / "00-features.6.html").as_uri() + "#unit=3")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '3'")
    for section in ("histogram", "bottom", "bins"):
        assert "mine it again" in page.inner_text(f"[data-missing={section}]")
    assert page.query_selector("#histogram") is None
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    total, ok = _images_ok(page)
    assert total >= 2 * run.k and ok == total and problems == []


def test_unit_tables_and_errors(run):
    proc = sm("unit", str(run.path), SHOWN, "5")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "max activation" in out and "firing density" in out and "importance rank" in out
    assert str(run.paths[run.topk(SHOWN)[1][5, 0]]) in out
    bare = sm("unit", str(run.path), BARE, "0")
    said = " ".join(bare.stdout.split())  # rich wraps at the terminal's width
    assert bare.returncode == 0 and "no importance: " in said
    assert f"compute it with `sketchmine importance {run.path} --layers {BARE}`" in said
    for args, said in (((SHOWN, "96"), "unit 96 is not in layer 'features.6'"),
                       ((SHOWN, "-1"), "unit -1 is not in layer"),
                       (("feature.6", "0"), "closest: features.6")):
        bad = sm("unit", str(run.path), *args)
        assert bad.returncode == SketchmineError.exit_code and bad.stdout == ""
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sketchmine: error: ") and said in lines[0], bad.stderr


def test_report_unit_dashboard_in_chromium(tmp_path, run, browser):
    index = write_report(run, tmp_path / "rep")
    rep = index.parent
    slides = montage_units(run, SHOWN, MONTAGES)
    assert len(slides) == MONTAGES and slides[0] == int(run.unit_importance(SHOWN)["unit"].iloc[0])
    assert sorted(int(p.stem) for p in (rep / "montage" / "00-features.6").glob("*.png")) == sorted(slides)
    assert not (rep / "montage" / "01-classifier.1").exists()  # no patches, no montage
    with Image.open(rep / "montage" / "00-features.6" / f"{slides[0]}.png") as im:
        assert im.size == (1600, 900)
    # the card of the most important unit links to its slide and its dashboard
    from sketchmine.present.report import PAGE_SIZE

    page, problems = _open(browser, (rep / "layers" / "00-features.6.html").as_uri()
                           + f"#page={slides[0] // PAGE_SIZE + 1}")
    page.wait_for_selector(f"#unit-{slides[0]}")
    card = f"#unit-{slides[0]}"
    assert page.get_attribute(f"{card} a.montage-link", "href").endswith(f"montage/00-features.6/{slides[0]}.png")
    page.click(f"{card} .dash-links a:first-child")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{slides[0]}'")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    total, ok = _images_ok(page)
    assert total >= 4 * run.k and ok == total  # top-9 and bottom-9 patches and deconvolutions, bin examples
    shown = page.evaluate("() => [...document.images].map(i => i.getAttribute('src').split('/').pop())")
    assert shown.count(f"{slides[0]}_qp.png") == shown.count(f"{slides[0]}_qd.png") >= 2  # each bin's
    assert shown.count(f"{slides[0]}_bp.png") == run.k  # example pictures too (the page read another key)
    text = page.inner_text("#dash")
    assert "firing density" in text and "importance rank" in text and "classes among its top 9 images" in text
    assert run.class_names[run.labels[run.topk(SHOWN)[1][slides[0], 0]]] in page.inner_text("#examples")
    assert len(page.query_selector_all("#effects tbody tr")) >= 1
    first = page.query_selector("#correlated a")  # a correlated unit opens its dashboard
    other = int(first.get_attribute("href").split("=")[1])
    first.click()
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{other}'")
    page.go_back()
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{slides[0]}'")
    assert page.query_selector("#histogram") is not None  # the histogram, the top-k, bottom-k and bins marked
    assert len(page.query_selector_all("#histogram .mark-top")) == run.k
    tallest = page.evaluate("() => Math.max(...[...document.querySelectorAll('#histogram .hist-bar')]"
                            ".map(r => r.getBBox().height))")
    assert tallest > 100  # the bars are drawn to their counts (no stylesheet rule of the same name clips them)
    assert len(page.query_selector_all("#histogram .mark-bottom")) == run.k
    assert len(page.query_selector_all("#histogram .mark-bin")) >= 2
    assert page.query_selector("[data-missing]") is None
    page.click("#next-unit")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{slides[0] + 1}'")
    page.click("#prev-unit")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{slides[0]}'")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    shot = tmp_path / "unit_page.png"
    page.set_viewport_size({"width": 1000, "height": 1100})
    page.screenshot(path=str(shot), full_page=False)
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"))
        assert im.size == (1000, 1100) and len(np.unique(arr.reshape(-1, 3), axis=0)) > 50
        if os.environ.get("UPDATE_DOCS_SCREENSHOTS"):
            im.convert("RGB").quantize(64).save(DOCS / "unit_page.png", optimize=True)
    # a layer with neither patches nor importance: notes that say how to add them, no broken image
    page.goto((rep / "units" / "01-classifier.1.html").as_uri() + "#unit=7")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '7'")
    assert f"sketchmine importance {run.path} --layers {BARE}" in page.inner_text("[data-missing=importance]")
    assert "sketchmine effects" in page.inner_text("[data-missing=effects]")
    for group in ("bottom_pictures", "bin_pictures"):  # examples listed as text: their pictures are one command away
        assert (f"no pictures of these images: sketchmine visualize {run.path} --layers {BARE} --examples all"
                in page.inner_text(f"[data-missing={group}]"))
    total, ok = _images_ok(page)
    assert ok == total and page.query_selector("#montage-link") is None
    assert problems == []


def test_report_without_montages(tmp_path, run):
    write_report(run, tmp_path / "rep", montages=0)
    assert not (tmp_path / "rep" / "montage").exists()
    assert (tmp_path / "rep" / "units" / "00-features.6.html").is_file()
    shutil.rmtree(tmp_path / "rep")


def test_dashboard_numbers_read_as_the_console_writes_them(tmp_path, browser):
    """dom.js's number format is Python's ".<p>g" (what `sketchmine unit` prints): exact binary
    ties rounded half to even (quantiles are sketch bucket bounds, often ties), trailing zeros
    dropped, Python's exponent form."""
    dom = Path(sketchmine.__file__).parent / "present" / "report_assets" / "dom.js"
    page_file = tmp_path / "fmt.html"
    page_file.write_text(f'<!doctype html><script src="{dom.as_uri()}"></script>', encoding="utf-8")
    rng = np.random.default_rng(7)
    values = [4.5625, 4.3125, -4.5625, 2.5, 3.5, 0.000123456, 1.5e-05, -2.25e-06, 12345.5, 99995.0, 9.9995,
              1.89, 1.0, 100.0, 123456.0, 0.0001, 1e-4 * 0.5, 7.0 / 3.0, *rng.normal(0, 50, 40).tolist(),
              *(rng.integers(1, 4096, 40) / 2.0 ** rng.integers(0, 12, 40)).tolist()]  # exact binary values
    page = browser.new_page()
    page.goto(page_file.as_uri())
    for p in (3, 4, 5):
        got = page.evaluate(f"vs => vs.map(v => window.sketchmineDom.fmt(v, {p}))", values)
        assert got == [format(v, f".{p}g") for v in values], p
    page.close()


# ---- reading the report: numbers, bins, the number box, sorted columns (UX audit F10, F11, F16) ----

@pytest.fixture(scope="module")
def rep(tmp_path_factory, run) -> Path:
    """The run's report (no slides: they are not read here)."""
    return write_report(run, tmp_path_factory.mktemp("reading") / "rep", montages=0).parent


def _lines(page, selector: str) -> list[int]:
    """How many lines the text of each element matching `selector` takes on the page."""
    return page.evaluate("""s => [...document.querySelectorAll(s)].map(e => {
        const r = document.createRange(); r.selectNodeContents(e);
        return new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top))).size; })""",
                         selector)


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def _close(text: str, value: float) -> bool:
    """`text` is `value` rounded to the decimals it shows."""
    return abs(float(text) - value) <= 0.5 * 10 ** -_decimals(text) * (1 + 1e-9)


def test_bins_read_as_the_cli_writes_them_on_one_line_each(rep, run, browser):
    """The dashboard's "by activation bin": each label is the bin and its range as `sketchmine
    unit` writes it ("1 … 1.125"), each on one line; "+N more" on one line; the strips of every
    row start at one x, at 1280 and at 800 px, and nothing overflows the page."""
    from sketchmine.present.report_unit import BIN_EXAMPLES

    u = 5
    d = _unit_json(run, SHOWN, u)
    held = [b for b in d["bins"] if b["examples"]]
    shown = [b for b in d["bins"] if held[0]["bin"] <= b["bin"] <= held[-1]["bin"]][::-1]  # highest first
    want = [[f"bin {b['bin']}", f"{b['lo']:.4g} … {b['hi']:.4g}"] for b in shown]
    assert len({w[1] for w in want}) == len(want)  # the CLI's edges tell the bins apart here
    more = [f"+{len(b['examples']) - BIN_EXAMPLES} more" for b in shown if len(b["examples"]) > BIN_EXAMPLES]
    page, problems = _open(browser, (rep / "units" / "00-features.6.html").as_uri() + f"#unit={u}")
    for width in (1280, 800):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
        got = page.evaluate("() => [...document.querySelectorAll('#examples .bin-label')]"
                            ".map(l => [...l.children].map(c => c.textContent))")
        assert got == want, width
        assert page.evaluate("() => [...document.querySelectorAll('#examples .cap.more')].map(c => c.textContent)") == more
        assert set(_lines(page, "#examples .bin-label > div")) == {1}, width
        assert set(_lines(page, "#examples .cap.more")) <= {1}, width
        lefts = page.evaluate("() => [...document.querySelectorAll('#examples .strip')].map(s => s.getBoundingClientRect().left)")
        assert len(lefts) >= len(want) and max(lefts) - min(lefts) < 0.5, width
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    assert more  # the "+N more" note names the command that lists them, filled in for this unit
    command = f"sketchmine unit {shlex.quote(str(Path(run.path).resolve()))} features.6 {u} --json"  # read from anywhere
    assert page.inner_text("#bins-more code") == command
    assert f"; {command} lists every kept example" in page.inner_text("#bins-more")
    assert problems == []


def test_one_quantity_reads_alike_and_a_column_keeps_its_decimals(rep, run, browser):
    """A card's header max is its first entry's value, written alike; a card's values, a
    dashboard's top-k and bottom-k values and its class-mean column each keep one count of
    decimals, every one the stored value rounded, and the unit's slide as its card; no "-0" anywhere."""
    from sketchmine.present.montage import unit_montage
    from sketchmine.present.report import PAGE_SIZE

    values, index, _ = run.topk(SHOWN)
    page, problems = _open(browser, (rep / "layers" / "00-features.6.html").as_uri())
    page.wait_for_selector(".card")
    cards = page.evaluate("""() => [...document.querySelectorAll('.card')].map(c => [c.id,
        c.querySelector('h3').textContent, [...c.querySelectorAll('.cap .value')].map(v => v.textContent)])""")
    assert len(cards) == PAGE_SIZE
    for cid, head, shown in cards:
        u = int(cid.split("-")[1])
        ok = index[u] >= 0
        assert head.endswith(f"max {shown[0]}") and len(shown) == ok.sum(), (u, head, shown)
        assert len({_decimals(t) for t in shown}) == 1, (u, shown)
        assert all(_close(t, float(v)) for t, v in zip(shown, values[u][ok])), (u, shown)
    for cid, _, shown in cards[:4]:  # the unit's slide writes its nine values as its card does
        u = int(cid.split("-")[1])
        fig = unit_montage(run, SHOWN, u)
        said = [t.get_text().split("  ")[1] for ax in fig.axes for t in ax.texts if t.get_text().count("  ") == 1]
        assert said == shown, (u, said, shown)
        assert shown[0] in [t.get_text() for t in fig.texts], u  # the panel's max activation as the card's header
    mean, _ = run.class_stats(SHOWN)
    bv, bi, _ = run.bottomk(SHOWN)
    for u in (0, 5, 17):
        page.goto((rep / "units" / "00-features.6.html").as_uri() + f"#unit={u}")
        page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
        means = page.evaluate("() => [...document.querySelectorAll('#class-means tbody tr')].map(r => r.cells[1].textContent)")
        best = np.argsort(-mean[u], kind="stable")[:len(means)]
        assert len(means) == 5 and len({_decimals(t) for t in means}) == 1, means
        assert all(_close(t, float(mean[u, c])) for t, c in zip(means, best)), means
        rows = page.evaluate("() => [...document.querySelectorAll('#examples .strip')].map(s =>"
                             " [...s.querySelectorAll('.cap .value')].map(v => v.textContent)).filter(r => r.length)")
        top, bottom = rows[0], rows[1]
        assert all(_close(t, float(v)) for t, v in zip(top, values[u][index[u] >= 0])) and len(top) == run.k
        assert all(_close(t, float(v)) for t, v in zip(bottom, bv[u][bi[u] >= 0])) and len(bottom) == run.k
        assert len({_decimals(t) for t in top}) == 1 and len({_decimals(t) for t in bottom}) == 1, rows
        assert page.evaluate("() => document.getElementById('overview').rows[0].cells[1].textContent") == top[0]
        labels = page.evaluate("() => [...document.getElementById('overview').rows].map(r => r.cells[0].textContent)"
                               ".filter(t => t.startsWith('quantile '))")
        assert labels == [f"quantile {q * 100:g} %" for q in QUANTILES]  # as `sketchmine unit` writes them
        assert page.inner_text("#quantile-note") == ("quantiles: the sketch's estimates, each within 1.5 % of the true "
                                                     "value (0 % and 100 % are exact)")  # its resolution, said
        assert not re.search(r"(?<![\w.])-0(\.0*)?(?![\d.])", page.inner_text("#dash"))
    assert problems == []


def test_column_numbers_are_pythons_fixed_decimals(tmp_path, browser):
    """dom.column: the decimals that give the column's largest magnitude 4 significant digits,
    each value as Python's format(v, ".<d>f") writes it (exact binary ties half to even), a
    nonzero value that rounds to zero with one significant digit, and never "-0"."""
    dom = Path(sketchmine.__file__).parent / "present" / "report_assets" / "dom.js"
    (tmp_path / "c.html").write_text(f'<!doctype html><script src="{dom.as_uri()}"></script>', encoding="utf-8")
    rng = np.random.default_rng(3)
    columns = [[1.0476, 1.78, 1.719, 1.75], [0.657, 0.6208, 0.5405], [0.9999987, 0.999998, 0.5], [2.99996, 1.0], [-0.0, 0.5, -1e-9, -0.0004], [2.5, 0.125, -0.0625],
               [12345.5, 3.25], [0.0, 0.0], [9.9996, 1.0], *[(rng.integers(-4096, 4096, 6) / 2.0 ** rng.integers(0, 14)).tolist()
                                                            for _ in range(30)],
               *[(rng.normal(0, 1, 5) * 10.0 ** rng.integers(-3, 5)).tolist() for _ in range(30)]]

    def python(col: list[float]) -> list[str]:
        big = max(abs(v) for v in col)
        if big == 0:
            return ["0"] * len(col)
        e = int(format(big, ".3e").split("e")[1])
        d = max(0, 3 - e)
        while d < max(0, 6 - e) and any(float(format(v, f".{d}f")) not in (v, 0) and float(format(v, f".{d}f")).is_integer()
                                        for v in col):
            d += 1  # never a whole number the value is not ("1.000" for 0.9999987)
        out = []
        for v in col:
            t = format(v, f".{d}f")
            out.append(format(v, ".1g") if float(t) == 0 and v != 0 else t.lstrip("-") if float(t) == 0 else t)
        return out

    page = browser.new_page()
    page.goto((tmp_path / "c.html").as_uri())
    got = page.evaluate("cs => cs.map(c => window.sketchmineDom.column(c))", columns)
    page.close()
    assert got == [python(c) for c in columns]
    assert not any(t.startswith("-0") and float(t) == 0 for col in got for t in col)
    from sketchmine.results.numbers import column  # its Python twin (the importance table's columns)

    assert [column(c) for c in columns] == got


def test_cards_say_each_class_once_with_its_count(rep, run, browser):
    """The cards' "Classes with performance" line: each class of the top-k once, most images first
    (ties: in order of their best image), with its count and class accuracy (the captions give the
    images one by one)."""
    from sketchmine.present.report_data import percent

    _, index, _ = run.topk(SHOWN)
    acc = run.class_accuracy()["accuracy"]
    page, problems = _open(browser, (rep / "layers" / "00-features.6.html").as_uri())
    page.wait_for_selector(".card")
    lines = page.evaluate("() => [...document.querySelectorAll('.card')].map(c => [c.id, c.querySelector('.perf').textContent])")
    for cid, line in lines:
        u = int(cid.split("-")[1])
        names = [run.class_names[run.labels[i]] for i in index[u][index[u] >= 0]]
        counts = collections.Counter(names)
        if len(counts) == len(names) > 1:
            want = f"a different class for each of the {len(names)} images"
        else:
            order = sorted(dict.fromkeys(names), key=lambda c: -counts[c])  # stable: first appearance breaks ties
            want = ", ".join(f"{counts[c]} {c} ({percent(acc[c], 2)} %)" for c in order)
        assert line == f"Classes with performance: {want}", (u, line)
    assert any(", " in line for _, line in lines) and problems == []


def test_the_number_box_shows_a_unit_of_the_layer_and_says_when_it_moved(rep, run, browser):
    last = run.layer_shape(SHOWN)[0] - 1
    page, problems = _open(browser, (rep / "units" / "00-features.6.html").as_uri() + f"#unit={last}")
    for start, typed, shown in ((last, "200", last), (3, "200", last), (3, "-4", 0)):
        page.goto((rep / "units" / "00-features.6.html").as_uri() + f"#unit={start}")
        page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{start}'")
        page.fill("#unit-input", typed)
        page.dispatch_event("#unit-input", "change")
        page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{shown}'")
        assert page.input_value("#unit-input") == str(shown)
        assert page.is_visible("#unit-note")
        assert page.inner_text("#unit-note") == f"no unit {typed} in this layer (its units are 0 to {last}): showing unit {shown}"
    page.set_viewport_size({"width": 800, "height": 900})  # the note takes its own room, not the buttons'
    assert set(_lines(page, "nav.pager > button")) == {1}
    page.click("#next-unit")  # another unit shown: the note is gone
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '1'")
    assert not page.is_visible("#unit-note")
    page.fill("#unit-input", "7")
    page.dispatch_event("#unit-input", "change")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '7'")
    assert not page.is_visible("#unit-note") and problems == []
    # a link asking for a unit the layer lacks says so too (#unit=500 showed the last unit without a word)
    for asked, shown, said in (("500", last, f"no unit 500 in this layer (its units are 0 to {last}): showing unit {last}"),
                               ("abc", 0, "no unit 'abc' in this layer: showing unit 0")):
        fresh, problems = _open(browser, (rep / "units" / "00-features.6.html").as_uri() + f"#unit={asked}")
        fresh.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{shown}'")
        assert fresh.is_visible("#unit-note") and fresh.inner_text("#unit-note") == said and problems == []
        fresh.close()


def test_a_sorted_column_says_which_way(rep, run, browser):
    """The importance table arrives most important first: its prob. drop header says descending
    (▼), the others that they sort (⇅); a click moves the mark; the order is the one marked."""
    page, problems = _open(browser, (rep / "layers" / "00-features.6.html").as_uri())
    page.wait_for_selector("#importance th[aria-sort]")

    def marks():
        return page.evaluate("""() => [...document.querySelectorAll('#importance th')].map(h =>
            [h.getAttribute('aria-sort'), getComputedStyle(h, '::after').content])""")

    def column(c):
        return page.evaluate(f"() => [...document.querySelectorAll('#importance tbody tr')]"
                             f".map(r => parseFloat(r.cells[{c}].getAttribute('data-v')))")

    got = marks()
    assert got[1] == ["descending", '" ▼"'] and all(m == ["none", '" ⇅"'] for i, m in enumerate(got) if i != 1)
    drops = [v for v in column(1) if not np.isnan(v)]
    assert drops == sorted(drops, reverse=True) and drops[0] == pytest.approx(run.unit_importance(SHOWN)["prob_drop"].max())
    page.click("#importance th:nth-child(2)")  # the marked column again: reversed
    assert marks()[1] == ["ascending", '" ▲"']
    page.click("#importance th:nth-child(1)")
    got = marks()
    assert got[0] == ["ascending", '" ▲"'] and got[1][0] == "none"
    assert column(0) == sorted(column(0)) and problems == []


def test_a_unit_that_changes_nothing_says_so_instead_of_empty_columns(rep, run, browser):
    """A unit whose zeroing leaves every class's mean unchanged (one that never fires) showed two
    empty columns under "pushed up" / "pushed down", in the CLI and on its dashboard."""
    import io

    from rich.console import Console

    from sketchmine.present.unit_console import print_unit

    effects = run.unit_effects(SHOWN)
    dead = [int(u) for u, row in effects.iterrows() if not (row.to_numpy() != 0).any()]
    live = next(int(u) for u, row in effects.iterrows() if (row.to_numpy() != 0).any())
    assert dead, "the run needs a unit that never fires in features.6"
    out = io.StringIO()
    print_unit(run.path, SHOWN, dead[0], Console(file=out, width=250))
    assert "(none: zeroing it leaves every class's mean unchanged)" in out.getvalue()
    out = io.StringIO()
    print_unit(run.path, SHOWN, live, Console(file=out, width=250))
    assert "(none:" not in out.getvalue()
    for u, said in ((dead[0], True), (live, False)):
        page, problems = _open(browser, (rep / "units" / "00-features.6.html").as_uri() + f"#unit={u}")
        page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
        assert (page.query_selector("#effects-none") is not None) == said
        assert (page.query_selector("#effects") is not None) == (not said) and problems == []
        page.close()


def test_both_drops_read_in_percentage_points_everywhere(rep, run, browser):
    """A unit's probability drop and accuracy drop when zeroed are written alike, in percentage
    points (the probability's was a fraction, "0.005684", beside "0.45 pt"): the layer page's
    table and card, the dashboard and `sketchmine unit` all write the stored drops so, the
    probability's with 4 significant digits (the table's column has them for its largest)."""
    from sketchmine.present.report import PAGE_SIZE
    from sketchmine.results.numbers import column, percents, significant

    first = run.unit_importance(SHOWN).iloc[0]
    u, p, a = int(first["unit"]), significant(first["prob_drop"] * 100, ".4g"), percents([first["acc_drop"]])[0]
    assert float(p) != 0 and float(p) != float(first["prob_drop"])  # this unit tells the two units apart
    page, problems = _open(browser, (rep / "layers" / "00-features.6.html").as_uri() + f"#page={u // PAGE_SIZE + 1}&unit={u}")
    page.wait_for_selector(f"#unit-{u} .imp")
    units = run.layer_shape(SHOWN)[0]  # of how many, as the dashboard says it
    assert page.inner_text(f"#unit-{u} .imp") == f"importance rank 1 of {units}: prob. drop {p} pt, accuracy drop {a} pt"
    head = page.evaluate("() => [...document.querySelectorAll('#importance th')].map(h => h.textContent)")
    assert head[:3] == ["unit", "prob. drop (pt)", "acc. drop (pt)"]
    in_table = column([v * 100 for v in run.unit_importance(SHOWN)["prob_drop"]])[0]  # one count of decimals
    assert float(in_table) == pytest.approx(float(p), abs=1e-4)
    assert page.evaluate("() => [...document.querySelector('#importance tbody tr').cells].slice(0, 3)"
                         ".map(c => c.textContent)") == [str(u), in_table, a]
    page.goto((rep / "units" / "00-features.6.html").as_uri() + f"#unit={u}")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
    rows = dict(page.evaluate("() => [...document.getElementById('overview').rows].map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    assert rows["prob. drop when zeroed"] == f"{p} pt" and rows["accuracy drop when zeroed"] == f"{a} pt"
    assert problems == []
    said = sm("unit", str(run.path), SHOWN, str(u))
    assert said.returncode == 0 and f"{p} pt / {a} pt" in said.stdout


def test_a_slides_maximum_is_written_as_its_cards_header(run):
    """The slide's panel wrote the maximum with 4 significant digits ("14.2") over captions with
    one count of decimals ("14.20"); it is written in the captions' column, as the card's header."""
    from sketchmine.present.montage import _facts, unit_info

    info = unit_info(run, SHOWN, 5)
    info["max"] = 14.2
    for e, v in zip(info["top"], (14.2, 9.5, 3.25)):
        e["value"] = v
    assert dict(_facts(info))["max activation"] == "14.20"


def test_one_units_numbers_read_alike_in_console_dashboard_table_and_card(rep, run, browser):
    """A unit's probability drop reads the same in `sketchmine unit`, its dashboard, its card and
    the layer's importance table ("0.7310" everywhere, not "0.731" beside "0.7310"); its effects are
    in percentage points as that drop (not probability fractions beside it); its maximum, mean and
    quantiles, its top and bottom values, class means, bin edges and correlations are written
    alike in the console and on the dashboard."""
    import io

    from rich.console import Console

    from sketchmine.present.unit_console import print_unit

    imp = run.unit_importance(SHOWN)
    effects = run.unit_effects(SHOWN)
    units = [int(imp["unit"][0]), int(imp["unit"][len(imp) // 2]),
             next(int(u) for u, row in effects.iterrows() if (row.to_numpy() != 0).any())]
    layer, problems = _open(browser, (rep / "layers" / "00-features.6.html").as_uri())
    layer.wait_for_selector("#importance tbody tr")
    table = dict(layer.evaluate("() => [...document.querySelectorAll('#importance tbody tr')]"
                                ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    dash, more = _open(browser, (rep / "units" / "00-features.6.html").as_uri())
    for u in units:
        out = io.StringIO()
        print_unit(run.path, SHOWN, u, Console(file=out, width=250))
        text = out.getvalue()
        row = imp[imp["unit"] == u].iloc[0]
        drop = f"{float(row['prob_drop']) * 100:.4f}"  # an exact 0 too: "0.0000", as the table's column
        assert table[str(u)] == drop and f"{drop} pt / " in text, (u, table[str(u)], drop)
        layer.evaluate(f"() => {{ location.hash = 'page=1&unit={u}'; }}")
        if u < 24:  # the first page's cards
            card = layer.inner_text(f"#unit-{u} .imp")
            assert f"prob. drop {drop} pt," in card, card
        dash.evaluate(f"() => {{ location.hash = 'unit={u}'; }}")
        dash.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
        overview = dict(dash.evaluate("() => [...document.getElementById('overview').rows]"
                                      ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
        assert overview["prob. drop when zeroed"] == f"{drop} pt"
        for label in ("max activation", "mean of image maxima", *[k for k in overview if k.startswith("quantile ")]):
            console_label = "max activation" if label == "max activation" else label
            if label.startswith("quantile "):
                pattern = rf"│\s*{re.escape(label[len('quantile '):])} │\s*{re.escape(overview[label])} │"
            else:
                pattern = rf"│ {re.escape(console_label)}\s*│\s*{re.escape(overview[label])} │"
            assert re.search(pattern, text), (u, label, overview[label])
        shown_effects = dash.evaluate("() => [...document.querySelectorAll('#effects tbody tr')]"
                                      ".map(r => [...r.cells].map(c => c.textContent))")
        for cls_up, up, cls_down, down in shown_effects:
            for cls, v in ((cls_up, up), (cls_down, down)):
                if cls:
                    assert re.fullmatch(r"[+-]\d+\.\d{4,}", v) and f"{cls} {v}" in text, (u, cls, v)
        cells = dash.evaluate("() => [...document.querySelectorAll('#class-means tbody tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent])")
        assert cells and all(f"{c} ({m})" in text for c, m in cells), cells
        corr = dash.inner_text("p.correlated")
        for other, r in re.findall(r"unit (\d+) \(r = ([-\d.]+)\)", corr):
            assert re.search(rf"│\s*{other} │\s*{re.escape(r)} │", text), (u, other, r)
        ranges = dash.evaluate("() => [...document.querySelectorAll('#examples .bin-range')].map(e => e.textContent)")
        assert ranges and all(f"│ {r}" in text for r in ranges), ranges
    assert problems == [] and more == []
    layer.close()
    dash.close()


def test_points_and_enough_are_their_dom_twins(tmp_path, browser):
    """numbers.points (a probability change in pt, 4 decimals) and numbers.enough (the digits that
    keep bin edges apart) write what dom.js's twins write, exact binary ties (half to even)
    included: percent rounded them away from zero on the dashboard."""
    from sketchmine.results.numbers import enough, percent, points

    dom = Path(sketchmine.__file__).parent / "present" / "report_assets" / "dom.js"
    (tmp_path / "p.html").write_text(f'<!doctype html><script src="{dom.as_uri()}"></script>', encoding="utf-8")
    rng = np.random.default_rng(11)
    values = [0.0, 0.005684, -0.005684, 0.000625, -0.000625, 1e-9, -1e-9, 0.9999999, 1.0, 0.00731, 0.5, 2.5e-7,
              *(rng.normal(0, 0.01, 40)).tolist(), *(rng.integers(-4096, 4096, 40) / 2.0 ** 20).tolist()]
    edges = [[0.0, 0.25, 0.5, 0.75], [1.0, 1.0000001, 1.0000002], [1.0, 1.125, 1.25], [-0.1875, -0.15625, -0.125],
             *[(np.cumsum(rng.random(6)) * 10.0 ** rng.integers(-3, 3)).tolist() for _ in range(20)]]
    page = browser.new_page()
    page.goto((tmp_path / "p.html").as_uri())
    got = page.evaluate("vs => [vs.map(v => window.sketchmineDom.points(v)), vs.map(v => window.sketchmineDom.points(v, true)),"
                        " vs.map(v => window.sketchmineDom.percent(v, 3))]", values)
    assert got == [[points(v) for v in values], [points(v, sign=True) for v in values], [percent(v, 3) for v in values]]
    assert points(0.005684) == "0.5684" and points(0.005684, sign=True) == "+0.5684" and points(-0.000625) == "-0.0625"
    assert points(0.0) == "0.0000" and points(3e-8) == "0.000003" and points(None) == "-"
    assert points(1e-9, sign=True) == "< 0.000001" and points(-1e-9) == "> -0.000001"  # no "+< …"
    assert page.evaluate("es => es.map(e => window.sketchmineDom.enough(e, 4))", edges) == [enough(e) for e in edges]
    assert enough([1.0, 1.125, 1.25]) == 4 and enough([1.0, 1.0000001]) == 8
    page.close()


def test_the_dashboards_hints_name_the_runs_absolute_path(run, tmp_path, monkeypatch, browser):
    """The report is read from its own folder: every command its dashboards name (how to add
    effects, importance, pictures) says where the run is, quoted for a shell (a folder with a
    space broke the pasted command), and is set as code (it broke after "--"). The visualize
    hint did, the others named the path as given ("run.zarr", from wherever `report` was called)."""
    from sketchmine.cli.parser import build_parser

    home = tmp_path / "my runs"
    shutil.copytree(run.path, home / "run.zarr")
    monkeypatch.chdir(home)
    out = write_report("run.zarr", tmp_path / "rep", montages=0).parent
    data = (out / "dash" / "01-classifier.1" / "unit_0000.js").read_text()
    missing = json.loads(data[data.index("["):data.rindex("]") + 1])[0]["missing"]
    where = str((home / "run.zarr").resolve())
    assert {"effects", "importance"} <= missing.keys()
    page, problems = _open(browser, (out / "units" / "01-classifier.1.html").as_uri() + "#unit=0")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '0'")
    shown = page.evaluate("() => [...document.querySelectorAll('p.missing code')].map(c => c.textContent)")
    commands = [shlex.split(c) for c in shown]
    assert {c[1] for c in commands} >= {"effects", "importance"} and problems == []
    for words in commands:
        assert words[0] == "sketchmine" and where in words, words  # the path one word, as a shell reads it
        args = build_parser().parse_args(words[1:])  # a command the CLI takes
        assert str(args.run) == where and args.layers == ["classifier.1"], words
    assert all(where not in why or f"{shlex.quote(where)} --layers" in why for why in missing.values() if "`" in why)
    page.close()

def test_slide_effects_and_unit_tables_say_what_the_dashboard_says(rep, run, browser):
    """The slide wrote its mean and rates with other digits than the dashboard ("1.99" beside
    "1.986", "31.5%" beside "31.50 %"); `sketchmine effects` named a dead unit's class both ways
    ("bear 0" pushed up and down) where `unit` and the dashboard say it pushes none; `unit`'s
    "pushed down" column had no unit; at 60 columns `unit` cut the image paths ("horse/00148.p…")."""
    import io

    from rich.console import Console

    from sketchmine.present.effects_table import effects_table
    from sketchmine.present.montage import unit_montage
    from sketchmine.present.unit_console import print_unit
    from sketchmine.results.unit_summary import LayerSummary

    effects = run.unit_effects(SHOWN)
    dead = [int(u) for u, row in effects.iterrows() if not (row.to_numpy() != 0).any()]
    page, problems = _open(browser, (rep / "units" / "00-features.6.html").as_uri())
    for u in (3, dead[0]):
        page.evaluate(f"() => {{ location.hash = 'unit={u}'; }}")
        page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
        overview = dict(page.evaluate("() => [...document.getElementById('overview').rows]"
                                      ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
        said = [t.get_text() for t in unit_montage(run, SHOWN, u).texts]
        for label in ("mean of image maxima", "firing density"):
            shown = overview[label].split(" (")[0]  # the dashboard's "0 % (0 of 60 images > 0)"
            assert label in said and shown in said, (u, label, shown, said)
    out = io.StringIO()
    Console(file=out, width=300).print(effects_table(run, SHOWN, len(effects)))
    row = next(line for line in out.getvalue().splitlines() if re.match(rf"│\s*{dead[0]} │", line))
    assert row.split("│")[3].strip() == row.split("│")[4].strip() == "(none)", row
    out = io.StringIO()
    print_unit(run.path, SHOWN, 3, Console(file=out, width=250))
    assert "pushed down (pt)" in out.getvalue()
    out = io.StringIO()
    print_unit(run.path, SHOWN, 3, Console(file=out, width=60))
    top = LayerSummary(run, SHOWN).unit(3)["top"]
    table = out.getvalue().split(f"top {len(top)} images")[1].split("bottom")[0]
    paths = "".join(line.split("│")[-2].strip() for line in table.splitlines() if line.startswith("│"))
    assert "…" not in paths and all(e["path"] in paths for e in top), table  # folded, whole
    assert problems == []
    page.close()


def test_units_with_one_drop_share_a_rank_and_say_they_tie(rep, run, browser):
    """Units whose zeroing changes nothing (a drop of exactly 0) read as ranked 78, 79, … 86 by
    their unit numbers alone: every unit's rank is 1 + the units with a larger probability drop,
    and where others share its drop the card, the dashboard, `sketchmine unit` (and its JSON)
    and the slide say how many."""
    import io

    from rich.console import Console

    from sketchmine.present.montage import unit_montage
    from sketchmine.present.report import PAGE_SIZE
    from sketchmine.present.unit_console import print_unit
    from sketchmine.results.unit_summary import LayerSummary

    table = run.unit_importance(SHOWN)
    drops = table["prob_drop"].to_numpy()
    zero = [int(u) for u, d in zip(table["unit"], drops) if d == 0]
    assert len(zero) >= 2, "the run needs units whose zeroing changes nothing in features.6"
    units, summary = len(table), LayerSummary(run, SHOWN)
    for u, d in zip(table["unit"].astype(int), drops):
        imp = summary.unit(u)["importance"]
        assert imp["rank"] == 1 + int((drops > d).sum()) and imp["tied"] == int((drops == d).sum()), (u, imp)
    u, rank, others = zero[-1], 1 + int((drops > 0).sum()), len(zero) - 1  # below them: units zeroing helps
    assert _unit_json(run, SHOWN, u)["importance"] == {**summary.unit(u)["importance"], "rank": rank, "tied": others + 1}
    said = f"{rank} of {units} (tied with {others} unit{'s' if others > 1 else ''})"
    out = io.StringIO()
    print_unit(run.path, SHOWN, u, Console(file=out, width=250))
    assert re.search(rf"importance rank\s+│\s+{re.escape(said)}", out.getvalue()), out.getvalue()
    assert said in [t.get_text() for t in unit_montage(run, SHOWN, u).texts]
    page, problems = _open(browser, (rep / "units" / "00-features.6.html").as_uri() + f"#unit={u}")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
    overview = dict(page.evaluate("() => [...document.getElementById('overview').rows]"
                                  ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    assert overview["importance rank"] == said
    page.goto((rep / "layers" / "00-features.6.html").as_uri() + f"#page={u // PAGE_SIZE + 1}&unit={u}")
    page.wait_for_selector(f"#unit-{u} .imp")
    assert page.inner_text(f"#unit-{u} .imp").startswith(f"importance rank {said}:")  # the card says it as the dashboard
    top = int(table["unit"].iloc[0])  # a unit with a drop of its own says no tie
    assert _unit_json(run, SHOWN, top)["importance"]["tied"] == 1
    page.goto((rep / "layers" / "00-features.6.html").as_uri() + f"#page={top // PAGE_SIZE + 1}&unit={top}")
    page.wait_for_selector(f"#unit-{top} .imp")
    assert page.inner_text(f"#unit-{top} .imp").startswith(f"importance rank 1 of {units}: prob. drop")
    assert problems == []
    page.close()


def test_a_dead_units_dashboard_and_unit_command_say_why_it_has_no_correlated_units(tmp_path, subset, browser):
    """A unit read after a ReLU that never fires on the images (the demo's features.7) showed
    "(none)" under "Units that move with it" and an empty table in `sketchmine unit`: both say it
    is constant over the images, as `--json` does."""
    r = sketchmine.mine("demo", subset, out=tmp_path / "run.zarr", batch_size=60, layers=["features.7"], k=3)
    sketchmine.unit_effects(r, "features.7", data=subset)
    unit = r.correlated_units("features.7")[0]
    dead = np.flatnonzero((unit < 0).all(axis=1))
    live = int(np.flatnonzero((unit >= 0).any(axis=1))[0])
    assert len(dead) and (r.max_mean("features.7")[dead] == r.topk("features.7")[0][dead, 0]).all()  # constant
    why = f"constant over the {len(subset)} images: no correlation"
    assert _unit_json(r, "features.7", int(dead[0]))["correlated_none"] == why
    assert _unit_json(r, "features.7", live)["correlated_none"] is None
    proc = sm("unit", str(r.path), "features.7", str(int(dead[0])))
    assert proc.returncode == 0 and f"most correlated units (image maxima): {why}" in " ".join(proc.stdout.split())
    rep = write_report(r, tmp_path / "rep", montages=0).parent
    page, problems = _open(browser, (rep / "units" / "00-features.7.html").as_uri() + f"#unit={int(dead[0])}")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{int(dead[0])}'")
    assert page.inner_text("p.correlated") == why
    page.evaluate(f"() => {{ location.hash = 'unit={live}'; }}")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{live}'")
    assert page.query_selector("p.correlated a") is not None and problems == []
    page.close()
