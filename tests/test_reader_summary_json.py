"""`summary --json` lists the classes as `summary`'s tables do: where fewer than 2n classes have
images, each class once (top list the one more), never as both most and least preferred."""
from __future__ import annotations

import json

from sketchmine.cli.main import main
from tests.test_reader_compare import three  # noqa: F401  (the three-class run)


def test_summary_json_lists_each_class_once_as_the_tables_do(three, capsys):  # noqa: F811
    """Before, each of the three classes came in both top_classes and bottom_classes (5 each asked),
    and in both preference lists, where the text tables list 2 under top and 1 under bottom."""
    assert main(["summary", str(three.path), "--json", "-n", "5"]) == 0
    data = json.loads(capsys.readouterr().out)
    for layer in data["layers"]:
        name = layer["name"]
        top, bottom = ([c["label"] for c in layer[key]] for key in ("top_classes", "bottom_classes"))
        counts = three.class_histogram(name).to_numpy()
        order = sorted(range(3), key=lambda c: (-counts[c], c))
        assert (top, bottom) == (order[:2], order[2:]), name
        pref = three.class_preference(name)
        assert [c["class"] for c in layer["preference_top"]] == list(pref.index[:2])
        assert [c["class"] for c in layer["preference_bottom"]] == list(pref.index[2:])


def test_preference_records_carry_the_class_position(three, capsys):  # noqa: F811
    """The preference lists are sorted by preference, and their records carried only the class
    name: two classes sharing a name could not be told apart there (top_classes carry `label`)."""
    import numpy as np
    import pytest

    from sketchmine.results import summaries

    assert main(["summary", str(three.path), "--json", "-n", "5"]) == 0
    data = json.loads(capsys.readouterr().out)
    for layer in data["layers"]:
        pref = three.class_preference(layer["name"])
        assert [c["label"] for c in layer["preference_top"] + layer["preference_bottom"]] == pref["label"].tolist()
        assert len(set(pref["label"])) == len(pref) == 3, layer["name"]
    mean, count = three.class_stats(data["layers"][0]["name"])
    held = np.flatnonzero(count.sum(axis=0) > 0)  # the three classes with images
    names = list(three.class_names)
    names[held[1]] = names[held[0]]  # two classes named alike
    named = summaries.preference(mean, np.full(len(names), np.nan), names, count)
    mean = mean[:, held]
    live = mean.std(axis=1) > 0
    z = np.full(len(names), np.nan)
    z[held] = ((mean[live] - mean[live].mean(axis=1, keepdims=True)) / mean[live].std(axis=1, keepdims=True)).mean(axis=0)
    assert sorted(named["label"]) == held.tolist()
    for _, row in named.iterrows():
        assert row["preference"] == pytest.approx(z[int(row["label"])], rel=1e-9)
