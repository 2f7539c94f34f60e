"""The compiled topk_update against its pure-torch reference: random shapes, dtypes,
k = 1 and k > N, heavy ties, NaN and ±inf, many batches; CPU and (when present) CUDA."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sketchmine import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@st.composite
def batches(draw):
    """A sequence of activation batches with unique global image ids and tie-prone values."""
    c = draw(st.integers(1, 6))
    # long rows exercise the blocked (64-wide) scan, short ones its tail path
    spatial = draw(st.sampled_from([(), (1,), (5,), (1, 1), (3, 4), (7, 5), (64,), (9, 13), (11, 12), (200,)]))
    k = draw(st.integers(1, 12))
    n_batches = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    sizes = [draw(st.integers(0, 9)) for _ in range(n_batches)]
    ids = torch.randperm(sum(sizes) + 5, generator=g)[: sum(sizes)]  # unique, unordered ids
    levels = draw(st.integers(2, 50))  # few levels → many ties
    p_nan = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    out, start = [], 0
    for n in sizes:
        x = (torch.randint(-levels, levels, (n, c, *spatial), generator=g).float() / 4).to(dtype)
        mask = torch.rand(x.shape, generator=g) < p_nan
        x = x.masked_fill(mask, float("nan"))
        if draw(st.booleans()):
            x = x.masked_fill(torch.rand(x.shape, generator=g) < 0.05, float("-inf"))
            x = x.masked_fill(torch.rand(x.shape, generator=g) < 0.05, float("inf"))
        out.append((x, ids[start:start + n].clone()))
        start += n
    return c, k, out


@pytest.mark.parametrize("device", DEVICES)
@given(case=batches())
def test_compiled_equals_reference(device, case):
    c, k, seq = case
    got, want = ops.new_state(c, k, device), ops.new_state(c, k, "cpu")
    for x, ids in seq:
        ops.topk_update(x.to(device), ids.to(device), **got)
        ops.topk_update_reference(x, ids, **want)
    for key in got:
        assert torch.equal(got[key].cpu(), want[key]), key


@pytest.mark.parametrize("device", DEVICES)
@given(case=batches(), cut=st.integers(0, 40))
def test_split_invariance(device, case, cut):
    """One batch or the same images in two batches, in either order: identical state."""
    c, k, seq = case
    xs = [x for x, _ in seq]
    x, ids = torch.cat(xs), torch.cat([i for _, i in seq])
    whole = ops.new_state(c, k, device)
    ops.topk_update(x.to(device), ids.to(device), **whole)
    cut = min(cut, len(x))
    parts = ops.new_state(c, k, device)
    for lo, hi in ((cut, len(x)), (0, cut)):
        ops.topk_update(x[lo:hi].to(device), ids[lo:hi].to(device), **parts)
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key


def test_semantics_by_hand():
    """A worked example: max, first argmax, tie on value broken by image index, NaN counted."""
    nan = float("nan")
    x = torch.tensor([
        [[[1.0, 3.0], [3.0, 0.5]]],   # image 7: max 3 at flat 1 (first of two)
        [[[nan, 2.0], [nan, 3.0]]],   # image 2: max 3 at flat 3, 2 NaNs
        [[[nan, nan], [nan, nan]]],   # image 5: all NaN → no entry
    ])
    st_ = ops.new_state(1, 4)
    ops.topk_update(x, torch.tensor([7, 2, 5]), **st_)
    assert st_["values"].tolist() == [[3.0, 3.0, float("-inf"), float("-inf")]]
    assert st_["index"].tolist() == [[2, 7, -1, -1]]
    assert st_["position"].tolist() == [[3, 1, -1, -1]]
    assert st_["nan_count"].tolist() == [6]


def test_channels_last_and_non_contiguous():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, 4, 3, generator=g)
    ids = torch.arange(10, 16)
    a, b, c = ops.new_state(5, 3), ops.new_state(5, 3), ops.new_state(5, 3)
    ops.topk_update(x, ids, **a)
    ops.topk_update(x.to(memory_format=torch.channels_last), ids, **b)
    big = torch.randn(6, 10, 4, 3, generator=g)
    big[:, ::2] = x
    ops.topk_update(big[:, ::2], ids, **c)
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])


def test_bad_arguments_are_rejected():
    s = ops.new_state(3, 2)
    with pytest.raises(RuntimeError, match="values must be"):
        ops.topk_update(torch.randn(2, 4, 3), torch.arange(2), **s)
    with pytest.raises(RuntimeError, match="image_index must be"):
        ops.topk_update(torch.randn(2, 3, 3), torch.arange(3), **s)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        ops.topk_update(torch.randint(0, 5, (2, 3, 3)), torch.arange(2), **s)


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g)
    s = ops.new_state(3, 2)
    torch.library.opcheck(torch.ops.sketchmine.topk_update.default,
                          (x, torch.arange(4), s["values"], s["index"], s["position"], s["nan_count"]))
