"""Issue 14, the miner's own cases: what changes results is in the resume check (5), k is
clamped to the dataset (14), a random-init model is seeded and reloadable (15), and the
counts and device are refused with one clear error before anything is read."""
from __future__ import annotations

import pytest
import torch

import sketchmine
from sketchmine.errors import SketchmineError
from tests.helpers import StopAfter, assert_same_store, per_class_subset


@pytest.fixture(scope="module")
def tiny_set(small_test_set):
    """40 real test images, 4 per class."""
    return per_class_subset(small_test_set, 4, "0:40")


def _interrupted(model, ds, out, **options):
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(model, ds, out=out, batch_size=8, flush_every=1, progress=StopAfter(16), **options)
    assert not sketchmine.open_run(out).complete


@pytest.mark.parametrize("first, then, what", [
    ({}, {"autocast": "bf16"}, r"forward option autocast \(run: None, now: bf16\)"),
    ({"autocast": "bf16"}, {}, r"forward option autocast \(run: bf16, now: None\)"),
    ({}, {"channels_last": True}, r"forward option channels_last \(run: False, now: True\)"),
])
def test_resume_with_other_forward_options_is_refused(tmp_path, demo_model, tiny_set, first, then, what):
    """Case 5: `--autocast bf16` added on resume was accepted and not recorded (33 arrays
    differed from a clean run); now it is part of the resume check and of the run."""
    out = tmp_path / "run.zarr"
    _interrupted(demo_model.module, tiny_set, out, **first)
    with pytest.raises(SketchmineError, match="forward option") as info:
        sketchmine.mine(demo_model.module, tiny_set, out=out, batch_size=8, **then)
    assert __import__("re").search(what, str(info.value)), str(info.value)
    # a refused resume leaves the caller's module as it was (channels-last weights changed its numbers)
    assert all(p.is_contiguous() for p in demo_model.module.parameters())
    recorded = sketchmine.open_run(out).attrs["forward_options"]
    assert recorded["autocast"] == first.get("autocast")
    # the same options resume and end identical to an uninterrupted run with them
    run = sketchmine.mine(demo_model.module, tiny_set, out=out, batch_size=8, flush_every=1, **first)
    clean = sketchmine.mine(demo_model.module, tiny_set, out=tmp_path / "clean.zarr", batch_size=8, **first)
    assert run.complete
    assert_same_store(out, clean.path)


def test_run_without_forward_options_record_resumes_as_plain(tmp_path, demo_model, tiny_set):
    """A run written before the record existed was mined with the plain forward: it resumes
    with the plain options and refuses others."""
    out = tmp_path / "run.zarr"
    _interrupted(demo_model.module, tiny_set, out)
    import zarr

    group = zarr.open_group(str(out), mode="r+")
    attrs = dict(group.attrs)
    del attrs["forward_options"]
    group.attrs.put(attrs)
    with pytest.raises(SketchmineError, match="forward option"):
        sketchmine.mine(demo_model.module, tiny_set, out=out, batch_size=8, autocast="bf16")
    assert sketchmine.mine(demo_model.module, tiny_set, out=out, batch_size=8).complete


def test_k_larger_than_the_dataset_is_clamped_and_said(tmp_path, demo_model, tiny_set):
    """Case 14: -k 100000 on 200 images allocated (C, 100000) per layer (4.8 GB for the demo)."""
    notes = StopAfter(10**9)
    run = sketchmine.mine(demo_model.module, tiny_set, out=tmp_path / "r.zarr", k=100000, batch_size=16,
                          progress=notes)
    assert run.k == len(tiny_set) == 40
    values, index, _ = run.topk("features.0")
    assert values.shape == (32, 40)
    assert sorted(index[0].tolist()) == list(range(40))  # every image, each once
    assert sum("k=100000" in n and "k=40" in n for n in notes.notes) == 1


def test_random_init_model_is_seeded_recorded_and_reloadable(tmp_path, tiny_set):
    """Case 15: a run of a randomly initialised model could never be resumed, visualized or
    ablated ("different model weights"). Now the seed is recorded and honoured."""
    from sketchmine.model.models import load_model, weights_hash
    from sketchmine.passes.reload import run_model

    a, b, c = load_model("sketchnet"), load_model("sketchnet"), load_model("sketchnet", seed=1)
    assert a.random_init and weights_hash(a.module) == weights_hash(b.module) != weights_hash(c.module)
    before = torch.random.get_rng_state()
    load_model("sketchnet", seed=5)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's random state is untouched
    out = tmp_path / "r.zarr"
    notes = StopAfter(16)
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("sketchnet", tiny_set, out=out, batch_size=8, flush_every=1, progress=notes, seed=3)
    assert any("random weights" in n and "seed 3" in n for n in notes.notes)
    run = sketchmine.mine("sketchnet", tiny_set, out=out, batch_size=8, seed=3)  # resumes
    assert run.complete and run.attrs["model_spec"]["seed"] == 3
    assert weights_hash(run_model(run).module) == run.attrs["weights_hash"]
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("sketchnet", tiny_set, out=tmp_path / "other.zarr", batch_size=8, flush_every=1, seed=4,
                        progress=StopAfter(16))
    with pytest.raises(SketchmineError, match="model weights"):  # another seed is another model
        sketchmine.mine("sketchnet", tiny_set, out=tmp_path / "other.zarr", batch_size=8, seed=3)
    # trained weights record no seed
    assert "seed" not in sketchmine.mine("demo", tiny_set, out=tmp_path / "d.zarr").attrs["model_spec"]


def _mined_before_xxh3(ds, out) -> tuple[str, str]:
    """A partial run of sketchnet (seed 3) at `out` whose weights are recorded as runs mined before
    the xxh3 identity recorded them (a bare sha256, `weights_sha256`): (its xxh3 identity, the sha256)."""
    import hashlib
    import json

    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("sketchnet", ds, out=out, batch_size=8, flush_every=1, seed=3, progress=StopAfter(16))
    meta = json.loads((out / "zarr.json").read_text())
    identity = meta["attributes"].pop("weights_hash")
    sha = hashlib.sha256()  # the old identity, computed here the way it was then
    for name, t in sketchmine.load_model("sketchnet", seed=3).module.state_dict().items():
        sha.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        sha.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    meta["attributes"]["weights_sha256"] = sha.hexdigest()
    (out / "zarr.json").write_text(json.dumps(meta))
    return identity, sha.hexdigest()


def test_runs_that_recorded_a_sha256_of_the_weights_still_resume_and_reload(tmp_path, tiny_set):
    """Runs mined before the xxh3 weights identity recorded a bare sha256 as `weights_sha256`:
    they resume (the weights hashed their way), reload for later passes, and other weights are
    still refused."""
    from sketchmine.model.models import load_model, weights_hash, weights_match
    from sketchmine.passes.reload import run_model

    out = tmp_path / "old.zarr"
    identity, sha = _mined_before_xxh3(tiny_set, out)
    module = load_model("sketchnet", seed=3).module
    assert identity == weights_hash(module) and identity.startswith("xxh3_128:")
    assert weights_hash(module, "sha256") == f"sha256:{sha}"

    with pytest.raises(SketchmineError, match="model weights"):  # another seed, hashed by sha256
        sketchmine.mine("sketchnet", tiny_set, out=out, batch_size=8, seed=4)
    run = sketchmine.mine("sketchnet", tiny_set, out=out, batch_size=8, seed=3)  # resumes
    assert run.complete and run.attrs["weights_sha256"] == sha and "weights_hash" not in run.attrs
    assert_same_store(out, sketchmine.mine("sketchnet", tiny_set, out=tmp_path / "new.zarr", batch_size=8, seed=3).path)
    assert weights_hash(run_model(run).module) == identity
    assert weights_match(module, run.attrs) and not weights_match(load_model("sketchnet", seed=1).module, run.attrs)


def test_a_sha256_run_resumed_hashes_its_weights_once(tmp_path, tiny_set, monkeypatch):
    """Resuming a run that recorded a sha256 of its weights hashed them twice: xxh3 on a thread
    as mining started, then sha256 once the run was read, the first hash thrown away. The
    recorded algorithm is read first now: each hasher made (the real one, counted) is sha256."""
    from sketchmine.model import forward

    out = tmp_path / "old.zarr"
    _mined_before_xxh3(tiny_set, out)
    made: list[str] = []

    def counted(algorithm: str):
        made.append(algorithm)
        return real(algorithm)

    real = forward.weights_hasher
    monkeypatch.setattr(forward, "weights_hasher", counted)
    assert sketchmine.mine("sketchnet", tiny_set, out=out, batch_size=8, seed=3).complete
    assert made == ["sha256"]
    made.clear()  # a new run: xxh3, once
    sketchmine.mine("sketchnet", tiny_set, out=tmp_path / "new.zarr", batch_size=8, seed=3)
    assert made == ["xxh3_128"]


def test_a_resume_walks_the_run_for_writability_once(tmp_path, demo_model, tiny_set, monkeypatch):
    """A resume walked the run's folders twice to check this user may write them: when mine()
    opened the run ahead of its lock, and again under the lock. The second open takes the first's
    check while the run folder is the one it opened: the real check, counted, runs once."""
    from sketchmine.store import runstore

    out = tmp_path / "run.zarr"
    _interrupted(demo_model.module, tiny_set, out)
    walked: list[str] = []

    def counted(run, why: str) -> None:
        walked.append(str(run))
        real(run, why)

    real = runstore.check_run_writable
    monkeypatch.setattr(runstore, "check_run_writable", counted)
    assert sketchmine.mine(demo_model.module, tiny_set, out=out, batch_size=8).complete
    assert walked == [str(out)]


@pytest.mark.parametrize("option, value, message", [
    ("flush_every", 0, r"flush_every \(--flush-every\) must be a whole number of at least 1, got 0"),
    ("flush_every", -1, r"flush_every \(--flush-every\) must be a whole number of at least 1, got -1"),
    ("num_workers", -1, r"num_workers \(--workers\) must be a whole number of at least 0, got -1"),
    ("batch_size", 0, r"batch_size \(--batch-size\) must be a whole number of at least 1"),
    ("k", 0, r"k \(-k\) must be a whole number of at least 1"),
    ("device", "banana", r"unknown device 'banana'"),
])
def test_bad_counts_and_devices_are_refused_before_anything_is_written(tmp_path, demo_model, tiny_set,
                                                                      option, value, message):
    """Case 12 (the API side): these were tracebacks, or a loop that never flushed."""
    out = tmp_path / "r.zarr"
    with pytest.raises(SketchmineError, match=message):
        sketchmine.mine(demo_model.module, tiny_set, out=out, **{option: value})
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, demo_model, tiny_set):
    with pytest.raises(SketchmineError, match="no CUDA GPU"):
        sketchmine.mine(demo_model.module, tiny_set, out=tmp_path / "r.zarr", device="cuda")
    assert not (tmp_path / "r.zarr").exists()


def test_parameters_that_would_not_act_are_refused(tmp_path, demo_model, tiny_set):
    """The audit's silently ignored parameters: weights with a model carrying its own, a seed
    for a model that is not randomly initialised, ink without drawings, an empty layer list."""
    out = tmp_path / "r.zarr"
    with pytest.raises(SketchmineError, match="carries its own weights"):
        sketchmine.mine("demo", tiny_set, out=out, weights=tmp_path / "nothing.pt")
    with pytest.raises(SketchmineError, match="carries its own weights"):
        sketchmine.mine(demo_model.module, tiny_set, out=out, weights=tmp_path / "nothing.pt")
    with pytest.raises(SketchmineError, match="seed 7 given with model 'demo'"):
        sketchmine.mine("demo", tiny_set, out=out, seed=7)
    with pytest.raises(SketchmineError, match="ink='dark' applies to progressive drawings"):
        sketchmine.mine("demo", tiny_set, out=out, ink="dark")
    with pytest.raises(SketchmineError, match="unknown ink"):
        sketchmine.mine("demo", tiny_set, out=out, ink="bogus")
    with pytest.raises(SketchmineError, match=r"layers=\[\] names no layer"):
        sketchmine.mine("demo", tiny_set, out=out, layers=[])
    assert not out.exists()


def test_other_normalisation_numbers_do_not_resume(tmp_path, tiny_set):
    """The resume key held preset, channels and size only: a resume with other mean/std
    finished a run with both normalisations mixed, recorded as the first."""
    from sketchmine.data import ArrayDataset, Preprocessing

    def subset(pre):
        return ArrayDataset(tiny_set.images, tiny_set.labels(), tiny_set.class_names, pre, tiny_set.describe())

    a, b = Preprocessing("none", 1, None, (0.5,), (0.5,)), Preprocessing("none", 1, None, (0.0,), (0.05,))
    out = tmp_path / "r.zarr"
    _interrupted("demo", subset(a), out)
    with pytest.raises(SketchmineError, match=r"other settings: preprocessing mean and std \(run: 0\.5,0\.5, now: "
                                              r"0,0\.05\)\. Use another --out for a new run$"):  # mined images: kept
        sketchmine.mine("demo", subset(b), out=out, batch_size=8)
    assert sketchmine.mine("demo", subset(a), out=out, batch_size=8).complete


def test_the_size_fix_refused_on_the_run_its_error_left_says_the_run_is_empty(tmp_path, tiny_set):
    """"images differ in size … pass --image-size" stops after the run is made; the fix was then
    refused as "preprocessing (run: model/1/None/0.2…, now: model/1/(28, 28)…)", nothing saying
    the run holds no image."""
    from PIL import Image

    from sketchmine.data import export_image_folder

    root = export_image_folder(tiny_set, tmp_path / "images")
    odd = sorted((root / tiny_set.class_names[-1]).iterdir())[-1]
    Image.open(odd).resize((32, 32)).save(odd)
    out = tmp_path / "r.zarr"
    with pytest.raises(SketchmineError, match="images differ in size"):
        sketchmine.mine("demo", root, out=out, layers=["features.0"], batch_size=8)
    with pytest.raises(SketchmineError, match=rf"other settings: preprocessing image size \(run: the images' own, now: "
                                              rf"\(28, 28\)\)\. Use another --out for a new run \(this one holds no "
                                              rf"mined image yet, .*: remove {out} to mine there anew\)"):
        sketchmine.mine("demo", root, out=out, layers=["features.0"], batch_size=8, image_size=28)


def test_a_torch_dataset_that_cannot_read_a_file_is_skipped_on_request(tmp_path, tiny_set):
    """skip_bad_images had no effect for a plain torch Dataset: its OSError propagated raw."""
    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            if i == 5:
                raise OSError(f"cannot open file {i}.png")
            return tiny_set[i][1], int(tiny_set.labels()[i])

    with pytest.raises(SketchmineError, match=r"cannot read image #5: OSError: cannot open file 5\.png"):
        sketchmine.mine("demo", Files(), out=tmp_path / "a.zarr", batch_size=4)
    run = sketchmine.mine("demo", Files(), out=tmp_path / "b.zarr", batch_size=4, skip_bad_images=True)
    assert [b["index"] for b in run.attrs["bad_images"]] == [5]
    assert 5 not in run.topk("features.0")[1]


def test_later_passes_refuse_counts_that_would_not_act(tmp_path, tiny_set):
    """visualize(max_units<=0) did nothing and returned; unit_importance(units_per_pass<0)
    stored zero importance for every unit; n<=0 in top_classes/compare read as "all but |n|"."""
    run = sketchmine.mine("demo", tiny_set, out=tmp_path / "r.zarr", layers=["features.0", "classifier.6"])
    with pytest.raises(SketchmineError, match="max_units must be a whole number of at least 1"):
        sketchmine.visualize(run, data=tiny_set, max_units=0)
    with pytest.raises(SketchmineError, match="units_per_pass must be a whole number of at least 1"):
        sketchmine.unit_importance(run, "features.0", dataset=tiny_set, units_per_pass=-1)
    with pytest.raises(SketchmineError, match="no layer given"):
        sketchmine.unit_importance(run, [], dataset=tiny_set)
    with pytest.raises(SketchmineError, match="^unknown device 'banana': expected cpu, cuda or cuda:N$"):
        sketchmine.unit_importance(run, "features.0", dataset=tiny_set, device="banana")
    with pytest.raises(SketchmineError, match="both data= and dataset="):  # one argument, two names
        sketchmine.unit_importance(run, "features.0", data=tiny_set, dataset=tiny_set)
    with pytest.raises(SketchmineError, match="n must be a whole number of at least 1, got -1"):
        run.top_classes("features.0", -1)
    with pytest.raises(SketchmineError, match="got 0"):
        sketchmine.compare(run, run, 0)
    assert len(run.top_classes("features.0", 3)) == 3


def test_report_refuses_a_dataset(tmp_path, tiny_set):
    """write_report(dataset=<another>) was accepted: a note inside a layer page at most. The
    report now reads the store only, so any dataset is refused, saying what to run instead."""
    from sketchmine.data import ArrayDataset
    from sketchmine.present.report import write_report

    run = sketchmine.mine("demo", tiny_set, out=tmp_path / "r.zarr", layers=["features.0"])
    other = ArrayDataset(tiny_set.images[:30], tiny_set.labels()[:30], tiny_set.class_names,
                         tiny_set.preprocessing, {})
    for ds in (other, tiny_set):
        with pytest.raises(SketchmineError, match="reads the run store only.*sketchmine visualize"):
            write_report(run, tmp_path / "rep", dataset=ds)
    assert not (tmp_path / "rep").exists()
    assert write_report(run, tmp_path / "rep").is_file()


def test_every_table_of_images_names_their_files(tmp_path, tiny_set):
    """Case 7's last part: Run.image_path(i) and a path column wherever a table lists images."""
    run = sketchmine.mine("demo", tiny_set, out=tmp_path / "r.zarr", layers=["features.0"])
    table = run.unit_table("features.0")
    assert list(table["path"]) == [run.image_path(i) for i in table["image_index"]]
    assert list(run.unit_classes("features.0", 3)["path"]) == list(table[table["unit"] == 3]["path"])
