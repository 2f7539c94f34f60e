"""A model that fails inside the pass, after the probe passed it (one image, shapes computed on
the meta device), is said in one line naming the batch's images, and the run keeps its last
checkpoint (a SketchmineFailure: the CLI says it in one line and exits 1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sketchmine
from sketchmine.mining.failures import ModelFailed


@pytest.fixture(scope="module")
def sketches(small_test_set):
    x = torch.from_numpy(np.asarray(small_test_set.images[:20])).float().div(255)[:, None]
    return torch.utils.data.TensorDataset(x, torch.from_numpy(small_test_set.labels()[:20]).long())


class Double(nn.Module):
    """A float64 buffer in a float32 matmul: the meta device lets it through, a real forward not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)
        self.register_buffer("mix", torch.eye(4, dtype=torch.float64) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).amax((2, 3)) @ self.mix)


class FullBatches(nn.Module):
    """A model of its own rules: batches of 8 images only (the last, of 4, fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) != 8 and len(x) != 1:  # the probe's one image passes
            raise ValueError(f"this model takes batches of 8, got {len(x)}")
        return self.head(self.conv(x).amax((2, 3)))


def test_a_model_that_fails_computing_is_said_naming_the_batch(sketches, tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ModelFailed, match=r"the model failed on a batch of 20 image\(s\) \(#0 … #19\): RuntimeError: "
                                          r"expected m1 and m2 to have the same dtype"):
        sketchmine.mine(Double().eval(), sketches, layers=["conv"], out=tmp_path / "r.zarr", batch_size=20)


def test_a_model_that_fails_on_a_later_batch_keeps_the_checkpoint(sketches, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "r.zarr"
    with pytest.raises(ModelFailed, match=r"batch of 4 image\(s\) \(#16 … #19\): ValueError: this model takes "
                                          r"batches of 8, got 4"):
        sketchmine.mine(FullBatches().eval(), sketches, layers=["conv"], out=out, batch_size=8, flush_every=1)
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done == 16


class RowReader(nn.Module):
    """A GRU over each image's rows, the rows folded into the batch (N·28 sequences)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gru, self.fc = nn.Conv2d(1, 1, 1), nn.GRU(28, 4, batch_first=True), nn.Linear(4 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        _, h = self.gru(self.conv(x).reshape(n * 28, 1, 28))
        return self.fc(h[-1].reshape(n, -1))


def test_a_recurrent_layer_over_folded_rows_is_refused_at_the_probe(sketches, tmp_path, caplog):
    """It was neither unfolded nor refused: the pass failed in the compiled top-k, blamed on the
    model. Asked for, it is refused before the run is made; by default it is left out, and said."""
    torch.manual_seed(0)
    with pytest.raises(sketchmine.SketchmineError, match=r"layer 'gru' returns 28 rows for 1 image\(s\): its first "
                                                         r"dimension is not the batch"):
        sketchmine.mine(RowReader().eval(), sketches, layers=["gru"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(RowReader().eval(), sketches, out=tmp_path / "default.zarr")
    assert "gru" not in run.layers and {"conv", "fc"} <= set(run.layers)
    assert [r for r in caplog.records if "not mined because their first dimension is not the batch" in r.getMessage()
            and "gru" in r.getMessage()]


class SharedConvs(nn.Module):
    """Two convs each applied twice (a recurrent conv, weights shared over steps), a conv called
    once, and a GRU over each image's rows folded into the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.step, self.twice = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.gru, self.fc = nn.GRU(28, 4, batch_first=True), nn.Linear(4 * 28 + 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        for _ in range(3):
            h = torch.relu(self.step(h))
        h = self.twice(self.twice(h))
        _, rows = self.gru(h[:, :1].reshape(len(x) * 28, 1, 28))
        return self.fc(torch.cat([rows[-1].reshape(len(x), -1), h.mean((2, 3))], 1))


def test_modules_called_more_than_once_are_all_named_at_once(sketches, tmp_path, caplog):
    """A module the forward calls more than once was refused at its second call, one per attempt (the
    hook raised mid-forward): a user fixed one name to meet the next. The probe names them all, with
    their call counts; default layers leave them out, said beside the other reasons."""
    torch.manual_seed(0)
    with pytest.raises(sketchmine.SketchmineError, match=r"layers 'step' \(3 calls\), 'twice' \(2 calls\) are called "
                                                         r"more than once per forward pass"):
        sketchmine.mine(SharedConvs().eval(), sketches, layers=["conv", "step", "twice"], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(SharedConvs().eval(), sketches, out=tmp_path / "default.zarr", k=2)
    assert set(run.layers) == {"conv", "fc", "softmax"}
    said = [r.getMessage() for r in caplog.records if "not mined because" in r.getMessage()]
    assert any("2 of the model's layers are not mined because the forward pass calls them more than once" in m
               and "step, twice" in m for m in said), said
    assert any("first dimension is not the batch" in m and "gru" in m for m in said), said


class RowsOnly(nn.Module):
    """Each image's rows through a GRU (torch) or a Linear (which ONNX cannot unfold), folded into
    the batch: the model's one default layer whose first dimension is not the batch."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.rows = nn.GRU(28, 10, batch_first=True) if kind == "torch" else nn.Linear(28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if isinstance(self.rows, nn.GRU):
            return self.rows(x.reshape(n * 28, 1, 28))[1][-1].reshape(n, 28, 10).mean(1)
        return self.rows(x.reshape(n * 28, 28)).reshape(n, 28, 10).mean(1)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_model_whose_every_default_layer_is_left_out_is_refused(backend, sketches, tmp_path):
    """Its one layer left out, the run mined the softmax of the logits alone, with a note about
    the layer: a run without one of the model's layers. The call is refused, saying which layer
    was left out and why, and how to name layers; the layer named is refused as before."""
    torch.manual_seed(0)
    model: nn.Module | str = RowsOnly(backend).eval()
    if backend == "onnx":
        from tests.test_onnx import export

        model = str(export(model, tmp_path / "rows.onnx"))
    for on in (True, False):
        with pytest.raises(sketchmine.SketchmineError, match=(
                "every default layer of the model is left out" + (", which leaves only the softmax of its logits to "
                                                                   "mine" if on else "")
                + r": rows, as their first dimension is not the batch \(their rows are not the images\)\. Name the "
                r"layers to mine with --layers \(layers=\)")):
            sketchmine.mine(model, sketches, logits=on, out=tmp_path / "r.zarr")
        assert not (tmp_path / "r.zarr").exists()
    with pytest.raises(sketchmine.SketchmineError, match=r"layer 'rows'.* returns 28 rows for 1 image\(s\)"):
        sketchmine.mine(model, sketches, layers=["rows"], out=tmp_path / "r.zarr")


class Functional(nn.Module):
    """A conv and a linear map written as functions of its own parameters: no module to tap."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.fc = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3), nn.Parameter(torch.randn(10, 8) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.relu(F.conv2d(x, self.w)).mean((2, 3)), self.fc)


def test_a_model_of_functions_is_refused_by_default_and_mines_its_softmax_when_named(sketches, tmp_path):
    """Its default layers were the virtual softmax alone: a run of the logits' softmax, said
    nowhere. Refused, naming what is mined by default and how to ask for the softmax alone."""
    torch.manual_seed(0)
    with pytest.raises(sketchmine.SketchmineError, match=r"the model has no layer mined by default \(a conv, "
                                                         r"linear, recurrent or softmax module.*--layers softmax"):
        sketchmine.mine(Functional().eval(), sketches, out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
    run = sketchmine.mine(Functional().eval(), sketches, layers=["softmax"], out=tmp_path / "r.zarr", k=2)
    assert run.complete and run.layers == ["softmax"]


class Shorter(nn.Module):
    """Drops its batch's last row where there are two or more: one row an image on the probe's image."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y[:max(1, y.shape[0] - 1)]


class Dropping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.short, self.head = nn.Conv2d(1, 4, 3), Shorter(), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.short(y)
        return self.head(y.amax((2, 3)))


def test_a_layer_whose_rows_stop_following_the_batch_is_named(sketches, tmp_path):
    """Its rows follow the batch on the probe's one image only: the compiled top-k's own shape
    check ("image_index must be (N,)") was all that was said; the layer is named now."""
    torch.manual_seed(0)
    with pytest.raises(sketchmine.SketchmineError, match=r"layer 'short' returned 6 rows for a batch of 7 images"):
        sketchmine.mine(Dropping().eval(), sketches, layers=["short"], out=tmp_path / "r.zarr", batch_size=7)
