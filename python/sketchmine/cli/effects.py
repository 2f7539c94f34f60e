"""`sketchmine effects RUN`: the unit-effects pass from the command line (parsed in parser.py)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def run_effects(args: argparse.Namespace, console: Console) -> None:
    """`sketchmine effects RUN [--layers ...]`: compute, store and print each layer's unit
    effects and correlated units. Layers are checked before any computation; Ctrl-C says
    which layers were stored."""
    from sketchmine.model.taps import SOFTMAX
    from sketchmine.passes.effects import check_ablatable, unit_effects
    from sketchmine.present.effects_table import effects_table
    from sketchmine.results.run import open_run

    run = open_run(args.run)
    layers = args.layers or [l for l in run.layers if l != SOFTMAX and not l.endswith(".cell")]
    for name in layers:
        run.layer_attrs(name)
        check_ablatable(name)
    done: list[str] = []
    try:
        for name in layers:
            unit_effects(run, name, args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                         device=args.device, units_per_pass=args.units_per_pass)
            done.append(name)
    except KeyboardInterrupt:
        rest = [l for l in layers if l not in done]
        kept = f"the effects of {', '.join(done)} are stored" if done else "no layer's effects were stored"
        raise KeyboardInterrupt(f"interrupted; {kept}; a re-run recomputes every layer it is given, so pass "
                                f"--layers {' '.join(rest)} to compute only the rest") from None
    run = open_run(args.run)
    for name in layers:
        console.print(effects_table(run, name, args.n))
