"""The passes after mining on recurrent models, against brute force: ablation (importance and
effects) of a recurrent unit reaches a model that reads the final hidden state h_n, and a
per-step Linear after a time-first GRU keeps the layout the run recorded when a chunk holds as
many images as steps (importance, effects, traces)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.data.resolve import as_miner_dataset
from sketchmine.data.sequences import SequenceDataset
from sketchmine.passes.ablation import ablation_importance
from sketchmine.passes.traces import layer_traces
from tests.test_time_first import T, Drawings, TimeFirst

PRE = Preprocessing("model", 1, None, (0.2728,), (0.4056,))
RECURRENT = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


@pytest.fixture(scope="module")
def drawings():
    """40 real test silhouettes (4 per class) drawn progressively in 4 steps."""
    ds = animal_shape("test")
    keep = np.sort(np.concatenate([np.nonzero(ds.labels() == c)[0][:4] for c in range(10)]))
    base = ArrayDataset(ds.images[keep], ds.labels()[keep], ds.class_names, PRE,
                        {"kind": "embedded", "name": "animal_shape", "split": "test", "subset": "4 per class"})
    return SequenceDataset(base, 4)


class Reader(nn.Module):
    """Frames → embedding → a recurrent layer → classes, read from out[:, -1] or from the last
    layer's h_n (both directions); `untraceable` hides it from torch.fx (data-dependent branch)."""

    def __init__(self, kind: str, readout: str, bidirectional: bool, layers: int, untraceable: bool) -> None:
        super().__init__()
        self.readout, self.untraceable = readout, untraceable
        self.embed = nn.Linear(28 * 28, 16)
        self.rnn = RECURRENT[kind](16, 8, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(8 * (2 if bidirectional else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.untraceable and x.sum() < -1e9:
            x = -x
        out, state = self.rnn(torch.relu(self.embed(x.flatten(2))))
        h = state[0] if isinstance(self.rnn, nn.LSTM) else state  # not isinstance(state): fx traces a Proxy
        d = 2 if self.rnn.bidirectional else 1
        return self.fc(out[:, -1] if self.readout == "out" else h[-d:].transpose(0, 1).flatten(1))


def brute_logits(net: Reader, x: torch.Tensor, unit: int | None) -> torch.Tensor:
    """Logits with `unit` zeroed by hand in both outputs: output[0] at every step and the last
    layer's h_n (unit = direction * H + hidden index); an LSTM's c_n as it is."""
    d, hid = (2 if net.rnn.bidirectional else 1), net.rnn.hidden_size

    def hook(module, inputs, output):
        out, state = output
        h = (state[0] if isinstance(state, tuple) else state).clone()
        out = out.clone()
        out[..., unit] = 0
        h[h.shape[0] - d + unit // hid, :, unit % hid] = 0
        return out, ((h, state[1]) if isinstance(state, tuple) else h)

    handle = net.rnn.register_forward_hook(hook) if unit is not None else None
    try:
        with torch.no_grad():
            return net(x).double()
    finally:
        if handle is not None:
            handle.remove()


@pytest.mark.parametrize("kind, readout, bidirectional, layers, untraceable", [
    ("gru", "hn", False, 1, False), ("gru", "out", False, 1, False), ("lstm", "hn", True, 2, False),
    ("rnn", "hn", False, 2, False), ("gru", "hn", True, 2, True), ("lstm", "hn", False, 1, True)])
def test_a_recurrent_unit_is_zeroed_in_h_n_too(tmp_path, drawings, kind, readout, bidirectional, layers,
                                               untraceable):
    torch.manual_seed(0)
    net = Reader(kind, readout, bidirectional, layers, untraceable).eval()
    x = torch.stack([drawings[i][1] for i in range(len(drawings))])
    y = torch.as_tensor(drawings.labels())
    run = sketchmine.mine(net, drawings, layers=["rnn"], k=3, out=tmp_path / "r.zarr", batch_size=16)
    imp = sketchmine.unit_importance(run, "rnn", model=net, dataset=drawings, batch_size=16, units_per_pass=3)
    eff = sketchmine.unit_effects(run, "rnn", model=net, data=drawings, batch_size=16, units_per_pass=5)
    attrs = imp.attrs
    imp = imp.set_index("unit")
    logit_delta = run.store.read("layers/rnn/effects/logit_delta")
    clean = brute_logits(net, x, None)
    p0 = torch.softmax(clean, 1).gather(1, y[:, None])[:, 0]
    biggest = 0.0
    for u in range(logit_delta.shape[0]):
        zeroed = brute_logits(net, x, u)
        want = (zeroed - clean).mean(0).numpy()
        np.testing.assert_allclose(logit_delta[u], want, rtol=1e-5, atol=1e-6, err_msg=f"unit {u}")
        p = torch.softmax(zeroed, 1).gather(1, y[:, None])[:, 0]
        assert imp.loc[u, "prob_drop"] == pytest.approx(float((p0 - p).mean()), abs=1e-7)
        want_acc = float((clean.argmax(1) == y).double().mean() - (zeroed.argmax(1) == y).double().mean())
        assert imp.loc[u, "acc_drop"] == pytest.approx(want_acc, abs=1e-9)
        biggest = max(biggest, float(np.abs(want).max()))
    assert biggest > 1e-2  # the ablation moves the logits: a test that cannot pass with h_n untouched
    method = "replicate" if untraceable else "split"
    assert attrs["method"] == eff.attrs["method"] == method and "h_n" in attrs["ablation"]


# ---- a per-step Linear after a time-first GRU: chunks of T images --------------------------------
def time_first_case(n: int):
    torch.manual_seed(0)
    net = TimeFirst().eval()
    images = animal_shape("test").images[:n * T].astype(np.float32) / 255  # real silhouettes as frames
    x = torch.from_numpy(images).view(n, T, 1, 28, 28)[..., ::3, ::3].contiguous()
    return net, x


def brute_time_first(net: TimeFirst, x: torch.Tensor, labels: np.ndarray):
    """Per unit: prob_drop and logit change when head unit u is zeroed at every step (the model
    reads the last step: logit u set to 0), and the images' maxima over the steps (N, 3)."""
    with torch.no_grad():
        per_step = net.steps(x)  # (T, N, 3)
        clean = net(x).double()
    y = torch.as_tensor(labels)
    p0 = torch.softmax(clean, 1).gather(1, y[:, None])[:, 0]
    prob, delta = [], []
    for u in range(3):
        z = clean.clone()
        z[:, u] = 0
        prob.append(float((p0 - torch.softmax(z, 1).gather(1, y[:, None])[:, 0]).mean()))
        delta.append((z - clean).mean(0).numpy())
    return np.array(prob), np.array(delta), per_step.amax(0).numpy(), (clean.argmax(1) == y).numpy()


@pytest.mark.parametrize("batch_size", [8, T])  # 12 drawings: a last chunk of T images; every chunk T images
def test_time_first_importance_and_effects_keep_the_recorded_layout(tmp_path, batch_size):
    n = 12
    net, x = time_first_case(n)
    labels = np.arange(n) % 3  # Drawings' labels
    run = sketchmine.mine(net, Drawings(x), layers=["head"], k=3, out=tmp_path / "r.zarr", batch_size=5)
    prob, delta, maxima, ok = brute_time_first(net, x, labels)
    assert 0 < ok.sum() < n
    df = sketchmine.unit_importance(run, "head", model=net, dataset=Drawings(x), batch_size=batch_size,
                                    units_per_pass=1).set_index("unit").sort_index()
    np.testing.assert_allclose(df["mean_act_correct"], maxima[ok].mean(0), rtol=1e-5)
    np.testing.assert_allclose(df["mean_act_wrong"], maxima[~ok].mean(0), rtol=1e-5)
    np.testing.assert_allclose(df["prob_drop"], prob, atol=1e-7)
    sketchmine.unit_effects(run, "head", model=net, data=Drawings(x), batch_size=batch_size, units_per_pass=2)
    np.testing.assert_allclose(run.store.read("layers/head/effects/logit_delta"), delta, rtol=1e-5, atol=1e-6)


def test_time_first_ablation_without_the_run_probes_one_image(tmp_path):
    """Called without the run's attributes, the pass finds the layout as the miner does."""
    n = 12
    net, x = time_first_case(n)
    labels = np.arange(n) % 3
    prob, _, maxima, ok = brute_time_first(net, x, labels)
    got = ablation_importance(net, as_miner_dataset(Drawings(x), None), "head", labels, batch_size=T, units_per_pass=1)
    np.testing.assert_allclose(got.mean_act_correct, maxima[ok].mean(0), rtol=1e-5)
    np.testing.assert_allclose(got.prob_drop, prob, atol=1e-7)


def test_time_first_traces_keep_the_recorded_layout(tmp_path):
    net, x = time_first_case(T)  # as many drawings (the top-k's distinct images) as steps
    run = sketchmine.mine(net, Drawings(x), layers=["head"], k=3, out=tmp_path / "r.zarr", batch_size=2)
    _, index, _ = run.topk("head")
    assert len(np.unique(index[index >= 0])) == T
    arrays, attrs = layer_traces(run, "head", net, as_miner_dataset(Drawings(x), None))
    with torch.no_grad():
        per_step = net.steps(x)  # (T, N, 3)
    want = np.stack([[per_step[:, int(index[u, r]), u].numpy() for r in range(3)] for u in range(3)])
    np.testing.assert_allclose(next(iter(arrays.values())), want, rtol=1e-5, atol=1e-6)
    assert attrs["steps"] == T


def test_a_layer_over_time_names_each_entry_s_step_in_the_tables(tmp_path, drawings):
    """A recurrent layer's top-k position is its step, kept in `x` (the report converted it, the
    DataFrame and `unit --json` left readers to know that): both carry a `step` column now,
    which the embedding's per-step Linear has too and no layer without time has."""
    from sketchmine.results.unit_summary import LayerSummary

    torch.manual_seed(0)
    net = Reader("gru", "out", False, 1, False).eval()
    run = sketchmine.mine(net, drawings, layers=["embed", "rnn", "fc"], k=3, out=tmp_path / "r.zarr", batch_size=16)
    for layer in ("embed", "rnn"):
        table = run.unit_table(layer)
        _, index, yx = run.topk(layer)
        assert list(table.columns[:7]) == ["unit", "rank", "image_index", "value", "y", "x", "step"]
        np.testing.assert_array_equal(table["step"], yx[..., 1][index >= 0])
        assert table["step"].between(0, 3).all() and table["step"].nunique() > 1  # 4 steps, not all the last
        entries = LayerSummary(run, layer).unit(2)["top"]
        assert [e["step"] for e in entries] == table[table.unit == 2]["step"].tolist()
    assert "step" not in run.unit_table("fc").columns
    assert all("step" not in e for e in LayerSummary(run, "fc").unit(2)["top"])


class ColumnReader(nn.Module):
    """A CRNN: a conv, then a GRU over the image's columns (a text recogniser's reader)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gru, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.GRU(4 * 28, 8, batch_first=True), \
            nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = self.conv(x).permute(0, 3, 1, 2).flatten(2)  # (N, W, C·H)
        out, _ = self.gru(columns)
        return self.head(out[:, -1])


def test_a_recurrent_layer_over_an_images_columns_is_positioned_by_them_not_by_steps(tmp_path):
    """Its T is the image's columns, not the steps of a drawing: the views said "t=13 of 28" and
    asked for the drawing at each step, of a dataset with no steps."""
    ds = animal_shape("test")
    images = ArrayDataset(ds.images[:40], ds.labels()[:40], ds.class_names, Preprocessing("model", 1, None, (0.27,),
                                                                                          (0.41,)))
    torch.manual_seed(0)
    run = sketchmine.mine(ColumnReader().eval(), images, layers=["gru"], k=3, out=tmp_path / "r.zarr")
    attrs = run.layer_attrs("gru")
    assert (attrs["position"], attrs["yx"], attrs["shape"]) == ("tokens", "(0, token)", [8, 28])
    assert "step" not in run.unit_table("gru").columns
