"""Every reader says when a run was mined under autocast (found by an audit: a bf16 run, whose
logits are up to 0.19 from float32's and whose top-9 sets differ, read exactly like a float32
run). Real runs of the demo model on the embedded test images, mined plain and under bf16
autocast; each view is read as a user gets it: the repr, the CLI's tables and --json, the
report's HTML files, the slide."""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.cli.main import main as cli
from sketchmine.errors import SketchmineError
from sketchmine.mining.options import SpeedOptions
from sketchmine.present.report import write_report
from tests.helpers import per_class_subset, store_arrays

LAYERS = ["features.0", "classifier.6"]
REDUCED = re.compile(r"autocast|bfloat16|bf16|float16|fp16|reduced precision", re.I)
"""Words no view of a float32 run may show (it would read as a reduced-precision run)."""


@pytest.fixture(scope="module")
def data(demo_test_set):
    return per_class_subset(demo_test_set, 5, "precision")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model, data) -> dict[str, Path]:
    """The same 50 images mined plain and under bf16 autocast (features.0 of the bf16 run
    visualized for one unit, so its report has a slide)."""
    root = tmp_path_factory.mktemp("precision")
    plain = sketchmine.mine("demo", data, out=root / "plain.zarr", batch_size=50, layers=LAYERS)
    bf16 = sketchmine.mine("demo", data, out=root / "bf16.zarr", batch_size=50, layers=LAYERS, autocast="bf16")
    sketchmine.visualize(bf16, layers=["features.0"], data=data, max_units=1)
    return {"plain": Path(plain.path), "bf16": Path(bf16.path)}


def said(text: str) -> str:
    """`text` with runs of white space as one space (rich wraps titles and captions)."""
    return " ".join(text.split())


def command(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    assert cli(list(args)) == 0
    return capsys.readouterr().out


def test_the_run_says_what_its_numbers_were_computed_in(runs, demo_model, demo_test_set, tmp_path):
    plain, bf16 = sketchmine.open_run(runs["plain"]), sketchmine.open_run(runs["bf16"])
    logits = [store_arrays(runs[name])["eval/logits"] for name in ("plain", "bf16")]
    assert np.abs(logits[0] - logits[1]).max() > 1e-2  # what is said is real: far beyond float rounding
    assert bf16.precision == "bfloat16 autocast" and bf16.reduced_precision
    assert bf16.forward_options == {"autocast": "bf16", "channels_last": False, "compile": False}
    assert plain.precision == "float32" and not plain.reduced_precision
    assert "bfloat16 autocast, accuracy" in repr(bf16) and not REDUCED.search(repr(plain))
    assert "bfloat16 autocast" in bf16._repr_html_() and not REDUCED.search(plain._repr_html_())
    card = bf16.unit("features.0", 1)
    assert "bfloat16 autocast" in repr(card) and "bfloat16 autocast" in card._repr_html_()
    assert not REDUCED.search(repr(plain.unit("features.0", 1)) + plain.unit("features.0", 1)._repr_html_())
    fp16 = sketchmine.mine(demo_model.module, per_class_subset(demo_test_set, 2, "fp16"), out=tmp_path / "fp16.zarr",
                           batch_size=20, layers=["features.0"], autocast="fp16")
    assert fp16.precision == "float16 autocast" and "float16 autocast, accuracy" in repr(fp16)


def test_a_run_mined_before_the_record_is_float32_and_a_damaged_record_is_refused(runs, tmp_path):
    import zarr

    old = tmp_path / "old.zarr"
    shutil.copytree(runs["plain"], old)
    group = zarr.open_group(str(old), mode="r+")
    del group.attrs["forward_options"], group.attrs["attribute_sums"]  # neither was recorded then
    run = sketchmine.open_run(old)
    assert run.precision == "float32" and run.forward_options["autocast"] is None
    assert run.forward_options == SpeedOptions().forward_options()  # the default pass is what is assumed
    assert not REDUCED.search(repr(run))
    zarr.open_group(str(old), mode="r+").attrs["forward_options"] = {"autocast": "fp8", "channels_last": False,
                                                                     "compile": False}
    assert sketchmine.open_run(old).precision == "fp8 autocast"  # a newer sketchmine's: named, never float32
    zarr.open_group(str(old), mode="r+").attrs["forward_options"] = "bf16"
    with pytest.raises(SketchmineError, match="forward_options"):
        _ = sketchmine.open_run(old).precision


def test_summary_says_it_in_its_header_and_its_json(runs, capsys, monkeypatch):
    text = command(capsys, monkeypatch, "summary", str(runs["bf16"]))
    header = said(text.split("┏", 1)[0])
    assert "(complete; bfloat16 autocast)" in header
    assert "mined under bfloat16 autocast: activations, logits and accuracy differ from a float32 run's" in said(text)
    plain = command(capsys, monkeypatch, "summary", str(runs["plain"]))
    assert not REDUCED.search(plain.replace(str(runs["plain"]), ""))
    doc = json.loads(command(capsys, monkeypatch, "summary", str(runs["bf16"]), "--json"))
    assert doc["precision"] == "bfloat16 autocast" and doc["forward_options"]["autocast"] == "bf16"
    doc = json.loads(command(capsys, monkeypatch, "summary", str(runs["plain"]), "--json"))
    assert doc["precision"] == "float32" and doc["forward_options"]["autocast"] is None


def test_unit_says_it_in_its_overview_and_its_json(runs, capsys, monkeypatch):
    text = command(capsys, monkeypatch, "unit", str(runs["bf16"]), "features.0", "1")
    assert re.search(r"computed in\s*│\s*bfloat16 autocast", text)
    assert not REDUCED.search(command(capsys, monkeypatch, "unit", str(runs["plain"]), "features.0", "1")
                              .replace(str(runs["plain"]), ""))
    for name, want in (("bf16", "bfloat16 autocast"), ("plain", "float32")):
        doc = json.loads(command(capsys, monkeypatch, "unit", str(runs[name]), "features.0", "1", "--json"))
        assert doc["precision"] == want


def test_compare_says_when_the_runs_differ_in_precision(runs, capsys, monkeypatch):
    text = said(command(capsys, monkeypatch, "compare", str(runs["plain"]), str(runs["bf16"])))
    assert re.search(r" vs B [^(]*\(\d+(\.\d+)? %, bfloat16 autocast\)", text)  # beside B's accuracy, not A's
    assert "A was mined in float32, B in bfloat16 autocast" in text and "not comparable bit for bit" in text
    doc = json.loads(command(capsys, monkeypatch, "compare", str(runs["plain"]), str(runs["bf16"]), "--json"))
    assert doc["precision"] == {"a": "float32", "b": "bfloat16 autocast", "same": False}
    same = command(capsys, monkeypatch, "compare", str(runs["plain"]), str(runs["plain"]))
    assert not REDUCED.search(same.replace(str(runs["plain"]), "")) and "bit for bit" not in same
    doc = json.loads(command(capsys, monkeypatch, "compare", str(runs["plain"]), str(runs["plain"]), "--json"))
    assert doc["precision"] == {"a": "float32", "b": "float32", "same": True}


def test_the_report_says_it_beside_the_accuracy_and_on_every_page(runs, tmp_path):
    out = write_report(runs["bf16"], tmp_path / "bf16").parent
    index = (out / "index.html").read_text()
    line = re.search(r'<p class="precision" id="precision">([^<]*)</p>', index)
    assert line and "mined under bfloat16 autocast" in line.group(1)
    assert index.index('id="precision"') < index.index("<h2>Accuracy")  # right above the accuracy
    assert index.count('class="precision"') == 1
    pages = sorted((out / "layers").glob("*.html")) + sorted((out / "units").glob("*.html"))
    assert len(pages) == 2 * len(LAYERS)
    for page in pages:
        assert 'class="precision"' in page.read_text() and "bfloat16 autocast" in page.read_text(), page
    plain = write_report(runs["plain"], tmp_path / "plain").parent
    for page in plain.rglob("*.html"):
        assert not REDUCED.search(page.read_text().replace(str(runs["plain"]), "")), page


def test_the_slide_says_it(runs):
    run = sketchmine.open_run(runs["bf16"])
    fig = sketchmine.plots.unit_montage(run, "features.0", 0)
    title = [t.get_text() for t in fig.texts if t.get_text().startswith("features.0 · unit 0")]
    assert title == [f"features.0 · unit 0   ({run.attrs['model']}, bfloat16 autocast)"]


def probe_notes(files: dict[str, bytes]) -> list[str]:
    text = files["model.js"].decode()
    return json.loads(text.split("=", 1)[1].strip().rstrip(";"))["notes"]


def test_the_probe_says_it_computes_in_float32(runs, demo_model, data, tmp_path):
    """The probe runs a float32 graph in the browser: a reduced-precision run's probe says its values
    differ; a half model (whose float32 input it refused, so no probe) is exported as a float32 copy."""
    pytest.importorskip("onnx")
    from sketchmine.passes.probe import build_probe

    said_float32 = re.compile(r"probe computes in float32 and the run was mined in ([a-z0-9]+)")
    assert [m[1] for n in probe_notes(build_probe(runs["bf16"])) if (m := said_float32.search(n))] == ["bfloat16"]
    assert not any(said_float32.search(n) for n in probe_notes(build_probe(runs["plain"])))
    half = copy.deepcopy(demo_model.module).to(torch.bfloat16)
    run = sketchmine.mine(half, per_class_subset(data, 2, "half"), out=tmp_path / "half.zarr", batch_size=20,
                          layers=LAYERS)
    assert run.precision == "bfloat16"
    assert [m[1] for n in probe_notes(build_probe(run, half)) if (m := said_float32.search(n))] == ["bfloat16"]
    assert next(half.parameters()).dtype == torch.bfloat16  # the caller's module is not converted
