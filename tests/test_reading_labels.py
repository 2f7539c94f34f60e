"""Reading a run whose dataset labels only some images (-1 for the rest) and has classes with no
images at all: the class summaries count the labelled images, say how many they left out, and
never rank a class the run has no image of. Real images (the embedded test split) and the
trained demo model; numpy recomputes every number from the run's top-k and labels."""
from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.present.console import print_summary
from sketchmine.results.compare import compare
from sketchmine.results.unit_summary import LayerSummary

EMPTY = (3, 7)
"""Classes left without images (cow, horse)."""


@pytest.fixture(scope="module")
def partly(tmp_path_factory, demo_test_set):
    """30 images of each class but EMPTY, every fourth one unlabelled (-1)."""
    from sketchmine.data import ArrayDataset

    labels = demo_test_set.labels()
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:30] for c in range(10) if c not in EMPTY]))
    lab = labels[keep].copy()
    lab[::4] = -1
    ds = ArrayDataset(demo_test_set.images[keep], lab, demo_test_set.class_names, demo_test_set.preprocessing,
                      {**demo_test_set.describe(), "subset": "partly labelled"})
    return sketchmine.mine("demo", ds, out=tmp_path_factory.mktemp("p") / "run.zarr", batch_size=64,
                           distributions=True)


def _hist(run, layer):
    """(counts per class over the labelled top-k entries, unlabelled entries), by numpy."""
    idx = run.topk(layer)[1]
    found = run.labels[idx[idx >= 0]]
    return np.bincount(found[found >= 0], minlength=10), int((found < 0).sum())


def test_unlabelled_topk_images_are_left_out_and_counted(partly):
    run = partly
    for layer in ("features.6", "classifier.6"):
        want, off = _hist(run, layer)
        assert off > 0  # the case under test: unlabelled images among the top-k
        hist = run.class_histogram(layer)
        np.testing.assert_array_equal(hist.to_numpy(), want)
        assert hist.attrs["unlabelled"] == off
        top = run.top_classes(layer, 3)
        order = sorted((c for c in range(10) if c not in EMPTY), key=lambda c: (-want[c], c))
        assert list(top.index) == [run.class_names[c] for c in order[:3]]
        assert top.attrs["unlabelled"] == off


def test_summary_and_unit_dashboard_with_unlabelled_images(partly):
    run = partly
    out = io.StringIO()
    print_summary(str(run.path), 3, Console(file=out, width=400))
    text = out.getvalue()
    _, off = _hist(run, "features.6")
    assert f"features.6 {off}" in text.split("top-k entries of unlabelled images, left out of the counts:")[1]
    summary = LayerSummary(run, "features.6")
    idx = run.topk("features.6")[1]
    for u in range(4):
        d = summary.unit(u)
        lab = run.labels[idx[u][idx[u] >= 0]]
        counts = np.bincount(lab[lab >= 0], minlength=10)
        assert d["classes_top"] is not None and "classes_top" not in d["missing"]
        assert {c["class"]: c["count"] for c in d["classes_top"]} == \
            {run.class_names[c]: int(counts[c]) for c in range(10) if counts[c]}
        assert d["classes_top_unlabelled"] == int((lab < 0).sum())


def test_a_unit_card_writes_an_unlabelled_image_as_a_question_mark(partly):
    """The card's text and HTML and the seed's performance line wrote "nan" for a top-k image
    without a label (the class column holds NaN there, not None)."""
    from sketchmine.results.analysis import performance_line

    run = partly
    idx = run.topk("features.6")[1]
    unit = next(u for u in range(idx.shape[0]) if (run.labels[idx[u]] < 0).any())
    card = run.unit("features.6", unit)
    want = ["?" if run.labels[i] < 0 else run.class_names[run.labels[i]] for i in idx[unit]]
    assert repr(card).endswith(f"best first: {', '.join(want)}>")
    assert [w.split(" ")[0] for w in performance_line(card.top).split(" ")[::2]] == want
    assert "nan" not in card._repr_html_().replace("nan_", "")


def test_bottom_classes_leave_out_classes_without_images(partly):
    run = partly
    for layer in ("features.6", "classifier.6"):
        want, _ = _hist(run, layer)
        order = sorted((c for c in range(10) if c not in EMPTY), key=lambda c: (-want[c], c))
        bottom = run.bottom_classes(layer, 3)
        assert list(bottom.index) == [run.class_names[c] for c in order[-3:]]
        assert bottom.attrs["no_images"] == [run.class_names[c] for c in EMPTY]
        assert len(run.top_classes(layer, 10)) == 8  # all the classes that have images


def test_unbiased_bottom_classes_leave_out_classes_without_images(partly):
    run = partly
    pref = run.class_preference("features.6")
    assert pref["preference"].notna().all() and len(pref) == 8
    assert pref.attrs["no_images"] == [run.class_names[c] for c in EMPTY]
    out = io.StringIO()
    print_summary(str(run.path), 3, Console(file=out, width=400))
    assert "nan" not in out.getvalue()
    assert "classes without images, left out: cow, horse" in out.getvalue()


def test_compare_bottom_sets_leave_out_classes_without_images(partly):
    cmp = compare(partly, partly, 3)
    for _, row in cmp.layers.iterrows():
        assert not {"cow", "horse"} & set(row["bottom_a"])
        assert row["jaccard_bottom"] == 1.0
    assert cmp.no_images == ["cow", "horse"]


def test_summary_of_a_run_without_labels_lists_its_layers_and_says_why_no_classes(tmp_path, demo_test_set):
    """`summary` (and --json) of a run none of whose images has a label printed the layers, then
    stopped with the class histogram's error (exit 3); now it says in one line why there are no
    class tables, as the report's index does, and --json gives null class lists and that note."""
    from sketchmine.data import ArrayDataset
    from sketchmine.present.json_out import summary_data

    ds = ArrayDataset(demo_test_set.images[:40], np.full(40, -1), demo_test_set.class_names,
                      demo_test_set.preprocessing, {**demo_test_set.describe(), "subset": "no labels"})
    run = sketchmine.mine("demo", ds, out=tmp_path / "u.zarr", layers=["features.0", "classifier.6"])
    out = io.StringIO()
    print_summary(str(run.path), 5, Console(file=out, width=200))
    text = out.getvalue()
    assert "features.0" in text and "classifier.6" in text
    assert "no class tables: no image of this run has a label (the dataset gave none)" in text
    data = summary_data(run, 5)
    assert data["note"] == "no image of this run has a label (the dataset gave none)"
    assert [(x["name"], x["top_classes"], x["bottom_classes"]) for x in data["layers"]] == [
        ("features.0", None, None), ("classifier.6", None, None)]
    with pytest.raises(SketchmineError, match=r"compare reads the runs' classes .* and run .*u.zarr has none: no "
                                              r"image of this run has a label"):  # said as a class histogram's
        sketchmine.compare(run, run)


def test_a_run_without_labels_still_refuses(tmp_path, demo_test_set):
    from sketchmine.data import ArrayDataset

    ds = ArrayDataset(demo_test_set.images[:40], np.full(40, -1), demo_test_set.class_names,
                      demo_test_set.preprocessing, {**demo_test_set.describe(), "subset": "no labels"})
    run = sketchmine.mine("demo", ds, out=tmp_path / "u.zarr", layers=["features.0"])
    assert not run.has_labels()
    with pytest.raises(SketchmineError, match="no image has a label"):
        run.top_classes("features.0")
    d = LayerSummary(run, "features.0").unit(0)
    assert d["classes_top"] is None and "no labels" in d["missing"]["classes_top"]


def test_summary_and_compare_json_say_what_they_left_out(partly, capsys):
    """`summary --json` gives each layer's unlabelled top-k entries and classes without images;
    `compare --json` its classes without images and how each layer pair was made."""
    import json

    from sketchmine.cli.main import main

    assert main(["summary", str(partly.path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [partly.class_names[c] for c in EMPTY]
    for layer in data["layers"]:
        assert layer["unlabelled"] == _hist(partly, layer["name"])[1] and layer["no_images"] == names
        assert not set(names) & {c["class"] for c in layer["top_classes"] + layer["bottom_classes"]}
    assert main(["compare", str(partly.path), str(partly.path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["no_images"] == names and {pair["paired_by"] for pair in data["layers"]} == {"name"}
