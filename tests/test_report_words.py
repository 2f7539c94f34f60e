"""What the report's words say matches the run, on real runs of the embedded demo model and data:
pictures are named by the method `visualize` made them with (guided backpropagation is no
deconvolution). Pages are checked in a real headless Chromium."""
from __future__ import annotations

import pytest

import sketchmine
from sketchmine.present.montage import unit_montage
from sketchmine.present.report import write_report
from sketchmine.present.report_data import layer_ids
from tests.helpers import per_class_subset
from tests.test_report import _open, browser  # noqa: F401  (the Chromium fixture)

GUIDED = "features.3"


@pytest.fixture(scope="module")
def guided(tmp_path_factory, demo_test_set):
    """50 real images through the demo model, features.3 visualized by guided backpropagation (the
    first 4 units: enough to name them)."""
    sub = per_class_subset(demo_test_set, 5, "0:50")
    run = sketchmine.mine("demo", sub, out=tmp_path_factory.mktemp("guided") / "run.zarr", batch_size=50,
                          layers=[GUIDED, "features.6"])
    return sketchmine.visualize(run, layers=[GUIDED], data=sub, method="guided", batch_size=64, max_units=4)


def _texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")


def test_pictures_are_named_by_the_method_that_made_them(tmp_path, guided, browser):  # noqa: F811
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
