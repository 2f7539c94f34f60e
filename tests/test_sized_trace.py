"""A forward that computes with its input's size in Python (timm's `Conv2dSame`: TensorFlow's "SAME"
padding, `max((ceil(h / s) - 1) * s + k - h, 0)` pixels split around the image) cannot be traced
symbolically, so such a model had no receptive field and no deconvolution at any layer: `visualize`
refused it. Traced at the input's size (model/tracers.py), its fields are those of the same model
with the pads written out for that size, every pixel reaching a unit lies in its box, and it is
mined and visualized at those boxes. Real data: the embedded Animal-Shape test sketches."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sketchmine
from sketchmine import SketchmineError, receptive_fields
from sketchmine.data import ArrayDataset
from sketchmine.model.graph import shared_traces, trace
from sketchmine.passes.visualize import visualize
from tests.helpers import fields_hold, per_class_subset, pictures_hold

ACTS = ["act1", "act2", "act3"]


def same_pads(size: tuple[int, int], k: int, s: int, d: int = 1) -> tuple[int, int, int, int]:
    """timm's pad_same: (left, right, top, bottom) for an input of `size`."""
    (ph, pw) = (max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0) for i in size)
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: the pads computed from the input's size at every call, then F.conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        x = F.pad(x, same_pads((ih, iw), self.kernel_size[0], self.stride[0], self.dilation[0]))
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class SameNet(nn.Module):
    """Three "same" convs (stride 2, stride 2 dilated, stride 1), a max pool between, flattened by
    the batch's size as many hand-written classifiers do (`x.view(x.shape[0], -1)`)."""

    def __init__(self, padded: tuple[int, int] | None = None) -> None:
        super().__init__()
        conv = Conv2dSame if padded is None else nn.Conv2d
        self.conv1, self.act1 = conv(1, 4, 3, stride=2), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.act2 = conv(4, 6, 3, stride=2, dilation=2), nn.ReLU()
        self.conv3, self.act3 = conv(6, 6, 5), nn.ReLU()
        self.fc = nn.Linear(6, 10)
        self.pads = None
        if padded is not None:  # the twin: the pads written out for one input size, grid by grid
            (h, w), self.pads = padded, []
            for k, s, d, pool in ((3, 2, 1, 2), (3, 2, 2, 1), (5, 1, 1, 1)):
                self.pads.append(same_pads((h, w), k, s, d))
                h, w = math.ceil(h / s) // pool, math.ceil(w / s) // pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads is not None:
            x = self.pool(self.act1(self.conv1(F.pad(x, self.pads[0]))))
            x = self.act3(self.conv3(F.pad(self.act2(self.conv2(F.pad(x, self.pads[1]))), self.pads[2])))
        else:
            x = self.act3(self.conv3(self.act2(self.conv2(self.pool(self.act1(self.conv1(x)))))))
        return self.fc(x.amax((2, 3)).view(x.shape[0], -1))


@pytest.fixture(scope="module")
def images(demo_test_set):
    return torch.from_numpy(np.asarray(demo_test_set.images[[3, 1500]])).float().div(255)[:, None]


@pytest.mark.parametrize("size", [(28, 28), (27, 25)])
def test_a_pad_from_the_input_size_has_the_written_out_pads_field(size, images):
    """At an even and an odd size (the left pad moves with the size's parity): the fields of the
    model with its pads written out for that size, and every pixel reaching a unit in its box."""
    torch.manual_seed(0)
    model = SameNet().eval()
    got = receptive_fields(model, (1, *size))
    want = receptive_fields(SameNet(padded=size).eval(), (1, *size))
    assert {n: got[n] for n in ACTS} == {n: want[n] for n in ACTS}
    assert got["act1"].offset == tuple(-same_pads(size, 3, 2)[i] for i in (2, 0))
    fields_hold(model, ACTS, got, images[..., :size[0], :size[1]])


def test_the_graph_traced_at_a_size_runs_any_batch(images):
    """Only the batch's size stays traced (`x.view(x.shape[0], -1)`): the graph equals the model on
    batches of other sizes than those it was traced at."""
    torch.manual_seed(0)
    model = SameNet().eval()
    with shared_traces():
        gm = trace(model, "for this test", (1, 28, 28))
    assert gm.meta["sample"] == (1, 28, 28)
    x = torch.cat([images, images.flip(-1), images.flip(-2)]).float()[:5]
    assert torch.equal(gm(x), model(x))


class _Counted(nn.Module):
    """A "same" conv, then a loop over the batch's images in Python: its graph would hold one batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2dSame(1, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.conv(x[i:i + 1])[0] for i in range(len(x))])


def test_a_forward_that_counts_its_batch_in_python_is_refused():
    with pytest.raises(SketchmineError, match=r"cannot trace _Counted with torch.fx to compute receptive fields: "
                                              r"RuntimeError: .*; traced at 1×28×28: TraceError: len\(\) of a traced "
                                              r"value along the batch axis"):
        receptive_fields(_Counted().eval(), (1, 28, 28))


def test_a_same_padded_model_is_mined_and_visualized_at_its_boxes(small_test_set, tmp_path):
    """Each stored box is the layer's field at the unit's peak, its patch the image's pixels there, and
    its deconvolution the unit's whole-image one cropped to it. A deconvolution of another input size
    than the graph was traced at is refused."""
    torch.manual_seed(0)
    model = SameNet().eval()
    ds = per_class_subset(small_test_set, 3, "same-pads")
    sketchmine.mine(model, ds, layers=ACTS, k=2, out=tmp_path / "r.zarr", batch_size=len(ds))
    run = visualize(tmp_path / "r.zarr", model=model, data=ds, batch_size=16)
    fields = receptive_fields(model, 28)
    pictures_hold(run, model, ds, {n: fields[n] for n in ACTS}, ACTS)
    from sketchmine.passes.deconv import Deconvolver

    with pytest.raises(SketchmineError, match=r"SameNet was traced for deconvolution at its input's size, 1×28×28 "
                                              r"\(its forward computes with that size\), and cannot take a 1×27×27 input"):
        Deconvolver(model, sample=(1, 28, 28))(ds[0][1][None, :, :27, :27], "act1", [0], [[0, 0]])


def test_what_follows_a_layer_is_read_from_the_graph_traced_at_its_size(small_test_set, tmp_path, caplog):
    """Units of conv3 that never rise above 0 are said to be read before the ReLU that follows (the
    graph's followers): a model torch.fx could not trace got no such note."""
    torch.manual_seed(0)
    model = SameNet().eval()
    with torch.no_grad():
        model.conv3.bias[:2] = -1e3  # two units that no image lifts above 0
    ds = per_class_subset(small_test_set, 2, "same-followers")
    with caplog.at_level("WARNING", logger="sketchmine"):
        sketchmine.mine(model, ds, layers=["conv3"], k=2, out=tmp_path / "r.zarr", batch_size=len(ds))
    assert "conv3: 2 of 6 units never rose above 0 on any image (read before the ReLU that follows" in caplog.text


class SeqSameNet(nn.Module):
    """A "same" conv over each frame of a progressive drawing, then a GRU over the frames: `padded`
    writes the conv's pads out for 28×28, the twin the symbolic trace takes."""

    def __init__(self, padded: bool = False) -> None:
        super().__init__()
        self.conv = (nn.Conv2d if padded else Conv2dSame)(1, 6, 3, stride=2)
        self.pads = same_pads((28, 28), 3, 2) if padded else None
        self.act = nn.ReLU()
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        frames = x.flatten(0, 1)
        frames = self.conv(frames if self.pads is None else F.pad(frames, self.pads))
        _, h = self.gru(self.act(frames).amax((2, 3)).reshape(n, t, -1))
        return self.fc(h[-1])


def test_a_sequence_models_frame_convs_traced_at_its_steps_are_deconvolved(small_test_set, tmp_path):
    """A time-distributed conv's units are deconvolved on their frame as a one-step sequence, which a
    graph traced at T steps refused ("cannot take a 1×1×28×28 input") after `mine` recorded the
    layer's field: now the frame is given at every step and the unit read at the first, and the
    pictures are the twin's with the pads written out (traced symbolically, deconvolved on windows)."""
    from sketchmine.data.sequences import SequenceDataset

    torch.manual_seed(0)
    model = SeqSameNet().eval()
    twin = SeqSameNet(padded=True).eval()
    twin.load_state_dict(model.state_dict())
    ds = SequenceDataset(per_class_subset(small_test_set, 2, "same-steps"), 4)
    runs = []
    for name, net in (("sized", model), ("twin", twin)):
        sketchmine.mine(net, ds, layers=["act", "fc"], k=2, out=tmp_path / name, batch_size=len(ds))
        runs.append(visualize(tmp_path / name, model=net, data=ds, batch_size=16))
    sized, padded = runs
    assert sized.layer_attrs("act")["receptive_field"] == padded.layer_attrs("act")["receptive_field"]
    assert np.array_equal(sized.topk("act")[1], padded.topk("act")[1])
    for layer in ("act", "fc"):
        got, want = (r.layer_array(layer, "deconv").astype(int) for r in runs)
        assert np.abs(got - want).max() <= 1, layer
        assert (got != 128).any(), layer


class SideFirst(nn.Module):
    """A side-branch conv defined before the stem: the first conv in module order takes 4
    channels, the one the 1-channel input reaches (a "same" conv: no symbolic trace) takes 1."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Conv2d(4, 4, 1)
        self.stem, self.act = Conv2dSame(1, 4, 3, stride=2), nn.ReLU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        return self.fc((x + self.side(x)).amax((2, 3)))


def test_the_channels_of_a_model_traced_at_a_size_are_its_stems(small_test_set, tmp_path):
    """Given the input's size, the channels are read from the graph traced there, not from the
    first conv defined; `mine` with an image size, and the shapes of the field analysis, use it."""
    from sketchmine.model.graph import module_input_channels, propagate_shapes

    torch.manual_seed(0)
    model = SideFirst().eval()
    assert module_input_channels(model) == 4  # no size: the first conv defined, said in its docstring
    assert module_input_channels(model, size=(28, 28)) == 1
    assert module_input_channels(model, size=(27, 25)) == 1
    with shared_traces():
        gm = trace(model, "for this test", (1, 28, 28))
        propagate_shapes(gm, model, 28, 28)  # took 4 channels: the stem refused the probe's input
    assert next(n for n in gm.graph.nodes if n.op == "placeholder").meta["tensor_meta"].shape == (1, 1, 28, 28)
    sub = per_class_subset(small_test_set, 2, "side-first")
    ds = ArrayDataset(sub.images, sub.labels(), sub.class_names)  # no preprocessing of its own: mine's applies
    run = sketchmine.mine(model, ds, layers=["act"], k=2, out=tmp_path / "r.zarr", batch_size=len(ds),
                          image_size=28)
    assert run.layer_shape("act")[0] == 4
    fields = sketchmine.receptive_fields(model, (1, 28, 28))  # refused: "SideFirst takes 4"
    assert fields["act"] == sketchmine.receptive_fields(model, 28)["act"]  # traced with 4 channels: failed
    assert run.layer_attrs("act")["receptive_field"]["size"] == list(fields["act"].size)


def test_a_run_mined_before_sized_traces_is_told_to_be_mined_again(small_test_set, tmp_path):
    """Such a run (attributes as an earlier sketchmine wrote them: no field on any layer, no
    checksums of them) was refused blaming an op the analysis cannot follow; this version's
    analysis of the model gives the fields, and the refusal says to mine again."""
    import shutil

    import zarr

    torch.manual_seed(0)
    model = SameNet().eval()
    ds = per_class_subset(small_test_set, 2, "same-pads-old")
    run = sketchmine.mine(model, ds, layers=ACTS, k=2, out=tmp_path / "r.zarr", batch_size=len(ds))
    old = shutil.copytree(run.path, tmp_path / "old.zarr")
    del zarr.open_group(str(old), mode="r+").attrs["attribute_sums"]
    for layer in ACTS:
        zarr.open_group(str(old), mode="r+")[f"layers/{layer}"].attrs.update({"receptive_field": None})
    with pytest.raises(SketchmineError, match=r"no receptive field for layer 'act1', and this version's graph "
                                              r"analysis of its model gives it one: .* mine it again"):
        visualize(old, ["act1"], model=model, data=ds)
