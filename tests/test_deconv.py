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
