"""Refusals and hints at the command line (the CLI audit): every refusal comes before any
computation or write, is one line (exit 3), and no hint points at a command that always refuses.
Real runs mined once per module from real test images written as an ImageFolder; the commands
run in-process (`cli.main`), as tests/test_effects.py and tests/test_importance.py run them."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import sketchmine
from sketchmine.cli.main import main as cli
from sketchmine.errors import SketchmineError
from tests.helpers import StopAfter, image_folder

LAYERS = ["features.0", "features.3", "classifier.6", "softmax"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_test_set) -> Path:
    """100 real test images (10 per class) as PNGs in <class>/<image>.png folders."""
    return image_folder(demo_test_set, tmp_path_factory.mktemp("refusals") / "animals", per_class=10)


@pytest.fixture(scope="module")
def run_dir(folder) -> Path:
    """The embedded SketchNet mined over `folder` with its distributions (bottom-k, bins)."""
    out = folder.parent / "run.zarr"
    sketchmine.mine("demo", folder, layers=LAYERS, k=3, out=out, batch_size=50, distributions=True)
    return out




@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, demo_model) -> Path:
    """The embedded SketchNet exported to ONNX (28×28 fixed, batch free)."""
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "sketchnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(demo_model.module, (torch.zeros(2, 1, 28, 28),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (a folder's state, to compare before and after)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def error_line(capsys) -> str:
    """The one `sketchmine: error:` line a refused command printed, and nothing else on stderr."""
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("sketchmine: error: "), lines
    return lines[0]


def vendored() -> None:
    from sketchmine.passes.probe import ORT_DIR, ORT_FILES

    if not all((ORT_DIR / n).is_file() for n in ORT_FILES):
        pytest.skip("onnxruntime-web is not vendored: run scripts/vendor_ort_web.sh")


# ---- 1. probe --size: only for a run that records none; a failing forward is one line ---------------
def test_probe_size_differing_from_the_recorded_one_is_refused(run_dir, tmp_path, capsys):
    vendored()
    capsys.readouterr()
    assert cli(["probe", str(run_dir), "--out", str(tmp_path / "p"), "--size", "56", "56"]) == 3
    line = error_line(capsys)
    assert "56×56" in line and "28×28" in line and "classifier.6" in line
    assert not (tmp_path / "p").exists()
    assert cli(["probe", str(run_dir), "--out", str(tmp_path / "p"), "--size", "28", "28"]) == 0  # the same: fine
    assert json.loads((tmp_path / "p" / ".sketchmine-probe").read_text()) == {"sketchmine": "probe", "complete": True}


def test_probe_forward_that_fails_at_the_given_size_is_one_line(folder, tmp_path, capsys):
    """A run of conv layers only records no input size: --size is taken, and a size the model
    cannot run at is a SketchmineError (the report would show it, not abort)."""
    vendored()
    from sketchmine.cli.probe import report_probe
    from sketchmine.passes.probe import build_probe

    run = sketchmine.mine("demo", folder, layers=["features.0"], k=2, out=tmp_path / "conv.zarr", batch_size=50)
    capsys.readouterr()  # the mining's notes, if any
    assert cli(["probe", str(run.path), "--out", str(tmp_path / "p"), "--size", "56", "56"]) == 3
    line = error_line(capsys)
    assert "cannot run on the probe's input of shape (1, 1, 56, 56)" in line and "mat1 and mat2" in line
    with pytest.raises(SketchmineError, match="cannot run on the probe's input"):
        build_probe(run, size=(56, 56))
    assert "records no input size" in report_probe(str(run.path))  # the report: the reason, no exception


# ---- 2. summary of a run mined without logits -----------------------------------------------------------
def test_summary_of_a_run_without_predictions_lists_classes_and_says_why(folder, tmp_path, capsys):
    run = sketchmine.mine("demo", folder, layers=["features.3"], k=2, out=tmp_path / "nl.zarr", batch_size=50,
                          logits=False)
    assert run.complete
    capsys.readouterr()
    assert cli(["summary", str(run.path)]) == 0
    got = capsys.readouterr()
    assert "per-class accuracy" in got.out and "classes among the top-2" in got.out
    rows = [l for l in got.out.splitlines() if l.strip("│ ").startswith("giraffe")]
    assert rows and "│          - │     10 │" in rows[0], got.out
    assert "no per-class accuracy" in got.err and "--no-logits" in got.err
    assert cli(["summary", str(run.path), "-q"]) == 0
    assert capsys.readouterr().err == ""  # the note is a note: -q silences it


# ---- 3 + 9. importance checks every layer first, and takes each once ------------------------------------
def test_importance_refuses_softmax_before_ablating_any_layer(run_copy, capsys):
    capsys.readouterr()
    assert cli(["importance", str(run_copy), "--layers", "classifier.6,softmax"]) == 3
    line = error_line(capsys)
    assert "'softmax' is the model's output" in line and "--layers classifier.6" in line
    assert not sketchmine.open_run(run_copy).has_importance("classifier.6")  # nothing computed, nothing written
    assert cli(["effects", str(run_copy), "--layers", "classifier.6,softmax"]) == 3
    assert not sketchmine.open_run(run_copy).has_unit_effects("classifier.6")
    with pytest.raises(SketchmineError, match="'softmax' is the model's output"):
        sketchmine.unit_importance(run_copy, ["classifier.6", "softmax"])
    assert not sketchmine.open_run(run_copy).has_importance("classifier.6")


def test_a_layer_named_twice_is_computed_once(run_copy, capsys):
    from sketchmine.cli.parser import build_parser

    args = build_parser().parse_args(["importance", "r", "--layers", "a,b,a", "--layers", "b,c"])
    assert args.layers == ["a", "b", "c"]
    capsys.readouterr()
    assert cli(["importance", str(run_copy), "--layers", "classifier.6,classifier.6", "-n", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("classifier.6 units that matter most") == 1  # the layer, then what the table shows
    assert cli(["visualize", str(run_copy), "--layers", "classifier.6", "--layers", "classifier.6"]) == 0
    assert "crops of 1 layer " in capsys.readouterr().out
    run = sketchmine.visualize(run_copy, ["classifier.6", "classifier.6"])
    assert run.layer_attrs("classifier.6")["visualized"]["complete"]


# ---- 4. Ctrl-C during effects: the rest as a --layers value -------------------------------------------
def test_ctrl_c_during_effects_names_the_rest_comma_separated(run_copy, capsys, monkeypatch):
    """The first layer computed for real, Ctrl-C at the second (a KeyboardInterrupt raised where
    the pass would run: the only way to interrupt at a given layer in-process)."""
    import sketchmine.passes.effects as effects

    real, calls = effects.ablation_effects, []

    def interrupted_second(net, ds, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(net, ds, name, *args, **kwargs)

    monkeypatch.setattr(effects, "ablation_effects", interrupted_second)
    capsys.readouterr()
    assert cli(["effects", str(run_copy), "--layers", "classifier.6,features.0,features.3"]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "the effects of classifier.6 are stored" in err, err
    assert "pass --layers features.0,features.3 to compute only the rest" in err, err
    run = sketchmine.open_run(run_copy)
    assert run.has_unit_effects("classifier.6") and not run.has_unit_effects("features.0")


# ---- 5. report . from inside the run ------------------------------------------------------------------------
def test_report_of_dot_inside_the_run_goes_beside_it(run_copy, monkeypatch, capsys):
    monkeypatch.chdir(run_copy)
    assert cli(["report", ".", "--no-probe"]) == 0
    assert (run_copy.parent / "run-report" / "index.html").is_file()
    assert "run-report" in capsys.readouterr().out.replace("\n", "")  # the console wraps long paths


# ---- 6. a model fed an input it cannot take: one line, what was given ---------------------------------------
def test_onnx_model_given_the_wrong_input_is_one_line(onnx_file, folder, tmp_path, capsys):
    with pytest.raises(SketchmineError, match=r"input of shape \(1, 32, 32\).*the graph declares \('N', 1, 28, 28\)"
                                              r".*Got: 32 Expected: 28"):
        sketchmine.mine(str(onnx_file), folder, out=tmp_path / "a.zarr", image_size=32)
    capsys.readouterr()
    assert cli(["mine", "--model", str(onnx_file), "--data", str(folder), "--out", str(tmp_path / "b.zarr"),
                "--steps", "4", "--workers", "0"]) == 3
    line = error_line(capsys)
    assert "progressive drawing: 4 frames" in line and "Invalid rank" in line and "--steps" in line
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_torch_model_given_frames_is_not_told_to_resize(folder, tmp_path, capsys):
    capsys.readouterr()
    assert cli(["mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "r.zarr"),
                "--steps", "4", "--workers", "0"]) == 3
    line = error_line(capsys)
    assert "input of shape (4, 1, 28, 28) (a progressive drawing: 4 frames" in line
    assert "resize the images" not in line and "--steps (steps=) is for CNN + recurrent models" in line


# ---- 7. visualize --redo with other settings: stale example pictures are not shown -----------------------
def test_redo_with_another_method_leaves_out_the_old_example_pictures(run_copy):
    from sketchmine.present.report_unit import example_pictures

    sketchmine.visualize(run_copy, ["features.3"], examples="all")
    assert set(example_pictures(sketchmine.open_run(run_copy), "features.3")) == {"bottom", "bins"}
    seen = StopAfter(10**9)
    run = sketchmine.visualize(run_copy, ["features.3"], method="guided", redo=True, progress=seen)
    assert run.layer_attrs("features.3")["visualized"]["method"] == "guided"
    assert example_pictures(run, "features.3") == {}  # made with deconvnet: not beside the guided top-k
    note = next(n for n in seen.notes if "bottom-k and activation-bin pictures were made with deconvnet" in n)
    command = note.split("`")[1].split()  # the command the note gives is one that works (it named no settings)
    assert command[:2] == ["sketchmine", "visualize"] and "--method" in command
    assert cli(["-q", *command[1:]]) == 0
    run = sketchmine.open_run(run_copy)
    assert set(example_pictures(run, "features.3")) == {"bottom", "bins"}  # made again: shown again


# ---- 8. hints never point at a command that always refuses ---------------------------------------------
def test_unit_hints_for_softmax_point_at_the_logits_layer(run_dir):
    from sketchmine.results.unit_summary import LayerSummary

    missing = LayerSummary(sketchmine.open_run(run_dir), "softmax").missing
    for section in ("effects", "correlated", "importance"):
        assert "--layers softmax" not in missing[section], missing[section]
        assert "nothing can be ablated at 'softmax'" in missing[section]
        assert "--layers classifier.6" in missing[section]
    assert "sketchmine effects" in LayerSummary(sketchmine.open_run(run_dir), "classifier.6").missing["effects"]


def test_onnx_runs_say_they_cannot_be_ablated(onnx_file, folder, tmp_path, capsys):
    from sketchmine.results.unit_summary import LayerSummary

    run = sketchmine.mine(str(onnx_file), folder, layers=["features.0", "classifier.6"], k=2,
                          out=tmp_path / "onnx.zarr", batch_size=50)
    capsys.readouterr()
    for cmd in (["importance", str(run.path), "--layers", "features.0"],
                ["importance", str(run.path), "--layers", "features.0", "--model", "demo"],
                ["effects", str(run.path), "--layers", "features.0", "--model", "demo"]):
        assert cli(cmd) == 3
        line = error_line(capsys)
        assert "mined from an ONNX file" in line and "cannot be ablated" in line and "pass model" not in line
    with pytest.raises(SketchmineError, match="mined from an ONNX file"):
        sketchmine.unit_importance(run, "features.0")
    missing = LayerSummary(run, "features.0").missing
    for section in ("effects", "importance"):
        assert "cannot be ablated" in missing[section] and "sketchmine effects" not in missing[section]
        assert "sketchmine importance" not in missing[section]


# ---- 10. notes on stderr; the probe never writes into a run or onto a file ---------------------------
def test_report_note_about_the_probe_goes_to_stderr(run_dir, tmp_path, capsys):
    capsys.readouterr()
    assert cli(["report", str(run_dir), "--out", str(tmp_path / "r"), "--no-probe", "-q"]) == 0
    got = capsys.readouterr()
    assert "no live probe" not in got.out and got.err == "" and "report written" in got.out
    assert cli(["report", str(run_dir), "--out", str(tmp_path / "r"), "--no-probe"]) == 0
    got = capsys.readouterr()
    assert "no live probe" not in got.out and "no live probe: left out with --no-probe" in got.err


def test_probe_out_inside_a_run_or_on_a_file_is_refused(run_copy, tmp_path, capsys):
    before = tree(run_copy)
    capsys.readouterr()
    assert cli(["probe", str(run_copy), "--out", str(run_copy / "layers" / "x" / "probe")]) == 3
    assert "is inside the run" in error_line(capsys)
    assert tree(run_copy) == before
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli(["probe", str(run_copy), "--out", str(afile)]) == 3
    assert "exists and is a file, not a folder" in error_line(capsys)
    assert afile.read_text() == "x"


def test_report_refuses_a_probe_cap_with_no_probe(run_dir, tmp_path, capsys):
    """`--probe-max-mb` caps the probe that `--no-probe` leaves out: refused, not taken and ignored,
    before anything is written."""
    capsys.readouterr()
    out = tmp_path / "r"
    assert cli(["report", str(run_dir), "--out", str(out), "--no-probe", "--probe-max-mb", "5"]) == 3
    assert "--no-probe leaves out" in error_line(capsys)
    assert not out.exists()


def test_report_and_probe_under_a_file_are_refused_before_any_work(run_dir, tmp_path, capsys):
    """`--out afile/sub` (and `demo --report afile`, whose reports go to afile/demo): the folder can
    never be made, but only the write at the end failed, after the report's pages or the probe's
    export (the demo: after minutes of mining), as "running failed" (exit 1). Refused first (exit 3)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    capsys.readouterr()
    assert cli(["report", str(run_dir), "--out", str(afile / "sub"), "--no-probe"]) == 3
    assert f"{afile} is a file, not a folder" in error_line(capsys)
    assert cli(["probe", str(run_dir), "--out", str(afile / "sub" / "deeper")]) == 3
    assert f"{afile} is a file, not a folder" in error_line(capsys)
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
