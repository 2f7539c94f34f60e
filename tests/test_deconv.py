"""deconvolve: the three rules against independent computations, batching, and hygiene."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from sketchmine import deconvolve
from sketchmine.errors import SketchmineError


@pytest.fixture(scope="module")
def net(demo_model):
    return demo_model.module


@pytest.fixture(scope="module")
def images(demo_test_set):
    return torch.stack([demo_test_set[i][1] for i in (0, 250, 600, 1111, 1500, 1999)])


def zeiler_fergus(net, image, conv_index: int, channel: int, y: int, x: int) -> torch.Tensor:
    """Deconvnet by hand for SketchNet's features: switches from max_pool2d(return_indices),
    rectification on the way back, transposed filters."""
    layers = list(net.features)[: conv_index + 1]
    acts, switches = [image[None]], {}
    h = image[None]
    for i, m in enumerate(layers):
        if isinstance(m, torch.nn.MaxPool2d):
            h, switches[i] = F.max_pool2d(h, m.kernel_size, m.stride, return_indices=True)
        elif isinstance(m, torch.nn.ReLU):
            h = F.relu(h)
        else:
            h = m(h)
        acts.append(h)
    s = torch.zeros_like(h)
    s[0, channel, y, x] = 1.0
    for i in reversed(range(len(layers))):
        m = layers[i]
        if isinstance(m, torch.nn.Conv2d):
            s = F.conv_transpose2d(s, m.weight, stride=m.stride, padding=m.padding)
        elif isinstance(m, torch.nn.ReLU):
            s = F.relu(s)
        else:
            s = F.max_unpool2d(s, switches[i], m.kernel_size, m.stride, output_size=acts[i].shape[-2:])
    return s[0]


@pytest.mark.parametrize("layer,index,unit", [("features.3", 3, (5, 7, 6)), ("features.10", 10, (17, 3, 4)),
                                              ("features.6", 6, (40, 0, 6))])
def test_deconvnet_equals_zeiler_fergus_by_hand(net, images, layer, index, unit):
    c, y, x = unit
    got = deconvolve(net, images[:1], layer, [c], [[y, x]], method="deconvnet")[0]
    want = zeiler_fergus(net, images[0], index, c, y, x)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradient_equals_autograd_and_guided_differs(net, images):
    x = images[1:2].clone().requires_grad_(True)
    plain = copy.deepcopy(net)
    plain.features[:7](x)[0, 9, 3, 2].backward()  # the conv3 unit, straight from autograd
    got = deconvolve(net, images[1:2], "features.6", [9], [[3, 2]], method="gradient")[0]
    torch.testing.assert_close(got, x.grad[0], rtol=1e-5, atol=1e-6)
    guided = deconvolve(net, images[1:2], "features.6", [9], [[3, 2]], method="guided")[0]
    assert not torch.equal(guided, got)


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_batched_equals_one_at_a_time(net, images, method):
    channels = [3, 17, 40, 5, 63, 21]
    yx = [[0, 0], [6, 6], [3, 2], [1, 5], [4, 4], [2, 3]]
    batch = deconvolve(net, images, "features.8", channels, yx, method=method)
    for i in range(len(images)):
        one = deconvolve(net, images[i:i + 1], "features.8", [channels[i]], [yx[i]], method=method)[0]
        torch.testing.assert_close(batch[i], one, rtol=1e-5, atol=1e-6)
    fc = deconvolve(net, images, "classifier.6", list(range(6)), method=method)
    assert fc.shape == images.shape and (fc.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_model_is_left_as_found_and_branched_models_work(net, images):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    deconvolve(net, images[:2], "features.6", [0, 1], [[1, 1], [2, 2]], method="guided")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())
    assert net.features[1].inplace and not net.training
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    g = deconvolve(resnet, x, "layer2.0.conv1", [4, 7], [[2, 2], [3, 1]], method="deconvnet")
    assert g.shape == x.shape and (g.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_bad_arguments(net, images):
    with pytest.raises(SketchmineError, match="unknown deconvolution method"):
        deconvolve(net, images[:1], "features.6", [0], [[0, 0]], method="lrp")
    with pytest.raises(SketchmineError, match="unknown layer 'features.99'"):
        deconvolve(net, images[:1], "features.99", [0], [[0, 0]])


@pytest.mark.parametrize("arch", ["resnet18", "googlenet"])
@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_receptive_field_windows_equal_the_whole_image(arch, method):
    """Deconvolving each unit on its stride-aligned receptive-field window gives the whole-image
    signal inside the box, at borders and corners too (branched models, ceil-mode pools)."""
    from sketchmine import receptive_fields
    from sketchmine.passes.deconv import Deconvolver
    from sketchmine.stats.ops import crop_patches

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10, **(
        {"aux_logits": False, "init_weights": False, "transform_input": False} if arch == "googlenet" else {})).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 80, 80, generator=gen)
    fields = receptive_fields(model, 80)
    decon = Deconvolver(model, method)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for layer in convs[1::max(1, len(convs) // 4)]:
        shape = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: shape.setdefault("s", o.shape) and None)
        with torch.no_grad():
            model(x[:1])
        handle.remove()
        c, h, w = shape["s"][1:]
        yx = torch.stack([torch.randint(0, h, (8,), generator=gen), torch.randint(0, w, (8,), generator=gen)], 1)
        yx[0], yx[1] = torch.tensor([0, 0]), torch.tensor([h - 1, w - 1])
        channels, index = torch.randint(0, c, (8,), generator=gen), torch.arange(8) % 3
        f = fields[layer]
        whole = decon(x[index], layer, channels, yx)
        corners = torch.stack([f.offset[0] + yx[:, 0] * f.stride[0], f.offset[1] + yx[:, 1] * f.stride[1]], 1)
        want = crop_patches(whole, torch.arange(8), corners, *f.size)
        got = decon.field_crops(x, index, layer, channels, yx, f)
        assert want.abs().amax(dim=(1, 2, 3)).min() > 0, layer
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


# ---- one forward per image, units in slots of one batched backward ----------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sketchmine.passes.deconv import Deconvolver, shared_order  # noqa: E402

_SHARED = {}


def _deconvolver(net, method):
    return _SHARED.setdefault(method, Deconvolver(net, method))


@settings(max_examples=25)
@given(st.sampled_from(["deconvnet", "guided", "gradient"]),
       st.sampled_from([("classifier.1", 256, None), ("classifier.4", 256, None), ("softmax", 10, None),
                        ("features.10", 64, 7), ("features.3", 64, 14)]),
       st.lists(st.integers(0, 5), min_size=1, max_size=14), st.data())
def test_shared_forward_equals_one_forward_per_unit(net, images, method, layer_spec, image_of, data):
    layer, units, grid = layer_spec
    n = len(image_of)
    channels = data.draw(st.lists(st.integers(0, units - 1), min_size=n, max_size=n))
    yx = data.draw(st.lists(st.tuples(st.integers(0, grid - 1), st.integers(0, grid - 1)), min_size=n, max_size=n)) \
        if grid else None
    dec = _deconvolver(net, method)
    idx = torch.tensor(image_of)
    want = dec(images[idx], layer, channels, yx)
    got = dec.shared(images, idx, layer, channels, yx)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


@given(st.lists(st.integers(0, 9), max_size=40))
def test_shared_order_groups_each_images_units_most_first(image_of):
    order = shared_order(image_of).tolist()
    assert sorted(order) == list(range(len(image_of)))
    seq = [image_of[i] for i in order]
    runs = [k for i, k in enumerate(seq) if i == 0 or seq[i - 1] != k]
    assert len(runs) == len(set(seq))  # each image's units are together
    counts = [seq.count(k) for k in runs]
    assert counts == sorted(counts, reverse=True)
    for k in runs:  # and keep their own order
        assert [i for i in order if image_of[i] == k] == [i for i in range(len(image_of)) if image_of[i] == k]
