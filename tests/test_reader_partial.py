"""A partial run (interrupted, read from its last checkpoint) read as a complete run reads: the
NaN activations its layers met are counted from the checkpoint's top-k state."""
from __future__ import annotations

import json

import pytest
import torch

import sketchmine
from sketchmine.cli.main import main
from tests.helpers import StopAfter, per_class_subset


class NaNColumnConv(torch.nn.Conv2d):
    """A conv whose first output column is NaN: a layer meeting NaN activations on every image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out.masked_fill(torch.arange(out.shape[-1]) == 0, float("nan"))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = NaNColumnConv(1, 4, 3)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nan_to_num(self.conv(x)).relu().mean((2, 3)))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, demo_test_set):
    """40 real test images, mined 8 at a time and stopped after 24: committed up to 16 or 24."""
    ds = per_class_subset(demo_test_set, 4, "0:40")
    net = Net()
    out = tmp_path_factory.mktemp("nan") / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(net, ds, layers=["conv"], out=out, batch_size=8, flush_every=1, progress=StopAfter(24))
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done
    x = torch.stack([ds[i][1] for i in range(run.images_done)])
    with torch.no_grad():
        want = int(torch.isnan(net.conv(x)).sum())  # the NaN the mined images gave, by plain torch
    return run, want


def test_partial_run_counts_the_nan_it_met(interrupted, capsys):
    """Before, a partial run read 0 NaN values (the final nan_count array is written only on
    completion) in nan_total, `summary`'s column and `summary --json`."""
    run, want = interrupted
    assert want > 0 and run.nan_total("conv") == want
    assert main(["summary", str(run.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["nan_count"] == want


def test_partial_run_class_sizes_leave_out_unreadable_images(tmp_path, demo_test_set):
    """A complete run's class sizes (dataset/class_image_count) leave out the images skipped as
    unreadable; a partial run's counted them, so its per-image counts and its "classes differ in
    size" note were off (bird: 3 images where 1 was readable, 3.33 top-k entries per image for 10)."""
    from tests.helpers import image_folder

    root = image_folder(demo_test_set, tmp_path / "images", per_class=4)
    broken = sorted((root / demo_test_set.class_names[0]).iterdir())[2:] + sorted((root / demo_test_set.class_names[1]).iterdir())[:2]
    for f in broken:
        f.write_bytes(b"not an image")
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine("demo", root, out=out, layers=["classifier.6"], batch_size=4, flush_every=1,
                        skip_bad_images=True, progress=StopAfter(12))
    run = sketchmine.open_run(out)
    assert not run.complete and run.images_done >= 8
    readable = [p for p in run.paths[:run.images_done] if (root / p) not in broken]
    want = [sum(p.split("/")[0] == c for p in readable) for c in run.class_names]
    assert run.class_sizes().tolist() == want and want[:2] == [2, 2]
