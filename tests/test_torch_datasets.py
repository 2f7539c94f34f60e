"""A user's torch Dataset is mined as what it holds or refused with a sketchmine message:
uint8 tensors are pixels, labels are whole class numbers, class names and file paths are
found through Subset and ConcatDataset, a Subset of a sketchmine dataset is that dataset's
images, and what "auto" did with the tensors is said. Real embedded images and the demo model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset, TensorDataset, random_split

import sketchmine
from sketchmine.data import ArrayDataset, ImageFolderDataset, TorchDataset, animal_shape, as_miner_dataset
from sketchmine.data import export_image_folder
from sketchmine.errors import SketchmineError
from sketchmine.model.forward import TorchForward
from sketchmine.model.models import preprocessing_for
from tests.helpers import StopAfter, per_class_subset, store_arrays

LAYER = ["features.0"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Fingerprint hashes cached under the test's own folder, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def few(demo_test_set) -> ArrayDataset:
    """40 real test silhouettes (4 per class), under the demo model's preprocessing."""
    return per_class_subset(demo_test_set, 4, "torch datasets")


def _pixels(ds: ArrayDataset) -> torch.Tensor:
    """The stored uint8 pixels as (N, 1, 28, 28)."""
    return torch.from_numpy(ds.images).unsqueeze(1)


def _labels(ds: ArrayDataset) -> torch.Tensor:
    return torch.from_numpy(ds.labels())


class Samples(Dataset):
    """A user's dataset: sample i is `make(i)`; `classes` / `class_to_idx` set when given."""

    def __init__(self, make, n: int, **attrs) -> None:
        self.make, self.n = make, n
        for name, value in attrs.items():
            setattr(self, name, value)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i >= self.n:
            raise IndexError(i)
        return self.make(i)


def _mine(model, data, tmp_path: Path, name: str, **kw):
    notes = StopAfter(10**9)
    run = sketchmine.mine(model, data, layers=LAYER, k=3, out=tmp_path / f"{name}.zarr", progress=notes, **kw)
    return run, notes.notes


# ---- 1: uint8 tensors are pixels; the model never casts integers ------------------------------------------


def test_uint8_tensors_under_auto_are_pixels_prepared_as_an_array_is(few, tmp_path):
    want, _ = _mine("demo", few, tmp_path, "array")
    run, notes = _mine("demo", TensorDataset(_pixels(few), _labels(few)), tmp_path, "uint8")
    assert run.accuracy() == want.accuracy() and run.attrs["preprocessing"] == want.attrs["preprocessing"]
    np.testing.assert_array_equal(run.topk("features.0")[0], want.topk("features.0")[0])
    said = [n for n in notes if "uint8 tensors" in n]
    assert len(said) == 1 and "taken as pixels 0-255 and prepared with 'model'" in said[0]
    sized, _ = _mine("demo", TensorDataset(_pixels(few), _labels(few)), tmp_path, "sized", image_size=28)
    assert sized.attrs["preprocessing"]["preset"] == "model" and sized.attrs["preprocessing"]["size"] == [28, 28]
    later = Samples(lambda i: (_pixels(few)[i] if i < 20 else _pixels(few)[i].float(), int(few.labels()[i])), 40)
    with pytest.raises(SketchmineError, match=r"sample #20 .*\[\d+, 255\], not pixels in \[0, 1\]; sample #0 is uint8"):
        _mine("demo", later, tmp_path, "mixed")


def test_the_model_refuses_integer_input(few, demo_model):
    forward = TorchForward(demo_model.module)
    with pytest.raises(SketchmineError, match=r"the model input is a uint8 tensor of shape \(2, 1, 28, 28\).*floating"):
        forward.shapes(LAYER, _pixels(few)[:2])
    with forward.open(LAYER, lambda name, t: None) as run, pytest.raises(SketchmineError, match=r"is a int64 tensor"):
        run(_pixels(few)[:2].long())
    as_is = Samples(lambda i: (_pixels(few)[i].float() / 255 if i == 0 else _pixels(few)[i], 0), 40)
    ds = as_miner_dataset(as_is, preprocessing_for("demo"), chosen=False)
    with pytest.raises(SketchmineError, match=r"sample #3 of the dataset is a uint8 tensor.*floating-point"):
        ds[3]


# ---- 6, 7: what "auto" did is said; a preprocessing takes pixels in [0, 1] only ------------------------------


def test_unnormalised_pixels_under_auto_are_used_as_they_are_and_said(few, tmp_path):
    floats = TensorDataset(_pixels(few).float() / 255, _labels(few))
    run, notes = _mine("demo", floats, tmp_path, "floats")
    assert run.attrs["preprocessing"] is None  # the documented rule holds
    said = [n for n in notes if "unnormalised pixels" in n]
    assert len(said) == 1 and "records the normalisation mean [0.27" in said[0] and "preprocessing='model'" in said[0]
    assert not [n for n in notes if "ink density" in n]  # [0, 1]: ink is measured
    normalised = TensorDataset((_pixels(few).float() / 255 - 0.2728) / 0.4056, _labels(few))
    run, notes = _mine("demo", normalised, tmp_path, "normalised")
    assert not [n for n in notes if "unnormalised" in n]
    said = [n for n in notes if "ink density" in n]  # why summary shows no ink (stats/ink.py)
    assert len(said) == 1 and "leave [0, 1] (sample #0: -0.673 to" in said[0], notes
    assert np.isnan(run.dataset_array("class_ink_density")).all()


@pytest.mark.parametrize("kw", [{"preprocessing": "none", "image_size": 28}, {"image_size": 28},
                                {"preprocessing": "none"}])
def test_float_0_255_is_refused_under_every_preset(few, tmp_path, kw):
    with pytest.raises(SketchmineError, match=r"sample #0 .*\[\d+, 255\], not pixels in \[0, 1\].*'none'.*by 255"):
        _mine("demo", TensorDataset(_pixels(few).float(), _labels(few)), tmp_path, "f255", **kw)


# ---- 8: channel problems are named as such ------------------------------------------------------------------


def test_channel_problems_are_not_answered_with_a_resize(few, tmp_path):
    x = _pixels(few).float() / 255
    with pytest.raises(SketchmineError, match=r"have 3 channel\(s\) and the model takes 1: convert") as got:
        _mine("demo", TensorDataset(x.repeat(1, 3, 1, 1), _labels(few)), tmp_path, "rgb")
    assert "--image-size" not in str(got.value)
    with pytest.raises(SketchmineError, match=r"channels-last, \(H, W, C\) = \(28, 28, 1\).*permute\(2, 0, 1\)"):
        _mine("demo", TensorDataset(x.permute(0, 2, 3, 1), _labels(few)), tmp_path, "hwc")


class Lengths(Dataset):
    """Real silhouettes as sequences of `lengths[i]` 1-channel frames (consecutive test images)."""

    def __init__(self, few: ArrayDataset, lengths: list[int]) -> None:
        self.x, self.y, self.lengths = _pixels(few).float() / 255, _labels(few), lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int):
        return self.x[i:i + self.lengths[i]], int(self.y[i])


class LastStepGRU(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.fc = torch.nn.GRU(28 * 28, 6, batch_first=True), torch.nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gru(x.flatten(2))[1][-1])


@pytest.mark.parametrize("batch_size, where", [(4, "in one batch"), (1, "a later batch than the probed sample")])
def test_sequences_of_different_lengths_are_told_so(few, tmp_path, batch_size, where):
    """They were "images differ in size ... pass --image-size", which cannot make step counts equal."""
    with pytest.raises(SketchmineError, match=r"^sequences differ in length: #0 has 3 steps.*, #1 has 4 steps; "
                                              r".*one length.*--steps") as got:
        sketchmine.mine(LastStepGRU().eval(), Lengths(few, [3, 4, 4, 3]), layers=["gru"], k=2,
                        out=tmp_path / "r.zarr", batch_size=batch_size)
    assert "--image-size" not in str(got.value), where


# ---- 5: labels are whole class numbers ----------------------------------------------------------------------


@pytest.mark.parametrize("label, words", [
    (torch.tensor(3.0) / 37 * 37, r"label 2\.99999\d* of sample #1 is not a whole number"),
    (2.5, r"label 2\.5 of sample #1 is not a whole number"),
    ("2", r"label '2' of sample #1 is a str"),
    (None, r"label None of sample #1 is a NoneType"),
    (True, r"label True of sample #1 is a bool"),
    (torch.tensor([0, 0, 1]), r"label of sample #1 is a Tensor of shape \(3,\).*one-hot\? yield y\.argmax\(\)"),
    (float("nan"), r"label nan of sample #1 is not a whole number"),
])
def test_labels_that_are_not_whole_class_numbers_are_refused(few, label, words):
    ds = TorchDataset(Samples(lambda i: (_pixels(few)[i].float() / 255, label if i == 1 else 0), 40))
    with pytest.raises(SketchmineError, match=words):
        ds[1]
    with pytest.raises(SketchmineError, match=words.replace("#1", "#0")):  # the fingerprint's first sample
        TorchDataset(Samples(lambda i: (_pixels(few)[i].float() / 255, label), 40)).fingerprint()


def test_integer_labels_of_every_kind_are_read(few):
    kinds = [3, np.int64(3), torch.tensor(3), torch.tensor([3]), 3.0, np.float32(3.0), torch.tensor(3.0), np.array([3])]
    got = [TorchDataset(Samples(lambda i, y=y: (_pixels(few)[i].float() / 255, y), 40))[7][2] for y in kinds]
    assert got == [3] * len(kinds) and all(type(y) is int for y in got)


# ---- 2, 3: class names and paths through Subset and ConcatDataset; class_to_idx --------------------------------


@pytest.fixture(scope="module")
def three_class_folder(few, tmp_path_factory) -> torchvision.datasets.ImageFolder:
    """The cat, horse and zebra silhouettes of `few` as a torchvision ImageFolder (grey tensors)."""
    keep = np.isin(few.labels(), [few.class_names.index(c) for c in ("cat", "horse", "zebra")])
    three = ArrayDataset(few.images[keep], few.labels()[keep], few.class_names, few.preprocessing, {"name": "three"})
    root = export_image_folder(three, tmp_path_factory.mktemp("three") / "images")
    pixels = torchvision.transforms.Compose([torchvision.transforms.Grayscale(1), torchvision.transforms.ToTensor()])
    return torchvision.datasets.ImageFolder(str(root), transform=pixels)


def test_labels_without_class_names_or_logits_are_said_not_called_missing(few, tmp_path):
    """A dataset that names no classes, mined with logits=False: the class count is unknown, so
    nothing per class is kept. The labels are there all the same: mine says what is not kept and
    why, and the readers do not answer "the dataset has no labels"."""
    run, notes = _mine("demo", TensorDataset(_pixels(few), _labels(few)), tmp_path, "nameless", logits=False)
    np.testing.assert_array_equal(run.labels, few.labels())
    said = [n for n in notes if "names no classes" in n]
    assert len(said) == 1 and "no per-class statistics" in said[0] and "keep the logits" in said[0]
    for read in (lambda: run.class_stats("features.0"), lambda: run.class_histogram("features.0"), run.ink_density):
        with pytest.raises(SketchmineError, match=r"its images have labels, but the run names no classes") as err:
            read()
        assert "the dataset has no labels" not in str(err.value) and "mined before" not in str(err.value)
    with pytest.raises(SketchmineError, match=r"class histograms of layer .features.0. need the class names"):
        run.class_histogram("features.0")
    unlabelled, notes = _mine("demo", TensorDataset(_pixels(few), torch.full((40,), -1)), tmp_path, "unlabelled",
                              logits=False)
    with pytest.raises(SketchmineError, match=r"the dataset has no labels"):
        unlabelled.class_stats("features.0")


def test_a_sample_the_dataset_cannot_read_is_skipped_or_named_wherever_it_is(few, tmp_path):
    """The fingerprint reads 8 evenly spaced samples before the pass (of 40: #0, #5, #11, ...). One
    the dataset cannot read there is what it is in the pass: skipped and listed with
    skip_bad_images, else named in the error; not an OSError out of `mine`."""
    for bad in (11, 12):  # a sample the fingerprint reads, and one only the pass reads
        def make(i: int, bad: int = bad):
            if i == bad:
                raise OSError(f"disk error reading sample {i}")
            return _pixels(few)[i], int(few.labels()[i])

        data = Samples(make, 40, classes=list(few.class_names))
        run, notes = _mine("demo", data, tmp_path, f"skipped{bad}", skip_bad_images=True)
        assert [b["index"] for b in run.attrs["bad_images"]] == [bad] and run.labels[bad] == -1
        want, _ = _mine("demo", ArrayDataset(np.delete(few.images, bad, 0), np.delete(few.labels(), bad),
                                             few.class_names, few.preprocessing), tmp_path, f"without{bad}")
        assert int(run.class_sizes().sum()) == 39 and run.accuracy() == want.accuracy()
        with pytest.raises(SketchmineError, match=rf"cannot read image #{bad}: OSError: disk error reading sample {bad}"):
            _mine("demo", data, tmp_path, f"stopped{bad}")


def test_subset_and_concat_keep_the_class_count_check_and_the_file_paths(three_class_folder, tmp_path):
    folder = three_class_folder
    for wrapped in (Subset(folder, range(len(folder))), ConcatDataset([folder]),
                    random_split(folder, [8, 4], torch.Generator().manual_seed(0))[0]):
        ds = as_miner_dataset(wrapped, preprocessing_for("demo"), chosen=True)
        assert ds.class_names == ["cat", "horse", "zebra"]
        with pytest.raises(SketchmineError, match=r"10 outputs but the dataset has 3 classes"):
            _mine("demo", wrapped, tmp_path, "wrapped", preprocessing="model")
    picked = TorchDataset(Subset(ConcatDataset([folder, folder]), [13, 2]))
    assert picked.path(0) == folder.samples[1][0] and picked.path(1) == folder.samples[2][0]


def test_concat_parts_must_agree_on_their_classes(few):
    def part(classes):
        return Samples(lambda i: (_pixels(few)[i].float() / 255, 0), 4, classes=classes)

    with pytest.raises(SketchmineError, match=r"parts 0 and 2 name different classes \(cat, dog against cat, emu\)"):
        TorchDataset(ConcatDataset([part(["cat", "dog"]), part(["cat", "dog"]), part(["cat", "emu"])]))
    named = ConcatDataset([part(["cat", "dog"]), part(["cat", "emu"])])
    named.classes = ["cat", "dog"]  # type: ignore[attr-defined]  # the user says which names the labels number
    assert TorchDataset(named).class_names == ["cat", "dog"]


def test_class_names_follow_class_to_idx(few):
    def named(**attrs):
        return TorchDataset(Samples(lambda i: (_pixels(few)[i].float() / 255, 0), 4, **attrs))

    assert named(classes=["bear", "cat", "dog"], class_to_idx={"dog": 0, "cat": 1, "bear": 2}).class_names == \
        ["dog", "cat", "bear"]
    assert named(class_to_idx={"b": 1, "a": 0}).class_names == ["a", "b"]
    with pytest.raises(SketchmineError, match=r"class_to_idx does not number its 2 classes 0-1.*'a' and 'b' share index 0"):
        named(class_to_idx={"a": 0, "b": 0})
    with pytest.raises(SketchmineError, match=r"class_to_idx does not number .*no class has index 0"):
        named(class_to_idx={"a": 1, "b": 2})
    with pytest.raises(SketchmineError, match=r"classes and class_to_idx name different classes \(only in classes: "
                                              r"c; only in class_to_idx: b\)"):
        named(classes=["a", "c"], class_to_idx={"a": 0, "b": 1})
    imagenet = named(classes=[("tench", "Tinca tinca"), ("goldfish",)],
                     class_to_idx={"tench": 0, "Tinca tinca": 0, "goldfish": 1})
    assert imagenet.class_names == ["tench, Tinca tinca", "goldfish"]


# ---- 9: a Subset of a sketchmine dataset is that dataset's images ------------------------------------------------


def test_a_subset_of_a_sketchmine_dataset_is_mined_as_those_images(few, demo_test_set, tmp_path):
    pick = [5, 17, 3, 1999, 600]
    run, _ = _mine("demo", Subset(animal_shape("test"), pick), tmp_path, "subset")
    rows = ArrayDataset(demo_test_set.images[pick], demo_test_set.labels()[pick], demo_test_set.class_names,
                        demo_test_set.preprocessing, {"name": "rows"})
    want, _ = _mine("demo", rows, tmp_path, "rows")
    np.testing.assert_array_equal(run.topk("features.0")[1], want.topk("features.0")[1])
    np.testing.assert_array_equal(run.topk("features.0")[0], want.topk("features.0")[0])
    assert list(run.paths) == [f"animal_shape/test/{i:05d}" for i in pick]
    assert run.attrs["dataset"]["subset"] == "5 of 2000 images" and run.attrs["preprocess"] == "device"
    nested = as_miner_dataset(Subset(Subset(animal_shape("test"), range(100, 200)), [-1, 0]), preprocessing_for("demo"))
    assert [nested.path(0), nested.path(1)] == ["animal_shape/test/00199", "animal_shape/test/00100"]
    with pytest.raises(SketchmineError, match=r"Subset index 100 is outside the 100 images"):
        as_miner_dataset(Subset(Subset(animal_shape("test"), range(100)), [100]), preprocessing_for("demo"))
    # a later pass reopens those images from the run's record, as it reopens the whole split
    sketchmine.visualize(run, layers=["features.0"], max_units=2)
    assert store_arrays(run.path)["layers/features.0/patches"][:2].any()  # the first two units' crops


def test_a_subset_of_an_image_folder_is_mined_as_those_files(few, tmp_path):
    root = export_image_folder(few, tmp_path / "images")
    whole = ImageFolderDataset(root, preprocessing_for("demo"))
    run, _ = _mine("demo", Subset(whole, [30, 2]), tmp_path, "files")
    assert list(run.paths) == [whole.path(30), whole.path(2)] and list(run.labels) == list(whole.labels()[[30, 2]])
    with pytest.raises(SketchmineError, match=r"sketchmine ArrayDataset inside a ConcatDataset"):
        _mine("demo", ConcatDataset([animal_shape("test"), animal_shape("train")]), tmp_path, "concat")


# ---- 10: every other shape of data gets a sketchmine message ------------------------------------------------------


def test_dict_samples_are_read_by_their_keys(few, tmp_path):
    want, _ = _mine("demo", TensorDataset(_pixels(few), _labels(few)), tmp_path, "tensors")
    hf = Samples(lambda i: {"image": _pixels(few)[i], "label": int(few.labels()[i]), "id": i}, 40)
    run, _ = _mine("demo", hf, tmp_path, "dicts")
    np.testing.assert_array_equal(run.topk("features.0")[0], want.topk("features.0")[0])
    with pytest.raises(SketchmineError, match=r"sample #0 of the dataset is a dict with keys 'pixels', 'y'; mine reads"):
        TorchDataset(Samples(lambda i: {"pixels": _pixels(few)[i], "y": 0}, 40))[0]


class _Stream(IterableDataset):
    def __iter__(self):
        return iter([])


@pytest.mark.parametrize("make, words", [
    (lambda x, y: Samples(lambda i: x[i], 40), r"sample #0 of the dataset is a Tensor of shape \(1, 28, 28\) alone, "
                                               r"not an \(image, label\) pair.*TensorDataset\(images, labels\)"),
    (lambda x, y: x, r"the dataset is a Tensor of shape \(40, 1, 28, 28\), not a dataset.*TensorDataset"),
    (lambda x, y: x.numpy(), r"the dataset is a ndarray .*ArrayDataset"),
    (lambda x, y: (x, y), r"the dataset is a tuple of 2 tensors \(images and labels\?\).*TensorDataset"),
    (lambda x, y: _Stream(), r"the dataset is an IterableDataset \(_Stream\).*cannot be read by index"),
    (lambda x, y: Samples(lambda i: (x[i], 0), 45), r"__len__ says 45 but sample #4\d raises IndexError"),
    (lambda x, y: DataLoader(TensorDataset(x, y)), r"got DataLoader: pass its dataset, loader\.dataset"),
])
def test_data_that_is_no_dataset_of_samples_gets_a_sketchmine_message(few, tmp_path, make, words):
    with pytest.raises(SketchmineError, match=words):
        _mine("demo", make(_pixels(few).float() / 255, _labels(few)), tmp_path, "odd", batch_size=40)
