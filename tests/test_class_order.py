"""Output i of the model is scored against the dataset's class i. A model that names its outputs
(the embedded models and checkpoints recording class_names, torchvision's weights) is checked
against the dataset's class names (found by an audit: the demo's ten classes under other folder
names were scored at 20 % where the model is 99 % right, without a word)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.data import ArrayDataset
from sketchmine.errors import SketchmineError
from sketchmine.model.models import load_model
from tests.helpers import image_folder, per_class_subset

GERMAN = {"bear": "Bär", "bird": "Vogel", "cat": "Katze", "cow": "Kuh", "dog": "Hund", "elephant": "Elefant",
          "giraffe": "Giraffe", "horse": "Pferd", "sheep": "Schaf", "zebra": "Zebra"}


class Notes:
    """A Progress that keeps the notes `mine` says."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def note(self, message: str) -> None:
        self.said.append(message)


@pytest.fixture(scope="module")
def data(demo_test_set):
    return per_class_subset(demo_test_set, 4, "class-order")


def test_the_embedded_model_names_its_outputs(demo_model):
    assert load_model("demo").categories == ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse",
                                             "sheep", "zebra"]


def test_classes_in_another_order_are_refused(data, tmp_path):
    """The same ten names, class 0 another class: every prediction would be scored against another
    class. The labels follow the names (a consistent dataset), so only the order is wrong."""
    order = np.roll(np.arange(10), 1)  # dataset class i is the model's class order[i]
    names = [data.class_names[j] for j in order]
    labels = np.argsort(order)[data.labels()]
    shuffled = ArrayDataset(data.images, labels, names, data.preprocessing, {**data.describe(), "order": "rolled"})
    with pytest.raises(SketchmineError, match=r"class 0 of the dataset, 'zebra', is the model's output 9 \(10 of 10"):
        sketchmine.mine("demo", shuffled, out=tmp_path / "r.zarr", batch_size=40)
    assert not (tmp_path / "r.zarr").exists()
    run = sketchmine.mine("demo", shuffled, out=tmp_path / "n.zarr", batch_size=40, logits=False, layers=["features.0"])
    assert run.class_names == names  # the layers alone: allowed


def test_other_names_are_said_and_the_same_names_are_not(data, tmp_path):
    """Folders named in German sort in another order: nothing can match them to the model's
    names, so mine says it scores by position; the model's own names say nothing."""
    renamed = ArrayDataset(data.images, data.labels(), [GERMAN[n] for n in data.class_names], data.preprocessing,
                           data.describe())
    notes = Notes()
    sketchmine.mine("demo", renamed, out=tmp_path / "de.zarr", batch_size=40, layers=["features.0"], progress=notes)
    said = [n for n in notes.said if "names its outputs otherwise" in n]
    assert said == ["the model names its outputs otherwise than the dataset's classes (output 0: 'bear', class 0: "
                    "'Bär'): each output is scored against the class at its position"]
    same = Notes()
    sketchmine.mine("demo", data, out=tmp_path / "en.zarr", batch_size=40, layers=["features.0"], progress=same)
    assert not [n for n in same.said if "names its outputs" in n]


def test_a_checkpoint_records_its_class_names(demo_model, demo_test_set, tmp_path):
    """A checkpoint (or the JSON beside weights) recording the training order of its classes:
    a folder sorted by name that puts them elsewhere is refused, through the CLI as well."""
    trained = ["zebra", *GERMAN.keys()][:10]  # a training order that is not the sorted one
    state = {k: v.clone() for k, v in demo_model.module.state_dict().items()}
    torch.save({"arch": "sketchnet", "state_dict": state, "class_names": trained,
                "preprocessing": load_model("demo").preprocessing}, tmp_path / "net.pt")
    assert load_model(str(tmp_path / "net.pt")).categories == trained
    folder = image_folder(demo_test_set, tmp_path / "images", per_class=3)
    with pytest.raises(SketchmineError, match="class 0 of the dataset, 'bear', is the model's output 1"):
        sketchmine.mine(str(tmp_path / "net.pt"), folder, out=tmp_path / "ckpt.zarr")
    torch.save(state, tmp_path / "weights.pt")
    (tmp_path / "weights.json").write_text(json.dumps({"class_names": trained}))
    from tests.test_cli import sm

    result = sm("mine", "--model", "sketchnet", "--weights", str(tmp_path / "weights.pt"), "--data", str(folder),
                "--out", str(tmp_path / "cli.zarr"))
    assert result.returncode != 0 and "is the model's output 1" in result.stderr, result.stderr



def test_a_name_the_model_repeats_is_at_any_of_its_positions(demo_model, data, tmp_path):
    """ImageNet's word lists name two classes "crane": a dataset with the same repeated name at
    the same positions is in the model's order; a class moved off every position is refused."""
    from sketchmine.mining.checks import check_classes

    model = ["crane", "dog", "crane", "cat"]
    check_classes(4, model, ["crane", "dog", "crane", "kitty"], Notes())  # no class out of place
    with pytest.raises(SketchmineError, match="class 0 of the dataset, 'dog', is the model's output 1"):
        check_classes(4, model, ["dog", "crane", "cat", "crane"], Notes())
    # a dataset naming two classes alike mines, and its per-class views line up by position
    names = list(data.class_names)
    names[1] = names[3] = "animal"  # a name the model does not use: scored by position, as said
    twice = ArrayDataset(data.images, data.labels(), names, data.preprocessing, {**data.describe(), "names": "twice"})
    run = sketchmine.mine("demo", twice, out=tmp_path / "twice.zarr", batch_size=40, layers=["features.0", "classifier.6"])
    table = run.accuracy_correlation()
    same = sketchmine.mine("demo", data, out=tmp_path / "once.zarr", batch_size=40, layers=["features.0", "classifier.6"])
    pd_testing = pytest.importorskip("pandas").testing
    pd_testing.assert_frame_equal(table, same.accuracy_correlation())
    pd_testing.assert_frame_equal(run.ink_correlation(), same.ink_correlation())


def test_every_view_of_a_dataset_repeating_a_name_with_classes_of_unequal_size(demo_test_set, tmp_path):
    """The report's layer page looked each class's size up by name, `summary`'s ink table its
    accuracy: with a repeated name each got two values and raised. Both go by position now."""
    import re
    import subprocess
    import sys

    from sketchmine.present.report import write_report

    labels = demo_test_set.labels()
    pick = np.concatenate([np.flatnonzero(labels == c)[:6 if c < 5 else 3] for c in range(10)])
    sub = demo_test_set.subset(pick)
    names = list(sub.class_names)
    names[1] = names[6] = "animal"  # 6 and 3 images
    twice = ArrayDataset(sub.images, sub.labels(), names, sub.preprocessing, {**sub.describe(), "names": "unequal"})
    run = sketchmine.mine("demo", twice, out=tmp_path / "run.zarr", batch_size=40, layers=["features.0", "classifier.6"])
    sizes, acc = run.class_sizes().to_numpy(), run.class_accuracy()["accuracy"].to_numpy()
    assert sizes.tolist() == [6] * 5 + [3] * 5
    done = subprocess.run([sys.executable, "-m", "sketchmine", "summary", str(run.path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ink = re.findall(r"│ (\w+) +│ +([0-9.]+) │ +([0-9.]+) │", done.stdout.split("ink density per class")[1])
    assert [c for c, *_ in ink] == names
    assert [float(a) for *_, a in ink] == pytest.approx((acc * 100).tolist(), abs=0.051)
    write_report(run, tmp_path / "rep", images=False, montages=0)
    page = next((tmp_path / "rep" / "layers").glob("*classifier.6*.html")).read_text()
    cells = re.findall(r"<tr><td>([^<]+)</td><td[^>]*>(\d+)</td><td[^>]*>[^<]*</td><td[^>]*>(\d+)</td>", page)
    top = run.top_classes("classifier.6", 10)
    assert sorted((c, int(n), int(s)) for c, n, s in cells) == sorted(
        (c, int(r["count"]), int(r["images"])) for c, r in top.iterrows())
    assert sorted(int(s) for c, _, s in cells if c == "animal") == [3, 6]


def _listed(counts: np.ndarray, has: np.ndarray, n: int) -> set[int] | None:
    """The top-n classes by count (ties: class order) and those tied at the cut, as positions."""
    ranked = sorted(np.flatnonzero(has), key=lambda c: (-counts[c], c))
    if len({int(counts[c]) for c in ranked}) == 1:
        return None
    cut = counts[ranked[min(n, len(ranked)) - 1]]
    return set(ranked[:n]) | {c for c in ranked[n:] if counts[c] == cut}


def test_unit_classes_and_compare_tell_classes_of_one_name_apart(demo_test_set, tmp_path):
    """A unit's classes among its top-k counted both "animal" classes as one with the first's
    accuracy; compare's overlap matched its lists by name; a class without images was listed
    with every class of its name. All by position now."""
    from sketchmine.results.compare import compare
    from sketchmine.results.unit_summary import unit_summary

    labels = demo_test_set.labels()
    pick = np.concatenate([np.flatnonzero(labels == c)[:0 if c == 6 else 6 if c < 5 else 3] for c in range(10)])
    sub = demo_test_set.subset(pick)
    names = list(sub.class_names)
    names[1] = names[6] = "animal"  # class 6 has no images
    ds = ArrayDataset(sub.images, sub.labels(), names, sub.preprocessing, {**sub.describe(), "names": "one-empty"})
    runs = [sketchmine.mine("demo", ds, out=tmp_path / f"k{k}.zarr", batch_size=40, k=k,
                            layers=["features.0", "classifier.6"]) for k in (9, 5)]
    a = runs[0]
    acc = a.class_accuracy()["accuracy"].to_numpy()
    for u in range(32):
        got = [(c["label"], c["count"], c["accuracy"]) for c in unit_summary(a, "features.0", u)["classes_top"]]
        found = a.labels[a.topk("features.0")[1][u]]
        counts = np.bincount(found, minlength=10)
        assert got == [(c, int(counts[c]), pytest.approx(acc[c])) for c in sorted(set(found), key=lambda c: (-counts[c], c))]
    cmp = compare(*runs, n=3)
    has = np.bincount(a.labels, minlength=10) > 0
    for row in cmp.layers.to_dict("records"):
        sets = [_listed(np.bincount(r.labels[r.topk(layer)[1].ravel()], minlength=10), has, 3)
                for r, layer in zip(runs, (row["layer_a"], row["layer_b"]))]
        want = np.nan if None in sets else len(sets[0] & sets[1]) / len(sets[0] | sets[1])
        np.testing.assert_allclose(row["jaccard_top"], want)
    assert cmp.no_images == ["animal"]
