"""The compiled ink density (csrc/cpu/ink_density.cpp) against its torch reference
(ink.ink_density(gray_levels(...))): equal, per image, on random batches near the
threshold, with border ties, NaN, any channel count and normalisation."""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sketchmine.stats import ops
from sketchmine.stats.ink import INK_THRESHOLD, gray_levels, gray_terms, ink_density


@st.composite
def batches(draw):
    n, ch = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(3, 19)), draw(st.integers(3, 19))
    seed = draw(st.integers(0, 2**31 - 1))
    normalised = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    # gray levels in a few steps of 1/8 (ties on the border, pixels exactly at the threshold),
    # jittered by a few ulps in half the batches
    levels = torch.randint(0, 9, (n, ch, h, w), generator=g).float() / 8
    if draw(st.booleans()):
        levels += torch.randn(n, ch, h, w, generator=g) * 1e-6
    mean = tuple(draw(st.floats(0.0, 1.0, width=32)) for _ in range(ch)) if normalised else ()
    std = tuple(draw(st.floats(0.0625, 2.0, width=32)) for _ in range(ch)) if normalised else ()
    x = levels if not normalised else (levels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    if draw(st.booleans()):
        x[0, 0, draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = math.nan
    return x.contiguous(), mean, std


@settings(max_examples=300, deadline=None)
@given(case=batches())
def test_compiled_ink_density_equals_the_reference(case):
    x, mean, std = case
    scale, offset = gray_terms(x.shape[1], mean, std)
    got = ops.ink_density(x, scale, offset, INK_THRESHOLD)
    want = ink_density(gray_levels(x, mean, std))
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_real_sketch_batch_and_strided_input():
    """The embedded images at 224 px, ImageNet normalisation, read through a channels-last view."""
    from sketchmine import data

    ds = data.animal_shape("test", data.preset("imagenet", 3, (224, 224)))
    x = torch.stack([ds[i][1] for i in range(8)])
    pre = ds.preprocessing
    scale, offset = gray_terms(3, pre.mean, pre.std)
    want = ink_density(gray_levels(x, pre.mean, pre.std))
    assert 0.02 < float(want.mean()) < 0.9  # silhouettes: some ink, not all
    for view in (x, x.contiguous(memory_format=torch.channels_last)):
        np.testing.assert_array_equal(ops.ink_density(view, scale, offset, INK_THRESHOLD).numpy(), want.numpy())


def test_bad_input_is_refused():
    import pytest

    with pytest.raises(RuntimeError, match="at least 3x3"):
        ops.ink_density(torch.rand(1, 1, 2, 5), [1.0], None, 0.5)
    with pytest.raises(RuntimeError, match="channel scales"):
        ops.ink_density(torch.rand(1, 3, 4, 4), [1.0], None, 0.5)


def test_tensors_of_unknown_scale_get_no_ink_density(tmp_path):
    """A torch Dataset's float tensors are fed as they are and the run records no normalisation:
    ink (a gray difference of 0.5, half the [0, 1] range) is measured only on [0, 1] pixels. The
    same images normalised (values outside [0, 1]) get NaN, not a threshold in normalised units
    (which read about 0.1 more ink per class on the embedded set), and no ink correlation."""
    import sketchmine
    from torch.utils.data import TensorDataset

    raw = sketchmine.data.animal_shape("test")
    keep = np.arange(0, 2000, 20)
    pixels = torch.from_numpy(raw.images[keep]).float().div(255).unsqueeze(1)
    labels = torch.from_numpy(raw.labels()[keep])
    want = sketchmine.mine("demo-resnet", raw.subset(keep), out=tmp_path / "a.zarr").dataset_array("class_ink_density")
    pre = sketchmine.preprocessing_for("demo-resnet")
    for name, x in (("pixels", pixels), ("normalised", (pixels - pre.mean[0]) / pre.std[0])):
        ds = TensorDataset(x, labels)
        ds.classes = list(raw.class_names)
        run = sketchmine.mine("demo-resnet", ds, layers=["conv1"], out=tmp_path / f"{name}.zarr")
        assert run.attrs["preprocessing"] is None and run.class_sizes().sum() == len(keep)
        ink = run.dataset_array("class_ink_density")
        if name == "pixels":
            np.testing.assert_allclose(ink, want, rtol=1e-12)
        else:
            assert np.isnan(ink).all(), ink
            assert run.ink_correlation()["spearman"].isna().all()


def test_unit_range_ignores_nan_but_not_a_value_beside_it():
    """`unit_range` (which images are [0, 1] pixels) takes a min/max pass, in which NaN hides
    every other value of its image: such images are looked at element by element, so a NaN
    pixel alone keeps an image measured (ink_density counts it) and a NaN beside a value out of
    range does not. Equal to the element-wise rule on every image."""
    from sketchmine.stats.ink import unit_range

    g = torch.Generator().manual_seed(7)
    x = torch.rand(12, 3, 9, 9, generator=g)
    x[1, 0, 2, 3] = float("nan")                                 # NaN alone: pixels
    x[2, 1, 0, 0], x[2, 2, 8, 8] = float("nan"), -0.25           # NaN beside a negative value
    x[3, 0, 4, 4], x[3, 2, 1, 1] = 1.5, float("nan")             # NaN beside a value over 1
    x[4, 2, 5, 5] = 1.0 + 2 ** -23                               # just over 1
    x[5, 0, 0, 0] = -0.0                                         # a zero's sign is no scale
    x[6] = x[6] * 255                                            # 0-255 values
    x[7] = float("nan")                                          # all NaN
    want = ~((x < 0) | (x > 1)).flatten(1).any(1)
    got = unit_range(x)
    assert got.tolist() == want.tolist()
    assert got.tolist() == [True, True, False, False, False, True, False, True, True, True, True, True]
