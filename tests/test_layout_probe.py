"""taps.probe_layouts: how each tapped layer is read, learnt from one image as the miner's probe
learns it, for the passes that run without the run's attributes (ablation, deconvolution). One
image tells a time-first per-step Linear's (T, 1, F) from (1, T, F); a batch of as many images
as steps cannot. Real small models on real silhouettes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sketchmine.data import animal_shape
from sketchmine.model.models import build
from sketchmine.model.taps import TIME_FIRST, Taps, default_layers, probe_layouts, to_units
from sketchmine.passes.ablation import layer_layout
from sketchmine.passes.deconv import Deconvolver
from tests.test_time_first import TimeFirst as TimeFirstGRU  # frames → conv → time-first GRU → per-step Linear

T = 4


class TimeFirstLSTM(nn.Module):
    """The rows of a drawing as steps of a time-first, bidirectional nn.LSTM, a Linear on every
    step, a classifier on the last; `unused` is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(14, 5, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(10, 4)
        self.cls = nn.Linear(4, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0].permute(1, 0, 2)  # (N, 1, 14, 14) → (T=14, N, 14)
        return self.cls(self.fc(self.lstm(rows)[0])[-1])


@pytest.fixture(scope="module")
def silhouettes() -> torch.Tensor:
    """(64, 28, 28) float32 in [0, 1]: real test drawings."""
    x = torch.from_numpy(animal_shape("test").images[:64].astype(np.float32) / 255)
    assert float(x.std()) > 0
    return x


def _miner_probe(net: nn.Module, layers: list[str], x: torch.Tensor) -> dict:
    """The layouts the miner records: Taps over a whole forward of one image."""
    with torch.inference_mode(), Taps(net, layers, lambda n, t: None) as taps:
        net(x[:1])
    return taps.layouts


def test_one_image_tells_a_time_first_linear_where_a_batch_of_as_many_images_as_steps_cannot(silhouettes):
    torch.manual_seed(0)
    net = TimeFirstGRU().eval()
    x = silhouettes[:T * T].view(T, T, 1, 28, 28)[..., ::3, ::3].contiguous()  # T drawings of T frames
    probed = probe_layouts(net, ["head", "gru"], x)
    assert probed["head"]["layout"] == TIME_FIRST
    assert "(T, N, H)" in probed["gru"]["tapped"]
    assert probed == _miner_probe(net, ["head", "gru"], x)
    with torch.inference_mode(), Taps(net, ["head"], lambda n, t: None) as taps:
        net(x)  # the batch itself: (T, T, 3) reads as batch-first
    assert "layout" not in taps.layouts["head"]
    with torch.no_grad():
        out = net.steps(x)  # (T, N, 3)
        got = to_units("head", net.head, out, len(x), known=probed["head"])[0]  # (N, 3, T)
        for n in range(len(x)):  # each image's steps are its own
            torch.testing.assert_close(got[n], net.steps(x[n:n + 1])[:, 0].T)


def test_batch_first_recurrent_model_reads_as_the_miner_records(silhouettes):
    net = build("sketchgru").eval()
    x = silhouettes[:T * T].view(T, T, 1, 28, 28)  # as many drawings as frames
    layers = default_layers(net)
    probed = probe_layouts(net, layers, x)
    assert probed == _miner_probe(net, layers, x)
    assert "softmax" in layers and "softmax" not in probed
    assert "(N, T, H)" in probed["gru"]["tapped"]
    assert probed["classifier"]["position"] == "sequence" and "layout" not in probed["classifier"]
    assert probed["features.0"]["position"] == "time-stacked" and probed["features.0"]["time_steps"] == T
    assert probed["embed.0"]["time_steps"] == T


def test_the_forward_ends_once_every_layer_is_read(silhouettes):
    """A receptive-field window is too small for the layers after the visualised one; the
    probe never reaches them, takes an input that requires grad, and leaves no hook behind."""
    net = build("sketchnet").eval()
    window = silhouettes[:3, None, 8:20, 8:20].clone().requires_grad_(True)
    with pytest.raises(RuntimeError):
        net(window)
    assert probe_layouts(net, ["features.0", "features.3"], window) == {"features.0": {}, "features.3": {}}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_cell_state_and_softmax_and_uncalled_layers(silhouettes):
    torch.manual_seed(0)
    net = TimeFirstLSTM().eval()
    x = silhouettes[:14, None, ::2, ::2].contiguous()  # as many drawings as rows (steps)
    layers = ["lstm", "lstm.cell", "fc", "unused", "softmax"]
    probed = probe_layouts(net, layers, x)
    assert set(probed) == {"lstm", "lstm.cell", "fc"}
    assert probed == _miner_probe(net, layers, x)
    assert probed["lstm.cell"]["tapped"].startswith("output[1][1]")
    assert probed["fc"]["layout"] == TIME_FIRST
    assert probe_layouts(net, ["softmax"], x) == {}


def test_ablation_and_deconvolution_read_a_time_first_layer_as_probed(silhouettes):
    torch.manual_seed(0)
    net = TimeFirstGRU().eval()
    x = silhouettes[:T * T].view(T, T, 1, 28, 28)[..., ::3, ::3].contiguous()
    assert layer_layout(net, "head", x) == probe_layouts(net, ["head"], x)["head"]
    units, steps = torch.arange(T) % 3, (torch.arange(T) * 3) % T
    yx = torch.stack([torch.zeros(T, dtype=torch.long), steps], 1)
    together = Deconvolver(net, "gradient")(x, "head", units, yx)  # no recorded layouts: probed
    alone = torch.cat([Deconvolver(net, "gradient")(x[n:n + 1], "head", units[n:n + 1], yx[n:n + 1])
                       for n in range(T)])
    torch.testing.assert_close(together, alone)
    assert float(together.abs().amax()) > 0
