"""The class views say what their numbers can and cannot tell, on real runs of the demo model over
the embedded data: top/bottom lists that cut through ties (every class of the output layer has
count 9), classes of different sizes (raw top-k counts favour the larger), the selectivity
median over the few units a pre-ReLU layer leaves, and class preference against class accuracy.
References are numpy and scipy over the run's own top-k, labels and class means."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from rich.console import Console
from scipy.stats import spearmanr

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.present import plots
from sketchmine.present.compare_console import compare_tables
from sketchmine.present.console import preferences_table, unbiased_table
from sketchmine.present.report import write_report
from sketchmine.results.compare import compare
from sketchmine.results.summaries import one_class_note, sides

N = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_test_set):
    """300 test images, 30 per class: the classes are the same size."""
    return sketchmine.mine("demo", small_test_set, out=tmp_path_factory.mktemp("views") / "run.zarr", batch_size=100)


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory, demo_test_set):
    """All 200 zebra test images and 20 of every other class."""
    labels = demo_test_set.labels()
    zebra = demo_test_set.class_names.index("zebra")
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:200 if c == zebra else 20]
                                   for c in range(len(demo_test_set.class_names))]))
    ds = ArrayDataset(demo_test_set.images[keep], labels[keep], demo_test_set.class_names,
                      demo_test_set.preprocessing, {**demo_test_set.describe(), "subset": "unbalanced"})
    return sketchmine.mine("demo", ds, out=tmp_path_factory.mktemp("unbalanced") / "run.zarr", batch_size=100,
                           layers=["features.6", "classifier.4", "classifier.6"])


def _counts(run, layer: str) -> np.ndarray:
    """The layer's class histogram from its top-k indices and the labels, in numpy."""
    _, idx, _ = run.topk(layer)
    return np.bincount(run.labels[idx[idx >= 0]], minlength=len(run.class_names))


def _text(renderable) -> str:
    buf = io.StringIO()
    Console(file=buf, width=400).print(renderable)
    return re.sub(r"\s+", " ", buf.getvalue())


def _expected_cut(counts: np.ndarray, names: list[str], n: int, top: bool) -> tuple[int, list[str], bool]:
    """(count at the cut, classes with that count left out in class order, all classes tie)."""
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    listed = order[:n] if top else order[-n:]
    cut = int(counts[listed[-1] if top else listed[0]])
    left = [names[c] for c in range(len(counts)) if counts[c] == cut and c not in listed]
    return cut, left, bool((counts == counts[0]).all())


def test_top_and_bottom_lists_say_the_ties_at_their_cut(run):
    names, splits = run.class_names, 0
    for layer in run.layers:
        counts = _counts(run, layer)
        for n in range(1, len(names)):
            for top, frame in ((True, run.top_classes(layer, n)), (False, run.bottom_classes(layer, n))):
                cut, left, all_tied = _expected_cut(counts, names, n, top)
                assert (frame.attrs["cut_count"], frame.attrs["tied_out"], frame.attrs["all_tied"]) == (cut, left, all_tied)
                splits += bool(left) and not all_tied
    assert splits  # some cut of some layer splits a tie without all classes tying
    top = run.top_classes("classifier.6", N)
    assert (_counts(run, "classifier.6") == 9).all() and top.attrs["all_tied"] and top.attrs["cut_count"] == 9


def test_console_plot_and_report_say_the_ties(run, tmp_path):
    layer, n = _split_layer(run)
    top = run.top_classes(layer, n)
    words = f"+ {len(top.attrs['tied_out'])} more tied at {top.attrs['cut_count']}"
    console = _text(preferences_table(run, n))
    assert words in console
    assert _text(preferences_table(run, N)).count("all 10 classes tied at 9") == 4  # classifier.6, softmax: top, bottom
    fig = plots.summary_figure(run, n)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any(t.endswith(words) for t in texts)
    assert sum(t == "all 10 classes tied at 9: no top or bottom classes" for t in plots.summary_figure(run).axes[0].texts
               for t in [t.get_text()]) == 2
    index = write_report(run, tmp_path / "report", images=False, montages=0).read_text()
    cells = {name: re.sub(r"</?bdi>", "", cell) for name, cell in re.findall(  # class names isolated (<bdi>)
        r'<td><a href="layers/[^"]+">([^<]+)</a></td><td>[^<]*</td><td>[^<]*</td><td>((?:[^<]|</?bdi>)*)</td>', index)}
    assert cells["classifier.6"] == "all 10 classes tied at 9" and cells["softmax"] == "all 10 classes tied at 9"
    counts, names = _counts(run, "features.6"), run.class_names
    first = sorted(range(len(names)), key=lambda c: (-counts[c], c))[0]
    assert cells["features.6"].startswith(f"{names[first]} {counts[first]}, ")  # with counts


def _split_layer(run) -> tuple[str, int]:
    """A layer and a list length whose top list cuts through a tie (not all classes tying)."""
    for layer in run.layers:
        for n in range(1, len(run.class_names)):
            top = run.top_classes(layer, n)
            if top.attrs["tied_out"] and not top.attrs["all_tied"]:
                return layer, n
    raise AssertionError("no cut splits a tie")


def test_compare_jaccard_takes_the_tied_classes_and_is_undefined_when_all_tie(run):
    cmp = compare(run, run, N)
    rows = cmp.layers.set_index("layer_a")
    assert np.isnan(rows.loc["classifier.6", "jaccard_top"]) and np.isnan(rows.loc["softmax", "jaccard_bottom"])
    assert "all 10 classes tied" in _text(compare_tables(cmp)[1])
    names = run.class_names

    def tied_set(layer: str) -> set[str] | None:
        counts = _counts(run, layer)
        if (counts == counts[0]).all():
            return None
        cut = sorted(counts, reverse=True)[N - 1]
        return {names[c] for c in range(len(names)) if counts[c] >= cut}

    for a in run.layers:
        for b in run.layers:
            sa, sb = tied_set(a), tied_set(b)
            want = np.nan if sa is None or sb is None else len(sa & sb) / len(sa | sb)
            np.testing.assert_equal(cmp.jaccard.loc[a, b], want)


def test_selectivity_median_says_over_how_many_units(run):
    text = _text(unbiased_table(run, N))
    for layer in run.layers:
        mean, _ = run.class_stats(layer)
        best = mean.max(axis=1)
        rest = (mean.sum(axis=1) - best) / (mean.shape[1] - 1)
        has = int(((best > 0) & (rest >= 0)).sum())
        assert re.search(rf"{re.escape(layer)} .* over {has} of {mean.shape[0]} units", text), layer
    assert "read before its ReLU" in text
    fc = run.class_stats("classifier.1")[0]
    assert (fc.min(axis=1) < 0).any()  # a pre-ReLU layer: some class means are negative


def test_unbalanced_classes_per_image_counts_and_notes(unbalanced, run, tmp_path):
    sizes = np.bincount(unbalanced.labels, minlength=10)
    assert unbalanced.class_sizes().to_numpy().tolist() == sizes.tolist() == [20] * 9 + [200]
    counts = _counts(unbalanced, "classifier.4")
    np.testing.assert_allclose(unbalanced.class_histogram("classifier.4", per_image=True).to_numpy(), counts / sizes)
    top = unbalanced.top_classes("classifier.4", 10)
    np.testing.assert_allclose(top["per_image"].to_numpy(), top["count"].to_numpy() / sizes[
        [unbalanced.class_names.index(c) for c in top.index]])
    assert list(top.index) == [unbalanced.class_names[c] for c in sorted(range(10), key=lambda c: (-counts[c], c))]
    note = "classes differ in size (20 to 200 labelled images)"
    text = _text(preferences_table(unbalanced, N))
    assert note in text and f"{top['per_image'].iloc[0]:.2f}/img" in text
    assert note in plots.summary_figure(unbalanced).axes[0].get_title()
    assert note in plots.histogram_figure(unbalanced, "features.6").axes[0].get_title()
    index = write_report(unbalanced, tmp_path / "report", images=False, montages=0).read_text()
    assert 'id="class-sizes"' in index and note in index
    page = next((tmp_path / "report" / "layers").glob("*classifier.4*.html")).read_text()
    cells = re.findall(r"<tr><td>([^<]+)</td><td[^>]*>(\d+)</td><td[^>]*>[^<]*</td><td[^>]*>(\d+)</td><td[^>]*>([0-9.]+)</td></tr>", page)
    assert note in page and [c for c, *_ in cells] == list(top.index)  # the layer page: class sizes and per image
    for c, count, size, per_image in cells:
        assert int(size) == sizes[unbalanced.class_names.index(c)] and float(per_image) == pytest.approx(int(count) / int(size), abs=5e-4)
    balanced = write_report(run, tmp_path / "balanced", images=False, montages=0).parent / "layers"
    assert "count per image" not in next(balanced.glob("*features.6*.html")).read_text()
    assert note not in _text(preferences_table(run, N))  # 30 images of every class: no note
    assert "differ in size" not in plots.summary_figure(run).axes[0].get_title()


def test_accuracy_correlation_by_both_measures(run, tmp_path):
    acc = run.class_accuracy()["accuracy"].to_numpy()
    sizes = np.bincount(run.labels, minlength=10)
    got = run.accuracy_correlation()
    assert list(got.index) == run.layers
    for layer in run.layers:
        rate = _counts(run, layer) / sizes
        pref = run.class_preference(layer)["preference"].reindex(run.class_names).to_numpy()
        row = got.loc[layer]
        if np.ptp(rate) == 0:  # every class ties: no ranking
            assert np.isnan(row["spearman_topk"])
        else:
            want = spearmanr(rate, acc)
            assert row["spearman_topk"] == pytest.approx(want.statistic) and row["p_value_topk"] == pytest.approx(want.pvalue)
        want = spearmanr(pref, acc)
        assert row["spearman_preference"] == pytest.approx(want.statistic)
        assert row["p_value_preference"] == pytest.approx(want.pvalue)
        assert row["classes"] == 10
    text = _text(unbiased_table(run, N))
    assert "ρ acc top-k" in text and "ρ acc all" in text
    assert f"{got.loc['features.6', 'spearman_preference']:+.3f}" in text
    index = write_report(run, tmp_path / "report", images=False, montages=0).read_text()
    assert "Class preference vs class accuracy" in index
    assert f"<td>features.6</td><td>conv2d</td><td class=\"num\">{got.loc['features.6', 'spearman_topk']:.3f}</td>" in index


def test_a_layer_whose_classes_all_tie_has_no_top_k_correlation_whatever_the_class_sizes(unbalanced, tmp_path):
    """The logits' top-9 are 9 images of each class: all tied. Divided by class sizes of 20 and
    200 they ranked the sizes against accuracy, shown as the layer's ρ beside "all tied"."""
    top = unbalanced.top_classes("classifier.6", 10)
    assert top.attrs["all_tied"] and top.attrs["cut_count"] == 9
    acc = unbalanced.class_accuracy()["accuracy"].to_numpy()
    sizes = unbalanced.class_sizes().to_numpy()
    assert np.isfinite(spearmanr(9 / sizes, acc).statistic)  # what was shown: the sizes' order, not the layer's
    got = unbalanced.accuracy_correlation()
    assert np.isnan(got.loc["classifier.6", "spearman_topk"]) and np.isnan(got.loc["classifier.6", "p_value_topk"])
    assert np.isfinite(got.loc["classifier.6", "spearman_preference"])  # over all images: a ranking still
    counts = _counts(unbalanced, "features.6")
    assert np.ptp(counts) > 0 and got.loc["features.6", "spearman_topk"] == pytest.approx(
        spearmanr(counts / sizes, acc).statistic)
    index = write_report(unbalanced, tmp_path / "report", images=False, montages=0).read_text()
    assert '<td>classifier.6</td><td>linear</td><td class="num">-</td>' in index


def test_unit_card_says_its_classes_are_ranked_by_mean_maximum(run):
    card = run.unit("features.6", 3)
    classes = card.top_classes()
    mean = run.class_stats("features.6")[0][3]
    assert list(classes.index) == [run.class_names[c] for c in np.argsort(-mean, kind="stable")[:5]]
    assert classes.attrs["ranked_by"] == "mean image maximum over all images"
    assert f"top classes by mean image maximum over all images: {', '.join(classes.index)}" in repr(card)
    assert "ranks a layer's classes by their count" in " ".join(type(card).__doc__.split())


def test_a_partial_runs_unit_card_says_it_is_partial(tmp_path, small_test_set):
    """Killed at 100 of 300 images, the notebook card read "top classes by mean image maximum
    over all images" and its HTML said nothing of a partial run (the CLI's `unit` did)."""
    from tests.helpers import StopAfter

    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", small_test_set, out=tmp_path / "r.zarr", layers=["features.6"], batch_size=50,
                        flush_every=2, progress=StopAfter(120))
    run = sketchmine.open_run(tmp_path / "r.zarr")
    assert not run.complete and run.images_done == 100
    card = run.unit("features.6", 3)
    said = "mean image maximum over the 100 images mined so far"
    assert card.top_classes().attrs["ranked_by"] == said
    assert "PARTIAL (100 images so far), " in repr(card) and f"top classes by {said}:" in repr(card)
    page = card._repr_html_()
    assert "<b>PARTIAL</b> (100 images so far)" in page and f"top classes by {said}" in page
    assert "over all images" not in repr(card) + page


def test_a_notebook_card_of_an_output_unit_names_its_class(run):
    """The report's card and `sketchmine unit` say "unit 2 · cat" for a logit, the notebook card
    said "classifier.6 unit 2"."""
    cls = run.class_names[2]
    for layer in ("classifier.6", "softmax"):
        card = run.unit(layer, 2)
        assert card.output_class == cls and f"{layer}[2] ({cls}) of " in repr(card)
        assert f"</b> unit 2 · {cls} · max activation" in card._repr_html_()
    card = run.unit("classifier.4", 2)  # a hidden layer's units are no classes
    assert card.output_class is None and "classifier.4[2] of " in repr(card)


def test_summary_json_says_the_ties_as_the_lists_do(run):
    from sketchmine.present.json_out import summary_data

    doc = summary_data(run, N)
    for layer in doc["layers"]:
        counts = _counts(run, layer["name"])
        for key, top in (("top", True), ("bottom", False)):
            _, left, all_tied = _expected_cut(counts, run.class_names, N, top)
            assert layer[f"tied_{key}"] == left and layer["all_tied"] == all_tied, layer["name"]
    by_name = {layer["name"]: layer for layer in doc["layers"]}
    assert by_name["classifier.6"]["all_tied"] and len(by_name["classifier.6"]["tied_top"]) == 5
    split, n = _split_layer(run)
    layer = {layer["name"]: layer for layer in summary_data(run, n)["layers"]}[split]
    assert layer["tied_top"] == list(run.top_classes(split, n).attrs["tied_out"]) != [] and not layer["all_tied"]


def test_console_class_lists_never_round_to_all(run):
    """summary's class cells printed 2000 of 2001 right as "100.0"; they say accuracy as every
    other view does (results/numbers.percent: a list, not a column, so an exact 100 is "100"), and a
    unit card numbers its ranks from 1."""
    from sketchmine.present.console import _classes_cell

    top = run.top_classes("features.6", 2)
    top["accuracy"] = [2000 / 2001, 1.0]
    cell = _classes_cell(top)
    assert "(99.95)" in cell and "(100)" in cell and "100.0" not in cell
    card = run.unit("features.6", 0)._repr_html_()
    ranks = re.findall(r"<tr><td>(\d+)</td>", card)
    assert ranks == [str(r) for r in range(1, run.k + 1)]


def test_lists_shorter_than_n_keep_their_own_columns(tmp_path, demo_test_set):
    """Images of two classes: each layer's lists hold one class each, fewer than n (each class once,
    as `summary` lists them). The bottom list's cells were drawn in the top list's empty columns,
    under "Top 5 classes"."""
    labels = demo_test_set.labels()
    keep = np.sort(np.concatenate([np.nonzero(labels == c)[0][:15] for c in (2, 7)]))
    ds = ArrayDataset(demo_test_set.images[keep], labels[keep], demo_test_set.class_names,
                      demo_test_set.preprocessing, {**demo_test_set.describe(), "subset": "two classes"})
    run = sketchmine.mine("demo", ds, layers=["features.6"], out=tmp_path / "run.zarr", batch_size=30)
    assert sides(2, N) == (1, 1)
    top, bottom = run.top_classes("features.6", 1), run.bottom_classes("features.6", 1)
    cells = [(round(t.get_position()[0] - 0.48, 6), t.get_text().split("\n")[0])
             for t in plots.summary_figure(run, N).axes[0].texts if t.get_position()[1] >= 0]  # not the headers
    assert [name for x, name in cells if x < N] == [str(c) for c in top.index]
    assert [name for x, name in cells if x >= N + 0.3] == [str(c) for c in bottom.index]
    assert [x for x, _ in cells] == [0, N + 0.3] and top.index[0] != bottom.index[0]


def test_the_ink_chart_says_where_there_is_no_correlation(tmp_path, demo_test_set):
    """Images of one class: no layer has a ρ. The chart drew each as a bar of height 0, an
    empty frame that read as "no correlation" (UX audit); it says "no ρ" and why."""
    labels = demo_test_set.labels()
    keep = np.nonzero(labels == 4)[0][:12]
    ds = ArrayDataset(demo_test_set.images[keep], labels[keep], demo_test_set.class_names,
                      demo_test_set.preprocessing, {**demo_test_set.describe(), "subset": "one class"})
    run = sketchmine.mine("demo", ds, layers=["features.0", "features.6"], out=tmp_path / "run.zarr", batch_size=12)
    assert run.ink_correlation()["spearman"].isna().all()
    ax = plots.ink_figure(run).axes[0]
    assert [t.get_text() for t in ax.texts] == ["no ρ", "no ρ"] and "no ρ:" in ax.get_title()


def test_a_class_histogram_of_many_classes_draws_the_most_frequent_and_says_so(tmp_path, small_test_set):
    """With 1,000 classes (ImageNet's count) the layer's class histogram drew every class: a
    figure 281 inches wide, a 34,000 px PNG per layer. It draws the 60 most frequent now, in the
    order and with the counts of `top_classes`, and its title counts the rest."""
    from torch import nn

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 1000, 120)
    names = [f"class {i:03d}" for i in range(1000)]
    ds = ArrayDataset(small_test_set.images[:120], labels, names, preprocessing=small_test_set.preprocessing)
    import torch

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 48, 5), nn.ReLU()).eval()
    many = sketchmine.mine(net, ds, layers=["1"], logits=False, out=tmp_path / "many.zarr", k=5)
    every = many.top_classes("1", 1000)
    assert len(every) == len(np.unique(labels)) and (every["count"] > 0).sum() > plots.HISTOGRAM_BARS
    fig = plots.histogram_figure(many, "1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(every.index[:plots.HISTOGRAM_BARS])
    assert [p.get_height() for p in ax.patches] == every["count"].iloc[:plots.HISTOGRAM_BARS].tolist()
    shown, total = int(every["count"].iloc[:60].sum()), int(every["count"].sum())
    assert f"the 60 most frequent of {len(every)} classes ({shown:,} of {total:,} entries)" in ax.get_title()
    assert fig.get_figwidth() < 20
    small = plots.histogram_figure(many, "1", bars=1000)  # every class where asked
    assert len(small.axes[0].patches) == len(every) and "most frequent" not in small.axes[0].get_title()


def test_a_run_of_one_class_says_why_it_has_no_preference_selectivity_or_correlation(tmp_path, demo_test_set):
    """Images of one class: `summary` blamed the ReLU for the missing selectivity ("a layer read
    before its ReLU ... have none"), the report's index listed every layer's ρ as "-" over
    "classes 0", and mining a one-class folder with the 10-output model said "1 classes". Each
    now says that one class has images and that these views set classes against each other."""
    from sketchmine.data import export_image_folder
    from sketchmine.errors import SketchmineError

    labels = demo_test_set.labels()
    keep = np.nonzero(labels == 4)[0][:12]
    ds = ArrayDataset(demo_test_set.images[keep], labels[keep], demo_test_set.class_names,
                      demo_test_set.preprocessing, {**demo_test_set.describe(), "subset": "one class"})
    run = sketchmine.mine("demo", ds, layers=["features.0", "features.6"], out=tmp_path / "run.zarr", batch_size=12)
    assert run.ink_correlation()["classes"].eq(0).all() and run.accuracy_correlation()["spearman_topk"].isna().all()
    why = (f"only 1 class ({demo_test_set.class_names[4]}) has images: a class preference, the class selectivity "
           "index and the rank correlations with ink density and accuracy set classes against each other, so none "
           "is defined")
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(unbiased_table(run, N))
    text = " ".join(console.export_text().split())
    assert why in text and "before its ReLU" not in text
    index = write_report(run, tmp_path / "rep", montages=0)
    page = " ".join(index.read_text().split())
    assert page.count(f"<p>{why}.</p>") == 2  # under ink density and under class accuracy
    assert "<th>classes</th>" not in page  # the two tables of "-" over 0 classes
    from sketchmine.present.json_out import summary_data

    data = summary_data(run, N)
    assert data["note"] == why and all(layer["spearman_ink"] is None or np.isnan(layer["spearman_ink"])
                                       for layer in data["layers"])
    many = sketchmine.mine("demo", demo_test_set, layers=["features.0"], out=tmp_path / "all.zarr", batch_size=500)
    assert one_class_note(many) is None and "note" not in summary_data(many, N)
    folder = tmp_path / "folder"
    export_image_folder(ds, folder)
    for empty in [p for p in folder.iterdir() if not any(p.iterdir())]:
        empty.rmdir()  # a folder of one class
    with pytest.raises(SketchmineError, match=r"the model has 10 outputs but the dataset has 1 class \("):
        sketchmine.mine("demo", folder, layers=["features.0"], out=tmp_path / "folder.zarr")
