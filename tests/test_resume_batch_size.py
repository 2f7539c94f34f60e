"""A resume at another batch size is allowed (a batch that fits after an out-of-memory) and
said: CPU matrix products round the last bit by batch size, so the result can equal neither
uninterrupted run in ties (found by an audit: it was accepted without a word). The same batch
size resumes bit-identically."""
from __future__ import annotations

import sketchmine
from tests.helpers import StopAfter, assert_same_store, per_class_subset


def test_a_resume_at_another_batch_size_is_said(tmp_path, demo_model, small_test_set):
    data = per_class_subset(small_test_set, 6, "resume_bs")
    out = tmp_path / "run.zarr"
    try:
        sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=16, flush_every=1, progress=StopAfter(32))
    except KeyboardInterrupt:
        pass
    assert sketchmine.open_run(out).attrs["batch_size"] == 16
    resumed = StopAfter(10**6)
    sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=5, flush_every=1, progress=resumed)
    assert [n for n in resumed.notes if "resuming at batch size 5, mined so far at 16" in n]
    again = StopAfter(10**6)
    sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=5, progress=again)  # complete: nothing to say
    assert not [n for n in again.notes if "resuming at batch size" in n]


def test_the_same_batch_size_resumes_identical_without_a_note(tmp_path, demo_model, small_test_set):
    data = per_class_subset(small_test_set, 6, "resume_bs")
    ref, out = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    sketchmine.mine(demo_model.module, data, k=3, out=ref, batch_size=16, flush_every=1)
    try:
        sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=16, flush_every=1, progress=StopAfter(32))
    except KeyboardInterrupt:
        pass
    resumed = StopAfter(10**6)
    sketchmine.mine(demo_model.module, data, k=3, out=out, batch_size=16, flush_every=1, progress=resumed)
    assert not [n for n in resumed.notes if "resuming at batch size" in n]
    assert_same_store(out, ref)
