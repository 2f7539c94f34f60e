"""`--layers` on the command line: names split at commas and spaces, a backslash keeping either in
a name, each name taken once however often it is given."""
from __future__ import annotations

import argparse
import typing


def layer_list(text: str) -> list[str]:
    """An argparse type: layer names separated by commas (or spaces in one quoted value); a
    backslash takes the next character as part of the name (`a\\,b`: one layer "a,b"), since an
    ONNX node or a module added with add_module may be named with a comma or a space."""
    names: list[str] = []
    name, escaped = "", False
    for c in text:
        if escaped or (c != "\\" and c != "," and not c.isspace()):
            name, escaped = name + c, False
        elif c == "\\":
            escaped = True
        elif name:
            names, name = names + [name], ""
    names += [name] if name else []
    if escaped:
        raise argparse.ArgumentTypeError(f"a backslash ends {text!r}: it takes the character after it into a layer name")
    if not names:
        raise argparse.ArgumentTypeError(f"expected layer names separated by commas, got {text!r}")
    return names


class ExtendUnique(argparse.Action):
    """argparse's "extend", each name kept once (in order): `--layers a,a` or `--layers a --layers a`
    names layer a once, so no command computes or writes a layer twice."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: typing.Any,
                 option_string: str | None = None) -> None:
        have = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, have + [v for v in dict.fromkeys(values) if v not in have])


def layers_option(p: argparse.ArgumentParser, what: str) -> None:
    """`--layers a,b` (repeatable): one value per flag, so it never swallows a positional."""
    p.add_argument("--layers", type=layer_list, action=ExtendUnique, metavar="L[,L...]",
                   help=f"{what}, comma-separated (a comma or space in a name as \\, or \\ ); "
                        "repeat --layers to add more")
