"""A caller's model comes back from every pass exactly as it was handed over (each module's
training flag: a train-mode model with frozen batch norms stays so; its weights and batch-norm
statistics), whether the pass ends, is refused, fails or is interrupted; and a half-precision
model is deconvolved in its own dtype, to the float32 model's results. On the embedded trained
models and real Animal-Shape test images."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sketchmine
from sketchmine import SketchmineError
from sketchmine.data import ArrayDataset
from sketchmine.data.sequences import SequenceDataset
from sketchmine.model.models import load_model
from sketchmine.passes.deconv import METHODS
from tests.helpers import StopAfter, all_activations, brute_topk, per_class_subset

FROZEN = ("bn1", "layer2.0.bn2")
"""Batch norms frozen in eval inside the training ResNet, as fine-tuning leaves them."""


@pytest.fixture(scope="module")
def images(small_test_set):
    """40 real test images (4 per class), normalised as both demo models were trained."""
    return per_class_subset(small_test_set, 4, "state")


@pytest.fixture(scope="module")
def resnet():
    return load_model("demo-resnet")


@pytest.fixture()
def handed(resnet):
    """The trained demo ResNet in train mode with FROZEN in eval, and what it was handed over as."""
    model = copy.deepcopy(resnet.module).train()
    for name in FROZEN:
        model.get_submodule(name).eval()
    return model, _flags(model), {k: v.clone() for k, v in model.state_dict().items()}


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _assert_as_handed(model: nn.Module, flags: dict[str, bool], state: dict[str, torch.Tensor]) -> None:
    assert _flags(model) == flags
    assert model.training and model.layer1[0].bn1.training and not model.bn1.training
    for key, value in model.state_dict().items():  # run in eval mode: no batch-norm statistics updated
        assert torch.equal(value, state[key]), key


def test_mine_gives_the_model_back(handed, images, tmp_path):
    model, flags, state = handed
    run = sketchmine.mine(model, images, layers=["layer2.0.conv1", "fc"], k=3, out=tmp_path / "run.zarr",
                          batch_size=16)
    _assert_as_handed(model, flags, state)
    # mined in eval mode: the top-k of an eval-mode copy's activations
    acts, _ = all_activations(copy.deepcopy(model).eval(), images, ["layer2.0.conv1"])
    values, index, _ = brute_topk(acts["layer2.0.conv1"], 3)
    got_values, got_index, _ = run.topk("layer2.0.conv1")
    np.testing.assert_array_equal(np.asarray(got_index), index)
    np.testing.assert_allclose(np.asarray(got_values), values, rtol=1e-5, atol=1e-6)


def _five_classes(ds: ArrayDataset) -> ArrayDataset:
    """The images of the first five classes, as a dataset of five classes."""
    keep = np.nonzero(ds.labels() < 5)[0]
    return ArrayDataset(ds.images[keep], ds.labels()[keep], ds.class_names[:5], ds.preprocessing,
                        {**ds.describe(), "subset": "five classes"})


@pytest.mark.parametrize("stop", ["refused", "error", "ctrl-c"])
def test_mine_gives_the_model_back_when_it_stops(handed, images, tmp_path, stop):
    """Refused after the probe has run the model (10 outputs for 5 classes), or a failure /
    Ctrl-C after the first batch: the model comes back as handed over all the same."""
    model, flags, state = handed
    if stop == "refused":
        with pytest.raises(SketchmineError, match="10 outputs but the dataset has 5 classes"):
            sketchmine.mine(model, _five_classes(images), layers=["layer1.0.conv1"], k=3, out=tmp_path / "run.zarr")
    else:
        exc = KeyboardInterrupt if stop == "ctrl-c" else RuntimeError
        with pytest.raises(exc):
            sketchmine.mine(model, images, layers=["layer1.0.conv1"], k=3, out=tmp_path / "run.zarr", batch_size=8,
                            progress=StopAfter(1, calls=True, exc=exc))
    _assert_as_handed(model, flags, state)


def test_importance_and_effects_give_the_model_back(handed, images, tmp_path):
    model, flags, state = handed
    run = sketchmine.mine(model, images, layers=["layer2.0.conv1"], k=3, out=tmp_path / "run.zarr", batch_size=20)
    table = sketchmine.unit_importance(run, "layer2.0.conv1", model=model, dataset=images, batch_size=20)
    _assert_as_handed(model, flags, state)
    assert len(table) == 32 and np.isfinite(table["prob_drop"].to_numpy()).all()
    effects = sketchmine.unit_effects(run, "layer2.0.conv1", model=model, data=images, batch_size=20)
    _assert_as_handed(model, flags, state)
    assert len(effects) and np.isfinite(effects.to_numpy(dtype=float)).all()


def test_visualize_and_feature_visualization_give_the_model_back(handed, images, tmp_path):
    """visualize with every part that runs the model: deconvolutions, example pictures (their
    positions), feature visualisation; then feature_visualization and receptive_fields alone."""
    model, flags, state = handed
    run = sketchmine.mine(model, images, layers=["layer1.0.conv1", "fc"], k=3, out=tmp_path / "run.zarr",
                          batch_size=20, distributions=True)
    run = sketchmine.visualize(run, model=model, data=images, batch_size=16, examples="all", optimize=True,
                               optimize_steps=2)
    _assert_as_handed(model, flags, state)
    deconv = run.layer_array("layer1.0.conv1", "deconv", slice(None))
    assert (deconv != 128).any()
    sketchmine.feature_visualization(model, "layer1.0.conv1", [0, 1], steps=2)
    _assert_as_handed(model, flags, state)
    sketchmine.receptive_fields(model, 28)
    _assert_as_handed(model, flags, state)
    from sketchmine.passes.probe import build_probe

    build_probe(run, model=model, size=(28, 28))  # the report's live probe: an ONNX export of the model
    _assert_as_handed(model, flags, state)



def test_visualize_of_a_recurrent_model_gives_it_back(images, tmp_path):
    """The embedded CNN + GRU in train mode with its convolutions frozen in eval, mined on
    progressive drawings and visualized: the GRU's traces (activation over time) are computed
    with the model, which comes back with each module's own flag."""
    model = copy.deepcopy(load_model("demo-gru").module).train()
    model.features.eval()
    flags, state = _flags(model), {k: v.clone() for k, v in model.state_dict().items()}
    drawings = SequenceDataset(images, 4)
    run = sketchmine.mine(model, drawings, layers=["features.3", "gru"], k=3, out=tmp_path / "run.zarr", batch_size=20)
    assert _flags(model) == flags
    run = sketchmine.visualize(run, model=model, data=drawings, batch_size=16)
    assert _flags(model) == flags and model.training and not model.features[0].training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert "traces" in run.store.group["layers/gru"]

VIS_LAYERS = ["features.3", "features.10", "classifier.4", "softmax"]


def test_bfloat16_visualize_matches_float32(demo_model, images, tmp_path):
    """The demo model in bfloat16 against its float32 copy (the same, bfloat16-rounded weights,
    the same inputs), each mined and visualized (deconvnet). On the top-k entries both runs hold
    (same image and position; bfloat16 rounding reorders a few), the uint8 deconvolutions agree
    within the stated tolerance: on average within 1.5 levels of 255, and at least 95 % of pixels
    within 8 (a max-pool switch or a ReLU that bfloat16 rounding flips moves some pixels more)."""
    half = copy.deepcopy(demo_model.module).to(torch.bfloat16)
    full = copy.deepcopy(half).float()
    x = torch.stack([images[i][1] for i in range(len(images))]).to(torch.bfloat16)
    y = torch.as_tensor(images.labels())
    runs = {}
    for name, model, inputs in (("bfloat16", half, x), ("float32", full, x.float())):
        data = TensorDataset(inputs, y)
        run = sketchmine.mine(model, data, layers=VIS_LAYERS, k=4, out=tmp_path / f"{name}.zarr", batch_size=20)
        runs[name] = sketchmine.visualize(run, model=model, data=data, batch_size=16)
    for layer in VIS_LAYERS:
        (_, i_half, yx_half), (_, i_full, yx_full) = (runs[n].topk(layer) for n in ("bfloat16", "float32"))
        same = (np.asarray(i_half) == np.asarray(i_full)) & (np.asarray(yx_half) == np.asarray(yx_full)).all(-1)
        same &= np.asarray(i_full) >= 0
        assert same.mean() >= 0.85, layer
        arrays = {n: {key: runs[n].layer_array(layer, key, slice(None)).astype(int) for key in ("deconv", "patches")}
                  for n in runs}
        diff = np.abs(arrays["bfloat16"]["deconv"] - arrays["float32"]["deconv"])[same]
        assert (arrays["float32"]["deconv"][same] != 128).any(), layer
        assert diff.mean() <= 1.5 and (diff <= 8).mean() >= 0.95, (layer, diff.mean(), (diff <= 8).mean())
        # the pixels of a bfloat16 input, made back into uint8 in bfloat16 (passes/images.py): within 2 levels
        assert np.abs(arrays["bfloat16"]["patches"] - arrays["float32"]["patches"])[same].max() <= 2, layer


def _strongest_units(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the channel and (y, x) of the layer's largest activation: a live unit."""
    acts, _ = all_activations(model, [(None, xi) for xi in x], [layer])
    flat = acts[layer].flatten(1).argmax(1)
    h, w = acts[layer].shape[2:]
    return flat // (h * w), torch.stack([(flat % (h * w)) // w, flat % w], dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_deconvolve_feeds_the_model_its_dtype(demo_model, images, dtype):
    """deconvolve on a double or half model: float32 signals, those of the model's float32 copy
    (double: to float32 rounding; half: each image's signal within cosine 0.98 of it)."""
    model = copy.deepcopy(demo_model.module).to(dtype)
    full = copy.deepcopy(model).float()
    x = torch.stack([images[i][1] for i in range(0, len(images), 5)]).to(dtype).float()  # representable in dtype
    channels, yx = _strongest_units(full, x, "features.6")
    for method in METHODS:
        got = sketchmine.deconvolve(model, x.to(dtype), "features.6", channels, yx, method=method)
        want = sketchmine.deconvolve(full, x, "features.6", channels, yx, method=method)
        assert got.dtype == torch.float32 and (want.flatten(1).abs().amax(1) > 0).all()
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
        else:
            cosine = nn.functional.cosine_similarity(got.flatten(1), want.flatten(1))
            assert (cosine >= 0.98).all(), (method, cosine)


def test_half_model_without_a_kernel_is_refused_naming_its_dtype(demo_model, images):
    """A half model whose forward has an op with no float16 CPU kernel (LocalResponseNorm, as in
    the original AlexNet) is refused naming the dtype, not with torch's dtype mismatch."""
    features = copy.deepcopy(demo_model.module.features[:4])
    model = nn.Sequential(features[0], features[1], nn.LocalResponseNorm(3), *features[2:]).half()
    x = torch.stack([images[i][1] for i in range(4)]).half()
    with pytest.raises(SketchmineError, match="float16"):
        sketchmine.deconvolve(model, x, "4", [0, 1, 2, 3], [[3, 3]] * 4)
