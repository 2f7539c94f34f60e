"""The compiled distribution kernels (csrc/cpu/distribution.cpp) against their pure-torch
references (`add_reference` of RunningHistogram, QuantileSketch, QuantileExamples): the whole
state bit for bit after several hypothesis batches (random widths and batch sizes, magnitudes
from 1e-30 to 1e30 so the grids and sketch tops move, ties, NaN, ±0, ±inf, float16 / bfloat16 /
float32 inputs, strided maxima); the bottom-k kernel against `BottomK.update_reference` on maps
of every rank (FC, 1-D, 2-D) with all-NaN maps; the CUDA kernels against the CPU ones (on a GPU
only); and the kernels refuse state that does not fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sketchmine import _C as sketchmine_C
from sketchmine.stats import ops
from sketchmine.stats.accumulators import Batch
from sketchmine.stats.bottomk import BottomK
from sketchmine.stats.examples import QuantileExamples
from sketchmine.stats.histogram import RunningHistogram
from sketchmine.stats.sketch import QuantileSketch

SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, 0.5, 1e-3, -7.0, 1e30, -1e-30, 3e-39, 65504.0, 1.5, 1.5 + 2 ** -22,
           math.inf, -math.inf, math.nan]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CLASSES = (RunningHistogram, QuantileSketch, QuantileExamples)


def batches_of(width: int) -> st.SearchStrategy:
    values = st.one_of(st.sampled_from(SPECIAL), st.floats(-1e6, 1e6, width=32),
                       st.floats(-2.0 ** -10, 2.0 ** -10, width=32), st.integers(-3, 3).map(float))
    return st.lists(st.integers(1, 12).flatmap(lambda n: arrays(np.float32, (n, width), elements=values)),
                    min_size=1, max_size=5)


cases = st.tuples(st.integers(1, 6), st.sampled_from(sorted(DTYPES)), st.booleans(), st.integers(1, 4)).flatmap(
    lambda t: st.tuples(st.just(t), batches_of(t[0])))


def feed(acc, how: str, layer: str, x: torch.Tensor, ids: torch.Tensor) -> None:
    add = getattr(acc, how)
    if isinstance(acc, QuantileExamples):
        add(layer, x, ids)
    else:
        add(layer, x)


@settings(max_examples=80, deadline=None)
@given(case=cases)
def test_compiled_equals_reference(case):
    (width, dtype, strided, m), parts = case
    layers = {"first": 2, "mined": width}
    made = [(cls(layers), cls(layers)) for cls in CLASSES]
    made[2] = (QuantileExamples(layers, m=m), QuantileExamples(layers, m=m))  # any picks per bin
    start = 0
    for part in parts:
        x = torch.from_numpy(part).to(DTYPES[dtype])
        # the kernels read any strides: a transposed view (the reference wants contiguous maxima)
        fast_x = x.t().contiguous().t() if strided else x
        ids = torch.arange(start, start + len(x)) * 5 + 1
        start += len(x)
        for fast, ref in made:
            feed(fast, "add", "mined", fast_x, ids)
            feed(ref, "add_reference", "mined", x, ids)
    for fast, ref in made:
        got, want = fast.state(), ref.state()
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{type(fast).__name__} {key}")
        np.testing.assert_equal(fast.results(), ref.results())


def test_the_compiled_path_is_the_one_taken_on_the_cpu():
    x = torch.tensor([[1.0, -2.0], [3.0, math.nan]])
    h = RunningHistogram({"l": 2})
    h.add("l", x)
    assert ops.compiled_here(h.counts)
    assert h.counts.sum().item() == 3 and h.grid.hi.tolist() == [3.0, -2.0]


def test_state_that_does_not_fit_is_refused():
    x = torch.ones(4, 3)
    lo, hi = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    e = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="histogram_update: maxima have 3 units, the state 2"):
        ops.histogram_update(x, lo[:2], hi[:2], e[:2], torch.zeros(2, 64, dtype=torch.int64),
                             torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="sketch_update: a state tensor must be contiguous Int"):
        ops.sketch_update(x, torch.zeros(3, 2, 512, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64),
                          torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"examples_update: image indices must lie in \[0, 2\^40\)"):
        ops.examples_update(x, torch.tensor([0, 1, -2, 3]), lo, hi, e, torch.zeros(3, 19, 8, dtype=torch.int64),
                            torch.zeros(3, 19, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="image indices must lie"):
        QuantileExamples({"l": 3}).add("l", x, torch.tensor([0, 1, 2, 1 << 41]))


def test_opcheck():
    x = torch.tensor([[1.0, -2.0, 0.5], [3.0, math.nan, math.inf]])
    h = RunningHistogram({"l": 3})
    torch.library.opcheck(torch.ops.sketchmine.histogram_update.default,
                          (x, h.grid.lo, h.grid.hi, h.grid.e, h.counts, h.inf))
    s = QuantileSketch({"l": 3})
    torch.library.opcheck(torch.ops.sketchmine.sketch_update.default, (x, s.counts, s.top, s.special))
    q = QuantileExamples({"l": 3})
    torch.library.opcheck(torch.ops.sketchmine.examples_update.default,
                          (x, torch.tensor([4, 9]), q.grid.lo, q.grid.hi, q.grid.e, q.hashes, q.index))


maps_cases = st.tuples(st.integers(1, 5), st.integers(1, 4), st.sampled_from([(), (1,), (3,), (2, 3)])).flatmap(
    lambda t: st.tuples(st.just(t), st.lists(st.integers(1, 10).flatmap(lambda n: arrays(
        np.float32, (n, t[0], *t[2]), elements=st.one_of(st.sampled_from(SPECIAL), st.integers(-3, 3).map(float),
                                                          st.floats(-1e6, 1e6, width=32)))), min_size=1, max_size=4)))


@settings(max_examples=80, deadline=None)
@given(case=maps_cases)
def test_bottomk_compiled_equals_reference(case):
    (width, k, spatial), parts = case
    shape = [("mined", width, spatial)]
    fast, ref = BottomK(shape, k), BottomK(shape, k)
    start = 0
    for part in parts:
        acts = torch.from_numpy(part)
        if spatial:
            acts[::3, :1] = math.nan  # all-NaN maps: NaN maxima, counted and never ranked
        ids = torch.arange(start, start + len(acts)) * 3 + 2
        start += len(acts)
        maxima = ops.spatial_max_reference(acts)[0]
        maxima = maxima.masked_fill(torch.isnan(acts.reshape(len(acts), width, -1)).all(2), math.nan)
        fast.update("mined", acts, Batch(ids, torch.full_like(ids, -1), acts, maxima={"mined": maxima}))
        ref.update_reference("mined", acts, maxima, ids)
    got, want = fast.state(), ref.state()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_equal(fast.results(), ref.results())


@pytest.mark.skipif(not (torch.cuda.is_available() and getattr(sketchmine_C, "with_cuda", False)),
                    reason="needs a GPU and the CUDA build")
def test_cuda_kernels_equal_the_cpu_kernels():
    """The CUDA kernels (a thread per unit, distribution_common.h) give the CPU kernels' bits."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 7, 3, generator=g) * 10.0 ** torch.randint(-5, 5, (50, 7, 1), generator=g)
    x[::7, 2] = math.nan
    x[3, 4, :], x[5, 1, :] = math.inf, -math.inf
    maxima = x.amax(2).contiguous()
    ids = torch.arange(50) * 11 + 4
    states = {}
    for device in ("cpu", "cuda"):
        h, s, q = RunningHistogram({"l": 7}, device), QuantileSketch({"l": 7}, device), QuantileExamples({"l": 7}, device)
        b = BottomK([("l", 7, (3,))], 4, device)
        for part in (slice(0, 20), slice(20, 50)):
            m, xi, i = maxima[part].to(device), x[part].to(device).contiguous(), ids[part].to(device)
            ops.histogram_update(m, h.grid.lo, h.grid.hi, h.grid.e, h.counts, h.inf)
            ops.sketch_update(m, s.counts, s.top, s.special)
            ops.examples_update(m, i, q.grid.lo, q.grid.hi, q.grid.e, q.hashes, q.index)
            ops.bottomk_update(m, xi, i, **b.layers["l"].state)
        states[device] = [a.state() for a in (h, s, q, b)]
    for got, want in zip(states["cuda"], states["cpu"]):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _many_unit_states(device: str) -> list[dict[str, np.ndarray]]:
    """Each distribution kernel on `device` over 300 units (three blocks of the CUDA kernels' 128
    threads, the last partial) of a second layer, so every state pointer starts past the first
    layer's; maxima in a transposed (strided) view; batches of 1 to 70 images."""
    g = torch.Generator().manual_seed(4)
    layers, width = {"first": 3, "mined": 300}, 300
    h, s = RunningHistogram(layers, device), QuantileSketch(layers, device)
    q = QuantileExamples(layers, device, m=3)
    b = BottomK([("first", 3, (4, 5)), ("mined", width, (4, 5))], 5, device)
    cols, start = h._columns["mined"], 0
    for n in (1, 70, 33):
        acts = torch.randn(n, width, 4, 5, generator=g) * 10.0 ** torch.randint(-8, 8, (1, width, 1, 1), generator=g)
        acts[::4, ::7] = math.nan  # all-NaN maps
        acts[1::5, 3::11] = math.inf
        acts[2::5, 5::13] = -math.inf
        acts[:, 8::17] = torch.randint(-2, 2, (n, len(range(8, width, 17)), 4, 5), generator=g).float()  # ties
        maxima = ops.spatial_max_reference(acts)[0].masked_fill(torch.isnan(acts).flatten(2).all(2), math.nan)
        m = maxima.t().contiguous().t().to(device)  # strided on the device
        ids = (torch.arange(start, start + n) * 7 + 3).to(device)
        start += n
        ops.histogram_update(m, h.grid.lo[cols], h.grid.hi[cols], h.grid.e[cols], h.counts[cols], h.inf[cols])
        ops.sketch_update(m, s.counts[cols], s.top[cols], s.special[cols])
        ops.examples_update(m, ids, q.grid.lo[cols], q.grid.hi[cols], q.grid.e[cols], q.hashes[cols], q.index[cols])
        ops.bottomk_update(m, acts.flatten(2).to(device), ids, **b.layers["mined"].state)
    return [a.state() for a in (h, s, q, b)]


@pytest.mark.skipif(not (torch.cuda.is_available() and getattr(sketchmine_C, "with_cuda", False)),
                    reason="needs a GPU and the CUDA build")
def test_cuda_kernels_equal_the_cpu_kernels_over_many_units():
    """Several CUDA blocks, state slices at an offset, strided maxima: the CPU kernels' bits."""
    for got, want in zip(_many_unit_states("cuda"), _many_unit_states("cpu")):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
