"""The compiled topk_update against its pure-torch reference: random shapes, dtypes,
k = 1 and k > N, heavy ties, NaN and ±inf, many batches; CPU and (when present) CUDA."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sketchmine.stats import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@st.composite
def batches(draw):
    """A sequence of activation batches with unique global image ids and tie-prone values."""
    c = draw(st.integers(1, 21))  # from 8 channels, rows without a grid take the 8-wide compare and its tail
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
        got_max = ops.topk_update(x.to(device), ids.to(device), **got)
        want_max = ops.topk_update_reference(x, ids, **want)
        # the returned image maxima (the class statistics' input): equal, NaN where all NaN
        assert got_max.dtype == torch.float32 and got_max.shape == x.shape[:2]
        torch.testing.assert_close(got_max.cpu(), want_max, rtol=0, atol=0, equal_nan=True)
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


@pytest.mark.parametrize("device", DEVICES)
def test_wide_rows_without_grid(device):
    """FC-like rows wider than one parallel task (grain.h: 4,096 channels for 64 images), so a
    task's channel block starts off a multiple of 8: ties, NaN and ±inf over several batches."""
    g = torch.Generator().manual_seed(7)
    c, k = 10_003, 5
    got, want = ops.new_state(c, k, device), ops.new_state(c, k, "cpu")
    for b in range(4):
        x = torch.randint(-6, 6, (64, c), generator=g).float() / 2
        x[torch.rand(x.shape, generator=g) < 0.02] = float("nan")
        x[torch.rand(x.shape, generator=g) < 0.01] = float("inf")
        x[torch.rand(x.shape, generator=g) < 0.01] = float("-inf")
        x[:, 17] = float("nan")  # a unit that never sees a number
        ids = torch.arange(64) * 4 + (3 - b)  # interleaved, not increasing across batches
        got_max = ops.topk_update(x.to(device), ids.to(device), **got)
        want_max = ops.topk_update_reference(x, ids, **want)
        torch.testing.assert_close(got_max.cpu(), want_max, rtol=0, atol=0, equal_nan=True)
    for key in got:
        assert torch.equal(got[key].cpu(), want[key]), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 0, 5), (4, 0), (4, 0, 2, 3)])
def test_no_channels_give_empty_maxima(device, shape):
    """A layer without channels: (N, 0) maxima, the (0, k) state untouched (the CUDA kernel
    launched a grid of 0 blocks, a launch error, before the early return covered C == 0)."""
    state = ops.new_state(0, 3, device)
    maxima = ops.topk_update(torch.randn(shape, device=device), torch.arange(4, device=device), **state)
    assert maxima.shape == (4, 0) and maxima.dtype == torch.float32 and maxima.device.type == device
    assert all(t.numel() == 0 for t in state.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 8, 100])
def test_many_images_in_every_layout_equal_the_reference(device, dtype, k):
    """More images than a warp's 32 (the CUDA merge takes them 32 at a time, the last chunk
    partial), maps longer than 32 (a lane scans several elements) and shorter, in the layouts
    the miner hands over (channels_last, a channel slice, an expanded map, a batch slice):
    the reference's state and maxima, the sign of a zero maximum included."""
    g = torch.Generator().manual_seed(11)
    for spatial in ((6, 7), (3,), ()):
        big = (torch.randint(-4, 4, (140, 10, *spatial), generator=g).float() / 2).to(dtype)
        big[torch.rand(big.shape, generator=g) < 0.05] = float("nan")
        big[torch.rand(big.shape, generator=g) < 0.03] = float("-inf")
        big[torch.rand(big.shape, generator=g) < 0.2] = -0.0
        big[::9, 3] = float("nan")  # all-NaN maps
        big[5::11, 4] = float("-inf")  # maps of -inf only
        ids = torch.randperm(1000, generator=g)[:70]

        def layouts(t):  # made on the device itself: .to() would copy a strided view contiguous
            x = t[::2, ::2]  # (70, 5, ...): a batch slice of a channel slice
            out = [x, x.contiguous()]
            if len(spatial) == 2:
                out += [x.contiguous(memory_format=torch.channels_last), x[:, :, :1, :1].expand_as(x)]
            return out

        for acts, on_device in zip(layouts(big), layouts(big.to(device))):
            want = ops.new_state(5, k)
            want_max = ops.topk_update_reference(acts, ids, **want)
            got = ops.new_state(5, k, device)
            for part in (slice(0, 33), slice(33, 70)):  # two batches, the second of 37 images
                got_max = ops.topk_update(on_device[part], ids[part].to(device), **got)
                torch.testing.assert_close(got_max.cpu(), want_max[part], rtol=0, atol=0, equal_nan=True)
                number = ~torch.isnan(want_max[part])
                assert torch.equal(torch.signbit(got_max.cpu()[number]), torch.signbit(want_max[part][number]))
            for key in got:
                assert torch.equal(got[key].cpu(), want[key]), key
            assert torch.equal(torch.signbit(got["values"].cpu()), torch.signbit(want["values"]))


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


@st.composite
def crops(draw):
    """Random images (any dtype, NaN in floats), patch sizes and corners, inside, across and
    beyond the borders and corners."""
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    ph, pw = draw(st.integers(1, 15)), draw(st.integers(1, 15))
    dtype = draw(st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.bfloat16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    else:
        images = torch.randn(b, c, h, w, generator=g).to(dtype)
        images[torch.rand(images.shape, generator=g) < 0.1] = float("nan")
    m = draw(st.integers(0, 8))
    tops = torch.randint(-ph - 2, h + 2, (m,), generator=g)
    lefts = torch.randint(-pw - 2, w + 2, (m,), generator=g)
    index = torch.randint(0, b, (m,), generator=g)
    fill = draw(st.sampled_from([0.0, 7.0]))
    return images, index, torch.stack([tops, lefts], 1), ph, pw, fill


@pytest.mark.parametrize("device", DEVICES)
@given(case=crops())
def test_crop_patches_equals_reference(device, case):
    images, index, corners, ph, pw, fill = case
    got = ops.crop_patches(images.to(device), index.to(device), corners.to(device), ph, pw, fill).cpu()
    want = ops.crop_patches_reference(images, index, corners, ph, pw, fill)
    assert got.dtype == images.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_crop_patches_borders_and_clip_record():
    img = torch.arange(1, 26, dtype=torch.uint8).view(1, 1, 5, 5)  # 1..25, row-major
    corners = torch.tensor([[-1, -1], [3, 3], [1, 1], [9, 9]])
    p = ops.crop_patches(img, torch.zeros(4, dtype=torch.long), corners, 3, 3)
    assert p[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 6, 7]]          # top-left corner
    assert p[1, 0].tolist() == [[19, 20, 0], [24, 25, 0], [0, 0, 0]]     # bottom-right corner
    assert p[2, 0].tolist() == [[7, 8, 9], [12, 13, 14], [17, 18, 19]]   # inside
    assert (p[3] == 0).all()                                             # beyond the image
    assert ops.clip_boxes(corners, 3, 3, (5, 5)).tolist() == [[0, 0, 1, 1], [3, 3, 4, 4], [1, 1, 3, 3],
                                                               [-1, -1, -1, -1]]


@pytest.mark.parametrize("device", DEVICES)
def test_crop_patches_rejects_bad_index_and_opcheck(device):
    """An index outside the batch is refused on every device (the CUDA kernel read outside the
    images: its check ran for CPU tensors only)."""
    img = torch.rand(2, 3, 6, 6, device=device)
    corner = torch.tensor([[0, 0]], device=device)
    for bad in (2, -1):
        with pytest.raises(RuntimeError, match=r"image_index must lie in \[0, 2\)"):
            ops.crop_patches(img, torch.tensor([bad], device=device), corner, 2, 2)
    with pytest.raises(RuntimeError, match=r"image_index must lie in \[0, 0\)"):
        ops.crop_patches(img[:0], torch.tensor([0], device=device), corner, 2, 2)
    img = img.cpu()
    torch.library.opcheck(torch.ops.sketchmine.crop_patches.default,
                          (img, torch.tensor([1, 0]), torch.tensor([[-1, 2], [4, 4]]), 3, 3, 0.0))
