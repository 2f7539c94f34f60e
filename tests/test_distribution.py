"""Each unit's whole distribution (issue 16): the exact histogram, the quantile sketch's stated
guarantee, the examples at every level and the bottom-k, each against a brute force written
here from the definitions (hypothesis batches with ties, NaN, ±inf, negatives and constant
columns, and the embedded real data); the same final arrays under any batch split, a
state()/restore() at every cut and a merge of two halves in either order; a run mined without
them is a clear error."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.results.distribution import estimate, estimate_bounds
from sketchmine.stats import accumulators, bottomk, examples, histogram, ops, sketch, topk
from tests.helpers import StopAfter, all_activations, as_mined_without, store_arrays

OURS = ("hist_edges", "hist_counts", "max_range", "sketch_counts", "sketch_top", "sketch_special",
        "example_edges", "example_index", "bottom_values", "bottom_image_index", "bottom_yx")
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, 0.5, 1e-3, -7.0, 1e30, -1e-30, 3e-39, 65504.0,
           math.inf, -math.inf, math.nan]
K = 3


# ---- brute force, from the definitions ----------------------------------------------------------
def ref_hash(i: np.ndarray) -> np.ndarray:
    """examples.image_hash in numpy uint64 arithmetic modulo 2^40."""
    m = np.uint64((1 << 40) - 1)
    x = (i.astype(np.uint64) + np.uint64(0x9E3779B97F)) & m
    x ^= x >> np.uint64(20)
    x = (x * np.uint64(0xBF58476D1D)) & m
    x ^= x >> np.uint64(17)
    x = (x * np.uint64(0x94D049BB13)) & m
    return x ^ (x >> np.uint64(20))


def ref_grid(x: np.ndarray) -> tuple[int, int]:
    """(e, lowest bin) of the finite values x: the smallest e >= the float32-ulp floor with at most
    64 aligned bins of width 2^e from min to max."""
    if not len(x):
        return -149, 0
    lo, hi = float(x.min()), float(x.max())
    big = max(abs(lo), abs(hi))
    e = max(math.frexp(big)[1] - 1 - 23, -149) if big > 0 else -149
    while math.floor(hi / 2.0 ** e) - math.floor(lo / 2.0 ** e) >= 64:
        e += 1
    return e, math.floor(lo / 2.0 ** e)


def ref_unit(x: np.ndarray, ids: np.ndarray, k: int = K) -> dict:
    """One unit's histogram, example picks and bottom-k from its image maxima x (NaN: none)."""
    keep = ~np.isnan(x)
    x, ids = x[keep].astype(np.float64), ids[keep]
    fin = np.isfinite(x)
    e, lo = ref_grid(x[fin])
    w = 2.0 ** e
    j = np.where(fin, np.floor(np.where(fin, x, 0) / w) - lo, np.where(x > 0, 63, 0)).astype(np.int64)
    coarse = np.where(fin, np.floor(np.floor(np.where(fin, x, 0) / w) / 4) - lo // 4, np.where(x > 0, 16, 0))
    picks = np.full((17, 8), -1)
    h = ref_hash(ids)
    for b in range(17):
        inside = ids[coarse == b][np.argsort(h[coarse == b], kind="stable")][:8]
        picks[b, :len(inside)] = inside
    order = np.lexsort((ids, x))[:k]
    return {"hist_counts": np.bincount(j, minlength=64), "example_index": picks, "e": e, "lo": lo,
            "bottom_values": x[order], "bottom_image_index": ids[order], "sorted": np.sort(x)}


# ---- the accumulators as the mining loop drives them ------------------------------------------
def new_accs(c: int) -> list:
    setup = accumulators.Setup((accumulators.LayerSpec("l", c, (2, 2)),), K, torch.device("cpu"), distributions=True)
    return [f(setup) for f in (topk.accumulator, histogram.accumulator, sketch.accumulator, examples.accumulator,
                               bottomk.accumulator)]


def feed(accs: list, acts: np.ndarray, ids: np.ndarray) -> None:
    if not len(ids):
        return  # the mining loop never feeds an empty batch
    batch = accumulators.Batch(torch.from_numpy(ids), torch.full((len(ids),), -1), torch.zeros(len(ids), 1, 1, 1))
    a = torch.from_numpy(acts)
    for acc in accs:
        acc.update("l", a, batch)


def results(accs: list) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for acc in accs[1:]:
        out.update({k.rsplit("/", 1)[-1]: v for k, v in acc.results().items()})
    return out


def run(acts: np.ndarray, ids: np.ndarray, cuts: list[int], restore_at_cuts: bool = False) -> dict[str, np.ndarray]:
    accs = new_accs(acts.shape[1])
    bounds = [0, *sorted(set(cuts)), len(acts)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if restore_at_cuts:
            fresh = new_accs(acts.shape[1])
            for old, new in zip(accs, fresh):
                new.restore(old.state())
            accs = fresh
        feed(accs, acts[a:b], ids[a:b])
    return results(accs)


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


maps = st.integers(1, 40).flatmap(lambda n: st.tuples(
    arrays(np.float32, (n, 3, 2, 2), elements=st.one_of(st.sampled_from(SPECIAL), st.floats(-1e6, 1e6, width=32))),
    st.lists(st.integers(0, n), max_size=4), st.booleans()))


@settings(max_examples=60)
@given(maps)
def test_matches_brute_force_under_any_split_restore_and_merge(case):
    acts, cuts, constant = case
    if constant:
        acts[:, 2] = 1.5  # a constant column: a histogram of one value
    acts[::5, 1] = np.nan  # all-NaN maps: NaN maxima, never counted
    ids = np.arange(len(acts), dtype=np.int64) * 7 + 3
    got = run(acts, ids, cuts)
    assert_same(run(acts, ids, []), got)
    assert_same(run(acts, ids, cuts, restore_at_cuts=True), got)
    half = len(acts) // 2
    for first, second in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
        a, b = new_accs(3), new_accs(3)
        feed(a, acts[first], ids[first])
        feed(b, acts[second], ids[second])
        for x, y in zip(a, b):
            x.merge(y)
        assert_same(results(a), got)

    best, pos, _ = ops.spatial_max_reference(torch.from_numpy(acts))
    maxima = best.masked_fill(pos < 0, float("nan")).numpy()
    for c in range(3):
        want = ref_unit(maxima[:, c], ids)
        np.testing.assert_array_equal(got["hist_counts"][c], want["hist_counts"])
        assert got["hist_counts"][c].sum() == (~np.isnan(maxima[:, c])).sum()
        edges = got["hist_edges"][c]
        w = 2.0 ** want["e"] if np.isfinite(maxima[:, c]).any() else 1.0  # none finite: placeholder 0..64
        assert edges[2] - edges[1] == w and edges[1] == (want["lo"] + 1) * w
        np.testing.assert_array_equal(got["example_index"][c], want["example_index"])
        np.testing.assert_array_equal(got["bottom_values"][c][:len(want["bottom_values"])], want["bottom_values"])
        np.testing.assert_array_equal(got["bottom_image_index"][c][:len(want["bottom_values"])],
                                      want["bottom_image_index"])
        assert (got["bottom_image_index"][c][len(want["bottom_values"]):] == -1).all()
        xs = want["sorted"]
        if len(xs):
            assert got["max_range"][c].tolist() == [xs[0], xs[-1]]
        else:
            assert np.isnan(got["max_range"][c]).all()
        check_examples_in_bins(got["example_index"][c], got["example_edges"][c], maxima[:, c], ids)
    check_quantiles(got, maxima)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_subnormal_maxima_get_a_bound_not_a_value(sign):
    """Below 2^-126 (1.18e-38) the sketch's keys are linear (1e-44 and 1.5e-40 share one): such quantiles
    say a bound, as those under the 16-octave floor do."""
    x = sign * np.logspace(-44, -38.1, 200).astype(np.float32)
    acts = np.repeat(x[:, None, None, None], 4, axis=2).reshape(200, 1, 2, 2)
    acts = np.concatenate([acts, np.random.default_rng(0).normal(size=(200, 2, 2, 2)).astype(np.float32)], axis=1)
    got = run(acts, np.arange(200, dtype=np.int64), [77])
    best, pos, _ = ops.spatial_max_reference(torch.from_numpy(acts))
    check_quantiles(got, best.masked_fill(pos < 0, float("nan")).numpy())
    inner = estimate_bounds(got["sketch_counts"], got["sketch_top"], got["sketch_special"], got["hist_edges"],
                            got["hist_counts"], got["max_range"], Q[1:-1])
    assert inner.coarse[0].all() and not inner.coarse[1:].any()


def check_examples_in_bins(picks: np.ndarray, edges: np.ndarray, x: np.ndarray, ids: np.ndarray) -> None:
    value = dict(zip(ids.tolist(), x.tolist()))
    for b in range(picks.shape[0]):
        for i in picks[b][picks[b] >= 0]:
            v = value[int(i)]
            assert edges[b] <= v and (v < edges[b + 1] or (b == picks.shape[0] - 1 and v == np.inf)), (b, v)


Q = np.array([0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])


def check_quantiles(got: dict[str, np.ndarray], maxima: np.ndarray) -> None:
    """The guarantee stated in distribution.quantiles, against numpy's method="lower"."""
    bounds = estimate_bounds(got["sketch_counts"], got["sketch_top"], got["sketch_special"], got["hist_edges"],
                             got["hist_counts"], got["max_range"], Q)
    est = bounds.values
    for c in range(maxima.shape[1]):
        xs = np.sort(maxima[:, c][~np.isnan(maxima[:, c])].astype(np.float64))
        if not len(xs):
            assert np.isnan(est[c]).all()
            continue
        fin = xs[np.isfinite(xs)]
        for qi, q in enumerate(Q):
            r = int(np.floor(q * (len(xs) - 1)))
            true, x = xs[r], est[c, qi]
            assert true == np.quantile(xs, q, method="lower")
            if r in (0, len(xs) - 1) or true == 0 or np.isinf(true):
                assert x == true, (q, x, true)
                continue
            edges = got["hist_edges"][c]
            b = min(int(np.searchsorted(edges, true, side="right")) - 1, 63)
            assert edges[b] <= x < edges[b + 1], (q, x, true, edges[b:b + 2])  # inside the bin [lo, hi)
            same = fin[np.sign(fin) == np.sign(true)]
            if abs(true) >= 2.0 ** -126 and abs(true) >= 2.0 ** -15 * np.abs(same).max():
                assert not bounds.coarse[c, qi]
            if not bounds.coarse[c, qi]:  # no bound said: the 1/65 holds
                assert abs(x - true) <= abs(true) * sketch.ALPHA * (1 + 1e-9), (q, x, true)
            else:  # a bound said: it holds (equal only to the exact maximum / minimum it is tightened by)
                bound, hi = bounds.bound[c, qi], (xs[-1] if true > 0 else xs[0])
                assert (0 < true < bound or true == bound == hi) if true > 0 else (bound < true < 0 or true == bound == hi)


def test_state_of_another_width_is_refused():
    accs, other = new_accs(3), new_accs(4)
    for a, b in zip(accs[1:], other[1:]):
        with pytest.raises(ValueError, match="fit|not the run's"):
            b.restore(a.state())


# ---- end to end on the embedded data ----------------------------------------------------------
@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, small_test_set):
    out = tmp_path_factory.mktemp("dist")
    a = sketchmine.mine(demo_model.module, small_test_set, distributions=True, out=out / "a.zarr", batch_size=128)
    # the same batches (so the same activations), flushed often and interrupted twice
    for stop in (70, 130):
        with pytest.raises(KeyboardInterrupt):
            sketchmine.mine(demo_model.module, small_test_set, distributions=True, out=out / "b.zarr", batch_size=128, flush_every=1,
                            progress=StopAfter(stop))
    b = sketchmine.mine(demo_model.module, small_test_set, distributions=True, out=out / "b.zarr", batch_size=128, flush_every=1)
    return a, b


def test_resume_changes_nothing_and_readers_match_brute_force(mined, demo_model, small_test_set):
    a, b = mined
    got, want = store_arrays(b.path), store_arrays(a.path)
    for key in want:
        if key.rsplit("/", 1)[-1] in OURS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    acts, _ = all_activations(demo_model.module, small_test_set, a.layers)
    n, k = len(small_test_set), a.k
    for layer in a.layers:
        m = acts[layer].float().numpy()
        maxima = m.reshape(m.shape[0], m.shape[1], -1).max(axis=2)
        c = maxima.shape[1]
        edges, counts = a.histogram(layer)
        assert edges.shape == (c, 65) and counts.shape == (c, 64) and (counts.sum(1) == n).all()
        q = a.quantiles(layer, Q)
        assert q.shape == (c, len(Q))
        got = {"hist_edges": edges, "hist_counts": counts, "max_range": a.max_range(layer)}
        for name in ("sketch_counts", "sketch_top", "sketch_special"):
            got[name] = a.layer_array(layer, name)
        check_quantiles(got, maxima)
        np.testing.assert_array_equal(q, estimate(got["sketch_counts"], got["sketch_top"], got["sketch_special"],
                                                  edges, counts, got["max_range"], Q))
        picks, ex_edges = a.quantile_examples(layer), a.example_edges(layer)
        assert picks.shape == (c, 17, 8) and ex_edges.shape == (c, 18) and picks.dtype == np.int64
        values, index, yx = a.bottomk(layer)
        top_shapes = [x.shape for x in a.topk(layer)]
        assert [values.shape, index.shape, yx.shape] == top_shapes
        for u in range(c):
            check_examples_in_bins(picks[u], ex_edges[u], maxima[:, u], np.arange(n))
            want = ref_unit(maxima[:, u], np.arange(n), k)
            np.testing.assert_array_equal(picks[u], want["example_index"])
            np.testing.assert_array_equal(index[u], want["bottom_image_index"])
            np.testing.assert_array_equal(values[u], want["bottom_values"].astype(np.float32))
            if m.ndim == 4:  # where the maximum lies: the first position holding it
                flat = m[index[u], u].reshape(k, -1)
                first = np.argmax(flat == values[u][:, None], axis=1)
                np.testing.assert_array_equal(yx[u], np.stack([first // m.shape[3], first % m.shape[3]], 1))
        np.testing.assert_allclose(a.firing_density(layer), (maxima > 0).mean(0))
        np.testing.assert_allclose(a.max_mean(layer), maxima.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)


def test_a_run_mined_without_them_says_what_is_missing(tmp_path, mined):
    old = tmp_path / "old.zarr"
    shutil.copytree(mined[0].path, old)
    layer = mined[0].layers[0]
    as_mined_without(old, layer, OURS)
    run = sketchmine.open_run(old)
    for read in (run.histogram, run.quantile_examples, run.bottomk, lambda l: run.quantiles(l, [0.5])):
        with pytest.raises(SketchmineError, match="mined without distributions.*mine it again into a new directory to add them: `sketchmine"):
            read(layer)
    with pytest.raises(SketchmineError, match="from 0 to 1"):
        mined[0].quantiles(layer, [1.5])


def test_an_unfinished_run_reads_its_checkpoint(tmp_path, demo_model, small_test_set):
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, distributions=True, out=out, batch_size=32, flush_every=2,
                        progress=StopAfter(150))
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done > 0
    layer = run.layers[1]
    assert (run.histogram(layer)[1].sum(1) == run.images_done).all()
    assert (run.bottomk(layer)[1] < run.images_done).all()
    picks = run.quantile_examples(layer)
    assert picks.max() < run.images_done and (picks >= 0).any()


def test_the_mine_again_call_names_the_embedded_subset_a_run_was_mined_from(tmp_path):
    """A run mined from a subset of the embedded split was told to mine it again from the whole split
    when its record had no subset (an older sketchmine), and given `--data ...` when it had one: the
    call now rebuilds the subset from the run's paths (evaluated here: the same images), and says
    plainly that an older run cannot name its images."""
    import json
    import re

    from sketchmine.data import animal_shape

    split = animal_shape("test")
    take = np.flatnonzero(split.labels() % 3 == 1)[::7]  # real images of three classes, not a prefix
    kw = {"layers": ["features.0"], "k": 3, "batch_size": 64}
    whole = sketchmine.mine("demo", split, out=tmp_path / "whole.zarr", **kw)
    sub = sketchmine.mine("demo", split.subset(take), out=tmp_path / "sub.zarr", **kw)

    def said(run) -> str:
        with pytest.raises(SketchmineError, match="mined without distributions") as got:
            run.histogram("features.0")
        return str(got.value)

    assert "sketchmine.mine('demo', sketchmine.data.animal_shape('test'), layers=['features.0']" in said(whole)
    from sketchmine.results.provenance import dataset_words

    assert dataset_words(whole.attrs["dataset"]) == "the embedded animal_shape, test split"  # split_size not listed
    call = re.search(r"sketchmine\.mine\('demo', (.*), layers=", said(sub))[1]
    assert ".subset(" in call and f"the {len(take):,} images the run took" in said(sub)
    again = eval(call, {"sketchmine": sketchmine})  # the printed expression is the run's images
    assert again.fingerprint() == sub.attrs["dataset_fingerprint"] != whole.attrs["dataset_fingerprint"]
    np.testing.assert_array_equal(again.labels(), sub.labels)
    twice = sketchmine.mine("demo", split.subset(take).subset(np.arange(1, len(take), 2)), out=tmp_path / "twice.zarr",
                            **kw)  # a subset of a subset: its paths still hold the split's numbers
    assert twice.attrs["dataset"]["subset"] == f"{len(take)} of 2000 images, then {len(take) // 2} of {len(take)} images"
    call = re.search(r"sketchmine\.mine\('demo', (.*), layers=", said(twice))[1]
    assert eval(call, {"sketchmine": sketchmine}).fingerprint() == twice.attrs["dataset_fingerprint"]

    old = tmp_path / "old.zarr"
    shutil.copytree(sub.path, old)
    meta = json.loads((old / "zarr.json").read_text())
    del meta["attributes"]["dataset"]["subset"]  # a dataset that copied the split's description
    meta["attributes"].pop("attribute_sums", None)  # recorded later than the dataset's description
    (old / "zarr.json").write_text(json.dumps(meta))
    text = said(sketchmine.open_run(old))
    assert "animal_shape('test'), layers" not in text and "sketchmine.mine('demo', DATASET, layers=" in text
    assert f"the same {len(take):,} of the split's 2,000 images" in text
    del meta["attributes"]["dataset"]["split_size"]  # as written before runs recorded the subset
    (old / "zarr.json").write_text(json.dumps(meta))
    text = said(sketchmine.open_run(old))
    assert f"older sketchmine, which recorded neither a subset nor the split's size, so whether its {len(take):,} " \
           "images are all of sketchmine.data.animal_shape('test') or a subset, and which, cannot be known" in text


def test_a_run_of_a_subset_of_a_subset_of_the_embedded_split_reopens_its_images(tmp_path):
    """The passes that reopen a run's images (visualize, effects, importance) rebuilt a subset of the
    embedded split from its paths only when taken once ('80 of 2000 images'); taken again ('80 of
    2000 images, then 40 of 80 images', whose paths still hold the split's numbers, as the mine-again
    call reads them) it was refused as 'a Python dataset object that cannot be reopened from the
    store'. Now it is the same images, and visualize runs without data=."""
    from sketchmine.data import animal_shape
    from sketchmine.passes.reload import run_dataset
    from sketchmine.passes.visualize import visualize

    split = animal_shape("test")
    twice = split.subset(np.flatnonzero(split.labels() % 2 == 0)[::25]).subset(np.arange(0, 40, 2))
    run = sketchmine.mine("demo", twice, out=tmp_path / "twice.zarr", layers=["features.0"], k=2, batch_size=64)
    assert ", then " in run.attrs["dataset"]["subset"]
    again = run_dataset(run)
    assert again.fingerprint() == run.attrs["dataset_fingerprint"] and len(again) == len(twice) == 20
    np.testing.assert_array_equal(again.labels(), twice.labels())
    visualize(run.path, model="demo", batch_size=32)
    assert run.layer_array("features.0", "patches").shape[:2] == (run.layer_shape("features.0")[0], 2)
