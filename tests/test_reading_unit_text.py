"""How a unit reads as text: infinite values print as inf / -inf (in --json too: "inf" strings,
as null says "no value"), quantiles print whole at 80 columns,
a layer without a recorded receptive field says so (not "the whole image"), and a unit card's
repr lists its top images' classes as such. Real test images; the overflowing model is the demo
model's first conv with one infinite weight (its nan_to_num also keeps the graph analysis from
recording receptive fields: a conv layer without one)."""
from __future__ import annotations

import io
import json
import re

import pytest
import torch
from rich.console import Console
from torch import nn

import sketchmine
from sketchmine.present.unit_console import print_unit
from sketchmine.results.unit_summary import LayerSummary
from tests.helpers import per_class_subset


class Overflow(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight)
            self.conv.bias.copy_(conv.bias)
            self.conv.weight[0, 0, 1, 1] = float("inf")  # unit 0: +inf wherever the centre pixel is ink
        torch.manual_seed(0)  # built in a module fixture, before the test's own seed
        self.head = nn.Linear(conv.out_channels, 10)

    def forward(self, x):
        x = torch.roll(x, 0, -1)  # the identity, through an op the field analysis does not follow: no field
        return self.head(torch.nan_to_num(self.conv(x)).amax(dim=(2, 3)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model, demo_test_set):
    ds = per_class_subset(demo_test_set, 4, "0:40")
    root = tmp_path_factory.mktemp("u")
    hot = sketchmine.mine(Overflow(demo_model.module.features[0]), ds, layers=["conv"], out=root / "hot.zarr",
                          distributions=True)
    plain = sketchmine.mine("demo", ds, layers=["features.3"], out=root / "plain.zarr")
    return hot, plain


def _text(path, layer, unit):
    out = io.StringIO()
    print_unit(path, layer, unit, Console(file=out, width=200))
    return out.getvalue()


def test_infinities_print_as_inf(runs):
    hot, _ = runs
    u, sign = 0, "inf"
    assert hot.topk("conv")[0][0, 0] == float("inf")
    assert LayerSummary(hot, "conv").unit(u)["max"] is None          # JSON: null
    d = LayerSummary(hot, "conv").unit(u, infinities=True)
    assert d["max"] == sign and d["top"][0]["value"] == sign
    line = next(x for x in _text(hot.path, "conv", u).splitlines() if "max activation" in x)
    assert line.split()[-2] == sign                                      # "│ max activation │ inf │"
    assert all(v == sign for v in d["quantiles"]["values"][-2:])      # the top quantiles too


def test_unit_json_tells_infinity_from_no_value(runs, capsys):
    hot, _ = runs
    print_unit(hot.path, "conv", 0, Console(file=io.StringIO()), as_json=True)
    doc = json.loads(capsys.readouterr().out)
    assert doc["max"] == "inf" and doc["top"][0]["value"] == "inf" and doc["quantiles"]["values"][-1] == "inf"
    assert doc["quantiles"]["values"][0] is not None
    from sketchmine.present.json_out import summary_data

    assert summary_data(hot, 3)["layers"][0]["max_activation"] == "inf"


def test_quantiles_print_whole_at_80_columns(runs):
    hot, _ = runs
    u = 1
    d = LayerSummary(hot, "conv").unit(u, infinities=True)
    out = io.StringIO()
    print_unit(hot.path, "conv", u, Console(file=out, width=80))
    rows = dict(re.findall(r"│\s+([0-9.]+) %\s+│\s+(\S+)\s+│", out.getvalue()))
    assert len(rows) == len(d["quantiles"]["q"]) and "…" not in "".join(rows.values())
    for q, v in zip(d["quantiles"]["q"], d["quantiles"]["values"]):
        assert float(rows[f"{q * 100:g}"]) == pytest.approx(v, rel=1e-3)
    assert "quantiles of the image maxima (within 1.5 %)" in out.getvalue()  # the sketch's resolution, said


def test_no_receptive_field_recorded_is_said_so(runs):
    hot, plain = runs
    assert hot.layer_attrs("conv")["kind"] == "conv2d" and not hot.layer_attrs("conv").get("receptive_field")
    text = _text(hot.path, "conv", 1)
    assert "no receptive field recorded" in text and "the whole image" not in text
    assert "10×10 px" in _text(plain.path, "features.3", 0)


def test_unit_card_repr_names_its_top_images_classes(runs):
    _, plain = runs
    card = plain.unit("features.3", 2)
    classes = [plain.class_names[plain.labels[i]] for i in plain.topk("features.3")[1][2] if i >= 0]
    assert repr(card).endswith(f"classes of its top-{len(classes)} images, best first: {', '.join(classes)}>")


def test_numbers_that_round_to_a_whole_number_or_zero_say_they_do_not():
    """UX audit: a GRU unit's softmax-like maximum 0.99986 read "1" on its slide (the card said
    0.99986), and a class preference of -0.001 read "-0.00" in `summary`."""
    from sketchmine.results.numbers import number, significant
    from sketchmine.results.unit_summary import maxima_text

    assert [significant(v) for v in (0.99986, 1.0, 99.96, 3.3, -0.99986, 0.5, 4.0)] == \
        ["0.9999", "1", "99.96", "3.3", "-0.9999", "0.5", "4"]
    # the slide's maximum and mean, as the dashboard writes them
    assert maxima_text({"max": 0.99999, "moments": {"mean": 0.99986}, "quantiles": None}) == ["0.99999", "0.99986"]
    assert maxima_text({"max": 2.5, "moments": None, "quantiles": None}) == ["2.500", "-"]
    assert [number(v, "+.2f") for v in (-0.001, 0.0, -0.004, 0.5, float("nan"), -0.0)] == \
        ["-0.001", "+0.00", "-0.004", "+0.50", "-", "+0.00"]
    assert number(-0.0) == "0.000"


def test_a_title_is_not_folded_over_a_narrow_table(runs):
    """rich folds a title to its table's width: "per-class accuracy (overall 97.05 %)" took two
    lines over its three columns at 80 columns, a two-column table's title three. A table is
    now at least as wide as its title."""
    from sketchmine.present.console import accuracy_table, titled
    from sketchmine.results.numbers import percent

    _, plain = runs
    out = io.StringIO()
    Console(file=out, width=80).print(accuracy_table(plain))
    title = f"per-class accuracy (overall {percent(plain.accuracy(), 2)} %)"
    assert out.getvalue().splitlines()[0].strip() == title
    t = titled("most correlated units (image maxima)", min_width=10)
    t.add_column("unit")
    t.add_column("r")
    t.add_row("3", "0.5")
    out = io.StringIO()
    Console(file=out, width=80).print(t)
    assert out.getvalue().splitlines()[0].strip() == "most correlated units (image maxima)"
    assert t.min_width == len("most correlated units (image maxima)")
    # a long title is folded as rich folds it: widening its table stretched it over a wide terminal
    long = "x: " + "word " * 30
    assert titled(long).min_width == 0 and titled(long, min_width=12).min_width == 12


def test_narrow_consoles_keep_layer_names_whole(runs):
    """rich squeezed the layer column first: at 80 columns `summary` cut every layer name to
    "featur…", so no row could be told from another. The name column keeps its longest name."""
    from sketchmine.present.console import preferences_table

    hot, plain = runs
    for run in runs:
        out = io.StringIO()
        Console(file=out, width=40).print(preferences_table(run))  # (narrower, it would not fit: names fold)
        cells = [line.split("│")[1].strip() for line in out.getvalue().splitlines() if line.startswith("│")]
        assert [c for c in cells if c] == list(run.layers), out.getvalue()


def test_a_narrow_summary_folds_layer_names_and_cuts_no_column(tmp_path, demo_test_set):
    """At 60 columns `summary`'s layer table cut the layer names to "features.…" and
    "classifie…"; keeping the names whole pushed its NaN column off the edge. Names fold
    instead: each reads whole across its lines, and every column (NaN's too) stays on screen."""
    from sketchmine.present.console import layers_table

    ds = per_class_subset(demo_test_set, 4, "0:40")
    run = sketchmine.mine("demo", ds, layers=["features.10", "classifier.4", "softmax"], out=tmp_path / "r.zarr")
    out = io.StringIO()
    Console(file=out, width=60).print(layers_table(run))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 60 for line in lines) and any("NaN" in line for line in lines), out.getvalue()
    rows = [line for line in lines if line.startswith("│")]
    names: list[str] = []
    for line in rows:
        cells = line.split("│")
        if cells[-2].strip():  # the NaN count is on a row's first line: a new row
            names.append(cells[1].strip())
        else:  # the folded rest of the row's name
            names[-1] += cells[1].strip()
    assert names == list(run.layers), out.getvalue()


def test_no_table_runs_past_a_narrow_terminal(tmp_path, demo_test_set):
    """At 80 (and 60) columns `summary`'s class-preference table and `compare`'s layer table were
    wider than the terminal (a layer column's least width kept past the edge): every line cut at
    the edge, numbers to "-0." and the last column gone without a mark. Every line now fits; at
    80 the tables keep each layer name and number whole."""
    from sketchmine.present.compare_console import print_compare
    from sketchmine.present.console import print_summary

    ds = per_class_subset(demo_test_set, 4, "0:40")
    run = sketchmine.mine("demo", ds, layers=["features.10", "classifier.4", "softmax"], out=tmp_path / "r.zarr")
    other = sketchmine.mine("demo", ds, layers=["features.3", "classifier.1"], out=tmp_path / "o.zarr")
    for width in (60, 80):
        for show, names in ((lambda c: print_summary(str(run.path), 5, c), set(run.layers)),
                            (lambda c: print_compare(run, other, 5, c), {"features.10", "softmax", "features.3"})):
            out = io.StringIO()
            show(Console(file=out, width=width))
            lines = out.getvalue().splitlines()
            # (compare's "A: path" lines keep a path whole on purpose)
            assert all(len(line) <= width for line in lines if not line.startswith(("A: ", "B: "))), out.getvalue()
            tables = [line for line in lines if line.startswith(("┃", "│", "┏", "└"))]
            assert all(line.endswith(("┃", "│", "┓", "┘")) for line in tables), out.getvalue()  # each border whole
            if width == 80:
                rows = {cell.strip() for line in tables if line.startswith("│") for cell in line.split("│")[1:3]}
                assert names <= rows, out.getvalue()
    out = io.StringIO()
    print_summary(str(run.path), 5, Console(file=out, width=80))
    rho = re.findall(r"│ classifier\.4 .*│\s*([-+]\d\.\d{3}|-) │\s*([-+]\d\.\d{3}|-) │$", out.getvalue(), flags=re.M)
    assert rho, out.getvalue()  # the two accuracy correlations whole, in their own table
