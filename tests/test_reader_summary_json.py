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
