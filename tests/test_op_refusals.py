"""The compiled ops refuse what would make them write out of bounds, drop an image or convert
with undefined behaviour, and give one result for one set of activations whatever their
layout (the sign of a zero maximum included)."""
from __future__ import annotations

import pytest
import torch

from sketchmine.stats import ops


def _bottomk_state(units: int, k: int) -> tuple[torch.Tensor, ...]:
    return (torch.full((units, k), float("-inf")), torch.full((units, k), -1, dtype=torch.int64),
            torch.full((units, k), -1, dtype=torch.int64), torch.zeros(units, dtype=torch.int64))


def test_a_bottomk_state_without_slots_is_refused():
    maxima = torch.tensor([[1.0, 2.0], [0.5, 3.0], [4.0, 5.0]])
    acts = maxima[:, :, None].expand(3, 2, 4).contiguous()
    buffer = torch.full((2, 2), 99.0)
    values = buffer[:, 1:1]  # (2, 0): a view whose "last slot" would be the neighbour
    _, index, position, nans = _bottomk_state(2, 0)
    with pytest.raises(RuntimeError, match=r"bottomk_update: values must be \(C, k\) with k >= 1"):
        ops.bottomk_update(maxima, acts, torch.tensor([10, 11, 12]), values, index, position, nans)
    assert buffer.eq(99.0).all()


def test_negative_image_indices_are_refused_by_both_heaps():
    acts = torch.tensor([[[2.0, 1.0]], [[4.0, 0.5]]])  # image -3 holds the maximum
    ids = torch.tensor([7, -3])
    with pytest.raises(RuntimeError, match=r"topk_update: image_index must be global image indices >= 0, found -3"):
        ops.topk_update(acts, ids, *ops.new_state(1, 3).values())
    with pytest.raises(RuntimeError, match=r"bottomk_update: image_index must be global image indices >= 0"):
        ops.bottomk_update(acts.amax(2), acts, ids, *_bottomk_state(1, 3))


def test_double_activations_are_refused_not_rounded():
    """The op ranked a double map as float32 (values 1e6 apart by 0.01 tied, ties broken by
    index), though its message named float32, float16 and bfloat16 only."""
    acts = (1e6 + torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64))[:, None, None]
    state = ops.new_state(1, 2)
    with pytest.raises(RuntimeError, match=r"topk_update: activations must be float32, float16 or bfloat16, got Double"):
        ops.topk_update(acts, torch.tensor([0, 1, 2]), *state.values())
    assert (state["index"] == -1).all()


def test_ink_density_of_no_channels_is_refused():
    with pytest.raises(RuntimeError, match=r"ink_density: x must have at least one channel"):
        ops.ink_density(torch.rand(2, 0, 4, 4), [], None, 0.1)


@pytest.mark.parametrize("dtype,fill", [(torch.uint8, -1.0), (torch.uint8, 300.0), (torch.uint8, float("nan")),
                                        (torch.int32, 1e10), (torch.int64, float("nan"))])
def test_a_fill_the_images_cannot_hold_is_refused(dtype, fill):
    images = torch.arange(2 * 3 * 3).view(1, 2, 3, 3).to(dtype)
    args = (images, torch.tensor([0]), torch.tensor([[-1, -1]]), 2, 2)
    with pytest.raises(RuntimeError, match="without overflow"):
        ops.crop_patches_reference(*args, fill)
    with pytest.raises(RuntimeError, match="without overflow"):
        ops.crop_patches(*args, fill)
    assert torch.equal(ops.crop_patches(*args, 7.0), ops.crop_patches_reference(*args, 7.0))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("length", [3, 16, 40])
def test_a_zero_maximum_keeps_the_first_maximum_s_sign(length, device):
    """-0.0 first, then +0.0: the SIMD max may keep either zero; the value stored is the first
    maximum's, in every layout and in the reference, byte for byte."""
    acts = torch.full((2, 3, length), -1.0)
    acts[:, :, 0] = -0.0
    acts[:, :, length // 2] = 0.0
    acts[1, 2, 0] = 0.0  # +0.0 first here
    acts[1, 2, length // 2] = -0.0
    want, pos, _ = ops.spatial_max_reference(acts)
    assert pos.eq(0).all()
    assert torch.signbit(want).tolist() == [[True, True, True], [True, True, False]]
    acts = acts.to(device)  # the layouts made there (.to() would copy an expanded view contiguous)
    for layout in (acts, acts.transpose(0, 1).contiguous().transpose(0, 1), acts[..., None].expand(2, 3, length, 2)):
        state = ops.new_state(3, 2, device)
        maxima = ops.topk_update(layout, torch.tensor([5, 6], device=device), *state.values()).cpu()
        assert torch.equal(torch.signbit(maxima), torch.signbit(want))
        assert torch.equal(torch.signbit(state["values"].cpu()), torch.signbit(want.T))
