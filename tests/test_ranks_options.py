"""Ranks that were given other settings than rank 0: refused on every rank, with both values.

The refusal named the setting only ("rank 1 sees a different k than rank 0"), so a user had to
find which value each launch passed; the resume check says both ("k (run: 9, now: 5)")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import sketchmine
from sketchmine.errors import SketchmineError
from tests.test_distributed import rendezvous


def _rank(rank: int, meet: str, out: str, result: str, renamed: bool = False) -> None:
    from sketchmine.data import ArrayDataset, animal_shape
    from sketchmine.model.models import load_model, preprocessing_for

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=2)
    try:
        model = load_model("demo")
        full = animal_shape("test", preprocessing_for(model))
        keep = np.sort(np.concatenate([np.nonzero(full.labels() == c)[0][:4] for c in range(10)]))
        names = list(full.class_names)
        if renamed and rank == 1:  # the same images and labels: only the names tell
            names = names[::-1]
        ds = ArrayDataset(full.images[keep], full.labels()[keep], names, full.preprocessing,
                          {**full.describe(), "subset": "4 a class"})
        try:
            other = rank == 1 and not renamed
            sketchmine.mine(model.module, ds, out=out, k=5 if other else 9, batch_size=16 if other else 32)
            said = "ok"
        except SketchmineError as exc:
            said = f"{type(exc).__name__}: {exc}"
        Path(f"{result}.{rank}").write_text(said)
    finally:
        dist.destroy_process_group()


def test_ranks_given_other_settings_are_refused_naming_both_values(tmp_path):
    result = str(tmp_path / "result")
    torch.multiprocessing.spawn(_rank, args=(rendezvous(tmp_path), str(tmp_path / "run.zarr"), result), nprocs=2,
                                join=True)
    said = [Path(f"{result}.{r}").read_text() for r in range(2)]
    for text, kind in zip(said, ("SketchmineError", "SaidOnRankZero")):
        assert text.startswith(f"{kind}: rank 1 sees a different k and batch size than rank 0; "), text
        assert text.endswith("(k: rank 0 9, rank 1 5; batch size: rank 0 32, rank 1 16)"), text
    assert not (tmp_path / "run.zarr").exists()


def test_a_rank_naming_the_classes_otherwise_is_refused(tmp_path):
    """The dataset fingerprint covers images and labels: a rank whose classes are named otherwise
    was mined under rank 0's names without a word."""
    result = str(tmp_path / "result")
    torch.multiprocessing.spawn(_rank, args=(rendezvous(tmp_path), str(tmp_path / "run.zarr"), result, True), nprocs=2,
                                join=True)
    said = [Path(f"{result}.{r}").read_text() for r in range(2)]
    for text, kind in zip(said, ("SketchmineError", "SaidOnRankZero")):
        assert text.startswith(f"{kind}: rank 1 sees a different list of class names than rank 0; "), text
    assert not (tmp_path / "run.zarr").exists()
