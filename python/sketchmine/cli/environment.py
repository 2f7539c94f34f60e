"""What the command line needs of the environment it is started in, checked before any work: a
current folder that still exists, a standard output that is open where the result goes there, and
path arguments read as the shell would have read them.

Imports neither torch nor zarr nor rich (the parser uses `user_path`, and --help loads none).
"""
from __future__ import annotations

import os
import sys

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


def environment_refusal(command: str | None, prints_result: bool) -> str | None:
    """Why the command cannot run here, None where it can. `prints_result`: the command's only
    result is what it prints on stdout (summary, unit, compare, verify, any --json)."""
    try:
        os.getcwd()
    except FileNotFoundError:  # torch's MKL then dies on import with "Cannot load libtorch_cpu.so"
        shown = os.environ.get("PWD") or "the current folder"
        return (f"the current folder {shown} no longer exists (it was removed after the shell entered it): cd to "
                "an existing folder and run the command again")
    if sys.stdout is None and prints_result:  # `>&-`: the tables went nowhere, --json raised a traceback
        return (f"standard output is closed (>&-), and `sketchmine {command}` prints its result there: redirect "
                "it to a file, or to /dev/null to discard it")
    return None
