"""A column of percentages has one count of decimals (results/numbers.percents): the summary's
per-class accuracy table wrote "100" beside "97.50", the compare table "0" beside "+10.00" and
"100" beside "90.00", the report's accuracy columns "100" beside "90.00", and the importance
plot labelled a bar "acc drop 0 pt" where the importance table beside it says "0.00". 100 and
0 still only when exact ("99.95" for 2000 of 2001, never "100.00"). Real test images of the demo
model and the demo model with one unit zeroed, over 10 images of every class."""
from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
import torch
from rich.console import Console

import sketchmine
from sketchmine.present import plots
from sketchmine.present.compare_console import compare_tables
from sketchmine.present.console import accuracy_table, importance_table
from sketchmine.present.report import write_report
from sketchmine.results import importance_store
from sketchmine.results.numbers import percents
from tests.helpers import per_class_subset

LAYER = "features.3"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model, demo_test_set):
    """The demo model (one class at 90 %, the others at 100 %) with unit importance, and the demo
    model with unit 3 of features.3 zeroed (every class at 100 %) over the same images."""
    root = tmp_path_factory.mktemp("pct")
    ds = per_class_subset(demo_test_set, 10, "0:100")
    a = sketchmine.mine("demo", ds, layers=[LAYER], out=root / "a.zarr")
    sketchmine.unit_importance(a, LAYER, dataset=ds)
    net = copy.deepcopy(demo_model.module).eval()
    with torch.no_grad():
        net.features[3].weight[3] = 0
        net.features[3].bias[3] = 0
    b = sketchmine.mine(net, ds, layers=[LAYER], out=root / "b.zarr")
    return sketchmine.open_run(a.path), b


def _rows(table, width: int = 120) -> list[list[str]]:
    """The body rows of a rich table as printed: its cells, stripped."""
    out = io.StringIO()
    Console(file=out, width=width).print(table)
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.getvalue().splitlines()
            if line.startswith("│") and not line.startswith("│ class ") and not line.startswith("│ unit ")]


def _mixed(texts: list[str]) -> set[int]:
    """The counts of decimals of a column's numbers (one, for a column written as one)."""
    return {len(t.partition(".")[2]) for t in texts if t != "-"}


def test_the_accuracy_table_of_summary_keeps_one_count_of_decimals(runs):
    a, _ = runs
    acc = a.class_accuracy()["accuracy"]
    assert (acc == 1).any() and (acc < 1).any()  # the case: exact 100 % beside less
    rows = _rows(accuracy_table(a))
    got = [r[1] for r in rows]
    assert [r[0] for r in rows] == list(acc.index)
    assert got == [f"{v * 100:.2f}" for v in acc] and "100.00" in got and "100" not in got
    assert _mixed(got) == {2}


def test_the_compare_class_table_keeps_one_count_of_decimals(runs):
    a, b = runs
    cmp = sketchmine.compare(a, b, 3)
    diff = cmp.accuracy["difference"]
    assert (diff == 0).any() and (diff != 0).any()  # the case: "0" beside "+10.00"
    rows = _rows(compare_tables(cmp)[0])
    assert [r[0] for r in rows] == list(cmp.accuracy.index)
    for i, col in ((1, "accuracy_a"), (2, "accuracy_b")):
        got = [r[i] for r in rows]
        assert got == [f"{v * 100:.2f}" for v in cmp.accuracy[col]] and _mixed(got) == {2}, col
    got = [r[3] for r in rows]
    assert got == [f"{v * 100:+.2f}" if v else "0.00" for v in diff]  # a rise with its sign, no change "0.00"
    assert "0.00" in got and "0" not in got and _mixed(got) == {2}


def test_the_report_accuracy_columns_keep_one_count_of_decimals(runs, tmp_path):
    a, _ = runs
    acc = a.class_accuracy()["accuracy"]
    index = write_report(a, tmp_path / "report", images=False, montages=0)
    page = index.read_text(encoding="utf-8")
    table = page[page.index("<th>accuracy %</th>"):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">([^<]*)</td><td class=\"num\">(\d+)</td></tr>", table)
    assert [r[0] for r in rows] == list(acc.index)
    got = [r[1] for r in rows]
    assert got == [f"{v * 100:.2f}" for v in acc] and "100.00" in got and "100" not in got
    # the layer page's class table too (count, accuracy %)
    layer = next((index.parent / "layers").glob("*.html")).read_text(encoding="utf-8")
    body = layer[layer.index("<th>accuracy %</th>"):]
    cells = re.findall(r"<tr><td>[^<]*</td><td class=\"num\">\d+</td><td class=\"num\">([^<]*)</td>",
                       body[:body.index("</table>")])
    assert len(cells) == len(acc) and "100.00" in cells and "100" not in cells and _mixed(cells) == {2}


def test_the_importance_plot_labels_its_bars_as_the_importance_table(runs):
    b, _ = runs
    df = b.unit_importance(LAYER).head(10)
    drops = df["acc_drop"].to_numpy()
    assert (drops == 0).any() and (drops != 0).any()  # the case: "0" beside "1.00"
    fig = plots.importance_figure(b, LAYER)
    labels = [t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("  acc drop ")]
    got = [re.fullmatch(r"  acc drop (.+) pt", t).group(1) for t in labels][::-1]  # drawn from the bottom up
    column = [r[2] for r in _rows(importance_table(b, LAYER, 10))]  # the console table's "acc. drop (pt)"
    assert got == column == importance_store.written(df)["acc_drop"] == percents(drops.tolist())
    assert "0.00" in got and "0" not in got and _mixed(got) == {2}
    assert np.allclose([float(t) for t in got], drops * 100)


def test_a_units_images_and_class_tables_keep_one_count_of_decimals(runs, tmp_path, browser):
    """`sketchmine unit`'s images table and the dashboard's class tables wrote "100" beside "90.00"."""
    from sketchmine.present.unit_console import images_table
    from sketchmine.results.unit_summary import unit_summary
    from tests.test_report import _open

    a, _ = runs
    d = unit_summary(a, LAYER, 0)
    got = [r[4] for r in _rows(images_table("top", d["top"]), width=200)]
    assert got == percents([e["accuracy"] for e in d["top"]]) and _mixed(got) == {2}
    write_report(a, tmp_path / "rep", images=False, montages=0)
    page, problems = _open(browser, next((tmp_path / "rep" / "units").glob("*.html")).as_uri() + "#unit=0")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '0'")
    cells = page.evaluate("() => [...document.querySelectorAll('#classes table')].map(t => [...t.rows].slice(1)"
                          ".map(r => r.cells[r.cells.length - 1].textContent))")
    means = [c["accuracy"] for c in d["class_means"]]
    assert cells[-1] == [f"{t} %" for t in percents(means)] and "100.00 %" in cells[-1] and "90.00 %" in cells[-1]
    assert problems == []
    page.close()
