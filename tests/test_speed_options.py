"""Opt-in speed options of mine(): logits=False, channels_last, autocast (issue 5 item 2)."""
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
