"""Faults and bad input: every case gets a clear SketchmineError (or a documented conversion),
and nothing already mined is lost."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import sketchmine
from sketchmine import SketchmineError
from sketchmine.errors import RunDamaged
from sketchmine.data import ArrayDataset, ImageFolderDataset, preset
from tests.helpers import StopAfter

LAYERS = ["features.3", "classifier.4", "softmax"]


@pytest.fixture(scope="module")
def mined(tmp_path_factory, demo_model, small_test_set):
    out = tmp_path_factory.mktemp("faults") / "run.zarr"
    sketchmine.mine(demo_model.module, small_test_set, layers=LAYERS, k=3, out=out, batch_size=100)
    return out


def _read_everything(path) -> None:
    """What a reader does with a run: every public accessor."""
    run = sketchmine.open_run(path)
    _ = run.layers, run.k, run.complete, run.images_done, run.class_names, run.labels, run.paths
    for layer in run.layers:
        run.layer_shape(layer)
        run.topk(layer)
        run.class_histogram(layer)
        run.top_classes(layer, 3)
    run.class_accuracy()
    run.accuracy()


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=6)
_ROOT_KEYS = ["schema_version", "layer_names", "k", "progress", "num_classes", "dataset", "preprocessing",
              "model_spec", "bad_images", "converted_images", "weights_hash"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_ROOT_KEYS), value=_json, layer_key=st.sampled_from(["shape", "kind", "receptive_field"]),
       layer_value=_json, where=st.sampled_from(["root", "layer", "both", "drop"]))
def test_attributes_edited_into_nonsense_are_refused_clearly(tmp_path_factory, mined, key, value, layer_key,
                                                             layer_value, where):
    path = tmp_path_factory.mktemp("fuzz") / "run.zarr"
    shutil.copytree(mined, path)
    root = path / "zarr.json"
    meta = json.loads(root.read_text())
    layer_meta_path = path / "layers" / "features.3" / "zarr.json"
    layer_meta = json.loads(layer_meta_path.read_text())
    if where in ("root", "both"):
        meta["attributes"][key] = value
    if where in ("layer", "both"):
        layer_meta["attributes"][layer_key] = layer_value
    if where == "drop":
        meta["attributes"].pop(key, None)
    root.write_text(json.dumps(meta))
    layer_meta_path.write_text(json.dumps(layer_meta))
    try:
        _read_everything(path)
    except SketchmineError as exc:
        assert str(path) in str(exc) or "run" in str(exc)


@pytest.mark.parametrize("garbage", [b"", b"{", b"\x00\xff" * 10, b'{"zarr_format": 3, "node_type": "group"}'])
def test_a_store_whose_root_metadata_is_garbage_is_damaged_or_not_a_run(tmp_path, mined, garbage, small_test_set):
    """Root metadata that does not parse (cut short by a copy or a sync) is a damaged run for every
    reader and for `mine`, which said "not a sketchmine run … remove it"; parseable metadata
    without the run's attributes is no run."""
    path = tmp_path / "run.zarr"
    shutil.copytree(mined, path)
    (path / "zarr.json").write_bytes(garbage)
    before = sorted((p.relative_to(path), p.read_bytes()) for p in path.rglob("*") if p.is_file())
    if garbage.startswith(b'{"'):
        with pytest.raises(SketchmineError, match="not a sketchmine run"):
            sketchmine.open_run(path)
        return
    said = rf"{path} may be a damaged run: {path}/zarr\.json does not parse as JSON \(.+\); restore it from a copy, or "
    for read in (sketchmine.open_run, sketchmine.verify_run):
        with pytest.raises(RunDamaged, match=said + "mine again with a new --out"):
            read(path)
    with pytest.raises(RunDamaged, match=said + r"choose another --out \(nothing there was changed\)"):
        sketchmine.mine("demo", small_test_set, layers=["features.0"], out=path)
    assert sorted((p.relative_to(path), p.read_bytes()) for p in path.rglob("*") if p.is_file()) == before


def test_newer_schema_is_refused(tmp_path, mined):
    path = tmp_path / "run.zarr"
    shutil.copytree(mined, path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SketchmineError, match="schema version 99.*upgrade"):
        sketchmine.open_run(path)


# ---- images ------------------------------------------------------------------------------------
def _write_folder(root, demo_test_set, per_class: int = 3):
    """A real ImageFolder of Animal-Shape images, plus the odd files the test adds."""
    for c, name in enumerate(demo_test_set.class_names[:3]):
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.nonzero(demo_test_set.labels() == c)[0][:per_class]):
            Image.fromarray(demo_test_set.images[i]).save(root / name / f"{j}.png")
    return root


def test_odd_image_files_are_converted_or_named(tmp_path, demo_test_set):
    root = _write_folder(tmp_path / "images", demo_test_set)
    gray = np.asarray(demo_test_set.images[0])
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)])).save(root / "bear" / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "bear" / "sixteen.png")
    (root / "bear" / "notes.txt").write_text("not an image, ignored by extension")
    pre = preset("none", 1, None)
    ds = ImageFolderDataset(root, pre)
    paths = [ds.path(i) for i in range(len(ds))]
    assert "bear/notes.txt" not in paths
    by_name = {p.split("/")[-1]: i for i, p in enumerate(paths)}
    plain = ds[by_name["0.png"]][1]
    rgba, sixteen = ds[by_name["rgba.png"]], ds[by_name["sixteen.png"]]
    assert rgba[3].startswith("converted:RGBA") and sixteen[3].startswith("converted:I;16")
    want = torch.from_numpy(gray).float()[None] / 255
    assert torch.allclose(rgba[1], want, atol=1 / 255) and torch.allclose(sixteen[1], want, atol=1 / 255)
    assert plain.shape == want.shape


@pytest.mark.parametrize("content", ["empty", "truncated", "text", "bomb"])
def test_unreadable_images_are_named_and_can_be_skipped(tmp_path, demo_test_set, demo_model, content):
    root = _write_folder(tmp_path / "images", demo_test_set)
    bad = root / "cat" / "bad.png"
    good = (root / "cat" / "0.png").read_bytes()
    if content == "empty":
        bad.write_bytes(b"")
    elif content == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif content == "text":
        bad.write_text("<html>not a png</html>")
    else:  # a decompression bomb: more pixels than PIL allows
        Image.new("L", (14000, 14000)).save(bad, optimize=False)
    # 3 of the model's 10 classes: no logits (mine refuses to score 10 outputs against 3 labels)
    with pytest.raises(SketchmineError, match="cat/bad.png"):
        sketchmine.mine("demo", root, out=tmp_path / "a.zarr", batch_size=4, logits=False)
    run = sketchmine.mine("demo", root, out=tmp_path / "b.zarr", batch_size=4, skip_bad_images=True, logits=False)
    assert [b["path"] for b in run.attrs["bad_images"]] == ["cat/bad.png"]
    assert run.complete and run.labels.shape[0] == 10


def test_input_size_the_model_cannot_take(tmp_path):
    ds = ArrayDataset(np.random.default_rng(0).integers(1, 255, (6, 8, 8), dtype=np.uint8), np.arange(6) % 2,
                      ["a", "b"], preset("imagenet", 3, None), {"name": "tiny"})
    with pytest.raises(SketchmineError, match=r"cannot take input of shape \(3, 8, 8\).*--image-size"):
        sketchmine.mine("alexnet", ds, out=tmp_path / "r.zarr")


def test_nan_and_inf_weights_are_counted_not_ranked(tmp_path, demo_model, small_test_set):
    import copy

    model = copy.deepcopy(demo_model.module)
    with torch.no_grad():
        model.features[3].weight[0].fill_(float("nan"))   # channel 0 of features.3: NaN everywhere
        model.features[3].bias[1] = float("inf")           # channel 1: +inf everywhere
    run = sketchmine.mine(model, small_test_set, layers=["features.3"], k=3, out=tmp_path / "r.zarr", batch_size=100)
    values, index, _ = run.topk("features.3")
    nan_count = np.asarray(run.store.group["layers/features.3/nan_count"][...])
    assert (index[0] == -1).all() and nan_count[0] == 300 * 14 * 14
    assert np.isinf(values[1]).all() and list(index[1]) == [0, 1, 2]  # ties: smaller image index first
    assert (index[2:] >= 0).all() and nan_count[2:].sum() == 0


# ---- resource faults ---------------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path):
    """A tmpfs of 700 KiB (root only; skipped elsewhere), grown later with `grow`."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)

    yield mnt, grow
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_a_clear_error_and_the_run_resumes(tmp_path, small_disk, demo_model, small_test_set):
    from tests.helpers import assert_same_store

    mnt, grow = small_disk
    kwargs = dict(batch_size=20, flush_every=1)
    sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "ref.zarr", **kwargs)
    with pytest.raises(SketchmineError, match=r"cannot write to .*No space left on device.*re-run"):
        sketchmine.mine(demo_model.module, small_test_set, out=mnt / "run.zarr", **kwargs)
    partial = sketchmine.open_run(mnt / "run.zarr")
    assert not partial.complete and partial.images_done > 0  # it failed mid-run, after some flushes
    grow()
    sketchmine.mine(demo_model.module, small_test_set, out=mnt / "run.zarr", **kwargs)
    assert_same_store(mnt / "run.zarr", tmp_path / "ref.zarr")


def test_a_full_disk_under_the_fingerprint_cache_leaves_nothing_there(tmp_path, small_disk, demo_test_set,
                                                                       monkeypatch):
    """The folder fingerprint's cache is a convenience: on a full disk it is not written, the hashes
    are still right, and no half-written copy is left in the user's cache folder."""
    from sketchmine.data import folder as folder_module
    from tests.helpers import image_folder

    mnt, _ = small_disk
    root = image_folder(demo_test_set, tmp_path / "images", per_class=3)
    rels = sorted(str(p.relative_to(root)) for p in root.glob("*/*.png"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the machine's own cache left alone
    want = folder_module.content_hashes(root, rels)
    with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
        while True:  # the disk full to its last byte: the cache file's first block finds no room
            f.write(b"\1" * 4096)
    monkeypatch.setenv("XDG_CACHE_HOME", str(mnt))
    monkeypatch.setattr(folder_module, "_HASH_CACHE", {})
    assert folder_module.content_hashes(root, rels) == want
    assert [p.name for p in mnt.rglob("*") if p.is_file()] == ["filler"]


def test_a_read_only_file_system_is_said_not_chmod(tmp_path, small_disk, demo_model, small_test_set):
    """A run or report on a file system mounted read-only (a snapshot, a read-only share): the
    writers refused it with "make it writable (chmod -R u+w …)", which no chmod can do there."""
    import subprocess

    from sketchmine.present.report import write_report

    mnt, grow = small_disk
    grow()
    kwargs = dict(layers=LAYERS, k=3, batch_size=20, flush_every=2)
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=mnt / "run.zarr", progress=StopAfter(4, calls=True),
                        **kwargs)
    done = sketchmine.mine(demo_model.module, small_test_set, out=mnt / "done.zarr", **kwargs)
    write_report(done, mnt / "report", montages=0)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    try:
        with pytest.raises(SketchmineError, match=r"run\.zarr: it is on a read-only file system, and mining resumes it "
                                                  r"in place; copy the run to a writable folder"):
            sketchmine.mine(demo_model.module, small_test_set, out=mnt / "run.zarr", **kwargs)
        with pytest.raises(SketchmineError, match=r"report folder .*report is on a read-only file system"):
            write_report(done, mnt / "report", montages=0)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)


def test_full_disk_during_visualize(tmp_path, small_disk, demo_model, small_test_set):
    from sketchmine.passes.visualize import visualize
    from tests.helpers import assert_same_store

    mnt, grow = small_disk
    layers = ["features.6"]
    sketchmine.mine(demo_model.module, small_test_set, layers=layers, out=tmp_path / "ref.zarr", batch_size=100)
    shutil.copytree(tmp_path / "ref.zarr", mnt / "run.zarr")
    visualize(tmp_path / "ref.zarr", model=demo_model.module, data=small_test_set)
    with pytest.raises(SketchmineError, match=r"cannot write to .*No space left on device.*re-run"):
        visualize(mnt / "run.zarr", model=demo_model.module, data=small_test_set)
    assert sketchmine.open_run(mnt / "run.zarr").layer_group("features.6").attrs["visualized"]["units_done"] > 0
    grow()
    visualize(mnt / "run.zarr", model=demo_model.module, data=small_test_set)
    assert_same_store(mnt / "run.zarr", tmp_path / "ref.zarr")


# ---- power cut -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,newest", [("truncate", 3), ("remove", 3), ("truncate", 9), ("remove", 9)])
def test_power_cut_losing_the_newest_chunk_files_recovers(tmp_path, demo_model, small_test_set, damage, newest):
    """Writes that never reached the disk: the newest chunk files of an interrupted run are
    truncated or gone. Resume notices (checksums), goes back to the last intact flush and
    ends identical to an uninterrupted run."""
    from tests.helpers import assert_same_store

    kwargs = dict(layers=LAYERS, k=3, batch_size=20, flush_every=2)
    sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "ref.zarr", **kwargs)
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, progress=StopAfter(9, calls=True), **kwargs)
    assert sketchmine.open_run(out).images_done == 160
    chunks = sorted((p for p in out.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".lock")),
                    key=lambda p: p.stat().st_mtime_ns)
    for p in chunks[-newest:]:
        if damage == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        else:
            p.unlink()
    progress = StopAfter(10**9, calls=True)
    sketchmine.mine(demo_model.module, small_test_set, out=out, progress=progress, **kwargs)
    assert any("damaged" in n for n in progress.notes)
    assert_same_store(out, tmp_path / "ref.zarr")


def test_unreadable_images_are_recorded_alike_when_resumed_from_another_folder(tmp_path, demo_test_set,
                                                                               monkeypatch):
    """A run begun from one folder and resumed from another (the dataset given by another relative
    path) recorded each unreadable image's error with the path as spelled in its own call:
    'a/images/bear/00003.png' before the interruption, 'work/a/images/...' after. Both now
    name the file by its absolute path, as an uninterrupted run does."""
    from tests.helpers import image_folder

    root = image_folder(demo_test_set, tmp_path / "work" / "a" / "images")
    files = sorted(root.rglob("*.png"))
    for f in (files[3], files[70]):
        f.write_bytes(b"not a png")
    kwargs = dict(batch_size=10, flush_every=1, skip_bad_images=True)
    monkeypatch.chdir(tmp_path / "work")
    whole = sketchmine.mine("demo", "a/images", out=tmp_path / "whole.zarr", **kwargs)
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", "a/images", out=tmp_path / "cut.zarr", progress=StopAfter(5, calls=True), **kwargs)
    monkeypatch.chdir(tmp_path)
    resumed = sketchmine.mine("demo", "work/a/images", out=tmp_path / "cut.zarr", **kwargs)
    assert resumed.attrs["bad_images"] == whole.attrs["bad_images"]
    assert [b["index"] for b in whole.attrs["bad_images"]] == [3, 70]
    assert all(str(files[b["index"]]) in b["error"] for b in whole.attrs["bad_images"])
