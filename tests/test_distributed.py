"""Mining with torch.distributed on the gloo backend (CPU): two processes give the store of one.

Two launch paths, both real: `torchrun --nproc-per-node 2 -m sketchmine mine ...` on PNGs, and
torch.multiprocessing.spawn of the API with a process group the caller initialised."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import zarr

import sketchmine
from sketchmine.data import ArrayDataset, export_image_folder
from sketchmine.errors import SketchmineError
from tests.helpers import store_arrays
from tests.helpers import StopAfter

# Float64 sums of the per-class statistics are added per rank, then across ranks: the same
# numbers summed in another order, so equal to rounding only. Everything else is bit-identical.
SUMMED = ("class_mean", "class_ink_density", "max_mean")  # max_mean: moments.py


def rendezvous(folder: Path) -> str:
    """A file for the ranks to meet at (no TCP port: one found free can be taken by another test
    before gloo binds it, and pytest-xdist runs two test files at once)."""
    return f"file://{folder / f'rendezvous-{uuid.uuid4().hex}'}"  # a file serves one group only


def assert_same_as_one_process(got_path: Path, want_path: Path) -> None:
    """Bit-identical but for float64 class sums, which ranks add in another order."""
    got, want = store_arrays(got_path), store_arrays(want_path)
    assert set(got) == set(want)
    for key in want:
        if key.rsplit("/", 1)[-1] in SUMMED:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-15, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    a, b = zarr.open_group(str(got_path), mode="r"), zarr.open_group(str(want_path), mode="r")
    assert a["eval"].attrs["accuracy"] == b["eval"].attrs["accuracy"]
    for key in ("layer_names", "k", "dataset_fingerprint", "weights_hash", "bad_images", "converted_images"):
        assert a.attrs[key] == b.attrs[key], key
    assert a.attrs["progress"]["complete"] and a.attrs["progress"]["images_done"] == b.attrs["progress"]["images_done"]


def test_torchrun_two_processes_equal_one(tmp_path, demo_test_set):
    """torchrun, 2 ranks on gloo, 122 PNGs (one batch short, one image unreadable, skipped),
    a flush every 2 steps: the store equals a one-process run's, array for array."""
    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:12] for c in range(10)])
    folder = export_image_folder(ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names,
                                              ds.preprocessing, ds.describe()), tmp_path / "images")
    (folder / "cat" / "zz_broken.png").write_bytes(b"not a png" * 10)
    good = next((folder / "dog").glob("*.png"))
    (folder / "dog" / "zz_extra.png").write_bytes(good.read_bytes())
    args = ["mine", "--model", "demo", "--data", str(folder), "--batch-size", "8", "--flush-every", "2",
            "--workers", "0", "--skip-bad-images", "--distributions"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's per-rank default: the same GEMM code paths
    one = subprocess.run([sys.executable, "-m", "sketchmine", *args, "--out", str(tmp_path / "one.zarr")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "sketchmine", *args, "--out", str(tmp_path / "two.zarr")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr + two.stdout
    assert two.stdout.count("122 images") == 1  # rank 0 reports, rank 1 says nothing
    assert_same_as_one_process(tmp_path / "two.zarr", tmp_path / "one.zarr")
    run = sketchmine.open_run(tmp_path / "two.zarr")
    assert [b["path"] for b in run.attrs["bad_images"]] == ["cat/zz_broken.png"]
    assert run.images_done == 122


def small_folder(tmp_path: Path, ds, per_class: int = 4) -> Path:
    """The first `per_class` test images of every class as PNGs (what `--data` takes)."""
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:per_class] for c in range(10)])
    return export_image_folder(ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names,
                                            ds.preprocessing, ds.describe()), tmp_path / "images")


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m sketchmine ARGS` on gloo, one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "sketchmine", *args], capture_output=True, text=True, timeout=600, env=env)


def test_torchrun_on_a_complete_run_reports_it(tmp_path, demo_test_set):
    """The same command run again on a finished run (a job re-submitted, or a kill after the
    completing commit) says the run as one process does; it used to stop every rank with
    AttributeError on rank 1 (loop.py bound `store.verify_results` on ranks that hold no store)."""
    folder = small_folder(tmp_path, demo_test_set)
    args = ["mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "run.zarr"), "--batch-size", "8",
            "--workers", "0"]
    first = torchrun(*args)
    assert first.returncode == 0, first.stderr
    again = torchrun(*args)
    assert again.returncode == 0, again.stderr
    assert "40 images, 0 this session" in again.stdout
    assert "Traceback" not in again.stderr


def _spawned(rank: int, meet: str, out: str, differ: str, result: str, k: int) -> None:
    """One rank: a gloo group initialised here (as a user would), then sketchmine.mine; `differ`:
    what rank 1 sees otherwise ("dataset": other images, "distributions": them asked for, "skip":
    skip_bad_images, "out": another out)."""
    from sketchmine.data import ArrayDataset, animal_shape
    from sketchmine.model.models import preprocessing_for
    from sketchmine.model.models import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=2)
    try:
        model = load_model("demo")
        full = animal_shape("test", preprocessing_for(model))
        keep = np.sort(np.concatenate([np.nonzero(full.labels() == c)[0][:30] for c in range(10)]))
        if differ == "dataset" and rank == 1:
            keep = keep + 1  # another set of images on this rank
        ds = ArrayDataset(full.images[keep], full.labels()[keep], full.class_names, full.preprocessing,
                          {**full.describe(), "subset": "0:300"})
        try:
            distributions = True if differ == "distributions" and rank == 1 else None  # None: the run's
            if differ == "out" and rank == 1:
                out = out.replace("run.zarr", "run_1.zarr")  # a run of its own, as a user might expect
            run = sketchmine.mine(model.module, ds, out=out, batch_size=32, flush_every=2, k=k, distributions=distributions,
                                  skip_bad_images=differ == "skip" and rank == 1)
            Path(f"{result}.{rank}").write_text(f"ok {run.images_done} {run.path}")
        except SketchmineError as exc:
            Path(f"{result}.{rank}").write_text(f"error {exc}")
    finally:
        dist.destroy_process_group()


def spawn(out: Path, differ: str = "", k: int = 9) -> list[str]:
    result = str(out.parent / "result")
    torch.multiprocessing.spawn(_spawned, args=(rendezvous(out.parent), str(out), differ, result, k), nprocs=2,
                                join=True)
    return [Path(f"{result}.{r}").read_text() for r in range(2)]


def test_ranks_with_different_datasets_are_refused(tmp_path):
    said = spawn(tmp_path / "run.zarr", differ="dataset")
    for text in said:  # every rank stops with the same message, before anything is written
        assert text.startswith("error rank 1 sees a different dataset than rank 0 (dataset fingerprint"), text
    assert not (tmp_path / "run.zarr").exists()


def test_ranks_asking_for_different_statistics_are_refused(tmp_path):
    """Rank 1 asked for the distributions, rank 0 not: the ranks' accumulators would not merge."""
    said = spawn(tmp_path / "run.zarr", differ="distributions")
    for text in said:
        assert text.startswith("error rank 1 sees a different distributions setting than rank 0;"), text
    assert not (tmp_path / "run.zarr").exists()


def test_ranks_with_different_bad_image_settings_are_refused(tmp_path):
    """Rank 1 skips unreadable images, rank 0 stops at them: one run would hold images skipped
    against rank 0's setting (and rank 0's refusal would not apply to rank 1's shard)."""
    said = spawn(tmp_path / "run.zarr", differ="skip")
    for text in said:
        assert text.startswith("error rank 1 sees a different skip-bad-images setting than rank 0;"), text
    assert not (tmp_path / "run.zarr").exists()


def test_two_processes_resume_a_one_process_run(tmp_path, demo_model, small_test_set):
    """A run interrupted in one process is finished by two (rank 0 loads the checkpoint, the
    shards start at the committed image) and ends identical to an uninterrupted run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: bit-identical activations need the same GEMM code paths
    try:
        ref = sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "ref.zarr", batch_size=32,
                              distributions=True)
        out = tmp_path / "run.zarr"
        with pytest.raises(KeyboardInterrupt):
            sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=32, flush_every=2,
                            progress=StopAfter(100), preprocess="cpu", distributions=True)  # not the arrays' default route
    finally:
        torch.set_num_threads(threads)
    assert sketchmine.open_run(out).images_done == 64
    said = spawn(out)  # the default route: every rank takes the one rank 0 finds recorded
    assert said == [f"ok 300 {out}", f"ok 300 {out}"]  # every rank returns the finished run
    assert_same_as_one_process(out, ref.path)
    assert sketchmine.open_run(out).attrs["preprocess"] == "cpu"
    said = spawn(out, k=5)  # rank 0's refusal to resume with other settings reaches rank 1
    assert said[0].startswith(f"error run {out} is complete, mined with other settings: k (run: 9, now: 5)")
    assert said[1] == "error rank 0 stopped: " + said[0][len("error "):]


def _spawned_on_folder(rank: int, meet: str, folder: str, out: str, result: str, skip: bool = False) -> None:
    """One rank mining an image folder through the API (a group the caller initialised); what it
    raised, by type and message, or "ok" and the notes it was given, goes to `result`.RANK."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=2)
    try:
        notes = StopAfter(10**9)  # records the notes, never stops
        try:
            sketchmine.mine("demo", folder, out=out, batch_size=4, num_workers=0, skip_bad_images=skip, progress=notes)
            said = "\n".join(["ok", *notes.notes])
        except Exception as exc:  # noqa: BLE001  (the test reads which kind of error each rank saw)
            said = f"{type(exc).__name__}: {exc}"
        Path(f"{result}.{rank}").write_text(said)
    finally:
        dist.destroy_process_group()


def _mine_with_a_broken_image_on_rank_1(tmp_path: Path, ds, skip: bool, name: str = "zz_broken.png",
                                        data: bytes = b"not a png" * 10) -> list[str]:
    """Two spawned ranks mine 40 PNGs and one more, `data` (unreadable by default), at index 4
    (batch 1 of 4: rank 1's)."""
    folder = small_folder(tmp_path, ds)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    (folder / "bear" / name).write_bytes(data)
    assert sorted([*names, f"bear/{name}"]).index(f"bear/{name}") == 4
    result = str(tmp_path / "result")
    torch.multiprocessing.spawn(_spawned_on_folder, args=(rendezvous(tmp_path), str(folder), str(tmp_path / "run.zarr"),
                                                          result, skip), nprocs=2, join=True)
    return [Path(f"{result}.{r}").read_text() for r in range(2)]


def test_a_rank_that_stops_ends_the_others_with_one_line(tmp_path, demo_test_set):
    """An unreadable image in rank 1's shard (no skip) stops rank 1 with its message; rank 0, waiting
    for it at the gather, is told there (the caller's group outlives the call: tests/test_ranks_stop.py)
    and ends with one sketchmine error naming what happened, not gloo's RuntimeError (which the CLI
    prints as a traceback, and torchrun then names as the root cause)."""
    said = _mine_with_a_broken_image_on_rank_1(tmp_path, demo_test_set, skip=False)
    assert said[1].startswith("SketchmineError: cannot read image bear/zz_broken.png"), said[1]
    assert said[0] == "SaidOnRankZero: rank 1 stopped: " + said[1][len("SketchmineError: "):], said[0]


def test_an_image_skipped_on_another_rank_is_said_by_rank_0(tmp_path, demo_test_set):
    """With --skip-bad-images one process notes every skipped image; under torch.distributed only
    rank 0 speaks, so it says the ones the other ranks skipped too (they reach it at the gather)."""
    said = _mine_with_a_broken_image_on_rank_1(tmp_path, demo_test_set, skip=True)
    assert said[1] == "ok"  # rank 1 is muted
    notes = said[0].splitlines()
    assert notes[0] == "ok"
    assert [n for n in notes if n.startswith("skipped unreadable image")] == [
        "skipped unreadable image bear/zz_broken.png: UnidentifiedImageError: cannot identify image file "
        f"{str(tmp_path / 'images' / 'bear' / 'zz_broken.png')!r}"]
    assert [b["path"] for b in sketchmine.open_run(tmp_path / "run.zarr").attrs["bad_images"]] == ["bear/zz_broken.png"]


def test_a_conversion_on_another_rank_is_said_by_rank_0(tmp_path, demo_test_set):
    """One process says once that it converts a mode (a colour image for a grey model); under
    torch.distributed rank 0 says it for a conversion only another rank met, naming that rank's
    first image, and the count is recorded as one process's."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(demo_test_set.images[0])).convert("RGB").save(buf, "PNG")
    said = _mine_with_a_broken_image_on_rank_1(tmp_path, demo_test_set, skip=False, name="zz_colour.png",
                                               data=buf.getvalue())
    assert said[1] == "ok"  # rank 1 is muted
    notes = said[0].splitlines()
    assert notes[0] == "ok"
    assert [n for n in notes if "RGB" in n] == [n for n in notes if n.endswith("(first: bear/zz_colour.png)")]
    assert len([n for n in notes if "RGB" in n]) == 1
    assert sketchmine.open_run(tmp_path / "run.zarr").attrs["converted_images"] == {"RGB": 1}


def test_ranks_with_different_outs_are_refused(tmp_path):
    """Rank 1 named a run of its own: rank 0 writes the one run of every rank, so rank 1's images
    would have gone into rank 0's run while its own `out` stayed empty, without a word."""
    said = spawn(tmp_path / "run.zarr", differ="out")
    for text in said:
        assert text.startswith("error rank 1 sees a different out folder (rank 0 writes the one run of every rank) "
                               "than rank 0;"), text
    assert not (tmp_path / "run.zarr").exists() and not (tmp_path / "run_1.zarr").exists()


def test_ctrl_c_under_torchrun_is_said_once_and_resumes(tmp_path, demo_test_set):
    """Ctrl-C in the terminal reaches torchrun's process group; torchrun passes SIGINT on to every
    rank. Rank 0 says how to resume, once (every rank said it); the same command then finishes
    the run."""
    import signal
    import time

    folder = small_folder(tmp_path, demo_test_set, per_class=60)
    out = tmp_path / "run.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sketchmine",
           "mine", "--model", "demo", "--data", str(folder), "--out", str(out), "--batch-size", "2",
           "--flush-every", "1", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group, as a terminal's job
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # until the first commit
        meta = out / "zarr.json"
        if meta.is_file() and '"images_done": 0,' not in meta.read_text() and '"images_done"' in meta.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    said = [line for line in err.splitlines() if line.startswith("sketchmine: ")]
    assert said == ["sketchmine: interrupted; re-run the same command to resume from the last flush (a checkpoint "
                    "every --flush-every batches; from the first image when none was made yet)"], err
    assert not sketchmine.open_run(out).complete
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr
    assert sketchmine.open_run(out).complete and sketchmine.open_run(out).images_done == 600


def test_rank_0s_refusal_is_said_once_under_torchrun(tmp_path, demo_test_set):
    """A refusal on rank 0 (an --out folder of the user's that is not a run) reaches every rank;
    the terminal shows it once, from rank 0, not once more per rank as "rank 0 stopped: ..."."""
    folder = small_folder(tmp_path, demo_test_set, per_class=2)
    mine_folder = tmp_path / "notes"
    mine_folder.mkdir()
    (mine_folder / "todo.txt").write_text("mine")
    proc = torchrun("mine", "--model", "demo", "--data", str(folder), "--out", str(mine_folder), "--workers", "0")
    said = [line for line in proc.stderr.splitlines() if line.startswith("sketchmine: ")]
    assert len(said) == 1 and said[0].startswith("sketchmine: error: ") and "rank 0 stopped" not in said[0], proc.stderr
    assert "exists and is not a sketchmine run" in said[0], said
    assert proc.returncode != 0 and (mine_folder / "todo.txt").read_text() == "mine"
