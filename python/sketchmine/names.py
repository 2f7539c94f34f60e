"""File names as text: what a stream, a page or a message can hold of a name the OS handed back,
and a command naming them that a shell reads back as they are."""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import PurePath

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
"""The endings of a checkpoint file's name: with .onnx, what makes a bare model spec a path."""


def command(*words: object) -> str:
    """A command line with every word quoted where a shell needs it (a run's path with a space, a
    layer name with a quote; "--layers" and "features.6" stay as they are), so the command a
    message names can be pasted as it is."""
    return " ".join(shlex.quote(f"./{w}" if isinstance(w, PurePath) and str(w).startswith("-") else str(w))
                    for w in words)  # a run named -r.zarr would read as an option


def layer_arg(names: list[str]) -> str:
    """`--layers`' value naming `names` as `cli/layer_args.layer_list` reads it back: a comma, a
    space or a backslash in a name after a backslash, so a hint naming a layer "conv,1" does not
    give two layers conv and 1 when pasted (`command` quotes it for the shell)."""
    return ",".join(re.sub(r"([\\,\s])", r"\\\1", n) for n in names)


def printable(name: str) -> str:
    """A file name as text any stream can write: the bytes of a non-UTF-8 name (lone
    surrogates from os.listdir) shown as \\xNN escapes; a valid name unchanged. A UTF-8 name
    that a non-UTF-8 locale decoded into surrogates comes back as itself."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def hidden_by_locale(path: str | os.PathLike[str]) -> bool:
    """Whether `path` exists under its UTF-8 bytes but this Python cannot reach it by its text: it
    reads file names in a non-UTF-8 locale's encoding (C/POSIX without UTF-8 mode, Latin-1). A
    run records its paths as UTF-8 text, so under such a locale its images would be called
    missing, and the advice to pass --data where they moved would lead nowhere."""
    if sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        return False
    text = os.fspath(path)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to
        return False
    try:
        here: bytes | None = os.fsencode(text)
    except UnicodeEncodeError:  # a character the locale's encoding has no byte for
        here = None
    return here != raw and os.path.lexists(raw)


def locale_advice() -> str:
    """What to do when the locale cannot name a file: the same words wherever it is said."""
    return (f"this Python reads file names as {sys.getfilesystemencoding()} (the locale's encoding), not as the "
            "UTF-8 the run stores them in: run sketchmine under a UTF-8 locale (LC_ALL=C.UTF-8) or in Python's "
            "UTF-8 mode (PYTHONUTF8=1)")


def is_model_path(spec: str | os.PathLike[str]) -> bool:
    """Whether a model spec names a file: it holds a path separator or ends in .pt, .pth, .ckpt or
    .onnx. Anything else is a name (an embedded model, a torchvision or sketchmine architecture),
    whatever the working directory holds: a folder named `demo` there must not turn "demo" into a
    path (write ./demo for that). `mine` records a spec as an absolute path only when this is True.
    Here, not in model/, so the command line tells names from paths without loading torch."""
    text = os.fspath(spec)
    return any(sep in text for sep in {"/", os.sep, os.altsep or "/"}) or text.endswith((*CHECKPOINT_SUFFIXES, ".onnx"))
