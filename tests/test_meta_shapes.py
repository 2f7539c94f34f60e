"""The meta-device shape passes (model/meta.py): a linear layer's shape computed without
torch's meta kernel of addmm, whose wrapper imports torch._dynamo (1.5 s of a short CLI run).
The shapes and refusals equal a real CPU forward's."""
from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sketchmine.model import meta
from sketchmine.model.meta import _MetaShapes, linear_shape, meta_call


@st.composite
def _linear_call(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, int], tuple[int, ...] | None, torch.dtype]:
    leading = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    k = draw(st.integers(1, 9))
    out = draw(st.integers(1, 7))
    k_weight = draw(st.sampled_from([k, k, k + draw(st.integers(1, 3))]))  # mostly agreeing
    bias = draw(st.sampled_from([None, (out,), (), (out + 1,)]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return (*leading, k), (out, k_weight), bias, dtype


@given(_linear_call())
def test_linear_shapes_and_refusals_equal_a_real_forward(call):
    """Where the mode answers (a batch of rows, a 2-D weight, a bias of its rows or none), its
    shape or its refusal is the CPU forward's; every other call is torch's own meta kernel's."""
    x_shape, w_shape, b_shape, dtype = call
    g = torch.Generator().manual_seed(len(x_shape) * 31 + w_shape[0])
    x, w = torch.randn(x_shape, generator=g, dtype=dtype), torch.randn(w_shape, generator=g, dtype=dtype)
    b = None if b_shape is None else torch.randn(b_shape, generator=g, dtype=dtype)
    meta = (x.to("meta"), w.to("meta"), None if b is None else b.to("meta"))
    try:
        answered: tuple[int, ...] | str | None = linear_shape(*meta)
    except RuntimeError as exc:
        answered = str(exc)
    with _MetaShapes():
        try:
            got: tuple[int, ...] | str = tuple(F.linear(*meta).shape)
        except RuntimeError as exc:
            got = str(exc).splitlines()[0]
    try:
        real: tuple[int, ...] | str = tuple(F.linear(x, w, b).shape)
    except RuntimeError as exc:
        real = str(exc).splitlines()[0]
    if answered is not None:
        assert got == answered == real
    else:
        assert len(x_shape) < 2 or (b_shape is not None and b_shape not in ((w_shape[0],), ()))


@given(st.sampled_from(["GRU", "LSTM", "RNN"]), st.integers(1, 5), st.integers(1, 6), st.integers(1, 2), st.booleans(),
       st.booleans(), st.integers(0, 3), st.sampled_from([(), (1,), (3,)]), st.booleans())
def test_recurrent_shapes_equal_a_real_forward(kind, features, hidden, layers, bidirectional, batch_first, proj,
                                               batch, given_state):
    """A GRU, LSTM or RNN on the meta device: its output and state shapes are the CPU
    forward's, unbatched or batched, either layout, with a given state or none, with an
    LSTM's projection."""
    torch.manual_seed(features * 7 + hidden)
    extra = {"proj_size": proj} if kind == "LSTM" and proj < hidden else {}
    net = getattr(torch.nn, kind)(features, hidden, layers, bidirectional=bidirectional, batch_first=batch_first,
                                  **extra).eval()
    steps = 4
    x = torch.randn(*((*batch, steps) if batch_first else (steps, *batch)), features)
    answered: list[object] = []
    rule = meta.recurrent_shapes
    meta.recurrent_shapes = lambda *args: answered.append(rule(*args)) or answered[-1]  # type: ignore[assignment]
    try:
        if given_state:
            d, n = (2 if bidirectional else 1) * layers, batch
            h = torch.randn(d, *n, extra.get("proj_size") or hidden)
            state = (h, torch.randn(d, *n, hidden)) if kind == "LSTM" else h
            real, got = net(x, state), meta_call(net, x, state)
        else:
            real, got = net(x), meta_call(net, x)
    finally:
        meta.recurrent_shapes = rule
    assert len(answered) == 1 and answered[0] is not None  # the rule answered, not torch's meta kernel
    flat = [real[0], *(real[1] if kind == "LSTM" else [real[1]])]
    shapes = [got[0], *(got[1] if kind == "LSTM" else [got[1]])]
    assert [t.shape for t in shapes] == [t.shape for t in flat] and all(t.device.type == "meta" for t in shapes)


def test_meta_call_gives_the_models_output_shape_and_leaves_it_as_it_was(demo_model):
    model = demo_model.module.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, *demo_model.input_size[-2:], generator=torch.Generator().manual_seed(1))
    out = meta_call(model, x)
    assert out.device.type == "meta" and out.shape == model(x).shape
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in model.state_dict().items())


def test_mining_and_visualizing_a_model_without_torchvision_never_imports_dynamo(tmp_path):
    """The shape probe and the receptive-field graph run on the meta device; the demo model's
    linear layers used to import torch._dynamo there."""
    code = ("import sys, sketchmine\n"
            "from torch.utils.data import Subset\n"
            f"run = sketchmine.mine('demo', Subset(sketchmine.animal_shape('test'), range(24)), out={str(tmp_path / 'r.zarr')!r},"
            " batch_size=24, layers=['features.0', 'classifier.4'], progress=False)\n"  # the probe runs every layer
            "sketchmine.visualize(run, ['features.0'], progress=False)\n"
            "assert run.complete and run.patches_done('features.0') > 0\n"
            "print('torch._dynamo' in sys.modules, 'torchvision' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["False", "False"]
    # the recurrent demo's shape passes: its GRU's meta kernel imported it too
    code = ("import sys, torch\n"
            "from sketchmine.model.models import load_model\n"
            "from sketchmine.model.forward import TorchForward\n"
            "from sketchmine.model.receptive_field import field_analysis\n"
            "m = load_model('demo-gru').module\n"
            "fields = field_analysis(m, (1, 28, 28), (8,))\n"
            "shapes, out, _ = TorchForward(m).shapes(['gru', 'classifier'], torch.rand(2, 8, 1, 28, 28))\n"
            "print(shapes['gru'], tuple(out.shape), 'torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False", done.stdout

