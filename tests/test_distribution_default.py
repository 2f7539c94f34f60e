"""The distribution statistics are on by default (issue 16, session 17): a default `mine` keeps
them and records it, distributions=False (--no-distributions) leaves them out and records that,
a resume with the other setting is refused saying how to resume; and with them on, mining at
another batch size with loader workers gives the same distribution arrays, bit for bit (the
workers, resume, SIGKILL and torchrun cases compare whole stores in test_miner, test_kill and
test_distributed, which now include these arrays)."""
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


def test_on_by_default_off_when_asked_and_resume_must_agree(tmp_path, demo_model, subset):
    on = sketchmine.mine(demo_model.module, subset, out=tmp_path / "on.zarr", batch_size=32)
    off = sketchmine.mine(demo_model.module, subset, out=tmp_path / "off.zarr", batch_size=32, distributions=False)
    assert on.attrs["distributions"] is True and off.attrs["distributions"] is False
    layer = on.layers[0]
    assert on.histogram(layer)[1].sum(1).tolist() == [96] * on.histogram(layer)[1].shape[0]
    assert len(ours(on.path)) == len(OURS) * len(on.layers) and not ours(off.path)
    with pytest.raises(SketchmineError, match="mined without them"):
        off.histogram(layer)
    from tests.helpers import StopAfter

    partial = tmp_path / "partial.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, subset, out=partial, batch_size=32, flush_every=1,
                        distributions=False, progress=StopAfter(40))
    with pytest.raises(SketchmineError, match=r"distributions \(run: False, now: True; pass distributions=False / "
                                              r"--no-distributions to resume it\)"):
        sketchmine.mine(demo_model.module, subset, out=partial, batch_size=32, flush_every=1, distributions=True)
    resumed = sketchmine.mine(demo_model.module, subset, out=partial, batch_size=32, flush_every=1)  # the run's
    assert resumed.attrs["distributions"] is False and resumed.images_done == 96 and not ours(partial)


def test_the_cli_flag_defaults_to_the_run_or_on_and_switches_off():
    parser = build_parser()
    base = ["mine", "--model", "demo", "--data", "x", "--out", "y"]
    assert parser.parse_args(base).distributions is None  # the run's on resume, else on
    assert parser.parse_args([*base, "--distributions"]).distributions is True
    assert parser.parse_args([*base, "--no-distributions"]).distributions is False


def exact_net() -> torch.nn.Module:
    """Max-pools and a clamp: exact float ops, so the activations are the same bits at any batch
    size (a GEMM's rounding may change with the batch), with many ties at the clamp's bounds."""
    return torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.Hardtanh(-0.5, 0.5), torch.nn.MaxPool2d(3))


def test_batch_size_and_workers_give_the_same_distribution_arrays(tmp_path, subset):
    kw = {"layers": ["0", "1", "2"], "logits": False}
    a = sketchmine.mine(exact_net(), subset, out=tmp_path / "a.zarr", batch_size=96, **kw)
    b = sketchmine.mine(exact_net(), subset, out=tmp_path / "b.zarr", batch_size=7, num_workers=2, **kw)
    got, want = ours(b.path), ours(a.path)
    assert set(got) == set(want) and len(want) == 3 * len(OURS)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
