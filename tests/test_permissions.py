"""File modes: a file or folder the user may not read or write (a run made read-only, another user's
dataset or report). Root ignores file modes, so as root every command runs in a subprocess under
`setpriv` without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (uid 0 still, so the same Python and
packages load; modes are then enforced on root's own files); as another user, in a plain subprocess.

Each batch of commands runs in one interpreter (`_as_user`), the CLI's main(argv) in turn, so the
file costs a handful of interpreter starts. Permissions are restored in `finally` (tmp_path's
cleanup, and the comparisons after, need them), and every run a writer refuses is compared file by
file, modes included, with what it was."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sketchmine
from tests.helpers import StopAfter, assert_same_store, image_folder

CAPS = "-dac_override,-dac_read_search"

BATCH = r"""
import contextlib, io, json, os, sys
from sketchmine.cli.main import main
said = []
for step in json.loads(sys.argv[1]):
    if "chmod" in step:
        os.chmod(step["chmod"][0], step["chmod"][1])
        said.append({"chmod": step["chmod"][0]})
        continue
    if "exists" in step:
        said.append({"exists": os.path.lexists(step["exists"])})
        continue
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(step["main"])
    said.append({"rc": rc, "err": err.getvalue(), "out": out.getvalue()})
print(json.dumps(said))
"""


@pytest.fixture(scope="module")
def as_user(tmp_path_factory) -> list[str]:
    """The command prefix that makes file modes apply: none for a user other than root; for root,
    setpriv dropping the two capabilities that bypass them (checked: a 0555 folder refuses a file)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, which ignores file modes, and setpriv (util-linux) is not installed to "
                    "drop CAP_DAC_OVERRIDE")
    prefix = [setpriv, f"--inh-caps={CAPS}", f"--bounding-set={CAPS}"]
    folder = tmp_path_factory.mktemp("modes")
    folder.chmod(0o555)
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"],
                               capture_output=True, text=True, timeout=60)
    finally:
        folder.chmod(0o755)
    if probe.returncode == 0 or "PermissionError" not in probe.stderr:
        pytest.skip(f"running as root, and setpriv could not drop CAP_DAC_OVERRIDE here: {probe.stderr.strip()[-200:]}")
    return prefix


def _as_user(prefix: list[str], steps: list[dict[str, Any]], cwd: Path) -> list[dict[str, Any]]:
    """Run `steps` ({"main": argv}, {"chmod": [path, mode]}, {"exists": path}) in one interpreter
    whose file modes apply; what each said (rc, err, out; exists), one entry per step."""
    package = str(Path(sketchmine.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([*prefix, sys.executable, "-c", BATCH, json.dumps(steps)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mine(folder: Path, out: Path, **kwargs: Any):
    return sketchmine.mine("demo", folder, out=out, k=3, batch_size=8, flush_every=1, **kwargs)


MINE = ["mine", "--model", "demo", "-k", "3", "--batch-size", "8", "--flush-every", "1", "-q"]


def _snapshot(path: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under `path`: its mode and (files) a digest of its bytes."""
    out = {}
    for p in sorted([path, *path.rglob("*")]):
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(path))] = (p.stat().st_mode & 0o7777, digest)
    return out


def _restore(path: Path) -> None:
    """Folders 0755 and files 0644 again, top down (a folder made readable before its entries)."""
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        path.chmod(0o755)
        for child in path.iterdir():
            _restore(child)
    else:
        path.chmod(0o644)


def _read_only(path: Path) -> None:
    for p in sorted([path, *path.rglob("*")], key=lambda q: -len(q.parts)):  # entries first, the folder last
        p.chmod(p.stat().st_mode & ~0o222)


@pytest.fixture()
def folder(tmp_path, demo_test_set) -> Path:
    """3 real test images per class as PNGs (30), in tmp_path/data/<class>/<image>.png."""
    image_folder(demo_test_set, tmp_path / "data", per_class=3)
    return tmp_path / "data"


def _an_image(folder: Path) -> Path:
    return sorted((folder / "bird").iterdir())[0]


def test_an_unreadable_image_is_refused_before_the_run_is_made_and_the_rerun_mines_it(as_user, folder, tmp_path):
    """mine made the run, failed at the first batch, and recorded the file as unreadable in the run's
    dataset fingerprint: once the file was readable again, the same command was refused as "mined with
    other settings: dataset"."""
    image, out = _an_image(folder), tmp_path / "run.zarr"
    command = [*MINE, "--data", str(folder), "--out", str(out)]
    image.chmod(0o000)
    try:
        said = _as_user(as_user, [{"main": command}, {"exists": str(out)}, {"chmod": [str(image), 0o644]},
                                  {"main": command}], tmp_path)
    finally:
        image.chmod(0o644)
    refused, made, again = said[0], said[1], said[3]
    assert refused["rc"] == 3 and "cannot read image bird/" in refused["err"] and "Permission denied" in refused["err"]
    assert "--skip-bad-images" in refused["err"] and not made["exists"], refused["err"]
    assert again["rc"] == 0, again["err"]
    assert_same_store(out, _mine(folder, tmp_path / "ref.zarr").path)


def test_a_later_pass_names_an_unreadable_image_not_another_dataset(as_user, folder, tmp_path):
    """visualize and importance said "the dataset given is not the one run … was mined on" for an
    image that is only unreadable."""
    run = _mine(folder, tmp_path / "run.zarr").path
    image, before = _an_image(folder), _snapshot(run)
    visualize = ["visualize", str(run), "--layers", "features.0", "-q"]
    image.chmod(0o000)
    try:
        said = _as_user(as_user, [{"main": visualize}, {"main": ["importance", str(run), "--layers", "classifier.4"]},
                                  {"chmod": [str(image), 0o644]}, {"main": visualize}], tmp_path)
    finally:
        image.chmod(0o644)
    for refused in said[:2]:
        assert refused["rc"] == 3, refused["err"]
        assert f"cannot read image bird/{image.name}" in refused["err"] and "Permission denied" in refused["err"]
        assert "not the one" not in refused["err"]
    assert said[3]["rc"] == 0, said[3]["err"]
    assert set(_snapshot(run)) > set(before)  # the re-run wrote its pictures; nothing before was lost


def test_a_folder_of_the_dataset_that_cannot_be_listed_is_refused_naming_it(as_user, demo_test_set, tmp_path):
    """A class folder without read permission was "a folder without images": skipped, and a run of
    the other classes made (labels shifted; with logits, a class-count error); one without any
    permission failed on a zarr.json it does not hold; a subfolder's images were left out silently."""
    cases = {"class-000": ("bird", 0o000), "class-311": ("bird", 0o311), "sub": ("bird/sub", 0o000),
             "root": (".", 0o000), "class-644": ("bird", 0o644), "sub-644": ("bird/sub", 0o644)}
    for name, (where, _) in cases.items():
        image_folder(demo_test_set, tmp_path / name, per_class=3)
        if where == "bird/sub":
            (tmp_path / name / where).mkdir()
            shutil.copy(_an_image(tmp_path / name), tmp_path / name / where / "x.png")
    steps: list[dict[str, Any]] = []
    for name in cases:
        steps += [{"main": [*MINE, "--no-logits", "--data", str(tmp_path / name), "--out", str(tmp_path / f"{name}.zarr")]},
                  {"exists": str(tmp_path / f"{name}.zarr")}]
    try:
        for name, (where, mode) in cases.items():
            (tmp_path / name / where).chmod(mode)
        said = _as_user(as_user, steps, tmp_path)
    finally:
        for name, (where, _) in cases.items():
            (tmp_path / name / where).chmod(0o755)
    for i, (name, (where, _)) in enumerate(cases.items()):
        refused, made = said[2 * i], said[2 * i + 1]
        shown = str(tmp_path / name) if where == "." else str(tmp_path / name / where)
        assert refused["rc"] == 3 and "cannot list " in refused["err"], (name, refused)
        assert shown in refused["err"] and "Permission denied" in refused["err"], (name, refused["err"])
        assert not made["exists"], name
    assert len(_mine(tmp_path / "class-311", tmp_path / "again.zarr", logits=False).paths) == 30


def test_a_read_only_partial_run_is_refused_before_mining_and_then_resumes_identically(as_user, folder, tmp_path):
    """A resume of a run made read-only mined up to its first flush (50 batches by default) before
    its write failed."""
    reference = _mine(folder, tmp_path / "ref.zarr").path
    run = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        _mine(folder, run, progress=StopAfter(16))
    _read_only(run)
    before = _snapshot(run)
    try:
        said = _as_user(as_user, [{"main": [*MINE, "--data", str(folder), "--out", str(run)]}], tmp_path)
        assert _snapshot(run) == before
    finally:
        _restore(run)
    assert said[0]["rc"] == 3 and f"cannot write to run {run}" in said[0]["err"], said[0]["err"]
    assert "not writable" in said[0]["err"] and "nothing was changed" in said[0]["err"]
    assert_same_store(_mine(folder, run).path, reference)


def test_a_read_only_complete_run_is_read_and_its_writers_refuse_before_their_work(as_user, folder, tmp_path):
    """Readers and `mine` run again work on a read-only run; importance and effects ablated every unit
    of the layer before their write failed, and then said to re-run "to resume"."""
    run = _mine(folder, tmp_path / "run.zarr").path
    other = _mine(folder, tmp_path / "other.zarr").path
    _read_only(run)
    before = _snapshot(run)
    reads = [["summary", str(run)], ["unit", str(run), "features.6", "3"], ["verify", str(run)],
             ["compare", str(run), str(other)], ["report", str(run), "--out", str(tmp_path / "rep"), "--no-probe", "-q"],
             [*MINE, "--data", str(folder), "--out", str(run)]]
    writes = [["importance", str(run), "--layers", "classifier.4"], ["effects", str(run), "--layers", "classifier.4"],
              ["visualize", str(run), "--layers", "features.0"]]
    try:
        said = _as_user(as_user, [{"main": argv} for argv in reads + writes], tmp_path)
        assert _snapshot(run) == before
    finally:
        _restore(run)
    for argv, got in zip(reads, said):
        assert got["rc"] == 0, (argv[0], got["err"])
    for got in said[len(reads):len(reads) + 2]:
        assert got["rc"] == 3 and "not writable" in got["err"] and "nothing was changed" in got["err"], got["err"]
    assert said[-1]["rc"] == 1 and f"cannot write to {run}" in said[-1]["err"], said[-1]["err"]


def test_a_run_file_that_cannot_be_read_is_named_not_called_damaged(as_user, folder, tmp_path):
    """An unreadable chunk or zarr.json was "damaged … restore the run's files from a copy", and
    verify of a run folder that cannot be listed called every array "missing"."""
    base = _mine(folder, tmp_path / "base.zarr").path
    runs = {name: shutil.copytree(base, tmp_path / f"{name}.zarr") for name in ("chunk", "meta", "unlisted")}
    targets = {"chunk": (runs["chunk"] / "layers" / "features.6" / "values" / "c.0.0", 0o000),
               "meta": (runs["meta"] / "zarr.json", 0o000), "unlisted": (runs["unlisted"], 0o311)}
    steps: list[dict[str, Any]] = [{"main": [command, str(runs[name])]}
                                   for name in ("chunk", "meta") for command in ("summary", "verify")]
    steps += [{"main": ["verify", str(runs["unlisted"])]},
              *({"chmod": [str(p), 0o755 if p.is_dir() else 0o644]} for p, _ in targets.values()),
              *({"main": ["verify", str(run)]} for run in runs.values())]
    try:
        for path, mode in targets.values():
            path.chmod(mode)
        said = _as_user(as_user, steps, tmp_path)
    finally:
        for run in runs.values():
            _restore(run)
    for got, path in zip(said[:5], [targets["chunk"][0]] * 2 + [targets["meta"][0]] * 2 + [targets["unlisted"][0]]):
        assert got["rc"] == 1, got
        assert f"{path} is not readable" in got["err"] and "the run is not damaged" in got["err"], got["err"]
        assert "restore" not in got["err"] and "missing" not in got["out"] + got["err"], got
    for got in said[8:]:
        assert got["rc"] == 0 and "match their checksums" in got["out"], got


def test_a_report_folder_that_is_not_writable_is_refused_and_kept(as_user, folder, tmp_path):
    """Into a read-only report folder the new report was swapped in (taking the folder's mode), the
    previous one left half removed in a hidden sibling, and the error said it was unchanged."""
    from sketchmine.present.report import write_report

    run = _mine(folder, tmp_path / "run.zarr").path
    rep = tmp_path / "rep"
    write_report(run, rep, montages=0)
    rep.chmod(0o555)
    before = _snapshot(rep)
    try:
        said = _as_user(as_user, [{"main": ["report", str(run), "--out", str(rep), "--no-probe", "-q"]}], tmp_path)
        assert _snapshot(rep) == before
    finally:
        rep.chmod(0o755)
    assert said[0]["rc"] == 3 and f"report folder {rep}" in said[0]["err"], said[0]["err"]
    assert "not writable" in said[0]["err"] and "nothing was written" in said[0]["err"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")) == []


def test_a_lock_file_another_user_left_read_only_still_locks(as_user, folder, tmp_path):
    """flock needs no write access: a lock file of another user (0644 by their umask) refused every
    writer with "make its folder writable", the folder being writable. A folder that is not
    writable is named as such."""
    run = _mine(folder, tmp_path / "run.zarr").path
    lock = tmp_path / ".run.zarr.lock"
    lock.touch()
    lock.chmod(0o444)
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0o555)
    try:
        said = _as_user(as_user, [{"main": [*MINE, "--data", str(folder), "--out", str(run)]},
                                  {"main": [*MINE, "--data", str(folder), "--out", str(closed / "new.zarr")]}],
                        tmp_path)
    finally:
        lock.chmod(0o644)
        closed.chmod(0o755)
    assert said[0]["rc"] == 0, said[0]["err"]
    assert said[1]["rc"] == 1 and f"make {closed} writable" in said[1]["err"], said[1]["err"]
    assert list(closed.iterdir()) == []


def test_an_unreadable_recovery_folder_at_a_disk_root_is_skipped(as_user, demo_test_set, tmp_path):
    """A dataset on its own disk has the file system's lost+found (root's, 0700) beside the classes:
    refused as a folder that cannot be listed, the whole dataset could not be mined."""
    root = image_folder(demo_test_set, tmp_path / "disk", per_class=3)
    (root / "lost+found").mkdir(mode=0o000)
    try:
        argv = [a for a in MINE if a != "-q"] + ["--no-logits", "--data", str(root), "--out", str(tmp_path / "r.zarr")]
        said = _as_user(as_user, [{"main": argv}], tmp_path)  # not quiet: the note that names what is skipped
    finally:
        (root / "lost+found").chmod(0o755)
    assert said[0]["rc"] == 0, said[0]["err"]
    assert "lost+found/ (the file system's recovery folder)" in said[0]["err"], said[0]["err"]
    assert len(sketchmine.open_run(tmp_path / "r.zarr").paths) == 30


def test_a_lock_the_file_system_refuses_is_said_naming_the_lock_file(folder, tmp_path, monkeypatch):
    """On NFS, flock is emulated with fcntl locks, which refuse a descriptor opened read-only (EBADF):
    the read-only fallback for another user's lock file escaped as a bare "Bad file descriptor"."""
    import errno
    import fcntl

    from sketchmine.errors import SketchmineFailure
    from sketchmine.store import lock

    run = _mine(folder, tmp_path / "r.zarr", logits=False)
    opened = set(os.listdir("/proc/self/fd"))

    def nfs(fd, mode):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(fcntl, "flock", nfs)
    with pytest.raises(SketchmineFailure, match=r"cannot lock .*r\.zarr \(.*\.lock: Bad file descriptor\); make the "
                                                r"lock file writable by this user"):
        lock.RunLock(run.path).acquire()
    assert set(os.listdir("/proc/self/fd")) <= opened  # the lock file's descriptor closed


def test_a_resume_skipping_bad_images_names_an_image_unreadable_since(as_user, folder, tmp_path):
    """With --skip-bad-images the up-front refusal is not made, and a resume after an image became
    unreadable was refused as "the content of at least one [image] changed"."""
    run = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        _mine(folder, run, progress=StopAfter(16), skip_bad_images=True)
    image = _an_image(folder)
    image.chmod(0o000)
    try:
        said = _as_user(as_user, [{"main": [*MINE, "--skip-bad-images", "--data", str(folder), "--out", str(run)]}],
                        tmp_path)
    finally:
        image.chmod(0o644)
    err = said[0]["err"]
    assert said[0]["rc"] == 3 and f"cannot read image bird/{image.name}" in err and "Permission denied" in err, err
    assert "content of at least one changed" not in err, err
