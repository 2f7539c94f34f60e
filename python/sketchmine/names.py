"""File names as text: what a stream, a page or a message can hold of a name the OS handed back,
and a command naming them that a shell reads back as they are."""
from __future__ import annotations

import shlex


def command(*words: object) -> str:
    """A command line with every word quoted where a shell needs it (a run's path with a space, a
    layer name with a quote; "--layers" and "features.6" stay as they are), so the command a
    message names can be pasted as it is."""
    return " ".join(shlex.quote(str(w)) for w in words)


def printable(name: str) -> str:
    """A file name as text any stream can write: the bytes of a non-UTF-8 name (lone
    surrogates from os.listdir) shown as \\xNN escapes; a valid name unchanged. A UTF-8 name
    that a non-UTF-8 locale decoded into surrogates comes back as itself."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
