"""The report on runs at the edges, on real images of the embedded data set: a unit whose image
maxima overflow to +inf, layer names and class names that matplotlib would read as mathtext, a
run without labels and one with some unlabelled images, unreadable images skipped while mining,
and the slide's and plots' number formatting. Pages are checked in a real headless Chromium."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.present.report import write_report
from tests.test_report import _open


def _page_data(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text[text.index("["):text.rindex("]") + 1])


class _Overflow(nn.Module):
    """Channel 0 overflows float32 to +inf wherever it is positive; channel 1 stays finite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1] * 1e38 * 1e38, x[:, 1:]], 1)


class _InfNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.boom = _Overflow()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.clip = nn.Hardtanh(-1e3, 1e3)
        self.fc = nn.Linear(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.clip(torch.flatten(self.pool(self.boom(self.conv(x))), 1)))


@pytest.fixture(scope="module")
def inf_run(tmp_path_factory, demo_test_set):
    """40 real images through a model whose tapped unit 0 reaches +inf, with the distribution
    statistics, and its pictures."""
    ds = demo_test_set
    sub = [(ds[i][1], int(ds.labels()[i])) for i in range(0, 2000, 50)]
    net = _InfNet()
    run = sketchmine.mine(net, sub, out=tmp_path_factory.mktemp("inf") / "inf.zarr", layers=["boom"],
                          batch_size=40, distributions=True)
    assert np.isinf(run.topk("boom")[0][0, 0])
    return sketchmine.visualize(run, model=net, data=sub, batch_size=64)


def test_infinite_activations_are_shown_as_inf(tmp_path, inf_run, browser):
    """An overflowing unit used to crash the report (JSON has no infinity) and the slide
    (formatting None); now its cards, dashboard and slide say "inf"."""
    index = write_report(inf_run, tmp_path / "rep")
    rep = index.parent
    cards = _page_data(rep / "data" / "00-boom" / "page_0000.js")
    assert cards[0]["max"] == "inf" and cards[0]["entries"][0]["value"] == "inf"
    assert isinstance(cards[1]["max"], float)
    dash = _page_data(rep / "dash" / "00-boom" / "unit_0000.js")
    assert dash[0]["max"] == "inf" and dash[0]["quantiles"]["values"][-1] == "inf"
    assert (rep / "montage" / "00-boom" / "0.png").is_file()
    page, problems = _open(browser, (rep / "layers" / "00-boom.html").as_uri())
    page.wait_for_selector("#unit-0")
    assert "max inf" in page.inner_text("#unit-0 h3")
    assert "inf" in page.inner_text("#unit-0 .cap")
    page.goto((rep / "units" / "00-boom.html").as_uri() + "#unit=0")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '0'")
    overview = page.inner_text("#overview")
    assert re.search(r"max activation\s+inf", overview) and re.search(r"quantile 100 %\s+inf", overview)
    assert len(page.query_selector_all("#histogram .mark-top")) == inf_run.k  # marked at the axis's end
    assert problems == []


def test_the_slide_of_an_infinite_unit(inf_run):
    from sketchmine.present.montage import unit_montage

    fig = unit_montage(inf_run, "boom", 0)
    texts = [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "inf" in texts and any(t.endswith("  inf") for t in texts)


# ---- labels: none at all, some missing; unreadable images skipped -----------------------------

class _Relabelled(torch.utils.data.Dataset):
    """Real test images with the label of `label(i)` (-1: unknown)."""

    def __init__(self, base, n: int, label) -> None:
        self.base, self.n, self.label = base, n, label

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.base[i * 40][1], self.label(i)


def test_a_run_without_labels_lists_its_layers_and_no_classes(tmp_path, demo_test_set, browser):
    """The index used to leave the Layers table empty (no link to any layer page) and list
    classes 0..9 with 0 images under Accuracy; now every layer is listed and one line says why
    there is no accuracy or class table."""
    run = sketchmine.mine("demo", _Relabelled(demo_test_set, 40, lambda i: -1), out=tmp_path / "u.zarr",
                          batch_size=40, layers=["features.0", "classifier.6"])
    index = write_report(run, tmp_path / "rep")
    text = index.read_text()
    assert re.findall(r'href="(layers/[^"]+)"', text) == ["layers/00-features.0.html", "layers/01-classifier.6.html"]
    assert 'id="no-labels"' in text and "<th>accuracy %</th>" not in text and "summary.png" not in text
    page, problems = _open(browser, index.as_uri())
    page.click('a[href="layers/01-classifier.6.html"]')
    page.wait_for_selector("#unit-0")
    assert "no image has a label" in page.inner_text("body")
    assert problems == []


def test_some_unlabelled_images_keep_the_class_tables_and_are_counted(tmp_path, demo_test_set):
    """A run where some images have label -1 is a labelled run (summary plot, class tables);
    the index says how many images have no label and, per layer, how many top-k entries
    were left out of the class counts."""
    ds = demo_test_set
    labels = ds.labels()
    run = sketchmine.mine("demo", _Relabelled(ds, 50, lambda i: -1 if i % 5 == 0 else int(labels[i * 40])),
                          out=tmp_path / "s.zarr", batch_size=50, layers=["features.0", "classifier.6"])
    text = write_report(run, tmp_path / "rep").read_text()
    assert "50 images; 10 without a label (in no class table or accuracy)" in text
    assert "<h2>Summary</h2>" in text and "over 40 labelled, readable images" in text
    left = {name: int(run.top_classes(name, 5).attrs["unlabelled"]) for name in run.layers}
    assert left["features.0"] > 0
    for lid, name in (("00-features.0", "features.0"), ("01-classifier.6", "classifier.6")):
        assert re.search(rf'{re.escape(name)}</a></td>.*?<td class="num">{left[name]}</td></tr>', text)
        page = (tmp_path / "rep" / "layers" / f"{lid}.html").read_text()
        assert (f">{left[name]} top-k entr" in page) == (left[name] > 0)


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, demo_test_set):
    """30 real images in class folders, one of them garbage, mined with skip_bad_images."""
    from tests.helpers import per_class_subset

    from sketchmine.data import export_image_folder

    root = export_image_folder(per_class_subset(demo_test_set, 3, "bad"), tmp_path_factory.mktemp("bad") / "img")
    victim = sorted(sorted(root.iterdir())[1].iterdir())[0]
    victim.write_bytes(b"garbage")
    return sketchmine.mine("demo", root, out=root.parent / "bad.zarr", batch_size=30, skip_bad_images=True,
                           distributions=True, layers=["features.0", "classifier.6"])


def test_unreadable_images_skipped_are_said_and_counts_add_up(tmp_path, bad_run, browser):
    """'30 images' beside an accuracy over 29 and dashboards 'images mined 30' beside 'of 29
    images' never said why; now the skipped image is named in the count everywhere."""
    run = bad_run
    assert len(run.attrs["bad_images"]) == 1 and run.images_done == 30
    index = write_report(run, tmp_path / "rep", montages=0)
    text = index.read_text()
    assert "30 images (1 unreadable, skipped: in no table or statistic)" in text
    counts = re.findall(r'<td class="num">[^<]*</td><td class="num">(\d+)</td></tr>', text.split("<h2>Accuracy")[1])
    assert "over 29 labelled, readable images" in text and sum(map(int, counts[:10])) == 29
    page, problems = _open(browser, (tmp_path / "rep" / "units" / "00-features.0.html").as_uri() + "#unit=3")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '3'")
    overview = page.inner_text("#overview")
    assert "30 (1 unreadable, skipped: in no statistic)" in overview and "of 29 images" in overview
    assert problems == []


# ---- names that matplotlib would read as mathtext; number formats in plots and slides ---------

DOLLAR = ["$x^$", "a $b", "conv$"]


class _DollarNet(nn.Module):
    """Three modules whose names hold unbalanced "$" (mathtext cannot parse them)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.add_module(DOLLAR[0], nn.Conv2d(1, 4, 3, padding=1))
        self.add_module(DOLLAR[1], nn.Conv2d(4, 4, 3, padding=1))
        self.add_module(DOLLAR[2], nn.Linear(4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = dict(self.named_children())
        x = m[DOLLAR[1]](torch.relu(m[DOLLAR[0]](x)))
        return m[DOLLAR[2]](x.amax((2, 3)))


def test_layer_and_class_names_with_dollars_draw_as_text(tmp_path, demo_test_set):
    """Module names with an unbalanced "$" crashed the summary, ink and importance plots
    (matplotlib parsed them as mathtext); they are drawn as written, class names too."""
    from sketchmine.data import ArrayDataset
    from sketchmine.present import plots

    ds = demo_test_set
    keep = np.arange(0, 2000, 40)
    names = [f"${c}" if c % 2 else f"cls {c}$^" for c in range(10)]
    sub = ArrayDataset(ds.images[keep], ds.labels()[keep], names, ds.preprocessing, ds.describe())
    net = _DollarNet()
    run = sketchmine.mine(net, sub, out=tmp_path / "d.zarr", batch_size=50)
    assert run.layers[:3] == DOLLAR
    sketchmine.unit_importance(run, DOLLAR[0], model=net, dataset=sub)
    run = sketchmine.open_run(run.path)
    write_report(run, tmp_path / "rep", montages=0)
    assert (tmp_path / "rep" / "summary.png").is_file() and (tmp_path / "rep" / "ink.png").is_file()
    assert not (tmp_path / "rep" / "ink.svg").exists()  # no page links it: a second drawing for nothing
    assert (tmp_path / "rep" / "importance" / "00-_x__.png").is_file()
    fig = plots.summary_figure(run)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == run.layers
    fig.canvas.draw()  # nothing is parsed as mathtext
    fig = plots.importance_figure(run, DOLLAR[0])
    fig.canvas.draw()
    assert fig.axes[0].get_title() == f"{DOLLAR[0]}: most important units (ablated)"
    frame = fig.axes[0].get_window_extent()  # each bar's "acc … pt" label inside the axes (UX audit: over its edge)
    labels = [t for t in fig.axes[0].texts if t.get_text().startswith("  acc ")]
    assert labels and all(t.get_window_extent().x1 <= frame.x1 for t in labels)
    # each label the accuracy drop as the table beside the plot writes it, same sign and digits (it wrote
    # the change, "acc −0.45 pt" beside the table's drop of 0.45)
    from sketchmine.results.numbers import percents

    drops = run.unit_importance(DOLLAR[0]).head(10)["acc_drop"].tolist()[::-1]
    assert [t.get_text() for t in labels] == [f"  acc drop {t} pt" for t in percents(drops)]  # one column: "0.00"


# ---- quantiles below the sketch's resolution ---------------------------------------------------

def test_quantiles_below_the_sketch_floor_are_shown_as_bounds(tmp_path, demo_test_set, demo_model, browser):
    """The softmax's low quantiles (1e-16 and the like) lie below the sketch's floor (2^-15 of
    the largest); the dashboard showed its estimate (1.6e-5, orders of magnitude too high) as
    a value. quantile_bounds flags them with a bound the exact quantile obeys, and the
    dashboard shows "< bound"; the other estimates stay within 1/65 of the exact quantile."""
    from tests.helpers import per_class_subset

    from sketchmine.results.distribution import quantile_bounds
    from sketchmine.results.unit_summary import QUANTILES

    sub = per_class_subset(demo_test_set, 20, "floor")
    run = sketchmine.mine("demo", sub, out=tmp_path / "q.zarr", batch_size=100, layers=["softmax"],
                          distributions=True)
    with torch.no_grad():
        x = torch.stack([sub[i][1] for i in range(len(sub))])
        exact_maxima = torch.softmax(demo_model.module.eval()(x), 1).double().numpy()
    q = np.asarray(QUANTILES)
    exact = np.sort(exact_maxima, 0)[np.floor(q * (len(sub) - 1)).astype(int)].T  # (C, Q)
    b = quantile_bounds(run, "softmax", q)
    assert b.coarse.sum() > 5 and (b.floor[:, 1] > 0).all()
    assert np.all(exact[b.coarse] < b.bound[b.coarse]) and np.all(exact[b.coarse] >= 0)
    assert (b.values[b.coarse] > 10 * exact[b.coarse]).any()  # what the dashboard used to show as a value
    fine = ~b.coarse & (exact != 0)
    assert np.all(np.abs(b.values[fine] - exact[fine]) <= exact[fine] / 65 * 1.0001)
    index = write_report(run, tmp_path / "rep", montages=0)
    u, j = (int(v) for v in np.argwhere(b.coarse)[0])
    page, problems = _open(browser, (index.parent / "units" / "00-softmax.html").as_uri() + f"#unit={u}")
    page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
    shown = re.search(rf"quantile {QUANTILES[j] * 100:g} %\t< ([0-9.e+-]+)", page.inner_text("#overview"))
    assert shown and float(shown.group(1)) == pytest.approx(b.bound[u, j], rel=1e-2)
    assert page.query_selector("#coarse-quantiles") is not None
    assert page.inner_text("#quantile-note").endswith("within 1.5 % of the true value where not written \u201c< b\u201d (0 % and 100 % are exact)")
    assert problems == []
    # `sketchmine unit`: the same bound in --json and "< bound" in the console table
    import io
    import json

    from rich.console import Console

    from sketchmine.present.unit_console import distribution_table, print_unit
    from sketchmine.results.unit_summary import LayerSummary

    d = LayerSummary(run, "softmax").unit(u)
    assert d["quantiles"]["bound"][j] == pytest.approx(b.bound[u, j]) and d["quantiles"]["floor"][1] > 0
    assert all((x is None) == (not c) for x, c in zip(d["quantiles"]["bound"], b.coarse[u]))
    json.dumps(d, allow_nan=False)
    out = io.StringIO()
    Console(file=out, width=250).print(distribution_table(d))
    assert len(re.findall(r"< [0-9]", out.getvalue())) == int(b.coarse[u].sum())
    out = io.StringIO()
    print_unit(run.path, "softmax", u, Console(file=out, width=250))
    lines = out.getvalue().splitlines()
    # what "< b" means on one line of its own (as the table's caption it was folded to the table's width)
    assert sum(line.startswith("< b / > b: below the sketch's resolution") and line.endswith("not the value")
               for line in lines) == 1
    assert f"softmax · unit {u} of {len(run.class_names)} · {run.class_names[u]}" in lines[0]  # units are classes
    top = run.topk("softmax")[0][u]
    shown = re.findall(r"│\s+\d+ │\s+([0-9.e+-]+) │", out.getvalue())[:len(top)]
    assert [float(v) for v in shown] == pytest.approx(top.tolist(), rel=1e-4)  # 0.99986 is not "1"


def test_percentages_are_100_or_0_only_when_exact(tmp_path, inf_run, browser):
    """The slide rounded a firing density of 1999/2000 to "100.0%" and the pages'
    toFixed(2) did the same to 19999/20000: all or none is now said only when exact. The slide
    writes a rate as the dashboard does ("99.95 %", 2 decimals)."""
    from sketchmine.present.report_data import percent
    from sketchmine.results.numbers import rate

    assert [rate(1999 / 2000), rate(1.0), rate(0.0), rate(1 / 2000), rate(None)] == \
        ["99.95 %", "100 %", "0 %", "0.05 %", "-"]
    assert [percent(19999 / 20000, 2), percent(1e-9, 2), percent(float("nan"))] == ["99.995", "< 0.000001", "-"]
    # an accuracy drop of one image in 50,000 (ablating a unit can help): "-0.002", never "-0.00"
    assert [percent(-1 / 50000, 2), percent(1 / 50000, 2), percent(-0.0, 2)] == ["-0.002", "0.002", "0"]
    assert percent(0.25, 0) == "25"
    for bad in (-1, 1.5, True):  # a format error, a float format, a bool read as 1
        with pytest.raises(sketchmine.SketchmineError, match="decimals must be a whole number of at least 0"):
            percent(0.25, bad)
    index = write_report(inf_run, tmp_path / "rep", montages=0)
    page, problems = _open(browser, (index.parent / "layers" / "00-boom.html").as_uri())
    page.wait_for_selector("#unit-0")
    got = page.evaluate("() => [0.99995, 1, 0, 0.5, null, 1e-9, -1 / 50000].map(a => window.sketchmineDom.percent(a, 2))")
    assert got == ["99.995", "100", "0", "50.00", "-", "< 0.000001", "-0.002"] and problems == []


def test_a_layer_visualize_never_reached_says_no_pictures_yet(tmp_path, demo_test_set):
    """visualize stopped before a layer: the note said "patches for units 0..-1 only"; it now
    says there are no pictures yet and gives the command that resumes the pass."""
    from tests.helpers import StopAfter, per_class_subset

    class Stop(Exception):
        pass

    sub = per_class_subset(demo_test_set, 4, "vis")
    run = sketchmine.mine("demo", sub, out=tmp_path / "v.zarr", batch_size=40, layers=["features.0", "classifier.6"])
    with pytest.raises(Stop):
        sketchmine.visualize(run, data=sub, batch_size=64, progress=StopAfter(1, calls=True, exc=Stop))
    run = sketchmine.open_run(run.path)
    done = {name: int((run.layer_attrs(name).get("visualized") or {}).get("units_done", -1)) for name in run.layers}
    assert 0 in done.values(), done
    write_report(run, tmp_path / "rep", montages=0)
    for lid, name in zip(("00-features.0", "01-classifier.6"), run.layers):
        note = re.findall(r'id="pictures-note">(.*?)</p>', (tmp_path / "rep" / "layers" / f"{lid}.html").read_text())
        note = [re.sub(r"</?code>", "", n) for n in note]  # the command set as code
        hint = f"sketchmine visualize {run.path} --layers {name}"
        if done[name] == 0:
            assert note and note[0].startswith("no pictures yet") and hint in note[0] and "0..-1" not in note[0]
        elif 0 < done[name] < run.layer_shape(name)[0]:
            assert note and f"units 0..{done[name] - 1} only" in note[0] and hint in note[0]


# ---- navigation: no redraw of what is shown, links to a card scroll to it ---------------------

def test_showing_the_unit_or_page_already_shown_redraws_nothing(tmp_path, bad_run, browser):
    """The number box's change to the unit already shown (fired when it loses focus on a click)
    redrew the dashboard under the pointer and the click was lost; the cards' pager did the
    same at its ends. Both now leave the page as it is."""
    index = write_report(bad_run, tmp_path / "rep", montages=0)
    page, problems = _open(browser, (index.parent / "units" / "00-features.0.html").as_uri() + "#unit=5")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '5'")
    page.evaluate("() => { document.getElementById('overview').dataset.kept = 'yes'; }")
    page.fill("#unit-input", "5")
    page.dispatch_event("#unit-input", "change")
    assert page.evaluate("() => document.getElementById('overview').dataset.kept") == "yes"
    page.fill("#unit-input", "6")
    page.dispatch_event("#unit-input", "change")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '6'")
    page.goto((index.parent / "layers" / "00-features.0.html").as_uri())
    page.wait_for_selector("#unit-0")
    page.evaluate("() => { document.getElementById('unit-0').dataset.kept = 'yes'; }")
    page.click("#next")  # one page only: nothing to show
    assert page.evaluate("() => document.getElementById('unit-0').dataset.kept") == "yes"
    assert problems == []


def test_a_link_to_a_card_scrolls_to_it(tmp_path, bad_run, browser):
    """The dashboard's "its card" opened the right page of cards at its top; it now scrolls to
    the unit's card and marks it."""
    index = write_report(bad_run, tmp_path / "rep", montages=0)
    page, problems = _open(browser, (index.parent / "units" / "00-features.0.html").as_uri() + "#unit=30")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '30'")
    page.click("#dash .dash-links a")
    page.wait_for_selector("#unit-30.target")
    top, bottom = page.evaluate("() => { const r = document.getElementById('unit-30').getBoundingClientRect();"
                                " return [r.top, r.bottom]; }")
    assert page.evaluate("() => window.scrollY") > 0 and 0 <= top and bottom <= 900  # in view
    assert page.evaluate("() => location.hash") == "#page=1&unit=30"
    page.click("#next")  # the pager still works from there
    assert problems == []


# ---- units without numbers, runs of one class ---------------------------------------------------

class _Nanify(nn.Module):
    """Channel 0 all NaN on every image; the others as they come."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1] * float("nan"), x[:, 1:]], 1)


class _NanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.nan = _Nanify()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nan_to_num(torch.flatten(self.pool(self.nan(self.conv(x))), 1)))


def test_a_unit_of_all_nan_maps_prefers_no_class(tmp_path, demo_test_set, browser):
    """Its dashboard listed 5 "preferred" classes, each with mean "-" and 0 images; now none,
    with a note."""
    from tests.helpers import per_class_subset

    sub = per_class_subset(demo_test_set, 4, "nan")
    run = sketchmine.mine(_NanNet(), sub, out=tmp_path / "n.zarr", layers=["nan"], batch_size=40, distributions=True)
    index = write_report(run, tmp_path / "rep", montages=0)
    dash = _page_data(index.parent / "dash" / "00-nan" / "unit_0000.js")
    assert dash[0]["class_means"] == [] and len(dash[1]["class_means"]) == 5
    page, problems = _open(browser, (index.parent / "units" / "00-nan.html").as_uri() + "#unit=0")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '0'")
    assert page.query_selector("#no-class-means") is not None
    assert problems == []


def test_a_run_of_one_class_says_why_no_unit_has_a_selectivity(tmp_path, demo_test_set):
    """'median nan over 0 units' became a sentence saying why, and so did 'mean over 0 units' above a
    preference table of "-" and 0 units preferring."""
    from sketchmine.data import ArrayDataset

    ds = demo_test_set
    keep = np.nonzero(ds.labels() == 3)[0][:20]
    sub = ArrayDataset(ds.images[keep], ds.labels()[keep], ds.class_names, ds.preprocessing, ds.describe())
    run = sketchmine.mine("demo", sub, out=tmp_path / "o.zarr", batch_size=20, layers=["features.0"])
    write_report(run, tmp_path / "rep", montages=0)
    text = (tmp_path / "rep" / "layers" / "00-features.0.html").read_text()
    assert "median nan" not in text and f"only 1 class ({ds.class_names[3]}) has images: a class preference, the class " \
        "selectivity index" in text and "mean over 0 units" not in text


def test_strips_written_on_threads_are_all_on_disk_and_an_error_is_not_lost(tmp_path):
    """The report's strips are encoded on worker threads (PngWriter): leaving the block, every
    strip is on disk with its pixels; a worker's error (here a folder that is not there, as a
    full disk would be) is raised there, and a write after it raises at once, not lost on its thread."""
    from PIL import Image

    from sketchmine.present.report_data import PngWriter

    rng = np.random.default_rng(5)
    strips = [rng.integers(0, 256, (28, 28 * 9), dtype=np.uint8) for _ in range(40)]
    with PngWriter(workers=2, pending=4) as png:
        for i, s in enumerate(strips):
            png.save(s, tmp_path / f"{i}.png")
    assert all(np.array_equal(np.asarray(Image.open(tmp_path / f"{i}.png")), s) for i, s in enumerate(strips))
    with pytest.raises(FileNotFoundError, match="missing"):
        with PngWriter(workers=2) as png:
            png.save(strips[0], tmp_path / "missing" / "0.png")
            png.save(strips[1], tmp_path / "1b.png")
    png = PngWriter(workers=1)
    png.save(strips[0], tmp_path / "missing" / "0.png")
    png._pool.shutdown(wait=True)  # the failed write done: the next one raises its error at once
    with pytest.raises(FileNotFoundError):
        png.save(strips[1], tmp_path / "after.png")
    assert not (tmp_path / "after.png").exists()
