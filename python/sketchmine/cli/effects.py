"""The ablation commands, `sketchmine effects RUN` and `sketchmine importance RUN` (parsed in
parser.py): the check both make of their layers before any computation, and how both store one
layer at a time, so that Ctrl-C says which are stored."""
from __future__ import annotations

import argparse
from collections.abc import Iterable
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
    from sketchmine.passes.effects import EffectsPass
    from sketchmine.present.effects_table import effects_table
    from sketchmine.results.run import open_run

    run, layers = ablation_layers(args)
    stored = EffectsPass(run, layers, args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                         device=args.device, units_per_pass=args.units_per_pass)  # all checked: nothing computed yet
    store_each(stored, layers, "the effects of {} are stored", "no layer's effects were stored", "effects")
    run = open_run(args.run)
    for name in layers:
        console.print(effects_table(run, name, args.n))


def store_each(stored: Iterable[str], layers: list[str], kept: str, none: str, label: str) -> None:
    """Run a pass that stores one layer per step (yielding its name), with progress by layer (a
    bar on a terminal, a line now and then elsewhere: present/progress_bar.py); on Ctrl-C, say
    which layers are stored (`kept` with their names, or `none`) and the rest as a --layers value."""
    from sketchmine.names import command, layer_arg
    from sketchmine.present.logs import err_console
    from sketchmine.present.progress_bar import RichProgress

    done: list[str] = []
    bar = RichProgress(err_console(), label, unit="layers")
    bar.start(len(layers), 0)
    try:
        for name in stored:
            done.append(name)
            bar.advance(1)
    except KeyboardInterrupt:
        rest = [l for l in layers if l not in done]
        said = kept.format(", ".join(done)) if done else none
        raise KeyboardInterrupt(f"interrupted; {said}; a re-run recomputes every layer it is given, so pass "
                                f"{command('--layers', layer_arg(rest))} to compute only the rest") from None
    finally:
        bar.stop()


def run_importance(args: argparse.Namespace, console: Console) -> None:
    """`sketchmine importance RUN [--layers ...]`: compute, store, print the top units, plot.
    The layers and the plot path are checked before any computation."""
    from sketchmine.passes.importance import ImportancePass
    from sketchmine.present.console import importance_table, safe
    from sketchmine.present.plots import check_plot_path, plot_importance, save_figure
    from sketchmine.results.run import open_run

    run, layers = ablation_layers(args)
    stored = ImportancePass(run, layers, args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                            device=args.device)  # every layer checked, the model loaded once: nothing computed yet
    if args.plot:
        check_plot_path(args.plot)
    store_each(stored, layers, "the importance of {} is stored", "no layer's importance was stored", "importance")
    run = open_run(args.run)
    if args.plot:
        save_figure(plot_importance(run, layers, args.n), args.plot)
    if args.json:  # stdout stays one JSON document: the plot's path is in it
        from sketchmine.present.json_out import importance_data, print_json

        print_json({**importance_data(run, layers, args.n), **({"plot": str(args.plot)} if args.plot else {})})
    else:
        for name in layers:
            console.print(importance_table(run, name, args.n))
        if args.plot:
            console.print(f"plot written to {safe(args.plot)}")
