"""A per-step nn.Linear after a time-first recurrent layer (nn.GRU without batch_first): its
(T, N, F) output holds the batch in dim 1. Read as frames folded into the batch, its steps were
credited to other images; the one-image probe fixes the layout for batches with as many images
as steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine

T, N = 4, 12


class TimeFirst(nn.Module):
    """Frames → conv features → GRU over time (T, N, F) → a Linear on every step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gru = nn.GRU(4, 6)
        self.head = nn.Linear(6, 3)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        f = self.conv(x.flatten(0, 1)).amax(dim=(2, 3)).view(n, t, 4).transpose(0, 1)
        return self.head(self.gru(f)[0])  # (T, N, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x)[-1]


class Drawings(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i % 3


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    net = TimeFirst().eval()
    from sketchmine.data import animal_shape

    images = animal_shape("test").images[:N * T].astype(np.float32) / 255  # real silhouettes as frames
    x = torch.from_numpy(images).view(N, T, 1, 28, 28)[..., ::3, ::3].contiguous()
    return net, x


@pytest.mark.parametrize("batch_size", [2, T, 5])
def test_a_time_first_linear_credits_each_step_to_its_image(tmp_path, net_and_data, batch_size):
    net, x = net_and_data
    run = sketchmine.mine(net, Drawings(x), layers=["head"], k=3, out=tmp_path / "r.zarr", batch_size=batch_size)
    with torch.no_grad():  # in the batches mine runs: a matrix product's rounding depends on its row count
        per_step = torch.cat([net.steps(x[i:i + batch_size]) for i in range(0, N, batch_size)], 1)  # (T, N, 3)
    values, index, yx = run.topk("head")
    maxima = per_step.amax(0).T.numpy()  # (3, N)
    want = np.argsort(-maxima, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(index, want)
    np.testing.assert_array_equal(values, np.take_along_axis(maxima, want, 1))
    steps = per_step.argmax(0).T.numpy()  # the step of each image's maximum
    np.testing.assert_array_equal(yx[..., 1], np.take_along_axis(steps, want, 1))
    assert run.layer_attrs("head")["layout"] == "(T, N, features) → (N, features, T)"


def test_a_time_first_linear_is_ablated_per_image(tmp_path, net_and_data):
    net, x = net_and_data
    run = sketchmine.mine(net, Drawings(x), layers=["head"], out=tmp_path / "r.zarr", batch_size=5)
    sketchmine.unit_effects(run, "head", model=net, data=Drawings(x), batch_size=5, units_per_pass=2)
    with torch.no_grad():
        clean = net(x)
        for unit in range(3):
            zeroed = clean.clone()
            zeroed[:, unit] = 0  # the head's unit u is the logit u at the last step
            want = (zeroed - clean).double().mean(0)
            got = run.store.read("layers/head/effects/logit_delta")[unit]
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


class Windows(nn.Module):
    """A Linear on the tokens of windows folded into the batch (Swin, MobileViT): (N*4, 4, F)
    for N images, 4 windows of 4 tokens each."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 7, stride=7)  # 28 px → a 4×4 grid
        self.qkv = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = self.conv(x).view(n, 6, 2, 2, 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(n * 4, 4, 6)  # (N*4, 4, 6)
        return self.head(self.qkv(y).view(n, 16, 5).mean(1))


@pytest.mark.parametrize("batch_size", [4, 5])
def test_windows_folded_into_the_batch_are_not_read_as_time_first_when_a_batch_has_as_many_images_as_tokens(
        tmp_path, batch_size):
    """With 4 images a batch, (N*4, 4, F) looked like (T, N, F) to a rule made per batch: its tokens
    were credited as images (2-6 % of the image indices right). The one-image probe decides."""
    from tests.helpers import brute_topk

    torch.manual_seed(0)
    net = Windows().eval()
    x = torch.rand(20, 1, 28, 28)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(20, dtype=torch.long))
    run = sketchmine.mine(net, ds, layers=["qkv"], k=3, out=tmp_path / "r.zarr", batch_size=batch_size, logits=False)
    got: list[torch.Tensor] = []
    handle = net.qkv.register_forward_hook(lambda m, i, o: got.append(o.detach()))
    with torch.inference_mode():
        net(x)
    handle.remove()
    per_image = got[0].unflatten(0, (20, 4)).flatten(1, 2).movedim(2, 1)  # (N, 5 units, 16 tokens)
    values, index, _ = run.topk("qkv")
    want_values, want_index, _ = brute_topk(per_image, 3)
    assert np.array_equal(index, want_index) and np.allclose(values, want_values, rtol=1e-6)


def test_a_time_first_linear_of_one_step_is_read_per_image(tmp_path, net_and_data):
    """One step: the probe's (1, 1, F) tells neither reading, and a batch's (1, N, F) was then read
    as a batch of one (a raw "image_index must be (N,)" error)."""
    net, x = net_and_data
    one = x[:, :1].contiguous()
    run = sketchmine.mine(net, Drawings(one), layers=["head"], k=3, out=tmp_path / "r.zarr", batch_size=5)
    with torch.no_grad():
        per_image = torch.cat([net.steps(one[i:i + 5])[0] for i in range(0, N, 5)])  # (N, 3)
    want = np.argsort(-per_image.T.numpy(), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(run.topk("head")[1], want)
