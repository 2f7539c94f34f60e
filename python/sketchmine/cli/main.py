"""Command line: `sketchmine mine | visualize | demo | summary | report | compare | importance | unit | bench
| effects | probe`.

Only parses and dispatches: what each command prints is in console.py. Errors print as one
line, no traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from sketchmine.data.sequences import INKS
from sketchmine.errors import SketchmineError


def _default_workers() -> int:
    """Loader workers by default: none on small machines (the forward already uses every core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(4, cores // 2)


class _Parser(argparse.ArgumentParser):
    """argparse, its usage errors as the one line every other error is: `sketchmine: error: …`."""

    def error(self, message: str) -> typing.NoReturn:  # noqa: F821
        from sketchmine.present.console import safe

        cmd = self.prog.split(" ", 1)[1] + " " if " " in self.prog else ""
        print(f"sketchmine: error: {safe(message, markup=False)} (see: sketchmine {cmd}--help)", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
    return value


def device(text: str) -> str:
    """An argparse type: a device this machine has (device.as_device's check, as a usage error)."""
    if text == "cpu":
        return text
    from sketchmine.device import as_device  # imports torch: only when a device other than cpu is named

    try:
        as_device(text)
    except SketchmineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sketchmine", description="Mine the top-k images of every CNN unit.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mine", help="stream a dataset through a model and keep every unit's top-k images")
    m.add_argument("--model", required=True,
                   help="torchvision name, 'sketchnet'/'sketchresnet'/'sketchgru' (with --weights), 'demo', "
                        "'demo-resnet', 'demo-gru', a checkpoint path, or an .onnx file (ONNX Runtime)")
    m.add_argument("--weights", help="state_dict file for a named model (loaded with weights_only=True)")
    m.add_argument("--seed", type=int, default=None,
                   help="initialisation seed of a model named by architecture without --weights (recorded; "
                        "default 0); refused for any other model")
    m.add_argument("--data", required=True, help="ImageFolder directory: DIR/<class>/<image>")
    m.add_argument("--out", required=True, help="run directory (Zarr); an unfinished one is resumed")
    m.add_argument("--layers", nargs="+", help="qualified module names (default: every conv, linear, softmax)")
    m.add_argument("-k", type=positive_int, default=9, help="images kept per unit (default 9)")
    m.add_argument("--batch-size", type=positive_int, default=64)
    m.add_argument("--device", type=device, default="cpu")
    m.add_argument("--workers", type=nonnegative_int, default=_default_workers(),
                   help="DataLoader worker processes (default: 0 on machines with <= 2 cores, where "
                        "workers compete with the forward pass for the cores (measured 10-16%% slower), "
                        "else min(4, cores // 2))")
    m.add_argument("--prefetch-factor", type=positive_int,
                   help="batches each loader worker prepares ahead (needs --workers >= 1; torch's default 2)")
    m.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="page-locked loader batches (default: on when --device is CUDA)")
    m.add_argument("--preprocessing", default="auto", choices=["auto", "model", "imagenet", "dataset", "none"],
                   help="auto: the model's recorded normalisation, else ImageNet mean/std")
    m.add_argument("--image-size", type=positive_int, help="resize images to S×S (default: keep their size)")
    m.add_argument("--flush-every", type=positive_int, default=50, help="checkpoint every N batches")
    m.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and record them")
    m.add_argument("--no-logits", action="store_true",
                   help="stop each forward pass after the deepest mined layer (no predictions or accuracy)")
    m.add_argument("--channels-last", action="store_true", help="model and batches in channels-last memory format")
    m.add_argument("--autocast", choices=["bf16", "fp16"], help="run the forward pass under torch.autocast")
    m.add_argument("--compile", action="store_true",
                   help="run the forward through torch.compile (torch models; the first batch compiles, ~15 s "
                        "for AlexNet on CPU, and needs a C++ compiler; same top-k within float tolerance)")
    m.add_argument("--no-overlap-flushes", action="store_true",
                   help="write each checkpoint in the loop instead of on a background thread")
    m.add_argument("--steps", type=positive_int,
                   help="show each image as a progressive drawing of STEPS frames, for CNN + recurrent models "
                        "(default: the steps the model was trained with, e.g. 8 for 'demo-gru'; else single images)")
    m.add_argument("--ink", default="auto", choices=INKS,
                   help="with --steps: which pixels are drawn: light ink on black, dark ink on white, or auto "
                        "(per image, from the median of its border; default)")
    v = sub.add_parser("visualize", help="crop each top-k entry's receptive field and its deconvolution into RUN")
    v.add_argument("run")
    v.add_argument("--layers", nargs="+", help="layers to visualize (default: every mined layer)")
    _reload_options(v)
    v.add_argument("--method", default="deconvnet", choices=["deconvnet", "guided", "gradient"])
    v.add_argument("--batch-size", type=positive_int, default=64, help="(image, unit) pairs per forward and backward")
    v.add_argument("--max-patch", type=positive_int, default=128, help="shrink larger patches to fit N×N pixels")
    v.add_argument("--redo", action="store_true", help="replace patches made with other settings")
    v.add_argument("--examples", default="top", choices=["top", "all"],
                   help="top: the top-k entries (default); all: also the bottom-k and each activation bin's examples")
    demo_help = ("mine, visualize and report the embedded trained models over the embedded Animal-Shape test "
                 "split: SketchNet 'demo' and ResNet 'demo-resnet' compared, then the CNN + GRU 'demo-gru' over "
                 "progressive drawings with its hidden units ranked by importance")
    d = sub.add_parser("demo", help=demo_help, description=demo_help)
    d.add_argument("--out", help="folder for the runs, OUT/demo.zarr, OUT/demo-resnet.zarr and OUT/demo-gru.zarr; "
                                 "a re-run resumes them (default: a new temporary directory)")
    d.add_argument("--batch-size", type=positive_int, default=250, help="images per mining batch (default 250)")
    d.add_argument("--report", help="folder for the reports, REPORT/demo/, REPORT/demo-resnet/ and "
                                    "REPORT/demo-gru/ (default: OUT/report)")
    r = sub.add_parser("report", help="write a static HTML report of RUN (opens offline in any browser)")
    r.add_argument("run")
    r.add_argument("--out", required=True, help="report folder (index.html inside)")
    r.add_argument("--no-probe", action="store_true", help="leave out the live probe (it loads and exports the model)")
    c = sub.add_parser("compare", help="two runs over the same dataset side by side")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("-n", type=positive_int, default=5, help="classes per side (default 5)")
    s = sub.add_parser("summary", help="print a run's accuracy and per-layer class preferences")
    s.add_argument("run")
    s.add_argument("-n", type=positive_int, default=5, help="classes per side (default 5)")
    i = sub.add_parser("importance", help="per-unit ablation importance for the correct class, stored in RUN")
    i.add_argument("run")
    i.add_argument("--layers", nargs="+", help="mined layers (default: every mined module layer)")
    _reload_options(i)
    i.add_argument("--batch-size", type=positive_int, default=256)
    i.add_argument("-n", type=positive_int, default=10, help="units listed (and plotted) per layer (default 10)")
    i.add_argument("--plot", help="write a PNG of the most important units per layer")
    un = sub.add_parser("unit", help="one unit's dashboard: distribution, examples, classes, effects, importance")
    un.add_argument("run")
    un.add_argument("layer")
    un.add_argument("unit", type=int)
    un.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    b = sub.add_parser("bench", help="run the benchmark suite of a source checkout (python -m benchmarks)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the suite, e.g. --quick")
    e = sub.add_parser("effects", help="per unit: the mean change of every class's logit and probability when it "
                                       "is zeroed, and its most correlated units, stored in RUN")
    e.add_argument("run")
    e.add_argument("--layers", nargs="+", help="mined layers (default: every mined module layer)")
    _reload_options(e)
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--units-per-pass", type=positive_int, help="units zeroed per tail run (default: by memory)")
    e.add_argument("-n", type=positive_int, default=10, help="units listed per layer (default 10)")
    from sketchmine.cli import probe as probe_cli

    probe_cli.add_parser(sub)
    return p


def _reload_options(p: argparse.ArgumentParser) -> None:
    """Options of the passes after mining, which load the run's model and dataset again."""
    p.add_argument("--data", help="the dataset's ImageFolder root, if it moved since mining")
    p.add_argument("--model", help="the model, if the run cannot reload it (mined from an in-memory model)")
    p.add_argument("--weights", help="state_dict file for --model")
    p.add_argument("--device", type=device, default="cpu")


def _bench(args: list[str]) -> int:
    """The suite lives in the repository's benchmarks/ package, beside python/."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise SketchmineError("the benchmark suite ships with the source checkout (benchmarks/); run it from there")
    sys.path.insert(0, str(root))
    from benchmarks.mine_vs_forward import main as bench_main

    return int(bench_main(args) or 0)


def _importance(args: argparse.Namespace, console: Console) -> None:
    """`sketchmine importance RUN [--layers ...]`: compute, store, print the top units, plot.
    The layers and the plot path are checked before any computation; Ctrl-C says which
    layers' importance was stored (a re-run recomputes every layer it is given)."""
    from sketchmine.model.taps import SOFTMAX
    from sketchmine.passes.importance import unit_importance
    from sketchmine.present.console import importance_table as table
    from sketchmine.present.console import safe
    from sketchmine.present.plots import check_plot_path, plot_importance, save_figure
    from sketchmine.results.run import open_run

    run = open_run(args.run)
    layers = args.layers or [l for l in run.layers if l != SOFTMAX and not l.endswith(".cell")]
    for name in layers:
        run.layer_attrs(name)
    if args.plot:
        check_plot_path(args.plot)
    done: list[str] = []
    try:
        for name in layers:
            unit_importance(run, name, args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                            device=args.device)
            done.append(name)
    except KeyboardInterrupt:
        rest = [l for l in layers if l not in done]
        kept = (f"the importance of {', '.join(done)} is stored" if done else "no layer's importance was stored")
        raise KeyboardInterrupt(f"interrupted; {kept}; a re-run recomputes every layer it is given, so pass "
                                f"--layers {' '.join(rest)} to compute only the rest") from None
    run = open_run(args.run)
    for name in layers:
        console.print(table(run, name, args.n))
    if args.plot:
        save_figure(plot_importance(run, layers, args.n), args.plot)
        console.print(f"plot written to {safe(args.plot)}")


def _mine(args: argparse.Namespace, console: Console) -> None:
    from sketchmine import mine
    from sketchmine.mining import distributed
    from sketchmine.present.console import RichProgress, print_mined

    bar = RichProgress(console)
    try:
        run = mine(args.model, args.data, layers=args.layers, k=args.k, out=args.out, batch_size=args.batch_size,
                   device=args.device, weights=args.weights, preprocessing=args.preprocessing,
                   image_size=args.image_size, num_workers=args.workers, flush_every=args.flush_every,
                   skip_bad_images=args.skip_bad_images, progress=bar, logits=not args.no_logits,
                   channels_last=args.channels_last, autocast=args.autocast, compile=args.compile,
                   prefetch_factor=args.prefetch_factor, pin_memory=args.pin_memory,
                   overlap_flushes=not args.no_overlap_flushes, steps=args.steps, ink=args.ink,
                   seed=args.seed)
    finally:
        bar.stop()
        rank = distributed.rank()
        distributed.close()  # the process group sketchmine started under torchrun, if any
    if rank != 0:  # rank 0 reports for every process
        return
    print_mined(run, bar, args.no_logits, console)


def _visualize(args: argparse.Namespace, console: Console) -> None:
    from sketchmine.passes.visualize import visualize
    from sketchmine.present.console import RichProgress, print_visualized

    bar = RichProgress(console, "visualizing", unit="units")
    try:
        run = visualize(args.run, args.layers, model=args.model, weights=args.weights, data=args.data,
                        method=args.method, batch_size=args.batch_size, device=args.device,
                        max_patch=args.max_patch, redo=args.redo, progress=bar, examples=args.examples)
    finally:
        bar.stop()
    print_visualized(run, args.layers, args.method, bar, console)


INTERRUPTED = {
    "mine": "re-run the same command to resume from the last flush (a checkpoint every --flush-every batches)",
    "visualize": "re-run the same command to resume from the last finished block of units",
    "importance": "layers finished before the interrupt keep their stored importance; re-running recomputes "
                  "every layer it is given",
    "report": "no report was written and the previous one in the folder (if any) is unchanged; re-running "
              "writes the report again from the start",
    "demo": "re-run with the same --out to resume the runs; importance and reports are computed again",
    "effects": "layers finished before the interrupt keep their stored effects; re-running recomputes every "
               "layer it is given",
}
"""What a re-run does after Ctrl-C, per command (a KeyboardInterrupt with a message says more)."""


def _error(message: str) -> None:
    """One line on stderr, every control character escaped (a file or class name cannot drive the terminal)."""
    from sketchmine.present.console import safe

    print(f"sketchmine: error: {' '.join(safe(message, markup=False).split())}", file=sys.stderr)


def _os_error(exc: OSError) -> str:
    """An OSError (disk full, permission, missing file) in one line with its path."""
    import errno

    what = exc.strerror or str(exc)
    path = f"{exc.filename}: " if exc.filename else ""
    hint = "; make room and re-run" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{path}{what}{hint}"


def _quiet_after_failure() -> None:
    """A handled failure (disk full mid-write, Ctrl-C) can leave zarr's asyncio tasks pending
    or failed (the other chunk writes of the same call); at exit asyncio would print each with
    a traceback. The one-line error already said what happened: the pending tasks are awaited
    (their exceptions retrieved) on zarr's loop, and asyncio's logger is silenced for the exit."""
    import asyncio
    import logging

    logging.getLogger("asyncio").disabled = True
    sync = sys.modules.get("zarr.core.sync")
    loop = (getattr(sync, "loop", None) or [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def drain() -> None:
        me = asyncio.current_task()
        for _ in range(100):
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=30)
    except Exception:  # noqa: BLE001 - best effort: the error line is already printed
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "mine":
            _mine(args, console)
        elif args.command == "visualize":
            _visualize(args, console)
        elif args.command == "demo":
            from sketchmine.cli.demo import run_demo

            run_demo(args.out, args.batch_size, args.report, console)
        elif args.command == "summary":
            from sketchmine.present.console import print_summary

            print_summary(args.run, args.n, console)
        elif args.command == "report":
            from sketchmine.present.console import print_report

            from sketchmine.cli.probe import report_probe

            print_report(args.run, args.out, console, report_probe(args.run, args.no_probe))
        elif args.command == "compare":
            from sketchmine.present.console import print_compare

            print_compare(args.run_a, args.run_b, args.n, console)
        elif args.command == "importance":
            _importance(args, console)
        elif args.command == "unit":
            from sketchmine.present.unit_console import print_unit

            print_unit(args.run, args.layer, args.unit, console, args.json)
        elif args.command == "bench":
            return _bench(args.args)
        elif args.command == "effects":
            from sketchmine.cli.effects import run_effects

            run_effects(args, console)
        elif args.command == "probe":
            from sketchmine.cli.probe import run_probe

            run_probe(args, console)
    except SketchmineError as exc:
        _error(str(exc))
        _quiet_after_failure()
        return 2
    except OSError as exc:  # disk full, permission denied, a file gone: the path and the reason, no traceback
        _error(_os_error(exc))
        _quiet_after_failure()
        return 2
    except KeyboardInterrupt as exc:
        from sketchmine.present.console import safe

        said = str(exc) if exc.args else f"interrupted; {INTERRUPTED.get(args.command, 'nothing was written')}"
        print(f"sketchmine: {' '.join(safe(said, markup=False).split())}", file=sys.stderr)
        _quiet_after_failure()
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
