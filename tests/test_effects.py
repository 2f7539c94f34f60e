"""Unit effects and correlated units: batched ablation equals zeroing one unit at a time with
a plain forward hook; the top correlated units equal np.corrcoef of brute-force image maxima
(pairwise over finite maxima), for any block size; the store round trip; the CLI."""
from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sketchmine
from sketchmine.cli.main import main as cli
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.errors import SketchmineError
from sketchmine.stats.correlation import top_correlated
from tests.helpers import per_class_subset

LOGIT_TOL = 2e-5  # abs, on mean logit changes of magnitude ~1-10 (float32 forward, float64 mean)
PROB_TOL = 2e-6   # abs, on mean probability changes


# ---- brute force: plain torch, one unit per full forward ------------------------------------
def _forward(model, ds, hook_module=None, hook=None):
    h = hook_module.register_forward_hook(hook) if hook_module is not None else None
    out = []
    try:
        with torch.inference_mode():
            for s in range(0, len(ds), 100):
                out.append(model(torch.stack([ds[i][1] for i in range(s, min(s + 100, len(ds)))])).double())
    finally:
        if h is not None:
            h.remove()
    return torch.cat(out)


def direct_effect(model, ds, layer, unit, unit_dim=1, element=None):
    """(mean logit change (K,), mean probability change (K,)) of zeroing `unit`: ablated minus clean."""
    mod = dict(model.named_modules())[layer]

    def zero(m, i, o):
        t = (o if element is None else o[element]).clone()
        t.select(unit_dim, unit).zero_()
        return t if element is None else (t, *o[1:])

    clean, ablated = _forward(model, ds), _forward(model, ds, mod, zero)
    return ((ablated - clean).mean(0).numpy(),
            (torch.softmax(ablated, 1) - torch.softmax(clean, 1)).mean(0).numpy())


def brute_maxima(model, ds, layer):
    """(N, C) each map's maximum ignoring NaN (NaN when all NaN), plain hooks."""
    got = []
    _forward(model, ds, dict(model.named_modules())[layer], lambda m, i, o: got.append(o.detach().clone()))
    a = torch.cat(got).double()
    if a.ndim == 2:
        return a.numpy()
    flat = a.flatten(2).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": NaN is the answer there
        return np.nanmax(flat, axis=2)


def brute_r(x: np.ndarray) -> np.ndarray:
    """(C, C) Pearson r by np.corrcoef over each pair's images where both maxima are finite;
    NaN where fewer than two such images or a unit is constant on them."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    r = np.full((c, c), np.nan)
    if np.isfinite(x).all() and len(x) >= 2:  # one np.corrcoef (the loop below gives the same, slower)
        live = np.ptp(x, axis=0) > 0
        r[np.ix_(live, live)] = np.corrcoef(x[:, live], rowvar=False)
        np.fill_diagonal(r, np.nan)
        return r
    for i in range(c):
        for j in range(c):
            ok = np.isfinite(x[:, i]) & np.isfinite(x[:, j])
            a, b = x[ok, i], x[ok, j]
            if i != j and ok.sum() >= 2 and np.ptp(a) > 0 and np.ptp(b) > 0:
                r[i, j] = np.corrcoef(a, b)[0, 1]
    return r


def brute_top(r: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per unit the m partners of largest finite r; equal float32 r: smaller unit index first."""
    c = r.shape[0]
    unit, val = np.full((c, m), -1, np.int32), np.full((c, m), np.nan, np.float32)
    for i in range(c):
        cand = sorted((-np.float32(r[i, j]), j) for j in range(c) if np.isfinite(r[i, j]))[:m]
        unit[i, :len(cand)] = [j for _, j in cand]
        val[i, :len(cand)] = [-v for v, _ in cand]
    return unit, val


def check_top(unit, r, ref_r, m, exact_order=True):
    """`(unit, r)` are the top-m of the reference matrix: each listed r is the reference r of
    that pair, the r's are those of the reference top-m, in order; with exact_order the units
    are the reference's too (data without near-ties)."""
    want_u, want_r = brute_top(ref_r, m)
    np.testing.assert_allclose(r, want_r, atol=1e-5, equal_nan=True)
    assert ((unit >= 0) == (want_u >= 0)).all()
    rows, cols = np.nonzero(unit >= 0)
    np.testing.assert_allclose(r[rows, cols], ref_r[rows, unit[rows, cols]], atol=1e-5)
    assert all(len(set(row[row >= 0])) == (row >= 0).sum() and i not in row for i, row in enumerate(unit))
    tie = (r[:, 1:] == r[:, :-1]) & (unit[:, 1:] >= 0)
    assert (unit[:, 1:][tie] > unit[:, :-1][tie]).all()  # equal r: the smaller unit index first
    if exact_order:
        np.testing.assert_array_equal(unit, want_u)


# ---- effects on the demo model ----------------------------------------------------------------
LAYERS = ["features.10", "classifier.4", "classifier.6"]


@pytest.fixture(scope="module")
def subset(demo_test_set):
    return per_class_subset(demo_test_set, 6, "0:60")


@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, subset):
    out = tmp_path_factory.mktemp("eff") / "run.zarr"
    run = sketchmine.mine(demo_model.module, subset, layers=[*LAYERS, "softmax"], k=3, out=out, batch_size=50)
    sketchmine.unit_effects(run, LAYERS[0], model=demo_model.module, data=subset, batch_size=25, units_per_pass=7)
    sketchmine.unit_effects(run, LAYERS[1:], model=demo_model.module, data=subset, batch_size=25)
    return sketchmine.open_run(out)


@pytest.mark.parametrize("layer,units", [("features.10", [0, 9, 63]), ("classifier.4", [3, 200]),
                                         ("classifier.6", [0, 4])])
def test_batched_effects_equal_one_unit_at_a_time(mined, demo_model, subset, layer, units):
    logit, prob = mined.unit_effects(layer, kind="logit"), mined.unit_effects(layer)
    c = mined.layer_shape(layer)[0]
    assert logit.shape == prob.shape == (c, 10) and list(prob.columns) == subset.class_names
    assert prob.index.name == "unit" and prob.attrs["kind"] == "prob" and logit.attrs["kind"] == "logit"
    assert set(prob.dtypes) == set(logit.dtypes) == {np.dtype(np.float64)}
    assert prob.attrs["images"] == 60 and prob.attrs["method"] == "split"
    assert prob.attrs["units_per_pass"] == (7 if layer == "features.10" else c)  # groups of 7, the last ragged
    np.testing.assert_allclose(prob.sum(axis=1), 0, atol=1e-12)  # probabilities still sum to one
    assert prob.abs().to_numpy().max() > 1e-3  # zeroing changes something
    for u in units:
        want_logit, want_prob = direct_effect(demo_model.module, subset, layer, u)
        np.testing.assert_allclose(logit.loc[u].to_numpy(), want_logit, atol=LOGIT_TOL, err_msg=f"{layer} {u}")
        np.testing.assert_allclose(prob.loc[u].to_numpy(), want_prob, atol=PROB_TOL, err_msg=f"{layer} {u}")


def test_output_layer_units_are_the_classes(mined, demo_model, subset):
    """Zeroing logit c moves logit c by minus its mean and no other logit."""
    logit = mined.unit_effects("classifier.6", kind="logit").to_numpy()
    clean = _forward(demo_model.module, subset).numpy()
    np.testing.assert_allclose(np.diag(logit), -clean.mean(0), rtol=1e-5)
    assert (logit[~np.eye(10, dtype=bool)] == 0).all()


@pytest.mark.parametrize("layer", LAYERS)
def test_correlated_units_equal_corrcoef_of_image_maxima(mined, demo_model, subset, layer):
    unit, r = mined.correlated_units(layer)
    maxima = brute_maxima(demo_model.module, subset, layer)
    assert unit.dtype == np.int32 and r.dtype == np.float32 and unit.shape == (maxima.shape[1], 8)
    check_top(unit, r, brute_r(maxima), 8)
    # the same ranking in several blocks of units (a ragged last one) as in one block
    block = 7 if maxima.shape[1] <= 64 else 50
    one, blocks = top_correlated(maxima.astype(np.float32), 8, 4096), top_correlated(maxima.astype(np.float32), 8, block)
    np.testing.assert_array_equal(one.unit, blocks.unit)
    np.testing.assert_allclose(one.r, blocks.r, atol=1e-6, equal_nan=True)


def test_replicated_ablation_when_the_model_cannot_be_cut(tmp_path, demo_model, subset, caplog):
    class Untraceable(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) if x.sum() > -1e9 else self.inner(-x)

    model = Untraceable(demo_model.module).eval()
    ds = ArrayDataset(subset.images[::5], subset.labels()[::5], subset.class_names, subset.preprocessing,
                      {"kind": "python"})
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        run = sketchmine.mine(model, ds, layers=["inner.features.0"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    assert "no receptive fields recorded" in caplog.text
    df = sketchmine.unit_effects(run, "inner.features.0", model=model, data=ds, batch_size=15, units_per_pass=12)
    assert df.attrs["method"] == "replicate"
    logit = run.unit_effects("inner.features.0", "logit")
    for u in (2, 31):
        want_logit, want_prob = direct_effect(model, ds, "inner.features.0", u)
        np.testing.assert_allclose(df.loc[u].to_numpy(), want_prob, atol=PROB_TOL)
        np.testing.assert_allclose(logit.loc[u].to_numpy(), want_logit, atol=LOGIT_TOL)


def test_recurrent_layer_is_ablated_at_every_step(tmp_path):
    """A GRU hidden unit zeroed in the layer's output at every step; its maxima over the steps."""
    from sketchmine.data.sequences import SequenceDataset
    from sketchmine.model.zoo import SketchGRU

    torch.manual_seed(0)
    net = SketchGRU().eval()
    base = animal_shape("test", Preprocessing("model", 1, None, (0.27,), (0.4,)))
    keep = np.arange(0, 2000, 50)
    ds = SequenceDataset(ArrayDataset(base.images[keep], base.labels()[keep], base.class_names, base.preprocessing,
                                      {"kind": "python"}), 4)
    run = sketchmine.mine(net, ds, layers=["gru"], k=2, out=tmp_path / "r.zarr", batch_size=40)
    df = sketchmine.unit_effects(run, "gru", model=net, data=ds, batch_size=40)
    assert df.attrs["method"] == "split"
    for u in (3, 40):
        _, want_prob = direct_effect(net, ds, "gru", u, unit_dim=2, element=0)
        np.testing.assert_allclose(df.loc[u].to_numpy(), want_prob, atol=PROB_TOL)
    got = []
    _forward(net, ds, net.gru, lambda m, i, o: got.append(o[0].detach().clone()))
    maxima = torch.cat(got).double().amax(dim=1).numpy()  # batch_first (N, T, H): max over steps
    check_top(*run.correlated_units("gru"), brute_r(maxima), 8)


# ---- correlations: NaN maxima and constant units ------------------------------------------------
class MapsWithNaN(nn.Module):
    """5 maps over 28×28 drawings: map 0 constant (zero weights, bias 1); map 1 all NaN on
    images with little ink (NaN maxima there); maps 2-4 ordinary convolutions, map 4 a copy
    of map 2 (r = 1, and a tie for every other unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3)
        with torch.no_grad():
            self.conv.weight[0].zero_()
            self.conv.bias[0] = 1.0
            self.conv.weight[4] = self.conv.weight[2]
            self.conv.bias[4] = self.conv.bias[2]

    def forward(self, x):
        y = self.conv(x)
        ink = x.mean(dim=(1, 2, 3)).view(-1, 1, 1)
        return torch.cat([y[:, :1], torch.where(ink > 0.2, y[:, 1], float("nan")).unsqueeze(1), y[:, 2:]], 1)


class Crafted(nn.Module):
    """A tiny real model: MapsWithNaN, then a linear head reading each map's maximum with
    NaN replaced by 0 (finite logits)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.maps = MapsWithNaN()
        self.head = nn.Linear(5, 10)

    def forward(self, x):
        return self.head(torch.nan_to_num(self.maps(x), nan=0.0).amax(dim=(2, 3)))


def test_nan_maxima_and_constant_units_on_a_crafted_model(tmp_path):
    model = Crafted().eval()
    base = animal_shape("test", Preprocessing("model", 1, None, (0.0,), (1.0,)))
    ds = ArrayDataset(base.images[::25], base.labels()[::25], base.class_names, base.preprocessing, {"kind": "python"})
    run = sketchmine.mine(model, ds, layers=["maps"], k=2, out=tmp_path / "r.zarr", batch_size=30)
    sketchmine.unit_effects(run, "maps", model=model, data=ds, batch_size=30)
    unit, r = run.correlated_units("maps")
    maxima = brute_maxima(model, ds, "maps")
    nan_images = np.isnan(maxima[:, 1])
    assert 5 < nan_images.sum() < len(ds) - 5  # some, not all, maxima of map 1 are NaN
    assert np.ptp(maxima[:, 0]) == 0  # map 0 is constant
    check_top(unit, r, brute_r(maxima), 8)
    assert (unit[0] == -1).all() and np.isnan(r[0]).all() and not (unit == 0).any()  # constant: never listed
    assert unit[2][0] == 4 and unit[4][0] == 2 and r[2][0] == pytest.approx(1.0)  # its copy first
    for i in (1, 3):  # r with 2 and with its copy 4 tie: the smaller unit index first
        at = list(unit[i]).index(2)
        assert unit[i][at + 1] == 4 and r[i][at] == r[i][at + 1]
    attrs = run.unit_effects("maps").attrs
    assert attrs["images"] == len(ds)
    from sketchmine.results.effects import uncorrelated_notes

    assert uncorrelated_notes(run, "maps") == {  # map 0 is constant; some maxima are NaN, so it may be that too
        0: f"constant over the {len(ds)} images, or without two finite image maxima: no correlation"}


whole_or_not = st.one_of(st.integers(-4, 4).map(float), st.sampled_from([np.nan, np.inf, -np.inf]))
"""Small whole numbers (ties, constant units, constant pairs) and non-finite maxima."""


def _maxima(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(1, 25).flatmap(lambda n: st.integers(1, 9).flatmap(lambda c: st.tuples(
        st.lists(st.lists(values, min_size=c, max_size=c), min_size=n, max_size=n),
        st.integers(1, 12), st.integers(1, 10))))


@given(st.one_of(_maxima(whole_or_not), _maxima(st.floats(-1e3, 1e3, width=32))))
def test_top_correlated_equals_pairwise_corrcoef(case):
    """Any shape, ties, constants, NaN and ±inf (excluded pairwise), any block size."""
    rows, m, block = case
    x = np.array(rows, np.float32)
    got = top_correlated(x, m, block)
    check_top(got.unit, got.r, brute_r(x), m, exact_order=False)
    again = top_correlated(x, m, 1024)
    np.testing.assert_allclose(got.r, again.r, atol=1e-5, equal_nan=True)


# ---- runs without labels or without effects, the CLI ------------------------------------------
def test_unlabelled_dataset_and_missing_results(tmp_path, demo_model, subset):
    ds = ArrayDataset(subset.images[:40], np.full(40, -1), subset.class_names, subset.preprocessing,
                      {"kind": "python"})
    run = sketchmine.mine(demo_model.module, ds, layers=["features.0", "classifier.6", "softmax"], k=2,
                          out=tmp_path / "r.zarr", batch_size=20)
    with pytest.raises(SketchmineError, match=r"no unit effects for 'features.0'; compute them with `sketchmine effects"):
        run.unit_effects("features.0")
    with pytest.raises(SketchmineError, match="no correlated units for 'features.0'"):
        run.correlated_units("features.0")
    assert not run.has_unit_effects("features.0")
    with pytest.raises(SketchmineError, match="'softmax' is the model's output"):
        sketchmine.unit_effects(run, ["features.0", "softmax"], model=demo_model.module, data=ds)
    assert not run.has_unit_effects("features.0")  # refused before any computation
    df = sketchmine.unit_effects(run, "features.0", model=demo_model.module, data=ds, batch_size=16)
    want_logit, want_prob = direct_effect(demo_model.module, ds, "features.0", 5)
    np.testing.assert_allclose(df.loc[5].to_numpy(), want_prob, atol=PROB_TOL)  # no labels needed
    assert run.has_unit_effects("features.0")
    with pytest.raises(SketchmineError, match="kind must be one of 'logit', 'prob'"):
        run.unit_effects("features.0", kind="probability")
    with pytest.raises(SketchmineError, match="not in run"):
        sketchmine.unit_effects(run, "features.3", model=demo_model.module, data=ds)
    with pytest.raises(SketchmineError, match="units_per_pass must be a whole number of at least 1"):
        sketchmine.unit_effects(run, "features.0", model=demo_model.module, data=ds, units_per_pass=0)


def test_cli_effects_on_a_mined_folder(tmp_path, demo_test_set, capsys):
    from tests.helpers import image_folder

    image_folder(demo_test_set, tmp_path / "animals", per_class=4)
    out = tmp_path / "run.zarr"
    assert cli(["mine", "--model", "demo", "--data", str(tmp_path / "animals"), "--out", str(out),
                "--layers", "features.0,classifier.6,softmax", "-k", "2"]) == 0
    capsys.readouterr()
    assert cli(["effects", str(out), "--batch-size", "16", "-n", "3"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "features.0 what each unit does" in text and "classifier.6 what each unit does" in text  # the title, joined
    run = sketchmine.open_run(out)
    assert run.has_unit_effects("features.0") and run.has_unit_effects("classifier.6")
    prob = run.unit_effects("classifier.6")
    top = int(prob.abs().max(axis=1).idxmax())
    assert f"{prob.abs().max(axis=1)[top] * 100:.4f}" in text  # the unit moving the output most is listed (in pt)
    assert cli(["effects", str(out), "--layers", "nope"]) == 3  # input refused
    assert "layer 'nope' is not in run" in capsys.readouterr().err
    assert cli(["effects", str(out), "--layers", "softmax"]) == 3
    assert "'softmax' is the model's output" in capsys.readouterr().err


def test_a_constant_unit_says_why_it_has_no_correlated_units(tmp_path, demo_model, subset):
    """Units of the demo read after a ReLU that never fires on these images (features.7) showed
    "none defined" in `sketchmine effects` and "(none)" on their dashboard, without a reason: each
    now says it is constant over the images, and a unit that varies lists its partners."""
    from rich.console import Console

    from sketchmine.present.effects_table import effects_table
    from sketchmine.results.effects import uncorrelated_notes
    from sketchmine.results.unit_summary import unit_summary

    run = sketchmine.mine(demo_model.module, subset, layers=["features.7"], k=3, out=tmp_path / "r.zarr", batch_size=50)
    sketchmine.unit_effects(run, "features.7", model=demo_model.module, data=subset, batch_size=30)
    maxima = brute_maxima(demo_model.module, subset, "features.7")
    constant = np.flatnonzero(np.ptp(maxima, axis=0) == 0)
    assert 0 < len(constant) < maxima.shape[1] - 2  # dead units, and units that vary
    unit, _ = run.correlated_units("features.7")
    np.testing.assert_array_equal(np.flatnonzero((unit < 0).all(axis=1)), constant)
    why = f"constant over the {len(subset)} images: no correlation"
    console = Console(width=400, record=True)
    console.print(effects_table(run, "features.7", n=maxima.shape[1]))
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if line.count("│") > 4}
    assert all(why in rows[str(u)] for u in constant) and "none defined" not in console.export_text()
    varying = int(np.setdiff1d(np.arange(maxima.shape[1]), constant)[0])
    assert why not in rows[str(varying)]
    assert unit_summary(run, "features.7", int(constant[0]))["correlated_none"] == why
    got = unit_summary(run, "features.7", varying)
    assert got["correlated"] and got["correlated_none"] is None
    old = tmp_path / "old.zarr"  # correlations stored before the pass recorded which units are constant
    shutil.copytree(run.path, old)
    group = old / "layers" / "features.7" / "correlated" / "zarr.json"
    meta = json.loads(group.read_text())
    del meta["attributes"]["constant"], meta["attributes"]["attribute_sums"]["constant"]
    group.write_text(json.dumps(meta))
    assert uncorrelated_notes(sketchmine.open_run(old), "features.7") == dict.fromkeys(constant.tolist(), why)
