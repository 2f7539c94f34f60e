"""One view writes one number one way, and a narrow terminal cuts no word: a unit's least
activation reads as its 0 % quantile (console and dashboard), the importance table's drop columns
keep one count of decimals, headers wrap between words at 60 columns and no table runs past the
edge, a long layer name no longer folds the importance table's title mid-phrase, a class is not
listed as both most and least preferred where few classes have images, and a partial run's
accuracy is "partial" in `compare` and in the notebook alike. Real test images, the demo models."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from torch import nn

import sketchmine
from sketchmine.present.console import importance_table, print_summary
from sketchmine.present.unit_console import print_unit
from sketchmine.results.numbers import column
from sketchmine.results.unit_summary import LayerSummary, maxima_text
from tests.helpers import StopAfter, per_class_subset
from tests.test_report import _open

LONG = "pretrained_backbone_with_a_long_name.features.10"


class Wrapped(nn.Module):
    """The demo model under a long attribute name: its layers have long qualified names."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.pretrained_backbone_with_a_long_name = inner

    def forward(self, x):
        return self.pretrained_backbone_with_a_long_name(x)


@pytest.fixture(scope="module")
def subset(demo_test_set):
    """40 real test images (4 per class), bears first."""
    return per_class_subset(demo_test_set, 4, "0:40")


@pytest.fixture(scope="module")
def run(tmp_path_factory, subset):
    """The subset mined with the distribution statistics; classifier.4 ranked by importance."""
    r = sketchmine.mine("demo", subset, layers=["features.3", "classifier.4"], out=tmp_path_factory.mktemp("r") / "r.zarr",
                        distributions=True)
    sketchmine.unit_importance(r, "classifier.4", dataset=subset)
    return sketchmine.open_run(r.path)


@pytest.fixture(scope="module")
def partial(tmp_path_factory, subset):
    """The subset's first batch of 4 images mined, then interrupted: one class (bear) reached."""
    out = tmp_path_factory.mktemp("p") / "p.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", subset, out=out, batch_size=4, flush_every=1, progress=StopAfter(2, calls=True))
    run = sketchmine.open_run(out)
    assert not run.complete and set(run.labels[:run.images_done].tolist()) == {0}
    return run


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("│")[1:-1]]


def _value(text: str, title: str, rank: int = 1) -> str:
    """The value cell of rank `rank` in the images table under `title` of `sketchmine unit`'s text."""
    rows = text.split(title, 1)[1].splitlines()
    return next(_cells(line)[1] for line in rows if line.startswith("│") and _cells(line)[0] == str(rank))


def test_a_units_least_value_reads_as_its_0_quantile(run):
    """`sketchmine unit` wrote the 0 % quantile in the column of the maximum ("-0.025") and the
    least-activating image, the same number, in a column of its own ("-0.02454"). Every activation
    of the view is one column now: the least value reads as the 0 % quantile, the largest as the
    maximum and the 100 % quantile, the class means with their decimals."""
    summary, differed = LayerSummary(run, "features.3"), 0
    for u in range(summary.units):
        d = summary.unit(u, infinities=True)
        assert d["bottom"][0]["value"] == d["quantiles"]["values"][0] and d["top"][0]["value"] == d["max"]
        differed += column([e["value"] for e in d["bottom"]])[0] != maxima_text(d)[2]  # each part its own column
        out = io.StringIO()
        print_unit(run.path, "features.3", u, Console(file=out, width=200))
        text = out.getvalue()
        quantiles = dict(re.findall(r"│\s+([0-9.]+) %\s+│\s+(\S+)\s+│", text))
        maximum = re.search(r"│ max activation\s+│\s+(\S+) │", text).group(1)
        least = _value(text, "bottom 9 images (least activating)")
        assert least == quantiles["0"] and _value(text, "top 9 images") == maximum == quantiles["100"], (u, text)
        means = re.findall(r"│ [^│]*│ \w+ \((-?[\d.]+)\)\s+│", text)
        assert means and {len(m.partition(".")[2]) for m in means} == {len(maximum.partition(".")[2])}, text
    assert differed  # units whose parts, each a column of its own, read apart


def test_the_dashboard_writes_the_least_value_as_its_0_quantile(run, tmp_path, browser):
    """The report's unit dashboard (unit.js) wrote the overview's quantiles and the bottom strip's
    values as two columns too; now as `sketchmine unit` writes them, one column."""
    from sketchmine.present.report import write_report

    summary = LayerSummary(run, "features.3")
    units = [u for u in range(summary.units) if column([e["value"] for e in summary.unit(u)["bottom"]])[0]
             != maxima_text(summary.unit(u))[2]][:3]
    assert units
    rep = write_report(run, tmp_path / "rep", montages=0).parent
    page, problems = _open(browser, (rep / "units" / "00-features.3.html").as_uri())
    for u in units:
        page.evaluate(f"() => {{ location.hash = 'unit={u}'; }}")
        page.wait_for_function(f"() => document.body.getAttribute('data-rendered') === '{u}'")
        rows = dict(page.evaluate("() => [...document.getElementById('overview').rows].map(r => [r.cells[0].textContent, "
                                  "r.cells[1].textContent])"))
        strips = page.evaluate("() => [...document.querySelectorAll('#examples .strip')].map(s =>"
                               " [...s.querySelectorAll('.cap .value')].map(v => v.textContent)).filter(r => r.length)")
        top, bottom = strips[0], strips[1]
        out = io.StringIO()
        print_unit(run.path, "features.3", u, Console(file=out, width=200))
        assert bottom[0] == rows["quantile 0 %"] == _value(out.getvalue(), "bottom 9 images (least activating)"), u
        assert top[0] == rows["max activation"] == rows["quantile 100 %"], u
    assert problems == []
    page.close()


def test_a_drop_column_keeps_one_count_of_decimals(run):
    """The importance table's "acc. drop" column wrote an exact zero "0" beside "2.50" (and the
    probability's "0" beside "0.0738"): every value of a drop column has the column's decimals."""
    df = run.unit_importance("classifier.4")
    assert (df["acc_drop"] == 0).any() and (df["acc_drop"] != 0).any() and (df["prob_drop"] == 0).any()
    out = io.StringIO()
    Console(file=out, width=200).print(importance_table(run, "classifier.4", len(df)))
    rows = [_cells(line) for line in out.getvalue().splitlines() if line.startswith("│")]
    assert [int(r[0]) for r in rows] == df["unit"].tolist()
    for (_, want), (_, prob, acc, *_) in zip(df.iterrows(), rows):
        assert len(acc.partition(".")[2]) == 2 and float(acc) == pytest.approx(want["acc_drop"] * 100, abs=0.005), acc
        # 4 decimals; more only where a nonzero drop would read as 0 (as `points` writes it)
        assert len(prob.partition(".")[2]) == 4 or float(f"{want['prob_drop'] * 100:.4f}") == 0 != want["prob_drop"], prob
        assert float(prob) == pytest.approx(want["prob_drop"] * 100, abs=5e-5), prob


def test_at_60_columns_no_header_is_cut_and_no_table_runs_past_the_edge(run, subset, tmp_path):
    """At 60 columns rich narrowed every column alike: "max activation" read "activati…",
    "selectivity (median)" "select… (media…"; and a ResNet's long layer names kept their width
    past the edge, so the class table's last column and border were cut. Headers now wrap between
    their words, every line fits, every border is whole."""
    resnet = sketchmine.mine("demo-resnet", subset, layers=["layer1.0.conv1", "layer2.0.downsample.0", "fc"],
                             out=tmp_path / "res.zarr")
    for r in (run, resnet):
        out = io.StringIO()
        print_summary(str(r.path), 5, Console(file=out, width=60))
        lines = out.getvalue().splitlines()
        assert all(len(line) <= 60 for line in lines), out.getvalue()
        tables = [line for line in lines if line.startswith(("┃", "│", "┏", "└"))]
        assert all(line.endswith(("┃", "│", "┓", "┘")) for line in tables), out.getvalue()
        heads = [line for line in lines if line.startswith("┃")]
        assert not any("…" in line for line in heads), out.getvalue()
        words = {w for line in heads for cell in line.split("┃") for w in cell.split()}
        assert {"max", "activation", "selectivity", "(median)", "layer", "bottom"} <= words, out.getvalue()


def test_a_long_layer_name_does_not_fold_the_importance_title(subset, demo_model, tmp_path):
    """"<long layer name>: units that matter most when zeroed (40 images, …)" was folded by rich
    at the table's width in the middle of its phrase ("… most when" / "zeroed (40 …"). The
    layer is the title's first line, what the table shows its second."""
    model = Wrapped(demo_model.module)
    r = sketchmine.mine(model, subset, layers=[LONG], out=tmp_path / "long.zarr")
    sketchmine.unit_importance(r, LONG, dataset=subset, model=model)
    df = r.unit_importance(LONG)
    out = io.StringIO()
    Console(file=out, width=80).print(importance_table(r, LONG, 5))
    lines = [line.strip() for line in out.getvalue().splitlines()]
    assert lines[:2] == [LONG, f"units that matter most when zeroed (40 images, accuracy "
                               f"{df.attrs['base_accuracy'] * 100:.2f} %)"], out.getvalue()
    from sketchmine.present.effects_table import effects_table

    sketchmine.unit_effects(r, LONG, model=model, data=subset)
    out = io.StringIO()
    Console(file=out, width=80).print(effects_table(r, LONG, 5))
    assert [line.strip() for line in out.getvalue().splitlines()][:2] == [
        LONG, "what each unit does to the output (each class's probability with the unit minus"], out.getvalue()


def _lists(text: str, n: int, names: list[str]) -> list[list[tuple[set[str], set[str]]]]:
    """Each table of `summary` with top and bottom lists: per layer row the classes its top and its
    bottom cell name."""
    tables: list[list[tuple[set[str], set[str]]]] = []
    named = lambda cell: {c for c in names if re.search(rf"\b{c}\b", cell)}  # noqa: E731
    rows: list[tuple[set[str], set[str]]] | None = None
    for line in text.splitlines():
        if line.startswith("┃"):
            rows = [] if [c.strip() for c in line.split("┃")[1:-1]] == ["layer", f"top {n}", f"bottom {n}"] else None
            if rows is not None:
                tables.append(rows)
        elif line.startswith("│") and rows is not None:
            cells = _cells(line)
            rows.append((named(cells[1]), named(cells[2])))
        elif line.startswith("└"):
            rows = None
    return tables


def test_a_class_is_not_listed_as_both_most_and_least_preferred(partial, run):
    """A partial run that had reached one class listed it under "top 5" and "bottom 5" alike (and
    `summary -n 6` over 10 classes listed 2 classes in both). With fewer classes than both lists
    need, each is listed once, and a note says why."""
    for r, n, note in ((partial, 5, "only 1 class has images so far: it is listed once (1 under top 5, 0 under bottom 5)"),
                       (run, 6, "only 10 classes have images: each is listed once (5 under top 6, 5 under bottom 6)")):
        out = io.StringIO()
        print_summary(str(r.path), n, Console(file=out, width=200))
        text = out.getvalue()
        tables = _lists(text, n, r.class_names)  # by top-k count; by preference over all images
        assert len(tables) == 2 and all(len(rows) == len(r.layers) for rows in tables), text
        assert all(top and not (top & bottom) for rows in tables for top, bottom in rows), text
        assert " ".join(text.split()).count(note) == 2, text  # under each of the two tables


def test_a_partial_runs_accuracy_reads_partial_in_compare_and_the_notebook(partial, run):
    """`compare` wrote a partial run's accuracy "partial", the notebook's repr and table "-" (which
    elsewhere says a run has no predictions): compare says "partial", the notebook, which says
    the run is partial anyway, no accuracy at all."""
    from sketchmine.present.compare_console import print_compare
    from sketchmine.results.compare import compare

    out = io.StringIO()
    print_compare(partial, run, 3, Console(file=out, width=200))
    assert "accuracy: A (partial) vs B (" in out.getvalue()
    assert f"{str(partial.path)!r} (partial) vs B" in repr(compare(partial, run, 3))
    assert "accuracy" not in repr(partial) + partial._repr_html_()
    assert "partial (" in repr(partial) and "partial (" in partial._repr_html_()
    assert f"accuracy {run.accuracy() * 100:.2f} %" in repr(run)
    assert Path(partial.path).exists()


def test_a_partial_run_s_unit_card_ranks_only_the_classes_it_has_reached(partial):
    """A unit card of a run that had reached one class listed five classes under its top classes,
    four of them with no image (mean NaN); it lists the class reached and names the others."""
    card = partial.unit("features.0", 3)
    top = card.top_classes(5)
    assert list(top.index) == ["bear"] and (top["images"] > 0).all()
    assert top.attrs["no_images"] == [c for c in partial.class_names if c != "bear"]
