"""Layers of sequence models read in their less common layouts, against plain torch: a
time-distributed Conv1d (each frame a 1-D signal, its frames stacked along x) and the modules
after a recurrent layer (a LayerNorm or ReLU over its (N, T, H) output)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.data import Preprocessing, animal_shape
from sketchmine.data.sequences import SequenceDataset, background_of, progressive_drawing
from tests.helpers import Conv1dFrames, brute_topk, per_class_subset

PRE = Preprocessing("model", 1, None, (0.2728,), (0.4056,))
T = 6


@pytest.fixture(scope="module")
def subset():
    """40 real test silhouettes, 4 per class."""
    return per_class_subset(animal_shape("test", PRE), 4, "4 per class")


@pytest.fixture(scope="module")
def drawings(subset):
    return SequenceDataset(subset, T)


@pytest.fixture(scope="module")
def signal_run(tmp_path_factory, drawings):
    """Conv1dFrames' Conv1d (each frame a 1-channel signal) mined over the drawings, its first 4 units visualized."""
    torch.manual_seed(7)
    net = Conv1dFrames().eval()
    out = tmp_path_factory.mktemp("signal") / "r.zarr"
    run = sketchmine.mine(net, drawings, layers=["conv", "gru"], k=5, out=out, batch_size=16)
    return sketchmine.visualize(run, ["conv"], model=net, data=drawings, max_units=4)


def test_a_time_distributed_conv1d_is_shown_in_the_frame_of_its_step(signal_run, subset):
    from sketchmine.passes.visualize import patches_of

    run = signal_run
    length = run.layer_attrs("conv")["frame"][0]
    assert run.layer_shape("conv") == (4, T * length)
    _, index, yx = run.topk("conv")
    steps = yx[..., 1] // length
    assert (steps < T - 1).any()  # some units peak before the whole drawing
    for u in range(4):
        patches = patches_of(run, "conv", u)["patches"]
        for j in range(5):
            image = subset.images[index[u, j]]
            frame = progressive_drawing(image, T, background_of(image))[steps[u, j]]
            assert np.array_equal(patches[j, ..., 0], frame), (u, j, int(steps[u, j]))


def test_a_time_distributed_conv1d_is_described_by_its_frames(signal_run, tmp_path):
    """Its (C, T·L) map is C units of L positions over T steps, not T·L steps."""
    from sketchmine.present.report import write_report
    from sketchmine.results.numbers import shape_text

    length = signal_run.layer_attrs("conv")["frame"][0]
    assert shape_text(signal_run.layer_attrs("conv")) == f"4×{length} × {T} steps"
    assert shape_text(signal_run.layer_attrs("gru")) == f"6 × {T} steps"
    write_report(signal_run, tmp_path / "report", montages=0)
    page = next((tmp_path / "report" / "layers").glob("*-conv.html")).read_text()
    assert f"a line of {length} values per frame" in page and f"4×{length} × {T} steps" in page


class NormedGRU(nn.Module):
    """A GRU whose per-step output goes through a LayerNorm and a ReLU module before the head."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.gru = nn.GRU(28 * 28, 8, batch_first=batch_first, bidirectional=True)
        self.norm = nn.LayerNorm(16)
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(2) if self.batch_first else x.flatten(2).transpose(0, 1)
        out = self.act(self.norm(self.gru(f)[0]))
        return self.fc(out[:, -1] if self.batch_first else out[-1])


def test_modules_after_a_recurrent_layer_are_read_by_its_hidden_units(tmp_path, drawings):
    """(N, T, 16) after a GRU: 16 units over T steps, not T units over 16 positions."""
    torch.manual_seed(3)
    net = NormedGRU(batch_first=True).eval()
    run = sketchmine.mine(net, drawings, layers=["norm", "act"], k=4, out=tmp_path / "r.zarr", batch_size=16)
    x = torch.stack([drawings[i][1] for i in range(len(drawings))])
    got = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: got.setdefault(n, o.clone()))
             for n in ("norm", "act")]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for name in ("norm", "act"):
        assert run.layer_shape(name) == (16, T)
        values, index, position = brute_topk(got[name].transpose(1, 2), 4)
        v, i, yx = run.topk(name)
        np.testing.assert_allclose(v, values, rtol=1e-6, atol=1e-6)
        assert (i == index).all() and (yx[..., 1] == position).all() and (yx[..., 0] == 0).all()
    # time-first (T, N, 16): its rows are steps, not images; refused, not mined as images
    with pytest.raises(sketchmine.SketchmineError, match=r"layer 'norm' returns 6 rows per image"):
        sketchmine.mine(NormedGRU(batch_first=False).eval(), drawings, layers=["norm"], out=tmp_path / "t.zarr")
