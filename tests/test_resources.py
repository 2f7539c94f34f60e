"""The machine runs out of something: a command started under a process limit (`ulimit -f`
file size, `ulimit -n` open files) stops with one line that names the limit and what to do,
and the same command re-run once the limit is lifted ends identical to an uninterrupted run."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import sketchmine
from tests.helpers import assert_same_store, image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_test_set) -> Path:
    """120 real test images (12 per class) as PNGs."""
    return image_folder(demo_test_set, tmp_path_factory.mktemp("resources") / "images")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, folder) -> Path:
    """The run every limited one must end as: the same settings, mined in one go."""
    out = tmp_path_factory.mktemp("reference") / "run.zarr"
    sketchmine.mine("demo", str(folder), out=out, batch_size=8, flush_every=2)
    return out


def _limited(**limits: int) -> Callable[[], None]:
    """A child's set-up: the given RLIMIT_* lowered (soft and hard); SIGXFSZ ignored, so a write
    past the file-size limit fails with EFBIG instead of killing the process."""
    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))
    return setup


def _mine(folder: Path, out: Path, *extra: str, **limits: int) -> subprocess.CompletedProcess[str]:
    """`sketchmine mine` under `limits`; its process group (loader workers too) killed after 120 s."""
    cmd = [sys.executable, "-m", "sketchmine", "mine", "--model", "demo", "--data", str(folder), "--out", str(out),
           "--batch-size", "8", "--flush-every", "2", *extra]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          preexec_fn=_limited(**limits)) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"{' '.join(cmd)} hung under {limits}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("limit", [2_000, 8_000])  # while the run is created; at a periodic flush
def test_a_file_size_limit_is_named_and_the_run_resumes_identically(tmp_path, folder, uninterrupted, limit):
    """Under `ulimit -f` the write fails with EFBIG ("File too large"): the disk has room, so
    "make room" (what the message said) sent the user the wrong way; it names the limit."""
    out = tmp_path / "run.zarr"
    failed = _mine(folder, out, FSIZE=limit)
    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sketchmine: error: "), failed.stderr
    assert "ulimit -f" in lines[0] and f"{limit:,}" in lines[0] and "make room" not in lines[0], lines[0]
    assert "re-run the same command" in lines[0], lines[0]
    again = _mine(folder, out)
    assert again.returncode == 0, again.stderr
    assert_same_store(out, uninterrupted)


def test_loader_workers_the_open_file_limit_cannot_serve_are_refused(tmp_path, folder, uninterrupted):
    """At `ulimit -n 20` two loader workers hung for good (a worker's hand-over of a batch
    failed, the batch never came) or died with torch's traceback; now one line says the limit
    and what to do, and the run resumes without the limit to the uninterrupted result."""
    out = tmp_path / "run.zarr"
    failed = _mine(folder, out, "--workers", "2", NOFILE=20)
    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sketchmine: error: "), failed.stderr
    assert "ulimit -n" in lines[0] and "may open 20" in lines[0] and "--workers" in lines[0], lines[0]
    again = _mine(folder, out, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert_same_store(out, uninterrupted)


def test_the_open_files_a_loader_needs_grow_with_workers_and_batches_ahead():
    """The estimate behind the refusal covers what the demo's loaders were measured to need
    (8 open before: 42, 50 and 50 at 2 x 2, 4 x 2 and 2 x 6), and asks nothing without workers."""
    from sketchmine.mining.prefetch import open_files_needed

    for workers, ahead, measured in ((2, 2, 42), (4, 2, 50), (2, 6, 50)):
        assert measured <= open_files_needed(workers, ahead, 8) <= measured + 24
    assert open_files_needed(0, 2, 8) == 8


class _Starved:
    """A progress reporter that, as the pass starts, takes every descriptor the process may
    still open (a soft `ulimit -n` just above those open), so the first image read fails with
    EMFILE; it gives them back at the first note, or when the test ends."""

    def __init__(self) -> None:
        self.held: list[int] = []
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.notes: list[str] = []

    def start(self, total: int, done: int) -> None:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, self.limit[1]))
        try:
            while True:
                self.held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.release()

    def advance(self, n: int) -> None: ...

    def release(self) -> None:
        for fd in self.held:
            os.close(fd)
        self.held.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, self.limit)


@pytest.mark.parametrize("skip", [False, True])
def test_an_image_read_the_open_file_limit_failed_is_no_bad_image(tmp_path, folder, uninterrupted, skip):
    """EMFILE opening an image said the file was unreadable ("fix or remove it, or pass
    --skip-bad-images"), and with skip_bad_images left the batch's 8 images out of the run for
    good (a re-run found it complete); now the pass stops saying the limit, and resumes whole."""
    from sketchmine.errors import SketchmineFailure

    out = tmp_path / "run.zarr"
    starved = _Starved()
    try:
        with pytest.raises(SketchmineFailure, match=r"the file is not at fault: this process may open [\d,]+ files at "
                                                    r"once \(ulimit -n\)"):
            sketchmine.mine("demo", str(folder), out=out, batch_size=8, flush_every=2, num_workers=0,
                            skip_bad_images=skip, progress=starved)
    finally:
        starved.release()
    assert not starved.notes
    sketchmine.mine("demo", str(folder), out=out, batch_size=8, flush_every=2, skip_bad_images=skip)
    assert_same_store(out, uninterrupted)


class _StarvedInWorker(torch.utils.data.Dataset):
    """The folder's PNGs read with PIL as a user's torch Dataset would; inside a loader worker
    every descriptor is taken first (as `_Starved` does), so the read fails with EMFILE there."""

    def __init__(self, folder: Path) -> None:
        self.files = sorted(folder.glob("*/*.png"))
        self.classes = sorted({f.parent.name for f in self.files})

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        if torch.utils.data.get_worker_info() is not None:
            _Starved().start(0, 0)  # this worker process only, for the rest of its life
        with Image.open(self.files[i]) as im:
            pixels = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.uint8).copy())
        return pixels[None], self.classes.index(self.files[i].parent.name)


def test_a_loader_worker_out_of_open_files_is_said_in_one_line(tmp_path, folder):
    """In a loader worker the failure came back wrapped in the worker's traceback: only a
    SketchmineError's was cut to its message, so a SketchmineFailure read as the whole traceback."""
    from sketchmine.errors import SketchmineFailure

    with pytest.raises(SketchmineFailure) as caught:
        sketchmine.mine("demo", _StarvedInWorker(folder), out=tmp_path / "run.zarr", batch_size=8, num_workers=1,
                        preprocessing="model")
    said = str(caught.value)
    assert said.startswith("cannot read image ") and "Traceback" not in said and "ulimit -n" in said, said


@pytest.mark.parametrize("victim", ["eval/predictions/c.0", "eval/logits/c.0.0", "dataset/labels/c.1",
                                    "dataset/paths/c.0"])
def test_a_chunk_deleted_between_sessions_is_found_before_the_run_completes(tmp_path, demo_model, small_test_set,
                                                                           victim):
    """A chunk of an earlier flush's rows (or of the labels written at creation) deleted while
    the run was unfinished was read back as fill values when the resumed run completed: the
    run said complete, its per-class accuracy counted the lost rows as unlabelled or
    unpredicted, and `verify` passed it (the final checksums were taken from those files)."""
    from sketchmine.errors import RunDamaged
    from tests.helpers import StopAfter

    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=30, flush_every=2,
                        layers=["features.0"], progress=StopAfter(200))
    (out / victim).unlink()  # another process, between the two sessions
    with pytest.raises(RunDamaged, match=victim.rsplit("/", 1)[0]):
        sketchmine.mine(demo_model.module, small_test_set, out=out, batch_size=30, flush_every=2, layers=["features.0"])
    assert not sketchmine.open_run(out).complete


def test_running_out_of_memory_while_reading_a_run_is_not_damage(tmp_path):
    """What CPython, NumPy and the OS raise when memory, threads or descriptors run out, met while
    a chunk was read: the run was said damaged ("restore the run's files from a copy"); a
    chunk that does not decode still is."""
    import errno

    from sketchmine.errors import RunDamaged, RunUnreadable
    from sketchmine.store.verify import unreadable

    for exc in (RuntimeError("can't start new thread"), MemoryError(), OSError(errno.ENOMEM, os.strerror(errno.ENOMEM)),
                OSError(errno.EMFILE, os.strerror(errno.EMFILE))):
        said = unreadable(tmp_path, "dataset/paths", exc)
        assert isinstance(said, RunUnreadable) and "not at fault" in str(said) and "damaged" not in str(said), said
    said = unreadable(tmp_path, "dataset/paths", ValueError("Unknown frame descriptor"))
    assert isinstance(said, RunDamaged) and not isinstance(said, RunUnreadable) and "is damaged" in str(said)


_LIMITED_CLI = """
import resource, sys
import torch, zarr, numpy, pandas, rich.console
import sketchmine, sketchmine.stats.ops, sketchmine.store.runstore, sketchmine.present.logs
import sketchmine.cli.effects, sketchmine.passes.importance, sketchmine.present.plots, sketchmine.present.console
from sketchmine.cli.main import main
from sketchmine.mining.memory import process_status
limit = process_status()["VmSize"] + (16 << 20)  # what the imports (the command's too) mapped, and 16 MiB more
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[1:]))
"""


def test_a_command_out_of_address_space_says_so_in_one_line(tmp_path, folder, uninterrupted):
    """Under `ulimit -v` a command that is not `mine` (whose loop measures a batch size that
    fits) failed with a MemoryError or RuntimeError traceback; now one line, exit 1."""
    import shutil

    run = shutil.copytree(uninterrupted, tmp_path / "run.zarr")
    done = subprocess.run([sys.executable, "-c", _LIMITED_CLI, "importance", str(run), "--layers", "features.3",
                           "--model", "demo", "--data", str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("sketchmine: error: ") and "memory" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "damaged" not in done.stderr, done.stderr
