"""The report folder's ownership and atomic replacement: which folders a report may (re)write
(`check_report_dir`), and how a finished report is swapped in so that an interrupted one
leaves the previous report as it was (`swap_in`)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sketchmine.errors import SketchmineError

MARKER = ".sketchmine-report"
"""The file that makes a folder a report folder sketchmine may replace (JSON: the files it wrote)."""

TMP = ".sketchmine-report-tmp-"

PARTIAL = json.dumps({"sketchmine": "report", "partial": True}) + "\n"
"""The marker of a report folder being written: any later report may replace it whole."""


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_report_dir(out: str | os.PathLike, run_path: str | os.PathLike | None = None) -> Path:
    """The resolved report folder `out`, or a SketchmineError saying why sketchmine may not
    (re)write it. Nothing is created or removed."""
    from sketchmine.store.lock import enclosing_run

    shown = Path(out)
    target = shown.resolve()
    if target.exists() and not target.is_dir():
        raise SketchmineError(f"report folder {shown} exists and is not a folder; choose a new or empty folder")
    if (run := enclosing_run(target)) is not None:
        raise SketchmineError(f"report folder {shown} is inside the run {run}; write the report outside any run")
    if run_path is not None and inside(Path(run_path).resolve(), target):
        raise SketchmineError(f"report folder {shown} holds the run it reports ({run_path}); a report replaces its "
                              "whole folder, so choose a new or empty folder outside the run")
    if target == Path(target.anchor):
        raise SketchmineError(f"report folder {shown} is a filesystem root; choose a new or empty folder")
    if target.is_dir() and any(target.iterdir()):
        marker = target / MARKER
        if not marker.is_file():
            raise SketchmineError(f"report folder {shown} is not empty and is not a sketchmine report (no {MARKER} "
                                  "file); choose a new or empty folder (a report replaces its whole folder)")
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict) or info.get("sketchmine") != "report":
            raise SketchmineError(f"report folder {shown}: {MARKER} is not a sketchmine report marker; "
                                  "choose a new or empty folder")
        if not info.get("partial"):
            foreign = foreign_entries(target, info)
            if foreign:
                more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                raise SketchmineError(f"report folder {shown} holds files the report did not write "
                                      f"({', '.join(foreign[:3])}{more}); move them, or choose another folder")
    return target


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
            if rel == MARKER:
                continue
            if p.is_symlink() or not p.is_dir():
                if p.is_symlink() or rel not in mine:
                    foreign.append(rel + ("/" if p.is_dir() else ""))
            elif folders is not None and rel not in ours:
                foreign.append(rel + "/")
    return sorted(foreign)


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
    """Temporary report folders of killed report processes (their pid is gone)."""
    for p in target.parent.glob(f".{glob_escape(target.name)}{TMP}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not (p / MARKER).is_file():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            continue


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

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


def swap_in(tmp: Path, target: Path) -> None:
    """The finished report `tmp` becomes `target`; the previous report (checked to hold only
    files sketchmine wrote) is removed after the swap."""
    if not target.exists():
        os.rename(tmp, target)
        return
    cwd = Path.cwd().resolve()
    if inside(cwd, target):  # keep the folder itself (a shell sitting in it keeps seeing it): swap its entries
        # marked partial first, its new marker last: a kill in between leaves a folder the same
        # command writes again (not the previous report: that went with the first removal)
        (target / MARKER).write_text(PARTIAL)
        for p in list(target.iterdir()):
            if p.name != MARKER:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for p in sorted(tmp.iterdir(), key=lambda q: q.name == MARKER):
            os.replace(p, target / p.name)
        tmp.rmdir()
        return
    if exchange(tmp, target):  # tmp now holds the previous report
        shutil.rmtree(tmp)
        return
    old = target.parent / f".{target.name}{TMP}old-{os.getpid()}"
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old)
