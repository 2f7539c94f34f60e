"""The compiled per-batch sums over the image maxima (csrc/cpu/maxima_sums.cpp) against the torch
paths they replaced, bit for bit: random shapes, ties, NaN, ±inf, -0.0, strided maxima, many
batches; and the thread-split paths of these kernels and of topk_update (csrc/grain.h) on work
large enough to split."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sketchmine.stats import ops
from sketchmine.stats.moments import RunningMoments


def _maxima(g: torch.Generator, n: int, c: int, p_nan: float, levels: int) -> torch.Tensor:
    x = torch.randint(-levels, levels, (n, c), generator=g).float() / 3
    x = x.masked_fill(torch.rand(x.shape, generator=g) < p_nan, float("nan"))
    x = x.masked_fill(torch.rand(x.shape, generator=g) < 0.03, float("inf"))
    x = x.masked_fill(torch.rand(x.shape, generator=g) < 0.03, float("-inf"))
    return x.masked_fill(torch.rand(x.shape, generator=g) < 0.05, -0.0)


@st.composite
def streams(draw):
    c = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    p_nan, levels = draw(st.sampled_from([0.0, 0.1, 0.9])), draw(st.integers(1, 1000))
    batches = [_maxima(g, draw(st.integers(0, 9)), c, p_nan, levels) for _ in range(draw(st.integers(1, 4)))]
    if draw(st.booleans()):  # strided: a (C, N) tensor seen transposed
        batches = [b.T.contiguous().T for b in batches]
    return c, batches, g


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().view(torch.int64).numpy()


def _moments_equal(c: int, batches: list[torch.Tensor]) -> None:
    kernel, reference = RunningMoments({"a": 3, "l": c}), RunningMoments({"a": 3, "l": c})
    for b in batches:
        kernel.add("l", b)
        reference.add_reference("l", b)
    np.testing.assert_array_equal(_bits(kernel._sum), _bits(reference._sum))
    assert torch.equal(kernel._count, reference._count) and torch.equal(kernel._firing, reference._firing)


@given(case=streams())
def test_moments_kernel_equals_the_torch_path(case):
    c, batches, _ = case
    _moments_equal(c, batches)


def _class_sums_equal(c: int, batches: list[torch.Tensor], g: torch.Generator, rows_n: int = 4) -> None:
    table = torch.randn(rows_n, c + 7, generator=g, dtype=torch.float64)  # not zeros: adds onto real sums
    kernel, reference = table.clone(), table.clone()
    for b in batches:
        rows = torch.randint(0, rows_n, (len(b),), generator=g)
        nans = ops.class_sums_update(b, rows, kernel[:, 2:2 + c])  # a column slice, as the class table's
        assert nans == int(torch.isnan(b).sum())
        m = b.double()
        reference[:, 2:2 + c].index_add_(0, rows, m.masked_fill(torch.isnan(m), 0.0))
    np.testing.assert_array_equal(_bits(kernel), _bits(reference))


@given(case=streams())
def test_class_sums_kernel_equals_index_add(case):
    _class_sums_equal(*case)


def test_large_batches_split_across_threads_alike():
    """Work above the grain (2^18 entries per task) splits; the result is the same. Two threads
    whatever the suite runs with (pytest-xdist workers get one each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _split_alike()
    finally:
        torch.set_num_threads(threads)


def _split_alike() -> None:
    g = torch.Generator().manual_seed(7)
    batches = [_maxima(g, 64, 20_000, 0.01, 500) for _ in range(2)]
    _moments_equal(20_000, batches)
    _class_sums_equal(20_000, batches, g, rows_n=11)
    for shape in [(64, 10_000), (64, 256, 13, 13)]:  # an FC layer, a spatial layer (both phases split)
        state, ref = ops.new_state(shape[1], 9), ops.new_state(shape[1], 9)
        for start in (0, 64):
            x = torch.randint(-40, 40, shape, generator=g).float()
            x = x.masked_fill(torch.rand(shape, generator=g) < 0.01, float("nan"))
            ids = torch.arange(start, start + 64)
            got = ops.topk_update(x, ids, **state)
            want = ops.topk_update_reference(x, ids, **ref)
            np.testing.assert_array_equal(got.numpy(), want.numpy())
        for key in state:
            assert torch.equal(state[key], ref[key]), key


def test_bad_arguments_are_rejected():
    m, rows = torch.rand(3, 5), torch.tensor([0, 1, 4])
    with pytest.raises(RuntimeError, match="outside"):
        ops.class_sums_update(m, rows, torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float64"):
        ops.class_sums_update(m, rows.clamp_max(1), torch.zeros(4, 5))
    with pytest.raises(RuntimeError, match="float32"):
        ops.moments_update(m.double(), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.int64),
                           torch.zeros(5, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.moments_update(m, torch.zeros(5, 2, dtype=torch.float64)[:, 0], torch.zeros(5, dtype=torch.int64),
                           torch.zeros(5, dtype=torch.int64))
