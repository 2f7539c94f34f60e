"""The accumulator protocol end to end, proved with the statistic added through it (moments.py):
its arrays equal a numpy brute force over the embedded real data, a run interrupted and resumed
ends bit-identical to an uninterrupted one, two processes merge to one process's result, and a
partial run checkpointed in the layout before accumulators is a clear error."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.distributed as dist
import zarr

import sketchmine
from sketchmine.stats import accumulators
from sketchmine.store import schema
from sketchmine.errors import SketchmineError
from sketchmine.stats.moments import RunningMoments
from tests.helpers import StopAfter, all_activations, assert_same_store, store_arrays
from tests.test_distributed import rendezvous

MOMENTS = ("max_count", "max_mean", "firing")


def _moments(run, layer: str) -> dict[str, np.ndarray]:
    return {name: run.store.read(schema.layer_array(layer, name)) for name in MOMENTS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_model, small_test_set):
    out = tmp_path_factory.mktemp("ref") / "run.zarr"
    return sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2, distributions=True)


def test_registry_puts_the_top_k_first_and_names_each_statistic_once():
    setup = accumulators.Setup((accumulators.LayerSpec("a", 3, (4, 4)), accumulators.LayerSpec("b", 2)), 5,
                               torch.device("cpu"), num_classes=4)
    assert [a.key for a in accumulators.build(setup)] == ["topk", "classes", "moments"]
    full = accumulators.Setup(setup.layers, 5, setup.device, num_classes=4, distributions=True)
    assert [a.key for a in accumulators.build(full)] == [
        "topk", "classes", "moments", "histogram", "quantiles", "examples", "bottomk"]
    assert [a.key for a in accumulators.build(accumulators.Setup(setup.layers, 5, setup.device))] == ["topk", "moments"]


def test_moments_equal_a_numpy_brute_force(reference, demo_model, small_test_set):
    run = reference
    acts, _ = all_activations(demo_model.module, small_test_set, run.layers)
    for layer in run.layers:
        a = acts[layer].float().numpy()
        maxima = a.reshape(a.shape[0], a.shape[1], -1).max(axis=2).astype(np.float64)  # (N, C)
        got = _moments(run, layer)
        valid = ~np.isnan(maxima)
        np.testing.assert_array_equal(got["max_count"], valid.sum(axis=0), err_msg=layer)
        np.testing.assert_array_equal(got["firing"], (maxima > 0).sum(axis=0), err_msg=layer)
        want = np.where(valid, maxima, 0).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)
        np.testing.assert_allclose(got["max_mean"], want, rtol=1e-5, atol=1e-6, err_msg=layer)
        assert got["max_count"].dtype == np.int64 and got["max_mean"].dtype == np.float64
        assert got["max_count"].shape == (run.layer_shape(layer)[0],)


def test_moments_skip_nan_maps_and_merge_like_one_pass():
    """NaN maxima (all-NaN maps) are left out of count and mean; two halves merged equal one
    pass (integers exactly, the float64 sum to rounding); state() round-trips bit for bit."""
    rng = np.random.default_rng(3)
    m = rng.standard_normal((40, 5)).astype(np.float32)
    m[rng.random(m.shape) < 0.2] = np.nan
    whole, a, b = (RunningMoments({"l": 5}) for _ in range(3))
    for s in range(0, 40, 7):
        whole.add("l", torch.from_numpy(m[s:s + 7]))
        (a if s < 20 else b).add("l", torch.from_numpy(m[s:s + 7]))
    copy = RunningMoments({"l": 5})
    copy.restore(a.state())
    assert all(np.array_equal(x, y) for x, y in zip(copy.state().values(), a.state().values()))
    copy.merge(b)
    got, want = copy.results(), whole.results()
    valid = ~np.isnan(m)
    np.testing.assert_array_equal(want["layers/l/max_count"], valid.sum(0))
    np.testing.assert_array_equal(want["layers/l/firing"], (np.nan_to_num(m) > 0).sum(0))
    np.testing.assert_allclose(want["layers/l/max_mean"], np.nansum(m.astype(np.float64), 0) / valid.sum(0),
                               rtol=1e-12)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
    with pytest.raises(ValueError, match="do not fit"):
        RunningMoments({"l": 4}).restore(a.state())


@pytest.mark.parametrize("stop_at", [70, 200])
def test_resume_is_bit_identical_with_moments(tmp_path, reference, demo_model, small_test_set, stop_at):
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2,
                        progress=StopAfter(stop_at), distributions=True)
    partial = sketchmine.open_run(out)
    done = partial.images_done
    assert 0 < done <= stop_at and not partial.complete
    saved = partial.store.read_checkpoint_state("moments")  # its own namespace in the checkpoint
    units = sum(partial.layer_shape(l)[0] for l in partial.layers)
    assert saved is not None and (saved["counts"][:units] == done).all()  # no NaN maps in this model
    assert partial.topk("features.0")[1].max() < done  # the top-k state read back generically
    sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2, distributions=True)
    assert_same_store(out, reference.path)
    for layer in reference.layers:
        assert (_moments(sketchmine.open_run(out), layer)["max_count"] == len(small_test_set)).all()


def test_checkpoint_slot_without_its_accumulator_list_is_a_clear_error(tmp_path, demo_model, small_test_set):
    """A damaged slot (its checksums pass, its attributes lack the accumulator list): reading and
    resuming both name the run and say what to do, instead of a KeyError."""
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=1,
                        progress=StopAfter(100))
    slot = zarr.open_group(str(out), mode="r").attrs["progress"]["slot"]
    sg = zarr.open_group(str(out / "_checkpoint" / slot), mode="r+")
    meta = dict(sg.attrs)
    del meta["accumulators"]
    sg.attrs.put(meta)
    said = f"{out}.*mine it again with a new --out"
    with pytest.raises(SketchmineError, match=said):
        sketchmine.open_run(out).topk("features.0")
    with pytest.raises(SketchmineError, match=said):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=1)


# ---- two processes merge to one -----------------------------------------------------------------
def _spawned(rank: int, meet: str, out: str) -> None:
    from sketchmine.data import animal_shape
    from sketchmine.model.models import load_model, preprocessing_for
    from tests.helpers import per_class_subset

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=2)
    try:
        model = load_model("demo")
        ds = per_class_subset(animal_shape("test", preprocessing_for(model)), 12, "0:120")
        sketchmine.mine(model.module, ds, out=out, batch_size=16, flush_every=2, distributions=True)
    finally:
        dist.destroy_process_group()


def test_two_processes_merge_to_one(tmp_path, demo_model):
    from sketchmine.data import animal_shape
    from sketchmine.model.models import preprocessing_for
    from tests.helpers import per_class_subset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same GEMM code paths
    try:
        ds = per_class_subset(animal_shape("test", preprocessing_for(demo_model)), 12, "0:120")
        one = sketchmine.mine(demo_model.module, ds, out=tmp_path / "one.zarr", batch_size=16, flush_every=2,
                              distributions=True)
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two.zarr"
    torch.multiprocessing.spawn(_spawned, args=(rendezvous(tmp_path), str(two)), nprocs=2, join=True)
    got, want = store_arrays(two), store_arrays(one.path)
    assert set(got) == set(want)
    for key in want:
        if key.rsplit("/", 1)[-1] in ("max_mean", "class_mean", "class_ink_density"):  # float64 sums, other order
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-15, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert any(key.endswith("/max_count") for key in got)
