"""`visualize` called again on what an earlier call finished: its progress is of this call's
work alone (adding `--optimize` to pictures already made is no resume), and a call with
nothing left to do says so instead of timing nothing."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

import sketchmine
from sketchmine.cli.main import main as cli_main
from tests.helpers import image_folder

LAYER = "features.0"


@pytest.fixture
def run_and_folder(tmp_path, demo_test_set):
    root = image_folder(demo_test_set, tmp_path / "folder", per_class=2)
    run = sketchmine.mine("demo", str(root), layers=[LAYER], k=2, out=tmp_path / "run.zarr", batch_size=20,
                          distributions=True)
    return str(run.path), root


def test_optimizing_after_the_pictures_is_no_resume_and_a_finished_call_says_so(run_and_folder, capsys, caplog):
    path, _ = run_and_folder
    assert cli_main(["visualize", path, "--layers", LAYER]) == 0
    assert "patches and deconvnet crops of 1 layer in" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger="sketchmine"):
        assert cli_main(["visualize", path, "--layers", LAYER, "--optimize", "--optimize-steps", "2"]) == 0
    assert not [r for r in caplog.records if "resuming at" in r.getMessage()]
    assert "optimised inputs" in capsys.readouterr().out
    assert cli_main(["visualize", path, "--layers", LAYER, "--optimize", "--optimize-steps", "2"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("nothing to do: the patches and deconvnet crops and optimised inputs") and "--redo" in said


def test_examples_made_after_the_pictures_are_not_said_to_be_nothing(run_and_folder, capsys):
    """--examples all on a layer whose top-k pictures were made: its example pictures are made
    (the progress counts none of them), so the call does not say "nothing to do"."""
    path, _ = run_and_folder
    assert cli_main(["visualize", path, "--layers", LAYER]) == 0
    capsys.readouterr()
    assert cli_main(["visualize", path, "--layers", LAYER, "--examples", "all"]) == 0
    assert not capsys.readouterr().out.startswith("nothing to do")
    assert (Path(path) / "layers" / LAYER / "bin_pictures" / "patches").is_dir()  # made by this call
