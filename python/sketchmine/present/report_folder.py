"""The report folder's ownership and atomic replacement: which folders a report may (re)write
(`check_report_dir`), and how a finished report is swapped in so that an interrupted one
leaves the previous report as it was (`swap_in`).

A report removes only what a report wrote: the files and folders its marker lists. The check
is made before the report is built, again just before the swap (a file put in the folder
meanwhile refuses the swap: the previous report stays, with the file) and on the swapped-out
copy before it is removed (put back in place when it holds anything else). A folder marked
partial (an interrupted in-place swap) lists what the two reports wrote; a partial marker of
an older sketchmine lists nothing, so only entries recognisably a report's (REPORT_ENTRIES,
with REPORT_SUFFIXES inside its folders; no links) count as written by it."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sketchmine.errors import SketchmineError, SketchmineFailure
from sketchmine.store.access import read_only_file_system

MARKER = ".sketchmine-report"
"""The file that makes a folder a report folder sketchmine may replace (JSON: the files it wrote)."""

TMP = ".sketchmine-report-tmp-"

STAGED = MARKER + ".partial"
"""The partial marker of an in-place swap, written beside the new report and moved in at once."""

PARTIAL = json.dumps({"sketchmine": "report", "partial": True}) + "\n"
"""The marker of a report being built in its temporary folder (the files are not listed yet)."""

REPORT_ENTRIES = frozenset({"index.html", "probe.html", "summary.png", "summary.svg", "ink.png", "ink.svg", "assets",
                            "layers", "units", "data", "dash", "img", "hist", "importance", "montage", "probe"})
"""What a report writes at the top of its folder (the files, and the folders that hold the rest; ink.svg:
what earlier reports wrote, replaced as theirs)."""

REPORT_SUFFIXES = (".html", ".js", ".mjs", ".css", ".png", ".svg", ".onnx", ".wasm")


class InPlaceSwapError(OSError):
    """An OSError in the entry-by-entry swap after the folder was marked partial: the previous
    report is (partly) removed, the new one not (wholly) in place."""


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_report_dir(out: str | os.PathLike, run_path: str | os.PathLike | None = None) -> Path:
    """The resolved report folder `out`, or a SketchmineError saying why sketchmine may not
    (re)write it. Nothing is created or removed."""
    from sketchmine.store.lock import enclosing_run, file_above, refuse_dangling_links, resolved

    shown = Path(out)
    target = resolved(shown, "report folder")
    refuse_dangling_links(shown, "report folder", "report folder")
    if target.exists() and not target.is_dir():
        raise SketchmineError(f"report folder {shown} exists and is not a folder; choose a new or empty folder")
    if (blocked := file_above(target)) is not None:
        raise SketchmineError(f"report folder {shown} cannot be made: {blocked} is a file, not a folder; choose a "
                              "new or empty folder")
    if (run := enclosing_run(target)) is not None:
        raise SketchmineError(f"report folder {shown} is inside the run {run}; write the report outside any run")
    if run_path is not None and inside(resolved(run_path, "run"), target):
        raise SketchmineError(f"report folder {shown} holds the run it reports ({run_path}); a report replaces its "
                              "whole folder, so choose a new or empty folder outside the run")
    if target == Path(target.anchor):
        raise SketchmineError(f"report folder {shown} is a filesystem root; choose a new or empty folder")
    if target.is_dir():
        writable(target, owned(target, shown), shown)
    return target


def writable(folder: Path, info: dict[str, Any], shown: str | os.PathLike) -> None:
    """Refuse, before anything is built, a report folder whose previous report this user may not
    remove: the folder or one of the report's folders in it is not writable (made read-only, or
    another user's). Swapped in, the new report took the folder's mode and the previous one was
    left half removed beside it, under an error saying it was unchanged."""
    for rel in [".", *sorted(listed_folders(info))]:
        p = folder / rel
        if p.is_dir() and not p.is_symlink() and not os.access(p, os.W_OK | os.X_OK):
            if read_only_file_system(p):
                raise SketchmineError(f"report folder {shown} is on a read-only file system, so the report there "
                                      "cannot be replaced; choose a folder elsewhere (nothing was written)")
            where = "it" if rel == "." else f"its folder {rel}"
            raise SketchmineError(f"report folder {shown}: {where} is not writable by this user, so the report there "
                                  f"cannot be replaced; make it writable (as its owner: chmod -R u+w {shown}) or "
                                  "choose another folder (nothing was written)")


def owned(folder: Path, shown: str | os.PathLike, late: str = "") -> dict[str, Any]:
    """The marker of the report folder `folder`, listing the files and folders the report(s)
    wrote (an empty folder: none), or a SketchmineError naming what no report wrote. `late`
    ends the message of a check made after the report was built."""
    if not any(folder.iterdir()):
        return {"sketchmine": "report", "files": [], "folders": []}
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink():
        raise SketchmineError(f"report folder {shown} is not empty and is not a sketchmine report (no {MARKER} "
                              f"file); choose a new or empty folder (a report replaces its whole folder){late}")
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or info.get("sketchmine") != "report":
        raise SketchmineError(f"report folder {shown}: {MARKER} is not a sketchmine report marker; "
                              f"choose a new or empty folder{late}")
    older = info.get("partial") and not isinstance(info.get("files"), list)
    if older:  # an interrupted swap of an older sketchmine: only what is recognisably a report's
        info = recognised(folder)
    foreign = foreign_entries(folder, info)
    if foreign:
        why = " (its marker, left by an interrupted report, lists no files)" if older else ""
        raise SketchmineError(f"report folder {shown} holds files the report did not write ({names(foreign)}){why}; "
                              f"move them, or choose another folder{late}")
    return info


def names(entries: list[str]) -> str:
    more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
    return ", ".join(entries[:3]) + more


def recognised(folder: Path) -> dict[str, Any]:
    """A marker listing the entries of `folder` that are recognisably a report's (no links)."""
    files, folders = [], []
    for root, dirs, fs in os.walk(folder):
        for name in dirs + fs:
            p = Path(root) / name
            rel = p.relative_to(folder)
            if p.is_symlink() or rel.parts[0] not in REPORT_ENTRIES:
                continue
            if p.is_dir():
                folders.append(str(rel))
            elif len(rel.parts) == 1 or p.suffix in REPORT_SUFFIXES:
                files.append(str(rel))
    return {"sketchmine": "report", "partial": True, "files": sorted(files), "folders": sorted(folders)}


def foreign_entries(target: Path, info: dict[str, Any]) -> list[str]:
    """What the report folder holds that the report (its marker `info`) did not write: files,
    links (to files or folders: a report writes none; removing one would reach past the
    folder) and folders that hold none of its files (a marker that lists its folders; older
    ones list files only, so only their files and links are checked)."""
    mine = set(info.get("files") or [])
    folders = info.get("folders")
    ours = set(folders or []) | {str(Path(f).parent) for f in mine}
    foreign = []
    for root, dirs, files in os.walk(target):  # links are entries here, never folders to enter
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(target))
            if rel in (MARKER, STAGED):
                continue
            if p.is_symlink() or not p.is_dir():  # a listed name holding a pipe or device: not the report's file
                if p.is_symlink() or not p.is_file() or rel not in mine:
                    foreign.append(rel + ("/" if p.is_dir() else ""))
            elif folders is not None and rel not in ours:
                foreign.append(rel + "/")
    return sorted(foreign)


def listed_folders(info: dict[str, Any]) -> set[str]:
    files = info.get("files") or []
    return (set(info.get("folders") or []) | {str(Path(f).parent) for f in files}) - {"."}


def remove_listed(folder: Path, info: dict[str, Any]) -> list[str]:
    """Removes the files and (emptied) folders the marker `info` lists, nothing else; what
    `folder` holds afterwards besides its marker."""
    for rel in info.get("files") or []:
        p = folder / rel
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
    for rel in sorted(listed_folders(info), key=lambda r: len(Path(r).parts), reverse=True):
        try:
            (folder / rel).rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
    return foreign_entries(folder, {})


def reported_run(folder: Path) -> str | None:
    """The run whose report `folder` holds (its marker's record), None when none or unreadable."""
    try:
        run = json.loads((folder / MARKER).read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, str) else None


def report_marker(run_path: str, tmp: Path) -> str:
    """The marker of a finished report in `tmp`: the files and folders it wrote."""
    files: list[str] = []
    folders: list[str] = []
    for p in sorted(tmp.rglob("*")):
        rel = str(p.relative_to(tmp))
        if rel != MARKER:
            (folders if p.is_dir() else files).append(rel)
    return json.dumps({"sketchmine": "report", "run": run_path, "files": files, "folders": folders}) + "\n"


def remove_stale(target: Path) -> None:
    """Temporary report folders of killed report processes (their pid is gone, or now another
    process's: `started_after`): what a report wrote there; a folder holding anything else is left
    as it is."""
    for p in target.parent.glob(f".{glob_escape(target.name)}{TMP}*"):
        made, _, pid = p.name.rpartition(TMP)[2].rpartition("-")
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            if not (made.isdigit() and started_after(int(pid), int(made) / 1e9)):
                continue  # still running (or this process: an earlier call's folder, kept by `swap_in`)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if not (p / MARKER).is_file():  # killed after `remove_staging` removed the marker: empty, or not ours
            with contextlib.suppress(OSError):
                p.rmdir()
            continue
        try:
            try:
                json.loads((p / MARKER).read_text())
            except ValueError:  # cut by a kill while written (truncated first): read as a partial one lists nothing
                (p / MARKER).write_text(PARTIAL)
            if not remove_listed(p, owned(p, p)):
                (p / STAGED).unlink(missing_ok=True)
                (p / MARKER).unlink()
                p.rmdir()
        except (SketchmineError, OSError):
            continue


STARTED_SLACK = 2.0
"""Seconds a process started after a folder was made to be another than its maker (/proc/stat's boot time: 1 s)."""


def started_after(pid: int, made: float) -> bool:
    """The live process `pid` started after `made` (seconds since the epoch): not the folder's maker,
    its pid used again (a report in a container is PID 1 each time: a killed one's folder was taken
    for the next one's own, and kept). False where /proc does not say (not Linux)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > made + STARTED_SLACK


def remove_staging(tmp: Path) -> None:
    """Removes an interrupted or failed report's staging folder `tmp`, its marker last, so that a
    kill part-way (SIGTERM, then SIGKILL during this cleanup) leaves a folder still marked, which
    the next report there removes (`remove_stale`). Removed as rmtree orders it, the marker went
    before the pages, slides and data that followed it in the folder's order: that folder, unmarked,
    was kept by every later report."""
    with contextlib.suppress(OSError):
        for p in list(tmp.iterdir()):
            if p.name == MARKER:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    for last in (lambda: (tmp / MARKER).unlink(missing_ok=True), tmp.rmdir):
        with contextlib.suppress(OSError):
            last()


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


LATE = "; they were put there while this report was written: the previous report there is kept as it was"


def same_folder(path: Path, inode: int) -> bool:
    """`path` is still the folder (not a link) whose inode a call noted when it made it."""
    try:
        return path.stat().st_ino == inode and not path.is_symlink()
    except OSError:
        return False


def swap_in(tmp: Path, target: Path, shown: str | os.PathLike | None = None) -> None:
    """The finished report `tmp` becomes `target`; the previous report is removed after the
    swap, only the files it wrote (checked again just before, and on the swapped-out copy)."""
    shown = target if shown is None else shown
    if not target.exists():
        os.rename(tmp, target)
        return
    old = owned(target, shown, LATE)
    cwd = Path.cwd().resolve()
    if inside(cwd, target):  # keep the folder itself (a shell sitting in it keeps seeing it): swap its entries
        swap_entries(tmp, target, old, shown)
        return
    # the folder given keeps its permissions (a private one stays private), as a run's does
    os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
    if exchange(tmp, target):  # tmp now holds the previous report
        with _written(shown, tmp):
            discard(tmp, shown, lambda: exchange(tmp, target))
        return
    aside = target.parent / f".{target.name}{TMP}old-{os.getpid()}"
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except OSError:  # the previous report back in place; the caller removes the new one
        os.rename(aside, target)
        raise

    def back() -> None:
        os.rename(target, tmp)
        os.rename(aside, target)
    with _written(shown, aside):
        discard(aside, shown, back)


@contextlib.contextmanager
def _written(shown: str | os.PathLike, old: Path) -> Iterator[None]:
    """A Ctrl-C once the new report is in place says so (the command's usual words, "no report was
    written", would be untrue): the previous report, being removed, is left beside it."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted after the report was written to {shown}; the previous one, being removed, "
                                f"is left in {old.name} beside it, which the next `sketchmine report` there removes") from None
    except OSError as exc:  # not "unchanged": the new report is in place
        raise SketchmineFailure(f"the report was written to {shown}, but the previous one could not be removed "
                                f"({exc.strerror or exc}: {exc.filename or old}); what is left of it is in {old}") from None


def discard(old: Path, shown: str | os.PathLike, undo: Callable[[], object]) -> None:
    """Removes the swapped-out previous report `old`; one holding what no report wrote is put
    back in place (`undo`) and the swap refused."""
    try:
        info = owned(old, shown, LATE)
    except SketchmineError:
        undo()
        raise
    left = remove_listed(old, info)
    if left:  # put there in the instant between the check and the removal: kept
        raise SketchmineError(f"the report was written to {shown}, but {names(left)} appeared in the previous "
                              f"report while it was replaced: kept in {old}")
    (old / MARKER).unlink(missing_ok=True)
    old.rmdir()


def swap_entries(tmp: Path, target: Path, old: dict[str, Any], shown: str | os.PathLike) -> None:
    """The in-place swap: `target` is marked partial (listing what both reports wrote) before
    its first entry is removed and gets the new marker last, so a kill or error in between
    leaves a folder the same command writes again. Errors after the marking: InPlaceSwapError."""
    new = json.loads((tmp / MARKER).read_text())
    partial = {"sketchmine": "report", "partial": True, "run": new.get("run"),
               "files": sorted(set(old.get("files") or []) | set(new.get("files") or [])),
               "folders": sorted(listed_folders(old) | listed_folders(new))}
    staged = tmp / STAGED
    staged.write_text(json.dumps(partial) + "\n")
    os.replace(staged, target / MARKER)  # at once: until here the previous report is whole
    try:
        left = remove_listed(target, old)
        if left:
            raise SketchmineError(f"report folder {shown} is incomplete: {names(left)} appeared in it while the "
                                  "previous report was removed (kept); move them and run `sketchmine report` again")
        for p in sorted(tmp.iterdir(), key=lambda q: q.name == MARKER):
            os.replace(p, target / p.name)
        tmp.rmdir()
    except OSError as exc:
        raise InPlaceSwapError(exc.errno, exc.strerror or str(exc), exc.filename) from exc
    except KeyboardInterrupt:  # the previous report is partly removed: "unchanged" would be untrue
        raise KeyboardInterrupt(f"interrupted while the report replaced the previous one in {shown}: the report folder is "
                                "incomplete; run `sketchmine report` again") from None
