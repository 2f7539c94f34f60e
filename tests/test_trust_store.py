"""No silent wrong answers from the run store (issue 14): missing or corrupt chunk files are
errors naming the run and the array; two `mine` started at once on a fresh --out leave one
whole run; a creation that died does not block the next; readers of a run being mined see
its last commit or a clear "being written, retry"; half-written importance groups count as
absent. Real data (the embedded demo test set and model), real stores, real subprocesses."""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sketchmine
from sketchmine import SketchmineError
from sketchmine.errors import RunDamaged
from sketchmine.data import ArrayDataset
from tests.helpers import assert_same_store, image_folder

LAYERS = ["features.3", "classifier.4", "softmax"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sketchmine", *args]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_test_set) -> Path:
    """120 real test images (12 per class) as PNGs."""
    return image_folder(demo_test_set, tmp_path_factory.mktemp("trust") / "images")


# ---- 9: two `mine` at once on a fresh --out ------------------------------------------------------
def test_two_mines_started_at_once_leave_one_whole_run(tmp_path, folder):
    args = ["mine", "--model", "demo", "--data", str(folder), "--batch-size", "8", "--flush-every", "1",
            "--workers", "0"]
    ref = subprocess.run(_cli(*args, "--out", str(tmp_path / "ref.zarr")), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    for attempt in range(2):  # twice: the two starts land at different moments
        out = tmp_path / f"run{attempt}.zarr"
        procs = [subprocess.Popen(_cli(*args, "--out", str(out)), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
        ok = [rc == 0 for rc, _ in results]
        assert any(ok), results
        for rc, err in results:  # the other one finished after it (resumed a complete run) or was refused
            assert rc == 0 or "being written by another process" in err, err
        run = sketchmine.open_run(out)
        assert run.complete
        assert_same_store(out, tmp_path / "ref.zarr")
        assert not list(tmp_path.glob(f".{out.name}.creating-*"))


# ---- 10: a creation that died ---------------------------------------------------------------------
class _DiskFullAt(ArrayDataset):
    """The demo images, whose path listing fails with ENOSPC at image `at` (the disk filling
    while the run is laid out)."""

    def __init__(self, base: ArrayDataset, at: int) -> None:
        super().__init__(base.images, base.labels(), base.class_names, base.preprocessing, base.describe())
        self.at = at

    def path(self, i: int) -> str:
        if i == self.at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().path(i)


def test_a_creation_that_failed_does_not_block_the_next(tmp_path, demo_model, small_test_set):
    out = tmp_path / "run.zarr"
    with pytest.raises(SketchmineError, match="No space left on device"):
        sketchmine.mine(demo_model.module, _DiskFullAt(small_test_set, 150), layers=LAYERS, k=3, out=out,
                        batch_size=100)
    assert not out.exists() and not list(tmp_path.glob(".run.zarr.*creating*"))
    sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=out, batch_size=100)
    assert sketchmine.open_run(out).complete


def test_a_killed_creation_is_removed_by_the_next_and_nothing_foreign_is(tmp_path, demo_model, small_test_set):
    out = tmp_path / "run.zarr"
    # what a creation killed half-way leaves: its marked staging folder with part of a run in it
    dead = tmp_path / ".run.zarr.creating-999999"
    (dead / "dataset" / "labels").mkdir(parents=True)
    (dead / ".sketchmine-creating").write_text("a sketchmine run being created\n")
    (dead / "dataset" / "labels" / "zarr.json").write_text("{}")
    # not ours: a folder of that name without our marker, and a foreign folder beside
    foreign_staging = tmp_path / ".run.zarr.creating-12"
    foreign_staging.mkdir()
    (foreign_staging / "notes.txt").write_text("mine")
    sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=out, batch_size=100)
    assert sketchmine.open_run(out).complete
    assert not dead.exists()
    assert (foreign_staging / "notes.txt").read_text() == "mine"

    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2\n")
    with pytest.raises(SketchmineError, match="exists and is not a sketchmine run"):
        sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=other, batch_size=100)
    assert sorted(p.name for p in other.iterdir()) == ["data.csv"]
    assert not list(tmp_path.glob(".other.creating-*"))


# ---- 3: missing or corrupt chunk files of a complete run -----------------------------------------
@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, small_test_set) -> Path:
    out = tmp_path_factory.mktemp("mined") / "run.zarr"
    sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=out, batch_size=100, flush_every=1)
    return out


def _copy(mined: Path, tmp_path: Path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(mined, path)
    return path


def _chunks(path: Path, array: str) -> list[Path]:
    """The chunk files of `array` (every file of its folder but its metadata)."""
    return sorted((p for p in (path / array).rglob("*") if p.name != "zarr.json"), key=str)


@pytest.mark.filterwarnings("ignore:Object at .* is not recognized:UserWarning")  # the look-alikes kept
def test_temporary_files_of_killed_writes_are_removed_by_the_next_writer(tmp_path, mined, demo_model,
                                                                         small_test_set):
    """Zarr writes a file as `<name>.<uuid hex>.partial` and renames it into place; a SIGKILL
    between the two left that file in the run for good. The next writer removes exactly those
    files (a reader removes nothing) and the run reads as before."""
    path = _copy(mined, tmp_path)
    layer = path / "layers" / "features.3"
    temps = [layer / f"zarr.{'3f' * 16}.partial", layer / "values" / f"c.0.{'a1' * 16}.partial"]
    kept = [layer / "notes.partial", layer / "zarr.1234.partial", path / f"zarr.{'3f' * 16}.partial.txt"]
    for p in temps + kept:
        p.write_bytes(b'{"attributes": ')
    assert sketchmine.open_run(path).topk("features.3")[0].shape[0] > 0 and all(p.exists() for p in temps)
    run = sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=path, batch_size=100,
                          flush_every=1)  # the complete run opened for writing: nothing to do
    assert not any(p.exists() for p in temps) and all(p.exists() for p in kept)
    assert_same_store(path, mined)
    assert np.array_equal(run.topk("features.3")[0], sketchmine.open_run(mined).topk("features.3")[0])


@pytest.mark.parametrize("damage", ["remove", "corrupt", "truncate"])
def test_a_damaged_topk_chunk_is_an_error_naming_the_array(tmp_path, mined, damage):
    path = _copy(mined, tmp_path)
    [chunk] = [c for c in _chunks(path, "layers/features.3/image_index") if c.is_file()]
    if damage == "remove":
        chunk.unlink()
    elif damage == "corrupt":
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:
        chunk.write_bytes(chunk.read_bytes()[:8])
    run = sketchmine.open_run(path)
    for read in (lambda: run.topk("features.3"), lambda: run.class_histogram("features.3"),
                 lambda: run.top_classes("features.3", 3)):
        with pytest.raises(SketchmineError, match=r"run .*run\.zarr is damaged: array 'layers/features\.3/image_index'"):
            read()
    run.topk("classifier.4")  # the other layers are intact


@pytest.mark.parametrize("form", ["blake2b", "sha256"])
def test_a_run_with_older_checksums_still_verifies(tmp_path, mined, form):
    """Runs written before xxh3 record "sha256:" digests (and before those, bare blake2b-128):
    they read as before, and a damaged chunk is still found."""
    import hashlib

    import zarr

    path = _copy(mined, tmp_path)
    group = zarr.open_group(str(path), mode="r+")
    sums = dict(group.attrs["checksums"])
    name = "layers/features.3/image_index"
    data = np.asarray(group[name][...])
    assert sums[name]["sums"][0].startswith("xxh3_128:")
    old = (hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest() if form == "blake2b"
           else "sha256:" + hashlib.sha256(data.tobytes()).hexdigest()[:32])
    sums[name] = {**sums[name], "sums": [old]}
    group.attrs["checksums"] = sums
    del group.attrs["attribute_sums"]  # recorded by runs written after both of these digests
    assert np.array_equal(sketchmine.open_run(path).topk("features.3")[1], data)
    [chunk] = [c for c in _chunks(path, name) if c.is_file()]
    chunk.unlink()
    with pytest.raises(SketchmineError, match=r"damaged: array 'layers/features\.3/image_index'"):
        sketchmine.open_run(path).topk("features.3")


@pytest.mark.parametrize("array", ["dataset/labels", "eval/predictions"])
def test_a_missing_label_or_prediction_chunk_is_an_error(tmp_path, mined, array):
    path = _copy(mined, tmp_path)
    files = [c for c in _chunks(path, array) if c.is_file()]
    assert len(files) >= 3  # rows chunked by flush (100 images each)
    files[1].unlink()
    run = sketchmine.open_run(path)
    with pytest.raises(SketchmineError, match=rf"damaged: array '{array}' .*rows 100-199"):
        run.class_accuracy()
    if array == "dataset/labels":
        with pytest.raises(SketchmineError, match=rf"array '{array}'"):
            run.class_histogram("features.3")


def test_a_missing_path_chunk_is_an_error_and_image_path_reads_one(tmp_path, mined, small_test_set):
    path = _copy(mined, tmp_path)
    run = sketchmine.open_run(path)
    assert run.image_path(150) == small_test_set.path(150)
    assert run.image_path(np.int64(7)) == small_test_set.path(7)
    for bad in (300, -1):
        with pytest.raises(SketchmineError, match=r"numbered 0 to 299"):
            run.image_path(bad)
    with pytest.raises(SketchmineError, match="integer"):
        run.image_path("3")
    _chunks(path, "dataset/paths")[0].unlink()
    run = sketchmine.open_run(path)
    assert run.image_path(150) == small_test_set.path(150)  # in another chunk
    with pytest.raises(SketchmineError, match=r"array 'dataset/paths'.*rows 0-99"):
        run.image_path(5)


def test_layer_misuse_is_a_clear_error(tmp_path, mined):
    run = sketchmine.open_run(mined)
    for bad in (0, None, ["features.3"]):
        with pytest.raises(SketchmineError, match="named by a string"):
            run.topk(bad)
    for bad in ("../dataset", "features.3/../../dataset", "a/b", ".."):
        with pytest.raises(SketchmineError, match="not a layer name"):
            run.topk(bad)
    # a run whose layer list was edited to reach outside layers/ is refused when opened
    path = _copy(mined, tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["layer_names"] = ["../dataset", "features.3"]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SketchmineError, match="layer_names"):
        sketchmine.open_run(path)


# ---- 11: reading a run while it is mined ----------------------------------------------------------
_SLOW_MINE = """
import sys
import sketchmine
from sketchmine.data import animal_shape
from sketchmine.model.models import load_model, preprocessing_for
from tests.helpers import per_class_subset

model = load_model("demo")
ds = per_class_subset(animal_shape("test", preprocessing_for(model)), 40, "0:400")
sketchmine.mine(model.module, ds, out=sys.argv[1], batch_size=2, flush_every=1, num_workers=0)
"""


def test_reads_while_mined_see_a_commit_or_a_clear_retry(tmp_path):
    from sketchmine.results.analysis import class_stats

    out = tmp_path / "run.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_MINE, str(out)], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    rounds, retry, seen = 0, 0, set()
    try:
        while rounds < 50 and proc.poll() is None:
            if not (out / "zarr.json").exists():
                time.sleep(0.02)
                continue
            try:
                run = sketchmine.open_run(out)
                for layer in run.layers[rounds % 3::3]:  # a third of the layers per round, all in turn
                    values, index, yx = run.topk(layer)
                    c = run.layer_shape(layer)[0]
                    assert values.shape == index.shape == (c, 9) and yx.shape == (c, 9, 2)
                    assert ((index >= -1) & (index < 400)).all()
                    ok = index >= 0
                    assert (ok[:, :-1] >= ok[:, 1:]).all()  # filled slots first
                    v = np.where(ok, values, -np.inf)
                    assert (v[:, :-1] >= v[:, 1:]).all()  # best first
                    assert len(set(ok.sum(1))) == 1  # every unit has seen the same images: one commit
                    hist = run.class_histogram(layer)  # (perhaps of a newer commit)
                    assert hist.sum() % c == 0 and ok.sum() <= hist.sum() <= 9 * c
                    mean, count = class_stats(run, layer)
                    assert mean.shape == count.shape and count.shape[0] == c
                acc = run.class_accuracy()
                assert acc["count"].sum() <= 400
                seen.add(run.images_done)
            except SketchmineError as exc:
                if "no results" in str(exc) and "nothing is committed" in str(exc):
                    continue  # created, nothing committed yet
                assert "being written by another process" in str(exc) and "retry" in str(exc), exc
                retry += 1
            rounds += 1
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == 0, proc.stderr.read()
    print(f"{rounds} rounds, {retry} told to retry, commits seen: {sorted(seen)}")
    assert rounds >= 10 and len(seen) >= 3, (rounds, seen)
    assert retry <= rounds // 2, (retry, rounds)
    run = sketchmine.open_run(out)
    assert run.complete and run.images_done == 400


# ---- 16: a half-written importance group ---------------------------------------------------------
def _importance(units: int):
    from sketchmine.passes.importance import Importance

    rng = np.random.default_rng(0)
    return Importance(*(rng.random(units) for _ in range(4)), attrs={"images": 300, "base_accuracy": 0.5,
                                                                    "method": "split"})


def test_a_half_written_importance_group_counts_as_not_computed(tmp_path, mined):
    from sketchmine.passes.importance import read_importance, write_importance

    path = _copy(mined, tmp_path)
    run = sketchmine.open_run(path)
    write_importance(run, "classifier.4", _importance(256))
    assert len(run.unit_importance("classifier.4")) == 256 and run.has_importance("classifier.4")
    # as a write interrupted between arrays leaves it (written before the marker): one array
    # gone, and the attributes that came last never written
    imp = path / "layers" / "classifier.4" / "importance"
    shutil.rmtree(imp / "mean_act_wrong")
    meta = json.loads((imp / "zarr.json").read_text())
    meta["attributes"] = {}
    (imp / "zarr.json").write_text(json.dumps(meta))
    run = sketchmine.open_run(path)
    with pytest.raises(SketchmineError, match="no unit importance for 'classifier.4'"):
        read_importance(run, "classifier.4")
    assert not run.has_importance("classifier.4")
    # the marker alone missing counts the same
    write_importance(run, "classifier.4", _importance(256))
    meta = json.loads((imp / "zarr.json").read_text())
    del meta["attributes"]["complete"]
    meta["attributes"] = {}
    (imp / "zarr.json").write_text(json.dumps(meta))
    assert not sketchmine.open_run(path).has_importance("classifier.4")
    # an array gone from a group its marker says was written whole (the group is written aside and
    # renamed into place, its checksums naming its arrays): damage, not a result never computed
    write_importance(run, "classifier.4", _importance(256))
    (imp / "acc_drop" / "zarr.json").unlink()
    with pytest.raises(RunDamaged, match="importance/acc_drop' is missing"):
        sketchmine.open_run(path).unit_importance("classifier.4")


def test_an_interrupted_importance_write_leaves_the_earlier_result_and_report_works(tmp_path, mined):
    import zarr

    from sketchmine.passes.importance import write_importance
    from sketchmine.present.report import write_report

    path = _copy(mined, tmp_path)
    run = sketchmine.open_run(path)
    # a first write killed half-way leaves its staging group (no marker), never "importance"
    staging = zarr.open_group(str(path / "layers" / "features.3" / "importance.writing"), mode="w")
    staging.create_array("prob_drop", shape=(64,), dtype="float64")[:] = np.ones(64)
    with pytest.raises(SketchmineError, match="no unit importance"):
        run.unit_importance("features.3")
    write_report(run, tmp_path / "report", images=False)
    # the next write replaces the leftover; a later interrupted one leaves the earlier result
    write_importance(run, "features.3", _importance(64))
    assert not (path / "layers" / "features.3" / "importance.writing").exists()
    first = run.unit_importance("features.3")
    staging = zarr.open_group(str(path / "layers" / "features.3" / "importance.writing"), mode="w")
    staging.create_array("prob_drop", shape=(64,), dtype="float64")[:] = np.zeros(64)
    again = sketchmine.open_run(path).unit_importance("features.3")
    assert again.equals(first) and again.attrs == first.attrs == {"images": 300, "base_accuracy": 0.5, "method": "split"}
    index = write_report(sketchmine.open_run(path), tmp_path / "report2", images=False)
    assert "Which units matter for the label" in (index.parent / "layers").joinpath(
        next(p.name for p in (index.parent / "layers").iterdir() if "features" in p.name and "3" in p.name)).read_text()


def test_patches_of_a_unit_not_visualized_yet_is_an_error(tmp_path, mined, demo_model, small_test_set):
    from sketchmine.passes.visualize import patches_of, visualize

    path = _copy(mined, tmp_path)
    visualize(path, ["classifier.4"], model=demo_model.module, data=small_test_set, max_units=10, batch_size=27)
    run = sketchmine.open_run(path)
    done = run.layer_group("classifier.4").attrs["visualized"]["units_done"]
    assert 10 <= done < 256
    assert patches_of(run, "classifier.4", 0)["patches"].shape[0] == 3
    with pytest.raises(SketchmineError, match="no patches yet"):
        patches_of(run, "classifier.4", done)
    with pytest.raises(SketchmineError, match="units are 0 to 255"):
        patches_of(run, "classifier.4", 256)
