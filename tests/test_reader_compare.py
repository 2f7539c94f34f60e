"""`compare` reads two runs' classes by label: runs whose class names differ are refused, not
shown side by side as the same classes."""
from __future__ import annotations

import numpy as np
import pytest

import sketchmine
from sketchmine.cli.main import main
from sketchmine.data import ArrayDataset
from sketchmine.errors import SketchmineError
from tests.helpers import per_class_subset


@pytest.fixture(scope="module")
def renamed(tmp_path_factory, demo_test_set):
    """The same 40 real images and labels mined twice: the classes named as the dataset names
    them, and in reverse, in capitals (class 0 'bear' becomes 'ZEBRA'): one fingerprint, other names."""
    sub = per_class_subset(demo_test_set, 4, "0:40")
    base = tmp_path_factory.mktemp("renamed")
    names = list(sub.class_names)
    runs = []
    for tag, order in (("a", names), ("b", [n.upper() for n in names[::-1]])):
        ds = ArrayDataset(sub.images, sub.labels(), order, sub.preprocessing, sub.describe())
        runs.append(sketchmine.mine("demo", ds, out=base / f"{tag}.zarr", layers=["features.6", "classifier.6"]))
    assert runs[0].attrs["dataset_fingerprint"] == runs[1].attrs["dataset_fingerprint"]
    return runs


def test_compare_refuses_runs_whose_class_names_differ(renamed):
    """Before, the overlap of features.6's top classes read 1.00 beside lists with no name in
    common ("bear, ..." against "ZEBRA, ..."), and the accuracy table held 20 rows of "-"."""
    a, b = renamed
    with pytest.raises(SketchmineError, match=r"name their classes differently \(class 0: 'bear' in A, 'ZEBRA' in B; "
                                              r"class 1: 'bird' in A, 'SHEEP' in B; .*and 7 more\)"):
        sketchmine.compare(a, b)
    assert len(sketchmine.compare(a, a).accuracy) == 10  # the same names: compared as before


def test_compare_command_refuses_them_in_one_line(renamed, capsys):
    a, b = renamed
    assert main(["compare", str(a.path), str(b.path), "--json"]) == 3
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "name their classes differently" in err.err


@pytest.fixture(scope="module")
def three(tmp_path_factory, demo_test_set):
    """30 real images of each of three classes (bear, bird, cat): fewer than 2n classes have images."""
    sub = per_class_subset(demo_test_set, 30, "0:300")
    keep = np.flatnonzero(sub.labels() < 3)
    ds = ArrayDataset(sub.images[keep], sub.labels()[keep], sub.class_names, sub.preprocessing,
                      {**sub.describe(), "subset": "three classes"})
    return sketchmine.mine("demo", ds, out=tmp_path_factory.mktemp("three") / "run.zarr",
                           layers=["features.6", "classifier.4"])


def test_compare_lists_each_class_once_where_fewer_than_2n_have_images(three, capsys):
    """Before, each of the three classes came under both top 5 and bottom 5 of every layer (a class
    both most and least preferred, which `summary` and the report never list), the overlaps taken
    over those lists; now 2 under top, 1 under bottom, as `summary` lists them, and a note says why."""
    cmp = sketchmine.compare(three, three, 5)
    for row in cmp.layers.to_dict("records"):
        counts = three.class_histogram(row["layer_a"]).to_numpy()
        order = [three.class_names[c] for c in sorted(range(3), key=lambda c: (-counts[c], c))]
        assert (row["top_a"], row["bottom_a"]) == (order[:2], order[2:]) == (row["top_b"], row["bottom_b"])
    assert main(["compare", str(three.path), str(three.path), "-n", "5"]) == 0
    assert "only 3 classes have images: each is listed once (2 under top 5, 1 under bottom 5)" in capsys.readouterr().out
