"""What the command line needs of the environment it is started in, checked before any work: a
current folder that still exists, a standard output that is open where the result goes there, and
path arguments read as the shell would have read them.

Imports neither torch nor zarr nor rich (the parser uses `user_path`, and --help loads none).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

MIN_COLUMNS = 40
"""The narrowest table the console draws: at COLUMNS=20 rich shrank `summary`'s layer column to
nothing (every layer name gone, numbers folded a digit a line). Narrower terminals wrap its lines;
nothing is left out."""


def user_path(text: str) -> str:
    """An argparse type for a path: a leading `~` or `~/` expanded as the shell does unquoted (not
    `~user`: a folder named `~backup` would become the backup user's home).
    Why: bash leaves `--out=~/runs/a.zarr` and a quoted '~/a.zarr' as they are, and the run then
    went into a new folder named `~` in the current folder, reported as `→ ~/runs/a.zarr`, which
    reads as the home folder (and `--data=~/pics` said "~/pics does not exist")."""
    return os.path.expanduser(text) if text == "~" or text.startswith("~/") else text  # "~name": a folder's name


def environment_refusal(command: str | None, prints_result: bool, paths: list[tuple[str, str]]) -> str | None:
    """Why the command cannot run here, None where it can. `prints_result`: the command's only
    result is what it prints on stdout (summary, unit, compare, verify, any --json). `paths`: (as
    --help names it, path) of every path the command will use (parser.paths_given).

    A current folder removed after the shell entered it refuses only a command that needs it: one
    given (or defaulting to) a relative path, or `bench`; `summary /abs/run.zarr` there reads the run.
    Only `mine` shares its work across torchrun's processes (mining/distributed.py): under torchrun
    `visualize` stopped on the rank that found the run locked by another, and torchrun then stopped
    the one writing it; `importance` ran once per process."""
    try:
        os.getcwd()
    except FileNotFoundError:
        shown = os.environ.get("PWD") or "the current folder"
        gone = f"the current folder {shown} no longer exists (it was removed after the shell entered it)"
        relative = next(((what, path) for what, path in paths if not os.path.isabs(path)), None)
        if relative is not None:
            what, path = relative
            return (f"{gone}, and {what} {path} is relative to it: cd to an existing folder and run the command "
                    f"again, or give {what.split()[0]} as an absolute path")
        if command == "bench":  # the suite runs from the source checkout with arguments of its own
            return f"{gone}, and `sketchmine bench` runs there: cd to an existing folder and run the command again"
    size = os.environ.get("WORLD_SIZE") or "1"
    if command != "mine" and size != "1":  # torchrun (WORLD_SIZE > 1): each process would run the whole command
        return (f"`sketchmine {command}` runs in one process and torchrun started {size} (WORLD_SIZE={size}): each would "
                "do the whole pass over the same run, the others finding it locked; run it without torchrun (only "
                "`mine` shares its images across processes)")
    if command in ("report", "demo"):  # before the demo mines for minutes, not at its report
        from sketchmine.errors import SketchmineError
        from sketchmine.present.slide_workers import wanted_workers

        try:
            wanted_workers()
        except SketchmineError as exc:
            return str(exc)
    if sys.stdout is None and prints_result:  # `>&-`: the tables went nowhere, --json raised a traceback
        return (f"standard output is closed (>&-), and `sketchmine {command}` prints its result there: redirect "
                "it to a file, or to /dev/null to discard it")
    return None


@contextlib.contextmanager
def in_an_existing_folder() -> Iterator[bool]:
    """The block (the whole command) runs in / where the current folder was removed (yields True),
    then goes back into it. Why: torch's MKL cannot load there ("Intel oneMKL FATAL ERROR: Cannot
    load libtorch_cpu.so", exit 2), torch's dynamo config and `Path.cwd()` fail there, and a
    command given absolute paths only (environment_refusal refuses any other) needs no folder."""
    removed: int | None = None
    try:
        os.getcwd()
    except FileNotFoundError:
        with contextlib.suppress(OSError):  # not opened: torch's loading says what it says
            removed = os.open(".", os.O_RDONLY)  # the removed folder itself: a process may still enter it
    if removed is None:
        yield False
        return
    try:
        os.chdir("/")
        yield True
    finally:
        os.fchdir(removed)
        os.close(removed)


@contextlib.contextmanager
def caches_without_a_home() -> Iterator[None]:
    """Where the home folder is missing or not writable (HOME=/nonexistent: Debian's nobody, a
    container), the block's matplotlib (MPLCONFIGDIR) and, for a missing one, ONNX Runtime
    (XDG_CACHE_HOME: its device id) keep their caches in a temporary folder, removed with the
    variables after it; those the user set are kept. Why: `report` made HOME/.cache/matplotlib and
    HOME/.cache/Microsoft/DeveloperTools/.onnxruntime, creating HOME itself: a command never creates
    what it was not asked for. A home that exists and is writable gets their caches as before."""
    home = os.path.expanduser("~")
    missing = not os.path.isdir(home)
    wanted = [name for name, needed in (("MPLCONFIGDIR", missing or not os.access(home, os.W_OK | os.X_OK)),
                                        ("XDG_CACHE_HOME", missing)) if needed and not os.environ.get(name)]
    if not wanted:
        yield
        return
    try:
        folder = tempfile.mkdtemp(prefix="sketchmine-caches-")
    except OSError:  # no temporary folder either: the libraries do as they do
        yield
        return
    os.environ.update(dict.fromkeys(wanted, folder))
    try:
        yield
    finally:
        for name in wanted:
            os.environ.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)
