"""`sketchmine effects RUN` (parsed in parser.py), and the check both ablation commands (`effects`,
`importance`) make of their layers before any computation."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from sketchmine.results.run import Run


def ablation_layers(args: argparse.Namespace) -> tuple[Run, list[str]]:
    """The run and the layers `effects`/`importance` will ablate: those given, each once, or by
    default every mined module layer (not the virtual softmax, not an LSTM's '.cell' view). The
    pass made from them checks every layer, and loads the model once, before the first is
    computed (passes.effects.ablation_net): the passes run one layer at a time, so that Ctrl-C
    can say which are stored, and a refusal after the first layer would have spent its
    computation and written it."""
    from sketchmine.model.taps import SOFTMAX
    from sketchmine.passes.effects import unique
    from sketchmine.results.run import open_run

    run = open_run(args.run)
    return run, unique(args.layers or [l for l in run.layers if l != SOFTMAX and not l.endswith(".cell")])


def run_effects(args: argparse.Namespace, console: Console) -> None:
    """`sketchmine effects RUN [--layers ...]`: compute, store and print each layer's unit
    effects and correlated units. Layers are checked before any computation; Ctrl-C says
    which layers were stored, and the rest as a --layers value."""
    from sketchmine.names import command, layer_arg
    from sketchmine.passes.effects import EffectsPass
    from sketchmine.present.effects_table import effects_table
    from sketchmine.results.run import open_run

    run, layers = ablation_layers(args)
    stored = EffectsPass(run, layers, args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                         device=args.device, units_per_pass=args.units_per_pass)  # all checked: nothing computed yet
    done: list[str] = []
    try:
        for name in stored:
            done.append(name)
    except KeyboardInterrupt:
        rest = [l for l in layers if l not in done]
        kept = f"the effects of {', '.join(done)} are stored" if done else "no layer's effects were stored"
        raise KeyboardInterrupt(f"interrupted; {kept}; a re-run recomputes every layer it is given, so pass "
                                f"{command('--layers', layer_arg(rest))} to compute only the rest") from None
    run = open_run(args.run)
    for name in layers:
        console.print(effects_table(run, name, args.n))
