"""The command line's parser: every command, option, default and help text, and the argparse
types that check values (usage errors exit with 2, as one line that points at --help).

Imports neither torch nor zarr nor rich: `sketchmine --help` and `--version` answer without them.
"""
from __future__ import annotations

import argparse
import re
import sys
import typing
from pathlib import Path

from sketchmine import __version__
from sketchmine.cli.layer_args import layers_option
from sketchmine.cli.environment import user_path
from sketchmine.cores import usable_cores
from sketchmine.errors import SketchmineError

INKS = ("auto", "light", "dark")
"""data.sequences.INKS, spelled out so `--help` needs no torch (tests/test_habits.py checks they agree)."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
"""The exit codes, documented in docs/cli.md."""


def default_workers() -> int:
    """Loader workers by default: none on small machines (the forward already uses every core)."""
    cores = usable_cores()
    return 0 if cores <= 2 else min(4, cores // 2)


class Parser(argparse.ArgumentParser):
    """argparse, its usage errors as the one line every other error is: `sketchmine: error: …`."""

    def error(self, message: str) -> typing.NoReturn:
        cmd = self.prog.split(" ", 1)[1] + " " if " " in self.prog else ""
        if message.startswith("unrecognized arguments") and "--layers" in sys.argv[1:]:
            message += " (several layers go in one value: --layers a,b, or a repeated --layers)"
        from sketchmine.present.console import safe

        print(f"sketchmine: error: {safe(message, markup=False)} (see: sketchmine {cmd}--help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    def parse_args(self, args: typing.Any = None, namespace: typing.Any = None) -> typing.Any:
        """argparse's, except that an option the command does not take is said by the command's
        parser, which points at that command's --help (the top level pointed at `sketchmine --help`,
        which lists no command's options)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._subparsers._group_actions[0].choices.get(getattr(parsed, "command", None)) \
                if self._subparsers is not None else None
            (command or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help: `(default: X)` unless its help already says its default;
    no value shows as `none`, a flag's False as `off`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings
                or action.required):
            return text
        shown = {None: "none", False: "off", True: "on"}.get(action.default, "%(default)s") \
            if isinstance(action.default, (bool, type(None))) else "%(default)s"
        return f"{text} (default: {shown})".strip()


def verbosity_options(p: argparse.ArgumentParser, top: bool) -> None:
    """-q/-v, accepted before the command and after it (`sketchmine -q mine …`, `sketchmine mine -q …`)."""
    default = 0 if top else argparse.SUPPRESS
    p.add_argument("-q", "--quiet", action="count", default=default,
                   help="errors only: no notes or progress bars, except a note that files of yours were replaced; "
                        "results still print (default: off)")
    p.add_argument("-v", "--verbose", action="count", default=default,
                   help="debug notes, and the traceback of an error (default: off)")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    return int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    return int_at_least(text, 0)


def int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
    return value


def regularizers_arg(text: str) -> str | dict[str, typing.Any]:
    """An argparse type: a regulariser preset's name, or a JSON object of settings (the pass
    checks names and values against the method it runs)."""
    if not text.lstrip().startswith(("{", "[")):
        return text
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a preset name or a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of settings, got {text!r}")
    return value


def megabytes(text: str) -> float:
    """An argparse type: a size in MB (10^6 bytes), >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MB >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a size in MB >= 0, got {text}")
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


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sketchmine", description="Mine the top-k images of every CNN unit.", formatter_class=RawEpilog,
               epilog="a first look: sketchmine demo\n"
                      "your model and images: sketchmine mine --model M --data DIR --out RUN.zarr, then\n"
                      "  sketchmine visualize RUN.zarr and sketchmine report RUN.zarr --open\n"
                      "'sketchmine COMMAND --help' for a command's options\n\n"
                      "exit codes: 0 done, 1 running failed, 2 usage error, 3 input refused, 130 interrupted")
    p.add_argument("--version", action="version", version=f"sketchmine {__version__}")
    verbosity_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=SubParser, metavar="COMMAND")
    m = sub.add_parser("mine", help="stream a dataset through a model and keep every unit's top-k images")
    m.add_argument("--model", required=True, type=user_path,
                   help="torchvision name, 'sketchnet'/'sketchresnet'/'sketchgru' (with --weights), 'demo', "
                        "'demo-resnet', 'demo-gru', a checkpoint path, or an .onnx file (ONNX Runtime)")
    m.add_argument("--weights", type=user_path,
                   help="state_dict file for a named model (loaded with weights_only=True), or "
                        "DEFAULT (or a weight enum name) for torchvision's pretrained weights when cached "
                        "under TORCH_HOME (default: none, random weights)")
    m.add_argument("--seed", type=int, default=None,
                   help="initialisation seed of a model named by architecture without --weights, recorded; "
                        "refused for any other model (default: 0)")
    m.add_argument("--data", required=True, type=user_path, help="ImageFolder directory: DIR/<class>/<image>")
    m.add_argument("--out", type=user_path,
                   help="run directory (Zarr); an unfinished one is resumed (default: MODEL.zarr in the "
                        "current folder, MODEL the --model name without folder and extension; "
                        "MODEL-WEIGHTS.zarr with --weights)")
    layers_option(m, "qualified module names (default: every conv, linear, recurrent and softmax layer)")
    m.add_argument("-k", type=positive_int, default=9, help="images kept per unit")
    m.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    m.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    m.add_argument("--workers", type=nonnegative_int, default=default_workers(),
                   help="DataLoader worker processes (default: 0 on machines with <= 2 cores, where "
                        "workers compete with the forward pass for the cores (measured 10-16%% slower), "
                        "else min(4, cores // 2))")
    m.add_argument("--prefetch-factor", type=positive_int,
                   help="batches each loader worker prepares ahead (needs --workers >= 1) (default: torch's, 2)")
    m.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="page-locked loader batches (default: on when --device is CUDA)")
    m.add_argument("--preprocessing", default="auto",  # data.preprocess.preset_names(), not imported: torch
                   choices=["auto", "model", "imagenet", "dataset", "none", "pixels"],
                   help="each pixel in [0, 1] becomes (pixel - mean) / std per channel, with: auto, the model's "
                        "recorded mean/std, else ImageNet's; model, the model's recorded ones (refused if it records "
                        "none); imagenet, ImageNet's; dataset, the mined images' own (one extra pass); none: "
                        "pixels as they are, in [0, 1]; pixels: 0-255 values (a model that normalises them itself)")
    m.add_argument("--image-size", type=positive_int,
                   help="resize images to S×S (default: the size pretrained weights record, else keep their size)")
    m.add_argument("--flush-every", type=positive_int, default=50, help="checkpoint every N batches")
    m.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and record them")
    m.add_argument("--distributions", action=argparse.BooleanOptionalAction, default=None,
                   help="also keep each unit's whole distribution for the unit dashboards: exact histogram, "
                        "quantiles, example images per activation bin, bottom-k (default: the run's setting on "
                        "resume, else off; on a CPU they add 5-8%% to AlexNet's forward pass, at most 3%% to VGG-19's)")
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
                        "(per image, from the median of its border)")
    m.add_argument("--preprocess", choices=["device", "cpu"], default=None,
                   help="device: resize and normalise each batch in one op on --device (images copied there as "
                        "stored); cpu: each image in the loader. Same rule, same results (default: the run's on "
                        "resume, else device; cpu for progressive drawings: --steps, or a model trained on them)")
    v = sub.add_parser("visualize", help="crop each top-k entry's receptive field and its deconvolution into RUN")
    run_argument(v, "the run to add pictures to")
    layers_option(v, "layers to visualize (default: every mined layer)")
    reload_options(v)
    v.add_argument("--method", default=None, choices=["deconvnet", "guided", "gradient", "none"],
                   help="how a unit's activation is projected back to pixels (default deconvnet), or none: patches only "
                        "(the default and the only method for a run mined from an ONNX file)")
    v.add_argument("--batch-size", type=positive_int, default=64,
                   help="(image, unit) pairs per forward and backward; with --optimize, also the units optimised "
                        "together (a block, kept on resume)")
    v.add_argument("--max-patch", type=positive_int, default=128, help="shrink larger patches to fit N×N pixels")
    v.add_argument("--redo", action="store_true", help="replace patches made with other settings")
    v.add_argument("--examples", default="top", choices=["top", "all"],
                   help="top: the top-k entries; all: also the bottom-k and each activation bin's examples")
    v.add_argument("--optimize", action="store_true",
                   help="also store one feature visualisation image per unit (the input that drives it hardest)")
    v.add_argument("--optimize-method", choices=["fourier", "pixel"],
                   help="with --optimize: lucent-era Fourier parameterisation or deconvnet-era pixels "
                        "(default: fourier)")
    v.add_argument("--optimize-steps", type=positive_int, help="with --optimize: optimisation steps (default: 256)")
    v.add_argument("--optimize-regularizers", type=regularizers_arg, metavar="PRESET|JSON",
                   help="with --optimize: the regularisers, a preset (none, yosinski1..yosinski4 for pixel) or a "
                        "JSON object of settings, e.g. '{\"transforms\": false}' (default: default)")
    demo_help = ("mine, visualize and report the embedded trained models over the embedded Animal-Shape test "
                 "split: SketchNet 'demo' and ResNet 'demo-resnet' compared, then the CNN + GRU 'demo-gru' over "
                 "progressive drawings with its hidden units ranked by importance")
    d = sub.add_parser("demo", help=demo_help, description=demo_help)
    d.add_argument("--out", type=user_path,
                   help="folder for the runs, OUT/demo.zarr, OUT/demo-resnet.zarr and OUT/demo-gru.zarr; "
                        "a re-run resumes them (default: a new temporary directory)")
    d.add_argument("--batch-size", type=positive_int, default=250, help="images per mining batch")
    d.add_argument("--report", type=user_path, help="folder for the reports, REPORT/demo/, REPORT/demo-resnet/ and "
                                                    "REPORT/demo-gru/ (default: OUT/report)")
    r = sub.add_parser("report", help="write a static HTML report of RUN (opens offline in any browser)")
    run_argument(r, "the run to report")
    r.add_argument("--out", type=user_path,
                   help="report folder, index.html inside (default: RUN-report beside the run, RUN "
                        "without .zarr)")
    r.add_argument("--open", action="store_true", help="open the report in the default web browser")
    r.add_argument("--no-probe", action="store_true", help="leave out the live probe (it loads and exports the model)")
    r.add_argument("--probe-max-mb", type=megabytes, metavar="MB",
                   help="largest model graph the probe embeds, 0: no cap; larger: no probe, said why (default: 100)")
    c = sub.add_parser("compare", help="two runs over the same dataset side by side")
    c.add_argument("run_a", type=user_path, help="run A, shown on the left")
    c.add_argument("run_b", type=user_path, help="run B, mined over the same dataset as A")
    c.add_argument("-n", type=positive_int, default=5, help="classes per side")
    json_option(c)
    s = sub.add_parser("summary", help="print a run's accuracy and per-layer class preferences")
    run_argument(s, "the run to summarise (complete or partial)")
    s.add_argument("-n", type=positive_int, default=5, help="classes per side")
    json_option(s)
    ve = sub.add_parser("verify", help="check every checksum RUN recorded: whether its files hold what was written")
    run_argument(ve, "the run to check")
    json_option(ve)
    i = sub.add_parser("importance", help="per-unit ablation importance for the correct class, stored in RUN")
    run_argument(i, "the run whose units to rank; the ranking is stored in it")
    layers_option(i, "mined layers (default: every mined module layer)")
    reload_options(i)
    i.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    i.add_argument("-n", type=positive_int, default=10, help="units listed (and plotted) per layer")
    i.add_argument("--plot", type=user_path, help="write a PNG of the most important units per layer")
    json_option(i)
    b = sub.add_parser("bench", help="run the benchmark suite of a source checkout (python -m benchmarks)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the suite, e.g. --quick")
    e = sub.add_parser("effects", help="per unit: the mean change of every class's logit and probability when it "
                                       "is zeroed, and its most correlated units, stored in RUN")
    run_argument(e, "the run whose units to zero; the effects are stored in it")
    layers_option(e, "mined layers (default: every mined module layer)")
    reload_options(e)
    e.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    e.add_argument("--units-per-pass", type=positive_int, help="units zeroed per tail run (default: by memory)")
    e.add_argument("-n", type=positive_int, default=10, help="units listed per layer")
    p_ = sub.add_parser("probe", help="export RUN's model for the live probe page (drawing → predictions and units "
                                      "in the browser); `sketchmine report` includes it when the model loads")
    run_argument(p_, "the run whose model to export")
    p_.add_argument("--out", required=True, type=user_path,
                    help="folder for probe.html: new, empty, or one a probe wrote before")
    p_.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"),
                    help="the model's input size, for a run that records none (one differing from the size the "
                         "run or the .onnx file fixes is refused)")
    p_.add_argument("--max-mb", type=megabytes, metavar="MB",
                    help="largest model graph to embed, 0: no cap (default: 100)")
    un = sub.add_parser("unit", help="one unit's dashboard: distribution, examples, classes, effects, importance")
    run_argument(un, "the run holding the unit")
    un.add_argument("layer", help="a mined layer's qualified name, as `sketchmine summary RUN` lists them")
    un.add_argument("unit", type=int, help="the unit (channel) number in that layer, from 0")
    json_option(un)
    in_workflow_order(sub)
    return p


class SubParser(Parser):
    """A command's parser: defaults shown in its --help, -q/-v accepted after the command too."""

    def __init__(self, **kwargs: typing.Any) -> None:
        super().__init__(formatter_class=DefaultsHelp, **{k: v for k, v in kwargs.items() if k != "formatter_class"})
        verbosity_options(self, top=False)


class RawEpilog(DefaultsHelp):
    """The top-level help: its epilog's lines (a first workflow, the exit codes) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def in_workflow_order(sub: argparse._SubParsersAction) -> None:
    """The commands listed in --help in the order one uses them, not the order they are declared."""
    order = ["demo", "mine", "visualize", "report", "summary", "unit", "compare", "importance", "effects", "probe",
             "verify", "bench"]
    sub._choices_actions.sort(key=lambda a: order.index(a.dest) if a.dest in order else len(order))


def run_argument(p: argparse.ArgumentParser, what: str) -> None:
    """A command's RUN: the folder `sketchmine mine --out` wrote (a Zarr store, NAME.zarr)."""
    p.add_argument("run", type=user_path, help=f"{what}: the folder `sketchmine mine --out` wrote (NAME.zarr)")


def json_option(p: argparse.ArgumentParser) -> None:
    """`--json`: the command's result as one JSON document on stdout (present/json_out.py)."""
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts) instead of tables")


_WEIGHT_ENUM = re.compile(r"[A-Za-z0-9_]+_Weights\.(?:DEFAULT|[A-Z0-9_]+)")
"""A torchvision weight enum's member as --weights names it (model/pretrained.py reads it)."""


def default_run_out(model: str, weights: str | None = None) -> str:
    """`mine`'s --out when none is given: MODEL.zarr in the current folder, MODEL-WEIGHTS.zarr with
    --weights, so one architecture's runs with other weights (random, DEFAULT, a fine-tuned file)
    do not all default to one folder, where the second is refused as the first's resume."""
    def stem(path: str) -> str:
        if _WEIGHT_ENUM.fullmatch(path):  # ResNet18_Weights.IMAGENET1K_V1: its member, not the enum's name
            return path.partition(".")[2]
        return Path(path.rstrip("/")).stem  # the last extension only: net.v2.pt is net.v2, not net

    name = stem(model) or "run"
    return f"{name}-{stem(weights)}.zarr" if weights and stem(weights) else f"{name}.zarr"


PATH_OPTIONS = {"run": "RUN", "run_a": "RUN_A", "run_b": "RUN_B", "data": "--data", "out": "--out",
                "report": "--report", "plot": "--plot", "model": "--model", "weights": "--weights"}
"""Every option and argument whose value is a path (type=user_path), as --help names it."""


def paths_given(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(as --help names it, path) of each path the command was given, or will use by default
    where that default is relative (mine's --out). --model and --weights also take names ("demo",
    DEFAULT): those are paths only as `is_model_path` reads them."""
    from sketchmine.names import is_model_path

    found = [(shown, str(getattr(args, dest))) for dest, shown in PATH_OPTIONS.items()
             if getattr(args, dest, None) is not None
             and (dest not in ("model", "weights") or is_model_path(getattr(args, dest)))]
    if args.command == "mine" and args.out is None:
        found.append(("--out (its default)", default_run_out(args.model, args.weights)))
    return found


def default_report_out(run: str) -> str:
    """`report`'s --out when none is given: RUN-report beside the run (RUN without .zarr)."""
    p = Path(run.rstrip("/") or "/")
    if p.name in ("", ".", ".."):  # `report .` inside the run, `report ..`: the folder's own name
        p = p.resolve()
    if not p.name:
        raise SketchmineError(f"run {run} is a filesystem root: pass --out DIR for the report")
    return str(p.with_name(f"{p.name.removesuffix('.zarr')}-report"))


def reload_options(p: argparse.ArgumentParser) -> None:
    """Options of the passes after mining, which load the run's model and dataset again."""
    p.add_argument("--data", type=user_path, help="the dataset's ImageFolder root, if it moved since mining")
    p.add_argument("--model", type=user_path,
                   help="the model, if the run cannot reload it (mined from an in-memory model)")
    p.add_argument("--weights", type=user_path, help="state_dict file for --model")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
