"""`sketchmine effects RUN` (parsed in parser.py), and the check both ablation commands (`effects`,
`importance`) make of their layers before any computation."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from sketchmine.results.run import Run


def ablation_layers(args: argparse.Namespace) -> tuple[Run, list[str]]:
    """The run and the layers `effects`/`importance` will ablate (default: every mined module
    layer), each given once, all checked before the first is computed: in the run, not the
    virtual softmax, the run not mined from an ONNX file, and each one's module found in the
    run's model (which is loaded once here for that). Why: the passes run one layer at a time
    (so that Ctrl-C can say which are stored), and a refusal after the first layer would have
    spent its computation and written it."""
    from sketchmine.model.taps import SOFTMAX
    from sketchmine.passes.effects import check_ablatable, check_run_ablatable, torch_net, unique
    from sketchmine.passes.reload import run_model
    from sketchmine.results.run import open_run

    run = open_run(args.run)
    layers = unique(args.layers or [l for l in run.layers if l != SOFTMAX and not l.endswith(".cell")])
    for name in layers:
        run.layer_attrs(name)
        check_ablatable(name, run=run)
    check_run_ablatable(run)
    net = torch_net(run, run_model(run, args.model, args.weights).module)
    for name in layers:
        check_ablatable(name, net)
    return run, layers


def run_effects(args: argparse.Namespace, console: Console) -> None:
    """`sketchmine effects RUN [--layers ...]`: compute, store and print each layer's unit
    effects and correlated units. Layers are checked before any computation; Ctrl-C says
    which layers were stored, and the rest as a --layers value."""
    from sketchmine.passes.effects import EffectsPass
    from sketchmine.present.effects_table import effects_table
    from sketchmine.results.run import open_run

    run, layers = ablation_layers(args)
    done: list[str] = []
    try:
        for name in EffectsPass(run, layers, args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                                device=args.device, units_per_pass=args.units_per_pass):
            done.append(name)
    except KeyboardInterrupt:
        rest = [l for l in layers if l not in done]
        kept = f"the effects of {', '.join(done)} are stored" if done else "no layer's effects were stored"
        raise KeyboardInterrupt(f"interrupted; {kept}; a re-run recomputes every layer it is given, so pass "
                                f"--layers {','.join(rest)} to compute only the rest") from None
    run = open_run(args.run)
    for name in layers:
        console.print(effects_table(run, name, args.n))
