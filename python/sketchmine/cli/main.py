"""Command line: `sketchmine mine | visualize | demo | summary | report | compare | importance | bench
| effects | probe | unit | verify`.

Only parses and dispatches: what each command prints is in console.py (tables) and json_out.py
(`--json`). Results go to stdout; notes, progress and errors to stderr (present/logs.py). Errors
print as one line, no traceback (with -v, the traceback too). Exit codes (docs/cli.md): 0 done,
1 running failed (disk full, a failed write), 2 usage error, 3 input refused (SketchmineError:
a bad dataset, layer or option, a run that cannot be resumed), 130 interrupted.

Nothing here imports torch, zarr or rich at module level: `sketchmine --help` and
`sketchmine --version` answer without them, and the commands that only read a run (READ_ONLY)
without torch.
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import typing
from pathlib import Path

from sketchmine.cli.parser import (EXIT_FAILURE, EXIT_OK, EXIT_REFUSED, build_parser, default_report_out,
                                   default_run_out, paths_given)
from sketchmine.cli.environment import MIN_COLUMNS, caches_without_a_home, environment_refusal, in_an_existing_folder
from sketchmine.ctrl_c import (ended, ending_as_ctrl_c, ending_signal, forget_caught_interrupts, held,
                               ignored_from_now, interrupted)
from sketchmine.errors import SaidOnRankZero, SketchmineError, first_line, out_of_resources

if typing.TYPE_CHECKING:
    from rich.console import Console

def _bench(args: list[str]) -> int:
    """The suite lives in the repository's benchmarks/ package, beside python/."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise SketchmineError("the benchmark suite ships with the source checkout (benchmarks/); run it from there")
    sys.path.insert(0, str(root))
    from benchmarks.mine_vs_forward import main as bench_main

    return int(bench_main(args) or 0)


def _mine(args: argparse.Namespace, console: Console, err: Console) -> None:
    import logging

    from sketchmine import mine
    from sketchmine.mining import distributed
    from sketchmine.cli.run_out import unfinished_at_the_old_default
    from sketchmine.present.console import print_mined
    from sketchmine.present.progress_bar import RichProgress

    out = args.out or default_run_out(args.model, args.weights)
    if not args.out:
        logging.getLogger("sketchmine").info(f"no --out given: the run goes to {out}")
        if earlier := unfinished_at_the_old_default(args.model, args.weights, out):
            logging.getLogger("sketchmine").warning(earlier)
    bar = RichProgress(err)
    try:
        run = mine(args.model, args.data, layers=args.layers, k=args.k, out=out, batch_size=args.batch_size,
                   device=args.device, weights=args.weights, preprocessing=args.preprocessing,
                   image_size=args.image_size, num_workers=args.workers, flush_every=args.flush_every,
                   skip_bad_images=args.skip_bad_images, progress=bar, logits=not args.no_logits,
                   channels_last=args.channels_last, autocast=args.autocast, compile=args.compile,
                   prefetch_factor=args.prefetch_factor, pin_memory=args.pin_memory,
                   overlap_flushes=not args.no_overlap_flushes, steps=args.steps, ink=args.ink,
                   seed=args.seed, distributions=args.distributions, preprocess=args.preprocess)
    finally:
        bar.stop()
        rank = distributed.rank()
        distributed.close()  # the process group sketchmine started under torchrun, if any
    if rank != 0:  # rank 0 reports for every process
        return
    print_mined(run, bar, args.no_logits, console)


def _visualize(args: argparse.Namespace, console: Console, err: Console) -> None:
    from sketchmine.passes.visualize import visualize
    from sketchmine.present.console import print_visualized
    from sketchmine.present.progress_bar import RichProgress

    bar = RichProgress(err, "visualizing", unit="units")
    try:
        run = visualize(args.run, args.layers, model=args.model, weights=args.weights, data=args.data,
                        method=args.method, batch_size=args.batch_size, device=args.device,
                        max_patch=args.max_patch, redo=args.redo, progress=bar, examples=args.examples, optimize=args.optimize,
                        optimize_method=args.optimize_method, optimize_steps=args.optimize_steps,
                        optimize_regularizers=args.optimize_regularizers)
    finally:
        bar.stop()
    print_visualized(run, args.layers, args.method, bar, console, args.optimize, args.examples)


INTERRUPTED = {
    "mine": "re-run the same command to resume from the last flush (a checkpoint every --flush-every batches; "
            "from the first image when none was made yet)",
    "visualize": "re-run the same command to resume from the last finished block of units",
    "visualize --redo": "re-run the same command without --redo to resume from the last finished block of units "
                        "(with --redo it starts the layers again)",
    "importance": "layers finished before the interrupt keep their stored importance; re-running recomputes "
                  "every layer it is given",
    "report": "no report was written and the previous one in the folder (if any) is unchanged; re-running "
              "writes the report again from the start",
    "demo": "re-run with the same --out to resume the runs; importance and reports are computed again",
    "effects": "layers finished before the interrupt keep their stored effects; re-running recomputes every "
               "layer it is given",
    "probe": "the probe folder may hold part of the probe; re-running the same command writes it again",
}
"""What a re-run does after Ctrl-C, per command (a KeyboardInterrupt with a message says more)."""


def _error(message: str, verbosity: int = 0) -> None:
    """One line on stderr, every control character escaped (a file or class name cannot drive the terminal);
    with -v the traceback first."""
    from sketchmine.present.console import safe

    if verbosity > 0:
        import traceback

        traceback.print_exc(file=sys.stderr)

    print(f"sketchmine: error: {' '.join(safe(message, markup=False).split())}", file=sys.stderr)


def _os_error(exc: OSError) -> str:
    """An OSError (disk full, permission, missing file) in one line with its path."""
    from sketchmine.errors import machine_fix

    what = exc.strerror or str(exc)
    path = f"{exc.filename}: " if exc.filename else ""
    fix = machine_fix(exc)
    return f"{path}{what}" + (f"; {fix} and re-run" if fix else "")


def _quiet_after_failure() -> None:
    """A handled failure (disk full mid-write, Ctrl-C) can leave zarr's asyncio tasks pending
    or failed (the other chunk writes of the same call); at exit asyncio would print each with
    a traceback. The one-line error already said what happened: the pending tasks are awaited
    (their exceptions retrieved) on zarr's loop, and asyncio's logger is silenced for the exit."""
    import logging

    from sketchmine.store.lock import settle_zarr_writes

    logging.getLogger("asyncio").disabled = True
    settle_zarr_writes(timeout=30)


def _report(args: argparse.Namespace, console: Console) -> None:
    """`sketchmine report RUN [--out DIR] [--open]`."""
    from sketchmine.cli.probe import report_probe
    from sketchmine.present.console import print_report
    from sketchmine.present.report_folder import check_report_dir
    from sketchmine.results.run import open_run

    out = args.out or default_report_out(args.run)
    check_report_dir(out, args.run)  # before the probe's export (seconds): a folder it may not write is said at once
    run = open_run(Path(args.run).resolve())  # one handle, pinned: the probe and the pages are one run's
    with run.store.pinned():
        index = print_report(run, out, console, report_probe(run, args.no_probe, args.probe_max_mb))
    if args.open:
        import webbrowser

        try:  # a browser in the terminal (BROWSER=lynx) runs until it quits: a Ctrl-C there is not the report's
            opened = webbrowser.open(Path(index).resolve().as_uri())
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted while the browser ran; the report was written: {index}") from None
        if not opened:  # the report is written: a note, not a failure
            import logging

            logging.getLogger("sketchmine").warning(f"no web browser found to open {index}; open it in one "
                                                    "(or set BROWSER to a browser command)")


def _summary(args: argparse.Namespace, console: Console) -> None:
    if args.json:
        from sketchmine.present.json_out import print_json, summary_data
        from sketchmine.results.run import open_run

        print_json(summary_data(open_run(args.run), args.n))
    else:
        from sketchmine.present.console import print_summary

        print_summary(args.run, args.n, console)


def _compare(args: argparse.Namespace, console: Console) -> None:
    if args.json:
        from sketchmine.present.json_out import compare_data, print_json
        from sketchmine.results.compare import compare

        print_json(compare_data(compare(args.run_a, args.run_b, args.n)))
    else:
        from sketchmine.present.compare_console import print_compare

        print_compare(args.run_a, args.run_b, args.n, console)


def _dispatch(args: argparse.Namespace, console: Console, err: Console) -> int:
    if args.command == "mine":
        _mine(args, console, err)
    elif args.command == "visualize":
        _visualize(args, console, err)
    elif args.command == "demo":
        from sketchmine.cli.demo import run_demo

        run_demo(args.out, args.batch_size, args.report, console)
    elif args.command == "summary":
        _summary(args, console)
    elif args.command == "report":
        _report(args, console)
    elif args.command == "compare":
        _compare(args, console)
    elif args.command == "importance":
        from sketchmine.cli.effects import run_importance

        run_importance(args, console)
    elif args.command == "bench":
        return _bench(args.args)
    elif args.command == "effects":
        from sketchmine.cli.effects import run_effects

        run_effects(args, console)
    elif args.command == "probe":
        from sketchmine.cli.probe import run_probe

        run_probe(args, console)
    elif args.command == "unit":
        from sketchmine.present.unit_console import print_unit

        print_unit(args.run, args.layer, args.unit, console, args.json)
    elif args.command == "verify":
        from sketchmine.cli.verify import run_verify

        run_verify(args, console)
    return EXIT_OK


FILE_WIDTH = 200
"""Columns of the tables printed to a file or a pipe (COLUMNS, when set, wins): enough for a
layer's name and its class lists on one line; a terminal's own width is used as it is."""

YOUNG_OBJECTS = 50_000
"""Objects the cyclic collector lets accumulate before a pass over the youngest (Python's
default: 700). Why: a command imports torch, Zarr and their kin, ~330 K objects, and at the
default those imports alone made four full collections over everything imported (a CLI `mine`
six): 0.2-0.45 s of the 1.7-2.0 s the imports took here, none at 50,000. Garbage cycles are
still collected, in larger steps."""


def _tolerant_streams() -> list[tuple[io.TextIOWrapper, str]]:
    """Make stdout and stderr write what their encoding cannot as backslash escapes; returns what to
    restore. Why: under a non-UTF-8 locale or PYTHONIOENCODING=ascii, a ×, · or → (tables, --help)
    or a non-ASCII name would raise UnicodeEncodeError and fail a command whose work is done."""
    changed: list[tuple[io.TextIOWrapper, str]] = []
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors != "backslashreplace":
            changed.append((stream, stream.errors or "strict"))
            stream.reconfigure(errors="backslashreplace")
    return changed


def main(argv: list[str] | None = None) -> int:
    streams = _tolerant_streams()  # before argparse: --help prints arrows
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, *before[1:])
    try:
        try:
            args = build_parser().parse_args(argv)
        except KeyboardInterrupt:  # a Ctrl-C in the first moments, before ending_as_ctrl_c: no traceback
            print("sketchmine: interrupted while starting; nothing was done", file=sys.stderr)
            return 130
        if said := environment_refusal(args.command, args.command in READ_ONLY or bool(getattr(args, "json", False)),
                                       paths_given(args)):
            _error(said)  # before anything loads or is written
            return EXIT_REFUSED
        # before matplotlib or onnxruntime is imported; torch loads and runs only in a folder that exists
        with ending_as_ctrl_c(for_good=argv is None), caches_without_a_home(), in_an_existing_folder() as moved:
            with held() as came:
                _import_heavy(_reads_only(args) and not moved)  # a lazy import in a removed folder would die
            if came:
                print(f"sketchmine: {interrupted(came[0])} while starting; nothing was done", file=sys.stderr)
                ended()
                return 128 + came[0]
            return _run(args)
    finally:
        if argv is None:  # the process's command line (python -m sketchmine, the `sketchmine` script): it ends
            ignored_from_now()  # with the command, whose exit code a Ctrl-C during Python's shutdown keeps
            forget_caught_interrupts()  # nor does `python -m` turn it into a SIGINT
        with held():  # the command has ended and said so: a Ctrl-C now must not add a traceback
            gc.set_threshold(*before)  # main() is also called in-process (tests, notebooks)
            for stream, errors in streams:
                stream.reconfigure(errors=errors)


READ_ONLY = frozenset({"summary", "compare", "unit", "verify"})
"""Commands that only read runs (and `report --no-probe`): they import neither torch nor the
compiled core, 2 s of their 3 s (sketchmine/lazy.py); a partial run's distributions, rebuilt by
the accumulators, do."""


def _reads_only(args: argparse.Namespace) -> bool:
    return args.command in READ_ONLY or (args.command == "report" and bool(args.no_probe))


def _import_heavy(reads_only: bool) -> None:
    """Import numpy, pandas, rich and Zarr (every command does), torch and the compiled core
    (every command that runs a model), while Ctrl-C is held back (the probe's onnx and onnxruntime
    load with it held where the probe needs them: `ctrl_c.imported`)."""
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import rich.console  # noqa: F401

    import sketchmine.present.logs  # noqa: F401
    import sketchmine.store.runstore  # noqa: F401  (Zarr, which only the store imports)

    if not reads_only:
        import torch  # noqa: F401
        import sketchmine.stats.ops  # noqa: F401  (the compiled core)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sketchmine.present.logs import setup

    verbosity = args.verbose - args.quiet
    err = setup(verbosity)
    console = Console()  # results: stdout
    if not console.is_terminal and "COLUMNS" not in os.environ:  # a file or a pipe: not rich's 80 columns,
        console = Console(width=FILE_WIDTH)  # which cut every layer name of `summary > summary.txt` to "featur…"
    elif console.width < MIN_COLUMNS:  # COLUMNS=20: no layer name left in `summary`'s tables
        console = Console(width=MIN_COLUMNS)
    try:
        code = _dispatch(args, console, err)
        ended()  # its exit status decided: a Ctrl-C from now on is ignored (ctrl_c.ended)
        return code
    except (SketchmineError, OSError, KeyboardInterrupt, MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not out_of_resources(exc):  # ("can't start new thread": memory)
            raise  # any other is a bug: its traceback
        with held():  # the one line that says what happened, and nothing after it
            # `visualize --redo` starts its layers again each time: the re-run that resumes is the one without it
            command = "visualize --redo" if args.command == "visualize" and getattr(args, "redo", False) else args.command
            code = _failed(exc, command, verbosity)
            ended()
            return code


def _failed(exc: BaseException, command: str, verbosity: int) -> int:
    """Say in one line why the command failed; returns its exit code."""
    if isinstance(exc, KeyboardInterrupt):
        from sketchmine.present.console import safe

        said = str(exc) if exc.args else f"interrupted; {INTERRUPTED.get(command, 'nothing was written')}"
        said = interrupted(ending_signal()) + said.removeprefix("interrupted") if said.startswith("interrupted") else said  # names SIGTERM
        if exc.args or os.environ.get("RANK", "0") == "0":  # torchrun's Ctrl-C reaches every rank: rank 0 says it
            print(f"sketchmine: {' '.join(safe(said, markup=False).split())}", file=sys.stderr)
        code = 128 + ending_signal()  # 130 for Ctrl-C
    elif isinstance(exc, SketchmineError):
        if not isinstance(exc, SaidOnRankZero):  # rank 0 says it, in the same terminal
            _error(str(exc), verbosity)
        code = exc.exit_code
    else:  # OSError (disk full, permission denied, a file gone) or out of memory: the reason, no traceback
        _error(_os_error(exc) if isinstance(exc, OSError) else f"out of memory ({first_line(exc)}): free memory (or "
               "raise ulimit -v) and re-run", verbosity)
        code = EXIT_FAILURE
    _quiet_after_failure()
    return code


if __name__ == "__main__":
    sys.exit(main())
