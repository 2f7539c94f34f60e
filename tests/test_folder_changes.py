"""An image replaced while `mine` reads its folder is refused by name (found by an audit: the run
held the new pixels under the fingerprint of the old bytes, so `visualize --data` refused the
folder as it is, and accepted it restored, cropping pictures that did not match the activations).
Each file is checked, as it is read, against the hash the run's fingerprint was made of; put
back, the run resumes to what an uninterrupted one gives."""
from __future__ import annotations

import shutil

import pytest

import sketchmine
from sketchmine.data.folder import ImageFolderDataset
from sketchmine.data.preprocess import preset
from sketchmine.errors import SketchmineError
from tests.helpers import assert_same_store, image_folder


class ReplaceAfterFirstBatch:
    """A progress reporter that, after the first batch, overwrites a later image with another's bytes."""

    def __init__(self, target, source) -> None:
        self.target, self.source, self.done = target, source, False

    def start(self, total: int, done: int) -> None: ...

    def note(self, message: str) -> None: ...

    def advance(self, n: int) -> None:
        if not self.done:
            self.target.write_bytes(self.source.read_bytes())
            self.done = True


@pytest.mark.parametrize("preprocess", ["cpu", "device"])
def test_an_image_replaced_while_mining_is_named_and_put_back_resumes(tmp_path, demo_test_set, preprocess):
    folder = image_folder(demo_test_set, tmp_path / "images", per_class=3)
    ref = sketchmine.mine("demo", folder, out=tmp_path / "ref.zarr", batch_size=10, layers=["features.0"],
                          preprocess=preprocess)
    ds = ImageFolderDataset(folder, preset("none", 1, 28))
    target, source = folder / ds.path(25), folder / ds.path(3)
    kept = target.read_bytes()
    out = tmp_path / "run.zarr"
    with pytest.raises(SketchmineError, match=rf"image {target} changed after the run began"):
        sketchmine.mine("demo", folder, out=out, batch_size=10, layers=["features.0"], preprocess=preprocess,
                        flush_every=1, progress=ReplaceAfterFirstBatch(target, source))
    with pytest.raises(SketchmineError, match="dataset"):  # as it is now: another dataset than the run's
        sketchmine.mine("demo", folder, out=out, batch_size=10, layers=["features.0"], preprocess=preprocess)
    target.write_bytes(kept)
    run = sketchmine.mine("demo", folder, out=out, batch_size=10, layers=["features.0"], preprocess=preprocess)
    assert run.complete
    assert_same_store(ref.path, run.path)


def test_a_file_read_without_a_fingerprint_is_not_checked(tmp_path, demo_test_set):
    """Reading a folder without a run (no fingerprint taken) reads what is there."""
    folder = image_folder(demo_test_set, tmp_path / "images", per_class=1)
    ds = ImageFolderDataset(folder, preset("none", 1, 28))
    before = ds.image_array(0)[0]
    shutil.copyfile(folder / ds.path(1), folder / ds.path(0))
    assert (ds.image_array(0)[0] != before).any()
    ds.fingerprint()
    assert ds.file_bytes(0) == (folder / ds.path(0)).read_bytes()


def test_a_file_rewritten_with_its_own_bytes_mines_on(tmp_path, demo_test_set):
    """A new stamp (mtime, ctime) with the same content: the bytes decide, and they are the same."""
    folder = image_folder(demo_test_set, tmp_path / "images", per_class=3)
    ref = sketchmine.mine("demo", folder, out=tmp_path / "ref.zarr", batch_size=10, layers=["features.0"])
    target = folder / ImageFolderDataset(folder, preset("none", 1, 28)).path(25)
    run = sketchmine.mine("demo", folder, out=tmp_path / "run.zarr", batch_size=10, layers=["features.0"],
                          progress=ReplaceAfterFirstBatch(target, target))
    assert run.complete
    assert_same_store(ref.path, run.path)
