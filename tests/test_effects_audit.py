"""Effects and importance of models that change tensors in place, against an independent
reference: plain forward hooks zeroing one unit per full forward pass, each on a fresh copy of
the input, the probabilities computed in float64."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sketchmine
from sketchmine.data import ArrayDataset, Preprocessing, animal_shape


class AddInPlace(nn.Module):
    """A residual written `x.add_(branch(x))`: the skip value, computed before `branch`, is
    changed in place after it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x.add_(self.branch(x))
        return self.fc(x.amax(dim=(2, 3)))


class InputInPlace(nn.Module):
    """Normalises its own input in place, as some exported pipelines do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.25).div_(0.5)
        return self.fc(torch.relu(self.conv(x)).amax((2, 3)))


@pytest.fixture(scope="module")
def drawings() -> ArrayDataset:
    base = animal_shape("test", Preprocessing("model", 1, None, (0.0,), (1.0,)))
    keep = np.arange(0, 2000, 40)
    return ArrayDataset(base.images[keep], base.labels()[keep], base.class_names, base.preprocessing,
                        {"kind": "python"})


def reference(model: nn.Module, ds: ArrayDataset, layer: str, units: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per unit (of `units`, default all): mean logit and probability change (ablated minus clean),
    the correct class's probability drop and the accuracy drop, each unit zeroed in its own full
    forward pass."""
    module = dict(model.named_modules())[layer]
    x = torch.stack([ds[i][1] for i in range(len(ds))])
    y = torch.as_tensor(ds.labels())

    def logits(unit: int | None) -> torch.Tensor:
        def zero(m: nn.Module, i: tuple, o: torch.Tensor) -> torch.Tensor:
            o = o.clone()
            o[:, unit] = 0
            return o

        handle = module.register_forward_hook(zero) if unit is not None else None
        try:
            with torch.no_grad():
                return model(x.to(next(model.parameters()).dtype, copy=True)).double()  # a copy, in the model's dtype
        finally:
            if handle is not None:
                handle.remove()

    clean = logits(None)
    p_clean = torch.softmax(clean, 1)
    rows: dict[str, list[np.ndarray]] = {"logit": [], "prob": [], "drop": [], "acc": []}
    for u in range(module.out_channels if hasattr(module, "out_channels") else module.out_features) \
            if units is None else units:
        out = logits(u)
        p = torch.softmax(out, 1)
        rows["logit"].append((out - clean).mean(0).numpy())
        rows["prob"].append((p - p_clean).mean(0).numpy())
        rows["drop"].append((p_clean - p).gather(1, y[:, None]).mean().numpy())
        rows["acc"].append(((clean.argmax(1) == y).double().mean() - (out.argmax(1) == y).double().mean()).numpy())
    return {k: np.array(v) for k, v in rows.items()}


@pytest.mark.parametrize("model_type,layers", [(AddInPlace, ["branch"]), (InputInPlace, ["conv", "fc"])])
@pytest.mark.parametrize("units_per_pass", [None, 1])
def test_a_model_changing_tensors_in_place_is_ablated_as_it_runs(tmp_path, drawings, model_type, layers,
                                                                 units_per_pass):
    """Before, the head's values (the skip tensor of `x.add_(...)`, the model's input) served every
    tail run after one had changed them in place: effects off by 3x the largest true change."""
    torch.manual_seed(1)
    model = model_type().eval()
    run = sketchmine.mine(model, drawings, layers=layers, k=2, out=tmp_path / "r.zarr", batch_size=20)
    sketchmine.unit_effects(run, layers, model=model, data=drawings, batch_size=15, units_per_pass=units_per_pass)
    sketchmine.unit_importance(run, layers, model=model, data=drawings, batch_size=15, units_per_pass=units_per_pass)
    run = sketchmine.open_run(run.path)
    for layer in layers:
        want = reference(model, drawings, layer)
        assert np.abs(want["logit"]).max() > 1e-2  # zeroing changes the output
        np.testing.assert_allclose(run.unit_effects(layer, "logit").to_numpy(), want["logit"], atol=2e-6)
        np.testing.assert_allclose(run.unit_effects(layer).to_numpy(), want["prob"], atol=1e-7)
        imp = run.unit_importance(layer).sort_index()
        np.testing.assert_allclose(imp["prob_drop"].to_numpy(), want["drop"], atol=1e-7)
        np.testing.assert_allclose(imp["acc_drop"].to_numpy(), want["acc"], atol=1e-12)


class InfLogits(nn.Module):
    """Logit 0 is +inf on the images with the most ink; `zeroed_log` adds log|max of unit 0|, which
    is -inf only when that unit is zeroed."""

    def __init__(self, inf_on_ink: bool) -> None:
        super().__init__()
        self.inf_on_ink = inf_on_ink
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.conv(x).amax((2, 3))
        out = self.fc(torch.relu(m))
        if self.inf_on_ink:
            many = (x.mean((1, 2, 3)) > 0.3)[:, None] & (torch.arange(10) == 0)[None]
            return torch.where(many, float("inf"), out)
        return out + torch.log(m[:, :1].abs())


@pytest.mark.parametrize("inf_on_ink,said", [
    (True, r"the model's logits are NaN or infinite on image .* \(index \d+;"),
    (False, r"zeroing unit 0 of layer 'conv' makes the model's logits NaN or infinite on image .*or ablate other"),
])
def test_non_finite_logits_are_refused_not_stored_as_nan(tmp_path, drawings, inf_on_ink, said):
    """Before, one image's +inf logit made every unit's probability change and probability drop NaN,
    stored, and shown as a unit that pushes no class up or down ("(none)", rank 1 tied with all)."""
    from sketchmine.errors import SketchmineError

    torch.manual_seed(1)
    model = InfLogits(inf_on_ink).eval()
    with torch.no_grad():
        clean = model(torch.stack([drawings[i][1] for i in range(len(drawings))]))
    assert (~torch.isfinite(clean)).any() == inf_on_ink and torch.isfinite(clean).any()
    run = sketchmine.mine(model, drawings, layers=["conv"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
        with pytest.raises(SketchmineError, match=said):
            ablate(run, "conv", model=model, data=drawings, batch_size=15)
    run = sketchmine.open_run(run.path)
    assert not run.has_unit_effects("conv") and not run.has_importance("conv")


class ProbabilitiesOut(nn.Module):
    """A classifier whose forward ends in `end`: "softmax" (nn.Softmax), "F.softmax", "log" (an
    nn.LogSoftmax), "exp" (the exp of a log_softmax: probabilities no softmax call made), or
    "logits" (none: the twin the others are measured against)."""

    def __init__(self, end: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        self.end = end
        self.out = {"softmax": nn.Softmax(dim=1), "log": nn.LogSoftmax(dim=1)}.get(end, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.out(self.fc(torch.relu(self.conv(x)).amax((2, 3))) * 3)
        return {"F.softmax": lambda: F.softmax(z, 1), "exp": lambda: z.log_softmax(1).exp()}.get(self.end, lambda: z)()


def test_a_model_ending_in_a_softmax_is_ablated_on_the_logits_it_feeds_that_softmax(tmp_path, drawings):
    """Before, a model ending in nn.Softmax had the softmax of its probabilities averaged (effects'
    probability changes and importance's drops of a flatter distribution than the model's,
    silently), then was refused; a model whose output is its final softmax is now ablated on the
    logits that softmax is fed, as mining takes it: its results are its logits twin's. Log-
    probabilities are logits (their softmax is the model's probabilities). Probabilities no softmax
    call made cannot be told from logits but by their rows: refused. The final softmax itself,
    named as a layer, is refused: zeroing its result leaves the logits it is fed as they are."""
    from sketchmine.errors import SketchmineError

    torch.manual_seed(1)
    twin = ProbabilitiesOut("logits").eval()
    want = reference(twin, drawings, "conv")
    assert np.abs(want["prob"]).max() > 1e-3
    for end in ("softmax", "F.softmax", "log", "exp"):
        model = ProbabilitiesOut(end).eval()
        model.load_state_dict(twin.state_dict())
        run = sketchmine.mine(model, drawings, layers=["conv", "out"], k=2, out=tmp_path / f"{end}.zarr",
                              batch_size=20)
        if end == "exp":
            for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
                with pytest.raises(SketchmineError, match=r"layer 'conv': the model returns probabilities, not logits"):
                    ablate(run, "conv", model=model, data=drawings, batch_size=15)
            continue
        if end == "softmax":
            for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
                with pytest.raises(SketchmineError, match=r"layer 'out' is the model's final softmax"):
                    ablate(run, "out", model=model, data=drawings, batch_size=15)
        sketchmine.unit_effects(run, "conv", model=model, data=drawings, batch_size=15)
        sketchmine.unit_importance(run, "conv", model=model, data=drawings, batch_size=15)
        np.testing.assert_allclose(run.unit_effects("conv").to_numpy(), want["prob"], atol=1e-7)
        np.testing.assert_allclose(run.unit_importance("conv").sort_index()["prob_drop"], want["drop"], atol=1e-7)
        if end != "log":  # a log-softmax's changes are of log-probabilities, not of the logits
            np.testing.assert_allclose(run.unit_effects("conv", kind="logit").to_numpy(), want["logit"], atol=1e-5)


class BatchStatistics(nn.Module):
    """A BatchNorm without running statistics after the conv: in eval mode too it normalises with
    the statistics of the batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8, track_running_stats=False)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).amax((2, 3)))


def test_a_model_mixing_the_images_of_a_batch_is_refused(tmp_path, drawings):
    """Before, the copies of a batch an ablation stacks (a different unit zeroed in each) shared
    the BatchNorm's batch statistics: effects 0.35 off where the largest is 1.07, silently."""
    from sketchmine.errors import SketchmineError

    torch.manual_seed(0)
    model = BatchStatistics().eval()
    x = torch.stack([drawings[i][1] for i in range(20)])
    with torch.no_grad():
        assert not torch.allclose(model(x)[:10], model(x[:10]), atol=1e-3)  # the batch changes an image's logits
    run = sketchmine.mine(model, drawings, layers=["conv"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
        for units_per_pass in (None, 1):
            with pytest.raises(SketchmineError, match=r"layer 'conv': the model's logits for an image depend on the "
                                                      r"other images of its batch \(the first 15 images' logits"):
                ablate(run, "conv", model=model, data=drawings, batch_size=15, units_per_pass=units_per_pass)


class RandomInEval(nn.Module):
    """Dropout forced on (`F.dropout(training=True)`): another output on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.dropout(torch.relu(self.conv(x)).amax((2, 3)), 0.5, training=True))


def test_a_model_random_in_eval_mode_is_refused_as_random(tmp_path, drawings):
    """Before, every unit's effect carried the dropout's noise, silently."""
    from sketchmine.errors import SketchmineError

    torch.manual_seed(0)
    model = RandomInEval().eval()
    run = sketchmine.mine(model, drawings, layers=["conv"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
        with pytest.raises(SketchmineError, match=r"layer 'conv': the model's logits vary from one forward pass to "
                                                  r"the next on the same 15 images \(dropout"):
            ablate(run, "conv", model=model, data=drawings, batch_size=15)


def test_a_bfloat16_model_is_ablated_in_its_dtype(tmp_path, demo_test_set):
    """Before, `mine` took a bfloat16 model (its input cast to the model's dtype) and importance
    and effects crashed: "Input type (float) and bias type (c10::BFloat16) should be the same"."""
    from sketchmine.model.models import load_model
    from tests.helpers import per_class_subset

    ds = per_class_subset(demo_test_set, 3, "0:30")
    model = load_model("demo").module.eval().to(torch.bfloat16)
    run = sketchmine.mine(model, ds, layers=["classifier.4"], k=2, out=tmp_path / "r.zarr", batch_size=10)
    sketchmine.unit_effects(run, "classifier.4", model=model, data=ds, batch_size=10)
    sketchmine.unit_importance(run, "classifier.4", model=model, data=ds, batch_size=10)
    run = sketchmine.open_run(run.path)
    units = list(range(3, 256, 23))  # a full bfloat16 forward on the CPU a unit: 0.4 s each, 256 took minutes
    want = reference(model, ds, "classifier.4", units)
    assert np.abs(want["logit"]).max() > 0.1
    np.testing.assert_allclose(run.unit_effects("classifier.4", "logit").to_numpy()[units], want["logit"], atol=1e-3)
    np.testing.assert_allclose(run.unit_effects("classifier.4").to_numpy()[units], want["prob"], atol=1e-5)
    np.testing.assert_allclose(run.unit_importance("classifier.4").sort_index()["prob_drop"].to_numpy()[units],
                               want["drop"], atol=1e-5)


def test_images_the_run_skipped_as_unreadable_are_left_out_not_refused(tmp_path, demo_test_set, demo_model):
    """Before, a run mined with skip_bad_images could never be ablated: "cannot read image
    bear/00000.png: ablation needs every image", with nothing to do about it."""
    from sketchmine.passes.reload import run_dataset
    from tests.helpers import image_folder

    image_folder(demo_test_set, tmp_path / "animals", per_class=3)
    broken = sorted((tmp_path / "animals").glob("*/*.png"))[4]
    broken.write_bytes(b"not an image")
    run = sketchmine.mine(demo_model.module, tmp_path / "animals", layers=["classifier.4"], k=2,
                          out=tmp_path / "r.zarr", batch_size=8, skip_bad_images=True)
    assert [b["index"] for b in run.attrs["bad_images"]] == [4]
    sketchmine.unit_effects(run, "classifier.4", model=demo_model.module, batch_size=7)
    sketchmine.unit_importance(run, "classifier.4", model=demo_model.module, batch_size=7)
    run = sketchmine.open_run(run.path)

    class Readable:  # the run's images but the skipped one, as the reference reads them
        def __init__(self) -> None:
            self.ds, self.keep = run_dataset(run), [i for i in range(30) if i != 4]

        def __len__(self) -> int:
            return len(self.keep)

        def __getitem__(self, i: int):
            return self.ds[self.keep[i]]

        def labels(self) -> np.ndarray:
            return np.asarray(self.ds.labels())[self.keep]

    want = reference(demo_model.module, Readable(), "classifier.4")
    effects, importance = run.unit_effects("classifier.4", "logit"), run.unit_importance("classifier.4").sort_index()
    assert effects.attrs["images"] == importance.attrs["images"] == 29
    np.testing.assert_allclose(effects.to_numpy(), want["logit"], atol=2e-6)
    np.testing.assert_allclose(importance["prob_drop"].to_numpy(), want["drop"], atol=1e-7)
    np.testing.assert_allclose(importance["acc_drop"].to_numpy(), want["acc"], atol=1e-12)


def test_a_pass_checks_the_model_s_batch_once_not_once_a_layer(tmp_path, drawings):
    """`check_images_apart` (two forwards of a chunk, one of them beside as many other images) is
    the model's, not a layer's: a pass over two layers ran it twice (1.3 s a layer on demo-resnet).
    Counted by the model's own forwards: the pass over both layers makes as many as the passes of
    each alone, less one check's two."""
    model = AddInPlace().eval()
    run = sketchmine.mine(model, drawings, layers=["stem", "branch"], k=2, out=tmp_path / "r.zarr", batch_size=20)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    counts = {}
    for layers in (["stem"], ["branch"], ["stem", "branch"]):
        for ablate in (sketchmine.unit_effects, sketchmine.unit_importance):
            calls.clear()
            ablate(run, layers, model=model, data=drawings, batch_size=25)
            counts[ablate.__name__, tuple(layers)] = (len(calls), calls.count(50))  # 50: a chunk beside 25 others
    for ablate in ("unit_effects", "unit_importance"):
        alone = [counts[ablate, (layer,)] for layer in ("stem", "branch")]
        assert counts[ablate, ("stem", "branch")][1] == 1 and all(c[1] == 1 for c in alone)
        assert counts[ablate, ("stem", "branch")][0] == sum(c[0] for c in alone) - 2
