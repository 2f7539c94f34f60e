"""Commands other than `mine` started by torchrun: refused by every process, before anything is written.

Only `mine` shares its images across processes (mining/distributed.py). `torchrun -m sketchmine
visualize RUN` ran the whole pass in every process over the same run: the second process stopped
with "RUN is being written by another process", which was its own sibling, and torchrun then
stopped the first mid-write. Every process says why (refused at once, before any import: rank 0 alone
saying it could be stopped by torchrun before it did, once another process had exited)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

import sketchmine
from sketchmine.cli.main import main
from sketchmine.data import ArrayDataset, export_image_folder

SAID = "runs in one process and torchrun started 2 (WORLD_SIZE=2)"


@pytest.fixture()
def mined(tmp_path, demo_test_set):
    """A run over 20 PNGs, whose folder the passes read again."""
    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:2] for c in range(10)])
    folder = export_image_folder(ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names, ds.preprocessing,
                                              ds.describe()), tmp_path / "images")
    return sketchmine.mine("demo", folder, out=tmp_path / "run.zarr", layers=["features.6"], batch_size=10,
                           num_workers=0).path


def test_visualize_under_torchrun_is_refused_and_writes_nothing(mined):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "sketchmine", "visualize", str(mined)], capture_output=True, text=True, timeout=300,
                          env=env)
    said = [line for line in proc.stderr.splitlines() if line.startswith("sketchmine: ")]
    assert said and all("`sketchmine visualize` " + SAID in line for line in said), proc.stderr
    assert "run it without torchrun" in said[0]
    assert proc.returncode != 0
    assert "patches" not in zarr.open_group(str(mined), mode="r")["layers/features.6"]


def test_importance_in_a_torchrun_process_is_refused(mined, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["importance", str(mined)]) == 3
    err = capsys.readouterr().err
    assert "`sketchmine importance` " + SAID in err, err
    assert "importance" not in zarr.open_group(str(mined), mode="r")["layers/features.6"]
