"""The report's unit cards in a real headless Chromium against the store: "Classes with
performance" counts each class by its position, so two classes that share a name (a dataset
may name two alike) are two entries, each with its own count and accuracy."""
from __future__ import annotations

import re

import numpy as np
import pytest

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.present.report import write_report
from tests.helpers import per_class_subset

@pytest.fixture(scope="module")
def alike(tmp_path_factory, demo_test_set):
    """200 real test images whose classes 4 (dog) and 7 (horse) are both named "animal", classified
    by the demo model at different accuracies."""
    sub = per_class_subset(demo_test_set, 20, "0:200")
    names = list(sub.class_names)
    names[4] = names[7] = "animal"
    ds = ArrayDataset(sub.images, sub.labels(), names, sub.preprocessing, {**sub.describe(), "names": "alike"})
    run = sketchmine.mine("demo", ds, out=tmp_path_factory.mktemp("alike") / "run.zarr", layers=["features.3"])
    acc = run.class_accuracy()["accuracy"].to_numpy()
    assert acc[4] != acc[7]
    return run


def test_card_classes_of_one_name_are_counted_apart(tmp_path, alike, browser):
    """Before, the card merged them: "4 animal (90.00 %)" for 3 horses and a dog."""
    index = write_report(alike, tmp_path / "rep", montages=0)
    _, image_index, _ = alike.topk("features.3")
    labels = alike.labels[image_index]
    both = [u for u in range(len(labels)) if {4, 7} <= set(labels[u].tolist())]
    acc = alike.class_accuracy()["accuracy"].to_numpy()
    which = {f"{acc[c] * 100:.2f}": c for c in (4, 7)}
    assert both
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((index.parent / "layers" / "00-features.3.html").as_uri())
    page.wait_for_selector(f"#unit-{both[0]} .perf")
    for u in both:
        line = page.inner_text(f"#unit-{u} .perf")
        shown = re.findall(r"(\d+) animal \(([\d.]+) %\)", line)
        want = sorted((int((labels[u] == c).sum()), c) for c in (4, 7))
        # each "animal" once per class, with that class's count and accuracy
        assert sorted((int(n), which[a]) for n, a in shown) == want, line
    assert not errors
    page.close()


def test_softmax_cards_say_no_ties_where_its_probabilities_repeat(tmp_path, demo_test_set, browser):
    """The softmax's top-k ranks images by log-odds and shows their probabilities, exactly 1.0 for
    confident images (docs/store.md). Before, its card and dashboard said "9 of 9 tied at 1.000:
    equal values rank in dataset order": false, they rank by log-odds."""
    run = sketchmine.mine("demo", demo_test_set, out=tmp_path / "run.zarr", layers=["classifier.6", "softmax"],
                          batch_size=500)
    values, index, _ = run.topk("softmax")
    repeated = [u for u in range(values.shape[0]) if (values[u] == values[u, -1]).sum() > 1]
    assert repeated  # probabilities that read alike: the case under test
    logits = run.store.read("eval/logits")
    for u in repeated:  # ranked by log-odds, not in dataset order among the equal probabilities
        z = logits[index[u], u] - np.log(np.exp(np.delete(logits[index[u]], u, axis=1)).sum(1))
        assert (np.diff(z) <= 0).all()
    index_page = write_report(run, tmp_path / "rep", montages=0)
    page = browser.new_page()
    page.goto((index_page.parent / "layers" / "01-softmax.html").as_uri())
    page.wait_for_selector(f"#unit-{repeated[0]} .perf")
    assert page.query_selector_all(".perf.ties") == [] and "log-odds" in page.inner_text("#log-odds")
    page.goto((index_page.parent / "units" / "01-softmax.html").as_uri() + f"#unit={repeated[0]}")
    page.wait_for_selector("#dash h3:has-text('by activation bin')")
    assert page.query_selector("#top-ties") is None
    page.close()
