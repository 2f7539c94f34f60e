"""Damaged files of a complete run with everything a run can hold (distributions, visualize's
pictures with --examples all and --optimize, importance, effects): every chunk file and metadata
document of every array, damaged, is an error naming the run and the array, never fill values or
other bytes read as results, never a raw json/Zarr exception, never "not computed". Real runs
on disk, real damage (docs/faults.md, "a chunk file of a complete run is missing or corrupt")."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sketchmine
from sketchmine.errors import RunDamaged, SketchmineError
from tests.helpers import per_class_subset

L = "features.0"


@pytest.fixture(scope="module")
def full(tmp_path_factory, demo_test_set) -> Path:
    """30 real test images mined by "demo" at features.0 with distributions, then visualized
    (top-k, bottom-k and bin pictures, feature visualisation), importance and effects."""
    from sketchmine.passes.visualize import visualize

    ds = per_class_subset(demo_test_set, 3, "0:30")
    out = tmp_path_factory.mktemp("full") / "run.zarr"
    sketchmine.mine("demo", ds, layers=[L], k=2, out=out, batch_size=30, distributions=True)
    visualize(out, data=ds, batch_size=30, examples="all", optimize=True, optimize_steps=1)
    sketchmine.unit_importance(out, L, data=ds, batch_size=30)
    sketchmine.unit_effects(out, L, data=ds, batch_size=30)
    return out


@pytest.fixture()
def run(full, tmp_path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(full, path)
    return path


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x40
    f.write_bytes(bytes(b))


DAMAGES = {"delete": lambda f, other: f.unlink(), "truncate": lambda f, other: f.write_bytes(b""),
           "half": lambda f, other: f.write_bytes(f.read_bytes()[:f.stat().st_size // 2]), "flip": lambda f, other: _flip(f),
           "swap": lambda f, other: shutil.copyfile(other, f)}


def _chunk(run: Path, array: str, i: int = 0) -> tuple[Path, Path]:
    """The i-th chunk file of `array` and another chunk with other bytes (for a swap): of the same
    array, else the same chunk of a sibling array (importance's prob_drop and acc_drop)."""
    files = sorted(p for p in (run / array).iterdir() if p.name.startswith("c"))
    others = files + sorted((run / array).parent.glob(f"*/{files[i].name}"))
    other = next((p for p in others if p != files[i] and p.read_bytes() != files[i].read_bytes()), files[i])
    return files[i], other


READS = {  # array -> a reader of it
    f"layers/{L}/importance/prob_drop": lambda r: r.unit_importance(L),
    f"layers/{L}/effects/logit_delta": lambda r: r.unit_effects(L, "logit"),
    f"layers/{L}/correlated/unit": lambda r: r.correlated_units(L),
    f"layers/{L}/bottom_pictures/patches": lambda r: r.layer_result(L, "bottom_pictures", ("patches",)),
    f"layers/{L}/bin_pictures/deconv": lambda r: r.layer_result(L, "bin_pictures", ("deconv",)),
    f"layers/{L}/patches": lambda r: r.layer_array(L, "patches"),
    f"layers/{L}/deconv": lambda r: r.unit(L, 1).pictures(),
    f"layers/{L}/boxes": lambda r: r.layer_array(L, "boxes"),
    f"layers/{L}/optimized": lambda r: r.optimized(L),
    f"layers/{L}/optimized_peak": lambda r: r.optimized(L, key="optimized_peak"),
}


DECODES = {f"layers/{L}/{a}": d for a, d in (("patches", ("truncate", "half")), ("boxes", ("truncate", "half", "swap")),
                                            ("optimized", ("truncate", "half")),
                                            ("optimized_peak", ("truncate", "half", "swap")))}
"""Damage these arrays' reader already refused: a chunk that does not decode (or, swapped with the
one of a sibling array of another size, does not fit)."""


@pytest.mark.parametrize("array, damage", [(a, d) for a in READS for d in DAMAGES if d not in DECODES.get(a, ())])
def test_results_of_later_passes_are_checksummed(run, array, damage):
    """Importance, effects, correlated units, example pictures (groups written as a unit) and
    the patches and optimised images (written a block of units at a time): before, a lost chunk
    read as fill values (importance 0.0, black patches) and a flipped byte as other numbers."""
    f, other = _chunk(run, array)
    if damage == "swap" and other == f:
        pytest.skip("one chunk")
    DAMAGES[damage](f, other)
    with pytest.raises(RunDamaged, match=f"is damaged: array '{array}'"):
        READS[array](sketchmine.open_run(run))


def test_damage_is_not_read_as_an_absent_result(run, full, capsys):
    """Readers that fall back when a result is absent (NaN accuracy, no class section, a
    dashboard section listed as missing) let damage through as the error it is."""
    from sketchmine.cli.main import main

    (run / "eval" / "predictions" / "c.0").unlink()
    for read in (lambda r: r.unit_table(L), lambda r: r.class_preference(L), lambda r: r.top_classes(L)):
        with pytest.raises(RunDamaged, match="array 'eval/predictions'"):
            read(sketchmine.open_run(run))
    shutil.rmtree(run / "eval" / "predictions")
    with pytest.raises(RunDamaged, match="array 'eval/predictions' is missing"):
        sketchmine.open_run(run).unit_table(L)
    shutil.copytree(full / "eval" / "predictions", run / "eval" / "predictions")
    _flip(_chunk(run, f"layers/{L}/class_mean")[0])
    with pytest.raises(RunDamaged, match=f"array 'layers/{L}/class_mean'"):
        sketchmine.open_run(run).unit(L, 1).top_classes()
    shutil.rmtree(run / "layers" / L / "class_mean")
    shutil.copytree(full / "layers" / L / "class_mean", run / "layers" / L / "class_mean")
    assert main(["unit", str(run), L, "1", "--json"]) == 0
    capsys.readouterr()
    _flip(_chunk(run, f"layers/{L}/hist_counts")[0])
    assert main(["unit", str(run), L, "1", "--json"]) == 3
    assert f"array 'layers/{L}/hist_counts'" in capsys.readouterr().err


def test_a_lost_array_of_the_run_is_damage_not_a_run_mined_without_it(run):
    (run / "layers" / L / "hist_counts" / "zarr.json").unlink()
    with pytest.raises(RunDamaged, match=f"array 'layers/{L}/hist_counts' is missing"):
        sketchmine.open_run(run).histogram(L)


@pytest.mark.parametrize("node, read", [
    (f"layers/{L}/values", lambda r: r.topk(L)), (f"layers/{L}", lambda r: r.topk(L)),
    ("eval", lambda r: r.accuracy()), (f"layers/{L}/hist_counts", lambda r: r.histogram(L)),
    (f"layers/{L}/importance", lambda r: r.unit_importance(L)),
    (f"layers/{L}/importance/acc_drop", lambda r: r.unit_importance(L))])
def test_metadata_that_does_not_parse_is_named(run, node, read):
    (run / node / "zarr.json").write_text('{"zarr_format": 3, "node_t')
    with pytest.raises(RunDamaged, match=f"metadata of '{node}' \\({node}/zarr.json\\) cannot be read"):
        read(sketchmine.open_run(run))


@pytest.mark.parametrize("array, dtype, read", [
    ("dataset/labels", "float64", lambda r: r.labels), (f"layers/{L}/values", "int32", lambda r: r.topk(L)),
    (f"layers/{L}/patches", "int8", lambda r: r.layer_array(L, "patches")),
    (f"layers/{L}/importance/prob_drop", "int64", lambda r: r.unit_importance(L)),
    ("dataset/class_names", "float32", lambda r: r.class_names), (f"layers/{L}/deconv", "int8", lambda r: r.unit(L, 0).pictures())])
def test_a_dtype_edited_in_the_metadata_is_refused(run, array, dtype, read):
    """Same width (int64 -> float64, float32 -> int32, uint8 -> int8): the same bytes, and their
    checksum, read as other numbers; others (a fill value the dtype cannot hold): Zarr's own error."""
    meta = json.loads((run / array / "zarr.json").read_text())
    meta["data_type"] = dtype
    (run / array / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(RunDamaged, match=f"'{array}'"):
        read(sketchmine.open_run(run))


# ---- any file, any damage: hypothesis over the run's files ----------------------------------------
def _readers(path: Path) -> dict[str, object]:
    r = sketchmine.open_run(path)
    out = {}
    for name, read in {
        "topk": lambda: r.topk(L), "bottomk": lambda: r.bottomk(L), "histogram": lambda: r.histogram(L),
        "quantiles": lambda: r.quantiles(L, [0.1, 0.5, 0.9]), "examples": lambda: r.quantile_examples(L),
        "moments": lambda: (r.firing_density(L), r.max_mean(L), r.max_range(L)), "classes": lambda: r.class_stats(L),
        "accuracy": lambda: (r.class_accuracy(), r.accuracy()), "table": lambda: r.unit_table(L),
        "preference": lambda: r.class_preference(L), "ink": lambda: r.ink_density(),
        "importance": lambda: r.unit_importance(L), "effects": lambda: r.unit_effects(L),
        "correlated": lambda: r.correlated_units(L), "optimized": lambda: r.optimized(L),
        "pictures": lambda: [r.layer_array(L, a) for a in ("patches", "deconv", "boxes", "inside")],
        "examples_pictures": lambda: [r.layer_result(L, g, ("patches", "deconv", "boxes", "inside"))
                                      for g in ("bottom_pictures", "bin_pictures")],
    }.items():
        try:
            out[name] = read()
        except SketchmineError as exc:
            out[name] = exc
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, (pd.DataFrame, pd.Series)):
        return isinstance(b, type(a)) and a.equals(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, SketchmineError):
        return isinstance(b, SketchmineError) and str(a) == str(b)
    return a == b


@pytest.fixture(scope="module")
def fuzzed(full, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzzed") / "run.zarr"
    shutil.copytree(full, path)
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != "zarr.json"
                   or p.name == "zarr.json" and p.parent != path)
    return path, files, _readers(path)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_damaged_file_is_an_error_or_reads_the_same(fuzzed, data):
    path, files, before = fuzzed
    assert not [k for k, v in before.items() if isinstance(v, SketchmineError)] and len(files) > 100
    rel = data.draw(st.sampled_from(files), label="file")
    damage = data.draw(st.sampled_from(list(DAMAGES) + (["garbage"] if rel.endswith("zarr.json") else [])), label="damage")
    f = path / rel
    kept = f.read_bytes()
    siblings = [p for p in f.parent.iterdir() if p.is_file() and p.name.startswith("c") and p.read_bytes() != kept]
    try:
        if damage == "garbage":
            f.write_text('{"zarr_format": 3, "node_t')
        elif damage != "swap" or siblings:
            DAMAGES[damage](f, siblings[0] if siblings else f)
        after = _readers(path)  # no exception but a SketchmineError escapes
    finally:
        f.write_bytes(kept)
    # a group's array gone whole (its zarr.json deleted) reads as the group not being whole: how a
    # write interrupted between arrays was once left, and what test_trust_store's
    # test_a_half_written_importance_group_counts_as_not_computed asks of it
    incomplete = damage == "delete" and rel.count("/") == 4 and rel.endswith("/zarr.json")
    for name, got in after.items():
        if incomplete and (got is None or "has no" in str(got) or isinstance(got, list) and any(x is None for x in got)):
            continue
        assert isinstance(got, SketchmineError) or _same(got, before[name]), f"{rel} {damage}: {name} read other numbers"
        if isinstance(got, SketchmineError) and not _same(got, before[name]):
            assert "damaged" in str(got), f"{rel} {damage}: {name}: {got}"


def test_a_kept_block_is_read_anew_once_rewritten(run, demo_test_set):
    """A reader keeps the blocks of pictures it checked (montages of neighbouring units read one
    block): the same Run reads the new optimised images once a `visualize --redo` rewrote them."""
    from sketchmine.passes.visualize import visualize

    opened = sketchmine.open_run(run)
    before = opened.optimized(L, 3)
    assert np.array_equal(opened.optimized(L, 3), before)  # from the kept block
    visualize(opened, data=per_class_subset(demo_test_set, 3, "0:30"), batch_size=30, redo=True, optimize=True,
              optimize_steps=3)
    after = opened.optimized(L, 3)
    assert np.array_equal(after, sketchmine.open_run(run).optimized(L, 3))
    assert not np.array_equal(after, before)


def test_a_runs_checked_final_arrays_are_read_from_disk_once(run):
    """A Run keeps the final arrays it read and checked (the report reads the class names, labels
    and top-k dozens of times): once read, their files are not read again by it, so it keeps
    returning the checked numbers after they are damaged (copies: a caller's edit changes
    nothing), while a new Run and `verify_results` read the files and say they are damaged."""
    opened = sketchmine.open_run(run)
    values, index, yx = opened.topk(L)
    names, labels = opened.class_names, opened.labels
    values[...], labels[...] = -1, -1  # the caller's copies
    for array in (f"layers/{L}/values", "dataset/labels", "dataset/class_names"):
        for f in (run / array).iterdir():
            if f.name != "zarr.json":
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    again = opened.topk(L)
    assert np.array_equal(again[1], index) and np.array_equal(again[2], yx) and (again[0] != -1).all()
    assert opened.class_names == names and (opened.labels >= 0).all()
    with pytest.raises(RunDamaged, match=rf"damaged: array 'layers/{L}/values'"):
        sketchmine.open_run(run).topk(L)
    with pytest.raises(RunDamaged, match="damaged: array"):
        opened.store.verify_results()


@pytest.mark.parametrize("array", ["eval/logits", "image", "class"])
def test_the_logits_and_the_root_coordinates_are_checksummed(run, array):
    """The logits (read through Zarr or xarray, not through Run) and the root copies of the paths
    and class names (xarray's coordinates) had no checksums: a byte flipped in them passed the
    check `mine` makes of a complete run."""
    sums = json.loads((run / "zarr.json").read_text())["attributes"]["checksums"]
    assert sums[array]["dtype"] == ("<f4" if array == "eval/logits" else "str")
    DAMAGES["flip"](*_chunk(run, array))
    with pytest.raises(RunDamaged, match=f"damaged: array '{array}'"):
        sketchmine.open_run(run).store.verify_results()


def test_mine_again_on_a_damaged_complete_run_names_the_array(run, demo_test_set):
    """`mine` on a complete run returns it: a damaged one is said then, naming the array, not
    returned as complete (to fail at every later read)."""
    ds = per_class_subset(demo_test_set, 3, "0:30")
    again = sketchmine.mine("demo", ds, layers=[L], k=2, out=run, batch_size=30, distributions=True)
    assert again.complete
    DAMAGES["flip"](*_chunk(run, f"layers/{L}/hist_counts"))  # an array the return path does not read
    with pytest.raises(RunDamaged, match=rf"damaged: array 'layers/{L}/hist_counts'"):
        sketchmine.mine("demo", ds, layers=[L], k=2, out=run, batch_size=30, distributions=True)
