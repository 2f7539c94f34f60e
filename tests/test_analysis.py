"""Class summaries against independent computations on the embedded real data: numpy from the
raw arrays and a brute-force pass of plain forward hooks (tests/helpers.py)."""
from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.console import Console

import sketchmine
from sketchmine.results import analysis
from sketchmine.present import plots
from sketchmine.present.compare_console import print_compare
from sketchmine.results.compare import compare, depth_pairs, layer_pairs
from sketchmine.errors import SketchmineError
from tests.helpers import StopAfter, all_activations


@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, small_test_set):
    run = sketchmine.mine("demo", small_test_set, out=tmp_path_factory.mktemp("a") / "run.zarr", batch_size=64,
                          distributions=True)
    acts, logits = all_activations(demo_model.module, small_test_set, run.layers)
    maxima = {n: (a.amax(dim=tuple(range(2, a.ndim))) if a.ndim > 2 else a).double().numpy() for n, a in acts.items()}
    return run, maxima, logits.numpy()


def test_accuracy_histogram_top_bottom_vs_numpy(mined, small_test_set):
    run, maxima, logits = mined
    labels = small_test_set.labels()
    pred = logits.argmax(1)
    acc = run.class_accuracy()
    for c in range(10):
        assert acc["accuracy"].iloc[c] == pytest.approx((pred[labels == c] == c).mean())
    assert run.accuracy() == pytest.approx((pred == labels).mean())
    for name in ("features.3", "classifier.4"):
        m = maxima[name].astype(np.float32)
        # independent top-k: sort by (-value, image index)
        top = np.stack([np.lexsort((np.arange(len(m)), -m[:, u]))[:run.k] for u in range(m.shape[1])])
        want = np.bincount(labels[top].ravel(), minlength=10)
        hist = run.class_histogram(name)
        np.testing.assert_array_equal(hist.to_numpy(), want)
        order = sorted(range(10), key=lambda c: (-want[c], c))
        assert list(run.top_classes(name, 3).index) == [small_test_set.class_names[c] for c in order[:3]]
        assert list(run.bottom_classes(name, 3).index) == [small_test_set.class_names[c] for c in order[-3:]]
        assert run.top_classes(name, 3)["accuracy"].iloc[0] == pytest.approx(acc["accuracy"].iloc[order[0]])


def test_unit_classes_is_the_seeds_performance_line(mined, small_test_set):
    run, maxima, _ = mined
    labels, names = small_test_set.labels(), small_test_set.class_names
    m = maxima["features.6"].astype(np.float32)
    unit = 5
    order = np.lexsort((np.arange(len(m)), -m[:, unit]))[:run.k]
    df = run.unit_classes("features.6", unit)
    np.testing.assert_array_equal(df["image_index"].to_numpy(), order)
    assert list(df["class"]) == [names[labels[i]] for i in order]
    np.testing.assert_allclose(df["value"].to_numpy(), m[order, unit])
    acc = run.class_accuracy()["accuracy"]
    line = analysis.performance_line(df)
    assert line.split()[:2] == [names[labels[order[0]]], f"{acc.iloc[labels[order[0]]] * 100:.2f}"]
    table = run.unit_table("features.6")
    assert len(table) == m.shape[1] * run.k and set(table["unit"]) == set(range(m.shape[1]))
    with pytest.raises(SketchmineError, match="unit 96 is not in layer 'features.6'"):
        run.unit_classes("features.6", 96)


def test_unbiased_class_means_vs_brute_force(mined, small_test_set):
    run, maxima, _ = mined
    labels = small_test_set.labels()
    for name in run.layers:
        mean, count = run.class_stats(name)
        want = np.stack([maxima[name][labels == c].mean(axis=0) for c in range(10)], axis=1)
        np.testing.assert_allclose(mean, want, rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(count, np.tile(np.bincount(labels, minlength=10), (mean.shape[0], 1)))


def test_selectivity_and_preference_follow_their_definitions(mined):
    run, _, _ = mined
    mean, _ = run.class_stats("features.8")
    si = run.selectivity("features.8")
    for u in range(mean.shape[0]):
        mu_max = mean[u].max()
        rest = (mean[u].sum() - mu_max) / 9
        if mu_max > 0 and rest >= 0:
            assert si[u] == pytest.approx((mu_max - rest) / (mu_max + rest))
            assert 0 <= si[u] <= 1
        else:
            assert np.isnan(si[u])
    pref = run.class_preference("features.8")
    z = (mean - mean.mean(1, keepdims=True)) / mean.std(1, keepdims=True)
    want = z[mean.std(1) > 0].mean(0)
    names = run.class_names
    np.testing.assert_allclose(pref.loc[names, "preference"].to_numpy(), want, rtol=1e-10)
    assert pref["preference"].is_monotonic_decreasing
    assert pref["units_preferring"].sum() == pref.attrs["units"]


def test_ink_density_and_spearman(mined, small_test_set):
    run, _, _ = mined
    img = small_test_set.images.astype(np.float64) / 255
    border = np.concatenate([img[:, 0, :], img[:, -1, :], img[:, 1:-1, 0], img[:, 1:-1, -1]], axis=1)
    # the embedded silhouettes are white on black: the border median is the black background
    assert (np.median(border, axis=1) < 0.5).mean() > 0.95
    density = (np.abs(img - np.median(border, axis=1)[:, None, None]) > 0.5).mean(axis=(1, 2))
    labels = small_test_set.labels()
    want = np.array([density[labels == c].mean() for c in range(10)])
    np.testing.assert_allclose(run.ink_density().to_numpy(), want, rtol=1e-12)
    corr = run.ink_correlation()
    from scipy.stats import spearmanr

    pref = run.class_preference("features.3")["preference"].reindex(run.class_names).to_numpy()
    assert corr.loc["features.3", "spearman"] == pytest.approx(spearmanr(pref, want).statistic)
    # and with ranks computed here (no ties among these ten values)
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731  (no ties here)
    assert np.corrcoef(ranks(pref), ranks(want))[0, 1] == pytest.approx(corr.loc["features.3", "spearman"])


@given(st.integers(3, 40).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3), st.just(float("nan"))), min_size=n, max_size=n),
    st.lists(st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3)), min_size=n, max_size=n))),
    st.sampled_from(["as drawn", "b = a", "b = -a"]))
def test_spearman_is_scipys_to_the_last_bit(pair, relation):
    """The summaries' rank correlation (without scipy.stats, a second of import) equals
    scipy.stats.spearmanr's statistic and p-value exactly: ties, NaN pairs, |rho| = 1."""
    from scipy.stats import spearmanr

    from sketchmine.results.summaries import spearman

    a, b = (np.array(v) for v in pair)
    b = {"as drawn": b, "b = a": a.copy(), "b = -a": -a}[relation]
    ok = np.isfinite(a) & np.isfinite(b)
    rho, p = spearman(a, b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        assert np.isnan(rho) and np.isnan(p)
        return
    want = spearmanr(a[ok], b[ok])
    assert rho == want.statistic and (p == want.pvalue or np.isnan(p) and np.isnan(want.pvalue))


class _Stop(Exception):
    pass




def test_resumed_run_has_identical_class_stats_and_partial_reads(tmp_path, small_test_set):
    ref = sketchmine.mine("demo", small_test_set, out=tmp_path / "ref.zarr", batch_size=40)
    out = tmp_path / "cut.zarr"
    with pytest.raises(_Stop):
        sketchmine.mine("demo", small_test_set, out=out, batch_size=40, flush_every=2, progress=StopAfter(5, calls=True, exc=_Stop))
    partial = sketchmine.open_run(out)
    assert not partial.complete and partial.images_done == 160
    mean, count = partial.class_stats("features.0")
    labels = small_test_set.labels()[:160]
    np.testing.assert_array_equal(count[0], np.bincount(labels, minlength=10))
    assert analysis.class_preference(partial, "features.0").attrs["partial"]
    assert np.isfinite(partial.ink_density().to_numpy()[np.bincount(labels, minlength=10) > 0]).all()
    done = sketchmine.mine("demo", small_test_set, out=out, batch_size=40, flush_every=2)
    for name in ref.layers:
        a, b = ref.class_stats(name), done.class_stats(name)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(ref.ink_density().to_numpy(), done.ink_density().to_numpy())


def test_a_handle_opened_while_mining_answers_from_one_commit(tmp_path, small_test_set, mined):
    """A run opened part-way, read after its mining went on: the first `top_classes` mixed the
    class sizes of the moment it was opened with the newer top-k (cat at 7.93 images' worth
    per image, classes with entries listed as having no images, the most frequent classes as
    the least); `complete` and `images_done` kept the opening's state after mining ended. The
    handle now follows its writer between reads and answers each read from one commit; it goes
    to another process, or a deep copy, as its path."""
    import copy
    import pickle

    out = tmp_path / "cut.zarr"
    with pytest.raises(_Stop):
        sketchmine.mine("demo", small_test_set, out=out, batch_size=40, flush_every=2, progress=StopAfter(3, calls=True, exc=_Stop))
    old = sketchmine.open_run(out)
    assert not old.complete and old.images_done == 80 and "partial" in repr(old)
    unreached = old.top_classes("features.0", 10).attrs["no_images"]
    assert unreached and old.selectivity("features.0").attrs["partial"]  # the classes not reached yet
    # beside a complete run, compare says A is partial, not that those classes have no images
    cmp = compare(old, mined[0], 3)
    assert cmp.no_images == [] and cmp.unmined == {"a": unreached}
    console = Console(file=io.StringIO(), width=120)
    print_compare(old, mined[0], 3, console)
    text = console.file.getvalue()
    assert "A is PARTIAL: 80 images mined so far" in text and "accuracy: A (partial) vs B (" in text
    assert "classes without images" not in text and f"A has no image of these classes yet (partial), left out of its lists: {', '.join(unreached)}" in text
    from sketchmine.present.json_out import compare_data
    d = compare_data(cmp)
    assert d["complete"] == {"a": False, "b": True} and d["images"] == {"a": 80, "b": 300} and d["unmined"] == {"a": unreached}
    sketchmine.mine("demo", small_test_set, out=out, batch_size=40, flush_every=2)
    fresh = sketchmine.open_run(out)
    for layer in ("features.0", "classifier.6"):
        for read in ("top_classes", "bottom_classes"):
            got, want = getattr(old, read)(layer, 3), getattr(fresh, read)(layer, 3)
            pd.testing.assert_frame_equal(got, want)
            assert got.attrs == want.attrs and not got.attrs["no_images"], (layer, read, got.attrs)
    assert old.complete and old.images_done == 300 and "partial" not in repr(old)
    assert not old.selectivity("features.0").attrs["partial"]
    assert old.accuracy() == fresh.accuracy() and "partial" not in old._repr_html_()
    for copied in (pickle.loads(pickle.dumps(old)), copy.deepcopy(old), pickle.loads(pickle.dumps(old.unit("features.0", 2)))):
        run = getattr(copied, "run", copied)
        assert run.path == fresh.path and run.complete
        np.testing.assert_array_equal(run.topk("features.0")[1], fresh.topk("features.0")[1])


class _Unlabelled(torch.utils.data.Dataset):
    """Real images, no labels (-1) and no class names."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return 60

    def __getitem__(self, i: int):
        return self.ds[i][1], -1


def test_dataset_without_labels(tmp_path, small_test_set):
    run = sketchmine.mine("demo", _Unlabelled(small_test_set), out=tmp_path / "u.zarr", batch_size=32)
    assert (run.topk("features.0")[1] >= 0).all()
    with pytest.raises(SketchmineError, match="have no label.*class histograms need labelled images"):
        run.class_histogram("features.0")
    with pytest.raises(SketchmineError, match="no class statistics"):
        run.class_stats("features.0")
    assert not analysis.has_class_stats(run)
    assert "class_mean" not in run.store.group["layers/features.0"]
    df = run.unit_classes("features.0", 0)
    assert df["class"].isna().all() and len(df) == run.k


def test_compare_pairs_by_name_or_depth_and_refuses_other_datasets(tmp_path, mined, demo_test_set,
                                                                   small_test_set):
    """Layers both runs have are paired by name (the same model mined twice: by depth,
    classifier.6 of the 3-layer run was paired with softmax); the others by relative depth. A
    run mined with logits=False compares with NaN accuracy. The third run sees other images
    (the first 50 of the full test split, as a plain list)."""
    run, _, _ = mined
    assert depth_pairs(["a", "b", "c"], ["1", "2", "3", "4", "5"]) == [("a", "1"), ("b", "3"), ("c", "5")]
    assert depth_pairs(["1", "2", "3", "4", "5"], ["a", "b"]) == [("1", "a"), ("5", "b")]
    assert layer_pairs(["1", "b", "3", "4", "5"], ["a", "b"]) == [("1", "a", "depth"), ("b", "b", "name")]
    other = sketchmine.mine("demo", small_test_set, layers=["features.0", "features.6", "classifier.6"],
                            out=tmp_path / "b.zarr", batch_size=100, logits=False)
    cmp = compare(run, other, n=3)
    assert list(cmp.layers["layer_b"]) == ["features.0", "features.6", "classifier.6"]
    assert list(cmp.layers["layer_a"]) == ["features.0", "features.6", "classifier.6"]
    assert list(cmp.layers["paired_by"]) == ["name"] * 3
    overlap = cmp.layers.set_index("layer_a")[["jaccard_top", "jaccard_bottom"]]
    assert (overlap.drop("classifier.6") == 1.0).all().all()
    assert overlap.loc["classifier.6"].isna().all()  # every class 9 times: no top or bottom classes to overlap
    assert cmp.jaccard.shape == (len(run.layers), 3)
    assert cmp.accuracy["accuracy_b"].isna().all() and cmp.accuracy["difference"].isna().all()
    np.testing.assert_array_equal(cmp.accuracy["accuracy_a"], run.class_accuracy()["accuracy"])
    assert cmp.overall == (run.accuracy(), None)
    back = compare(other, run, n=3)
    assert list(back.layers["layer_a"]) == list(back.layers["layer_b"]) == ["features.0", "features.6", "classifier.6"]
    out = io.StringIO()
    print_compare(run, other, 3, Console(file=out, width=300))
    assert "layers paired by name:" in out.getvalue()
    third = sketchmine.mine("demo", [(demo_test_set[i][1], int(demo_test_set.labels()[i])) for i in range(50)],
                            out=tmp_path / "c.zarr", batch_size=50)
    with pytest.raises(SketchmineError, match="different datasets"):
        compare(run, third)


def test_plots_png_and_svg(tmp_path, mined):
    run, _, _ = mined
    files = plots.summary_plot(run, tmp_path / "summary") + plots.histogram_plot(run, "features.0", tmp_path / "h")
    files += plots.ink_plot(run, tmp_path / "ink")
    assert sorted(p.suffix for p in files) == [".png", ".png", ".png", ".svg", ".svg", ".svg"]
    with Image.open(tmp_path / "summary.png") as im:
        assert im.width > 600 and im.height > 300 and len(np.unique(np.asarray(im))) > 20
    svg = (tmp_path / "summary.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg


SKETCHNET = ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4",
             "classifier.6", "softmax"]
RESNET = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv1",
          "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1", "layer2.1.conv2", "layer3.0.conv1",
          "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv1", "layer3.1.conv2", "fc", "softmax"]


def test_the_logits_pair_with_the_logits_and_the_rest_by_depth_between():
    """UX audit: SketchNet against the demo ResNet paired classifier.6 (the logits) with
    layer3.1.conv2 and left the ResNet's fc out; the logits now pair with the logits (and the
    softmax by name), the other layers by depth between those pairs, in order, either way round."""
    pairs = layer_pairs(SKETCHNET, RESNET, ("classifier.6", "fc"))
    assert pairs[-2:] == [("classifier.6", "fc", "output"), ("softmax", "softmax", "name")]
    assert pairs[0] == ("features.0", "conv1", "depth")
    at = [RESNET.index(b) for _, b, _ in pairs]
    assert at == sorted(at) and len(set(at)) == len(at)  # in order, none twice
    assert layer_pairs(RESNET, SKETCHNET, ("fc", "classifier.6")) == [(b, a, how) for a, b, how in pairs]
    # a run of hidden layers only ends at the other's last hidden layer: SketchNet's classifier.4
    # was paired with the ResNet's softmax (audit), its fc and softmax now pair with none
    hidden = layer_pairs(["features.6", "classifier.4"], RESNET, (None, "fc"))
    assert hidden == [("features.6", "conv1", "depth"), ("classifier.4", "layer3.1.conv2", "depth")]
    assert layer_pairs(RESNET, ["features.6", "classifier.4"], ("fc", None)) == [(b, a, how) for a, b, how in hidden]
    assert layer_pairs(["features.6", "softmax"], RESNET, (None, "fc"))[-1] == ("softmax", "softmax", "name")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 14), st.integers(1, 14))
def test_without_names_or_outputs_in_common_pairs_are_by_depth(m, n):
    a, b = [f"a{i}" for i in range(m)], [f"b{i}" for i in range(n)]
    assert [(x, y) for x, y, how in layer_pairs(a, b)] == depth_pairs(a, b)
    assert {how for _, _, how in layer_pairs(a, b)} == {"depth"}


def test_compare_says_which_layers_of_the_longer_run_pair_with_none(mined, tmp_path, small_test_set):
    """The table shows one row per layer of the run with fewer layers: the other run's rest was
    left out without a word (UX audit: 8 of the ResNet's 16 layers)."""
    import io

    from rich.console import Console

    from sketchmine.present.compare_console import print_compare

    run, _, _ = mined
    other = sketchmine.mine("demo", small_test_set, layers=["features.0", "classifier.6"], out=tmp_path / "b.zarr",
                            batch_size=100)
    console = Console(file=io.StringIO(), width=80)  # said whole on its line, not folded to a table's width
    print_compare(run, other, 3, console)
    rest = [name for name in run.layers if name not in ("features.0", "classifier.6")]
    assert rest and f"A's layers paired with none: {', '.join(rest)}" in console.file.getvalue()
    assert "B's layers paired with none" not in console.file.getvalue()
    narrow = Console(file=io.StringIO(), width=80)  # the paths were folded into the accuracy table's title
    print_compare(run, other, 3, narrow)
    lines = narrow.file.getvalue().splitlines()
    assert lines[:2] == [f"A: {run.path}", f"B: {other.path}"]
    assert re.fullmatch(r"\s*accuracy: A \(\d+\.\d+ %\) vs B \(\d+\.\d+ %\)\s*", lines[2]), lines[2]


def test_a_handle_on_a_run_mined_again_at_its_path_reads_the_new_run(tmp_path, small_test_set):
    """A notebook's handle on a complete run, the run deleted and mined again at the same path
    with other settings: the handle answered with the old run's attributes (k, layers) over
    the new run's arrays. It reads the new run now, and says where the run is gone."""
    import shutil

    out = tmp_path / "again.zarr"
    old = sketchmine.mine("demo", small_test_set, out=out, layers=["features.0", "features.3"], k=3, batch_size=100)
    assert old.k == 3 and old.topk("features.3")[0].shape[1] == 3
    shutil.rmtree(out)
    new = sketchmine.mine("demo", small_test_set, out=out, layers=["features.3", "classifier.6"], k=5, batch_size=100)
    assert old.k == 5 and old.layers == new.layers == ["features.3", "classifier.6"]
    for read in (lambda r: r.topk("features.3")[0], lambda r: r.top_classes("classifier.6", 3)):
        got, want = read(old), read(new)
        pd.testing.assert_frame_equal(got, want) if isinstance(got, pd.DataFrame) else np.testing.assert_array_equal(got, want)
    shutil.rmtree(out)
    with pytest.raises(sketchmine.SketchmineError, match="does not exist"):
        _ = old.k


def test_layers_of_two_architectures_pair_by_the_share_of_the_input_their_fields_take(tmp_path, small_test_set):
    """SketchNet's features.6 mined with classifier.4 alone paired with the demo ResNet's first
    conv (depth among the two mined layers: the run does not record the model's others); it
    pairs now with the ResNet layer whose receptive field covers the nearest share of the input
    (both models see 28-px images), in order, either way round; layers without a field (linear)
    keep the depth rule."""
    from sketchmine.results.compare import field_fractions

    short = sketchmine.mine("demo", small_test_set, layers=["features.6", "classifier.4"], out=tmp_path / "s.zarr",
                            batch_size=100)
    resnet = sketchmine.mine("demo-resnet", small_test_set, out=tmp_path / "r.zarr", batch_size=100)
    share = max(short.layer_attrs("features.6")["receptive_field"]["size"]) / 28
    grid = {name: max(resnet.layer_attrs(name)["receptive_field"]["size"]) / 28 for name in resnet.layers
            if resnet.layer_attrs(name)["receptive_field"]["stride"] != [0, 0]}
    assert field_fractions(short) == {"features.6": share} and field_fractions(resnet) == grid
    nearest = min(grid, key=lambda name: abs(np.log(grid[name] / share)))
    assert nearest not in (resnet.layers[0], "conv1") and 0.5 < grid[nearest] / share < 2
    pairs = compare(short, resnet, 3).layers
    assert pairs.iloc[0][["layer_a", "layer_b", "paired_by"]].tolist() == ["features.6", nearest, "field"]
    assert pairs.iloc[1]["paired_by"] == "depth"
    at = [resnet.layers.index(name) for name in pairs["layer_b"]]
    assert at == sorted(at)
    back = compare(resnet, short, 3).layers
    assert back[["layer_b", "layer_a", "paired_by"]].values.tolist() == pairs[["layer_a", "layer_b", "paired_by"]].values.tolist()
    console = Console(file=io.StringIO(), width=200)
    print_compare(short, resnet, 3, console)
    said = " ".join(console.file.getvalue().split())
    assert "layers paired by receptive field (its share of the input) or by relative depth: top 3" in said


def test_a_pinned_read_of_a_run_being_deleted_says_it_changed(tmp_path, small_test_set):
    """A report's pinned read of a run whose root attributes another process had just deleted
    called the run damaged (readers re-check): it changed, and says so."""
    run = sketchmine.mine("demo", small_test_set, out=tmp_path / "gone.zarr", layers=["features.0"], batch_size=100)
    with pytest.raises(sketchmine.SketchmineError, match="changed while it was read") as caught:
        with run.store.pinned():
            run.topk("features.0")
            (tmp_path / "gone.zarr" / "zarr.json").unlink()  # the first file `rm -rf` removes
    assert not isinstance(caught.value, sketchmine.errors.RunDamaged)


def test_compare_says_why_the_same_pictures_read_two_ways_differ(tmp_path, demo_test_set):
    """The README mines a folder exported from the embedded set, its API block the set itself:
    compare refused the pair as "different datasets" with no word of why."""
    from tests.helpers import per_class_subset

    ds = per_class_subset(demo_test_set, 2, "0:20")
    folder = sketchmine.data.export_image_folder(ds, tmp_path / "images")
    a = sketchmine.mine("demo", ds, layers=["features.0"], out=tmp_path / "a.zarr")
    b = sketchmine.mine("demo", folder, layers=["features.0"], out=tmp_path / "b.zarr")
    with pytest.raises(SketchmineError, match=r"different datasets \(fingerprint .*\) \(read as embedded and as "
                                              r"image_folder: an image folder is fingerprinted by its files, .*mine both "
                                              r"from the same source\); compare runs over the same images"):
        compare(a, b)
