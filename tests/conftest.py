"""Shared fixtures: the embedded real data and the trained demo model."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from sketchmine.cores import usable_cores

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# pytest-xdist runs a worker process per core: torch's threads in each, two by default, put more
# threads than cores to work, and OpenMP's barriers spin while a thread waits for a core (in the
# suite, a test's in-process visualize ran 8-10x slower than alone). Each worker gets its share of
# the cores (at least one, at most two as before), and the commands the tests start inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, usable_cores() // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture(autouse=True)
def _random_state_of_its_own(request):
    """Each test starts from a seed of its own (its name), not from whatever the tests run before
    it on the same worker left in the generators: a randomly built model whose chosen unit was dead
    failed CI on one worker order and passed on another. SKETCHMINE_TEST_SEED picks other seeds, to
    find tests that hold for one draw only."""
    import random
    import zlib

    import numpy as np

    seed = (zlib.crc32(request.node.nodeid.encode()) ^ int(os.environ.get("SKETCHMINE_TEST_SEED", "0"))) & 0xFFFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _sketchmine_logger_as_it_was():
    """A test that runs the CLI in this process (`main([... "-q"])`) sets the `sketchmine`
    logger's level for the process: later tests of the same worker that read its notes with
    caplog then saw none, depending on which files the worker ran before."""
    import logging

    logger = logging.getLogger("sketchmine")
    level, handlers = logger.level, list(logger.handlers)
    quiet = logging.getLogger("asyncio").disabled  # a failed command silences it for its exit
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logging.getLogger("asyncio").disabled = quiet


@pytest.fixture(scope="session")
def demo_model():
    from sketchmine.model.models import load_model

    return load_model("demo")


@pytest.fixture(scope="session")
def demo_test_set(demo_model):
    from sketchmine.data import animal_shape
    from sketchmine.model.models import preprocessing_for

    return animal_shape("test", preprocessing_for(demo_model))


@pytest.fixture()
def run_copy(run_dir, tmp_path):
    """A copy of the test module's `run_dir` run, for a test that changes it."""
    import shutil

    dst = tmp_path / "run.zarr"
    shutil.copytree(run_dir, dst)
    return dst


@pytest.fixture(scope="session")
def small_test_set(demo_test_set):
    """300 real test images (30 per class, in the stable order), for quicker passes."""
    from tests.helpers import per_class_subset

    return per_class_subset(demo_test_set, 30, "0:300")


@pytest.fixture(scope="session")
def rgb_sketches(small_test_set):
    """12 real test sketches of varied classes (every 25th) as 3-channel 64×64 ImageNet-normalised
    inputs, for torchvision architectures."""
    import numpy as np

    from sketchmine.data import ArrayDataset, preset

    ds, keep = small_test_set, np.arange(0, 300, 25)
    return ArrayDataset(ds.images[keep], ds.labels()[keep], ds.class_names, preset("imagenet", 3, (64, 64)),
                        {**ds.describe(), "subset": "every 25th"})


CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium: playwright cannot download its own browser here (.ci/run installs this one)."""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the report and probe pages, one per test module."""
    pw = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
