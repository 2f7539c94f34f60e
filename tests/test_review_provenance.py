"""`summary` and `summary --json` name the weights a run was mined with by the identity it
recorded: runs mined before the xxh3 identity recorded it as `weights_sha256`, and they showed
none (the header "its own weights" bare, --json's weights_hash null) though the run holds it."""
from __future__ import annotations

import json

import sketchmine
from sketchmine.cli.main import main
from sketchmine.model.models import recorded_weights
from tests.helpers import per_class_subset
from tests.test_trust_miner import _mined_before_xxh3


def test_a_run_that_recorded_a_sha256_names_it(tmp_path, small_test_set, capsys):
    out = tmp_path / "old.zarr"
    ds = per_class_subset(small_test_set, 3, "provenance")
    _, sha = _mined_before_xxh3(ds, out)
    run = sketchmine.mine("sketchnet", ds, out=out, batch_size=8, seed=3)  # resumed and finished, as such runs are
    assert recorded_weights(run.attrs) == f"sha256:{sha}" and "weights_hash" not in run.attrs
    assert main(["summary", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights_hash"] == f"sha256:{sha}"
    assert main(["summary", str(out)]) == 0
    assert f"random weights (seed 3) (sha256:{sha[:16]}…)" in capsys.readouterr().out.splitlines()[0]


def test_a_run_of_random_weights_says_so_with_its_seed(tmp_path, small_test_set, capsys):
    """`--model sketchnet --seed 3` (no --weights) mines random weights; the header called them
    "its own weights", as it does a trained embedded model's, and two seeds read alike."""
    ds = per_class_subset(small_test_set, 2, "seeds")
    for seed in (3, 4):
        sketchmine.mine("sketchnet", ds, out=tmp_path / f"s{seed}.zarr", layers=["classifier.6"], k=2, seed=seed)
        assert main(["summary", str(tmp_path / f"s{seed}.zarr")]) == 0
        assert capsys.readouterr().out.startswith(f"model sketchnet, random weights (seed {seed}) (xxh3_128:")
        assert main(["summary", str(tmp_path / f"s{seed}.zarr"), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert (doc["weights"], doc["seed"]) == (None, seed)
    sketchmine.mine("demo", ds, out=tmp_path / "demo.zarr", layers=["classifier.6"], k=2)  # trained: no seed
    assert main(["summary", str(tmp_path / "demo.zarr")]) == 0
    assert capsys.readouterr().out.startswith("model demo:sketchnet_animal, its own weights (xxh3_128:")
