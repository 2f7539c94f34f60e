"""`sketchmine verify` / `verify_run`: every checksum a run recorded, checked at once, on a real
run holding everything a run can hold (tests/test_damage_fuzz.py's `full` run), with real
damage; each damaged array listed, not only the first."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import sketchmine
from sketchmine.cli.main import main
from sketchmine.store import schema
from tests.helpers import StopAfter, per_class_subset
from tests.test_damage_fuzz import DAMAGES, L, _chunk, full  # noqa: F401  (the module's fixture)


def _arrays(run: Path) -> set[str]:
    """Every array of the run, by path (its zarr.json's node_type; one that does not parse too)."""
    def array(f: Path) -> bool:
        try:
            return json.loads(f.read_text()).get("node_type") == "array"
        except ValueError:
            return True
    return {f.parent.relative_to(run).as_posix() for f in run.rglob("zarr.json") if array(f)}


@pytest.fixture()
def run(full, tmp_path) -> Path:  # noqa: F811
    path = tmp_path / "run.zarr"
    shutil.copytree(full, path)
    return path


def test_every_array_of_a_whole_run_is_checked(run, capsys):
    found = sketchmine.verify_run(run)
    assert found.complete and not found.damaged and not found.unchecked and not found.note
    assert sorted(found.checked) == sorted(_arrays(run))  # final arrays, logits, pictures, every group's
    assert {f"layers/{L}/patches", f"layers/{L}/importance/prob_drop", schema.LOGITS} <= set(found.checked)
    assert found.nbytes > sum(f.stat().st_size for f in run.rglob("c.*"))  # decoded: at least the compressed bytes
    assert main(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{len(found.checked)} arrays" in out and "match their checksums" in out


def test_every_damaged_array_is_listed(run, capsys):
    """Four damages in four kinds of array (a final array, visualize's block-written patches, a
    group written as a unit, metadata that does not parse): all four listed, the rest checked."""
    DAMAGES["flip"](*_chunk(run, f"layers/{L}/values"))
    DAMAGES["delete"](*_chunk(run, f"layers/{L}/patches"))
    DAMAGES["truncate"](*_chunk(run, f"layers/{L}/importance/prob_drop"))
    (run / f"layers/{L}/class_mean/zarr.json").write_text("{ not json")
    found = sketchmine.verify_run(run)
    damaged = {f"layers/{L}/values", f"layers/{L}/patches", f"layers/{L}/importance/prob_drop",
               f"layers/{L}/class_mean"}
    assert set(found.damaged) == damaged, found.damaged
    assert "checksum" in found.damaged[f"layers/{L}/values"] and "zarr.json" in found.damaged[f"layers/{L}/class_mean"]
    assert set(found.checked) == _arrays(run) - damaged  # the group's other arrays too
    assert main(["verify", str(run)]) == 3
    captured = capsys.readouterr()
    assert all(f"damaged: {name} " in captured.out for name in damaged)
    assert "is damaged (4 listed above)" in captured.err
    assert main(["verify", str(run), "--json"]) == 3
    assert set(json.loads(capsys.readouterr().out)["damaged"]) == damaged


def test_a_partial_run_says_which_checkpoint_resume_starts_from(tmp_path, demo_test_set, capsys):
    ds = per_class_subset(demo_test_set, 6, "0:60")
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", ds, layers=[L], k=2, out=out, batch_size=10, flush_every=1, progress=StopAfter(40))
    found = sketchmine.verify_run(out)
    done = found.images_done
    assert not found.complete and not found.damaged and 20 <= done < 60
    assert found.note == f"partial run: its committed checkpoint (image {done}) is intact"
    assert schema.LOGITS in found.unchecked  # a partial run's rows are checked only as far as its checkpoint
    slot = json.loads((out / "zarr.json").read_text())["attributes"]["progress"]["slot"]
    DAMAGES["flip"](*_chunk(out, f"{schema.CHECKPOINT}/{slot}/topk/values"))
    found = sketchmine.verify_run(out)
    assert found.note.endswith(f"`sketchmine mine` resumes from image {done - 10}") and not found.damaged


def test_mining_s_checkpoint_half_written_or_half_dropped_is_not_damage(tmp_path, demo_test_set, capsys):
    """A kill while `mine` rewrites its free checkpoint slot, or while a complete run drops the
    checkpoint, left folders without metadata that `verify` listed as damage (exit 3, "restore the
    run's files … or mine it again"): the same `mine` command resumes or tidies such a run."""
    ds = per_class_subset(demo_test_set, 4, "0:40")
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", ds, layers=[L], k=2, out=out, batch_size=10, flush_every=1, progress=StopAfter(30))
    slot = json.loads((out / "zarr.json").read_text())["attributes"]["progress"]["slot"]
    free = out / schema.CHECKPOINT / ("slot1" if slot == "slot0" else "slot0")
    (free / "topk" / "values").mkdir(parents=True, exist_ok=True)  # a flush cut short: folders, no metadata yet
    for meta in free.rglob("zarr.json"):
        meta.unlink()
    found = sketchmine.verify_run(out)
    assert not found.damaged and found.note.startswith("partial run: its committed checkpoint") and found.note.endswith("is intact")
    assert main(["verify", str(out)]) == 0
    sketchmine.mine("demo", ds, layers=[L], k=2, out=out, batch_size=10, flush_every=1)  # resumes, completes
    (out / schema.CHECKPOINT / "slot0" / "topk").mkdir(parents=True)  # the drop cut short, its metadata gone first
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    said = capsys.readouterr().out
    assert "damaged" not in said and f"the checkpoint its mining left ({schema.CHECKPOINT}/) is not a result" in said
    sketchmine.mine("demo", ds, layers=[L], k=2, out=out, batch_size=10, flush_every=1)  # the same command tidies it
    assert not (out / schema.CHECKPOINT).exists() and sketchmine.verify_run(out).note == ""


def test_a_folder_of_runs_given_as_a_run_names_the_runs_in_it(full, tmp_path, capsys):  # noqa: F811
    """`sketchmine summary work/demo` (the demo's folder of runs) said there were no run
    attributes in work/demo/zarr.json, a file that does not exist (UX audit)."""
    shutil.copytree(full, tmp_path / "runs" / "a.zarr")
    (tmp_path / "runs" / "notes").mkdir()
    assert main(["verify", str(tmp_path / "runs")]) == 3
    err = capsys.readouterr().err
    assert "is not a sketchmine run (no zarr.json); it holds the run a.zarr" in " ".join(err.split())


def test_an_array_gone_from_a_result_written_whole_is_damage_not_a_result_never_computed(run, capsys):
    """A result group (importance) whose array lost its zarr.json read as "no importance: compute it
    with …", and verify passed it: the group's checksums name its arrays, so one gone is damage, said
    by the reader and listed by verify; the other arrays of the group are still checked."""
    import shutil as _shutil

    from sketchmine.errors import RunDamaged

    name = f"layers/{L}/importance/prob_drop"
    _shutil.rmtree(run / name)
    with pytest.raises(RunDamaged, match=f"'{name}' is missing"):
        sketchmine.open_run(run).unit_importance(L)
    found = sketchmine.verify_run(run)
    assert set(found.damaged) == {name} and "is missing" in found.damaged[name]
    assert set(found.checked) == _arrays(run)
    assert main(["verify", str(run)]) == 3
    assert "is damaged (1 listed above)" in capsys.readouterr().err
