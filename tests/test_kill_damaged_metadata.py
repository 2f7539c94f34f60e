"""A partial run (a `mine` stopped part-way) whose group metadata a power cut or a copy damaged:
the resume refuses it before mining, naming the file, or, for mining's own checkpoint group,
writes it again and ends identical to an uninterrupted run; `verify` says what `mine` would.
Found by damaging one file of a killed run at random and resuming (scratch fuzz): a truncated
`eval/zarr.json` failed `mine` with a JSONDecodeError traceback after every image was mined
again, a truncated `_checkpoint/zarr.json` at the resume's first flush, and `verify` passed a
partial run whose listed layer had lost its group, which `mine` then refused as damaged."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sketchmine
from sketchmine.errors import RunDamaged
from tests.helpers import StopAfter, assert_same_store, per_class_subset

LAYERS = ["features.3", "classifier.6"]


@pytest.fixture(scope="module")
def images(demo_test_set):
    return per_class_subset(demo_test_set, 3, "3 per class")  # 30 real images


@pytest.fixture(scope="module")
def runs(tmp_path_factory, images) -> tuple[Path, Path]:
    """An uninterrupted run and one stopped after 12 of its 30 images (3 checkpoints)."""
    root = tmp_path_factory.mktemp("damaged_metadata")
    sketchmine.mine("demo", images, layers=LAYERS, out=root / "ref.zarr", batch_size=4, flush_every=1)
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", images, layers=LAYERS, out=root / "partial.zarr", batch_size=4, flush_every=1,
                        progress=StopAfter(12))
    assert not sketchmine.open_run(root / "partial.zarr").complete
    return root / "ref.zarr", root / "partial.zarr"


def _copy_cut(partial: Path, tmp_path: Path, node: str) -> Path:
    """A copy of the partial run with `node`'s zarr.json cut to half its bytes."""
    run = tmp_path / "run.zarr"
    shutil.copytree(partial, run)
    meta = run / node / "zarr.json"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    return run


def test_a_group_whose_metadata_does_not_parse_is_refused_before_mining(tmp_path, runs, images):
    run = _copy_cut(runs[1], tmp_path, "eval")
    seen = StopAfter(10**9)
    with pytest.raises(RunDamaged, match=r"is damaged: eval/zarr.json does not parse as JSON .*restore the run's "
                                         r"files from a copy, or mine it again with a new --out"):
        sketchmine.mine("demo", images, layers=LAYERS, out=run, batch_size=4, flush_every=1, progress=seen)
    assert seen.seen == 0  # refused before any image was mined again
    assert "eval" in sketchmine.verify_run(run).damaged


def test_the_checkpoints_own_group_metadata_is_written_again(tmp_path, runs, images):
    run = _copy_cut(runs[1], tmp_path, "_checkpoint")
    assert not sketchmine.verify_run(run).damaged  # mining's, not a result: the next flush writes it
    sketchmine.mine("demo", images, layers=LAYERS, out=run, batch_size=4, flush_every=1)
    assert_same_store(run, runs[0])


def test_verify_names_a_listed_layer_without_its_group_as_mine_does(tmp_path, runs, images):
    run = tmp_path / "run.zarr"
    shutil.copytree(runs[1], run)
    (run / "layers" / "classifier.6" / "zarr.json").unlink()
    found = sketchmine.verify_run(run)
    assert found.damaged.get("layers/classifier.6", "").startswith("is listed as a layer of the run but has no group")
    verified = subprocess.run([sys.executable, "-m", "sketchmine", "verify", str(run)], capture_output=True, text=True,
                              timeout=300)
    assert verified.returncode == 3 and "damaged: layers/classifier.6 is listed" in verified.stdout, verified
    assert f"run {run} is damaged (1 listed above)" in verified.stderr, verified.stderr  # not "1 array": a group
    with pytest.raises(RunDamaged, match="layer 'classifier.6' is listed but has no group"):
        sketchmine.mine("demo", images, layers=LAYERS, out=run, batch_size=4, flush_every=1)
