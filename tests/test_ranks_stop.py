"""A rank that stops with its own error under a process group the caller initialised: the other
ranks stop with it at once, and the group stays usable.

Under torchrun the failing process ends and torchrun stops the others. A caller's group outlives
the call (a notebook, a job that goes on after an error it caught): rank 0 waited in the gather for
the failing rank's state for as long as that process lived (up to the group's timeout, 30 minutes
by default)."""
from __future__ import annotations

import datetime
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import sketchmine
from sketchmine.data import ArrayDataset, export_image_folder
from tests.test_distributed import rendezvous

TIMEOUT = 60  # seconds: the group's timeout, so a rank left waiting fails the test instead of hanging it


def _rank(rank: int, meet: str, folder: str, out: str, result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=TIMEOUT))
    try:
        start = time.monotonic()
        try:
            sketchmine.mine("demo", folder, out=out, batch_size=4, flush_every=50, num_workers=0)
            said = "ok"
        except Exception as exc:  # noqa: BLE001  (the test reads which error each rank saw)
            said = f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - start
        together = torch.tensor([rank + 1])
        dist.all_reduce(together)  # the group is still in step: both ranks meet here
        Path(f"{result}.{rank}").write_text(f"{took:.1f} {int(together)}\n{said}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["bear/00003a.png", "bear/00000a.png"])  # index 4: rank 1's batch; 1: rank 0's
def test_a_ranks_error_stops_the_others_at_once_and_leaves_the_group_usable(tmp_path, demo_test_set, name):
    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:8] for c in range(10)])
    folder = export_image_folder(ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names, ds.preprocessing,
                                              ds.describe()), tmp_path / "images")
    (folder / name).write_bytes(b"not a png" * 10)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    failing = (names.index(name) // 4) % 2  # batches of 4 dealt in turn; the other rank mines on to its gather
    assert failing == (name == "bear/00003a.png")
    result = str(tmp_path / "result")
    torch.multiprocessing.spawn(_rank, args=(rendezvous(tmp_path), str(folder), str(tmp_path / "run.zarr"), result),
                                nprocs=2, join=True)
    said = [Path(f"{result}.{r}").read_text().split("\n", 1) for r in range(2)]
    own = said[failing][1]
    assert own.startswith(f"SketchmineError: cannot read image {name}"), said
    assert said[1 - failing][1] == f"SaidOnRankZero: rank {failing} stopped: " + own[len("SketchmineError: "):], said
    for took_and_sum, _ in said:
        took, together = took_and_sum.split()
        assert float(took) < TIMEOUT / 2 and together == "3", said
