"""A killed report's staging folder is removed by the next report there: even when the killed
report's pid is in use again (a report in a container is PID 1 each time it starts, and the
folder, named with pid 1, was taken for the next report's own and kept for good), and when its
marker was cut by the kill. A real report of a real mined run, killed while it wrote its pages."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import sketchmine
from sketchmine.present.report import MARKER, write_report
from sketchmine.present.report_folder import STARTED_SLACK, TMP
from tests.helpers import report_with_hook

KILLED_MID_BUILD = '''"""Made by the test: a `kill -9` while the report writes its pages."""
import os
import signal
import sys


def _hook(event, args):
    if "report" in sys.argv and event == "open" and "-tmp-" in str(args[0]) and "/data/" in str(args[0]):
        os.kill(os.getpid(), signal.SIGKILL)


sys.addaudithook(_hook)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_test_set):
    return sketchmine.mine("demo", small_test_set, layers=["features.0", "classifier.6"],
                           out=tmp_path_factory.mktemp("run") / "run.zarr", batch_size=100)


def _killed_mid_build(run, tmp_path: Path) -> Path:
    """The staging folder a report killed while it wrote its pages left."""
    killed, _ = report_with_hook(run, tmp_path, KILLED_MID_BUILD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-600:]
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(f".rep{TMP}")]
    assert (left / MARKER).is_file()
    return left


def test_a_killed_reports_folder_whose_pid_is_used_again_is_removed(run, tmp_path):
    left = _killed_mid_build(run, tmp_path)
    rep = tmp_path / "rep"
    made = int(left.name.rpartition(TMP)[2].split("-")[0]) / 1e9
    time.sleep(max(0.0, made + STARTED_SLACK + 1.0 - time.time()))
    other = subprocess.Popen(["sleep", "60"])  # a process started since, given the killed report's pid
    try:
        reused = left.rename(left.with_name(f"{left.name.rsplit('-', 1)[0]}-{other.pid}"))
        write_report(run, rep)
        assert not reused.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")] == []
        assert (rep / "index.html").is_file() and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_killed_reports_folder_whose_marker_was_cut_is_removed(run, tmp_path):
    """The listing marker is written (truncated, then written) just before the swap: a kill between
    the two left it empty, `owned` refused it as no sketchmine marker, and the folder, a whole
    report, stayed for good. Read now as a partial marker listing nothing (what is recognisably a
    report's is removed)."""
    left = _killed_mid_build(run, tmp_path)
    (left / MARKER).write_text("")  # as the kill between the truncation and the write leaves it
    mine = left / "notes.txt"
    mine.write_text("not a report's")  # something else in it: the folder kept as it is
    write_report(run, tmp_path / "rep")
    assert mine.read_text() == "not a report's" and (left / "data").is_dir()
    mine.unlink()
    write_report(run, tmp_path / "rep")
    assert not left.exists()


def test_a_folder_of_a_live_report_is_kept(run, tmp_path):
    """The process that made the folder is running (here: this one, an earlier call's folder that
    `swap_in` kept): not removed."""
    rep = tmp_path / "rep"
    kept = tmp_path / f".rep{TMP}{time.time_ns()}-{os.getpid()}"
    kept.mkdir()
    (kept / MARKER).write_text('{"sketchmine": "report", "partial": true}\n')
    (kept / "index.html").write_text("an earlier call's")
    write_report(run, rep)
    assert (kept / "index.html").read_text() == "an earlier call's"
    assert Path(rep / "index.html").is_file()
