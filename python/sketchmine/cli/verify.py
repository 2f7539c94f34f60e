"""`sketchmine verify RUN` (parsed in parser.py): every checksum the run recorded, checked at
once; what was checked on stdout, and a damaged run's error (exit code 3) after its list."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sketchmine.errors import RunDamaged

if TYPE_CHECKING:
    from rich.console import Console

LISTED = 5
"""Arrays without checksums named in the text output; --json lists them all."""


def run_verify(args: argparse.Namespace, console: Console) -> None:
    from sketchmine.present.console import safe
    from sketchmine.present.json_out import print_json
    from sketchmine.store.integrity import verify_run

    found = verify_run(args.run)
    if args.json:
        print_json(found.to_dict())
    else:
        what = "complete run" if found.complete else "partial run"
        console.print(safe(f"{found.run}: {what}, {found.images_done} images; {len(found.checked)} arrays "
                           f"({_size(found.nbytes)}) match their checksums"), soft_wrap=True)
        if found.note:
            console.print(safe(found.note), soft_wrap=True)
        if found.unchecked:
            names = ", ".join(found.unchecked[:LISTED]) + (", …" if len(found.unchecked) > LISTED else "")
            few = len(found.unchecked)
            console.print(safe(f"{few} array{' has' if few == 1 else 's have'} no checksum to check: {names}"),
                          soft_wrap=True)
        for name, why in found.damaged.items():
            console.print(safe(f"damaged: {name} {why}"), soft_wrap=True)
    if found.damaged:
        many = len(found.damaged)
        raise RunDamaged(f"run {found.run} is damaged ({many} listed above); restore the run's "
                         "files from a copy, or mine it again with a new --out")


def _size(nbytes: int) -> str:
    """Decoded bytes for people: "17.7 MB", "412 kB" (a partial run's few arrays read "0.0 MB")."""
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.0f} kB" if nbytes >= 1e3 else f"{nbytes} bytes"
