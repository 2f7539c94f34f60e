"""The compiled normalisation (csrc/cpu/normalise.cpp) against torch's `(x - mean) / std`:
the same floats on random batches (NaN and infinities among them), any channel count, a grey
plane repeated by a zero stride, any numbers; and the preprocessing's use of it."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sketchmine.data import preset
from sketchmine.data.preprocess import Preprocessing


@st.composite
def batches(draw):
    n, channels = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 23)), draw(st.integers(1, 23))
    grey = channels > 1 and draw(st.booleans())  # one plane, repeated to every channel
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.rand(n, 1 if grey else channels, h, w, generator=g) * draw(st.sampled_from([1.0, 255.0, 1e-3]))
    if draw(st.booleans()):
        flat = x.view(-1)
        for value in (math.nan, math.inf, -math.inf):
            flat[draw(st.integers(0, flat.numel() - 1))] = value
    mean = tuple(draw(st.floats(-2.0, 2.0)) for _ in range(channels))
    std = tuple(draw(st.floats(1e-3, 4.0)) * draw(st.sampled_from([1, -1])) for _ in range(channels))
    return (x.expand(-1, channels, -1, -1) if grey else x), mean, std


def reference(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@settings(max_examples=300, deadline=None)
@given(case=batches())
def test_compiled_normalisation_equals_torchs(case):
    x, mean, std = case
    plane = x[:, :1] if x.stride(1) == 0 and x.shape[1] > 1 else x
    got = torch.ops.sketchmine.normalise(plane, list(mean), list(std), len(mean))
    want = reference(x, mean, std)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@settings(max_examples=100, deadline=None)
@given(case=batches().filter(lambda case: len(case[1]) in (1, 3)))  # a Preprocessing makes grey or RGB input
def test_the_preprocessing_normalises_with_it_alike(case):
    x, mean, std = case
    pre = Preprocessing("dataset", len(mean), None, mean, std)
    torch.testing.assert_close(pre.normalise(x), reference(x, mean, std), rtol=0, atol=0, equal_nan=True)


def test_a_wrong_channel_count_is_refused():
    pre = preset("imagenet", 3, None)
    with pytest.raises(RuntimeError, match=r"x has 2 channel\(s\); expected 3 or 1"):
        torch.ops.sketchmine.normalise(torch.rand(1, 2, 4, 4), list(pre.mean), list(pre.std), 3)
    with pytest.raises(RuntimeError, match="2 means and 2 stds for 3 channels"):
        torch.ops.sketchmine.normalise(torch.rand(1, 3, 4, 4), [0.5, 0.5], [0.2, 0.2], 3)


def test_a_tensor_that_needs_a_gradient_gets_one():
    pre = preset("imagenet", 3, None)
    x = torch.rand(2, 3, 5, 5, requires_grad=True)
    pre.normalise(x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (1 / torch.tensor(pre.std)).view(3, 1, 1).expand(2, 3, 5, 5))
