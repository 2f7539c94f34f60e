"""Real crashes: SIGKILL `mine` and `visualize` again and again at random moments (flushes
happen after every batch here, so many kills land inside one), resume each time with the
same command, and compare the final store with an uninterrupted run, array for array."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sketchmine
from tests.helpers import assert_same_store, image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_test_set) -> Path:
    """120 real test images (12 per class) as PNGs."""
    return image_folder(demo_test_set, tmp_path_factory.mktemp("kill") / "images")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sketchmine", *args]


def _progress(path: Path, key: str) -> int:
    """Images (mine) or units (visualize) committed so far, read like any reader would."""
    try:
        if key == "images":
            return int(json.loads((path / "zarr.json").read_text())["attributes"]["progress"]["images_done"])
        done = 0
        for meta in (path / "layers").glob("*/zarr.json"):
            done += int(json.loads(meta.read_text())["attributes"].get("visualized", {}).get("units_done", 0))
        return done
    except (OSError, ValueError, KeyError):
        return 0


def _wait_for_commit(proc: subprocess.Popen, out: Path, key: str, base: int) -> float | None:
    """Time at which progress moves past `base`, or None when the process ended first."""
    start = time.time()
    while proc.poll() is None and time.time() - start < 120:
        if _progress(out, key) != base:
            return time.time()
        time.sleep(0.002)
    return None


def _kill_repeatedly(cmd: list[str], out: Path, key: str, fractions: list[float]) -> int:
    """Start `cmd`, and once it has committed twice, SIGKILL it `fraction` of its own commit
    interval later (so kills land at random points inside a flush on any machine's speed);
    restart, again for each fraction; then let it finish. Returns how many kills landed while
    it was still running."""
    kills = 0
    for fraction in fractions:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = _wait_for_commit(proc, out, key, _progress(out, key))
        second = None if first is None else _wait_for_commit(proc, out, key, _progress(out, key))
        if second is not None:
            time.sleep(fraction * (second - first))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    return kills


def test_mine_killed_at_many_points_ends_identical(tmp_path, folder):
    args = ["mine", "--model", "demo", "--data", str(folder), "--batch-size", "4", "--flush-every", "1",
            "--workers", "0", "--distributions"]  # every accumulator, the opt-in ones too
    ref = subprocess.run(_cli(*args, "--out", str(tmp_path / "ref.zarr")), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run.zarr"
    rng = np.random.default_rng(7)
    kills = _kill_repeatedly(_cli(*args, "--out", str(out)), out, "images", list(rng.uniform(0, 1.5, 4)))
    assert kills >= 3
    assert_same_store(out, tmp_path / "ref.zarr")


def test_visualize_killed_at_many_points_ends_identical(tmp_path, folder):
    mined = tmp_path / "mined.zarr"
    sketchmine.mine("demo", folder, out=mined, batch_size=60, layers=["features.3", "features.10"])
    ref, out = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    shutil.copytree(mined, ref)
    shutil.copytree(mined, out)
    args = ["--batch-size", "27"]  # 3 units per block: many commits
    done = subprocess.run(_cli("visualize", str(ref), *args), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rng = np.random.default_rng(11)
    kills = _kill_repeatedly(_cli("visualize", str(out), *args), out, "units", list(rng.uniform(0, 1.5, 4)))
    assert kills >= 3
    assert_same_store(out, ref)


def test_readers_open_a_run_while_it_is_written(tmp_path, folder):
    """Summaries of a run being mined: partial, consistent, never an error; `verify` finds no
    damage (it called the slot the writer was rewriting damaged, "resumes from image 0", or
    failed on a folder removed under it); a handle opened early follows the writer; a second
    writer is refused."""
    out = tmp_path / "run.zarr"
    cmd = _cli("mine", "--model", "demo", "--data", str(folder), "--batch-size", "2", "--flush-every", "1",
               "--workers", "0", "--out", str(out))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reads, refused, early = 0, False, None
    try:
        while proc.poll() is None:
            if _progress(out, "images") == 0:
                time.sleep(0.01)
                continue
            try:
                run = sketchmine.open_run(out)
                early = early or run
                values, index, _ = run.topk("features.6")
                run.class_accuracy()
                found = sketchmine.verify_run(out)
                assert not found.damaged and "damaged or incomplete" not in found.note, (found.damaged, found.note)
            except sketchmine.SketchmineError as exc:  # a commit in every attempt to read: said, by design
                assert "being written by another process" in str(exc) and "retry" in str(exc), exc
                continue
            assert values.shape == index.shape == (96, 9)
            with np.errstate(invalid="ignore"):  # early commits: empty slots hold -inf, and -inf - -inf is NaN
                assert (np.diff(values, axis=1) <= 0).all() or (index < 0).any()
            reads += 1
            if not refused and proc.poll() is None:
                second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                refused = second.returncode == 3 and "being written by another process" in second.stderr
                if not refused:  # only acceptable if the first writer had already finished meanwhile
                    assert second.returncode == 0 and sketchmine.open_run(out).complete, second.stderr
                    refused = True
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == 0, proc.stderr.read()
    assert reads >= 1 and refused  # how many reads fit in depends on the machine's load
    assert sketchmine.open_run(out).complete and early.complete and early.images_done == 120


def test_ctrl_c_while_a_command_starts_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C in a command's first seconds, while torch and the compiled core load: 9 of 20 gave
    an ImportError or ValueError traceback or a segmentation fault. Now every one is the one-line
    message and exit 130 (or the command had finished: exit 3, the run does not exist), or, in
    the instant before main() runs, Python's own KeyboardInterrupt."""
    outcomes = []
    for delay in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5):
        # visualize loads torch and the core as it starts (summary, which only reads, loads neither)
        proc = subprocess.Popen(_cli("visualize", str(tmp_path / "no-run.zarr")), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        outcomes.append((delay, proc.returncode, err.strip()))
    for delay, rc, err in outcomes:
        if err.startswith("sketchmine: "):  # the one line: interrupted (130), or the command's own
            # refusal (3; a Ctrl-C after it, while Python exits, is ignored: it ended the process by
            # the signal, -2, or printed a traceback from an atexit call)
            assert rc in (130, 3) and len(err.splitlines()) == 1, (delay, rc, err[-400:])
        else:  # before main() runs (Python's start-up, the CLI module's own light imports): Python's
            # plain KeyboardInterrupt, never inside numpy's, torch's or the core's loading, nor a crash
            assert rc in (1, -signal.SIGINT) and err.splitlines()[-1] == "KeyboardInterrupt" and not any(
                f"/{lib}/" in err for lib in ("numpy", "torch", "zarr", "pandas")), (delay, rc, err[-400:])
    assert any(rc == 130 for _, rc, _ in outcomes)


LATE_CTRL_C = """
import atexit, os, signal, sys
class Late:  # freed as Python tears its modules down, after it reset its signal handlers
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
late = Late()
atexit.register(os.kill, os.getpid(), signal.SIGINT)  # in Python's atexit calls
from sketchmine.cli.main import main
code = main()
os.kill(os.getpid(), signal.SIGINT)  # between main() and the exit
sys.exit(code)
"""
"""The command line's main() run as `sketchmine` runs it, a Ctrl-C sent to itself after main()
returned, during its atexit calls and during its modules' teardown."""


def test_ctrl_c_after_the_command_ended_keeps_its_exit_code(tmp_path, folder):
    """A Ctrl-C after a command had printed its result, while Python shut down, ended the process
    by the signal (exit 130, nothing said) or printed a KeyboardInterrupt traceback from an atexit
    call. The command has ended and said so: its exit code stands, nothing more is printed."""
    out = sketchmine.mine("demo", folder, out=tmp_path / "run.zarr", layers=["classifier.6"], k=3).path
    for args in (["summary", str(out), "--json"], ["summary", str(tmp_path / "none.zarr")]):
        proc = subprocess.run([sys.executable, "-c", LATE_CTRL_C, *args], capture_output=True, text=True,
                              timeout=600, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if args[-1] == "--json":
            assert proc.returncode == 0 and json.loads(proc.stdout)["images"] == 120 and not proc.stderr, proc.stderr
        else:  # a refusal: its one line and its code
            assert proc.returncode == 3 and proc.stderr.startswith("sketchmine: error:"), (proc.returncode, proc.stderr)
            assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_a_run_killed_with_loader_workers_resumes_at_once(tmp_path, folder):
    """Forked DataLoader workers shared the run's flock: a killed run stayed locked until they
    noticed their parent's death (≈ 5 s), and the immediate re-run was refused as "being
    written by another process". The workers close it as they start."""
    args = ["mine", "--model", "demo", "--data", str(folder), "--batch-size", "4", "--flush-every", "1",
            "--workers", "2", "--out", str(tmp_path / "run.zarr")]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for_commit(proc, tmp_path / "run.zarr", "images", 0) is not None
    os.kill(proc.pid, signal.SIGKILL)  # the workers live on a moment
    proc.wait()
    again = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _progress(tmp_path / "run.zarr", "images") == 120


def test_ctrl_c_of_visualize_redo_names_the_command_that_resumes(tmp_path, folder):
    """Ctrl-C of `visualize --redo` said "re-run the same command to resume from the last finished
    block of units", but `--redo` starts the layers again: the message names the re-run without it,
    which resumes where the interrupted pass stopped."""
    out = tmp_path / "run.zarr"
    sketchmine.mine("demo", folder, out=out, batch_size=60, layers=["features.10"])
    args = ["--batch-size", "9", "--method", "guided"]  # one unit a block: 64 blocks, the interrupt lands in one
    assert subprocess.run(_cli("visualize", str(out)), capture_output=True).returncode == 0  # deconvnet, complete
    proc = subprocess.Popen(_cli("visualize", str(out), "--redo", *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,  # Ctrl-C heard even where the suite ignores it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    start = time.time()
    while proc.poll() is None and time.time() - start < 300:  # the redo's first blocks committed
        attrs = json.loads((out / "layers" / "features.10" / "zarr.json").read_text())["attributes"].get("visualized", {})
        if attrs.get("method") == "guided" and 0 < attrs.get("units_done", 0):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the redo pass ended before a block of it was committed"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "re-run the same command without --redo to resume" in err, err
    done = json.loads((out / "layers" / "features.10" / "zarr.json").read_text())["attributes"]["visualized"]
    assert done["method"] == "guided" and done["units_done"] > 0
    resumed = subprocess.run(_cli("visualize", str(out), *args, "-v"), capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming at unit" in resumed.stderr, resumed.stderr
    assert sketchmine.open_run(out).layer_attrs("features.10")["visualized"]["complete"]


def _ctrl_c_at_import(module: str) -> str:
    """Script lines that send this process a Ctrl-C as the import of `module` begins; a
    KeyboardInterrupt there comes out as an ImportError, as from a C extension's initialisation
    (pybind11's, onnxruntime's), which a plain import cannot show on purpose."""
    return ("import time\n"
            "class Finder:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name == {module!r}:\n"
            "            try:\n"
            "                os.kill(os.getpid(), signal.SIGINT)\n"
            "                time.sleep(0.2)\n"
            "            except KeyboardInterrupt:\n"
            "                raise ImportError('initialisation interrupted', name=name) from None\n"
            "sys.meta_path.insert(0, Finder())\n")


def _main_with(hook: str, argv: list[str], sigint: Any = signal.SIG_DFL) -> subprocess.CompletedProcess:
    """The CLI's main(argv) in a fresh interpreter after the script lines `hook` (os, signal and
    sys imported), started with Ctrl-C's disposition `sigint` (a test runner may ignore it)."""
    script = f"import os, signal, sys\n{hook}from sketchmine.cli.main import main\nsys.exit(main({argv!r}))\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def test_ctrl_c_while_the_probe_loads_onnxruntime_is_not_a_missing_package(tmp_path, folder):
    """A Ctrl-C landing in onnxruntime's (pybind11) initialisation became an ImportError, said as "the
    live probe needs the onnx and onnxruntime packages … (onnxruntime is not installed)", exit 3 (1 of 8
    Ctrl-Cs about 1.9 s into `sketchmine probe`). The probe's packages load with Ctrl-C held where it
    needs them (`ctrl_c.imported`), and one that came is the interrupt it is; here it is sent as the
    import of onnxruntime begins."""
    run = tmp_path / "run.zarr"
    sketchmine.mine("demo", folder, out=run, batch_size=60, layers=["features.0"])
    proc = _main_with(_ctrl_c_at_import("onnxruntime"), ["probe", str(run), "--out", str(tmp_path / "probe")])
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().startswith("sketchmine: interrupted;"), proc.stderr
    assert "not installed" not in proc.stderr and not (tmp_path / "probe").exists()


def test_ctrl_c_while_the_loader_forks_its_workers_stops_mine(tmp_path, folder):
    """A Ctrl-C that lands while the DataLoader forks its workers was raised in a fork handler, where
    Python drops it ("Exception ignored in …"): the run went on to the end (exit 0), or, raised in
    logging's handler, left logging's lock taken and `mine` hung for good (seen in 1 of ~15 Ctrl-Cs of
    `mine --workers 1`). The loader starts with Ctrl-C held; here it is sent as the fork begins."""
    out = tmp_path / "run.zarr"
    args = ["mine", "--model", "demo", "--data", str(folder), "--out", str(out), "--workers", "1"]
    at_fork = ("sent = []\n"
               "def ctrl_c():\n"
               "    if not sent:\n"
               "        sent.append(1)\n"
               "        os.kill(os.getpid(), signal.SIGINT)\n"
               "os.register_at_fork(before=ctrl_c)\n")
    proc = _main_with(at_fork, args)
    assert proc.returncode == 130 and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sketchmine: interrupted; re-run the same command"), proc.stderr
    again = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _progress(out, "images") == 120


def test_a_ctrl_c_ignored_by_the_caller_stays_ignored_while_a_command_starts(tmp_path):
    """A command started with Ctrl-C ignored (`cmd &` in a script) is not interrupted by one after it
    starts, but the start's hold put a handler in place of the ignore: a Ctrl-C while torch loaded
    ended it as "interrupted while starting", exit 130. Here one is sent as torch's import begins."""
    proc = _main_with(_ctrl_c_at_import("torch"), ["visualize", str(tmp_path / "no-run.zarr")], signal.SIG_IGN)
    assert proc.returncode == 3 and proc.stderr.strip().endswith("does not exist"), proc.stderr


def test_a_ctrl_c_while_the_command_line_is_read_says_so_without_a_traceback(tmp_path):
    """A Ctrl-C 1.4 s into `sketchmine mine` (the kill fuzz: while argparse read the command line,
    before the command's own Ctrl-C handling begins) printed a KeyboardInterrupt traceback and ended
    the process by the signal. It ends as a Ctrl-C while starting does: one line, exit 130."""
    hook = ("import argparse, time\n"
            "_read = argparse.ArgumentParser.parse_known_args\n"
            "def _pressed(self, *a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(0.2)\n"
            "    return _read(self, *a, **k)\n"
            "argparse.ArgumentParser.parse_known_args = _pressed\n")
    proc = _main_with(hook, ["summary", str(tmp_path / "no-run.zarr")])
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    assert proc.stderr == "sketchmine: interrupted while starting; nothing was done\n", proc.stderr
