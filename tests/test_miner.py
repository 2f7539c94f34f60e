"""End-to-end mining on the embedded real data with the trained demo model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.errors import SketchmineError
from tests.helpers import StopAfter, all_activations, assert_same_store, brute_topk, log_odds64, ranked64


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, demo_model, small_test_set):
    out = tmp_path_factory.mktemp("ref") / "run.zarr"
    # every accumulator, the opt-in distribution statistics too: the store comparisons below cover them
    return sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2, distributions=True)


def test_mine_equals_brute_force(reference_run, demo_model, small_test_set):
    run = reference_run
    assert run.complete and run.images_done == len(small_test_set)
    acts, logits = all_activations(demo_model.module, small_test_set, run.layers)
    assert set(acts) == set(run.layers)
    for name in run.layers:
        values, index, yx = run.topk(name)
        bv, bi, bp = brute_topk(acts[name], run.k)
        if name == "softmax":  # ranked by log-odds: float32 p ties at 1.0 for this model's confident images
            bi = ranked64(log_odds64(logits), run.k)
            bv = np.take_along_axis(acts[name].numpy().T, bi, 1)
        np.testing.assert_array_equal(index, bi, err_msg=name)
        np.testing.assert_allclose(values, bv, rtol=1e-5, atol=1e-6, err_msg=name)
        shape = run.layer_shape(name)
        if len(shape) == 3:
            np.testing.assert_array_equal(yx[..., 0] * shape[2] + yx[..., 1], bp, err_msg=name)
        else:
            assert (yx == -1).all()
    pred = logits.argmax(1).numpy()
    labels = small_test_set.labels()
    acc = run.class_accuracy()
    for c, name in enumerate(run.class_names):
        m = labels == c
        if m.any():
            assert acc.loc[name, "accuracy"] == pytest.approx((pred[m] == c).mean())
    assert run.accuracy() == pytest.approx((pred == labels).mean())


def test_default_layers_are_every_conv_linear_and_softmax(reference_run):
    assert reference_run.layers == ["features.0", "features.3", "features.6", "features.8", "features.10",
                                    "classifier.1", "classifier.4", "classifier.6", "softmax"]


def assert_same_topk(a, b, name, rtol=1e-5):
    """Equal up to the forward pass's float rounding: values match at every rank, and an image
    may change rank only with a near-tied neighbour (PyTorch's CPU GEMMs can differ in the last
    bits between batch sizes; the tie-break itself is exact, see test_ops)."""
    (va, ia, _), (vb, ib, _) = a, b  # positions of near-tied maxima may differ like the ranks
    np.testing.assert_allclose(va, vb, rtol=rtol, atol=rtol / 10, err_msg=name)
    for c, r in zip(*np.nonzero(ia != ib)):
        v = va[c]
        near = [abs(v[r] - v[q]) <= rtol * max(1.0, abs(v[r])) for q in (r - 1, r + 1) if 0 <= q < len(v)]
        assert any(near) or r == len(v) - 1, f"{name}: unit {c} rank {r} differs without a near tie"


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (37, 0), (300, 0), (50, 2)])
def test_invariant_to_batch_size_and_workers(tmp_path, reference_run, demo_model, small_test_set, batch_size, workers):
    if batch_size == 1:  # keep the one-image case short: first 40 images
        from sketchmine.data import ArrayDataset

        ds = small_test_set
        sub = ArrayDataset(ds.images[:40], ds.labels()[:40], ds.class_names, ds.preprocessing, ds.describe())
        a = sketchmine.mine(demo_model.module, sub, out=tmp_path / "a.zarr", batch_size=1)
        b = sketchmine.mine(demo_model.module, sub, out=tmp_path / "b.zarr", batch_size=40)
    else:
        a = sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "a.zarr",
                            batch_size=batch_size, num_workers=workers)
        b = reference_run
    for name in b.layers:
        assert_same_topk(a.topk(name), b.topk(name), name)


def test_workers_give_bit_identical_results(tmp_path, reference_run, demo_model, small_test_set):
    a = sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "a.zarr", batch_size=32, num_workers=2,
                        distributions=True)
    assert_same_store(a.path, reference_run.path)


@pytest.mark.parametrize("stop_at", [20, 130, 290])
def test_resume_is_identical_to_uninterrupted(tmp_path, reference_run, demo_model, small_test_set, stop_at):
    """Re-running the same call after an interruption ends bit-identical, array for array."""
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2,
                        progress=StopAfter(stop_at), distributions=True)
    partial = sketchmine.open_run(out)
    assert not partial.complete and partial.images_done <= stop_at
    if partial.images_done:
        assert partial.topk("features.0")[1].max() < partial.images_done
    run = sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2)  # the run's setting
    assert run.complete and run.attrs["distributions"] is True
    assert_same_store(out, reference_run.path)


def test_a_run_begun_with_folder_chunk_keys_resumes_identical(tmp_path, monkeypatch, reference_run, demo_model,
                                                              small_test_set):
    """Runs written before the schema's "." chunk keys used "/" (c/0/0 two folders down): an
    unfinished one resumes under "." to the arrays of an uninterrupted run, each array read by
    the encoding its own metadata names; a new run makes no chunk folders at all."""
    from sketchmine.store import schema

    out = tmp_path / "run.zarr"
    monkeypatch.setattr(schema, "CHUNK_KEY_ENCODING", {"name": "default", "separator": "/"})
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2,
                        progress=StopAfter(130), distributions=True)
    assert any(p.is_dir() for p in out.rglob("c"))  # the older layout: chunk folders
    monkeypatch.undo()
    run = sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2)
    assert run.complete
    assert_same_store(out, reference_run.path)
    assert not [p for p in reference_run.path.rglob("c") if p.is_dir()]
    assert (reference_run.path / "layers" / "features.0" / "values" / "c.0.0").is_file()


def test_resume_with_other_settings_is_refused(tmp_path, demo_model, small_test_set):
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=10, flush_every=1,
                        progress=StopAfter(30))
    with pytest.raises(SketchmineError, match=r"other settings: k \(run: 9, now: 5\)"):
        sketchmine.mine(demo_model.module, small_test_set, out=out, k=5)
    with pytest.raises(SketchmineError, match="other settings: layers"):
        sketchmine.mine(demo_model.module, small_test_set, out=out, layers=["features.0"])
    other = torch.nn.Sequential(*list(demo_model.module.children()))  # same weights, other id
    other_weights = type(demo_model.module)()
    with pytest.raises(SketchmineError, match="model weights"):
        sketchmine.mine(other_weights, small_test_set, out=out)
    from sketchmine.data import ArrayDataset

    ds = small_test_set
    shifted = ArrayDataset(ds.images[1:301], ds.labels()[1:301], ds.class_names, ds.preprocessing, ds.describe())
    with pytest.raises(SketchmineError, match="other settings: dataset"):
        sketchmine.mine(demo_model.module, shifted, out=out)
    # the same images and labels under other names: the fingerprint cannot tell, the run's names can
    names = list(ds.class_names)
    renamed = ArrayDataset(ds.images, ds.labels(), names[1:] + names[:1], ds.preprocessing, ds.describe())
    with pytest.raises(SketchmineError, match=rf"other settings: class names \(class 0: '{names[0]}' in the run, "
                                              rf"'{names[1]}' now\)"):
        sketchmine.mine(demo_model.module, renamed, out=out)
    del other


def test_k_larger_than_images_is_clamped_to_the_dataset(tmp_path, demo_model, small_test_set):
    from sketchmine.data import ArrayDataset

    ds = small_test_set
    tiny = ArrayDataset(ds.images[:5], ds.labels()[:5], ds.class_names, ds.preprocessing, ds.describe())
    run = sketchmine.mine(demo_model.module, tiny, out=tmp_path / "r.zarr", k=8, batch_size=2)
    values, index, yx = run.topk("features.3")
    assert run.k == 5 and index.shape[1] == 5 and (index >= 0).all() and np.isfinite(values).all()
    assert sorted(index[0].tolist()) == [0, 1, 2, 3, 4]


def test_unknown_layer_lists_closest(tmp_path, demo_model, small_test_set):
    with pytest.raises(SketchmineError, match=r"unknown layer 'features\.99'.*closest matches: features\.9"):
        sketchmine.mine(demo_model.module, small_test_set, layers=["features.99"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


def test_output_that_is_not_a_run_is_refused(tmp_path, demo_model, small_test_set):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(SketchmineError, match="exists and is not a sketchmine run"):
        sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "stuff")
    assert (tmp_path / "stuff" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stuff"]  # no lock file left beside it
    with pytest.raises(SketchmineError, match="is not a sketchmine run"):
        sketchmine.open_run(tmp_path / "stuff")


def test_empty_dataset_is_refused(tmp_path, demo_model):
    with pytest.raises(SketchmineError, match="empty"):
        sketchmine.mine(demo_model.module, torch.utils.data.TensorDataset(torch.empty(0, 1, 28, 28),
                                                                          torch.empty(0, dtype=torch.long)),
                        out=tmp_path / "r.zarr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mining_matches_cpu(tmp_path, reference_run, demo_model, small_test_set):
    import copy

    gpu_model = copy.deepcopy(demo_model.module)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare full fp32
    try:
        run = sketchmine.mine(gpu_model, small_test_set, out=tmp_path / "gpu.zarr", batch_size=32, device="cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert run.attrs["weights_hash"] == reference_run.attrs["weights_hash"]
    for name in run.layers:  # cuDNN/cuBLAS round differently from the CPU: near ties may reorder
        assert_same_topk(run.topk(name), reference_run.topk(name), name, rtol=1e-4)


def test_module_called_twice_per_forward_is_refused(tmp_path, small_test_set):
    import torchvision

    from sketchmine.data import ArrayDataset, preset

    ds = small_test_set
    sub = ArrayDataset(ds.images[:4], ds.labels()[:4], ds.class_names, preset("imagenet", 3, (64, 64)), ds.describe())
    net = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(SketchmineError, match=r"'layer1\.0\.relu' \(2 calls\) is called more than once per forward"):
        sketchmine.mine(net, sub, layers=["layer1.0.relu"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
    run = sketchmine.mine(net, sub, layers=["layer1.0.conv2", "layer1.0", "fc"], out=tmp_path / "s.zarr", k=2)
    assert run.layer_shape("layer1.0") == (64, 16, 16)


def test_store_records_receptive_fields(reference_run, demo_model):
    rf = sketchmine.receptive_fields(demo_model.module, 28)
    for name in reference_run.layers:
        got = reference_run.store.group[f"layers/{name}"].attrs["receptive_field"]
        if name in rf:
            assert got == {"size": list(rf[name].size), "stride": list(rf[name].stride),
                           "offset": list(rf[name].offset)}, name
        else:  # the virtual softmax sees the whole image
            assert got == {"size": [28, 28], "stride": [0, 0], "offset": [0, 0]}
    assert reference_run.store.group["layers/features.3"].attrs["receptive_field"]["size"] == [10, 10]


def test_pending_rows_fill_preallocated_buffers():
    """The rows between flushes: skipped images get NaN logits, a longer interval than planned
    grows the buffers, and what a flush reads is exactly what was added, in order."""
    from sketchmine.mining.loop import _Pending

    rng = np.random.default_rng(5)
    block = _Pending(100, 4)
    want_logits, want_index, want_labels = [], [], []
    for b in range(3):  # 9 rows into room for 4
        idx = np.arange(100 + 3 * b, 103 + 3 * b)
        lab = rng.integers(0, 10, 3)
        ok = torch.tensor([True, b != 1, True])
        logits = torch.from_numpy(rng.standard_normal((int(ok.sum()), 5)).astype(np.float32))
        block.add(idx, lab, ok, logits)
        full = np.full((3, 5), np.nan, np.float32)
        full[ok.numpy()] = logits.numpy()
        want_logits.append(full)
        want_index.append(idx)
        want_labels.append(lab)
    assert block.rows == 9 and block.start == 100
    np.testing.assert_array_equal(block.index_rows(), np.concatenate(want_index))
    np.testing.assert_array_equal(block.label_rows(), np.concatenate(want_labels))
    np.testing.assert_array_equal(block.logit_rows(), np.concatenate(want_logits))  # NaN where skipped
    assert _Pending(0, 8).logit_rows() is None  # no logits seen (logits=False): none written
