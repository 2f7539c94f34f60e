"""The channel count a model takes is read from the convolution its input reaches, not from the
first convolution it defines: a Conv1d over a GRU's hidden states is not the model's input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.data.sequences import SequenceDataset
from sketchmine.model.graph import module_input_channels
from tests.helpers import brute_topk

PRE = Preprocessing("model", 1, None, (0.2728,), (0.4056,))


class TimeConv(nn.Module):
    """1-channel frames → GRU → a Conv1d over time on the (N, H, T) hidden states → classes."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(28 * 28, hidden, batch_first=True)
        self.tconv = nn.Conv1d(hidden, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.flatten(2))
        return self.fc(self.tconv(out.transpose(1, 2)).amax(2))


class FramesThenTime(nn.Module):
    """The Conv1d over time is defined before the per-frame Conv2d the frames go through."""

    def __init__(self, untraceable: bool = False) -> None:
        super().__init__()
        self.untraceable = untraceable
        self.tconv = nn.Conv1d(5, 4, 3, padding=1)
        self.frame = nn.Sequential(nn.BatchNorm2d(1), nn.ReLU(), nn.Conv2d(1, 5, 3))
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.untraceable and x.sum() < -1e9:
            x = -x
        n, t = x.shape[:2]
        f = self.frame(x.flatten(0, 1)).amax(dim=(2, 3)).view(n, t, 5)
        return self.fc(self.tconv(f.transpose(1, 2)).amax(2))


class FunctionalConv(nn.Module):
    """A functional conv of its own weight (2 groups of 1 channel) on the input; a Conv1d defined first."""

    def __init__(self) -> None:
        super().__init__()
        self.tconv = nn.Conv1d(7, 4, 3)
        self.weight = nn.Parameter(torch.randn(4, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tconv(torch.nn.functional.conv2d(x * 2, self.weight, None, 1, 0, 1, 2).flatten(2).transpose(1, 2)[:, :7])


class StandardisedConv(nn.Conv2d):
    """A conv whose forward computes its weight (timm's StdConv2d): traced, a functional conv on
    a computed tensor, which names no channels of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


@pytest.fixture(scope="module")
def drawings():
    """30 real test silhouettes (3 per class) drawn in 4 steps, as 1-channel frames."""
    ds = animal_shape("test")
    keep = np.sort(np.concatenate([np.nonzero(ds.labels() == c)[0][:3] for c in range(10)]))
    return SequenceDataset(ArrayDataset(ds.images[keep], ds.labels()[keep], ds.class_names, PRE,
                                        {"kind": "python"}), 4)


def test_the_conv_the_input_reaches_gives_the_channels():
    assert module_input_channels(TimeConv(6), default=0) == 0  # no conv takes the input: the caller's default
    assert module_input_channels(FramesThenTime()) == 1  # through BatchNorm, ReLU and a flatten
    assert module_input_channels(FunctionalConv()) == 2  # its weight's 1 channel times its 2 groups
    assert module_input_channels(FramesThenTime(untraceable=True)) == 5  # no graph: the first conv defined
    stem = nn.Sequential(StandardisedConv(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    assert module_input_channels(stem) == 1  # the conv module the computed weight runs in (it was the default, 3)


def test_a_temporal_conv_over_hidden_states_is_not_the_input(tmp_path, drawings):
    """Refused as "takes 6-channel input" (the Conv1d's in_channels); mined as a GRU model is."""
    torch.manual_seed(0)
    net = TimeConv(6).eval()
    run = sketchmine.mine(net, drawings, layers=["gru"], k=3, out=tmp_path / "r.zarr", batch_size=8)
    acts = []
    hook = net.gru.register_forward_hook(lambda m, i, o: acts.append(o[0].detach().clone()))
    with torch.no_grad():
        net(torch.stack([drawings[i][1] for i in range(len(drawings))]))
    hook.remove()
    want_v, want_i, _ = brute_topk(acts[0].transpose(1, 2), 3)  # (N, H, T): a unit's maximum over the steps
    got_v, got_i, _ = run.topk("gru")
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_i, want_i)
