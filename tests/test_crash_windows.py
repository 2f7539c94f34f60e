"""Kills in the narrow windows between two writes: a checkpoint slot whose metadata a power cut
damaged, a run killed between its completion commit and the removal of its checkpoint, a
result group killed between its two renames. Each resumes (or reads) as if uninterrupted."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import torch
import pytest

import sketchmine
from tests.helpers import StopAfter, assert_same_store

LAYERS = ["features.3", "classifier.6"]
KWARGS = dict(layers=LAYERS, k=3, batch_size=20, flush_every=2)


@pytest.fixture()
def reference(tmp_path, demo_model, small_test_set):
    return sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "ref.zarr", **KWARGS)


def _interrupted(out, demo_model, data):
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, data, out=out, progress=StopAfter(9, calls=True), **KWARGS)
    return sketchmine.open_run(out)


def test_a_damaged_slot_s_metadata_is_rewritten_on_resume(tmp_path, reference, demo_model, small_test_set):
    """The newest slot's zarr.json zeroed (never reached the disk): resume goes back to the
    other slot, and its first flush writes the damaged one afresh instead of parsing it."""
    out = tmp_path / "run.zarr"
    slot = _interrupted(out, demo_model, small_test_set).attrs["progress"]["slot"]
    meta = out / "_checkpoint" / slot / "zarr.json"
    meta.write_bytes(b"\0" * meta.stat().st_size)
    progress = StopAfter(10**9, calls=True)
    sketchmine.mine(demo_model.module, small_test_set, out=out, progress=progress, **KWARGS)
    assert any("damaged" in n for n in progress.notes)
    assert_same_store(out, reference.path)


def test_a_kill_after_the_completion_commit_leaves_no_checkpoint(tmp_path, reference, demo_model, small_test_set):
    out = tmp_path / "run.zarr"
    _interrupted(out, demo_model, small_test_set)
    kept = tmp_path / "slots"
    shutil.copytree(out / "_checkpoint", kept)
    sketchmine.mine(demo_model.module, small_test_set, out=out, **KWARGS)
    assert not (out / "_checkpoint").exists()
    shutil.copytree(kept, out / "_checkpoint")  # as a kill between the commit and the removal leaves it
    run = sketchmine.mine(demo_model.module, small_test_set, out=out, **KWARGS)
    assert run.complete and not (out / "_checkpoint").exists()
    assert_same_store(out, reference.path)


def test_a_kill_between_the_renames_keeps_the_earlier_result(tmp_path, reference, demo_model, small_test_set):
    layer = reference.path / "layers" / "classifier.6"
    first = sketchmine.unit_importance(reference, "classifier.6", demo_model.module, small_test_set, batch_size=100)
    # the first rename done, the second not: the earlier group as importance.old, the new one staged
    os.rename(layer / "importance", layer / "importance.old")
    shutil.copytree(layer / "importance.old", layer / "importance.writing")
    pd.testing.assert_frame_equal(sketchmine.open_run(reference.path).unit_importance("classifier.6"), first)
    again = sketchmine.unit_importance(reference, "classifier.6", demo_model.module, small_test_set, batch_size=100)
    pd.testing.assert_frame_equal(again, first)
    assert sorted(p.name for p in layer.iterdir() if p.name.startswith("importance")) == ["importance"]


class _Untouchable(torch.utils.data.Dataset):
    """A dataset that fails the test if the pass reads it."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i):
        raise AssertionError("the pass read the dataset before checking the run's lock")


@pytest.mark.parametrize("what", ["importance", "effects"])
def test_ablation_passes_are_refused_before_their_work_while_another_process_writes(reference, demo_model, what):
    """importance and effects computed the whole ablation, then were refused at the write when
    a visualize held the run: they check the lock before reading any image now."""
    from sketchmine.errors import SketchmineError
    from sketchmine.store.lock import RunLock

    held = RunLock(reference.path)  # another writer (its own open file: flock conflicts within a process too)
    held.acquire()
    try:
        call = sketchmine.unit_importance if what == "importance" else sketchmine.unit_effects
        with pytest.raises(SketchmineError, match="being written by another process"):
            call(reference, "features.3", demo_model.module, _Untouchable(), batch_size=50)
    finally:
        held.release()


def test_two_passes_of_one_process_share_the_run_and_a_writer_of_it_is_told_why(reference, demo_model,
                                                                                small_test_set):
    """Two passes made in one notebook before either is iterated: the second was refused as if
    another process wrote the run (its own open file conflicted with the first's hold). Both
    share the run now and store; a writer that would take it whole meanwhile is told that a
    pass of this very process holds it."""
    from sketchmine.errors import SketchmineError
    from sketchmine.passes.effects import EffectsPass
    from sketchmine.passes.importance import ImportancePass
    from sketchmine.store.lock import RunLock

    first = ImportancePass(reference, ["features.3"], demo_model.module, small_test_set, batch_size=50)
    second = EffectsPass(reference, ["classifier.6"], demo_model.module, small_test_set, batch_size=50)
    with pytest.raises(SketchmineError, match="held by an importance or effects pass of this process"):
        RunLock(reference.path).acquire()
    assert list(second) == ["classifier.6"]
    with pytest.raises(SketchmineError, match="of this process"):  # the first still holds it
        RunLock(reference.path).acquire()
    assert list(first) == ["features.3"]
    with RunLock(reference.path):  # both done: the run is free again
        pass
    run = sketchmine.open_run(reference.path)
    assert len(run.unit_importance("features.3")) == run.layer_shape("features.3")[0]
    assert run.unit_effects("classifier.6").shape[0] == run.layer_shape("classifier.6")[0]


def test_a_pass_runs_beside_another_process_s_pass_and_stores_when_it_lets_go(reference, demo_model, small_test_set):
    """Passes that share a run may run side by side: a pass started while another process's pass
    held the run was refused before it began (its check took the run whole); it computes now and
    stores once the other lets go of the run."""
    import subprocess
    import sys
    import threading

    from sketchmine.errors import SketchmineError
    from sketchmine.passes.importance import ImportancePass
    from sketchmine.store.lock import RunLock

    other = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sketchmine.store.lock import RunLock; "
        f"lock = RunLock({str(reference.path)!r}).share(); print('held', flush=True); "
        "sys.stdin.readline(); lock.release()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(SketchmineError, match="being written by another process"):  # a writer is refused
            RunLock(reference.path).acquire()
        stored = iter(ImportancePass(reference, ["features.3"], demo_model.module, small_test_set, batch_size=50))
        threading.Timer(1.0, lambda: (other.stdin.write("go\n"), other.stdin.flush())).start()
        assert next(stored) == "features.3"  # waited for the other's hold to go, then stored
    finally:
        other.kill() if other.poll() is None else None
        other.wait()
    run = sketchmine.open_run(reference.path)
    assert len(run.unit_importance("features.3")) == run.layer_shape("features.3")[0]


def test_a_kill_in_the_final_write_leaves_readers_on_the_last_commit(tmp_path, reference, demo_model, small_test_set,
                                                                      monkeypatch):
    """A run killed after its final write laid down the result arrays and the accuracy but before
    the commit that completes it: `unit` read moments over all 300 images and `accuracy()` gave
    the final accuracy of a run PARTIAL at 280 images (readers audit). They read what the last
    commit names now, and the same `mine` completes it as an uninterrupted run."""
    from sketchmine.results.unit_summary import LayerSummary
    from sketchmine.store.runstore import RunStore

    def killed(self, n_images, extra):
        raise KeyboardInterrupt

    out = tmp_path / "run.zarr"
    monkeypatch.setattr(RunStore, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, **KWARGS)
    monkeypatch.undo()
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done == 280 and (out / "layers" / "features.3" / "max_mean").is_dir()
    assert run.accuracy() is None and not run.has_array("features.3", "max_mean")
    assert run.nan_total("features.3") == 0
    moments = LayerSummary(run, "features.3").unit(0)["moments"]
    # the counts so far, as a complete run's dashboard shows them beside the density (were None: "100 %" alone)
    assert (moments["images"], moments["firing"]) == (280, int(run.firing_density("features.3")[0] * 280)), moments
    sketchmine.mine(demo_model.module, small_test_set, out=out, **KWARGS)
    done = sketchmine.open_run(out)
    assert done.complete and LayerSummary(done, "features.3").unit(0)["moments"]["images"] == 300
    assert_same_store(out, reference.path)


def test_a_read_that_a_rewrite_disturbed_is_read_again_and_damage_still_said(reference, monkeypatch):
    """Pictures read while `visualize --redo` reset their layer were called damaged ("restore the
    run's files from a copy") though the run was whole (readers audit: 4 of 7,000 reads): a
    complete run's read that fails with damage is read again; damage that stays is said."""
    from sketchmine.errors import RunDamaged
    from sketchmine.store.runstore import RunStore

    real, failures = RunStore.read, []

    def read(self, name, rows=None):  # the first read of values meets the rewrite
        if name.endswith("/values") and len(failures) < 1:
            failures.append(name)
            raise RunDamaged(f"run {self.path} is damaged: array {name!r} does not match its checksum")
        return real(self, name, rows)

    run = sketchmine.open_run(reference.path)
    want = run.layer_array("features.3", "values")
    monkeypatch.setattr(RunStore, "read", read)
    np.testing.assert_array_equal(run.layer_array("features.3", "values"), want)
    assert failures == ["layers/features.3/values"]
    monkeypatch.setattr(RunStore, "read", lambda self, name, rows=None: (_ for _ in ()).throw(
        RunDamaged(f"run {self.path} is damaged: array {name!r} does not match its checksum")))
    with pytest.raises(RunDamaged, match="does not match its checksum"):
        run.layer_array("features.3", "values")
