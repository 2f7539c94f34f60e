"""A resume at another batch size is allowed (a batch that fits after an out-of-memory) and
said: CPU matrix products round the last bit by batch size, so the result can equal neither
uninterrupted run in ties (found by an audit: it was accepted without a word). The same batch
size resumes bit-identically."""
from __future__ import annotations

import io

import sketchmine
from tests.helpers import StopAfter, assert_same_store, per_class_subset


def _interrupted(demo_model, data, out) -> None:
    """`out` mined at batch size 16, stopped after 32 images (a commit after every batch)."""
    try:
        sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=16, flush_every=1, progress=StopAfter(32))
    except KeyboardInterrupt:
        pass


def test_a_resume_at_another_batch_size_is_said(tmp_path, demo_model, small_test_set):
    data = per_class_subset(small_test_set, 6, "resume_bs")
    out = tmp_path / "run.zarr"
    _interrupted(demo_model, data, out)
    assert sketchmine.open_run(out).attrs["batch_size"] == 16
    cut = sketchmine.open_run(out).images_done
    resumed = StopAfter(10**6)
    sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=5, flush_every=1, progress=resumed)
    assert [n for n in resumed.notes if "resuming at batch size 5, mined so far at 16" in n]
    again = StopAfter(10**6)
    run = sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=5, progress=again)  # complete: nothing to say
    assert not [n for n in again.notes if "resuming at batch size" in n]
    assert cut and run.batch_sizes == [(0, 16), (cut, 5)]  # recorded, not only said (it was said alone)


def test_each_stretch_of_batch_size_is_recorded_and_a_redone_one_goes(tmp_path, demo_model, small_test_set):
    """Resumed twice at other sizes, once from a commit no later than the last resume's: the
    record lists each stretch still in the run, and a plain run lists its one size."""
    from rich.console import Console

    from sketchmine.present.console import print_summary
    from sketchmine.present.json_out import summary_data

    data = per_class_subset(small_test_set, 6, "resume_bs")
    out = tmp_path / "run.zarr"
    kwargs = dict(k=3, out=out, flush_every=1)
    done = []
    for size, stop in ((16, 32), (8, 40), (4, 4)):  # the third call stops before its first commit
        try:
            sketchmine.mine(demo_model.module, data, batch_size=size, progress=StopAfter(stop), **kwargs)
        except KeyboardInterrupt:
            pass
        done.append(sketchmine.open_run(out).images_done)
    assert done[0] < done[1] == done[2], done
    said = StopAfter(10**6)
    run = sketchmine.mine(demo_model.module, data, batch_size=6, progress=said, **kwargs)
    assert [n for n in said.notes if "resuming at batch size 6, mined so far at 8" in n]  # not 4: nothing of it stayed
    assert run.batch_sizes == [(0, 16), (done[0], 8), (done[1], 6)], run.batch_sizes  # 4 mined nothing that stayed
    assert summary_data(run, 3)["batch_sizes"] == [[0, 16], [done[0], 8], [done[1], 6]]
    out = io.StringIO()
    print_summary(str(out_path := run.path), 3, Console(file=out, width=300))
    assert (f"mined at batch size 16 for images 0-{done[0] - 1}, 8 for images {done[0]}-{done[1] - 1}, 6 from image "
            f"{done[1]} (resumed at another size)") in " ".join(out.getvalue().split()), out.getvalue()
    plain = sketchmine.mine(demo_model.module, data, k=3, out=tmp_path / "plain.zarr", batch_size=16)
    assert plain.batch_sizes == [(0, 16)] and "batch_sizes" not in plain.attrs
    out = io.StringIO()
    print_summary(str(plain.path), 3, Console(file=out, width=300))
    assert "mined at batch size" not in out.getvalue() and out_path != plain.path


def test_the_same_batch_size_resumes_identical_without_a_note(tmp_path, demo_model, small_test_set):
    data = per_class_subset(small_test_set, 6, "resume_bs")
    ref, out = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    sketchmine.mine(demo_model.module, data, k=3, out=ref, batch_size=16, flush_every=1)
    _interrupted(demo_model, data, out)
    resumed = StopAfter(10**6)
    sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=16, flush_every=1, progress=resumed)
    assert not [n for n in resumed.notes if "resuming at batch size" in n]
    assert_same_store(out, ref)
    assert not [n for n in resumed.notes if "resuming on" in n]
    assert sketchmine.open_run(out).devices == [(0, "cpu")] and "devices" not in sketchmine.open_run(out).attrs


def test_a_resume_on_another_device_is_said_and_recorded(tmp_path, demo_model, small_test_set):
    """A run begun on a GPU and finished on the CPU (a preempted job, resumed where a machine was
    free) holds sums added in two ways: allowed, said, recorded per stretch and shown by `summary`.
    No GPU here: the partial run's record is set to the GPU's, as a GPU machine would have left it."""
    import zarr
    from rich.console import Console

    from sketchmine.present.console import print_summary
    from sketchmine.present.json_out import summary_data

    data = per_class_subset(small_test_set, 6, "resume_bs")
    out = tmp_path / "run.zarr"
    _interrupted(demo_model, data, out)
    cut = sketchmine.open_run(out).images_done
    assert cut and sketchmine.open_run(out).attrs["device"] == "cpu"
    zarr.open_group(str(out), mode="r+").update_attributes({"device": "cuda"})
    resumed = StopAfter(10**6)
    run = sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=16, flush_every=1, progress=resumed)
    assert [n for n in resumed.notes if "resuming on cpu, mined so far on cuda" in n and "--device cuda" in n]
    assert run.devices == [(0, "cuda"), (cut, "cpu")] and summary_data(run, 3)["devices"] == [[0, "cuda"], [cut, "cpu"]]
    text = io.StringIO()
    print_summary(str(run.path), 3, Console(file=text, width=300))
    assert f"mined on cuda for images 0-{cut - 1}, cpu from image {cut} (resumed on another device)" in \
        " ".join(text.getvalue().split()), text.getvalue()
    assert not sketchmine.verify_run(out).damaged  # the record is part of the completed run's sums
