"""Ablation importance: batched results equal a direct one-unit-at-a-time computation."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.cli.main import main as cli
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.errors import SketchmineError
from sketchmine.results.numbers import percents
from sketchmine.store.lock import RunLock


def direct(model, ds, layer, unit, labels, unit_dim=1, element=None):
    """Correct-class probability and correctness per image with one unit zeroed, plain torch:
    a forward hook on the module, one unit per full pass (the loop the batched version replaces)."""
    mod = dict(model.named_modules())[layer]

    def zero(m, i, o):
        t = o if element is None else o[element]
        t = t.clone()
        t.select(unit_dim, unit).zero_()
        return t if element is None else (t, *o[1:])

    h = mod.register_forward_hook(zero) if unit is not None else None
    probs, right = [], []
    try:
        with torch.inference_mode():
            for s in range(0, len(ds), 100):
                x = torch.stack([ds[i][1] for i in range(s, min(s + 100, len(ds)))])
                y = torch.as_tensor(labels[s:s + len(x)])
                out = model(x).double()
                probs.append(torch.softmax(out, 1).gather(1, y[:, None])[:, 0])
                right.append(out.argmax(1) == y)
    finally:
        if h is not None:
            h.remove()
    return torch.cat(probs).numpy(), torch.cat(right).numpy()


def unit_max(model, ds, layer):
    """(N, units) per-image maximum of each unit over its positions, plain hooks."""
    got = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o.clone()))
    try:
        with torch.inference_mode():
            for s in range(0, len(ds), 100):
                model(torch.stack([ds[i][1] for i in range(s, min(s + 100, len(ds)))]))
    finally:
        h.remove()
    a = torch.cat(got)
    return (a.flatten(2).amax(2) if a.ndim > 2 else a).numpy()


@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, small_test_set):
    out = tmp_path_factory.mktemp("imp") / "run.zarr"
    return sketchmine.mine(demo_model.module, small_test_set, layers=["features.3", "features.10", "classifier.4"],
                           k=3, out=out, batch_size=100)


def _check_units(df, model, ds, layer, units, labels, method):
    base_p, base_ok = direct(model, ds, layer, None, labels)
    acts = unit_max(model, ds, layer)
    rows = df.set_index("unit")
    assert df.attrs["method"] == method and df.attrs["images"] == len(ds)
    assert df.attrs["base_accuracy"] == pytest.approx(base_ok.mean())
    for u in units:
        p, ok = direct(model, ds, layer, u, labels)
        assert rows.loc[u, "prob_drop"] == pytest.approx((base_p - p).mean(), abs=1e-6), (layer, u)
        assert rows.loc[u, "acc_drop"] == pytest.approx(base_ok.mean() - ok.mean(), abs=1e-12), (layer, u)
        assert rows.loc[u, "mean_act_correct"] == pytest.approx(acts[base_ok, u].mean(), rel=1e-5)
        assert rows.loc[u, "mean_act_wrong"] == pytest.approx(acts[~base_ok, u].mean(), rel=1e-5)


@pytest.mark.parametrize("layer", ["features.3", "features.10", "classifier.4"])
def test_batched_ablation_equals_one_unit_at_a_time(mined, demo_model, small_test_set, layer):
    df = sketchmine.unit_importance(mined, layer, model=demo_model.module, dataset=small_test_set, batch_size=128)
    assert list(df.columns) == ["unit", "prob_drop", "acc_drop", "mean_act_correct", "mean_act_wrong"]
    assert len(df) == mined.layer_shape(layer)[0]
    assert (np.diff(df["prob_drop"].to_numpy()) <= 0).all()  # most important first
    assert df["prob_drop"].abs().max() > 1e-4  # ablation changes something
    top = int(df["unit"].iloc[0])
    _check_units(df, demo_model.module, small_test_set, layer, sorted({0, 7, top}), small_test_set.labels(), "split")
    again = sketchmine.open_run(mined.path).unit_importance(layer)
    pd.testing.assert_frame_equal(again, df)
    # indexed by the unit, as every per-unit reader: a join pairs each unit with its own drop
    # (the index was the place in the order: .loc[u] gave another unit's row, silently)
    assert (df.index == df["unit"]).all() and df.index[0] == top
    stored = mined.store.read(f"layers/{layer}/importance/prob_drop")
    joined = pd.DataFrame({"selectivity": sketchmine.open_run(mined.path).selectivity(layer)}).join(df)
    np.testing.assert_array_equal(joined["prob_drop"].to_numpy(), stored)
    assert all(df.loc[u, "prob_drop"] == stored[u] for u in range(len(stored)))


class Untraceable(nn.Module):
    """The demo model behind data-dependent control flow: torch.fx cannot cut it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.sum() > -1e9:
            return self.inner(x)
        return self.inner(-x)


def test_untraceable_model_uses_replication(tmp_path, demo_model, small_test_set, caplog):
    model = Untraceable(demo_model.module).eval()
    ds = ArrayDataset(small_test_set.images[:120], small_test_set.labels()[:120], small_test_set.class_names,
                      small_test_set.preprocessing, small_test_set.describe())
    with caplog.at_level("WARNING", logger="sketchmine"):  # fx cannot trace it either
        run = sketchmine.mine(model, ds, layers=["inner.features.6"], k=2, out=tmp_path / "r.zarr", batch_size=60)
    assert any("no receptive fields recorded" in r.getMessage() for r in caplog.records)
    df = sketchmine.unit_importance(run, "inner.features.6", model=model, dataset=ds, batch_size=50,
                                    units_per_pass=7)
    _check_units(df, model, ds, "inner.features.6", [0, 50, 95], ds.labels(), "replicate")


def test_recurrent_unit_importance(tmp_path):
    """Ablating a GRU hidden unit zeroes it in the layer's output at every step."""
    from sketchmine.data.sequences import SequenceDataset
    from sketchmine.model.zoo import SketchGRU

    torch.manual_seed(0)
    net = SketchGRU().eval()
    base = animal_shape("test", Preprocessing("model", 1, None, (0.27,), (0.4,)))
    keep = np.arange(0, 2000, 25)
    ds = SequenceDataset(ArrayDataset(base.images[keep], base.labels()[keep], base.class_names, base.preprocessing,
                                      {"kind": "python"}), 4)
    run = sketchmine.mine(net, ds, layers=["gru"], k=2, out=tmp_path / "r.zarr", batch_size=40)
    df = sketchmine.unit_importance(run, "gru", model=net, dataset=ds, batch_size=40)
    labels = ds.labels()
    base_p, _ = direct(net, ds, "gru", None, labels)
    rows = df.set_index("unit")
    for u in (3, 40):
        p, _ = direct(net, ds, "gru", u, labels, unit_dim=2, element=0)
        assert rows.loc[u, "prob_drop"] == pytest.approx((base_p - p).mean(), abs=1e-6)
    assert df.attrs["method"] == "split"


def test_dataset_without_labels_is_refused(tmp_path, demo_model, small_test_set):
    ds = small_test_set
    unlabelled = ArrayDataset(ds.images[:20], np.full(20, -1), ds.class_names, ds.preprocessing, ds.describe())
    run = sketchmine.mine(demo_model.module, unlabelled, layers=["features.0"], k=2, out=tmp_path / "r.zarr")
    with pytest.raises(SketchmineError, match="no class label for every image"):
        sketchmine.unit_importance(run, "features.0", model=demo_model.module, dataset=unlabelled)


def test_virtual_layers_and_missing_results_are_refused(demo_model, small_test_set, tmp_path):
    run = sketchmine.mine(demo_model.module, small_test_set, layers=["features.0", "softmax"], k=2,
                          out=tmp_path / "s.zarr")
    with pytest.raises(SketchmineError, match="has no unit importance for 'features.0'"):
        run.unit_importance("features.0")
    with pytest.raises(SketchmineError, match="'softmax' is the model's output"):
        sketchmine.unit_importance(run, "softmax", model=demo_model.module, dataset=small_test_set)
    with pytest.raises(SketchmineError, match="not in run"):
        sketchmine.unit_importance(run, "features.3", model=demo_model.module, dataset=small_test_set)


def test_cli_importance_reloads_the_run_and_plots(tmp_path, demo_test_set, capsys):
    from sketchmine.present.plots import check_plot_path, plot_importance, save_figure

    out = tmp_path / "run.zarr"
    sketchmine.mine("demo", demo_test_set, layers=["features.10", "classifier.4"], k=2, out=out, batch_size=500)
    png = tmp_path / "imp.png"
    assert cli(["importance", str(out), "--layers", "classifier.4", "-n", "5", "--plot", str(png)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    run = sketchmine.open_run(out)
    assert "classifier.4" in text and f"accuracy {run.accuracy() * 100:.2f} %" in text
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    df = run.unit_importance("classifier.4")
    assert len(df) == 256 and df.attrs["base_accuracy"] == pytest.approx(run.accuracy())
    # the most important unit listed, its drops in percentage points as the report writes them
    first = df.iloc[0]
    assert re.search(rf"│ {int(first['unit'])} │ {first['prob_drop'] * 100:.4f} │ "
                     rf"{re.escape(percents([first['acc_drop']], 2)[0])} │", text)  # an exact 0 too: "0.00" in a column
    assert "┃ unit ┃ prob. drop (pt) ┃ acc. drop (pt) ┃ mean act. right ┃ mean act. wrong ┃" in text  # 80 columns
    assert cli(["importance", str(out), "--layers", "nope"]) == 3
    assert "layer 'nope' is not in run" in capsys.readouterr().err
    # its own plot is replaced (it records who wrote it: png, svg, pdf, ps, eps): by the command once, then in
    # every format that can by the checks and the writer the command calls (each command ablates again)
    assert cli(["importance", str(out), "--layers", "classifier.4", "-q", "--plot", str(png)]) == 0
    assert b"sketchmine plot file" in png.read_bytes()
    for fmt in ("png", "svg", "pdf", "eps"):
        plot = tmp_path / f"again.{fmt}"
        for _ in range(2):
            check_plot_path(plot)
            save_figure(plot_importance(run, ["classifier.4"], 5), plot)
        assert b"sketchmine plot file" in plot.read_bytes()


def test_residual_block_output_is_cut_and_equals_direct(tmp_path):
    """A whole BasicBlock of the embedded ResNet is ablated at its output (after the addition)."""
    from sketchmine.model.models import preprocessing_for
    from sketchmine.model.models import load_model

    loaded = load_model("demo-resnet")
    base = animal_shape("test", preprocessing_for(loaded))
    keep = np.arange(0, 2000, 10)
    ds = ArrayDataset(base.images[keep], base.labels()[keep], base.class_names, base.preprocessing, {"kind": "python"})
    run = sketchmine.mine(loaded.module, ds, layers=["layer2.0"], k=2, out=tmp_path / "r.zarr", batch_size=100)
    df = sketchmine.unit_importance(run, "layer2.0", model=loaded.module, dataset=ds, batch_size=100)
    _check_units(df, loaded.module, ds, "layer2.0", sorted({1, int(df["unit"].iloc[0])}), ds.labels(), "split")


def test_a_writer_started_during_an_ablation_pass_is_refused_not_the_pass(mined, demo_model, small_test_set):
    """`importance` checked the run's lock, computed for minutes without it, then took it to write:
    a `visualize` started meanwhile took the run, and importance's work was refused at its end,
    storing nothing. The pass now holds the run shared while it computes: the writer is refused
    (told why), the pass stores its result, and the run is free again after it."""
    from sketchmine.passes.effects import EffectsPass
    from sketchmine.passes.importance import ImportancePass

    for make in (lambda: ImportancePass(mined, ["classifier.4"], demo_model.module, small_test_set, batch_size=150),
                 lambda: EffectsPass(mined, ["classifier.4"], demo_model.module, small_test_set, batch_size=150)):
        computing = make()
        with pytest.raises(SketchmineError, match="held by an importance or effects pass of this process that has "
                                                  "not finished"):  # (another process's writer: test_kill)
            sketchmine.visualize(mined, ["features.3"], model=demo_model.module, data=small_test_set)
        assert list(computing) == ["classifier.4"]  # stored, not refused
        with RunLock(mined.path):  # and let go
            pass
    run = sketchmine.open_run(mined.path)
    assert run.has_importance("classifier.4") and run.has_unit_effects("classifier.4") and run.patches_done("features.3") == 0


class TimeEmbedded(nn.Module):
    """Frames → a per-step Linear (the ablated layer) plus a time embedding of arange(T) computed
    before it, which has no batch dim → GRU → classes; `count` reads the batch size before the
    layer and uses it after (a value the split cannot replicate: whole-model replication)."""

    def __init__(self, count: bool) -> None:
        super().__init__()
        self.count = count
        self.temb = nn.Embedding(16, 8)
        self.embed = nn.Linear(28 * 28, 8)
        self.gru = nn.GRU(8, 6, batch_first=True)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        n, te = x.shape[0], self.temb(torch.arange(x.shape[1]))  # (T, 8): the same for every batch
        out, h = self.gru(torch.tanh(self.embed(x.flatten(2))) + te)
        return self.fc(h[-1].reshape(n, -1) if self.count else h[-1])


@pytest.mark.parametrize("count, method", [(False, "split"), (True, "replicate")])
def test_a_value_before_the_layer_without_the_batch_is_not_replicated(tmp_path, count, method):
    """A (T, F) time embedding is replicated only where it holds the batch: the split method
    replicated whatever had a first dim divisible by the chunk's size, so a last chunk of one
    image (41 = 5·8 + 1) replicated the (4, 8) embedding and the pass crashed at its end."""
    from sketchmine.data.sequences import SequenceDataset

    torch.manual_seed(0)
    net = TimeEmbedded(count).eval()
    base = animal_shape("test", Preprocessing("model", 1, None, (0.27,), (0.41,)))
    ds = SequenceDataset(ArrayDataset(base.images[:41], base.labels()[:41], base.class_names, base.preprocessing,
                                      {"kind": "python"}), 4)
    run = sketchmine.mine(net, ds, layers=["embed"], k=3, out=tmp_path / "r.zarr", batch_size=8)
    df = sketchmine.unit_importance(run, "embed", model=net, dataset=ds, batch_size=8, units_per_pass=3)
    assert df.attrs["method"] == method and df.attrs["images"] == 41
    labels = ds.labels()
    base_p, base_ok = direct(net, ds, "embed", None, labels)
    rows = df.set_index("unit")
    for u in range(8):
        p, ok = direct(net, ds, "embed", u, labels, unit_dim=2)
        assert rows.loc[u, "prob_drop"] == pytest.approx((base_p - p).mean(), abs=1e-6), u
        assert rows.loc[u, "acc_drop"] == pytest.approx(base_ok.mean() - ok.mean(), abs=1e-12), u
    assert rows["prob_drop"].abs().max() > 1e-3  # the ablation moves the correct class's probability
