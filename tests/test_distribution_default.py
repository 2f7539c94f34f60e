"""The distribution statistics are opt-in (issue 16: what cannot stay within 1.05x of the bare
forward on AlexNet is opt-in and says so; session 22): a default `mine` leaves them out and
records that, distributions=True (--distributions) keeps them and records it, a resume with the
other setting is refused saying how to resume, and a resume without the argument takes the run's
setting; with them on, mining at another batch size with loader workers gives the same
distribution arrays, bit for bit (the workers, resume, SIGKILL and torchrun cases compare whole
stores mined with them in test_miner, test_kill and test_distributed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.cli.parser import build_parser
from sketchmine.data import ArrayDataset
from sketchmine.errors import SketchmineError
from tests.helpers import store_arrays

OURS = ("hist_edges", "hist_counts", "max_range", "sketch_counts", "sketch_top", "sketch_special",
        "example_edges", "example_index", "bottom_values", "bottom_image_index", "bottom_yx")


@pytest.fixture(scope="module")
def subset(small_test_set):
    ds = small_test_set
    return ArrayDataset(ds.images[:96], ds.labels()[:96], ds.class_names, ds.preprocessing, ds.describe())


def ours(path) -> dict[str, np.ndarray]:
    return {k: v for k, v in store_arrays(path).items() if k.rsplit("/", 1)[-1] in OURS and "_checkpoint" not in k}


def test_off_by_default_on_when_asked_and_resume_must_agree(tmp_path, demo_model, subset):
    off = sketchmine.mine(demo_model.module, subset, out=tmp_path / "off.zarr", batch_size=32)
    on = sketchmine.mine(demo_model.module, subset, out=tmp_path / "on.zarr", batch_size=32, distributions=True)
    assert on.attrs["distributions"] is True and off.attrs["distributions"] is False
    layer = on.layers[0]
    assert on.histogram(layer)[1].sum(1).tolist() == [96] * on.histogram(layer)[1].shape[0]
    assert len(ours(on.path)) == len(OURS) * len(on.layers) and not ours(off.path)
    with pytest.raises(SketchmineError, match="mined without distributions"):
        off.histogram(layer)
    assert off.firing_density(layer).shape == (on.histogram(layer)[1].shape[0],)  # always kept
    from tests.helpers import StopAfter

    for asked, other in ((True, False), (None, True)):
        partial = tmp_path / f"partial-{asked}.zarr"
        with pytest.raises(KeyboardInterrupt):
            sketchmine.mine(demo_model.module, subset, out=partial, batch_size=32, flush_every=1,
                            distributions=asked, progress=StopAfter(40))
        had = bool(asked)
        with pytest.raises(SketchmineError, match=rf"distributions \(run: {had}, now: {other}; pass "
                                                  rf"distributions={had} / --{'' if had else 'no-'}distributions"):
            sketchmine.mine(demo_model.module, subset, out=partial, batch_size=32, flush_every=1, distributions=other)
        resumed = sketchmine.mine(demo_model.module, subset, out=partial, batch_size=32, flush_every=1)  # the run's
        assert resumed.attrs["distributions"] is had and resumed.images_done == 96
        assert len(ours(partial)) == (len(OURS) * len(on.layers) if had else 0)


def test_the_cli_flag_defaults_to_the_run_or_off_and_switches_on():
    parser = build_parser()
    base = ["mine", "--model", "demo", "--data", "x", "--out", "y"]
    assert parser.parse_args(base).distributions is None  # the run's on resume, else off
    assert parser.parse_args([*base, "--distributions"]).distributions is True
    assert parser.parse_args([*base, "--no-distributions"]).distributions is False


def exact_net() -> torch.nn.Module:
    """Max-pools and a clamp: exact float ops, so the activations are the same bits at any batch
    size (a GEMM's rounding may change with the batch), with many ties at the clamp's bounds."""
    return torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.Hardtanh(-0.5, 0.5), torch.nn.MaxPool2d(3))


def test_batch_size_and_workers_give_the_same_distribution_arrays(tmp_path, subset):
    kw = {"layers": ["0", "1", "2"], "logits": False, "distributions": True}
    a = sketchmine.mine(exact_net(), subset, out=tmp_path / "a.zarr", batch_size=96, **kw)
    b = sketchmine.mine(exact_net(), subset, out=tmp_path / "b.zarr", batch_size=7, num_workers=2, **kw)
    got, want = ours(b.path), ours(a.path)
    assert set(got) == set(want) and len(want) == 3 * len(OURS)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
