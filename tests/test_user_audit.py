"""A new user's own model files, saved the ways training scripts save them: each is read as the
weights it holds, or refused saying what the file is and what to save instead."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.errors import SketchmineError
from tests.test_cli import assert_clean_error, sm


@pytest.fixture(scope="module")
def demo_state() -> dict[str, torch.Tensor]:
    """The embedded trained SketchNet's weights: what a user trained and saved."""
    return {k: v.clone() for k, v in sketchmine.load_model("demo").module.state_dict().items()}


def _same_weights(loaded: sketchmine.LoadedModel, state: dict[str, torch.Tensor]) -> None:
    got = loaded.module.state_dict()
    assert set(got) == set(state)
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert not loaded.random_init


@pytest.mark.parametrize("key", ["model", "model_state_dict", "state_dict"])
def test_training_checkpoint_dict_is_read_by_its_weights_key(tmp_path, demo_state, key):
    """torchvision's reference scripts save {'model': ...}, PyTorch's checkpoint tutorial
    {'model_state_dict': ...}: both were refused ("holds a dict, expected a state_dict")."""
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 12, key: demo_state, "optimizer": {"state": {}, "param_groups": []}}, path)
    _same_weights(sketchmine.load_model("sketchnet", weights=path), demo_state)


def test_dataparallel_prefix_is_read_as_the_same_weights(tmp_path, demo_state):
    """A state_dict saved from nn.DataParallel / DDP names every tensor 'module.<name>': it was
    refused as 22 tensors missing and 22 unexpected, for weights that are exactly the model's."""
    prefixed = {f"module.{k}": v for k, v in demo_state.items()}
    torch.save(prefixed, tmp_path / "dp.pth")
    _same_weights(sketchmine.load_model("sketchnet", weights=tmp_path / "dp.pth"), demo_state)
    torch.save({"arch": "sketchnet", "state_dict": prefixed}, tmp_path / "dp_arch.pth")
    _same_weights(sketchmine.load_model(str(tmp_path / "dp_arch.pth")), demo_state)
    # a prefix over only some names is not DataParallel's: still refused, naming the misfit
    torch.save({("module." + k if i == 0 else k): v for i, (k, v) in enumerate(demo_state.items())}, tmp_path / "part.pth")
    with pytest.raises(SketchmineError, match="do not fit sketchnet: 1 tensors missing"):
        sketchmine.load_model("sketchnet", weights=tmp_path / "part.pth")


def test_checkpoint_dict_without_or_with_two_state_dicts_is_refused_naming_its_keys(tmp_path, demo_state):
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(SketchmineError, match=r"odd.pth holds a dict with the keys 'epoch', 'weights', none of them "
                                              r"a state_dict.*'state_dict' or 'model_state_dict' or 'model'"):
        sketchmine.load_model("sketchnet", weights=tmp_path / "odd.pth")
    torch.save({"model": demo_state, "model_state_dict": demo_state}, tmp_path / "two.pth")
    with pytest.raises(SketchmineError, match="two.pth holds a state_dict under each of 'model_state_dict', 'model'"):
        sketchmine.load_model("sketchnet", weights=tmp_path / "two.pth")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_file_is_refused_as_one_in_our_words(tmp_path, demo_state, demo_test_set):
    """A torch.jit.save file was refused with torch's own paragraph (advising weights_only=False)
    after a UserWarning with a source line of models.py, even under -q."""
    scripted = torch.jit.script(sketchmine.load_model("demo").module)
    torch.jit.save(scripted, tmp_path / "model_ts.pt")
    folder = sketchmine.data.export_image_folder(torch.utils.data.Subset(demo_test_set, range(20)), tmp_path / "imgs")
    for args in (["--model", "sketchnet", "--weights", str(tmp_path / "model_ts.pt")],
                 ["--model", str(tmp_path / "model_ts.pt")]):
        done = sm("-q", "mine", *args, "--data", str(folder), "--out", str(tmp_path / "r.zarr"))
        assert_clean_error(done, r"model_ts.pt is a TorchScript archive \(torch.jit.save\): sketchmine reads a unit "
                                 r"through a forward hook.*torch.save\(model.state_dict\(\), path\)")
        assert "UserWarning" not in done.stderr and "weights_only` set to `False" not in done.stderr
        assert not (tmp_path / "r.zarr").exists()


def test_flat_folder_of_images_is_refused_saying_where_classes_come_from(tmp_path, demo_test_set):
    """A flat folder of images beside a labels CSV was refused only as 'has no class folders',
    which does not say that the images were seen, nor that no labels file is read."""
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(demo_test_set.images[i]).save(flat / f"img{i}.png")
    (flat / "labels.csv").write_text("file,label\nimg0.png,bear\n")
    with pytest.raises(SketchmineError, match=r"flat has no class folders, only 3 images directly in it \(a class is "
                                              r"the folder an image lies in; no labels file is read\)"):
        sketchmine.mine("demo", flat, out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


def test_guessed_imagenet_normalisation_is_said_once_and_not_when_recorded(tmp_path, demo_state, caplog):
    """Weights without a record of their normalisation were mined under ImageNet's mean and std
    without a word: a model trained with other numbers saw other inputs, and every number changed."""
    import json
    import logging

    from torch.utils.data import Subset

    torch.save(demo_state, tmp_path / "net.pt")
    data = Subset(sketchmine.data.animal_shape("test"), range(0, 2000, 100))
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        run = sketchmine.mine("sketchnet", data, weights=tmp_path / "net.pt", layers=["classifier.6"],
                              out=tmp_path / "a.zarr")
    said = [r.getMessage() for r in caplog.records if "records no input normalisation" in r.getMessage()]
    assert said == ["sketchnet records no input normalisation, so its images are normalised with ImageNet's mean "
                    "(0.449,) and std (0.226,) (preprocessing 'auto'); if it was trained with other numbers, give them: "
                    "in a JSON beside its weights file, {\"preprocessing\": {\"mean\": [...], \"std\": [...]}}, as a "
                    "preset (--preprocessing), or in Python as preprocessing=sketchmine.data.Preprocessing(...)"]
    assert run.attrs["preprocessing"]["mean"] == [0.449]
    # recorded beside the weights, or chosen: applied, and nothing to say
    demo_pre = sketchmine.preprocessing_for("demo")
    (tmp_path / "net.json").write_text(json.dumps({"preprocessing": {"mean": list(demo_pre.mean),
                                                                     "std": list(demo_pre.std)}}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        run = sketchmine.mine("sketchnet", data, weights=tmp_path / "net.pt", layers=["classifier.6"],
                              out=tmp_path / "b.zarr")
        sketchmine.mine("sketchnet", data, weights=tmp_path / "net.pt", layers=["classifier.6"],
                        out=tmp_path / "c.zarr", preprocessing="imagenet")
    assert not [r for r in caplog.records if "normalisation" in r.getMessage()]
    assert run.attrs["preprocessing"]["mean"] == list(demo_pre.mean)
    demo = sketchmine.mine("demo", data, layers=["classifier.6"], out=tmp_path / "demo.zarr")
    assert run.accuracy() == demo.accuracy()  # the demo's weights, fed as the demo is
    assert all(np.array_equal(a, b) for a, b in zip(run.topk("classifier.6"), demo.topk("classifier.6")))


def test_run_of_a_dataset_object_is_not_reopened_from_a_folder(tmp_path, demo_test_set):
    """A run mined in Python from torchvision's ImageFolder, visualized from the command line:
    `--data` with the folder said 'the content of at least one changed since the run was made'
    (nothing had: a dataset object is fingerprinted by its pixels, a folder by its files), and
    without it 'a ImageFolder dataset object ... (data=...)'."""
    import torchvision
    from torchvision import transforms

    folder = sketchmine.data.export_image_folder(torch.utils.data.Subset(demo_test_set, range(0, 2000, 100)),
                                                 tmp_path / "imgs")
    pre = sketchmine.preprocessing_for("demo")
    tf = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    data = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    out = tmp_path / "r.zarr"
    sketchmine.mine(sketchmine.load_model("demo").module, data, layers=["classifier.6"], out=out)
    done = sm("visualize", str(out), "--layers", "classifier.6", "--model", "demo", "--data", str(folder))
    assert_clean_error(done, r"r.zarr was mined from an ImageFolder dataset object, not from a folder: a folder "
                             r"\(--data .*imgs\) cannot stand for it.*sketchmine.visualize\(run, data=dataset\)")
    assert "changed since the run was made" not in done.stderr
    done = sm("visualize", str(out), "--layers", "classifier.6", "--model", "demo")
    assert_clean_error(done, r"r.zarr was mined from an ImageFolder dataset object that cannot be reopened from the "
                             r"store; pass the same dataset object from Python")
    run = sketchmine.visualize(out, ["classifier.6"], model="demo", data=data)  # the way it says
    assert run.patches_done("classifier.6") == 10  # every unit of the output layer


def test_class_count_refusal_names_the_empty_class_folders_it_skipped(tmp_path, demo_test_set):
    """A test split with one class folder empty (here the last of 10): the 10-output model was
    refused as 'the dataset has 9 classes', and under -q nothing said which folder had gone."""
    folder = sketchmine.data.export_image_folder(torch.utils.data.Subset(demo_test_set, range(0, 1800, 60)),
                                                 tmp_path / "imgs")
    (folder / "zebra").mkdir()
    done = sm("-q", "mine", "--model", "demo", "--data", str(folder), "--out", str(tmp_path / "r.zarr"))
    assert_clean_error(done, r"the model has 10 outputs but the dataset has 9 classes \(bear, bird, cat, cow, dog, …; "
                             r"not classes, as they hold no images: zebra/\)")
