"""The command line on real images written as an ImageFolder, including bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sketchmine
from sketchmine.data import ArrayDataset, export_image_folder
from sketchmine.results.numbers import column


def sm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # a guard against a hang, not a time limit: `demo` takes 5 minutes on a quiet 2-core machine and ran
    # past 10 on a loaded one
    return subprocess.run([sys.executable, "-m", "sketchmine", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=1800)


@pytest.fixture()
def folder(tmp_path, demo_test_set) -> Path:
    """120 real test images (12 per class) as PNGs in <class>/<image>.png folders."""
    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:12] for c in range(10)])
    sub = ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names, ds.preprocessing, ds.describe())
    return export_image_folder(sub, tmp_path / "images")


def assert_clean_error(proc: subprocess.CompletedProcess, pattern: str, code: int = 3) -> None:
    """A one-line error last on stderr, no traceback; exit code 2 for a usage error (argparse's,
    which points at --help), else `code` (3: input refused, 1: running failed)."""
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("sketchmine: error:"), proc.stderr
    assert proc.returncode == (2 if lines[-1].endswith("--help)") else code), proc.stderr + proc.stdout
    import re

    assert re.search(pattern, proc.stderr.replace("\n", " ")), proc.stderr


def test_mine_cli_matches_api_and_resumes(tmp_path, folder):
    out = tmp_path / "run.zarr"
    proc = sm("mine", "--model", "demo", "--data", str(folder), "--out", str(out), "--batch-size", "32",
              "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    assert "features.0" in proc.stdout and "accuracy" in proc.stdout
    run = sketchmine.open_run(out)
    assert run.complete and run.images_done == 120
    api = sketchmine.mine("demo", folder, out=tmp_path / "api.zarr", batch_size=50)
    for name in run.layers:
        np.testing.assert_array_equal(run.topk(name)[1], api.topk(name)[1])
    again = sm("mine", "--model", "demo", "--data", str(folder), "--out", str(out))
    assert again.returncode == 0 and "120" in again.stdout
    summary = sm("summary", str(out))
    assert summary.returncode == 0 and "top 5" in summary.stdout and "per-class accuracy" in summary.stdout


def test_a_command_makes_no_full_collection_over_its_imports(tmp_path, folder):
    """`mine` imports torch, Zarr and the rest (~330 K objects); at Python's default collector
    thresholds that made full collections over all of them (0.2-0.45 s here). main() raises the
    young-object threshold while the command runs, and puts the caller's back."""
    script = (
        "import gc, sys\n"
        "from sketchmine.cli.main import main\n"
        "gc.set_threshold(700, 10, 10)\n"
        "before = gc.get_stats()[2]['collections']\n"
        f"code = main(['-q', 'mine', '--model', 'demo', '--data', {str(folder)!r}, '--out', {str(tmp_path / 'r.zarr')!r}])\n"
        "print(code, gc.get_stats()[2]['collections'] - before, gc.get_threshold())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-5:] == ["0", "0", "(700,", "10,", "10)"], proc.stdout


def test_unknown_layer(tmp_path, folder):
    proc = sm("mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "r"), "--layers", "conv9")
    assert_clean_error(proc, r"unknown layer 'conv9'.*Layers available by default: features\.0")


def test_missing_and_empty_dataset(tmp_path):
    assert_clean_error(sm("mine", "--model", "demo", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")),
                       "does not exist")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert_clean_error(sm("mine", "--model", "demo", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")),
                       "no images")


def test_corrupt_image_stops_naming_the_file_or_is_skipped(tmp_path, folder):
    good = next((folder / "bear").glob("*.png"))
    (folder / "bear" / "zz_truncated.png").write_bytes(good.read_bytes()[:60])
    (folder / "bird" / "garbage.png").write_bytes(b"this is not a png at all" * 10)
    proc = sm("mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "r"), "--workers", "0")
    assert_clean_error(proc, r"cannot read image bear/zz_truncated\.png.*--skip-bad-images")
    proc = sm("mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "s"), "--skip-bad-images")
    assert proc.returncode == 0, proc.stderr
    run = sketchmine.open_run(tmp_path / "s")
    bad = {b["path"] for b in run.attrs["bad_images"]}
    assert bad == {"bear/zz_truncated.png", "bird/garbage.png"}
    bad_idx = {b["index"] for b in run.attrs["bad_images"]}
    for name in run.layers:
        assert not bad_idx & set(run.topk(name)[1].ravel().tolist())


def test_other_channel_count_is_converted_once(tmp_path, folder):
    """Said once a call, however many flushes come between the converted images (it was said
    again after every flush)."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    for p in [sorted(c.glob("*.png"))[0] for c in (classes[0], classes[3], classes[-1])]:
        Image.open(p).convert("RGB").save(p)
    proc = sm("mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "r"), "--workers", "0",
              "--batch-size", "4", "--flush-every", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("converting RGB images") == 1 and "converting" not in proc.stdout
    assert sketchmine.open_run(tmp_path / "r").attrs["converted_images"] == {"RGB": 3}


def test_output_problems(tmp_path, folder):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    assert_clean_error(sm("mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "notes")),
                       "exists and is not a sketchmine run")
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"
    assert not (tmp_path / ".notes.lock").exists()  # refused before the run's lock: nothing left beside it
    (tmp_path / "afile").write_text("x")
    assert_clean_error(sm("mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "afile" / "r.zarr")),
                       "cannot write the run")


def test_unknown_model_and_bad_checkpoint(tmp_path, folder):
    assert_clean_error(sm("mine", "--model", "alexnett", "--data", str(folder), "--out", str(tmp_path / "r")),
                       "unknown model 'alexnett': expected an embedded trained model \\('demo', 'demo-resnet', "
                       "'demo-gru'\\).*an .onnx file; did you mean alexnet")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not a checkpoint")
    assert_clean_error(sm("mine", "--model", str(ckpt), "--data", str(folder), "--out", str(tmp_path / "r")),
                       r"model.pt is not a PyTorch checkpoint \(neither torch.save's zip format nor a pickle\)")
    import torch

    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), ckpt)  # the whole module: pickled objects
    done = sm("mine", "--model", str(ckpt), "--data", str(folder), "--out", str(tmp_path / "r"))
    assert_clean_error(done, r"model.pt holds Python objects \(torch.nn.modules.container.Sequential\), not only "
                             r"tensors: sketchmine never unpickles them .*torch.save\(model.state_dict\(\), path\)")
    assert "weights_only=False" not in done.stderr and "weights_only` set to `False" not in done.stderr  # torch's advice


def test_sigkill_mid_run_resumes_to_identical_store(tmp_path, folder):
    """A real crash: SIGKILL the CLI once it has flushed, re-run the same command, compare."""
    import json
    import os
    import signal
    import time

    from tests.helpers import assert_same_store

    args = ["mine", "--model", "demo", "--data", str(folder), "--batch-size", "8", "--flush-every", "1",
            "--workers", "0"]
    ref = sm(*args, "--out", str(tmp_path / "ref.zarr"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "sketchmine", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = json.loads((out / "zarr.json").read_text())["attributes"]["progress"]["images_done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 24:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = sketchmine.open_run(out)
    assert not partial.complete and 24 <= partial.images_done < 120
    again = sm(*args, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert_same_store(out, tmp_path / "ref.zarr")


def test_demo_mines_visualizes_compares_and_reports_both_models(tmp_path, monkeypatch):
    """`sketchmine demo` end to end: the embedded SketchNet ('demo') and ResNet ('demo-resnet')
    over the 2,000 test images side by side, every unit of every layer visualized, both
    summaries, the comparison of the two runs; the CNN + GRU ('demo-gru') over the same images
    drawn progressively, visualized, its hidden units ranked by ablation; one report each. The
    image models' class outputs get an optimised input each, shown on the report's cards."""
    import re

    monkeypatch.setenv("COLUMNS", "240")  # rich wraps to this width: table cells stay whole
    out, rep = tmp_path / "demo", tmp_path / "rep"
    proc = sm("demo", "--out", str(out), "--report", str(rep))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    runs = {m: sketchmine.open_run(out / f"{m}.zarr") for m in ("demo", "demo-resnet", "demo-gru")}
    for model, run in runs.items():
        assert run.complete and run.images_done == 2000
        for name in run.layers:
            g = run.store.group[f"layers/{name}"]
            vis = g.attrs["visualized"]
            assert vis["complete"] and vis["units_done"] == g.attrs["shape"][0], (model, name)
            assert np.asarray(g["patches"][0]).any() and np.asarray(g["deconv"][0]).any(), (model, name)
        index = rep / model / "index.html"
        assert index.is_file() and f"open {index}" in text.replace("\n", "")
        assert f"sketchmine report: {run.attrs['model']}" in re.sub("<[^>]+>", "", index.read_text())  # as shown
        assert (rep / model / "img" / f"00-{run.layers[0]}" / "0_p.png").is_file()
        from sketchmine.passes.probe import ORT_DIR, ORT_FILES  # the live probe, when onnxruntime-web is vendored

        assert (rep / model / "probe.html").is_file() == all((ORT_DIR / n).is_file() for n in ORT_FILES), model
        assert f"summary: {model}" in text
    for model, logits in (("demo", "classifier.6"), ("demo-resnet", "fc")):  # the input each class wants most
        claim = runs[model].layer_attrs(logits)["optimized"]
        assert claim["complete"] and claim["regularizers"]["redirect_relu"], model
        assert (runs[model].optimized(logits, key="optimized_peak") > runs[model].topk(logits)[0][:, 0]).all(), model
        assert (rep / model / "img" / f"{runs[model].layers.index(logits):02d}-{logits}" / "0_o.png").is_file()
        assert [n for n in runs[model].layers if "optimized" in runs[model].layer_attrs(n)] == [logits]
    assert not [n for n in runs["demo-gru"].layers if "optimized" in runs["demo-gru"].layer_attrs(n)]
    assert runs["demo"].accuracy() == pytest.approx(0.9705) and runs["demo-resnet"].accuracy() == pytest.approx(0.9835)
    assert runs["demo-gru"].accuracy() == pytest.approx(0.8955)
    assert runs["demo-gru"].attrs["dataset"]["sequence"]["steps"] == 8
    df = runs["demo-gru"].unit_importance("gru")  # stored by the demo, printed most important first
    assert len(df) == 64 and df.attrs["images"] == 2000
    assert "which gru units matter for the label" in text
    assert re.search(rf"│ +{int(df['unit'].iloc[0])} │ +{re.escape(column([v * 100 for v in df['prob_drop'][:10]])[0])} │", text)  # in pt, as the demo's 10 rows
    # the compare tables: accuracy of both runs side by side, layers paired by name or depth
    assert "compare: A = demo:sketchnet_animal, B = demo:sketchresnet_animal" in text
    assert "(97.05 %) vs B" in text and "(98.35 %)" in text
    assert re.search(r"┃ +B − A \(pt\) +┃.*?│ +\w+ +│ +[\d.]+ +│ +[\d.]+ +│ +\+\d+\.\d+ +│", text, re.S)  # a gain: "+"
    # softmax is in both runs (paired by name), the logits with the logits, the conv layers by the share of the input
    # their receptive fields take (SketchNet's first, 5 of 28 px, with the ResNet's first block's 5 px, not its 3-px
    # conv1), the linear ones by depth; the title may wrap
    assert ("layers paired by name where both runs have the layer, the logits with the logits, else by receptive field "
            "(its share of the input) or by relative depth" in " ".join(text.split()))
    for a, b, by in (("features.0", "layer1.0.conv1", "field"), ("classifier.6", "fc", "logits"),
                     ("softmax", "softmax", "name"), ("classifier.4", "layer3.1.conv1", "depth")):
        assert re.search(rf"│ {re.escape(a)} +│ {re.escape(b)} +│[^\n]*│ {by} +│\n", text), (a, b)  # each pair says how


def test_a_dataset_link_that_leads_nowhere_is_said_apart_from_a_missing_one(tmp_path, folder):
    """A symlink loop (or a dangling link) as --data does not "exist" to Path.exists, and was said
    as a missing folder; a run's recorded root that is now a file was said as missing too."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert_clean_error(sm("mine", "--model", "demo", "--data", str(loop), "--out", str(tmp_path / "r")),
                       "is a symbolic link that leads to no folder")
    run = tmp_path / "run.zarr"
    sketchmine.mine("demo", folder, out=run, batch_size=60, layers=["features.0"])
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_clean_error(sm("visualize", str(run), "--data", str(afile)), r"dataset root .*afile of run .* is a file, not a folder")
