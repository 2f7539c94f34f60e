"""The ecosystem's habits (issue 19): CLI conventions (--version, defaults in --help, stdout for
results and stderr for the rest, --json, exit codes, -q/-v through logging, --layers beside a
positional, report --open), notebook display of a run and a unit, and standard readers
(xarray opens a run with named dimensions). Real subprocesses and one real run mined once."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import sketchmine
from sketchmine.results.notebook import GAP
from sketchmine.results.numbers import column, percent, percents, rate

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["features.0", "classifier.6"]


def sm(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sketchmine", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def images(tmp_path_factory, demo_test_set) -> Path:
    """60 real test images (6 per class) as an ImageFolder."""
    from tests.helpers import image_folder

    return image_folder(demo_test_set, tmp_path_factory.mktemp("habits") / "images", per_class=6)


@pytest.fixture(scope="module")
def mined(images) -> tuple[Path, subprocess.CompletedProcess]:
    """The run `sketchmine mine` writes (two layers, k=3) and what the command printed."""
    out = images.parent / "run.zarr"
    proc = sm("mine", "--model", "demo", "--data", str(images), "--out", str(out), "--layers", ",".join(LAYERS),
              "-k", "3", "--workers", "0", "--batch-size", "32")
    assert proc.returncode == 0, proc.stderr
    return out, proc


# ---- CLI conventions -------------------------------------------------------------------------
def test_version_and_help_load_neither_torch_nor_zarr():
    proc = sm("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sketchmine {sketchmine.__version__}", proc
    code = ("import sys\nfrom sketchmine.cli.main import main\n"
            "for argv in (['--help'], ['mine', '--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e\n"
            "print(sorted(m for m in ('torch', 'zarr', 'sketchmine._C') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.strip() == "[]", proc.stderr
    assert "usage: sketchmine mine" in proc.stdout


def test_commands_that_read_a_run_load_neither_torch_nor_the_core(mined, tmp_path):
    """`summary`, `unit`, `compare`, `verify` and `report --no-probe` of a complete run read arrays: without
    torch and the compiled core they take a third of the time (sketchmine/lazy.py)."""
    run, _ = mined
    rep = str(tmp_path / "rep")
    code = ("import sys, io, contextlib\nfrom sketchmine.cli.main import main\n"
            f"for argv in (['summary', {str(run)!r}], ['unit', {str(run)!r}, {LAYERS[0]!r}, '1'], "
            f"['compare', {str(run)!r}, {str(run)!r}], ['summary', {str(run)!r}, '--json'], ['verify', {str(run)!r}], "
            f"['report', {str(run)!r}, '--out', {rep!r}, '--no-probe']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n        assert main(argv) == 0, argv\n"
            "    assert len(out.getvalue()) > 50, out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'sketchmine._C') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]
    assert (tmp_path / "rep" / "index.html").is_file()


def test_a_lazy_module_imports_once_used_and_takes_its_own_place():
    """The statistics modules name torch and the compiled core through `sketchmine.lazy`: nothing
    is imported until used, then the module itself stands in the owner's globals (a mining
    loop's calls reach torch directly, not through the stand-in)."""
    code = ("import sys\nimport sketchmine.stats.topk as t\n"
            "assert 'torch' not in sys.modules and 'sketchmine._C' not in sys.modules\n"
            "assert t.torch.zeros(2).sum().item() == 0 and t.torch is sys.modules['torch']\n"
            "assert t.ops.compiled_here is not None and t.ops is sys.modules['sketchmine.stats.ops']\n"
            "assert 'sketchmine._C' in sys.modules\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_every_option_shows_its_default_in_help():
    from sketchmine.cli.parser import DefaultsHelp as _Help
    from sketchmine.cli.parser import build_parser as _parser

    p = _parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    seen = 0
    for name, parser in [("", p), *subs.choices.items()]:
        fmt = _Help(parser.prog)
        for a in parser._actions:
            if not a.option_strings or a.required or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert a.help, f"{name} {a.option_strings} has no help"
            assert "default" in fmt._get_help_string(a).lower(), f"{name} {a.option_strings}: {a.help!r}"
            seen += 1
    assert seen > 40
    for name, parser in subs.choices.items():  # positional arguments too: `unit RUN LAYER UNIT` said nothing
        for a in parser._actions:
            if not a.option_strings:
                assert a.help and len(a.help) > 10, f"{name} {a.dest} has no help"
    top = sm("--help").stdout  # the commands in the order one uses them, and a first workflow
    listed = [line.split()[0] for line in top.split("COMMAND\n", 1)[1].split("\noptions:")[0].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed[:4] == ["demo", "mine", "visualize", "report"] and sorted(listed) == sorted(subs.choices)
    assert "sketchmine mine --model M --data DIR --out RUN.zarr, then\n" in top
    text = sm("mine", "--help").stdout
    assert "(default: 64)" in " ".join(text.split()) and "(default: cpu)" in text
    assert "(default: 100)" in " ".join(sm("report", "--help").stdout.split())  # one form for every default


def test_cli_inks_are_the_datasets():
    from sketchmine.cli.parser import INKS
    from sketchmine.data.sequences import INKS as DATA_INKS

    assert INKS == DATA_INKS


def test_mine_help_names_every_kind_of_default_layer():
    """`mine --layers` says what it mines when left out: each kind `default_layers` takes (it
    said "every conv, linear, softmax" while every recurrent module is mined by default too)."""
    from torch import nn

    from sketchmine.cli.parser import build_parser
    from sketchmine.model.taps import _DEFAULT_TYPES  # the list the help describes

    mine = build_parser()._subparsers._group_actions[0].choices["mine"]
    text = " ".join(next(a.help for a in mine._actions if a.dest == "layers").split())
    words = {nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv", nn.Linear: "linear",
             nn.Softmax: "softmax", nn.RNNBase: "recurrent"}
    assert set(_DEFAULT_TYPES) == set(words)
    assert [w for w in words.values() if w not in text] == []


def test_every_path_option_is_known_to_the_removed_folder_check():
    """parser.PATH_OPTIONS lists each path a command takes: a removed current folder refuses a
    command given one relative to it (cli/environment.py), so a path option left out would be read
    against a folder that no longer exists."""
    import argparse

    from sketchmine.cli.environment import user_path
    from sketchmine.cli.parser import PATH_OPTIONS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for p in sub.choices.values() for a in p._actions if a.type is user_path}
    assert dests == set(PATH_OPTIONS)


def test_results_on_stdout_notes_and_progress_on_stderr(mined):
    out, proc = mined
    assert "features.0" in proc.stdout and "accuracy" in proc.stdout  # the closing table
    assert "img/s" not in proc.stdout and "ETA" not in proc.stdout  # no bar among the results (it is on
    # stderr, live on a terminal only and cleared when done)
    run = sketchmine.open_run(out)
    assert run.complete and run.images_done == 60 and run.k == 3 and run.layers == LAYERS


def test_progress_without_a_terminal_is_a_line_now_and_then(images, tmp_path):
    """A bar is drawn on a terminal only: under nohup or `2> log` a long run said nothing. There
    a line comes every SKETCHMINE_PROGRESS_SECONDS (0: at every batch), none before the first
    interval has passed, none under -q; a value that is no number of seconds is refused."""
    import re

    args = ["mine", "--model", "demo", "--data", str(images), "--layers", "classifier.6", "-k", "3",
            "--workers", "0", "--batch-size", "25"]
    every = sm(*args, "--out", str(tmp_path / "a.zarr"), env={"SKETCHMINE_PROGRESS_SECONDS": "0"})
    assert every.returncode == 0, every.stderr
    lines = [l for l in every.stderr.splitlines() if l.startswith("mining: ")]
    done = [int(re.fullmatch(r"mining: (\d+) of 60 images \((\d+) %\), [\d.,]+ img/s, \d:\d\d:\d\d elapsed"
                             r"(, ETA \d:\d\d:\d\d)?", l).group(1)) for l in lines]
    assert done == [25, 50, 60] and lines[-1].startswith("mining: 60 of 60 images (100 %)"), every.stderr
    assert "ETA" in lines[0] and "ETA" not in lines[-1] and "mining:" not in every.stdout
    vis = sm("visualize", str(tmp_path / "a.zarr"), env={"SKETCHMINE_PROGRESS_SECONDS": "0"})
    assert vis.returncode == 0, vis.stderr
    assert re.search(r"^visualizing: 10 of 10 units \(100 %\)", vis.stderr, re.M), vis.stderr
    ablated = sm("importance", str(tmp_path / "a.zarr"), "--model", "demo", "--data", str(images),
                 env={"SKETCHMINE_PROGRESS_SECONDS": "0"})  # by layer: a pass of hours said nothing
    assert ablated.returncode == 0, ablated.stderr
    assert re.search(r"^importance: 1 of 1 layers \(100 %\), [\d.,e+-]+ layers/s, ", ablated.stderr, re.M), ablated.stderr
    later = sm(*args, "--out", str(tmp_path / "b.zarr"), env={"SKETCHMINE_PROGRESS_SECONDS": "3600"})
    quiet = sm("-q", *args, "--out", str(tmp_path / "c.zarr"), env={"SKETCHMINE_PROGRESS_SECONDS": "0"})
    assert later.returncode == quiet.returncode == 0, later.stderr + quiet.stderr
    assert "mining:" not in later.stderr and quiet.stderr == "", quiet.stderr
    bad = sm(*args, "--out", str(tmp_path / "d.zarr"), env={"SKETCHMINE_PROGRESS_SECONDS": "soon"})
    assert bad.returncode == 3 and bad.stderr.splitlines() == [
        "sketchmine: error: SKETCHMINE_PROGRESS_SECONDS='soon' in the environment: expected the seconds between "
        "two progress lines, a number of 0 or more; unset it for one line every 60 s"], bad.stderr
    assert not (tmp_path / "d.zarr").exists()


def test_quiet_keeps_results_drops_notes_and_default_out(images, tmp_path):
    """k=100 > 60 images is a note; -q drops it (and the bar), keeps the table; no --out: ./demo.zarr."""
    loud = sm("mine", "--model", "demo", "--data", str(images), "--layers", "classifier.6", "-k", "100",
              "--workers", "0", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "note: k=100 is more than the 60 images" in loud.stderr and "note" not in loud.stdout
    assert "no --out given: the run goes to demo.zarr" in loud.stderr
    assert sketchmine.open_run(tmp_path / "demo.zarr").k == 60
    quiet = sm("-q", "mine", "--model", "demo", "--data", str(images), "--layers", "classifier.6", "-k", "100",
               "--out", str(tmp_path / "q.zarr"), "--workers", "0")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "classifier.6" in quiet.stdout
    after = sm("summary", str(tmp_path / "q.zarr"), "-q")  # -q after the command too
    assert after.returncode == 0 and after.stderr == "" and "classifier.6" in after.stdout


def test_api_notes_go_to_logging_not_warnings(small_test_set, tmp_path, caplog):
    from sketchmine.data import ArrayDataset

    ds = ArrayDataset(small_test_set.images[:20], small_test_set.labels()[:20], small_test_set.class_names,
                      small_test_set.preprocessing, small_test_set.describe())
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="sketchmine"):
        warnings.simplefilter("error")  # a UserWarning would fail the call
        sketchmine.mine("demo", ds, layers=["classifier.6"], k=30, out=tmp_path / "r.zarr")
    notes = [r for r in caplog.records if r.name == "sketchmine"]
    assert any("k=30 is more than the 20 images" in r.getMessage() for r in notes), notes


def test_summary_names_the_model_weights_data_and_preprocessing(mined):
    """Two runs of one architecture with other weights or normalisation printed the same header:
    `summary`, its --json and the report's index now say what the numbers were made from."""
    out, _ = mined
    attrs = sketchmine.open_run(out).attrs
    algorithm, digest = attrs["weights_hash"].split(":")
    pre = attrs["preprocessing"]
    text = sm("summary", str(out))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"model {attrs['model']}, its own weights ({algorithm}:{digest[:16]}…)", lines[:2]
    assert lines[1] == (f"data: image folder {attrs['dataset']['root']}; preprocessing 'model': 1 channel, "
                        f"mean {pre['mean'][0]:.4g}, std {pre['std'][0]:.4g}, images at their stored size"), lines[:2]
    doc = json.loads(sm("summary", str(out), "--json").stdout)
    assert {k: doc[k] for k in ("model", "weights", "weights_hash", "dataset", "preprocessing")} == {
        "model": attrs["model"], "weights": None, "weights_hash": attrs["weights_hash"], "dataset": attrs["dataset"],
        "preprocessing": pre}
    from sketchmine.present.report import write_report

    index = write_report(sketchmine.open_run(out), out.parent / "provenance-report").read_text()
    assert f'<p id="provenance">its own weights ({algorithm}:{digest[:16]}…); preprocessing &#x27;model&#x27;: ' \
           f"1 channel, mean {pre['mean'][0]:.4g}" in index, index[:3000]


def test_the_summary_grid_writes_one_count_of_decimals(mined):
    """The report's summary cells wrote an exact 100 % as "100 %" beside "95.00 %" (the accuracy
    table writes 100.00): every cell and its tooltip now has two decimals."""
    import re

    from sketchmine.present.report import write_report

    out, _ = mined
    run = sketchmine.open_run(out)
    index = write_report(run, out.parent / "decimals-report").read_text()
    grid = index[index.index('id="summary-top"'):index.index("</table>", index.index('id="summary-bottom"'))]
    shown = re.findall(r"(\d+(?:\.\d+)?) % \(\d+\)", grid) + re.findall(r"accuracy (\d+(?:\.\d+)?) %,", grid)
    assert "100.00" in shown, shown  # a class the model gets all right (the case)
    assert all(re.fullmatch(r"\d+\.\d\d+", s) for s in shown), shown


def test_json_output_parses_and_matches_the_run(mined):
    out, _ = mined
    run = sketchmine.open_run(out)
    proc = sm("summary", str(out), "--json", "-n", "3")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["images"] == 60 and data["k"] == 3 and data["complete"] is True
    assert data["accuracy"] == pytest.approx(run.accuracy())
    assert [l["name"] for l in data["layers"]] == LAYERS
    top = run.top_classes("features.0", 3)
    assert [c["class"] for c in data["layers"][0]["top_classes"]] == list(top.index)
    assert [c["count"] for c in data["layers"][0]["top_classes"]] == top["count"].tolist()
    assert data["layers"][0]["max_activation"] == pytest.approx(float(run.topk("features.0")[0].max()))
    assert len(data["class_accuracy"]) == 10
    # what summary's class-statistics tables print is in the document too (a script got only the top-k lists)
    ink, acc = run.ink_correlation().loc["features.0"], run.accuracy_correlation().loc["features.0"]
    pref, si = run.class_preference("features.0"), run.selectivity("features.0")
    first = data["layers"][0]
    assert [c["class"] for c in first["preference_top"]] == list(pref.index[:3])
    assert [c["class"] for c in first["preference_bottom"]] == list(pref.index[-3:])
    assert [c["preference"] for c in first["preference_top"]] == pref["preference"].iloc[:3].tolist()
    js = lambda v: None if v is None or v != v else float(v)  # noqa: E731  (JSON has no NaN: null)
    assert first["selectivity_median"] == js(si.median()) and first["selectivity_units"] == int(si.notna().sum())
    assert (first["spearman_ink"], first["p_ink"]) == (js(ink["spearman"]), js(ink["p_value"]))
    assert (first["spearman_accuracy_topk"], first["spearman_accuracy_preference"]) == \
        (js(acc["spearman_topk"]), js(acc["spearman_preference"]))
    assert [(c["class"], c["ink_density"]) for c in data["ink_density"]] == list(run.ink_density().items())

    proc = sm("compare", str(out), str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    cmp = json.loads(proc.stdout)
    assert cmp["accuracy"]["a"] == cmp["accuracy"]["b"] == pytest.approx(run.accuracy())
    # a run against itself overlaps fully, but where a layer's classes all tie there is nothing to overlap
    assert all(r["jaccard_top"] == (None if r["all_tied_a"] else 1.0) for r in cmp["layers"]) and len(cmp["classes"]) == 10


def test_importance_json(mined, tmp_path):
    import shutil

    run_copy = tmp_path / "run.zarr"
    shutil.copytree(mined[0], run_copy)
    proc = sm("importance", str(run_copy), "--layers", "features.0", "-n", "4", "--json", "--batch-size", "60")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    want = sketchmine.open_run(run_copy).unit_importance("features.0").head(4)
    got = data["layers"]["features.0"]
    assert [u["unit"] for u in got["units"]] == want["unit"].tolist() and got["images"] == 60
    np.testing.assert_allclose([u[want.columns[1]] for u in got["units"]], want.iloc[:, 1].to_numpy())


def test_exit_codes(mined, images, tmp_path):
    out, _ = mined
    usage = sm("mine", "--data", str(images))  # --model missing
    assert usage.returncode == 2 and "sketchmine: error:" in usage.stderr
    refused = sm("mine", "--model", "demo", "--data", str(images), "--out", str(tmp_path / "r"), "--layers", "conv9")
    assert refused.returncode == 3 and "unknown layer 'conv9'" in refused.stderr and refused.stdout == ""
    resume = sm("mine", "--model", "demo", "--data", str(images), "--out", str(out), "--layers", ",".join(LAYERS),
                "-k", "4")  # the run was mined with k=3: not this run
    assert resume.returncode == 3 and "is complete, mined with other settings: k" in resume.stderr, resume.stderr
    assert "Traceback" not in resume.stderr
    verbose = sm("-v", "summary", str(tmp_path / "nope.zarr"))
    assert verbose.returncode == 3 and "Traceback" in verbose.stderr


def test_an_option_a_command_lacks_points_at_that_commands_help(capsys):
    """`sketchmine summary RUN --bogus` is a usage error (2) whose line names `sketchmine summary
    --help`, where the options are: the top level said `sketchmine --help`, which lists none."""
    from sketchmine.cli.parser import build_parser as _parser

    for argv, cmd in ((["summary", "r.zarr", "--bogus"], "summary"), (["visualize", "--layers", "a", "b", "r.zarr"],
                                                                        "visualize")):
        with pytest.raises(SystemExit) as stop:
            _parser().parse_args(argv)
        line = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and line.startswith("sketchmine: error: unrecognized arguments: ") \
            and line.endswith(f"(see: sketchmine {cmd} --help)") and "\n" not in line, line
    assert _parser().parse_args(["summary", "r.zarr", "-n", "3"]).n == 3


def test_exit_code_of_a_failure_is_1():
    from sketchmine.errors import SketchmineError, SketchmineFailure

    assert SketchmineError("x").exit_code == 3 and SketchmineFailure("x").exit_code == 1
    assert issubclass(SketchmineFailure, SketchmineError)


def test_layers_never_swallow_a_positional():
    from sketchmine.cli.parser import build_parser as _parser

    p = _parser()
    args = p.parse_args(["visualize", "--layers", "features.0,features.3", "run.zarr"])
    assert args.layers == ["features.0", "features.3"] and args.run == "run.zarr"
    args = p.parse_args(["importance", "--layers", "a", "--layers", "b,c", "r.zarr", "-n", "2"])
    assert args.layers == ["a", "b", "c"] and args.run == "r.zarr" and args.n == 2
    assert p.parse_args(["visualize", "r.zarr"]).layers is None
    proc = sm("mine", "--model", "demo", "--data", "x", "--layers", "a", "b")
    assert proc.returncode == 2 and "--layers a,b" in proc.stderr


def test_a_layer_named_with_a_comma_or_a_space_can_be_given():
    """An ONNX node (or a module added with add_module) may be named "a,b": --layers split every
    name at its commas and spaces, so no such layer could be named; a backslash now keeps them."""
    from sketchmine.cli.parser import build_parser as _parser

    p = _parser()
    args = p.parse_args(["importance", "--layers", r"conv\,1,fc", "--layers", r"|head|Mat\ Mul", "r.zarr"])
    assert args.layers == ["conv,1", "fc", "|head|Mat Mul"]
    assert p.parse_args(["effects", "--layers", r"a\\b", "r.zarr"]).layers == ["a\\b"]
    proc = sm("visualize", "r.zarr", "--layers", "a\\")
    assert proc.returncode == 2 and "a backslash ends 'a\\\\'" in proc.stderr, proc.stderr


def test_report_default_out_and_open(mined, tmp_path):
    """--open hands the report's file URL to the browser; BROWSER names a real script that records it."""
    import shutil

    run_copy = tmp_path / "mine.zarr"
    shutil.copytree(mined[0], run_copy)
    record = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{record}"\n')
    browser.chmod(0o755)
    proc = sm("report", str(run_copy), "--open", env={"BROWSER": str(browser)})
    assert proc.returncode == 0, proc.stderr
    index = tmp_path / "mine-report" / "index.html"
    assert index.is_file()
    assert record.read_text() == index.resolve().as_uri()


def test_ctrl_c_in_the_browser_of_report_open_says_the_report_was_written(mined, tmp_path):
    """A browser in the terminal (BROWSER=lynx) runs until it quits, and a Ctrl-C there reached
    `report --open`, which said "no report was written and the previous one ... is unchanged"
    with the report written. BROWSER names a real script that sends its caller that Ctrl-C."""
    import signal

    browser = tmp_path / "browser.sh"
    browser.write_text('#!/bin/sh\nkill -INT "$PPID"\nsleep 2\n')
    browser.chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "sketchmine", "report", str(mined[0]), "--out", str(tmp_path / "r"),
                           "--open"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BROWSER": str(browser)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # heard where the suite ignores it
    assert proc.returncode == 130 and (tmp_path / "r" / "index.html").is_file(), proc.stderr
    assert proc.stderr.strip() == f"sketchmine: interrupted while the browser ran; the report was written: " \
                                  f"{tmp_path / 'r' / 'index.html'}", proc.stderr


def test_no_matplotlib_use_in_library_code():
    hits = [p for p in (ROOT / "python" / "sketchmine").rglob("*.py") if "matplotlib.use(" in p.read_text()]
    assert hits == []


# ---- notebooks -------------------------------------------------------------------------------
def test_run_repr_and_html(mined):
    from html.parser import HTMLParser

    run = sketchmine.open_run(mined[0])
    text = repr(run)
    assert str(run.path) in text and "k=3" in text and "60 images" in text and "complete" in text
    assert f"accuracy {run.accuracy() * 100:.2f} %" in text and "features.0, classifier.6" in text

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])

        def handle_data(self, data):
            if self.rows and self.lasttag == "td":
                self.rows[-1].append(data)

    parser = Rows()
    parser.feed(run._repr_html_())
    body = [r for r in parser.rows if r]
    assert [r[0] for r in body] == LAYERS
    assert [int(r[2]) for r in body] == [run.layer_shape(l)[0] for l in LAYERS]
    assert "60 images" in run._repr_html_() and "complete" in run._repr_html_()


def test_unit_card_shows_the_stored_patches_and_classes(mined, tmp_path):
    import base64
    import io
    import re
    import shutil

    from PIL import Image

    from sketchmine.errors import SketchmineError

    copy = tmp_path / "run.zarr"
    shutil.copytree(mined[0], copy)
    run = sketchmine.open_run(copy)
    bare = run.unit("features.0", 2)._repr_html_()
    assert "<img" not in bare and f"sketchmine visualize {copy} --layers features.0" in bare
    sketchmine.visualize(run, ["features.0"])
    run = sketchmine.open_run(copy)
    card = run.unit("features.0", 2)
    page = card._repr_html_()
    urls = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(urls) == 2  # patches and deconvolutions
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(urls[0]))))
    tiles = run.layer_array("features.0", "patches", slice(2, 3))[0]  # (k, h, w, 1), small: not shrunk
    gap = np.full((tiles.shape[1], GAP), 128, np.uint8)  # grey between the tiles: black-ground sketches ran together
    assert np.array_equal(got, np.concatenate([x for t in tiles[..., 0] for x in (t, gap)][:-1], axis=1))
    values, index, _ = run.topk("features.0")
    assert card.max_activation == pytest.approx(float(values[2, 0]))
    # the values in one column's decimals (1.1 beside 1.099 read ragged), each class's accuracy beside it
    shown = column([float(values[2, 0]), *values[2].tolist()])
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>", page)
    assert [r[1] for r in rows] == shown[1:] and f"max activation {shown[0]} " in page
    acc = run.class_accuracy()["accuracy"]
    assert [r[3] for r in rows] == percents([acc[c] for c in card.top["class"]])  # one column, one count of decimals
    assert "importance" not in page
    sketchmine.unit_importance(run, "features.0")
    run = sketchmine.open_run(copy)
    place = run.unit_importance("features.0")
    rank = list(place["unit"]).index(2) + 1
    assert f"importance rank {rank} of {len(place)}" in run.unit("features.0", 2)._repr_html_()
    head = re.findall(r"<th>([^<]+)</th>", run._repr_html_())
    assert head[-3:] == ["pictures", "importance", "effects"] and "<td>yes</td><td>yes</td><td>-</td>" in run._repr_html_()
    mean, count = run.class_stats("features.0")
    best = [run.class_names[c] for c in np.argsort(-mean[2], kind="stable")[:5]]
    assert list(card.top_classes().index) == best
    assert all(f">{c}<" in page for c in best)
    assert "features.0[2]" in repr(card) and run.class_names[run.labels[index[2, 0]]] in repr(card)
    with pytest.raises(SketchmineError, match="unit 99 is not in layer 'classifier.6'"):
        run.unit("classifier.6", 99)


def test_a_comparison_shows_its_tables_in_a_notebook(mined):
    """`sketchmine.compare(a, b)` showed a dataclass dump of two runs and three tables in a
    notebook; it shows what `sketchmine compare` prints."""
    run = sketchmine.open_run(mined[0])
    cmp = sketchmine.compare(run, run, 3)
    assert repr(cmp) == (f"<sketchmine.Comparison A {str(run.path)!r} ({rate(run.accuracy())}) vs B "
                         f"{str(run.path)!r} ({rate(run.accuracy())}): {len(LAYERS)} layer pairs, top/bottom 3 classes>")
    page = cmp._repr_html_()
    for c, a in run.class_accuracy()["accuracy"].items():
        assert f"<th>{c}</th>\n      <td>{percent(a, 2)}</td>" in page
    top = ", ".join(run.top_classes("features.0", 3).index)
    assert f"<td>{top}</td>" in page and "<td>features.0</td>" in page


# ---- standard readers ------------------------------------------------------------------------
def test_xarray_opens_a_run_with_named_dimensions(mined):
    xr = pytest.importorskip("xarray")
    run = sketchmine.open_run(mined[0])
    tree = xr.open_datatree(str(mined[0]), engine="zarr", consolidated=False)
    layer = tree["layers/features.0"].to_dataset()
    assert layer["values"].dims == ("unit", "rank") and layer.sizes["unit"] == 32 and layer.sizes["rank"] == 3
    assert layer["yx"].dims == ("unit", "rank", "axis") and layer["class_mean"].dims == ("unit", "class")
    np.testing.assert_array_equal(layer["values"].values, run.topk("features.0")[0])
    ev = tree["eval"].to_dataset()
    assert ev["logits"].dims == ("image", "output") and ev.sizes["image"] == 60
    ds = tree["dataset"].to_dataset()
    assert ds["labels"].dims == ("image",) and ds["class_names"].dims == ("class",)
    assert [str(c) for c in ds["class_names"].values] == run.class_names
    np.testing.assert_array_equal(ds["labels"].values, run.labels)
    # class names and image paths label the class and image axes in every group (root coordinates)
    assert [str(c) for c in layer["class_mean"].coords["class"].values] == run.class_names
    picked = layer["class_mean"].sel({"class": run.class_names[2]}).values
    np.testing.assert_array_equal(picked, run.class_stats("features.0")[0][:, 2])
    assert [str(p) for p in ev["logits"].coords["image"].values] == [str(p) for p in run.paths]
    assert [str(p) for p in ds["labels"].coords["image"].values] == [str(p) for p in run.paths]


# ---- pretrained weights --------------------------------------------------------------------
def test_pretrained_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    """--weights DEFAULT: refused with where to put the file when it is not cached; read from the
    cache (a real file at torch's hub path) with the weights' own normalisation, size and categories."""
    import torch
    import torchvision

    from sketchmine.errors import SketchmineError
    from sketchmine.model.models import load_model, preprocessing_for
    from sketchmine.model.pretrained import cached_file, is_weights_name

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    weights = torchvision.models.SqueezeNet1_1_Weights.DEFAULT
    target = cached_file(weights.url)
    assert str(target).startswith(str(tmp_path / "torch-home"))
    with pytest.raises(SketchmineError, match=r"not in the local cache .*" + target.name + r".*--weights FILE"):
        load_model("squeezenet1_1", "DEFAULT")
    with pytest.raises(SketchmineError, match="has no such weights; expected DEFAULT or one of IMAGENET1K_V1"):
        load_model("squeezenet1_1", "IMAGENET9K_V9")
    torch.manual_seed(5)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    for name in ("DEFAULT", "IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        loaded = load_model("squeezenet1_1", name)
        got = loaded.module.state_dict()
        assert all(torch.equal(got[k], v) for k, v in state.items())
        assert loaded.categories == weights.meta["categories"] and len(loaded.categories) == 1000
        assert not loaded.random_init and loaded.model_id == "squeezenet1_1:SqueezeNet1_1_Weights.IMAGENET1K_V1"
    pre = preprocessing_for(loaded)
    t = weights.transforms()
    assert pre.mean == pytest.approx(tuple(t.mean)) and pre.std == pytest.approx(tuple(t.std))
    assert tuple(pre.size)[-2:] == (t.crop_size[0], t.crop_size[0])
    assert is_weights_name("DEFAULT") and not is_weights_name("model.pth") and not is_weights_name("weights.pt")


def test_tables_written_to_a_file_keep_every_layer_name_whole(mined, tmp_path):
    """`sketchmine summary RUN > summary.txt` (docs/cli.md): with no terminal and no COLUMNS, rich
    drew 80 columns and cut each layer name to "featur…", the key of every row."""
    run, _ = mined
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    with open(tmp_path / "summary.txt", "w") as f:
        proc = subprocess.run([sys.executable, "-m", "sketchmine", "summary", str(run)], stdout=f, stderr=subprocess.PIPE,
                              text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in (tmp_path / "summary.txt").read_text().splitlines() if line.startswith("│ ")]
    assert rows and all("…" not in line for line in rows)  # no cell cut short
    for layer in LAYERS:  # the layer table, the class lists, the class-preference table and its statistics
        assert sum(line.startswith(f"│ {layer} ") for line in rows) == 4, layer


def test_a_run_without_distributions_names_the_command_that_adds_them(mined, tmp_path):
    """The notes of a run mined without distributions gave `sketchmine mine --distributions --model ...
    --data ... --out NEW_DIR` although the run records its model and folder: the command they give
    now is filled in from the run, and running it mines the same top-k with the distributions."""
    import shlex

    import sketchmine

    run, _ = mined
    proc = sm("unit", str(run), LAYERS[0], "1")
    said = " ".join(proc.stdout.split())  # rich wraps at the terminal's width
    assert proc.returncode == 0 and said.count("was mined without distributions") == 1, said  # one line, four sections
    assert "no bottom, quantiles, histogram, bins: " in said and "no effects, correlated: " in said  # one pass, one note
    # each note on one line, however long, so its command copies whole (rich broke it inside the backticks)
    assert any("`sketchmine mine --model" in line and line.endswith("--out NEW_DIR`") for line in proc.stdout.splitlines())
    command = said.split("mine it again into a new directory to add them: `")[1].split("`")[0]
    assert "..." not in command and "--data" in command and command.endswith("--out NEW_DIR")
    args = shlex.split(command.replace("NEW_DIR", str(tmp_path / "again.zarr")))
    assert args[:2] == ["sketchmine", "mine"]
    again = sm(*args[1:], "--workers", "0", "--batch-size", "32")
    assert again.returncode == 0, again.stderr
    old, new = sketchmine.open_run(run), sketchmine.open_run(tmp_path / "again.zarr")
    assert new.layers == old.layers and new.attrs["distributions"] is True
    for layer in old.layers:
        for a, b in zip(old.topk(layer), new.topk(layer)):
            np.testing.assert_array_equal(a, b)
        assert new.histogram(layer)[1].sum(1).min() == len(new.paths)
