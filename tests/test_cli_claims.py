"""What the command line's docs and --help say, held (found by a walkthrough of docs/cli.md and
every command's --help): the default --out keeps all but a checkpoint's last extension, an option
that would do nothing is refused, a run is never made inside another run, every option's default
is shown once, malformed sizes are usage errors, `importance --json --plot` keeps stdout one JSON
document, and weights that do not fit say which tensors. Real data and the demo model."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sketchmine
from sketchmine.cli.main import main as cli
from sketchmine.cli.parser import build_parser, default_run_out
from sketchmine.errors import SketchmineError
from tests.helpers import image_folder

LAYERS = ["features.3", "classifier.4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_model, small_test_set) -> Path:
    root = tmp_path_factory.mktemp("claims")
    out = root / "run.zarr"
    sketchmine.mine("demo", str(image_folder(small_test_set, root / "img", per_class=6)), layers=LAYERS, k=3,
                    out=out, batch_size=100)
    return out


def test_the_default_out_drops_only_a_checkpoints_last_extension():
    """net.v1.pt and net.v2.pt both became net.zarr (the second was refused as the first's resume)."""
    assert [default_run_out(m) for m in ("nets/sketch.v2.pt", "net.v1.pth", "demo", "demo-resnet", "m.onnx")] == \
        ["sketch.v2.zarr", "net.v1.zarr", "demo.zarr", "demo-resnet.zarr", "m.zarr"]


def test_the_default_out_names_the_weights_given():
    """`--model resnet18` with random weights, DEFAULT or a fine-tuned file all defaulted to
    resnet18.zarr, where the second run was refused as the first's resume."""
    assert [default_run_out("resnet18", w) for w in (None, "DEFAULT", "ft/sketch.v1.pt", "IMAGENET1K_V2")] == \
        ["resnet18.zarr", "resnet18-DEFAULT.zarr", "resnet18-sketch.v1.zarr", "resnet18-IMAGENET1K_V2.zarr"]
    assert default_run_out("sketchnet", "nets/best.pth") == "sketchnet-best.zarr"


def test_the_default_out_names_a_weight_enums_member():
    """`--weights ResNet18_Weights.IMAGENET1K_V1` (a name docs/mining.md gives) defaulted to
    resnet18-ResNet18_Weights.zarr, as did IMAGENET1K_V2: the second refused as the first's resume.
    The member names the folder, as it does given alone, so the same weights share one."""
    outs = [default_run_out("resnet18", w) for w in ("ResNet18_Weights.IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V2",
                                                      "ResNet18_Weights.DEFAULT", "IMAGENET1K_V1")]
    assert outs == ["resnet18-IMAGENET1K_V1.zarr", "resnet18-IMAGENET1K_V2.zarr", "resnet18-DEFAULT.zarr",
                    "resnet18-IMAGENET1K_V1.zarr"]
    assert default_run_out("resnet18", "ft/ResNet18_Weights.v2.pt") == "resnet18-ResNet18_Weights.v2.zarr"


def test_pin_memory_on_the_cpu_is_refused(demo_model, small_test_set, tmp_path):
    """It was accepted and did nothing (torch warned past -q: no accelerator to pin for)."""
    with pytest.raises(SketchmineError, match="pin_memory .* would do nothing"):
        sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, out=tmp_path / "r.zarr", pin_memory=True)
    assert not (tmp_path / "r.zarr").exists()


def test_a_run_is_never_made_inside_another(run_dir, demo_model, small_test_set, tmp_path, capsys):
    """`mine --out RUN/inner.zarr` wrote a run into the outer run (whose readers then listed it
    as a group), where report, probe, demo and --plot all refuse such a folder."""
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(SketchmineError, match="is inside the run"):
        sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, out=run_dir / "inner.zarr")
    folder = image_folder(small_test_set, tmp_path / "img", per_class=2)
    assert cli(["mine", "--model", "demo", "--data", str(folder), "--out", str(run_dir / "layers" / "x.zarr")]) == 3
    assert "is inside the run" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_every_options_default_is_shown_once():
    """`--optimize-method` read "(fourier, when not given) … (default: none)", `--open` showed
    none (its text mentions the default browser), `--seed` "default 0 … (default: none)"."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "mine" in a.choices).choices

    def help_of(command: str, flag: str) -> str:
        action = next(a for a in sub[command]._actions if flag in a.option_strings)
        return sub[command].formatter_class("x")._get_help_string(action)

    assert help_of("visualize", "--optimize-method").endswith("(default: fourier)")
    assert help_of("visualize", "--optimize-steps").endswith("(default: 256)")
    assert help_of("report", "--open").endswith("(default: off)")
    assert help_of("mine", "--seed").endswith("(default: 0)")
    for command in sub.values():
        for action in command._actions:
            if action.option_strings and action.help:
                text = command.formatter_class("x")._get_help_string(action)
                shown = text.replace("%(default)s", "")
                assert shown.count("(default") <= 1 and "when not given" not in shown, text


def test_a_negative_probe_size_is_a_usage_error(run_dir, capsys):
    """`probe --size -5 0` exited 3 after loading torch and the run; malformed values are exit 2."""
    with pytest.raises(SystemExit) as exc:
        cli(["probe", str(run_dir), "--out", str(run_dir.parent / "p"), "--size", "-5", "0"])
    assert exc.value.code == 2 and not (run_dir.parent / "p").exists()


def test_importance_json_with_a_plot_is_one_json_document(run_dir, tmp_path):
    """With --json the plot's path went to stderr (and -q hid it): it is in the document now."""
    png = tmp_path / "imp.png"
    proc = subprocess.run([sys.executable, "-m", "sketchmine", "-q", "importance", str(run_dir), "--layers",
                           "classifier.4", "-n", "3", "--json", "--plot", str(png)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["plot"] == str(png) and png.stat().st_size > 0 and proc.stderr == ""
    assert len(doc["layers"]["classifier.4"]["units"]) == 3


def test_weights_that_do_not_fit_say_which_tensors(tmp_path, capsys):
    """The error ended at torch's header line ("Error(s) in loading state_dict for SketchNet:")."""
    from sketchmine.model.models import load_model

    other = load_model("demo-resnet").module.state_dict()
    path = tmp_path / "resnet_weights.pt"
    torch.save(other, path)
    with pytest.raises(SketchmineError) as exc:
        load_model("sketchnet", str(path))
    text = str(exc.value)
    assert "\n" not in text and re.search(r"\d+ tensors missing \(first: \S+", text), text
    assert re.search(r"\d+ unexpected tensors \(first: \S+", text) and "another --model" in text, text


def test_an_unfinished_run_at_the_old_default_out_is_named(tmp_path, small_test_set):
    """The default --out named no weights until it did: re-running the command an interrupted run
    said to re-run started a new run at MODEL-WEIGHTS.zarr beside the unfinished MODEL.zarr, said
    only as where the run goes. Now a note names the unfinished run and the --out that resumes it."""
    from sketchmine.model.models import load_model
    from tests.helpers import StopAfter, image_folder

    folder = image_folder(small_test_set, tmp_path / "images", per_class=3)
    torch.save(load_model("sketchnet", seed=5).module.state_dict(), tmp_path / "w.pt")
    with pytest.raises(KeyboardInterrupt):  # as the old default put it
        sketchmine.mine("sketchnet", folder, weights=str(tmp_path / "w.pt"), out=tmp_path / "sketchnet.zarr",
                        layers=["classifier.6"], k=2, batch_size=10, flush_every=1, progress=StopAfter(10))
    args = [sys.executable, "-m", "sketchmine", "mine", "--model", "sketchnet", "--data", str(folder), "--layers",
            "classifier.6", "-k", "2", "--batch-size", "10"]
    proc = subprocess.run([*args, "--weights", "w.pt"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert ("sketchnet.zarr, where mine put runs of --model sketchnet before the default --out named the weights, holds "
            "an unfinished run with --weights w.pt: this command starts a new one at sketchnet-w.zarr; stop it and give "
            "--out sketchnet.zarr to resume that one") in " ".join(proc.stderr.split()), proc.stderr
    assert not sketchmine.open_run(tmp_path / "sketchnet.zarr").complete
    torch.save(load_model("sketchnet", seed=6).module.state_dict(), tmp_path / "v.pt")
    other = subprocess.run([*args, "--weights", "v.pt"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert other.returncode == 0 and "sketchnet.zarr, where" not in other.stderr, other.stderr  # other weights: not its run
