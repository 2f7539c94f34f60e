"""RunningClassStats against a numpy brute force: per class and unit the mean and count of the
image maxima over labelled, non-NaN images, the NaN count per unit, over random batches with
NaNs, ties, unknown and out-of-range labels; batches added all layers at once (one block) or
layer by layer; the packed checkpoint state round-trips bit for bit and merging two halves
equals one pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sketchmine.stats.classstats import PACKED_KEYS, RunningClassStats


def unpack(arrays: dict[str, np.ndarray], layers: dict[str, int], num_classes: int) -> RunningClassStats:
    """A fresh statistics object loaded from packed arrays."""
    stats = RunningClassStats(layers, num_classes)
    stats.load_packed(arrays)
    return stats


@st.composite
def _streams(draw):
    """layers {name: channels}, classes, and batches of (labels, {layer: maxima}); a batch may
    cover only some layers (added layer by layer)."""
    layers = {f"l{i}": draw(st.integers(1, 5)) for i in range(draw(st.integers(1, 3)))}
    classes = draw(st.integers(1, 4))
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 6))
        labels = np.array(draw(st.lists(st.integers(-1, classes + 1), min_size=n, max_size=n)), dtype=np.int64)
        names = list(layers) if draw(st.booleans()) else draw(st.lists(st.sampled_from(list(layers)), min_size=1,
                                                                         unique=True))
        maxima = {}
        for name in names:
            cells = draw(st.lists(st.sampled_from([-1.5, 0.25, 0.25, 2.0, 3.5, np.nan]) | st.floats(-4, 4),
                                  min_size=n * layers[name], max_size=n * layers[name]))
            maxima[name] = np.array(cells, dtype=np.float32).reshape(n, layers[name])
        batches.append((labels, maxima))
    return layers, classes, batches


def _feed(stats: RunningClassStats, batches) -> RunningClassStats:
    for labels, maxima in batches:
        t = torch.from_numpy(labels).to(stats.device)
        for name, m in maxima.items():
            stats.add(name, torch.from_numpy(m).to(stats.device), t)
        stats.end_batch()
    return stats


def _brute(layers, classes, batches, name):
    """(mean (C, K), count (C, K), nan_count (C,)) by numpy over the layer's batches."""
    seen = [(lab, m[name].astype(np.float64)) for lab, m in batches if name in m]
    c = layers[name]
    if not seen:
        return np.full((c, classes), np.nan), np.zeros((c, classes), np.int64), np.zeros(c, np.int64)
    labels = np.concatenate([lab for lab, _ in seen])
    maxima = np.concatenate([m for _, m in seen])
    ok = ~np.isnan(maxima)
    count = np.stack([(ok & (labels == k)[:, None]).sum(0) for k in range(classes)], axis=1)
    total = np.stack([np.where(ok & (labels == k)[:, None], maxima, 0).sum(0) for k in range(classes)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count, (~ok).sum(0)


def _assert_same(a: RunningClassStats, b: RunningClassStats) -> None:
    for name in a.layers:
        for x, y in zip(a.results(name), b.results(name)):
            np.testing.assert_array_equal(x, y, err_msg=name)
        np.testing.assert_array_equal(a.nan_counts(name), b.nan_counts(name), err_msg=name)


def _stats(layers: dict[str, int], classes: int, host: bool = True) -> RunningClassStats:
    """host=False takes the CUDA code path (one-hot GEMM sums, NaN table from the first batch)
    on the CPU, so that path is checked without a GPU."""
    stats = RunningClassStats(layers, classes)
    stats.host = host
    return stats


@settings(max_examples=60, deadline=None)
@given(_streams(), st.booleans())
def test_class_stats_equal_brute_force(stream, host):
    layers, classes, batches = stream
    stats = _feed(_stats(layers, classes, host), batches)
    for name in layers:
        mean, count = stats.results(name)
        want_mean, want_count, want_nans = _brute(layers, classes, batches, name)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(count, want_count, err_msg=name)
        np.testing.assert_array_equal(stats.nan_counts(name), want_nans, err_msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@settings(max_examples=30, deadline=None)
@given(_streams())
def test_cuda_class_stats_equal_the_host(stream):
    layers, classes, batches = stream
    host = _feed(RunningClassStats(layers, classes), batches)
    cuda = _feed(RunningClassStats(layers, classes, device="cuda"), batches)
    assert not cuda.host
    for name in layers:
        for x, y in zip(cuda.results(name), host.results(name)):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(cuda.nan_counts(name), host.nan_counts(name), err_msg=name)
    _assert_same(unpack(cuda.packed(), layers, classes), cuda)


@settings(max_examples=40, deadline=None)
@given(_streams(), st.integers(0, 5), st.booleans())
def test_packed_state_round_trips_and_halves_merge(stream, cut, host):
    layers, classes, batches = stream
    whole = _feed(_stats(layers, classes, host), batches)
    _assert_same(unpack(whole.packed(), layers, classes), whole)

    first = _feed(_stats(layers, classes, host), batches[:cut])
    first.merge(_feed(_stats(layers, classes, not host), batches[cut:]))
    for name in layers:
        for x, y in zip(first.results(name), whole.results(name)):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(first.nan_counts(name), whole.nan_counts(name), err_msg=name)


def test_packed_state_of_another_layout_is_refused():
    stats = RunningClassStats({"a": 3, "b": 2}, 4)
    _feed(stats, [(np.array([0, 1, 5]), {"a": np.array([[1, 2, np.nan]] * 3, np.float32),
                                         "b": np.array([[0.5, 1.5]] * 3, np.float32)})])
    with pytest.raises(ValueError, match="do not fit"):
        unpack(stats.packed(), {"a": 3, "b": 3}, 4)


def test_a_state_without_packed_statistics_is_refused():
    """Only the packed layout is read (no released sketchmine resumed another one)."""
    stats = RunningClassStats({"a": 3}, 4)
    with pytest.raises(ValueError, match="no packed class statistics"):
        stats.load_packed({"class_sum": np.ones(4), "class_count": np.ones(4, np.int64)})


class _Stop(Exception):
    pass


def test_a_checkpoint_whose_statistics_do_not_fit_is_a_clear_error(tmp_path, small_test_set):
    """Checksums pass (the slot is rewritten through the store) but the packed layout is not
    this run's: resuming and reading the partial run both say so, naming the run."""
    import sketchmine
    from sketchmine.errors import SketchmineError
    from sketchmine.store import RunStore
    from tests.helpers import StopAfter

    out = tmp_path / "run.zarr"
    with pytest.raises(_Stop):
        sketchmine.mine("demo", small_test_set, out=out, batch_size=40, flush_every=2,
                        progress=StopAfter(5, calls=True, exc=_Stop))
    store = RunStore.open(out, mode="r+")
    keys = store.group[f"_checkpoint/{store.progress['slot']}"].attrs["accumulators"]
    states = {key: store.read_checkpoint_state(key) for key in keys}
    assert set(states["classes"]) == set(PACKED_KEYS)
    states["classes"]["class_sums"] = states["classes"]["class_sums"][:-1]
    store.write_checkpoint(states, store.progress["images_done"], {})
    with pytest.raises(SketchmineError, match=f"{out}: the class statistics in its checkpoint do not fit"):
        sketchmine.open_run(out).class_stats("features.0")
    with pytest.raises(SketchmineError, match="do not fit the run .*mine it again with a new --out"):
        sketchmine.mine("demo", small_test_set, out=out, batch_size=40, flush_every=2)


def test_progressive_drawings_are_counted_measured_and_merge_exactly():
    """5-D input (N, T, ch, H, W): every labelled drawing counts (labelled_images, the final
    arrays exist) and its ink is the last frame's; two halves merged, and a state restored,
    give the whole stream's ink and counts bit for bit."""
    from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
    from sketchmine.data.sequences import SequenceDataset
    from sketchmine.store import schema

    base = animal_shape("test")
    pre = Preprocessing("model", 1, None, (0.2728,), (0.4056,))
    ds = SequenceDataset(ArrayDataset(base.images[:24], base.labels()[:24], base.class_names, pre,
                                      {"kind": "embedded", "name": "animal_shape", "split": "test"}), 4)
    x = torch.stack([ds[i][1] for i in range(24)])                       # (24, 4, 1, 28, 28)
    labels = torch.from_numpy(base.labels()[:24].copy())
    labels[::5] = -1
    maxima = torch.from_numpy(np.random.default_rng(0).standard_normal((24, 3)).astype(np.float32))

    def feed(stats, rows):
        for s in rows:
            stats.add("l", maxima[s], labels[s])
            stats.add_images(x[s], labels[s])
            stats.end_batch()
        return stats

    parts = [slice(0, 8), slice(8, 16), slice(16, 24)]
    whole = feed(RunningClassStats({"l": 3}, 10, mean=(0.2728,), std=(0.4056,)), parts)
    assert whole.labelled_images == int((labels >= 0).sum())
    still = feed(RunningClassStats({"l": 3}, 10, mean=(0.2728,), std=(0.4056,)), [slice(0, 24)])
    still.ink.zero_()
    still.images.zero_()
    still.add_images(x[:, -1], labels)                                  # the final frames as still images
    np.testing.assert_array_equal(whole.ink_results()[0], still.ink_results()[0])
    arrays = whole.results()
    np.testing.assert_array_equal(arrays[schema.dataset_array("class_image_count")],
                                  np.bincount(labels[labels >= 0].numpy(), minlength=10))
    half = feed(RunningClassStats({"l": 3}, 10, mean=(0.2728,), std=(0.4056,)), parts[:1])
    half.merge(feed(RunningClassStats({"l": 3}, 10, mean=(0.2728,), std=(0.4056,)), parts[1:]))
    back = unpack(half.state(), {"l": 3}, 10)
    for other in (half, back):
        got = other.results()
        assert set(got) == set(arrays)
        for key in arrays:
            np.testing.assert_array_equal(np.asarray(got[key].whole() if hasattr(got[key], "whole") else got[key]),
                                          np.asarray(arrays[key].whole() if hasattr(arrays[key], "whole")
                                                     else arrays[key]), err_msg=key)


def test_the_device_path_counts_labels_without_bincount(monkeypatch):
    """host=False (CUDA's path) counts the images per class without torch.bincount, which reads
    the labels' min and max back to the host: two synchronisations a batch on a GPU."""
    layers, classes = {"a": 2, "b": 3}, 3
    batches = [(np.array([0, 2, -1, 2, 5], dtype=np.int64),
                {"a": np.arange(10, dtype=np.float32).reshape(5, 2), "b": np.ones((5, 3), np.float32)}),
               (np.array([1, 1], dtype=np.int64), {"a": np.full((2, 2), np.nan, np.float32)})]
    want = _feed(_stats(layers, classes, host=True), batches)

    def refused(*args, **kwargs):
        raise AssertionError("torch.bincount on the device path")

    monkeypatch.setattr(torch, "bincount", refused)
    got = _feed(_stats(layers, classes, host=False), batches)
    monkeypatch.undo()
    _assert_same(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_class_stats_add_a_batch_without_a_host_sync():
    """A batch's class statistics on CUDA queue their work without waiting for the GPU (a host
    synchronisation per batch stalls the mining loop)."""
    stats = RunningClassStats({"a": 4, "b": 2}, 5, device="cuda")
    labels = torch.tensor([0, 4, -1, 3, 9, 0], device="cuda")
    maxima = {"a": torch.randn(6, 4, device="cuda"), "b": torch.randn(6, 2, device="cuda")}
    x = torch.rand(6, 3, 8, 8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, m in maxima.items():
            stats.add(name, m, labels)
        stats.end_batch()
        stats.add_images(x, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    host = RunningClassStats({"a": 4, "b": 2}, 5)
    for name, m in maxima.items():
        host.add(name, m.cpu(), labels.cpu())
    host.end_batch()
    host.add_images(x.cpu(), labels.cpu())
    for name in ("a", "b"):
        for a, b in zip(stats.results(name), host.results(name)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
