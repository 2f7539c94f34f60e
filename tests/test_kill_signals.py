"""SIGTERM and SIGHUP (a `kill`, a closed terminal, a scheduler's stop) end a writing command as
Ctrl-C does: the one line saying what a re-run does, an exit code of 128 + the signal, and a run
that the same command finishes identical to an uninterrupted one. They ended `mine` by the
signal, nothing said (exit -15 / -1), wherever it was writing."""
from __future__ import annotations

import json
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
