"""No silent wrong answers at the command line (issue 14, cases 8, 12, 13 and 16): the report and the
demo write only into folders they own, bad arguments and failures are one line, control characters
in names never reach the terminal raw, and Ctrl-C says what a re-run does. Real subprocesses
`python -m sketchmine`, one real run mined once per module."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sketchmine
from sketchmine.cli.main import main as cli_main
from sketchmine.present.console import safe
from sketchmine.data import ArrayDataset, export_image_folder
from sketchmine.present.report import MARKER, write_report

WEIRD = "\x1b[2J[bold]bear\x07"
"""A class folder name that would clear the screen, ring the bell and open rich markup."""

LAYERS = ["features.0", "features.3", "classifier.4", "classifier.6"]


def sm(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}  # rich tables as wide as the names in them
    return subprocess.run([sys.executable, "-m", "sketchmine", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def one_line_error(proc: subprocess.CompletedProcess, pattern: str, code: int = 3) -> None:
    """Exactly one stderr error line, `sketchmine: error: …`, matching `pattern` (notes said before it,
    such as the class-name note of a folder named otherwise than the model's outputs, are no error);
    exit code 2 for a usage error (argparse's, which points at --help), else `code` (3: input refused,
    1: running failed)."""
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("note: ")]
    assert proc.returncode == (2 if lines and lines[-1].endswith("--help)") else code), proc.stderr + proc.stdout
    assert len(lines) == 1 and lines[0].startswith("sketchmine: error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (a folder's state, to compare before and after)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def images(tmp_path_factory, demo_test_set) -> Path:
    """200 real test images (20 per class) as an ImageFolder; one class folder is named WEIRD."""
    from tests.helpers import per_class_subset

    sub = per_class_subset(demo_test_set, 20, "trust-cli")
    names = [WEIRD if n == "bear" else n for n in sub.class_names]
    ds = ArrayDataset(sub.images, sub.labels(), names, sub.preprocessing, sub.describe())
    return export_image_folder(ds, tmp_path_factory.mktemp("trust") / "images")


@pytest.fixture(scope="module")
def run_dir(images) -> Path:
    out = images.parent / "run.zarr"
    proc = sm("mine", "--model", "demo", "--data", str(images), "--out", str(out), "--layers", ",".join(LAYERS),
              "--batch-size", "100", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    return out




# ---- case 8: the report (and the demo) write only into folders they own -------------------------
def test_report_into_a_project_folder_or_a_run_is_refused_and_nothing_moves(run_dir, tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copytree(run_dir, project / "data" / "run.zarr")
    (project / "data" / "notes.txt").write_text("mine, not sketchmine's")
    (project / "layers").mkdir()
    (project / "layers" / "keep.txt").write_text("a folder the old report deleted")
    before = tree(project)
    one_line_error(sm("report", "data/run.zarr", "--out", ".", cwd=project), r"holds the run it reports")
    one_line_error(sm("report", "data/run.zarr", "--out", "data", cwd=project), r"holds the run it reports")
    one_line_error(sm("report", "data/run.zarr", "--out", "data/run.zarr", cwd=project), r"inside the run")
    one_line_error(sm("report", "data/run.zarr", "--out", "data/run.zarr/layers", cwd=project), r"inside the run")
    other = tmp_path / "other.zarr"
    shutil.copytree(run_dir, other)
    one_line_error(sm("report", str(other), "--out", ".", cwd=project), r"not empty and is not a sketchmine report")
    assert tree(project) == before
    assert sketchmine.open_run(project / "data" / "run.zarr").complete


def test_report_replaces_its_own_folder_and_refuses_a_foreign_one(run_copy, tmp_path):
    rep = tmp_path / "rep"
    proc = sm("report", str(run_copy), "--out", str(rep))
    assert proc.returncode == 0, proc.stderr
    marker = json.loads((rep / MARKER).read_text())
    assert "index.html" in marker["files"]
    first = tree(rep)
    proc = sm("report", str(run_copy), "--out", str(rep))  # its own folder: replaced
    assert proc.returncode == 0, proc.stderr
    assert set(tree(rep)) == set(first) and (rep / "index.html").is_file()
    assert not list(tmp_path.glob(".rep*")), list(tmp_path.glob(".rep*"))  # no temporary folder left
    (rep / "img" / "yours.txt").write_text("put here by someone")  # a file the report did not write
    before = tree(rep)
    one_line_error(sm("report", str(run_copy), "--out", str(rep)), r"holds files the report did not write.*yours\.txt")
    assert tree(rep) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "index.html").write_text("someone's page")
    one_line_error(sm("report", str(run_copy), "--out", str(foreign)), r"not empty and is not a sketchmine report")
    assert (foreign / "index.html").read_text() == "someone's page" and len(list(foreign.iterdir())) == 1
    # refused before the live probe's export (seconds): the export is what imports onnx
    said = subprocess.run([sys.executable, "-c", "import sys; from sketchmine.cli.main import main; "
                           f"rc = main(['report', {str(run_copy)!r}, '--out', {str(foreign)!r}]); "
                           "print(rc, 'onnx' in sys.modules)"], capture_output=True, text=True)
    assert said.stdout.split() == ["3", "False"], said.stdout + said.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(sm("report", str(run_copy), "--out", str(afile)), r"exists and is not a folder")
    assert afile.read_text() == "x"


def test_report_refuses_a_folder_with_a_link_or_a_folder_it_did_not_write(run_copy, tmp_path):
    """A link to a folder and an empty folder put into a report folder were removed by the next
    report without a word (only files were checked): refused now, naming them; and the same
    run gives the same report byte for byte (the SVGs held a date and random ids)."""
    rep = tmp_path / "rep"
    write_report(run_copy, rep)
    first = tree(rep)
    write_report(run_copy, rep)
    timed = re.compile(rb"written by sketchmine in [0-9.]+ s")  # the one line that says how long it took
    assert {k: timed.sub(b"", v) for k, v in tree(rep).items()} == {k: timed.sub(b"", v) for k, v in first.items()}
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "keep.txt").write_text("mine")
    (rep / "my_data_link").symlink_to(data, target_is_directory=True)
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(my_data_link/\)"):
        write_report(run_copy, rep)
    (rep / "my_data_link").unlink()
    (rep / "my_notes").mkdir()
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(my_notes/\)"):
        write_report(run_copy, rep)
    assert (rep / "my_notes").is_dir() and (data / "keep.txt").read_text() == "mine"


def test_a_report_stopped_while_swapped_in_from_inside_its_folder_is_written_again(run_copy, tmp_path, monkeypatch):
    """With the shell inside the report folder the report is swapped in entry by entry; a stop
    there (here: a rename that fails part-way, as a kill would stop it) left a folder without
    its marker that every later report refused. It is marked partial first now."""
    from sketchmine.present import report_folder

    rep = tmp_path / "rep"
    write_report(run_copy, rep)
    monkeypatch.chdir(rep)
    real, calls = os.replace, []

    def stop_on_third(a, b):  # os.replace itself, stopped at the third entry (a KeyboardInterrupt, as Ctrl-C)
        calls.append(b)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(report_folder.os, "replace", stop_on_third)
    with pytest.raises(KeyboardInterrupt) as e:  # and it says so: "the previous report is unchanged" was untrue
        write_report(run_copy, rep)
    assert str(e.value) == (f"interrupted while the report replaced the previous one in {rep}: the report folder is "
                            "incomplete; run `sketchmine report` again")
    monkeypatch.setattr(report_folder.os, "replace", real)
    assert json.loads((rep / MARKER).read_text()).get("partial")
    write_report(run_copy, rep)  # the same command writes it again
    assert (rep / "index.html").is_file() and not json.loads((rep / MARKER).read_text()).get("partial")


def test_a_killed_report_leaves_the_previous_one_and_its_leftover_is_cleaned(run_copy, tmp_path):
    rep = tmp_path / "rep"
    write_report(run_copy, rep)
    before = tree(rep)
    proc = subprocess.Popen([sys.executable, "-m", "sketchmine", "report", str(run_copy), "--out", str(rep)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # killed while it writes: its temporary folder holds files (the swap comes after the last one)
    partial = _wait_for(lambda: [d for d in tmp_path.glob(".rep.sketchmine-report-tmp-*") if any(d.iterdir())], proc)
    proc.kill()
    proc.wait()
    assert partial and partial[0].exists()  # SIGKILL: the temporary folder stays behind ...
    assert tree(rep) == before  # ... and the previous report is untouched
    write_report(run_copy, rep)  # the next report removes the dead process's leftover
    assert not list(tmp_path.glob(".rep.sketchmine-report-tmp-*"))
    assert set(tree(rep)) == set(before)


def test_demo_refuses_a_foreign_out_before_mining(tmp_path):
    from sketchmine.cli.demo import DEMO_MARKER, check_demo_dir

    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    one_line_error(sm("demo", "--out", str(out)), r"not empty and is not a sketchmine demo folder.*thesis\.tex")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(sm("demo", "--out", str(afile)), r"exists and is not a folder")
    reports = tmp_path / "reports"
    (reports / "demo").mkdir(parents=True)
    (reports / "demo" / "a.txt").write_text("x")
    one_line_error(sm("demo", "--out", str(tmp_path / "new"), "--report", str(reports)),
                   r"report folder .*demo is not empty")
    assert not (tmp_path / "new").exists()
    # accepted: an earlier demo's layout (its runs and reports only), or the demo's marker
    old = tmp_path / "old"
    for name in ("demo.zarr", "demo-resnet.zarr", "report"):
        (old / name).mkdir(parents=True)
    check_demo_dir(old, old / "report")
    (out / DEMO_MARKER).write_text("")
    check_demo_dir(out, out / "report")


# ---- case 12: one line, not a traceback ---------------------------------------------------------
@pytest.mark.parametrize("args,pattern", [
    (["--image-size", "-3"], r"--image-size: must be a whole number >= 1, got -3"),
    (["--flush-every", "0"], r"--flush-every: must be a whole number >= 1, got 0"),
    (["--flush-every", "-1"], r"--flush-every: must be a whole number >= 1"),
    (["--workers", "-1"], r"--workers: must be a whole number >= 0"),
    (["--batch-size", "zero"], r"--batch-size: expected a whole number"),
    (["--device", "banana"], r"unknown device 'banana'"),
    (["-k", "0"], r"-k: must be a whole number >= 1"),
])
def test_bad_mine_arguments_are_usage_errors(tmp_path, images, args, pattern):
    proc = sm("mine", "--model", "demo", "--data", str(images), "--out", str(tmp_path / "r"), *args)
    one_line_error(proc, pattern)
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path, images):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for cmd in (["mine", "--model", "demo", "--data", str(images), "--out", str(tmp_path / "r")],
                ["visualize", str(tmp_path / "r")], ["importance", str(tmp_path / "r")]):
        one_line_error(sm(*cmd, "--device", "cuda"), r"--device: device 'cuda': this machine has no CUDA GPU")


def test_existing_files_as_out_and_bad_importance_arguments(run_copy, images, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(sm("mine", "--model", "demo", "--data", str(images), "--out", str(afile)), r"afile")
    one_line_error(sm("report", str(run_copy), "--out", str(afile)), r"exists and is not a folder")
    assert afile.read_text() == "x"
    one_line_error(sm("importance", str(run_copy), "--batch-size", "0"), r"--batch-size: must be a whole number >= 1")
    forwards: list[str] = []  # in this process, so every forward of any module is seen
    hook = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: forwards.append(type(m).__name__))
    mine_png = tmp_path / "thesis.png"  # a figure of the user's, and a link to it: never replaced
    mine_png.write_bytes(b"\x89PNG the user's own")
    (tmp_path / "link.png").symlink_to(mine_png)
    (tmp_path / "old.jpg").write_bytes(b"jpeg")
    try:
        for plot, pattern in ((str(mine_png), r"thesis.png exists and is not a plot sketchmine wrote; name a new file"),
                              (str(tmp_path / "link.png"), r"link.png exists and is a link"),
                              (str(tmp_path / "old.jpg"), r"a \.jpg file cannot record who wrote it"),
                              (str(tmp_path / "gone" / "x.png"), r"folder \S*gone does not exist"),
                              (str(tmp_path), r"is a folder"),
                              (str(afile / "x.png"), r"the folder \S*afile is a file, not a folder"),
                              (str(tmp_path / "x.txt"), r"unknown format 'txt'"),
                              (str(run_copy / "x.png"), r"inside the run")):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = cli_main(["importance", str(run_copy), "--layers", "features.3", "--plot", plot])
            one_line_error(subprocess.CompletedProcess([], code, "", err.getvalue()), pattern)
    finally:
        hook.remove()
    assert not forwards  # refused before the ablations, not after them
    assert mine_png.read_bytes() == b"\x89PNG the user's own" and (tmp_path / "link.png").is_symlink()
    assert not sketchmine.open_run(run_copy).has_importance("features.3")
    for cmd in (["importance", str(run_copy)], ["visualize", str(run_copy)]):
        one_line_error(sm(*cmd, "--layers", ".."), r"'\.\.'")


def test_importance_and_effects_build_the_model_once(run_copy):
    """Every layer is checked in the model before any is computed, on the model the pass then
    ablates: one build per command (counted as the children the model's own class registers:
    the ablation's split and copies are other classes, or register nothing)."""
    from sketchmine.passes.reload import run_model

    model_class = type(run_model(sketchmine.open_run(run_copy), None, None).module)
    built: list[str] = []
    hook = torch.nn.modules.module.register_module_module_registration_hook(
        lambda parent, name, child: built.append(name) if type(parent) is model_class else None)
    try:
        run_model(sketchmine.open_run(run_copy), None, None)
        one = list(built)
        assert one, "a build registers the model's children"
        for command in ("importance", "effects"):
            built.clear()
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = cli_main([command, str(run_copy), "--layers", "features.3,classifier.4", "-q"])
            assert code == 0, err.getvalue()
            assert built == one, command
    finally:
        hook.remove()
    assert sketchmine.open_run(run_copy).has_importance("classifier.4")


@pytest.fixture()
def small_disk(tmp_path):
    """A tmpfs (root only; skipped elsewhere) of the given size."""
    mounted = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"disk{len(mounted)}"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_report_on_a_full_disk_is_one_line_and_leaves_nothing(run_copy, small_disk):
    disk = small_disk("300k")
    proc = sm("report", str(run_copy), "--out", str(disk / "rep"))
    one_line_error(proc, r"cannot write the report to .*rep: No space left on device", code=1)
    assert list(disk.iterdir()) == []  # the partial report was removed


def test_visualize_on_a_full_disk_prints_one_line_not_asyncio_noise(run_dir, small_disk, images):
    disk = small_disk("2m")  # fills mid-visualize, with chunk writes in flight (measured)
    shutil.copytree(run_dir, disk / "run.zarr")
    proc = sm("visualize", str(disk / "run.zarr"), "--data", str(images), "--batch-size", "64")
    one_line_error(proc, r"No space left on device.*re-run", code=1)


# ---- case 13: control characters and markup in names -----------------------------------------
def test_safe_escapes_every_control_character_and_markup():
    text = "a\x1b[2J\x07\x9b\t\n\r\x00[bold]b\u202e"
    got = safe(text)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in got)
    assert "\\x1b" in got and "\\x9b" in got and "\\u202e" in got and "\\[bold]" in got
    assert safe(text, markup=False).count("[bold]") == 1 and "\\[" not in safe(text, markup=False)


def test_names_with_escape_sequences_never_reach_the_terminal_raw(run_dir, images, tmp_path):
    proc = sm("summary", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "\\x1b[2J[bold]bear\\x07" in proc.stdout.replace("\n", "")  # shown, escaped, markup as text
    bad = images.parent / "bad"
    shutil.copytree(images, bad)
    (bad / WEIRD / "zz\x1b[31mgarbage.png").write_bytes(b"not a png" * 10)
    proc = sm("mine", "--model", "demo", "--data", str(bad), "--out", str(tmp_path / "r"), "--workers", "0")
    one_line_error(proc, r"cannot read image \\x1b\[2J\[bold\]bear\\x07/zz\\x1b\[31mgarbage\.png")
    assert "\x1b" not in proc.stderr and "\x1b" not in proc.stdout


# ---- case 16: Ctrl-C says what a re-run does -------------------------------------------------------
def _ctrl_c_default() -> None:
    """The child's Ctrl-C as a terminal gives it: a process that ignores SIGINT passes the ignoring on
    to its children, and these tests then saw the command finish (exit 0) under a test runner that
    did (test_kill does the same)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"finished before the condition: {proc.communicate()}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def test_ctrl_c_during_report_keeps_the_previous_one_and_says_so(run_copy, tmp_path):
    rep = tmp_path / "rep"
    write_report(run_copy, rep)
    before = tree(rep)
    for _ in range(5):  # on a loaded machine the report may finish between the check and the Ctrl-C: again
        proc = subprocess.Popen([sys.executable, "-m", "sketchmine", "report", str(run_copy), "--out", str(rep)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
        _wait_for(lambda: list(tmp_path.glob(".rep.sketchmine-report-tmp-*")), proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            break
        write_report(run_copy, rep)  # the report it finished replaced the previous one: the test's own again
        before = tree(rep)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert re.search(r"sketchmine: interrupted; no report was written and the previous one .* is unchanged; "
                     r"re-running writes the report again from the start", err), err
    assert tree(rep) == before
    assert not list(tmp_path.glob(".rep.sketchmine-report-tmp-*"))  # the partial report removed


def test_ctrl_c_during_importance_names_the_layers_kept(run_copy):
    proc = subprocess.Popen([sys.executable, "-m", "sketchmine", "importance", str(run_copy), "--layers",
                             "classifier.6,features.3", "--batch-size", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
    def stored() -> bool:  # classifier.6's result whole, as any reader sees it
        try:
            return sketchmine.open_run(run_copy).has_importance("classifier.6")
        except sketchmine.SketchmineError:  # a commit in progress: not yet
            return False

    _wait_for(stored, proc)
    proc.send_signal(signal.SIGINT)  # features.3's ablations (64 units) still ahead
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert re.search(r"sketchmine: interrupted; the importance of classifier\.6 is stored; a re-run recomputes "
                     r"every layer it is given, so pass --layers features\.3 to compute only the rest", err), err
    run = sketchmine.open_run(run_copy)
    assert run.has_importance("classifier.6") and not run.has_importance("features.3")


KILLED_BEFORE_FIRST_FLUSH = """
import os, signal, sys, torch, sketchmine
from sketchmine.data import animal_shape
ds = animal_shape("test")
x = torch.from_numpy(ds.images[:200]).float().div(255)[:, None]
y = [int(v) for v in ds.labels()[:200]]
calls = []
class Drawings(torch.utils.data.Dataset):
    classes, targets = ds.class_names, y  # labels known without reading a sample
    def __len__(self): return 200
    def __getitem__(self, i):
        calls.append(i)
        if len(calls) > 60:  # past the fingerprint's samples, inside the mining loop: before the first flush
            os.kill(os.getpid(), signal.SIGKILL)
        return x[i], y[i]
sketchmine.mine("demo", Drawings(), out=sys.argv[1], preprocessing="model", flush_every=100, batch_size=32)
"""


def test_a_run_with_nothing_committed_yet_is_summarised_as_such(tmp_path):
    """Between a run's creation and its first checkpoint (minutes on a CPU at the default
    --flush-every) `summary` in another terminal was an error ("no results for 'features.0' yet
    (nothing flushed)"): it now says the run has started and when its first numbers come, lists its
    layers, and exits 0 (as --json); readers of results say the same in their error."""
    out = tmp_path / "run.zarr"
    proc = subprocess.run([sys.executable, "-c", KILLED_BEFORE_FIRST_FLUSH, str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done == 0
    said = sm("summary", str(out))
    assert said.returncode == 0, said.stderr
    text = " ".join(said.stdout.split())
    assert "mining started and nothing is committed yet (0 of 200 images; the first checkpoint comes after " \
           "--flush-every batches)" in text and f"its {len(run.layers)} layers: {', '.join(run.layers)}" in text
    doc = json.loads(sm("summary", str(out), "--json").stdout)
    assert doc["images"] == 0 and [l["name"] for l in doc["layers"]] == run.layers and "nothing is committed" in doc["note"]
    one_line_error(sm("unit", str(out), run.layers[0], "0"), r"no results for 'features.0' yet: mining started", code=3)
    card = run.unit(run.layers[0], 0)  # a notebook's display of it raised the readers' refusal
    assert "mining started and nothing is committed yet (0 of 200 images" in repr(card)
    assert "nothing is committed yet" in card._repr_html_()
    checked = sm("verify", str(out))  # it said "its committed checkpoint (image 0) is intact"
    assert checked.returncode == 0 and "partial run: no checkpoint committed yet" in checked.stdout, checked.stdout
