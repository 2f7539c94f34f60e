"""Reading a run while it is mined, one commit at a time: a partial run's labels, predictions and
checkpoint are read once per commit (a newer commit is read afresh, and answers as a fresh
handle does), and a long read (`summary --json`) answers beside a writer that commits every batch
instead of saying "retry". Real runs of the trained demo model on the embedded test split; the
files a read opens are watched through Python's audit hook, not by replacing sketchmine code."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sketchmine
from sketchmine.errors import RunDamaged, SketchmineError
from sketchmine.present.json_out import summary_data
from tests.helpers import StopAfter, image_folder

LAYER = "features.3"
KWARGS = dict(layers=[LAYER, "classifier.6"], k=3, batch_size=20, flush_every=2)
_opened: list[str] | None = None  # files opened while `opened` watches
_hooked = False


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, Path)):
        _opened.append(str(args[0]))


@contextmanager
def opened(root: Path) -> Iterator[list[str]]:
    """The files under the run `root` that the block opens (as paths relative to it)."""
    global _opened, _hooked
    if not _hooked:  # an audit hook stays for the process: it only looks while `_opened` is a list
        sys.addaudithook(_audit)
        _hooked = True
    seen: list[str] = []
    _opened = seen
    found: list[str] = []
    try:
        yield found
    finally:
        _opened = None
        found += sorted({str(Path(p).resolve().relative_to(root.resolve())) for p in seen
                         if Path(p).resolve().is_relative_to(root.resolve())})


def _mine_until(out: Path, model, data, batches: int) -> None:
    """Mine (or resume) `out`, stopped after `batches` more batches: a partial run left by a kill."""
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(model, data, out=out, progress=StopAfter(batches, calls=True), **KWARGS)


def _per_image(files: list[str]) -> list[str]:
    """The chunk files of labels and predictions, and any file of the checkpoint, among `files`."""
    return [f for f in files if f.startswith("_checkpoint/") or (
        f.startswith(("dataset/labels/", "eval/predictions/")) and not f.endswith("zarr.json"))]


def test_a_partial_run_is_read_once_per_commit_and_a_newer_commit_afresh(tmp_path, demo_model, small_test_set):
    out = tmp_path / "run.zarr"
    _mine_until(out, demo_model.module, small_test_set, 5)  # commits at 40 and 80 images
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done == 80
    first, accuracy = run.unit_table(LAYER), run.class_accuracy()
    with opened(out) as files:  # the same commit again: labels, predictions and checkpoint from memory
        again, accuracy_again, top = run.unit_table(LAYER), run.class_accuracy(), run.top_classes(LAYER, 3)
    assert not _per_image(files), files
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(accuracy_again, accuracy)
    fresh = sketchmine.open_run(out)
    pd.testing.assert_frame_equal(again, fresh.unit_table(LAYER))
    pd.testing.assert_frame_equal(top, fresh.top_classes(LAYER, 3))
    assert int(accuracy["count"].sum()) == 80

    _mine_until(out, demo_model.module, small_test_set, 5)  # the writer commits 80 images more
    with opened(out) as files:
        later, accuracy_later = run.unit_table(LAYER), run.class_accuracy()
    assert run.images_done == 160 and _per_image(files)  # read afresh, not the older commit's
    assert int(accuracy_later["count"].sum()) == 160
    assert later["image_index"].max() >= 80  # the images the newer commit mined are in its top-k
    fresh = sketchmine.open_run(out)
    pd.testing.assert_frame_equal(later, fresh.unit_table(LAYER))
    pd.testing.assert_frame_equal(accuracy_later, fresh.class_accuracy())
    np.testing.assert_array_equal(run.labels, fresh.labels)
    run.labels[:] = -5  # what a reader hands out is a copy: the kept labels stay
    assert (run.labels[:160] >= 0).all()


def test_real_damage_of_a_partial_run_nobody_writes_is_said_at_once(tmp_path, demo_model, small_test_set):
    out = tmp_path / "run.zarr"
    _mine_until(out, demo_model.module, small_test_set, 5)
    (out / "eval" / "predictions" / "c.0").write_bytes(b"not zstd")
    run = sketchmine.open_run(out)
    start = time.monotonic()
    with pytest.raises(RunDamaged, match="eval/predictions"):
        run.class_accuracy()
    assert time.monotonic() - start < 4  # said, not retried for the writer's patience (5 s)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_test_set) -> Path:
    """300 real test images (30 per class) as PNGs: at a commit every 2 images, a run of 150 commits."""
    return image_folder(demo_test_set, tmp_path_factory.mktemp("commits") / "images", per_class=30)


def _images_done(out: Path) -> int:
    try:
        return int(json.loads((out / "zarr.json").read_text())["attributes"]["progress"]["images_done"])
    except (OSError, ValueError, KeyError):
        return 0


def _writer(folder: Path, out: Path) -> subprocess.Popen:
    """`sketchmine mine` committing after every batch of 2 images, in another process."""
    return subprocess.Popen([sys.executable, "-m", "sketchmine", "mine", "--model", "demo", "--data", str(folder),
                             "--batch-size", "2", "--flush-every", "1", "--workers", "0", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_summary_json_answers_beside_a_writer_committing_every_batch(tmp_path, folder):
    """`summary --json` of a run being mined takes longer than the writer's next commits: each of
    its 10 attempts met a newer commit and it said "retry" nearly every time. Every call answers,
    a fresh handle's (as the CLI's) and a held one's (a notebook's), from one commit of the run."""
    out = tmp_path / "run.zarr"
    proc = _writer(folder, out)
    answers: list[dict] = []
    held = None
    try:
        while proc.poll() is None:
            if _images_done(out) == 0:
                time.sleep(0.01)
                continue
            held = held or sketchmine.open_run(out)
            for run in (sketchmine.open_run(out), held):  # the CLI's fresh handle, a notebook's held one
                answers.append(summary_data(run, 3))
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    partial = [a for a in answers if not a["complete"]]
    assert len(partial) >= 2, [(a["complete"], a["images"]) for a in answers]
    for a in partial:
        assert 0 < a["images"] <= 300 and [layer["name"] for layer in a["layers"]] == sketchmine.open_run(out).layers
        for layer in a["layers"]:  # the class sizes of the commit's images, never more than it mined
            assert 0 < sum(c["images"] for c in layer["top_classes"]) <= a["images"], (a["images"], layer)


def test_a_read_that_fails_while_the_writer_commits_still_gives_up_with_retry(tmp_path, folder):
    """Patience has an end: a read that never succeeds while commits go on says "retry" (after
    its tries and its patience), not a damage it did not find."""
    out = tmp_path / "run.zarr"
    proc = _writer(folder, out)
    calls: list[float] = []

    def read() -> None:  # as long as a few of the writer's commits, then fails
        calls.append(time.monotonic())
        time.sleep(0.3)
        raise ValueError("a read that never succeeds")

    try:
        while _images_done(out) == 0 and proc.poll() is None:
            time.sleep(0.01)
        run = sketchmine.open_run(out)
        began = time.monotonic()
        with pytest.raises(SketchmineError, match="being written by another process.*retry in a moment"):
            run.store.committed(read, tries=3, patience=1.0)
        # an attempt may end before its read (the commit's slot rewritten as it was pinned): count time, not calls
        assert calls and time.monotonic() - began >= 1.0
    finally:
        proc.kill()
        proc.wait(timeout=60)
