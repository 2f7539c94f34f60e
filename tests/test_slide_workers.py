"""The report's slides drawn in worker processes (present/slide_workers.py): byte for byte the
slides drawn in the report's own process, an error a slide meets raised in the report as it was
met, a worker that dies said, an interruption stops the workers, and a script without the
`__main__` guard is not run again by them. A real mined, visualized run of the demo model."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.present import slide_workers
from sketchmine.present.montage import slide_content
from sketchmine.present.slide_workers import SlideWriter, worker_count
from tests.helpers import per_class_subset

LAYER = "features.6"
UNITS = 20


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_test_set):
    subset = per_class_subset(demo_test_set, 6, "slides")
    r = sketchmine.mine("demo", subset, out=tmp_path_factory.mktemp("slides") / "run.zarr", batch_size=60,
                        layers=[LAYER])
    sketchmine.visualize(r, [LAYER], data=subset, batch_size=256)
    return sketchmine.open_run(r.path)


def _draw(run, folder: Path, workers: str, monkeypatch) -> list[Path]:
    monkeypatch.setenv(slide_workers.ENV, workers)
    paths = [folder / f"{u}.png" for u in range(UNITS)]
    with SlideWriter(UNITS) as drawn:
        assert drawn._count == int(workers)
        for u, path in enumerate(paths):
            drawn.submit(slide_content(run, LAYER, u, None), path, f"{LAYER} unit {u}")
    return paths


def test_slides_drawn_in_workers_are_those_drawn_here(run, tmp_path, monkeypatch):
    here = _draw(run, tmp_path / "here", "0", monkeypatch)
    there = _draw(run, tmp_path / "there", "2", monkeypatch)
    assert [p.read_bytes() for p in there] == [p.read_bytes() for p in here]
    assert len({p.read_bytes() for p in here}) == UNITS  # every unit its own slide


def test_an_error_a_slide_meets_in_a_worker_is_raised_as_it_was_met(run, tmp_path, monkeypatch):
    """A slide whose folder cannot be made (a file is in the way, as a full disk would be
    another OSError): the report's OSError handling names the file, as when drawn here."""
    (tmp_path / "in_the_way").write_text("a file")
    monkeypatch.setenv(slide_workers.ENV, "2")
    with pytest.raises(FileExistsError) as met:
        with SlideWriter(UNITS) as drawn:
            for u in range(UNITS):
                drawn.submit(slide_content(run, LAYER, u, None), tmp_path / "in_the_way" / f"{u}.png", f"unit {u}")
    assert met.value.filename == str(tmp_path / "in_the_way")


def test_a_worker_that_dies_is_said_and_an_interruption_stops_them_all(run, tmp_path, monkeypatch):
    monkeypatch.setenv(slide_workers.ENV, "2")
    with pytest.raises(SketchmineError, match=r"the process drawing the report's slides stopped \(exit status -9"):
        with SlideWriter(UNITS) as drawn:
            drawn.submit(slide_content(run, LAYER, 0, None), tmp_path / "0.png", "unit 0")
            drawn._workers[0].proc.kill()
            for u in range(1, UNITS):
                drawn.submit(slide_content(run, LAYER, u, None), tmp_path / f"{u}.png", f"unit {u}")
    procs = []
    with pytest.raises(KeyboardInterrupt):
        with SlideWriter(UNITS) as drawn:
            drawn.submit(slide_content(run, LAYER, 0, None), tmp_path / "0.png", "unit 0")
            procs = [w.proc for w in drawn._workers]
            raise KeyboardInterrupt
    assert len(procs) == 2 and all(p.poll() is not None for p in procs)  # stopped, not left drawing


def test_the_number_of_workers(monkeypatch):
    monkeypatch.delenv(slide_workers.ENV, raising=False)
    assert worker_count(slide_workers.MIN_SLIDES - 1) == 0  # a few slides: drawn here
    cores = len(os.sched_getaffinity(0))
    assert worker_count(1000) == (min(cores, 8) if cores > 1 else 0)
    monkeypatch.setenv(slide_workers.ENV, "3")
    assert worker_count(2) == 2 and worker_count(100) == 3
    monkeypatch.setenv(slide_workers.ENV, "many")
    with pytest.raises(SketchmineError, match="SKETCHMINE_SLIDE_WORKERS should be a number of processes"):
        worker_count(100)


def test_a_script_without_the_main_guard_is_not_run_again(run, tmp_path):
    """multiprocessing's spawn would import the script in each worker and write the report again
    there (and mine again, in a script that mines first)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import sketchmine
        from sketchmine.present.report import write_report
        print("script ran", flush=True)
        write_report(sketchmine.open_run({str(run.path)!r}), {str(tmp_path / "report")!r}, montages=20)
    """))
    env = {**os.environ, slide_workers.ENV: "2"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("script ran") == 1
    assert len(list((tmp_path / "report" / "montage").rglob("*.png"))) == 20


def test_the_callers_matplotlib_settings_reach_the_workers(run, tmp_path, monkeypatch):
    """A notebook's style (here the text colour) draws the slides alike in the workers."""
    import matplotlib

    plain = _draw(run, tmp_path / "plain", "0", monkeypatch)
    with matplotlib.rc_context({"text.color": "#b00000"}):
        here = _draw(run, tmp_path / "here", "0", monkeypatch)
        there = _draw(run, tmp_path / "there", "2", monkeypatch)
    assert [p.read_bytes() for p in there] == [p.read_bytes() for p in here]
    assert here[0].read_bytes() != plain[0].read_bytes()


def test_a_second_ctrl_c_while_the_workers_are_stopped_stops_them_all(run, tmp_path, monkeypatch):
    """The report interrupted, then a second Ctrl-C just as it killed its first worker: the other
    was left drawing the slides it had been sent, writing them into the report's staging folder
    after the report had removed it (made again, unmarked, and kept by every later report)."""
    import signal

    monkeypatch.setenv(slide_workers.ENV, "2")
    procs = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with SlideWriter(UNITS) as drawn:
                for u in range(4):
                    drawn.submit(slide_content(run, LAYER, u, None), tmp_path / f"{u}.png", f"unit {u}")
                procs = [w.proc for w in drawn._workers]
                first, real = procs[0], procs[0].kill

                def kill() -> None:  # a second Ctrl-C lands as the first worker is killed
                    real()
                    os.kill(os.getpid(), signal.SIGINT)

                monkeypatch.setattr(first, "kill", kill)
                raise KeyboardInterrupt
        assert len(procs) == 2
        for p in procs:
            assert p.wait(timeout=20) == -signal.SIGKILL  # killed, not left to draw what it was sent
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
