"""`sketchmine demo`: the embedded trained models on the embedded test split.

"demo" (SketchNet, AlexNet-style) and "demo-resnet" (a small BasicBlock ResNet) are mined
(every conv, linear and softmax layer) and visualized over the same 2,000 Animal-Shape test
images, each into its own run store, their class outputs' optimal inputs found by feature
visualisation, then summarised and compared layer by layer (paired by name, the logits with the
logits, else by receptive field or relative depth). The seed's next step comes last: "demo-gru"
(CNN + GRU) reads each test image as a progressive drawing; it is mined and visualized the same
way, and the importance of each GRU hidden unit for the correct label is measured by ablation. One static report per model:

    OUT/demo.zarr  OUT/demo-resnet.zarr  OUT/demo-gru.zarr     the runs (a re-run with the same OUT resumes)
    REPORT/<model>/index.html, probe.html                       (REPORT defaults to OUT/report; the live probe)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

from sketchmine.data import MinerDataset
from sketchmine.results.run import Run

MODELS: tuple[str, str] = ("demo", "demo-resnet")
"""The embedded image models the demo mines, in the order of the comparison (A, B)."""

RECURRENT: tuple[str, str] = ("demo-gru", "gru")
"""The embedded CNN + GRU and the layer whose units' importance for the label the demo measures."""

VISUALIZE_BATCH = 256
"""(image, unit) pairs per forward and backward of the visualize pass."""


def animal_shape_test(model: str) -> MinerDataset:
    """The embedded Animal-Shape test split, normalised as `model` was trained; as progressive
    drawings of the recorded number of steps for a model trained on sequences."""
    from sketchmine.data import animal_shape
    from sketchmine.data.sequences import SequenceDataset, recorded_steps
    from sketchmine.model.models import load_model, preprocessing_for

    loaded = load_model(model)
    ds = animal_shape("test", preprocessing_for(loaded))
    return SequenceDataset(ds, recorded_steps(loaded.sequence, model)) if loaded.sequence else ds


def mine_and_visualize(model: str, out: Path, batch_size: int, console: Console) -> Run:
    """Mine every default layer of `model` into `out`, then crop every unit's patches and
    deconvolutions, and for a model of single images optimise the input each class output
    wants most (feature visualisation of the layer that computes the logits: a few seconds);
    every pass resumes where an earlier demo left off."""
    from sketchmine.data.sequences import SequenceDataset
    from sketchmine.mining.miner import mine
    from sketchmine.passes.visualize import visualize
    from sketchmine.present.console import safe
    from sketchmine.present.progress_bar import RichProgress
    from sketchmine.present.logs import err_console
    from sketchmine.results.effects import logits_layer

    console.print(f"[bold]{model}[/] → {safe(out)}")
    bar = RichProgress(err_console())  # progress on stderr, results on stdout
    try:
        data = animal_shape_test(model)
        run = mine(model, data, out=out, batch_size=batch_size, progress=bar, distributions=True)
    finally:
        bar.stop()
    vbar = RichProgress(err_console(), "visualizing", unit="units")
    try:
        run = visualize(run, batch_size=VISUALIZE_BATCH, progress=vbar)
    finally:
        vbar.stop()
    logits = logits_layer(run)
    if logits is None or isinstance(data, SequenceDataset):  # drawings over time: no one input image
        return run
    obar = RichProgress(err_console(), f"optimising {logits}", unit="units")
    try:
        return visualize(run, layers=[logits], optimize=True, progress=obar)
    finally:
        obar.stop()


DEMO_MARKER = ".sketchmine-demo"
"""The file that makes a folder a demo folder: the demo writes only its runs and reports there."""


def demo_entries(report_in_out: bool) -> set[str]:
    """The names the demo writes directly under OUT."""
    return {f"{m}.zarr" for m in (*MODELS, RECURRENT[0])} | ({"report"} if report_in_out else set()) | {DEMO_MARKER}


def check_demo_dir(out: Path, reports: Path) -> None:
    """Refuse, before anything is mined, an OUT that is not the demo's: a file, a path inside
    a run, or a non-empty folder that holds anything but an earlier demo's runs and reports
    (with or without the marker); and report folders `write_report` would refuse."""
    from sketchmine.errors import SketchmineError
    from sketchmine.present.report import check_report_dir
    from sketchmine.store.lock import enclosing_run

    target = out.resolve()
    if target.exists() and not target.is_dir():
        raise SketchmineError(f"demo folder {out} exists and is not a folder; choose a new or empty folder")
    if (run := enclosing_run(target)) is not None:
        raise SketchmineError(f"demo folder {out} is inside the run {run}; choose a folder outside any run")
    if target.is_dir():
        names = {p.name for p in target.iterdir()}
        foreign = sorted(names - demo_entries(reports.resolve() == target / "report"))
        if foreign and not (target / DEMO_MARKER).is_file():
            raise SketchmineError(f"demo folder {out} is not empty and is not a sketchmine demo folder (it holds "
                                  f"{', '.join(foreign[:3])}{' …' if len(foreign) > 3 else ''}); choose a new or "
                                  "empty folder")
    for m in (*MODELS, RECURRENT[0]):
        check_report_dir(reports / m, out / f"{m}.zarr")


def run_demo(out_dir: str | Path | None, batch_size: int, report_dir: str | Path | None,
             console: Console) -> dict[str, Path]:
    """Mine, visualize, summarise and report the embedded models, compare the two image models,
    and rank the GRU's hidden units by importance; returns each model's report index.html.
    out_dir: where the runs go (None: a new temporary directory), new, empty or an earlier
    demo's (refused otherwise); report_dir: the reports' parent folder (None: out_dir/report).
    Ctrl-C says what a re-run does (a KeyboardInterrupt carrying the message)."""
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="sketchmine-demo-"))
    reports = Path(report_dir) if report_dir else out / "report"
    check_demo_dir(out, reports)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("sketchmine demo: runs demo.zarr, demo-resnet.zarr, demo-gru.zarr and reports\n")
    again = f"sketchmine demo --out {out}" + (f" --report {report_dir}" if report_dir else "")
    try:
        return _run_demo(out, batch_size, reports, console, again)
    except KeyboardInterrupt as exc:  # a report's own words (one written, its previous one left beside it) first
        raise KeyboardInterrupt(
            f"{exc if exc.args else 'interrupted'}; `{again}` resumes mining and visualizing where the runs stopped "
            "(last flush / unit block), then measures the GRU's unit importance and writes the reports again "
            "(earlier reports are kept until replaced)") from None


def demo_report(run: Run, dest: Path, console: Console) -> Path:
    """One model's report, with the live probe (the demo shows it off; each embedded model's probe
    adds about 20 MB, docs/probe.md), or the reason there is none on its index page."""
    from sketchmine.cli.probe import report_probe
    from sketchmine.present.console import print_report

    return print_report(str(run.path), str(dest), console, report_probe(str(run.path)))


def _run_demo(out: Path, batch_size: int, reports: Path, console: Console, again: str) -> dict[str, Path]:
    from sketchmine.errors import SketchmineError
    from sketchmine.passes.importance import unit_importance
    from sketchmine.names import command
    from sketchmine.present.compare_console import print_compare
    from sketchmine.present.console import importance_table, print_summary, safe
    from sketchmine.results.run import open_run

    console.print("[bold]sketchmine demo[/]: every layer of the embedded SketchNet (demo) and small ResNet "
                  "(demo-resnet) over the Animal-Shape test split, the two compared, then the CNN + GRU "
                  "(demo-gru) over the same images drawn progressively")
    runs = {m: mine_and_visualize(m, out / f"{m}.zarr", batch_size, console) for m in (*MODELS, RECURRENT[0])}
    gru, layer = RECURRENT
    unit_importance(runs[gru], layer)
    for model, run in runs.items():
        console.rule(f"[bold]summary[/]: {model}")
        print_summary(str(run.path), 5, console)
    print_compare(runs[MODELS[0]], runs[MODELS[1]], 5, console, title=True)
    console.rule(f"[bold]which {layer} units matter for the label[/]: {gru} (ablation over the test split)")
    console.print(importance_table(open_run(runs[gru].path), layer, 10))
    try:
        index = {m: demo_report(run, reports / m, console) for m, run in runs.items()}
    except SketchmineError as exc:  # a report's failure (a slide worker gone) leaves the runs: say they are kept
        said = SketchmineError(f"{exc}; the runs are kept in {out}: `{again}` writes the reports again")
        said.exit_code = exc.exit_code
        raise said from exc
    a, b = (runs[m].path for m in MODELS)
    console.print(safe(f"runs stored in {out}; compare them again with: {command('sketchmine', 'compare', a, b)}"))
    return index
