"""Recurrent heads: progressive drawings, top-k over (N, T, H) = brute force, LSTM cell states,
and the bad inputs (packed sequences, a recurrent layer called twice)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape
from sketchmine.errors import SketchmineError
from sketchmine.data.sequences import SequenceDataset, pixel_order, progressive_batch, progressive_drawing
from sketchmine.model.zoo import SketchGRU
from tests.helpers import brute_topk

PRE = Preprocessing("model", 1, None, (0.2728,), (0.4056,))


@pytest.fixture(scope="module")
def images():
    """60 real test silhouettes, 6 per class."""
    ds = animal_shape("test")
    keep = np.sort(np.concatenate([np.nonzero(ds.labels() == c)[0][:6] for c in range(10)]))
    return ds.images[keep], ds.labels()[keep], ds.class_names


@pytest.fixture(scope="module")
def seq_set(images):
    im, lab, names = images
    return SequenceDataset(ArrayDataset(im, lab, names, PRE, {"kind": "embedded", "name": "animal_shape",
                                                              "split": "test", "subset": "6 per class"}), 8)


# ---- the progressive-drawing transform --------------------------------------------------------
def test_drawing_is_deterministic_and_ends_with_the_full_image(images):
    im = images[0]
    a, b = progressive_batch(im, 8), progressive_batch(im.copy(), 8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, -1], im)
    assert a.shape == (len(im), 8, 28, 28) and a.dtype == np.uint8
    for steps in (1, 3, 5):
        np.testing.assert_array_equal(progressive_batch(im[:10], steps)[:, -1], im[:10])


def test_drawing_grows_outline_first_then_fill(images):
    im = images[0]
    seq = progressive_batch(im, 8)
    shown = seq > 0
    assert (shown[:, 1:] >= shown[:, :-1]).all()          # a pixel once drawn stays drawn
    assert (seq[shown] == np.broadcast_to(im[:, None], seq.shape)[shown]).all()  # with its own value
    counts = shown.sum(axis=(2, 3))
    assert (np.diff(counts, axis=1) > 0).mean() > 0.95      # nearly every step adds ink
    for i in range(0, len(im), 7):
        order, outline = pixel_order(im[i])
        assert sorted(order.tolist()) == np.flatnonzero(im[i] > 0).tolist()  # every ink pixel exactly once
        fg = np.pad(im[i] > 0, 1)
        interior = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
        first_half = np.flatnonzero(shown[i, 3].reshape(-1))  # step 4 of 8: the outline, complete
        assert not interior.reshape(-1)[first_half].any() and len(first_half) == outline


def test_sequence_dataset_normalises_each_frame(seq_set, images):
    i, x, y, note = seq_set[5]
    assert x.shape == (8, 1, 28, 28) and y == images[1][5] and note == ""
    want = (torch.from_numpy(progressive_drawing(images[0][5], 8)).float() / 255 - 0.2728) / 0.4056
    torch.testing.assert_close(x[:, 0], want)
    assert seq_set.fingerprint() != SequenceDataset(seq_set.base, 6).fingerprint()


# ---- taps on recurrent outputs ---------------------------------------------------------------
def assert_topk(run, name, acts, k, positions=True):
    """Run's top-k of `name` equals the brute force over acts (N, units, *positions): same values;
    the same images except where two images tie to within float rounding (the forward pass
    may round the last bit differently for an image's place in the batch)."""
    values, index, yx = run.topk(name)
    bv, bi, bp = brute_topk(acts, k)
    np.testing.assert_allclose(values, bv, rtol=1e-5, atol=1e-6, err_msg=name)
    best = acts.flatten(2).amax(2) if acts.ndim > 2 else acts
    c, r = np.nonzero(index != bi)
    np.testing.assert_allclose(best[index[c, r], c].numpy(), bv[c, r], rtol=1e-5, atol=1e-6, err_msg=name)
    assert len(c) <= 0.02 * index.size, name
    same = index == bi
    if positions and acts.ndim > 2:
        width = run.layer_shape(name)[-1]
        np.testing.assert_array_equal((yx[..., 0] * width + yx[..., 1])[same], bp[same], err_msg=name)


def _hooked(model, ds, names):
    """Raw outputs of the named modules over the dataset, plain forward hooks (no sketchmine)."""
    outs = {n: [] for n in names}
    mods = dict(model.named_modules())
    def keep(o):  # a copy: an in-place ReLU after the module would change the tensor
        return o.clone() if isinstance(o, torch.Tensor) else type(o)(keep(e) for e in o)

    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs[n].append(keep(o))) for n in names]
    logits = []
    try:
        with torch.inference_mode():
            for s in range(0, len(ds), 16):
                logits.append(model(torch.stack([ds[i][1] for i in range(s, min(s + 16, len(ds)))])))
    finally:
        for h in hs:
            h.remove()
    return outs, torch.cat(logits)


def test_gru_topk_over_time_equals_brute_force(tmp_path, seq_set):
    torch.manual_seed(0)
    net = SketchGRU().eval()
    layers = ["features.6", "gru", "classifier"]
    run = sketchmine.mine(net, seq_set, layers=layers, k=5, out=tmp_path / "r.zarr", batch_size=16)
    outs, _ = _hooked(net, seq_set, ["features.6", "gru", "classifier"])
    n, t = len(seq_set), 8
    hidden = torch.cat([o[0] for o in outs["gru"]])                       # (N, T, H)
    conv = torch.cat(outs["features.6"])                                  # (N*T, C, 7, 7)
    conv = conv.view(n, t, *conv.shape[1:]).transpose(1, 2)               # (N, C, T, 7, 7)
    cases = {"gru": hidden.transpose(1, 2), "features.6": conv,
             "classifier": torch.cat(outs["classifier"]).transpose(1, 2)}
    for name, acts in cases.items():
        assert_topk(run, name, acts, 5)
    _, _, yx = run.topk("gru")
    assert (yx[..., 0] == 0).all() and yx[..., 1].max() < t and run.layer_shape("gru") == (64, 8)
    attrs = run.store.group["layers/gru"].attrs
    assert attrs["kind"] == "gru" and attrs["position"] == "time" and attrs["tapped"].startswith("output[0]")
    assert run.store.group["layers/features.6"].attrs["time_steps"] == 8


class SeqFirstLSTM(nn.Module):
    """Frames → linear → 2-layer bidirectional LSTM (batch_first=False) → class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(28 * 28, 24)
        self.lstm = nn.LSTM(24, 12, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        f = torch.relu(self.embed(x.flatten(2)))       # (N, T, 24)
        out, (h, c) = self.lstm(f.transpose(0, 1))     # (T, N, 24)
        return self.fc(out[-1])


def test_lstm_hidden_and_cell_states(tmp_path, seq_set):
    torch.manual_seed(1)
    net = SeqFirstLSTM().eval()
    run = sketchmine.mine(net, seq_set, k=4, out=tmp_path / "r.zarr", batch_size=16)
    assert run.layers == ["embed", "lstm", "lstm.cell", "fc", "softmax"]
    outs, logits = _hooked(net, seq_set, ["lstm"])
    hidden = torch.cat([o[0] for o in outs["lstm"]], dim=1).permute(1, 2, 0)        # (N, 2H, T)
    cell = torch.cat([o[1][1][-2:].permute(1, 0, 2).flatten(1) for o in outs["lstm"]])  # (N, 2H)
    for name, acts in {"lstm": hidden, "lstm.cell": cell}.items():
        assert_topk(run, name, acts, 4)
    assert run.layer_shape("lstm.cell") == (24,)
    assert run.store.group["layers/lstm.cell"].attrs["kind"] == "lstm_cell"
    assert "(T, N, H)" in run.store.group["layers/lstm"].attrs["tapped"]
    # the taps read the model's outputs without changing them
    np.testing.assert_allclose(np.asarray(run.store.group["eval/logits"][...]), logits.numpy(), rtol=1e-6)
    # visualized: the cell state's deconvolution is autograd from c_n through the real LSTM
    from sketchmine.passes.visualize import patches_of

    run = sketchmine.visualize(run, ["lstm.cell", "lstm"], model=net, data=seq_set, method="gradient", max_units=2)
    _, index, _ = run.topk("lstm.cell")
    for u in range(2):
        got = patches_of(run, "lstm.cell", u)["deconv"]
        for j in range(4):
            x = seq_set[int(index[u, j])][1][None].clone().requires_grad_(True)
            _, (_, c) = net.lstm(torch.relu(net.embed(x.flatten(2))).transpose(0, 1))
            (grad,) = torch.autograd.grad(c[-2:].permute(1, 0, 2).flatten(1)[0, u], x)
            sig = grad[0].sum(0)[0]
            want = (128 + 127 * sig / sig.abs().max()).round().clamp(0, 255).numpy()
            assert np.abs(got[j, ..., 0].astype(int) - want.astype(int)).max() <= 1, (u, j)


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(28 * 28, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        f = x.flatten(2)
        lengths = torch.full((f.shape[0],), f.shape[1], dtype=torch.int64)
        out, h = self.gru(nn.utils.rnn.pack_padded_sequence(f, lengths, batch_first=True))
        return self.fc(h[-1])


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(28 * 28, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        out, _ = self.gru(x.flatten(2))
        out, _ = self.gru(out.repeat(1, 1, 98))
        return self.fc(out[:, -1])


class CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(28 * 28, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t].flatten(1), h)
        return self.fc(h)


@pytest.mark.parametrize("model,layer,message", [
    (Packed, "gru", r"layer 'gru' returns a PackedSequence"),
    (Twice, "gru", r"layer 'gru' \(2 calls\) is called more than once per forward"),
    (CellLoop, "cell", r"'cell' \(\d+ calls\) is called more than once.*recurrent cell unrolled over time"),
])
def test_bad_recurrent_layers_are_refused(tmp_path, seq_set, model, layer, message):
    torch.manual_seed(0)
    with pytest.raises(SketchmineError, match=message):
        sketchmine.mine(model().eval(), seq_set, layers=[layer], out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
    run = sketchmine.mine(model().eval(), seq_set, layers=["fc"], out=tmp_path / "ok.zarr", k=2)  # others still work
    assert run.complete


def test_embedded_gru_model_mined_and_ablated(tmp_path):
    """The trained CNN + GRU ('demo-gru') over the whole test split as progressive drawings:
    better than chance, and `sketchmine importance` reopens the run's sequences by itself."""
    from sketchmine.cli.main import main as cli
    from sketchmine.model.models import preprocessing_for
    from sketchmine.model.zoo import load_embedded

    loaded = sketchmine.load_model("demo-gru")
    assert isinstance(loaded.module, SketchGRU) and loaded.preprocessing["mean"]
    meta = load_embedded("demo-gru")[1]
    assert meta["sequence"]["steps"] == 8
    ds = SequenceDataset(animal_shape("test", preprocessing_for(loaded)), 8)
    run = sketchmine.mine("demo-gru", ds, layers=["gru"], out=tmp_path / "r.zarr", k=3, batch_size=250)
    assert run.accuracy() == pytest.approx(meta["test_accuracy"], abs=0.002)  # the recorded test accuracy
    assert run.accuracy() > 0.5 and run.layer_shape("gru") == (64, 8)
    assert cli(["importance", str(run.path), "--layers", "gru", "-n", "3"]) == 0
    df = sketchmine.open_run(run.path).unit_importance("gru")
    assert len(df) == 64 and df.attrs["method"] == "split" and df.attrs["images"] == 2000
    assert df["acc_drop"].max() > 0  # some hidden unit matters for the label


def test_visualize_a_sequence_run(tmp_path):
    """The trained CNN + GRU visualized: a conv unit of its time-distributed CNN gets the receptive
    field of the frame at its step (fields per frame, from the graph), a hidden unit or per-step
    linear unit the drawing at the step it peaked, the softmax the last step; each deconvolution
    (gradient rule) is autograd through the real model from that unit, summed over the frames, its max
    pools' switches by the documented tie rule (test_zoo_deconv's own reference of it: autograd's own
    switch follows the rounding of the conv before it over the blank background)."""
    from sketchmine.model.models import preprocessing_for
    from sketchmine.passes.visualize import patches_of
    from tests.deconv_reference import Rules as tie_rule

    loaded = sketchmine.load_model("demo-gru")
    pre = preprocessing_for(loaded)
    base = animal_shape("test", pre)
    keep = np.sort(np.concatenate([np.nonzero(base.labels() == c)[0][:4] for c in range(10)]))
    sub = ArrayDataset(base.images[keep], base.labels()[keep], base.class_names, pre,
                       {"kind": "python", "subset": "4 per class"})
    ds = SequenceDataset(sub, 8)
    layers = ["features.3", "embed.0", "gru", "softmax"]
    run = sketchmine.mine("demo-gru", ds, layers=layers, out=tmp_path / "r.zarr", k=3)
    rf = run.store.group["layers/features.3"].attrs["receptive_field"]
    assert rf == {"size": [10, 10], "stride": [2, 2], "offset": [-4, -4]}  # per 28-px frame, as for one image
    field = sketchmine.receptive_fields(loaded, (8, 1, 28, 28))["features.3"]  # a sample's size, as mine takes it
    assert field == sketchmine.receptive_fields(loaded, (1, 28, 28), leading=(8,))["features.3"]  # (it was refused)
    assert (list(field.size), list(field.stride), list(field.offset)) == (rf["size"], rf["stride"], rf["offset"])
    units = 2
    run = sketchmine.visualize(run, data=ds, method="gradient", max_units=units)
    net = loaded.module
    # a run mined before fields were computed per frame: the conv layer is refused by name
    import shutil

    import zarr
    old = shutil.copytree(run.path, tmp_path / "old.zarr")
    del zarr.open_group(str(old), mode="r+").attrs["attribute_sums"]  # recorded after fields per frame
    g = zarr.open_group(str(old), mode="r+")["layers/features.3"]
    g.attrs.update({"receptive_field": None})
    with pytest.raises(SketchmineError, match="'features.3'.*time-distributed conv.*no receptive field"):
        sketchmine.visualize(old, ["features.3"], data=ds, redo=True)
    # the checked entries peak before the last step, so the step really selects the frame and the unit
    assert set(run.topk("gru")[2][:units, :, 1].ravel().tolist()) - {7}
    frame_h = run.layer_shape("features.3")[1] // 8
    for name in layers:
        _, index, yx = run.topk(name)
        for u in range(units):
            got = patches_of(run, name, u)
            for j in range(3):
                i = int(index[u, j])
                if name == "features.3":
                    step, y, x0 = int(yx[u, j, 0]) // frame_h, int(yx[u, j, 0]) % frame_h, int(yx[u, j, 1])
                    top, left = -4 + 2 * y, -4 + 2 * x0
                else:
                    step = int(yx[u, j, 1]) if name != "softmax" else 7
                    top, left = 0, 0
                size = 10 if name == "features.3" else 28
                assert got["patches"].shape == (3, size, size, 1)
                assert got["boxes"][j].tolist() == [top, left, top + size - 1, left + size - 1]
                # the patch: the drawing at that step under the box (0 outside the frame)
                frame = np.pad(progressive_drawing(np.asarray(sub.images[i]), 8)[step], 10)
                want = frame[top + 10:top + 10 + size, left + 10:left + 10 + size]
                np.testing.assert_array_equal(got["patches"][j, ..., 0], want)
                # the deconvolution: d unit / d input through the real model, summed over the frames
                xin = ds[i][1][None].clone().requires_grad_(True)
                seen: list[torch.Tensor] = []
                hook = None if name == "softmax" else dict(net.named_modules())[name].register_forward_hook(
                    lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
                try:
                    with tie_rule("gradient"):
                        logits = net(xin)
                finally:
                    if hook is not None:
                        hook.remove()
                if name == "softmax":
                    value = torch.softmax(logits, 1)[0, u]
                elif name == "features.3":  # frames folded into the batch: (T, C, h, w)
                    value = seen[0][step, u, y, x0]
                else:  # embed.0 runs on the folded frames, (T, F); the GRU on (1, T, H)
                    value = seen[0][step, u] if seen[0].ndim == 2 else seen[0][0, step, u]
                (grad,) = torch.autograd.grad(value, xin)
                sig = np.pad(grad[0].sum(0)[0].numpy(), 10)[top + 10:top + 10 + size, left + 10:left + 10 + size]
                peak = np.abs(sig).max()
                assert peak > 0, (name, u, j)
                want_d = np.clip(np.round(128 + 127 * sig / peak), 0, 255)
                assert np.abs(got["deconv"][j, ..., 0].astype(int) - want_d.astype(int)).max() <= 1, (name, u, j)
    # the slides say each patch's step, as the cards do (UX audit: a GRU slide showed none), and name an
    # output unit by its class
    from sketchmine.present.montage import unit_montage

    def texts(fig):
        return [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]

    _, index, yx = run.topk("gru")
    said = [t for t in texts(unit_montage(run, "gru", 1)) if t]
    for j in range(3):
        assert any(t.endswith(f"  t={int(yx[1, j, 1]) + 1}") and t.startswith(run.class_names[run.labels[index[1, j]]][:10])
                   for t in said), (j, said)
    captions = [t for ax in unit_montage(run, "gru", 1).axes for t in ax.texts if t.get_text()]
    assert len({t.get_fontsize() for t in captions}) == 1  # one size a slide (the longest caption's)
    assert any(t.startswith(f"softmax · unit 1 · {run.class_names[1]}") for t in texts(unit_montage(run, "softmax", 1)))
    assert "mean of image maxima" in said  # the dashboard's words


class _Stop(Exception):
    pass


def test_gru_run_keeps_class_statistics_and_resumes_identically(tmp_path, images):
    """Progressive drawings (5-D input) keep the unbiased class statistics like still images: the
    per-class mean of each hidden unit's image maximum over every labelled drawing (a forward
    with plain hooks recomputes it), and the ink density of the whole drawing (its last frame,
    the full image: numpy from the raw pixels). A run stopped after its second flush and
    resumed writes the same arrays bit for bit."""
    from sketchmine.model.models import preprocessing_for
    from tests.helpers import StopAfter

    im, lab, names = images
    pre = preprocessing_for("demo-gru")
    ds = SequenceDataset(ArrayDataset(im, lab, names, pre, {"kind": "embedded", "name": "animal_shape",
                                                            "split": "test", "subset": "6 per class"}), 8)
    run = sketchmine.mine("demo-gru", ds, layers=["gru"], out=tmp_path / "r.zarr", batch_size=16)
    assert run.has_class_stats()
    outs, _ = _hooked(sketchmine.load_model("demo-gru").module.eval(), ds, ["gru"])
    maxima = torch.cat([o[0] for o in outs["gru"]]).amax(dim=1).double().numpy()   # (N, H) over time
    mean, count = run.class_stats("gru")
    np.testing.assert_array_equal(count, np.tile(np.bincount(lab, minlength=10), (64, 1)))
    want = np.stack([maxima[lab == c].mean(0) for c in range(10)], axis=1)
    np.testing.assert_allclose(mean, want, rtol=1e-5, atol=1e-5)
    gray = im.astype(np.float64) / 255
    border = np.concatenate([gray[:, 0], gray[:, -1], gray[:, 1:-1, 0], gray[:, 1:-1, -1]], axis=1)
    bg = np.sort(border, axis=1)[:, (border.shape[1] - 1) // 2]                       # the lower median
    ink = (np.abs(gray - bg[:, None, None]) > 0.5).mean(axis=(1, 2))
    np.testing.assert_allclose(run.ink_density().to_numpy(), [ink[lab == c].mean() for c in range(10)],
                               rtol=1e-6)
    assert run.class_preference("gru")["preference"].notna().all()

    out = tmp_path / "cut.zarr"
    with pytest.raises(_Stop):
        sketchmine.mine("demo-gru", ds, layers=["gru"], out=out, batch_size=16, flush_every=2,
                        progress=StopAfter(3, calls=True, exc=_Stop))
    partial = sketchmine.open_run(out)
    assert not partial.complete and partial.has_class_stats()
    np.testing.assert_array_equal(partial.class_stats("gru")[1][0], np.bincount(lab[:32], minlength=10))
    done = sketchmine.mine("demo-gru", ds, layers=["gru"], out=out, batch_size=16, flush_every=2)
    for a, b in zip(run.class_stats("gru"), done.class_stats("gru")):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(run.ink_density().to_numpy(), done.ink_density().to_numpy())
    np.testing.assert_array_equal(done.dataset_array("class_image_count"), np.bincount(lab, minlength=10))


def test_layers_over_time_show_their_steps(tmp_path, seq_set):
    """A conv layer of the CNN + GRU is stored as (C, T·H, W), one frame under the other: shown as
    that it read "16×224×28", a 224-pixel-high map (UX audit); now its frame and steps."""
    import io

    from rich.console import Console

    from sketchmine.present.console import layers_table
    from sketchmine.results.numbers import shape_text

    run = sketchmine.mine("demo-gru", seq_set, layers=["features.0", "embed.0", "gru", "classifier"],
                          out=tmp_path / "r.zarr", k=3, batch_size=60)
    shown = {layer: shape_text(run.layer_attrs(layer)) for layer in run.layers}
    assert shown == {"features.0": "16×28×28 × 8 steps", "embed.0": "128 × 8 steps", "gru": "64 × 8 steps",
                     "classifier": "10 × 8 steps"}
    console = Console(file=io.StringIO(), width=200)
    console.print(layers_table(run))
    assert "16×28×28 × 8 steps" in console.file.getvalue() and "224" not in console.file.getvalue()
    from sketchmine.present.unit_console import print_unit

    console = Console(file=io.StringIO(), width=200)
    print_unit(run.path, "features.0", 3, console)  # `sketchmine unit`
    assert "conv2d, 16×28×28 × 8 steps" in console.file.getvalue()
