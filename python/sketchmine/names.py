"""File names as text: what a stream, a page or a message can hold of a name the OS handed back."""
from __future__ import annotations


def printable(name: str) -> str:
    """A file name as text any stream can write: the bytes of a non-UTF-8 name (lone
    surrogates from os.listdir) shown as \\xNN escapes; a valid name unchanged. A UTF-8 name
    that a non-UTF-8 locale decoded into surrogates comes back as itself."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
