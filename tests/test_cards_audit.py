"""Right-to-left names on the report's pages, measured in a real headless Chromium: class folders
and module names in Hebrew and Arabic or holding direction controls they never close (U+202E,
U+2067) must move none of our words and numbers beside them, in the text, the tooltips, the pages'
titles, the commands the notes name and the probe's labels. The check reads where each character
is drawn (its bounding box), not the markup."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.data.resolve import export_image_folder
from tests.test_report import _open

CLASSES = ["\u202eevil", "\u2067rli", "\u05e9\u05dc\u05d5\u05dd", "\u0633\u0644\u0627\u0645", "class 4",
           "\u05d1\u05d9\u05ea", "\u2069\u202eodd", "c7", "c8", "c9"]
"""Class folders: an unclosed right-to-left override, an unclosed right-to-left isolate, Hebrew,
Arabic, and a stray isolate end (U+2069) before an override."""
MODULES = ["\u05e9\u05db\u05d1\u05d4", "\u202econv", "\u0637\u0628\u0642\u0629"]
FOLDER = "\u05ea\u05de\u05d5\u05e0\u05d5\u05ea"
"""The image folder's own name, Hebrew: the index names it beside the image count."""

ORDER_JS = """(args) => {
  // Our own letters and digits (those outside the given names) and each name as a whole, in the
  // order the text holds them, must be drawn left to right, line by line. texts: plain texts laid
  // out as the browser lays out a tooltip (one left-to-right paragraph); without them, the page.
  const [names, texts] = args, own = /[A-Za-z0-9]/, wrong = [];
  function box(chars, i, j) {
    let u = null;
    for (let k = i; k < j; k++) {
      const r = document.createRange();
      r.setStart(chars[k].node, chars[k].off); r.setEnd(chars[k].node, chars[k].off + 1);
      const b = r.getBoundingClientRect();
      if (!b.width && !b.height) continue;
      if (u && Math.abs(u.top - b.top) > Math.min(u.height, b.height) / 2) return null;
      u = u ? {left: Math.min(u.left, b.left), right: Math.max(u.right, b.right), top: u.top, height: u.height}
            : {left: b.left, right: b.right, top: b.top, height: b.height};
    }
    return u;
  }
  function check(chars, where) {
    const text = chars.map(c => c.ch).join(""), owner = new Array(chars.length).fill(-1), spans = [];
    for (const name of names) {
      for (let at = text.indexOf(name); at >= 0; at = text.indexOf(name, at + 1)) {
        if (owner.slice(at, at + name.length).some(o => o >= 0)) continue;
        spans.push(at + name.length);
        for (let i = at; i < at + name.length; i++) owner[i] = spans.length - 1;
      }
    }
    let prev = null;
    for (let i = 0; i < chars.length; i++) {
      const isName = owner[i] >= 0, j = isName ? spans[owner[i]] : i + 1;
      if (!isName && !own.test(chars[i].ch)) continue;
      const b = box(chars, i, j), at = i;
      i = j - 1;
      if (!b) continue;
      if (prev) {
        const same = Math.abs(prev.b.top - b.top) < Math.min(prev.b.height, b.height) / 2;
        const c0 = (prev.b.left + prev.b.right) / 2, c1 = (b.left + b.right) / 2;
        if (same ? c1 <= c0 || ((isName || prev.isName) && b.left < prev.b.right - 1) : b.top < prev.b.top) {
          wrong.push(where + ": " + JSON.stringify(text.slice(Math.max(0, prev.at - 30), j + 30)));
          return;
        }
      }
      prev = {b, at, isName};
    }
  }
  function plain(text, where) {
    const d = document.createElement("div");
    d.style.cssText = "position:absolute;left:0;top:0;white-space:pre;direction:ltr";
    d.textContent = text;
    document.body.appendChild(d);
    check(Array.from({length: text.length}, (_, i) => ({node: d.firstChild, off: i, ch: text[i]})), where);
    d.remove();
  }
  if (texts) { texts.forEach(t => plain(t, "text")); return wrong; }
  const paragraphs = new Map(), walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (n.parentElement.closest("script, style")) continue;
    let p = n.parentElement;
    while (getComputedStyle(p).display === "inline") p = p.parentElement;
    if (!paragraphs.has(p)) paragraphs.set(p, []);
    for (let i = 0; i < n.data.length; i++) paragraphs.get(p).push({node: n, off: i, ch: n.data[i]});
  }
  paragraphs.forEach((chars, p) => check(chars, p.tagName.toLowerCase() + (p.id ? "#" + p.id : "")));
  plain(document.title, "<title>");
  document.querySelectorAll("[title]").forEach(e => plain(e.getAttribute("title"), "title of " + e.className));
  document.querySelectorAll("svg title").forEach(e => plain(e.textContent, "svg title"));
  return wrong;
}"""


class _Named(nn.Module):
    """Two convs and a linear named in Hebrew, with an unclosed U+202E, and in Arabic."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        for name, layer in zip(MODULES, (nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                         nn.Linear(8, 10))):
            self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, fc = self.children()
        return fc(torch.relu(b(torch.relu(a(x)))).amax((2, 3)))


@pytest.fixture(scope="module")
def rtl(tmp_path_factory, demo_test_set):
    """(report folder, run, model): 6 real test images a class exported as an image folder under
    right-to-left class folders, every layer of `_Named` mined with distributions, its first
    and last layers visualized (a slide; the whole images the probe offers), the second's unit
    importance stored, the report written with the live probe."""
    from sketchmine.passes.probe import build_probe
    from sketchmine.present.report import write_report

    ds = demo_test_set
    keep = np.concatenate([np.nonzero(ds.labels() == c)[0][:6] for c in range(10)])
    base = tmp_path_factory.mktemp("rtl")
    root = export_image_folder(ArrayDataset(ds.images[keep], ds.labels()[keep], CLASSES, ds.preprocessing,
                                            ds.describe()), base / FOLDER)
    net = _Named()
    run = sketchmine.mine(net, root, out=base / "run.zarr", batch_size=30, distributions=True,
                          preprocessing=ds.preprocessing)
    sketchmine.visualize(run, [MODULES[0], MODULES[2]], model=net, data=root)  # the linear: the probe's pictures
    sketchmine.unit_importance(run, MODULES[1], model=net, data=root)  # a sortable table on its page
    run = sketchmine.open_run(run.path)
    rep = write_report(run, base / "rep", montages=1, probe=build_probe(run, model=net)).parent
    return rep, run, net


def _names(run) -> list[str]:
    """The user's names the pages may show: classes, layers, the model, each part of every path."""
    parts = {p for path in [*map(str, run.paths), str(run.path), str(run.attrs["dataset"]["root"])]
             for p in path.split("/") if p}
    return sorted({*run.class_names, *run.layers, str(run.attrs["model"]), *parts}, key=len, reverse=True)


def test_right_to_left_names_move_no_word_or_number_on_any_page(rtl, browser):
    """A layer named with an unclosed U+202E reversed its dashboard's heading ("conv: unit 3 of 8"
    read "8 fo 3 tinu"), its link, the pages' titles and the unit number and options of the
    commands the notes name ("'שכבה' 3 --json" read "3 'שכבה' --json"); a class's tooltip on the
    index reversed its accuracy and count; a Hebrew class folder put the file's number before its
    folder in every image's tooltip, and the image folder's name moved the image count on the
    index. Every such name is isolated now."""
    rep, run, _ = rtl
    names = _names(run)
    page, problems = _open(browser, (rep / "index.html").as_uri())
    pages = [(rep / "index.html").as_uri()] + [p.as_uri() for p in sorted((rep / "layers").glob("*.html"))]
    pages += [p.as_uri() + "#unit=3" for p in sorted((rep / "units").glob("*.html"))]
    wrong, titles = [], []
    for url in pages:
        page.goto(url)
        page.wait_for_load_state("load")
        if "/index.html" not in url:
            page.wait_for_selector("body[data-rendered]")
        titles.append(page.evaluate("document.title"))
        wrong += [f"{url.rsplit('/', 2)[-2:]}: {w}" for w in page.evaluate(ORDER_JS, [names, None])]
    assert wrong == []
    assert all(t.endswith("run.zarr — sketchmine report") for t in titles), titles  # each names the run
    # a command stays the text it was (an isolate adds no character): pasted, it runs as written
    page.goto((rep / "units" / "01-_conv.html").as_uri() + "#unit=3")
    page.wait_for_selector("body[data-rendered='3']")
    code = page.evaluate("() => [...document.querySelectorAll('#dash p.missing code')].map(c => c.textContent)")
    assert all(" --layers '\u202econv'" in c for c in code)
    assert any(c.endswith(" --layers '\u202econv' --examples all") for c in code)
    assert problems == []
    page.close()


def test_the_probe_names_its_layers_and_images_without_moving_their_numbers(rtl, browser):
    """The probe's layer headings ("conv (8 units)" read "(stinu 8) vnoc"), its images' tooltips
    ("#99" before the class) and the note on a picked image ("Dataset image 99 (evil), at the
    model's input size" reversed after the name) isolate the names they hold."""
    rep, run, _ = rtl
    names = _names(run)
    page, problems = _open(browser, (rep / "probe.html").as_uri())
    page.wait_for_selector("body[data-ready]", timeout=120_000)
    assert page.title() == "live probe: _Named — run.zarr — sketchmine report"  # the model and the run, as the tab says
    page.click("#pick")
    titles = page.evaluate("() => [...document.querySelectorAll('canvas.thumb')].map(c => c.title)")
    firsts = {t.rsplit(" #", 1)[0]: i for i, t in reversed(list(enumerate(titles)))}  # one image a class
    assert len(firsts) == len(CLASSES)
    wrong = []
    for i in firsts.values():
        page.click(f"canvas.thumb >> nth={i}")
        shown = titles[i].rsplit(" #", 1)[1]  # the image's number in the dataset
        page.wait_for_function(f"() => document.getElementById('convert-note').textContent.includes('image {shown} ')")
        page.wait_for_function("() => window.sketchmine.updates > 0 && document.querySelectorAll('.probe-layer').length")
        wrong += page.evaluate(ORDER_JS, [names, None])
    assert wrong == []
    assert problems == []
    page.close()


def test_plots_and_slides_isolate_the_names_they_draw(rtl, browser):
    """matplotlib lays text out by the bidi algorithm (libraqm): a slide titled "\u202econv · unit 0
    (Net)" was drawn "(teN) 0 tinu · vnoc", a Hebrew layer's title put the unit after the name, a
    caption's value could go before its class. The texts the plots draw, laid out as Chromium lays
    out plain text, keep our words and numbers in order."""
    from sketchmine.present.montage import slide_content
    from sketchmine.present.plots import histogram_figure

    rep, run, _ = rtl
    texts = []
    for layer in run.layers:
        texts.append(histogram_figure(run, layer).axes[0].get_title())
    for layer in MODULES[:1]:
        content = slide_content(run, layer, 0, None)
        texts.append(content.title)
    page, problems = _open(browser, (rep / "index.html").as_uri())
    assert page.evaluate(ORDER_JS, [_names(run), texts]) == []
    assert problems == []
    page.close()


def test_sorting_and_picking_work_from_the_keyboard(rtl, browser):
    """The importance table's headers sorted on a click only (Tab never reached them), and the
    probe's dataset images were canvases a click alone could pick, its gallery closed by its
    button only. Headers and images are reached by Tab and act on Enter and Space; Escape closes
    the gallery and gives the focus back to its button. A card's dashboard link opens on Enter."""
    rep, _, _ = rtl
    page, problems = _open(browser, (rep / "layers" / "01-_conv.html").as_uri())
    page.wait_for_selector("body[data-rendered='0']")
    page.focus("a[href='../index.html']")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#importance th') !== null")  # the first header, next
    page.keyboard.press("Enter")
    assert page.get_attribute("#importance", "data-sorted") == "0+"  # by unit, ascending
    page.keyboard.press("Tab")
    page.keyboard.press(" ")
    assert page.get_attribute("#importance", "data-sorted") == "1-"
    units = page.evaluate("() => [...document.querySelectorAll('#importance tbody tr')].map(r => +r.cells[0].dataset.v)")
    drops = page.evaluate("() => [...document.querySelectorAll('#importance tbody tr')].map(r => +r.cells[1].dataset.v)")
    assert sorted(units) == list(range(8)) and drops == sorted(drops, reverse=True)
    page.focus("#unit-2 .dash-links a")
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-rendered='2']")
    assert page.url.endswith("/units/01-_conv.html#unit=2")
    page.goto((rep / "probe.html").as_uri())
    page.wait_for_selector("body[data-ready]", timeout=120_000)
    page.focus("#pick")
    page.keyboard.press("Enter")
    assert page.get_attribute("#pick", "aria-expanded") == "true"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('thumb')")
    page.keyboard.press("Tab")
    shown = page.evaluate("document.activeElement.title").rsplit(" #", 1)[1]
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => document.getElementById('convert-note').textContent.includes('image {shown} ')")
    page.keyboard.press("Escape")
    assert page.evaluate("document.getElementById('images').hidden && document.activeElement.id === 'pick'")
    assert problems == []
    page.close()


def test_no_page_scrolls_sideways_at_200_percent_zoom(rtl, browser):
    """At a zoom of 200 % (640 CSS px in a 1280 px window) a layer page scrolled sideways: a card's
    rows of k tiles (9 × 64 px and their label) stuck out of the window. A card scrolls itself now;
    no page is wider than the window."""
    rep, _, _ = rtl
    page = browser.new_page(viewport={"width": 640, "height": 450}, device_scale_factor=2)
    urls = [rep / "index.html", *sorted((rep / "layers").glob("*.html")), *sorted((rep / "units").glob("*.html"))]
    wide = {}
    for url in urls:
        page.goto(url.as_uri())
        page.wait_for_load_state("load")
        if url.parent.name != rep.name:
            page.wait_for_selector("body[data-rendered]")
        wide[str(url.relative_to(rep))] = page.evaluate("document.documentElement.scrollWidth")
    assert all(w <= 640 for w in wide.values()), wide
    page.close()


def test_notes_listing_classes_isolate_them(tmp_path, demo_test_set, browser):
    """The index's note on classes without images ("classes without images, left out: A, B") and
    the summary plot's title listing them wrote the names as given: one with an unclosed U+202E
    reversed the rest of the list. Each name in them is isolated now."""
    from sketchmine.present.plots import summary_figure
    from sketchmine.present.report import write_report

    ds = demo_test_set
    names = [f"c{c}" for c in range(10)]
    names[3], names[5] = "\u202eevil", "\u05d1\u05d9\u05ea"  # no image of either is mined
    keep = np.concatenate([np.nonzero(ds.labels() == c)[0][:8] for c in range(10) if c not in (3, 5)])
    sub = ArrayDataset(ds.images[keep], ds.labels()[keep], names, ds.preprocessing, ds.describe())
    run = sketchmine.mine("demo", sub, out=tmp_path / "run.zarr", batch_size=64, layers=["features.6", "softmax"])
    rep = write_report(run, tmp_path / "rep", montages=0).parent
    page, problems = _open(browser, (rep / "index.html").as_uri())
    page.wait_for_load_state("load")
    notes = page.evaluate("() => [...document.querySelectorAll('.summary-note')].map(p => p.textContent)")
    assert any("without images" in n and "evil" in n for n in notes), notes
    assert page.evaluate(ORDER_JS, [sorted(names, key=len, reverse=True), None]) == []
    title = summary_figure(run, 5).axes[0].get_title()
    assert "without images" in title and page.evaluate(ORDER_JS, [names, [title]]) == []
    assert problems == []
    page.close()
