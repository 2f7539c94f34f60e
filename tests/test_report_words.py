"""What the report's words say matches the run, on real runs of the embedded demo model and data:
pictures are named by the method `visualize` made them with (guided backpropagation is no
deconvolution), the index of an unfinished run lists its classes as `summary` does and says the
same, and a unit whose last top-k places hold equal values says that dataset order filled them.
Pages are checked in a real headless Chromium."""
from __future__ import annotations

import numpy as np
import pytest

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.present.montage import unit_montage
from sketchmine.present.report import write_report
from sketchmine.present.report_data import layer_ids
from tests.helpers import StopAfter, per_class_subset
from tests.test_report import _open

GUIDED = "features.3"


class _Stop(Exception):
    """A crash stand-in that stops the mine between checkpoints."""


@pytest.fixture(scope="module")
def guided(tmp_path_factory, demo_test_set):
    """50 real images through the demo model, features.3 visualized by guided backpropagation (the
    first 4 units: enough to name them) and features.6 left unvisualized."""
    sub = per_class_subset(demo_test_set, 5, "0:50")
    run = sketchmine.mine("demo", sub, out=tmp_path_factory.mktemp("guided") / "run.zarr", batch_size=50,
                          layers=[GUIDED, "features.6"])
    return sketchmine.visualize(run, layers=[GUIDED], data=sub, method="guided", batch_size=64, max_units=4)


def _texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")


def test_pictures_are_named_by_the_method_that_made_them(tmp_path, guided, browser):
    index = write_report(guided, tmp_path / "rep", montages=1)
    lid = layer_ids(guided)[GUIDED]
    page, problems = _open(browser, (index.parent / "layers" / f"{lid}.html").as_uri())
    page.wait_for_selector(".card")
    labels = _texts(page, "#unit-0 .row .label")
    assert "guided" in labels and "deconv" not in labels, labels
    title = page.eval_on_selector_all("#unit-0 .row .label", "els => els.filter(e => e.textContent === 'guided')"
                                      ".map(e => e.title)")[0]
    assert "guided backpropagation" in title and "--method guided" in title, title
    assert "deconv" not in page.inner_text("#unit-0")
    page.goto((index.parent / "units" / f"{lid}.html").as_uri() + "#unit=0")
    page.wait_for_selector("body[data-rendered='0']")
    labels = _texts(page, "#examples .row .label")
    assert "guided" in labels and "deconv" not in labels, labels
    assert problems == []
    # the slide (the report's and the API's) and the notebook card name them alike
    slide = [t.get_text() for t in unit_montage(guided, GUIDED, 0).texts]
    assert "guided backpropagation" in slide and "deconvolutions" not in slide
    assert "guided backpropagation" in guided.unit(GUIDED, 0)._repr_html_()


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory, demo_test_set):
    """A mine of 60 real images sorted by class, stopped after its first checkpoint (8 images):
    only the first two classes have images."""
    sub = per_class_subset(demo_test_set, 6, "0:60")
    order = np.argsort(sub.labels(), kind="stable")
    ds = ArrayDataset(sub.images[order], sub.labels()[order], sub.class_names, sub.preprocessing, sub.describe())
    out = tmp_path_factory.mktemp("cut") / "cut.zarr"
    with pytest.raises(_Stop):
        sketchmine.mine("demo", ds, out=out, batch_size=4, flush_every=2, layers=["features.3", "classifier.1"],
                        progress=StopAfter(3, calls=True, exc=_Stop))
    run = sketchmine.open_run(out)
    assert not run.complete and int((run.class_sizes() > 0).sum()) == 2
    return run


def test_an_unfinished_runs_index_lists_each_class_once_and_says_why(tmp_path, two_classes, browser):
    from sketchmine.present.console import preferences_table

    run = two_classes
    names = run.class_names
    index = write_report(run, tmp_path / "rep", montages=0)
    page, problems = _open(browser, index.as_uri())
    page.wait_for_selector("#summary-top")
    for layer in run.layers:
        row = f"//tr[th[normalize-space()='{layer}']]"
        top = [c.strip() for c in _texts(page, f"#summary-top >> xpath={row}/td")]
        bottom = [c.strip() for c in _texts(page, f"#summary-bottom >> xpath={row}/td")]
        assert len(top) == 1 and len(bottom) == 1 and "" not in top + bottom, (top, bottom)  # no blank cells
        shown = {n for n in names[:2] if n in top[0]} | {n for n in names[:2] if n in bottom[0]}
        assert shown == set(names[:2]) and not any(n in top[0] and n in bottom[0] for n in names[:2])
    notes = _texts(page, ".summary-note")
    console = str(preferences_table(run, 5).caption)
    assert notes and all(note in console for note in notes), (notes, console)
    assert any("only 2 classes have images so far: each is listed once" in n for n in notes)
    assert any(n.startswith("classes without images, left out: " + ", ".join(names[2:4])) for n in notes)
    assert problems == []


def test_a_unit_whose_last_places_tie_says_dataset_order_filled_them(tmp_path, guided, browser):
    layer = "features.6"
    values, index, _ = guided.topk(layer)
    tied = [(u, int((values[u] == values[u, -1]).sum())) for u in range(len(values)) if (index[u] >= 0).all()]
    unit, n = next((u, n) for u, n in tied if n > 1)  # the demo's features.6: units 39, 45 and 65 here
    plain = next(u for u, n in tied if n == 1)
    out = write_report(guided, tmp_path / "rep", montages=0)
    lid = layer_ids(guided)[layer]
    page, problems = _open(browser, (out.parent / "layers" / f"{lid}.html").as_uri())
    page.wait_for_selector(".card")
    said = page.inner_text(f"#unit-{unit} .ties")
    assert said.startswith(f"{n} of {guided.k} tied at ") and "dataset order" in said, said
    assert page.query_selector(f"#unit-{plain} .ties") is None
    page.goto((out.parent / "units" / f"{lid}.html").as_uri() + f"#unit={unit}")
    page.wait_for_selector(f"body[data-rendered='{unit}']")
    assert page.inner_text("#top-ties") == said  # the dashboard says what the card says
    page.goto((out.parent / "units" / f"{lid}.html").as_uri() + f"#unit={plain}")
    page.wait_for_selector(f"body[data-rendered='{plain}']")
    assert page.query_selector("#top-ties") is None
    assert problems == []
