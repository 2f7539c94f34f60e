"""The channel count a model takes is read from the convolution its input reaches, not from the
first convolution it defines: a Conv1d over a GRU's hidden states is not the model's input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine import SketchmineError
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.data.sequences import SequenceDataset
from sketchmine.model.graph import module_input_channels
from sketchmine.progress import Silent
from tests.helpers import Conv1dFrames, assert_same_store, brute_topk

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


class FlatGRU(nn.Module):
    """A GRU over flattened 1-channel 28×28 frames, first thing: no conv tells its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(28 * 28, 6, batch_first=True)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.flatten(2))
        return self.fc(out[:, -1])


class Notes(Silent):
    def __init__(self) -> None:
        self.said: list[str] = []

    def note(self, message: str) -> None:
        self.said.append(message)


@pytest.fixture(scope="module")
def grey():
    """The first 40 real test silhouettes, uint8 (28, 28), without a preprocessing (mine gives theirs)."""
    ds = animal_shape("test")
    return ArrayDataset(ds.images[:40], ds.labels()[:40], ds.class_names)


def test_a_gru_over_flattened_grey_frames_gets_one_channel(tmp_path, grey):
    """The frames were made RGB (the fallback of a graph without a conv): "cannot take input of
    shape (4, 3, 28, 28) ... Expected 784, got 2352". The model is now run on the first drawing
    made 1- and 3-channel, takes the one that runs, and says so; the run is what the model
    computes on the 1-channel frames."""
    torch.manual_seed(0)
    net, notes = FlatGRU().eval(), Notes()
    run = sketchmine.mine(net, grey, steps=4, layers=["gru"], k=3, out=tmp_path / "r.zarr", batch_size=8,
                          progress=notes)
    assert run.attrs["preprocessing"]["channels"] == 1
    assert any(n.startswith("the model takes 1-channel input, as a forward pass on the first image showed") and
               "3-channel input failed" in n for n in notes.said)
    frames = SequenceDataset(grey.with_preprocessing(run_preprocessing(run)), 4)
    x = torch.stack([frames[i][1] for i in range(len(frames))])
    assert x.shape[1:] == (4, 1, 28, 28)
    acts = []
    hook = net.gru.register_forward_hook(lambda m, i, o: acts.append(o[0].detach().clone()))
    with torch.no_grad():
        net(x)
    hook.remove()
    want_v, want_i, _ = brute_topk(acts[0].transpose(1, 2), 3)
    got_v, got_i, _ = run.topk("gru")
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_i, want_i)


def test_a_conv1d_over_rows_does_not_tell_the_channels(tmp_path, grey):
    """Refused as "takes 28-channel input" (the Conv1d's in_channels, its rows), even where 1 was
    stated; a 1-D conv the image reaches reshaped tells nothing, and the forward pass decides."""
    assert module_input_channels(Conv1dFrames(rows=True), default=0) == 0
    torch.manual_seed(0)
    net, notes = Conv1dFrames(rows=True).eval(), Notes()
    run = sketchmine.mine(net, grey, steps=4, layers=["gru"], k=3, out=tmp_path / "r.zarr", batch_size=8,
                          progress=notes)
    assert run.attrs["preprocessing"]["channels"] == 1
    assert any(n.startswith("the model takes 1-channel input, as a forward pass on the first image showed")
               for n in notes.said)


class SignalConv(nn.Module):
    """Each grey image flattened to one signal of 784 samples, its channel the Conv1d's one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 9, stride=8)
        self.fc = nn.Linear(4 * 97, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x.flatten(2))).flatten(1))


def test_a_conv1d_over_a_flattened_image_tells_its_channel():
    """A Conv1d taking 1 channel takes the grey image's: left open with every 1-D conv, the passes
    that run no channel trial fed it 3 (receptive_fields and feature_visualization refused,
    preprocessing_for said RGB)."""
    torch.manual_seed(0)
    net = SignalConv().eval()
    assert module_input_channels(net, default=0) == 1
    assert sketchmine.preprocessing_for(net).channels == 1
    field = sketchmine.receptive_fields(net, (28, 28))["conv"]
    assert (tuple(field.size), tuple(field.stride)) == ((28, 28), (0, 0))  # a 1-D map: it sees the whole image
    images, _ = sketchmine.feature_visualization(net, "conv", [0, 1], steps=2, size=28)
    assert images.shape == (2, 1, 28, 28)  # "did not run on a (3, 28, 28) input"


def run_preprocessing(run) -> Preprocessing:
    p = run.attrs["preprocessing"]
    return Preprocessing(p["preset"], p["channels"], p["size"], tuple(p["mean"]), tuple(p["std"]))


def test_a_linear_over_flattened_grey_images_gets_one_channel_on_both_routes(tmp_path, grey):
    """Single images, a Linear first: one channel on the cpu and the batched route alike."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    for route in ("cpu", "device"):
        run = sketchmine.mine(net, grey, layers=["1"], k=3, out=tmp_path / f"{route}.zarr", batch_size=8,
                              preprocess=route)
        assert run.attrs["preprocessing"]["channels"] == 1, route
    assert_same_store(tmp_path / "device.zarr", tmp_path / "cpu.zarr")



def test_a_stated_count_the_model_fails_on_is_refused_naming_the_other(tmp_path, grey):
    """A dataset built with preprocessing_for(model) states 3 channels for a model without a conv
    (its graph cannot tell): the probe refused it as a size to change ("resize the images with
    --image-size"); the count that runs is named, and nothing is made."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    built = grey.with_preprocessing(sketchmine.preprocessing_for(net))
    with pytest.raises(SketchmineError, match=r"the model takes 1-channel input.*3 channels were stated.*state 1, as "
                                              r"Preprocessing\(\.\.\., channels=1\)"):
        sketchmine.mine(net, built, layers=["1"], k=3, out=tmp_path / "r.zarr", batch_size=8)
    assert not (tmp_path / "r.zarr").exists()


class ChannelMean(nn.Module):
    """Averages the channels first: runs on 1 or 3 of them, so no forward pass tells which."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(1).flatten(1))


def test_a_model_that_runs_on_either_count_is_said_and_image_size_chooses(tmp_path, grey):
    """Mined as the preset's 3 channels, said; image_size=(1, H, W) chooses one channel (it was
    refused: "has 1 channels but the model takes 3", the graph's fallback taken for the model's)."""
    notes = Notes()
    run = sketchmine.mine(ChannelMean().eval(), grey, layers=["fc"], k=3, out=tmp_path / "a.zarr", progress=notes)
    assert run.attrs["preprocessing"]["channels"] == 3
    assert any(n.startswith("the model runs on 1- and 3-channel input alike") and "image_size=(1, H, W)" in n
               for n in notes.said)
    run = sketchmine.mine(ChannelMean().eval(), grey, layers=["fc"], k=3, out=tmp_path / "b.zarr", image_size=(1, 28, 28))
    assert run.attrs["preprocessing"]["channels"] == 1
