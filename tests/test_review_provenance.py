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
    assert f"its own weights (sha256:{sha[:16]}…)" in capsys.readouterr().out.splitlines()[0]
