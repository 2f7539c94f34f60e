"""SIGTERM and SIGHUP (a `kill`, a closed terminal, a scheduler's stop) end a writing command as
Ctrl-C does: the one line saying what a re-run does, an exit code of 128 + the signal, and a run
that the same command finishes identical to an uninterrupted one. They ended `mine` by the
signal, nothing said (exit -15 / -1), wherever it was writing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import assert_same_store, image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_test_set) -> Path:
    """40 real test images (4 per class) as PNGs."""
    return image_folder(demo_test_set, tmp_path_factory.mktemp("signals") / "images", per_class=4)


def _mine(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sketchmine", "mine", "--model", "demo", "--data", str(folder), "--out", str(out),
            "--batch-size", "2", "--flush-every", "1", "--workers", "0", "--layers", "features.3,classifier.6"]


def _as_a_terminal_starts_it() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _images_done(out: Path) -> int:
    try:
        return int(json.loads((out / "zarr.json").read_text())["attributes"]["progress"]["images_done"])
    except (OSError, ValueError, KeyError):
        return 0


def _signalled_after_a_commit(cmd: list[str], out: Path, sig: int, ignore: int | None = None) -> tuple[int, str]:
    """Start `cmd`, send `sig` once a checkpoint is committed; its exit code and stderr."""

    def start() -> None:
        _as_a_terminal_starts_it()
        if ignore is not None:
            signal.signal(ignore, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=start)
    began = time.time()
    while proc.poll() is None and _images_done(out) == 0 and time.time() - began < 300:
        time.sleep(0.005)
    assert proc.poll() is None, "mine ended before its first checkpoint: no signal could be sent mid-run"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_mine_as_ctrl_c_does_and_it_resumes_identical(tmp_path, folder, sig):
    ref = subprocess.run(_mine(folder, tmp_path / "ref.zarr"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run.zarr"
    rc, err = _signalled_after_a_commit(_mine(folder, out), out, sig)
    lines = err.strip().splitlines()
    assert rc == 128 + sig, (rc, err[-600:])
    assert lines[-1].startswith(f"sketchmine: interrupted by {signal.Signals(sig).name}; re-run the same command "
                                "to resume"), err[-600:]
    assert "Traceback" not in err
    assert 0 < _images_done(out) < 40  # stopped mid-run, at a checkpoint the re-run resumes from
    again = subprocess.run(_mine(folder, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert_same_store(out, tmp_path / "ref.zarr")


def test_sighup_ignored_by_whoever_started_mine_stays_ignored(tmp_path, folder):
    """`nohup sketchmine mine ...`: a closed terminal must not stop it."""
    out = tmp_path / "run.zarr"
    rc, err = _signalled_after_a_commit(_mine(folder, out), out, signal.SIGHUP, ignore=signal.SIGHUP)
    assert rc == 0 and "interrupted" not in err, (rc, err[-600:])
    assert _images_done(out) == 40


FROM_A_STRING = '''"""Made by the test: a library running code from a string (dataclasses and namedtuple make their
methods so, at import) just as a SIGTERM lands, as Python itself does it, not a stand-in of sketchmine."""
import os
import signal
import sys

_armed = [True]


def _hook(event, args):
    answered = getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "_as_ctrl_c"  # not held
    said = hasattr(sys.modules.get("sketchmine.present.progress_bar"), "RichProgress")  # `mine` runs, what says
    # "interrupted" loaded: no module is imported after the interrupt
    if event == "import" and _armed and answered and said:  # the command runs: a module imported on first use
        _armed.clear()
        exec("import pathlib, time\\npathlib.Path(os.environ['MARK']).touch()\\ntime.sleep(60)")


sys.addaudithook(_hook)
'''


def test_sigterm_inside_code_run_from_a_string_still_exits_143(tmp_path, folder):
    """CPython notes a KeyboardInterrupt that leaves code run from a string (exec, eval) in a flag
    of the whole process even when the caller handles it, and `python -m` then ends the process
    by SIGINT after its exit code was decided: `mine` said "interrupted by SIGTERM" and exited -2.
    A SIGTERM 1.84 s into `mine` landed in a dataclass being made at import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FROM_A_STRING)
    mark = tmp_path / "in-the-string"
    env = {**os.environ, "MARK": str(mark),
           "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(_mine(folder, tmp_path / "run.zarr"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_as_a_terminal_starts_it)
    began = time.time()
    while proc.poll() is None and not mark.exists() and time.time() - began < 120:
        time.sleep(0.005)
    assert mark.exists(), proc.communicate()[1][-600:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-600:])
    assert err.strip().splitlines()[-1].startswith("sketchmine: interrupted by SIGTERM; re-run the same command"), err
    assert "Traceback" not in err


SECOND_CTRL_C = '''"""Made by the test: a second Ctrl-C while a command line leaves its temporary caches (HOME missing),
after the command has said what it did."""
import os
import signal
import sys


def _hook(event, args):
    if event == "shutil.rmtree" and "sketchmine-caches-" in str(args[0]):
        os.kill(os.getpid(), signal.SIGINT)


sys.addaudithook(_hook)
'''


def test_a_ctrl_c_after_the_command_ended_changes_nothing(tmp_path, demo_model, small_test_set):
    """Between the end of the command (its exit status decided, its line said) and the process's
    end, Python's raising Ctrl-C handler was back while main() left its folders and removed a
    temporary cache: a Ctrl-C there printed a traceback after `summary`'s output and `python -m`
    ended the process by SIGINT (exit -2); a failed command's too. Now the exit status is the
    command's and nothing follows its output."""
    import sketchmine

    run = sketchmine.mine(demo_model, small_test_set, layers=["features.3"], k=2, out=tmp_path / "run.zarr",
                          batch_size=50)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SECOND_CTRL_C)
    env = {**os.environ, "HOME": str(tmp_path / "no-home"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    env.pop("MPLCONFIGDIR", None)
    env.pop("XDG_CACHE_HOME", None)
    for target, code in ((run.path, 0), (tmp_path / "not-a-run.zarr", None)):
        proc = subprocess.run([sys.executable, "-m", "sketchmine", "summary", str(target)], capture_output=True,
                              text=True, env=env, timeout=300, preexec_fn=_as_a_terminal_starts_it)
        assert "Traceback" not in proc.stderr, proc.stderr[-800:]
        assert proc.returncode == code if code is not None else proc.returncode > 0, (proc.returncode, proc.stderr)
    assert not (tmp_path / "no-home").exists()
