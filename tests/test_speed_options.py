"""Speed options of mine(): logits=False, channels_last, autocast (issue 5 item 2); compile,
the loader options and flushes overlapped with compute (item 3)."""
from __future__ import annotations

import numpy as np
import pytest

from sketchmine import mine
from sketchmine.errors import SketchmineError

CONVS = ["features.0", "features.3", "features.6", "features.8", "features.10"]
LAYERS = CONVS + ["classifier.1", "classifier.4"]


@pytest.fixture(scope="module")
def baseline(small_test_set, tmp_path_factory):
    return mine("demo", small_test_set, layers=LAYERS, out=tmp_path_factory.mktemp("base") / "r.zarr",
                batch_size=64)


def _recall(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over units of |top-k(a) ∩ top-k(b)| / k (image ids)."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def test_no_logits_same_topk_and_no_predictions(baseline, small_test_set, tmp_path):
    run = mine("demo", small_test_set, layers=CONVS, out=tmp_path / "r.zarr", batch_size=64, logits=False)
    for layer in CONVS:
        for a, b in zip(run.topk(layer), baseline.topk(layer)):
            np.testing.assert_array_equal(a, b)
    assert "predictions" not in run.store.group["eval"] and "logits" not in run.store.group["eval"]
    assert run.store.attrs["logits"] is False and run.accuracy() is None
    with pytest.raises(SketchmineError, match="logits=False"):
        run.class_accuracy()
    assert "logits" not in baseline.store.attrs  # default runs keep their attributes


def test_no_logits_refuses_softmax_and_default_drops_it(small_test_set, tmp_path):
    with pytest.raises(SketchmineError, match="softmax"):
        mine("demo", small_test_set, layers=["features.0", "softmax"], out=tmp_path / "a.zarr", logits=False)
    run = mine("demo", small_test_set, out=tmp_path / "b.zarr", batch_size=100, logits=False)
    assert "softmax" not in run.layers and "classifier.6" in run.layers


def test_no_logits_resume_mismatch_refused(small_test_set, tmp_path):
    out = tmp_path / "r.zarr"
    mine("demo", small_test_set, layers=CONVS, out=out, batch_size=100, logits=False)
    with pytest.raises(SketchmineError, match="logits"):
        mine("demo", small_test_set, layers=CONVS, out=out, batch_size=100)


def test_channels_last_same_topk(baseline, small_test_set, tmp_path):
    run = mine("demo", small_test_set, layers=LAYERS, out=tmp_path / "r.zarr", batch_size=64, channels_last=True)
    for layer in LAYERS:
        v, i, _ = run.topk(layer)
        bv, bi, _ = baseline.topk(layer)
        np.testing.assert_allclose(v, bv, rtol=1e-4, atol=1e-4)
        assert _recall(i, bi) > 0.95  # near-ties may swap under another summation order
    np.testing.assert_allclose(np.asarray(run.store.group["eval/logits"][...]),
                               np.asarray(baseline.store.group["eval/logits"][...]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_autocast_agrees_with_float32(baseline, small_test_set, tmp_path, mode):
    run = mine("demo", small_test_set, layers=LAYERS, out=tmp_path / "r.zarr", batch_size=64, autocast=mode)
    tol = 0.05 if mode == "bf16" else 0.01
    recalls = []
    for layer in LAYERS:
        v, i, _ = run.topk(layer)
        bv, bi, _ = baseline.topk(layer)
        assert v.dtype == np.float32
        scale = max(1.0, float(np.abs(bv).max()))
        np.testing.assert_allclose(v, bv, atol=tol * scale, rtol=tol)
        recalls.append(_recall(i, bi))
    print(f"{mode} top-9 recall vs float32 per layer: {np.round(recalls, 3).tolist()}")
    assert np.mean(recalls) >= 0.5
    assert run.accuracy() is not None


def test_bad_autocast(small_test_set, tmp_path):
    with pytest.raises(SketchmineError, match="autocast"):
        mine("demo", small_test_set, layers=CONVS, out=tmp_path / "r.zarr", autocast="int8")


def test_the_probe_runs_under_the_passs_autocast(small_test_set, tmp_path):
    """A float16 model with a BatchNorm under bf16 autocast: the autocast conv hands the BatchNorm
    bfloat16, which its float16 parameters refuse. The probe runs as mining will, so this is said
    on the first image, before a run is made, not as torch's error at the first batch."""
    import torch
    from torch import nn

    from sketchmine.model.forward import TorchForward, probe

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10)).eval().half()
    x = small_test_set[0][1][None]
    forward = TorchForward(net)
    spec, classes, _ = probe(forward, ["0"], x)  # without autocast the half model runs
    assert [l.channels for l in spec] == [4] and classes == 10
    forward.autocast = torch.bfloat16
    with pytest.raises(SketchmineError, match=r"failed on the first image .*under torch.autocast with bf16.*"
                                              r"mine without autocast") as got:
        probe(forward, ["0"], x, logits=True)  # the logits wanted: the whole forward runs (mine's default)
    with pytest.raises(RuntimeError) as torch_said, torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        net(x.half())
    assert str(torch_said.value).splitlines()[0] in str(got.value) and "--image-size" not in str(got.value)
    with pytest.raises(SketchmineError, match="under torch.autocast with bf16"):  # `mine` probes so
        mine(net, small_test_set, layers=["0"], out=tmp_path / "r.zarr", autocast="bf16")
    assert not (tmp_path / "r.zarr").exists()


# ---- compile=True (issue 5 item 3a) -----------------------------------------------------------
def _assert_close_run(run, baseline, layers, recall=0.95):
    """Same top-k within float tolerance (a compiled graph may sum in another order), the
    same class statistics (they see every image maximum, negative ones included)."""
    for layer in layers:
        v, i, _ = run.topk(layer)
        bv, bi, _ = baseline.topk(layer)
        np.testing.assert_allclose(v, bv, rtol=1e-4, atol=1e-4, err_msg=layer)
        assert _recall(i, bi) > recall, layer
        for key in ("class_mean", "class_count", "class_nan_count"):
            got = np.asarray(run.store.group[f"layers/{layer}/{key}"][...])
            want = np.asarray(baseline.store.group[f"layers/{layer}/{key}"][...])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{layer} {key}")


def test_compile_same_topk_as_eager(baseline, small_test_set, tmp_path):
    from sketchmine.model.models import load_model

    net = load_model("demo").module  # one module object for both calls: a compiled graph must not keep old hooks
    run = mine(net, small_test_set, layers=LAYERS, out=tmp_path / "a.zarr", batch_size=64, compile=True)
    _assert_close_run(run, baseline, LAYERS)  # 300 images: the last batch (44) compiles once more
    np.testing.assert_allclose(np.asarray(run.store.group["eval/logits"][...]),
                               np.asarray(baseline.store.group["eval/logits"][...]), rtol=1e-4, atol=1e-4)
    other = mine(net, small_test_set, layers=CONVS[2:], out=tmp_path / "b.zarr", batch_size=64, compile=True,
                 logits=False)
    _assert_close_run(other, baseline, CONVS[2:])
    assert "logits" not in other.store.group["eval"]


def test_compile_hands_the_taps_the_output_before_an_inplace_op(small_test_set, tmp_path):
    """A conv followed by ReLU(inplace=True), every output negative: the top-k must rank the
    conv's own (negative) values, as in eager mode, not the zeros the ReLU leaves."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10)).eval()
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    kw = dict(layers=["0", "4"], batch_size=100)
    eager = mine(net, small_test_set, out=tmp_path / "e.zarr", **kw)
    compiled = mine(net, small_test_set, out=tmp_path / "c.zarr", compile=True, **kw)
    assert (eager.topk("0")[0] < 0).all()
    _assert_close_run(compiled, eager, ["0", "4"], recall=0.99)


def test_compile_again_with_more_taps(small_test_set, tmp_path):
    """torch.compile does not guard on forward hooks by default: the graph of an earlier call
    (the caller's, without taps, or mine's with fewer) would be reused and the new taps would
    never fire (empty top-k). mine makes the hooks part of the guards: a new set recompiles."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.LazyLinear(10)).eval()
    x = torch.stack([small_test_set[i][1] for i in range(100)])
    with torch.inference_mode():
        net(x)  # materialise the lazy layer
        torch.compile(net, dynamic=False)(x)
    for i, layers in enumerate([["0"], ["0", "2", "5"]]):
        kw = dict(layers=layers, batch_size=100)
        eager = mine(net, small_test_set, out=tmp_path / f"e{i}.zarr", **kw)
        compiled = mine(net, small_test_set, out=tmp_path / f"c{i}.zarr", compile=True, **kw)
        _assert_close_run(compiled, eager, layers, recall=0.99)


def test_compile_without_a_cxx_compiler_is_a_clear_error(small_test_set, tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10)).eval()
    no_cxx = {"cpp.cxx": (None, str(tmp_path / "no-such-g++")), "fx_graph_cache": False}
    with torch._inductor.config.patch(no_cxx), \
            pytest.raises(SketchmineError, match="torch.compile failed.*compile=False"):
        mine(net, small_test_set, layers=["0"], out=tmp_path / "r.zarr", batch_size=100, compile=True)


# ---- loader options (item 3b) -----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")  # pinned on a machine without CUDA: unused
def test_loader_options_same_result(baseline, small_test_set, tmp_path):
    from tests.helpers import assert_same_store

    ref = mine("demo", small_test_set, layers=LAYERS, out=tmp_path / "a.zarr", batch_size=64, num_workers=1)
    run = mine("demo", small_test_set, layers=LAYERS, out=tmp_path / "b.zarr", batch_size=64, num_workers=1,
               prefetch_factor=4, pin_memory=False)
    assert_same_store(run.path, ref.path)
    with pytest.raises(SketchmineError, match="prefetch_factor"):
        mine("demo", small_test_set, layers=CONVS, out=tmp_path / "c.zarr", prefetch_factor=2)
    with pytest.raises(SketchmineError, match="pin_memory"):  # pinning is for copies to a CUDA device
        mine("demo", small_test_set, layers=CONVS, out=tmp_path / "c.zarr", pin_memory=True)


# ---- flushes overlapped with compute (item 3c) ------------------------------------------------
def test_overlapped_flushes_write_on_a_thread_and_equal_synchronous(small_test_set, tmp_path, monkeypatch):
    import threading

    from sketchmine.store import RunStore
    from tests.helpers import assert_same_store

    writers: set[str] = set()
    original = RunStore.write_checkpoint

    def record(self, *args, **kwargs):
        writers.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunStore, "write_checkpoint", record)
    kw = dict(layers=LAYERS, batch_size=20, flush_every=1)
    sync = mine("demo", small_test_set, out=tmp_path / "s.zarr", overlap_flushes=False, **kw)
    assert writers == {threading.current_thread().name}
    writers.clear()
    run = mine("demo", small_test_set, out=tmp_path / "o.zarr", **kw)
    assert writers and all(name.startswith("sketchmine-flush") for name in writers)
    assert_same_store(run.path, sync.path)


def test_slow_overlapped_flushes_checkpoint_a_copy_and_resume_identical(small_test_set, tmp_path, monkeypatch):
    """Checkpoints written slowly while later batches change the live top-k state: each must
    hold the state as of its flush (a copy), or the resumed run would count images twice."""
    import time

    from sketchmine.store import RunStore
    from tests.helpers import StopAfter, assert_same_store

    kw = dict(layers=LAYERS, batch_size=20, flush_every=2)
    ref = mine("demo", small_test_set, out=tmp_path / "ref.zarr", **kw)
    original = RunStore.write_checkpoint

    def slow(self, *args, **kwargs):
        time.sleep(0.2)  # three more batches compute meanwhile
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunStore, "write_checkpoint", slow)
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        mine("demo", small_test_set, out=out, progress=StopAfter(9, calls=True), **kw)
    from sketchmine import open_run

    assert open_run(out).images_done == 160  # the flush in flight after batch 8 committed before mine raised
    monkeypatch.setattr(RunStore, "write_checkpoint", original)
    mine("demo", small_test_set, out=out, **kw)
    assert_same_store(out, ref.path)


def test_failed_background_flush_is_the_stores_clear_error_and_resumes(small_test_set, tmp_path, monkeypatch):
    import errno

    from sketchmine.store import RunStore
    from sketchmine.store.io import io_errors
    from tests.helpers import assert_same_store

    kw = dict(layers=LAYERS, batch_size=20, flush_every=1)
    ref = mine("demo", small_test_set, out=tmp_path / "ref.zarr", **kw)
    original = RunStore.write_rows
    calls = {"n": 0}

    def fail_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunStore, "write_rows", io_errors(fail_third))  # as the store turns an OSError
    out = tmp_path / "run.zarr"
    with pytest.raises(SketchmineError, match=r"cannot write to .*No space left on device.*re-run"):
        mine("demo", small_test_set, out=out, **kw)
    from sketchmine import open_run

    assert open_run(out).images_done == 40
    monkeypatch.setattr(RunStore, "write_rows", original)
    mine("demo", small_test_set, out=out, **kw)
    assert_same_store(out, ref.path)
