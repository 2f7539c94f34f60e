"""A report removes only what a report wrote, on real reports of a real mined run: a file put in
the report folder while the report is built, just before the swap or during the in-place swap
(the shell inside the folder) is kept and the report refused in one line; a folder marked
partial (an interrupted in-place swap, by this or an older sketchmine) keeps a file put in it;
an error during the in-place swap says the folder is incomplete, not that it is unchanged."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import sketchmine
from sketchmine.present import report, report_folder
from sketchmine.present.report import MARKER, write_report


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(rep: Path) -> list[str]:
    return sorted(p.name for p in rep.parent.iterdir() if p.name.startswith(f".{rep.name}"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_test_set):
    # two layers: what is checked is the folder, not the pages (a report of every layer takes 6 times longer)
    return sketchmine.mine("demo", small_test_set, layers=["features.0", "classifier.6"],
                           out=tmp_path_factory.mktemp("run") / "run.zarr", batch_size=100)


@pytest.fixture()
def rep(run, tmp_path) -> Path:
    """A finished report of `run`."""
    out = tmp_path / "rep"
    write_report(run, out)
    return out


@pytest.mark.parametrize("from_inside", [False, True], ids=["swapped-whole", "swapped-entry-by-entry"])
def test_a_file_put_in_the_report_folder_while_the_report_is_built_is_kept(run, rep, monkeypatch, from_inside):
    """The folder was checked only before the build: a file put there meanwhile went with the
    previous report. Checked again just before the swap now: refused, naming it, nothing removed."""
    if from_inside:
        monkeypatch.chdir(rep)
    real = report._build

    def build(*a, **k):  # the real build, with the user saving a file into the report folder meanwhile
        (rep / "added_meanwhile.txt").write_text("the user's")
        return real(*a, **k)

    monkeypatch.setattr(report, "_build", build)
    before = tree(rep)
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(added_meanwhile\.txt\).*while this report "
                                                         r"was written") as e:
        write_report(run, rep)
    assert "\n" not in str(e.value)
    after = tree(rep)
    assert after.pop("added_meanwhile.txt") == b"the user's"
    assert after == before  # the previous report as it was
    assert leftovers(rep) == []
    monkeypatch.setattr(report, "_build", real)
    (rep / "added_meanwhile.txt").unlink()
    write_report(run, rep)  # moved away: written again
    assert set(tree(rep)) == set(before)


def test_a_file_put_in_just_before_the_exchange_is_put_back_with_the_previous_report(run, rep, monkeypatch):
    """The swapped-out previous report is checked before it is removed: one holding a file no
    report wrote is swapped back (the file where the user put it) and the report refused."""
    real, done = report_folder.exchange, []

    def exchange(a, b):  # the real exchange, with the user saving a file in the instant before it
        if not done:
            done.append(b)
            (b / "img" / "late.txt").write_text("the user's")
        return real(a, b)

    monkeypatch.setattr(report_folder, "exchange", exchange)
    before = tree(rep)
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(img/late\.txt\)"):
        write_report(run, rep)
    after = tree(rep)
    assert after.pop("img/late.txt") == b"the user's"
    assert after == before
    assert leftovers(rep) == []


def test_a_file_put_in_during_the_in_place_swap_is_kept(run, rep, monkeypatch):
    """With the shell inside the report folder the previous report's entries went whole
    (rmtree): a file put in one of its folders after the check went with it. Only the files the
    report wrote are removed now; the file stays and the folder is said to be incomplete."""
    monkeypatch.chdir(rep)
    real, done = report_folder.inside, []

    def inside(path, folder):  # the swap's own test of the shell's folder; the user saves a file just then
        if path == Path.cwd().resolve() and not done:
            done.append(folder)
            (folder / "layers" / "my_notes.txt").write_text("the user's")
        return real(path, folder)

    monkeypatch.setattr(report_folder, "inside", inside)
    with pytest.raises(sketchmine.SketchmineError, match=r"incomplete: layers/my_notes\.txt appeared") as e:
        write_report(run, rep)
    assert "\n" not in str(e.value)
    assert (rep / "layers" / "my_notes.txt").read_text() == "the user's"
    assert leftovers(rep) == []
    monkeypatch.setattr(report_folder, "inside", real)
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(layers/my_notes\.txt\)"):
        write_report(run, rep)  # the partial folder still refuses while the file is there
    os.rename(rep / "layers" / "my_notes.txt", rep.parent / "my_notes.txt")
    write_report(run, rep)
    assert (rep / "index.html").is_file() and not json.loads((rep / MARKER).read_text()).get("partial")


def test_an_error_in_the_in_place_swap_says_the_folder_is_incomplete_and_its_partial_marker_lists_the_files(
        run, rep, monkeypatch):
    """EIO while the previous report's entries were removed said "the previous report there is
    unchanged" (it was already partly removed). It says the folder is incomplete now; the folder
    marked partial lists what the reports wrote, so a file put there later is still refused
    (a partial folder was replaced whole, the file with it)."""
    from sketchmine.errors import SketchmineFailure

    monkeypatch.chdir(rep)
    real = Path.unlink

    def unlink(self, *a, **k):  # the disk fails removing the previous index.html
        if self == rep / "index.html":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(SketchmineFailure) as e:
        write_report(run, rep)
    monkeypatch.setattr(Path, "unlink", real)
    msg = str(e.value)
    assert "Input/output error" in msg and "incomplete" in msg and "unchanged" not in msg, msg
    marker = json.loads((rep / MARKER).read_text())
    assert marker["partial"] and "index.html" in marker["files"]
    assert leftovers(rep) == []
    (rep / "my_notes.txt").write_text("the user's")
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(my_notes\.txt\)"):
        write_report(run, rep)
    assert (rep / "my_notes.txt").read_text() == "the user's"
    (rep / "my_notes.txt").unlink()
    write_report(run, rep)  # the same command writes it again
    assert (rep / "index.html").is_file() and not json.loads((rep / MARKER).read_text()).get("partial")


def test_a_partial_marker_of_an_older_sketchmine_keeps_what_is_not_a_reports(run, rep):
    """An older sketchmine's partial marker lists no files, and any later report replaced such a
    folder whole. Now only entries recognisably a report's are taken as its: anything else is
    refused, named; a folder of report files only is written again."""
    (rep / MARKER).write_text(json.dumps({"sketchmine": "report", "partial": True}) + "\n")
    (rep / "my_notes.txt").write_text("the user's")
    (rep / "assets" / "mine.txt").write_text("the user's too")
    before = tree(rep)
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(assets/mine\.txt, my_notes\.txt\) "
                                                         r"\(its marker, left by an interrupted report, lists no files\)"):
        write_report(run, rep)
    assert tree(rep) == before
    (rep / "my_notes.txt").unlink()
    (rep / "assets" / "mine.txt").unlink()
    write_report(run, rep)  # report files only: replaced
    assert (rep / "index.html").is_file() and not json.loads((rep / MARKER).read_text()).get("partial")
    assert leftovers(rep) == []


def test_a_file_put_in_the_swapped_out_previous_report_is_kept_where_the_message_says(run, rep, monkeypatch):
    """After the atomic exchange the temporary folder's path names the previous report: a file put
    in it in the instant before its removal was announced as kept there, then removed with the
    whole folder by the report's own clean-up. It stays, and a second report in the same process
    (the same pid) neither removes nor reuses that folder."""
    real = report_folder.remove_listed
    put: list[Path] = []

    def remove_listed(folder, info):  # the real removal, with the user saving a file there first
        if folder != rep and not put:
            put.append(folder / "notes.txt")
            put[0].write_text("the user's")
        return real(folder, info)

    monkeypatch.setattr(report_folder, "remove_listed", remove_listed)
    with pytest.raises(sketchmine.SketchmineError, match=r"notes\.txt appeared in the previous report") as e:
        write_report(run, rep)
    assert put and str(put[0].parent) in str(e.value)
    assert put[0].read_text() == "the user's"
    monkeypatch.setattr(report_folder, "remove_listed", real)
    write_report(run, rep)
    assert put[0].read_text() == "the user's"
    assert (rep / "index.html").is_file()


def test_a_listed_name_that_is_no_longer_a_file_is_not_the_reports(run, rep):
    """A named pipe where the report wrote index.html passed as the report's own (listed, not a
    link, not a folder), then was not removed, and the report failed after the swap."""
    (rep / "index.html").unlink()
    os.mkfifo(rep / "index.html")
    with pytest.raises(sketchmine.SketchmineError, match=r"did not write \(index\.html\)"):
        write_report(run, rep)
    assert (rep / "index.html").is_fifo() and leftovers(rep) == []


def test_without_an_atomic_exchange_a_failed_move_puts_the_previous_report_back(run, rep, monkeypatch):
    """Where the file system has no atomic exchange the previous report is moved aside first: a
    failure moving the new one in left the folder missing, the previous report in a hidden one."""
    before = tree(rep)
    monkeypatch.setattr(report_folder, "exchange", lambda a, b: False)
    real = os.rename

    def rename(src, dst):  # the new report's move fails (a full or read-only folder would)
        if "old-" not in Path(src).name and report_folder.TMP in Path(src).name:
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(sketchmine.SketchmineError, match="previous report there .* is unchanged"):
        write_report(run, rep)
    monkeypatch.setattr(os, "rename", real)
    assert tree(rep) == before and leftovers(rep) == []


def test_replacing_another_runs_report_is_said(run, rep, tmp_path, caplog):
    """`report B --out <A's report>` is allowed (the folder is a report's) but replaced A's report
    without a word: it now names the run whose report goes; the same run's again says nothing."""
    import logging
    import shutil

    other = sketchmine.open_run(shutil.copytree(run.path, tmp_path / "other.zarr"))
    assert json.loads((rep / MARKER).read_text())["run"] == str(Path(run.path).resolve())
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        write_report(run, rep)
    assert not [r for r in caplog.records if "held the report of run" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        write_report(other, rep)
    said = [r.getMessage() for r in caplog.records if "held the report of run" in r.getMessage()]
    assert said == [f"report folder {rep} held the report of run {Path(run.path).resolve()}; it now holds the "
                    f"report of {other.path}"]
    assert json.loads((rep / MARKER).read_text())["run"] == str(Path(other.path).resolve())


def test_quiet_still_says_another_runs_report_was_replaced(run, rep, tmp_path):
    """`-q` hid that note with the other notes: the user's earlier report was gone without a word.
    Quiet hides progress and notes, not what was done to the user's files: the note stays, and
    it is the only line on stderr; the same run's report again says nothing."""
    import shutil

    from tests.test_cli import sm

    other = shutil.copytree(run.path, tmp_path / "other.zarr")
    said = sm("-q", "report", str(other), "--out", str(rep), "--no-probe")
    assert said.returncode == 0 and said.stdout.startswith("report written in"), said.stderr
    assert said.stderr.splitlines() == [f"note: report folder {rep} held the report of run {Path(run.path).resolve()}; "
                                        f"it now holds the report of {other}"]
    said = sm("-q", "report", str(other), "--out", str(rep), "--no-probe")
    assert said.returncode == 0 and said.stderr == ""


def test_a_ctrl_c_once_the_new_report_is_in_place_says_it_was_written(run, rep, monkeypatch):
    """A Ctrl-C while the previous report, swapped out, was removed said "no report was written and
    the previous one in the folder (if any) is unchanged": the new report was in place. It says so,
    and where the previous one is left; the next report removes that."""
    import subprocess
    import sys

    real, hits = Path.unlink, []

    def unlink(self, *a, **k):  # Ctrl-C while the swapped-out previous report's index.html is removed
        if self.name == "index.html" and self.parent != rep and report_folder.TMP in self.parent.name and not hits:
            hits.append(self.parent)
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt) as e:
        write_report(run, rep)
    monkeypatch.setattr(Path, "unlink", real)
    assert hits and str(e.value) == (f"interrupted after the report was written to {rep}; the previous one, being removed, "
                                     f"is left in {hits[0].name} beside it, which the next `sketchmine report` there removes")
    assert (rep / "index.html").is_file() and not json.loads((rep / MARKER).read_text()).get("partial")
    assert hits[0].is_dir()
    gone = subprocess.Popen(["true"])  # the interrupted command's process ends: its pid, in the name, is then gone
    gone.wait()
    left = hits[0].rename(hits[0].with_name(f"{hits[0].name.rsplit('-', 1)[0]}-{gone.pid}"))
    again = subprocess.run([sys.executable, "-m", "sketchmine", "report", str(run.path), "--out", str(rep), "-q"],
                           capture_output=True, text=True)  # another process: this one's leftovers are not stale to it
    assert again.returncode == 0, again.stderr
    assert not left.exists() and leftovers(rep) == []


def test_a_run_replaced_while_its_report_is_written_is_refused_not_mixed(run, rep, tmp_path, monkeypatch,
                                                                         small_test_set):
    """The run deleted and another mined in its place while its report was built: the report
    mixed the two runs' pages (exit 0), or failed naming a layer the user never gave (readers
    audit). Refused now, saying the run changed, the previous report as it was."""
    import shutil

    here = tmp_path / "here.zarr"
    shutil.copytree(run.path, here)
    other = sketchmine.mine("demo", small_test_set, layers=["features.3", "classifier.6"], k=3,
                            out=tmp_path / "other.zarr", batch_size=100)
    write_report(here, rep)
    before = tree(rep)
    real, swapped = report.plots.histogram_plot, []

    def histogram_plot(*a, **k):  # the user replaces the run while its first layer's plot is drawn
        if not swapped:
            shutil.rmtree(here)
            os.rename(other.path, here)
            swapped.append(True)
        return real(*a, **k)

    monkeypatch.setattr(report.plots, "histogram_plot", histogram_plot)
    with pytest.raises(sketchmine.SketchmineError, match=f"run {here} changed while it was read"):
        write_report(here, rep)
    assert swapped and tree(rep) == before and leftovers(rep) == []
    monkeypatch.setattr(report.plots, "histogram_plot", real)
    write_report(here, rep)  # the new run's report, whole
    assert "features.3" in (rep / "index.html").read_text() and "features.0" not in (rep / "index.html").read_text()


KILLED_IN_CLEANUP = '''"""Made by the test: a `kill` (SIGTERM) while the report writes its pages, then a `kill -9` just
after the interrupted report's cleanup removed its staging folder's marker."""
import os
import signal
import sys

_state = []


def _hook(event, args):
    if "report" not in sys.argv:  # the report's own process, not its slide workers
        return
    if not _state and event == "open" and report_tmp in str(args[0]) and "/data/" in str(args[0]):
        _state.append("term")
        os.kill(os.getpid(), signal.SIGTERM)
    elif _state == ["term"] and event == "os.remove" and str(args[0]).endswith(".sketchmine-report"):
        _state.append("marker")
    elif _state == ["term", "marker"] and event in ("os.remove", "os.rmdir"):
        os.kill(os.getpid(), signal.SIGKILL)


report_tmp = ".sketchmine-report-tmp-"
sys.addaudithook(_hook)
'''


def test_a_report_killed_while_it_removes_its_staging_folder_leaves_one_the_next_report_removes(run, tmp_path):
    """SIGTERM, then SIGKILL during the interrupted report's cleanup (a supervisor's grace period):
    rmtree removed the staging folder's marker before the pages that followed it in the folder's
    order, and `remove_stale` keeps an unmarked folder, so every later report left it there."""
    import signal

    from tests.helpers import report_with_hook

    killed, rep = report_with_hook(run, tmp_path, KILLED_IN_CLEANUP,
                                   preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-600:]  # killed in the cleanup, as the hook aims
    assert len(leftovers(rep)) == 1 and not (rep.parent / leftovers(rep)[0] / MARKER).exists()
    write_report(run, rep)
    assert leftovers(rep) == [] and (rep / "index.html").is_file()
