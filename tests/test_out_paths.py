"""Odd `mine --out` paths: a symbolic link loop, a dangling link (the run folder's or a folder
above it), a link to an empty folder, "." (the current folder) empty or a run, and the litter a
Ctrl-C during creation can leave. Each is refused in one line naming the path, creating
nothing, or works as for a plain folder."""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

import sketchmine
from sketchmine.errors import SketchmineError
from sketchmine.store.lock import CREATING, MARKER, enclosing_run, is_run, resolved, stage


def _mine(ds, out):
    return sketchmine.mine("demo", ds, out=out, layers=["features.0"], batch_size=100)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_symlink_loop_is_refused_naming_it(tmp_path, small_test_set):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    for out in (tmp_path / "a", tmp_path / "a" / "run.zarr"):
        with pytest.raises(SketchmineError, match=rf"out {out} is or goes through a symbolic link loop"):
            _mine(small_test_set, out)
    assert _tree(tmp_path) == ["a", "b"] and os.path.islink(tmp_path / "a")


def test_resolved_names_a_loop_for_any_caller(tmp_path):
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(SketchmineError, match=r"report folder .*loop is or goes through a symbolic link loop"):
        resolved(tmp_path / "loop", "report folder")
    with pytest.raises(SketchmineError, match="symbolic link loop"):
        enclosing_run(tmp_path / "loop" / "x")
    assert resolved(tmp_path / "x" / ".." / "y") == tmp_path.resolve() / "y"


def test_a_dangling_link_is_refused_and_nothing_is_created(tmp_path, small_test_set):
    os.symlink(tmp_path / "nowhere" / "x.zarr", tmp_path / "dangling.zarr")
    with pytest.raises(SketchmineError, match=rf"out {tmp_path}/dangling.zarr is a symbolic link to "
                                              rf"{tmp_path}/nowhere/x.zarr, which does not exist"):
        _mine(small_test_set, tmp_path / "dangling.zarr")
    os.symlink(tmp_path / "gone", tmp_path / "folder")  # a folder above the run
    with pytest.raises(SketchmineError, match=rf"its folder {tmp_path}/folder is a symbolic link to "
                                              rf"{tmp_path}/gone, which does not exist"):
        _mine(small_test_set, tmp_path / "folder" / "sub" / "run.zarr")
    assert _tree(tmp_path) == ["dangling.zarr", "folder"]


def test_a_run_under_a_file_is_refused_naming_the_file(tmp_path, small_test_set):
    """`--out afile/sub/run.zarr`: no folder can be made under a file (store.lock.file_above, the
    check report and probe folders share); refused, the file untouched."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SketchmineError, match=rf"cannot write the run to {tmp_path}/afile/sub/run.zarr: "
                                              rf"{tmp_path}/afile is a file, not a folder"):
        _mine(small_test_set, tmp_path / "afile" / "sub" / "run.zarr")
    assert _tree(tmp_path) == ["afile"] and (tmp_path / "afile").read_text() == "x"


def test_a_link_to_an_empty_folder_gets_the_run_there(tmp_path, small_test_set):
    (tmp_path / "disk" / "run.zarr").mkdir(parents=True)
    os.symlink(tmp_path / "disk" / "run.zarr", tmp_path / "run.zarr")
    run = _mine(small_test_set, tmp_path / "run.zarr")
    assert run.complete and is_run(tmp_path / "disk" / "run.zarr")
    assert os.path.islink(tmp_path / "run.zarr")
    assert [p for p in _tree(tmp_path) if CREATING in p] == []
    assert _mine(small_test_set, tmp_path / "run.zarr").complete  # through the link again: complete


def test_the_users_empty_folder_keeps_its_permissions_and_a_left_marker_goes(tmp_path, small_test_set):
    """The run replaced the user's empty folder by its own (a 0700 folder became 0755, readable by
    all), through a moment with no folder at all; and a kill right after the run was renamed into
    place left stage's marker in it for good (a Zarr reader warned of it at every listing)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o2700)  # and setgid, as a shared project folder would be
    run = _mine(small_test_set, private)
    assert run.complete and oct(private.stat().st_mode & 0o7777) == oct(0o2700)
    (private / MARKER).write_text("left by a kill after the rename\n")
    assert _mine(small_test_set, private).complete  # the same command: complete, and tidied
    assert not (private / MARKER).exists()


def test_out_dot_is_refused_in_an_empty_folder_and_resumes_a_run(tmp_path, small_test_set, monkeypatch):
    """A new run is renamed into place: "." (or the current folder by name), empty, is refused
    naming the name to give from above; "." and ".." naming a run resume it."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(SketchmineError, match=r"out \. is the current folder: .*give --out here$"):
        _mine(small_test_set, ".")
    with pytest.raises(SketchmineError, match=r"is the current folder"):
        _mine(small_test_set, here)
    assert _tree(tmp_path) == ["here"]
    _mine(small_test_set, tmp_path / "run.zarr")
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path / "run.zarr")
    assert _mine(small_test_set, ".").complete
    monkeypatch.chdir(tmp_path / "run.zarr" / "eval")
    assert _mine(small_test_set, "..").complete
    assert _tree(tmp_path) == before


def test_a_dead_creations_unmarked_litter_is_removed(tmp_path, small_test_set):
    """Ctrl-C while Zarr's writer thread still wrote into the staging folder could leave it
    holding only a zarr.json, without the marker: named for a process that is gone, it goes."""
    dead = tmp_path / f".run.zarr.{CREATING}-{_dead_pid()}"
    dead.mkdir()
    (dead / "zarr.json").write_text("{}")
    alive = tmp_path / f".run.zarr.{CREATING}-1"  # a live process (init): not ours to judge, kept
    alive.mkdir()
    (alive / "zarr.json").write_text("{}")
    user = tmp_path / f".run.zarr.{CREATING}-notes"
    user.mkdir()
    (user / "a.txt").write_text("mine")
    kept = tmp_path / f".run.zarr.{CREATING}-{_dead_pid()}"  # a dead PID, but a file Zarr does not write
    (kept / "sub").mkdir(parents=True)
    (kept / "zarr.json").write_text("{}")
    (kept / "sub" / "notes.txt").write_text("mine")
    _mine(small_test_set, tmp_path / "run.zarr")
    assert not dead.exists() and alive.exists() and (user / "a.txt").read_text() == "mine"
    assert (kept / "sub" / "notes.txt").read_text() == "mine"


def test_a_failed_creation_waits_for_zarrs_writes_before_removing(tmp_path):
    """A write still running on Zarr's loop when the creation fails must not recreate the
    staging folder after it was removed."""
    from zarr.core.sync import _get_loop

    loop = _get_loop()
    out = tmp_path / "run.zarr"

    async def late_write(folder: Path) -> None:
        await asyncio.sleep(0.5)
        folder.mkdir(parents=True, exist_ok=True)  # as Zarr's LocalStore makes a chunk's folder
        (folder / "zarr.json").write_text("{}")

    def lay_out(tmp: Path) -> None:
        assert (tmp / MARKER).is_file()
        asyncio.run_coroutine_threadsafe(late_write(tmp / "layers"), loop)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stage(out, lay_out)
    time.sleep(1)  # past the late write
    assert _tree(tmp_path) == []


def test_a_report_folder_that_is_a_symlink_loop_is_refused_in_one_line(tmp_path):
    from sketchmine.present.report_folder import check_report_dir

    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    with pytest.raises(SketchmineError, match=r"report folder .*loop is or goes through a symbolic link loop"):
        check_report_dir(loop)


@pytest.mark.parametrize("deep", [False, True], ids=["the-folder", "a-folder-above"])
def test_report_and_probe_folders_through_a_dangling_link_are_refused_creating_nothing(tmp_path, deep):
    """As `mine --out`: `report --out` followed the link and wrote the whole report where it points
    (its folders made on the way), and the probe folder likewise."""
    from sketchmine.present.report_folder import check_report_dir
    from sketchmine.present.report_probe import check_probe_folder

    os.symlink(tmp_path / "nowhere" / "deep", tmp_path / "link")
    out = tmp_path / "link" / "rep" if deep else tmp_path / "link"
    for check, what in ((check_report_dir, "report folder"), (check_probe_folder, "probe folder")):
        with pytest.raises(SketchmineError, match=rf"{what} {out}(: its folder {tmp_path}/link)? is a symbolic link to "
                                                  rf"{tmp_path}/nowhere/deep, which does not exist \(nothing was created\)"):
            check(out)
    assert _tree(tmp_path) == ["link"]


def test_the_users_empty_report_folder_keeps_its_permissions(tmp_path, small_test_set):
    """As `mine --out`'s: the report was built in a sibling with the default permissions and
    swapped in for the user's empty 0700 folder, which became readable by all (and again at each
    report written over its own)."""
    from sketchmine.present.report import write_report

    run = _mine(small_test_set, tmp_path / "r.zarr")
    private = tmp_path / "private"
    private.mkdir()
    os.chmod(private, 0o2700)
    for _ in range(2):  # the user's empty folder, then the report's own
        write_report(run, private, montages=0)
        assert (private / "index.html").is_file() and oct(private.stat().st_mode & 0o7777) == oct(0o2700)


def test_a_report_beside_a_folder_it_cannot_write_says_why(tmp_path, small_test_set):
    """The folder given was writable, its parent not: the error named only a temporary folder."""
    from sketchmine.errors import SketchmineFailure
    from sketchmine.present.report import write_report

    run = _mine(small_test_set, tmp_path / "r.zarr")
    shared = tmp_path / "shared"
    (shared / "drop").mkdir(parents=True)
    if os.geteuid() == 0:  # root writes anywhere chmod allows nothing: an immutable folder stands in
        if subprocess.run(["chattr", "+i", str(shared)], capture_output=True).returncode != 0:
            pytest.skip("this file system has no immutable attribute, and root writes any folder")
    else:
        os.chmod(shared, 0o555)
    try:
        with pytest.raises(SketchmineFailure, match=rf"a report is built in a folder beside {shared}/drop, so {shared} "
                                                    r"must be writable too\); the previous report there \(if any\)"):
            write_report(run, shared / "drop", montages=0)
    finally:
        subprocess.run(["chattr", "-i", str(shared)], capture_output=True)
        os.chmod(shared, 0o755)
    assert _tree(shared) == ["drop"]
