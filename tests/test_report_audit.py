"""The report audited in a real headless Chromium on real images of the embedded data set: class
names that turn text right to left, links a person can type, and the dashboards' data read back
against the run's own arrays."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.present.report import write_report
from tests.test_report import _open

RTL = "\u202eevil \u05e9\u05dc\u05d5\u05dd"
"""A class name with a right-to-left override it never closes, and Hebrew."""
CLASSES = [RTL if c == 4 else f"<b>class {c}&amp;" for c in range(10)]


@pytest.fixture(scope="module")
def rep(tmp_path_factory, demo_test_set) -> Path:
    """100 real test images (10 a class, class 4 named RTL), every layer of the demo model mined
    with distributions; its report (no pictures: they add nothing here)."""
    ds = demo_test_set
    keep = np.concatenate([np.nonzero(ds.labels() == c)[0][:10] for c in range(10)])
    sub = ArrayDataset(ds.images[keep], ds.labels()[keep], CLASSES, ds.preprocessing, ds.describe())
    base = tmp_path_factory.mktemp("audit")
    run = sketchmine.mine("demo", sub, out=base / "run.zarr", batch_size=50, distributions=True)
    return write_report(run, base / "rep", montages=0).parent


def _isolated(page, selector: str) -> list[str]:
    """The texts of the elements under `selector` that hold exactly one dataset name and isolate it
    from the text around it (computed unicode-bidi: isolate, as <bdi> has)."""
    return page.evaluate("""s => [...document.querySelectorAll(s + ' *')].filter(e =>
        getComputedStyle(e).unicodeBidi === 'isolate').map(e => e.textContent)""", selector)


def test_a_right_to_left_class_name_reverses_nothing_beside_it(rep, browser):
    """A class name holding U+202E (right-to-left override) and never closing it reversed, on
    screen, everything after it on its line: the index's "top 5 classes" cell showed the other
    classes and their counts mirrored ("gmi> ,6 ..."), a card's classes line its counts. Every name
    set among other words is now isolated (<bdi>); its text stays the name."""
    page, problems = _open(browser, (rep / "index.html").as_uri())
    page.wait_for_load_state("load")
    cells = page.evaluate("() => [...document.querySelectorAll('table')].filter(t => t.tHead && "
                          "t.tHead.textContent.includes('top 5 classes')).flatMap(t => [...t.tBodies[0].rows].map(r => r.cells[3].textContent))")
    assert any(RTL in c for c in cells)
    assert RTL in _isolated(page, "table td") and RTL in _isolated(page, "#summary-grid td")
    for lid in ("02-features.6", "08-softmax"):
        page.goto((rep / "layers" / f"{lid}.html").as_uri())
        page.wait_for_selector("body[data-rendered='0']")
        lines = dict(page.evaluate("() => [...document.querySelectorAll('.card')].map(c => [c.id, c.querySelector('.perf').textContent])"))
        with_rtl = [card for card, text in lines.items() if RTL in text]
        assert with_rtl, lid
        for card in with_rtl:
            assert RTL in _isolated(page, f"#{card} .perf:not(.ties)"), (lid, lines[card])
    assert RTL in _isolated(page, "#unit-4 h3")  # the softmax's unit 4 is named by its class
    assert page.inner_text("#unit-4 h3").startswith(f"unit 4 · {RTL} · max ")
    page.goto((rep / "units" / "08-softmax.html").as_uri() + "#unit=4")
    page.wait_for_selector("body[data-rendered='4']")
    assert _isolated(page, "h1") == ["softmax", RTL] and page.inner_text("#unit-number") == f"4 of 10 ({RTL})"
    assert problems == []
    page.close()


def test_a_stray_percent_in_a_dashboard_link_shows_unit_0_and_says_so(rep, browser):
    """`#unit=%` (a link cut after its "%") threw "URI malformed" before anything was drawn: the
    dashboard stayed empty. It is read as typed, as any other unit that is no number."""
    page, problems = _open(browser, (rep / "units" / "02-features.6.html").as_uri() + "#unit=%")
    page.wait_for_selector("body[data-rendered='0']")
    assert page.inner_text("#unit-note") == "no unit '%' in this layer: showing unit 0"
    assert problems == []
    page.close()


def _as_drawn(page, script: Path) -> list[dict]:
    """The units of a dashboard page script as unit.js draws them: the script run against a
    recorder, each unit put back by `sketchmineUnit.whole` (the page's own function)."""
    return page.evaluate("""text => { let shared = null, units = null;
        new Function('sketchmineUnit', text)({shared: (p, s) => { shared = s; }, page: (p, d) => { units = d; }});
        return shared ? units.map(d => window.sketchmineUnit.whole(d, shared)) : units; }""", script.read_text())


def test_dashboard_data_is_written_once_and_drawn_as_the_run_reads_it(rep, browser):
    """Every unit's dashboard data repeated each image's path, class and accuracy (about 130 images a
    unit), the layer's constants and the notes on what the run lacks: over every layer of a
    ResNet-50 403 MB of a 455 MB report. A page script now writes them once; what the dashboard draws
    is, unit for unit, what `LayerSummary.unit` reads from the run (and the report adds)."""
    from sketchmine.present.report_unit import BIN_EXAMPLES, cut_examples
    from sketchmine.results.unit_summary import LayerSummary

    run = sketchmine.open_run(rep.parent / "run.zarr")
    page, problems = _open(browser, (rep / "units" / "02-features.6.html").as_uri() + "#unit=0")
    page.wait_for_selector("body[data-rendered='0']")
    for lid, layer in (("02-features.6", "features.6"), ("08-softmax", "softmax")):
        script = rep / "dash" / lid / "unit_0000.js"
        drawn = _as_drawn(page, script)
        summary = LayerSummary(run, layer)
        text = script.read_text()
        for d in drawn:
            want = summary.unit(d["unit"], infinities=True, infinite_bins=False)
            cut_examples(want, BIN_EXAMPLES)  # the page shows 6 a bin, and says how many more
            assert {k: d[k] for k in want if k != "missing"} == {k: v for k, v in want.items() if k != "missing"}
            assert {k: d["missing"][k] for k in want["missing"]} == want["missing"]  # the report adds the pictures'
            assert all(d["missing"].values())
            for e in d["top"] + d["bottom"] + [e for b in d["bins"] for e in b["examples"]]:
                assert text.count(f'"{e["path"]}"') == 1, e["path"]  # each image's path once in the script
        written = json.loads(text[text.index("["):text.rindex("]") + 1])  # the unit list, as readers slice it
        assert len(written) == len(drawn) and all(why == "" for d in written for why in d["missing"].values())
        assert any(d["missing"] for d in written)  # each note in the shared object, once a page
    assert problems == []
    page.close()


def test_a_link_naming_a_unit_opens_the_page_of_its_card(rep, browser):
    """A layer page's link `#unit=70` (as a dashboard's hash reads) showed page 1, which has no
    card 70, and said nothing; `#page=1&unit=70` too. The unit's page is shown, its card marked,
    and the browser's Back button goes to the page shown before."""
    url = (rep / "layers" / "02-features.6.html").as_uri()
    page, problems = _open(browser, url + "#unit=70")
    page.wait_for_selector("#unit-70.card.target")
    assert page.inner_text("#page-label") == "page 2 of 2"
    page.evaluate("() => { location.hash = 'page=1&unit=70'; }")
    page.wait_for_selector("#unit-70.card.target")
    page.evaluate("() => { location.hash = 'page=1&unit=5'; }")
    page.wait_for_selector("#unit-5.card.target")
    assert page.inner_text("#page-label") == "page 1 of 2"
    page.go_back()
    page.wait_for_selector("body[data-rendered='1']")
    page.click("#prev")
    page.wait_for_selector("body[data-rendered='0']")
    page.focus("#next")  # the pager is a pair of buttons: Enter on one turns the page
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-rendered='1']")
    assert problems == []
    page.close()


class _LongNames(torch.nn.Module):
    """A conv and a linear whose module names are 200-character words."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("conv" + "L" * 196, torch.nn.Conv2d(1, 4, 3, padding=1))
        self.add_module("fc" + "L" * 198, torch.nn.Linear(4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, fc = self.children()
        return fc(torch.relu(conv(x)).amax((2, 3)))


def test_long_layer_and_class_names_never_widen_a_page_past_the_window(tmp_path, demo_test_set, browser):
    """A 200-character module name or class name (one word) widened every page to 1,800-2,900 px at
    a 1,280 px window: table cells, the cards' classes line, the links and notes do not break a
    word. They are broken where they meet the window's edge now."""
    ds = demo_test_set
    keep = np.arange(0, 2000, 40)
    names = ["c" * 200 if c == ds.labels()[keep[0]] else f"class {c}" for c in range(10)]
    sub = ArrayDataset(ds.images[keep], ds.labels()[keep], names, ds.preprocessing, ds.describe())
    run = sketchmine.mine(_LongNames(), sub, out=tmp_path / "run.zarr", batch_size=50, distributions=True)
    rep = write_report(run, tmp_path / "rep", montages=0).parent
    page, problems = _open(browser, (rep / "index.html").as_uri())
    pages = ["index.html"] + [f"{d}/{f.name}" for d in ("layers", "units") for f in sorted((rep / d).iterdir())]
    for name in pages:
        page.goto((rep / name).as_uri())
        page.wait_for_load_state("load")
        if name != "index.html":
            page.wait_for_selector("body[data-rendered='0']")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, name
    assert problems == []
    page.close()
