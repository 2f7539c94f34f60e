"""Feature visualisation by optimisation (passes/featvis*.py): batching, determinism, channels,
the optimised images against the run's top-1 images, the stored pass and its resume, bad input.
Few steps and small models: the real numbers are in benchmarks/featvis.py."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.passes.featvis import feature_visualization
from sketchmine.passes.featvis_params import blur, random_transform
from sketchmine.regularizers import settings


@pytest.mark.parametrize("method", ["fourier", "pixel"])
def test_batched_equals_one_unit_at_a_time(demo_model, method):
    units = [0, 5, 17]
    batched = feature_visualization(demo_model, "features.6", units, steps=6, method=method)
    for i, u in enumerate(units):
        alone = feature_visualization(demo_model, "features.6", [u], steps=6, method=method)
        torch.testing.assert_close(alone.images[0], batched.images[i], atol=2e-4, rtol=1e-4)
        assert np.abs(alone.pixels[0].astype(int) - batched.pixels[i].astype(int)).max() <= 1


def test_deterministic_for_a_seed_and_seeds_differ(demo_model):
    a = feature_visualization(demo_model, "classifier.4", [3, 4], steps=5, seed=7)
    b = feature_visualization(demo_model, "classifier.4", [3, 4], steps=5, seed=7)
    c = feature_visualization(demo_model, "classifier.4", [3, 4], steps=5, seed=8)
    assert torch.equal(a.images, b.images) and np.array_equal(a.pixels, b.pixels)
    assert not torch.allclose(a.images, c.images, atol=1e-3)
    images, pixels = a  # unpacks as (images, pixels)
    assert images is a.images and pixels is a.pixels


def test_grey_model_gives_one_channel_and_the_recorded_normalisation(demo_model):
    r = feature_visualization(demo_model, "features.0", [1, 2], steps=3, method="pixel")
    assert r.images.shape == (2, 1, 28, 28) and r.pixels.shape == (2, 28, 28, 1) and r.pixels.dtype == np.uint8
    mean, std = demo_model.preprocessing["mean"][0], demo_model.preprocessing["std"][0]
    torch.testing.assert_close(r.images * std + mean, torch.from_numpy(r.pixels).permute(0, 3, 1, 2).float() / 255,
                               atol=0.5 / 255 + 1e-5, rtol=0)


def test_colour_model_gives_three_channels():
    from sketchmine.model.models import build

    net = build("alexnet", seed=0)
    r = feature_visualization(net, "features.10", [0, 255], steps=2, size=64)
    assert r.images.shape == (2, 3, 64, 64) and r.pixels.shape == (2, 64, 64, 3)
    assert r.regularizers["decorrelate"] is True


def test_optimised_images_beat_the_runs_top1_images(demo_model, small_test_set, tmp_path):
    """The unit's spatial maximum at its optimised image against the run's top-1 value (the
    spatial maximum over the dataset). A weak bound for few steps; the benchmark reports the
    default steps."""
    run = sketchmine.mine("demo", small_test_set, layers=["features.0", "features.3", "classifier.4"], k=1,
                          out=tmp_path / "run.zarr")
    units = list(range(6))
    for layer in ("features.0", "features.3"):
        top1 = run.topk(layer)[0][units, 0]
        r = feature_visualization(demo_model, layer, units, steps=24, method="pixel")
        assert (r.peak >= top1).mean() >= 0.5, (layer, r.peak, top1)
    for method in ("fourier", "pixel"):  # the objective rises, for any layer
        r = feature_visualization(demo_model, "classifier.4", units, steps=12, method=method)
        start = feature_visualization(demo_model, "classifier.4", units, steps=1, method=method)
        assert (r.objective > start.objective).all()


def test_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(1))
    for sigma in (0.5, 1.0, 2.0):
        want = np.stack([[gaussian_filter(c.numpy().astype(np.float64), sigma, mode="mirror") for c in img] for img in x])
        torch.testing.assert_close(blur(x, sigma), torch.from_numpy(want).float(), atol=1e-5, rtol=1e-5)


def test_transform_is_shared_by_the_batch_and_keeps_the_size():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    batch = random_transform(x, torch.Generator().manual_seed(5))
    for i in range(3):
        one = random_transform(x[i:i + 1], torch.Generator().manual_seed(5))
        torch.testing.assert_close(one[0], batch[i])
    assert batch.shape == x.shape and not torch.allclose(batch, x)


class _InfForUnitOne(nn.Module):
    """A real model whose unit 1 overflows (exp(exp(5 c))) once its input grows; unit 0 (-c)
    drives the input the other way and stays finite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.zero_()
        self.act = _TwoUnits()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class _TwoUnits(nn.Module):
    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([-c, torch.exp(torch.exp(5 * c))], dim=1)


def test_nan_stops_that_unit_and_keeps_the_others():
    r = feature_visualization(_InfForUnitOne(), "act", [0, 1], steps=60, size=8, method="pixel",
                              regularizers="none")
    assert r.stopped[0] == -1 and r.stopped[1] >= 0
    assert torch.isfinite(r.images).all()


def test_bad_input_is_refused(demo_model):
    with pytest.raises(SketchmineError, match="has 32 units"):
        feature_visualization(demo_model, "features.0", [0, 32], steps=1)
    with pytest.raises(SketchmineError, match="unknown layer"):
        feature_visualization(demo_model, "features.99", [0], steps=1)
    with pytest.raises(SketchmineError, match="unknown feature visualisation method"):
        feature_visualization(demo_model, "features.0", [0], steps=1, method="deepdream")
    with pytest.raises(SketchmineError, match="unknown regularizer setting"):
        feature_visualization(demo_model, "features.0", [0], steps=1, method="pixel", regularizers={"jitter": 3})
    with pytest.raises(SketchmineError, match="sequences of drawings"):
        feature_visualization("demo-gru", "gru", [0], steps=1)
    with pytest.raises(SketchmineError, match="pass its input size"):
        feature_visualization(demo_model, "classifier.4", [0], steps=1, size=32)
    assert settings("pixel", "yosinski1")["norm_pct"] == 50.0


def test_visualize_optimize_stores_resumes_and_reads(demo_model, small_test_set, tmp_path):
    from sketchmine.passes.visualize import visualize

    run = sketchmine.mine("demo", small_test_set, layers=["classifier.6"], k=2,
                          out=tmp_path / "a.zarr")
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    whole = visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_steps=3)
    part = visualize(tmp_path / "b.zarr", data=small_test_set, batch_size=4, optimize=True, optimize_steps=3,
                     max_units=6)
    with pytest.raises(SketchmineError, match="no optimised image yet"):
        part.optimized("classifier.6", 9)
    part = visualize(part, data=small_test_set, batch_size=4, optimize=True, optimize_steps=np.int64(3))
    for layer in whole.layers:
        a, b = whole.optimized(layer), part.optimized(layer)
        assert a.shape == (whole.layer_shape(layer)[0], 28, 28, 1) and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        np.testing.assert_allclose(whole.optimized(layer, key="optimized_peak"),
                                   part.optimized(layer, key="optimized_peak"), rtol=1e-4, atol=1e-4)
    direct = feature_visualization(demo_model, "classifier.6", [2], steps=3)
    assert np.abs(whole.optimized("classifier.6", 2).astype(int) - direct.pixels[0].astype(int)).max() <= 1
    with pytest.raises(SketchmineError, match="other settings"):
        visualize(whole, data=small_test_set, batch_size=4, optimize=True, optimize_steps=4)
    with pytest.raises(SketchmineError, match="apply to the feature visualisation pass only"):
        visualize(whole, data=small_test_set, optimize_steps=4)
    from sketchmine.present.report import write_report

    write_report(whole, tmp_path / "rep")
    pages = "".join(p.read_text() for p in (tmp_path / "rep").rglob("page_*.js"))
    assert pages.count('"optimized"') == whole.layer_shape("classifier.6")[0]
    assert len(list((tmp_path / "rep").rglob("*_o.png"))) == whole.layer_shape("classifier.6")[0]
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sketchmine", "visualize", str(whole.path), "--optimize-steps", "3"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "apply to the feature visualisation pass only" in proc.stderr, proc.stderr


def _shown_image(fig, want: np.ndarray) -> np.ndarray:
    """The (h, w) grey values the rendered figure shows where its single-image axes (the
    optimised input) is: each cell's centre pixel, read from the Agg buffer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    axes = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape == want.shape[:2]
            and len(ax.patches) == 1]
    assert len(axes) == 1
    box = axes[0].get_window_extent()
    h, w = want.shape[:2]
    ys = (buf.shape[0] - (box.y1 - (np.arange(h) + 0.5) * box.height / h)).astype(int)
    xs = (box.x0 + (np.arange(w) + 0.5) * box.width / w).astype(int)
    return buf[ys][:, xs].mean(axis=2)


def test_montage_shows_the_optimised_image(small_test_set, tmp_path):
    from sketchmine.passes.visualize import visualize

    run = sketchmine.mine("demo", small_test_set, layers=["classifier.6"], k=3, out=tmp_path / "m.zarr")
    plain = sketchmine.plots.unit_montage(visualize(run, data=small_test_set, batch_size=4), "classifier.6", 2)
    assert not [ax for ax in plain.axes if ax.images and len(ax.patches) == 1]  # no optimised image yet
    run = visualize(run, data=small_test_set, batch_size=4, optimize=True, optimize_steps=4)
    for unit in (2, 7):
        want = run.optimized("classifier.6", unit)
        other = run.optimized("classifier.6", 9 - unit)
        shown = _shown_image(sketchmine.plots.unit_montage(run, "classifier.6", unit), want)
        assert np.abs(shown - want[..., 0]).max() <= 1  # the stored pixels, grey level for grey level
        assert np.abs(shown - other[..., 0]).max() > 10  # not another unit's


class _Gated(nn.Module):
    """A real model with a data-dependent branch (torch.fx cannot trace it) and a layer whose
    output carries no gradient (`stop`: detached and rounded)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.stop = _Detached()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)
        if c.mean() > 0:  # data-dependent control flow
            c = c * 2
        return self.act(self.stop(c) + c)


class _Detached(nn.Module):
    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return c.detach().round()


def test_untraceable_model_works_and_bad_layers_name_the_module():
    torch.manual_seed(0)
    net = _Gated()
    with pytest.raises(torch.fx.proxy.TraceError):  # torch.fx cannot trace the branch
        torch.fx.symbolic_trace(net)
    r = feature_visualization(net, "conv", [0, 3], steps=4, size=12)
    assert r.images.shape == (2, 1, 12, 12) and (r.stopped == -1).all()
    with pytest.raises(SketchmineError, match=r"layer 'stop' \(_Detached\) gives no gradient"):
        feature_visualization(net, "stop", [0], steps=2, size=12)


def test_polish_runs_the_last_steps_on_the_image_itself(demo_model):
    """polish = 1: every step untransformed, the same as transforms off; reset restarts Adam
    when the polish begins (another image); settings out of range are refused."""
    a = feature_visualization(demo_model, "features.3", [1, 2], steps=4, regularizers={"polish": 1.0})
    b = feature_visualization(demo_model, "features.3", [1, 2], steps=4, regularizers={"transforms": False})
    c = feature_visualization(demo_model, "features.3", [1, 2], steps=4, regularizers={"polish": 0.0})
    assert torch.equal(a.images, b.images) and not torch.allclose(a.images, c.images, atol=1e-4)
    with pytest.raises(SketchmineError, match="'polish' is the share of the last steps"):
        feature_visualization(demo_model, "features.3", [1], steps=2, regularizers={"polish": 1.5})
    d = feature_visualization(demo_model, "features.3", [1, 2], steps=4, regularizers={"polish": 0.5, "reset": False})
    e = feature_visualization(demo_model, "features.3", [1, 2], steps=4, regularizers={"polish": 0.5, "reset": True})
    assert not torch.allclose(d.images, e.images, atol=1e-5)
    with pytest.raises(SketchmineError, match="'reset' .* is a bool"):
        feature_visualization(demo_model, "features.3", [1], steps=2, regularizers={"reset": 1})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_model_is_optimised(demo_model, dtype):
    """The layer's layout is learned with one image in the model's own dtype (a float image made
    a half model refuse its input, said as a wrong input size)."""
    import copy

    net = copy.deepcopy(demo_model.module).to(dtype).eval()
    for layer in ("features.0", "classifier.1"):
        result = feature_visualization(net, layer, [0, 1], steps=3, size=28)
        assert result.images.dtype == torch.float32 and torch.isfinite(result.images).all(), layer
