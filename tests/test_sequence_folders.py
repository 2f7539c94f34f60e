"""Progressive drawings from ImageFolders: `sketchmine mine --steps` (or the steps a model was
trained with), both ink polarities, and the passes after mining (visualize, importance) that
reopen the folder, also after it moved."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sketchmine
from sketchmine.cli.main import main
from sketchmine.data import ArrayDataset, ImageFolderDataset, animal_shape, export_image_folder
from sketchmine.errors import SketchmineError
from sketchmine.model.models import preprocessing_for
from sketchmine.data.sequences import SequenceDataset, background_of, pixel_order, progressive_drawing, reopen
from tests.helpers import per_class_subset


@pytest.fixture(scope="module")
def gru_set():
    """200 real test silhouettes (20 per class), preprocessed for the CNN + GRU."""
    return per_class_subset(animal_shape("test", preprocessing_for("demo-gru")), 20, "0:200")


@pytest.fixture(scope="module")
def folders(gru_set, tmp_path_factory):
    """The same images as PNG folders: as they are (light on black) and inverted (dark on white)."""
    root = tmp_path_factory.mktemp("seqfolders")
    light = export_image_folder(gru_set, root / "light")
    inv = ArrayDataset(255 - gru_set.images, gru_set.labels(), gru_set.class_names, gru_set.preprocessing, {})
    return light, export_image_folder(inv, root / "dark")


def _array_index(path: str) -> int:
    """export_image_folder names each file by its index in the array dataset."""
    return int(path.rsplit("/", 1)[-1].split(".")[0])


# ---- the transform with either polarity --------------------------------------------------------
images = arrays(np.uint8, st.tuples(st.integers(3, 12), st.integers(3, 12)),
                elements=st.sampled_from([0, 0, 0, 1, 77, 200, 254, 255]))


@given(images, st.integers(1, 9))
def test_dark_ink_is_drawn_like_the_inverted_light_ink(im, steps):
    light = progressive_drawing(im, steps, background=0)
    dark = progressive_drawing(255 - im, steps, background=255)
    np.testing.assert_array_equal(dark, 255 - light)
    np.testing.assert_array_equal(dark[-1], 255 - im)
    order, _ = pixel_order(255 - im, 255)
    assert sorted(order.tolist()) == np.flatnonzero(im != 0).tolist()  # every ink pixel once


def test_auto_ink_takes_the_lower_median_of_an_even_border():
    """The two middle border values straddle 128: np.median's 138.5 would say dark ink on white;
    the lower median, ink density's rule, says light on black, as the ink-density statistic reads it."""
    im = np.full((4, 4), 77, np.uint8)
    im[0, :] = 200
    im[1:3, 0] = 200  # 6 of the 12 border pixels 200, 6 are 77
    im[1:3, 1:3] = 255
    assert background_of(im) == 0


@given(images)
def test_auto_ink_follows_the_border(im):
    border = np.concatenate([im[0], im[-1], im[1:-1, 0], im[1:-1, -1]])
    lower = np.sort(border)[(border.size - 1) // 2]  # the lower median, as ink density's torch.median
    assert background_of(im, "auto") == (0 if lower < 128 else 255)
    assert background_of(im, "light") == 0 and background_of(im, "dark") == 255


def test_colour_images_are_drawn_by_their_ink_mask(gru_set):
    gray = np.asarray(gru_set.images[3])
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    rgb[..., 2][gray == 0] = 0  # background black in every channel
    frames = progressive_drawing(rgb, 6)
    np.testing.assert_array_equal(frames[..., 0], progressive_drawing(gray, 6))
    np.testing.assert_array_equal(frames[-1], rgb)


@pytest.mark.parametrize("kind", ["grey+alpha", "rgba"])
def test_an_alpha_channel_is_not_ink(gru_set, kind):
    """The model never sees alpha (the preprocessing drops it): an opaque alpha made every pixel
    ink, so the drawing grew around the image square instead of the silhouette (ink per step
    2, 6, 13, … against 20, 39, 58, …) and the GRU's early predictions changed."""
    grey = np.asarray(gru_set.images[:20])
    opaque = np.full_like(grey[..., None], 255)
    colour = grey[..., None] if kind == "grey+alpha" else np.repeat(grey[..., None], 3, axis=-1)
    images = np.concatenate([colour, opaque], axis=-1)
    for im, g in zip(images[:3], grey[:3]):
        assert background_of(im) == background_of(g)
        np.testing.assert_array_equal(pixel_order(im, background_of(im))[0], pixel_order(g, background_of(g))[0])
    pre = gru_set.preprocessing
    drawn = SequenceDataset(ArrayDataset(images, gru_set.labels()[:20], gru_set.class_names, pre, {}), 8)
    plain = SequenceDataset(ArrayDataset(grey, gru_set.labels()[:20], gru_set.class_names, pre, {}), 8)
    for i in range(20):
        torch.testing.assert_close(drawn[i][1], plain[i][1], rtol=0, atol=1e-6)


def test_folder_sequences_in_both_polarities_match_the_array_drawings(gru_set, folders):
    light, dark = folders
    pre = gru_set.preprocessing
    want = SequenceDataset(gru_set, 8)
    for root, ink in ((light, "auto"), (dark, "auto"), (dark, "dark")):
        ds = SequenceDataset(ImageFolderDataset(root, pre), 8, ink)
        for i in range(0, len(ds), 37):
            j = _array_index(ds.path(i))
            x, ref = ds[i][1], want[j][1]
            if root == dark:  # un-normalise, invert, normalise: what the light drawing would be
                m, s = pre.mean[0], pre.std[0]
                x = ((1 - (x * s + m)) - m) / s
            torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    wrong = SequenceDataset(ImageFolderDataset(dark, pre), 8, "light")  # the white paper drawn as ink
    i = next(i for i in range(len(wrong)) if _array_index(wrong.path(i)) == 0)
    got = wrong[i][1] * pre.std[0] + pre.mean[0]
    assert (got[0] > 0.99).float().mean() < 0.9  # its first step is no white page with ink on it


def test_bad_ink_and_bad_base_are_refused(gru_set):
    with pytest.raises(SketchmineError, match="unknown ink 'pencil'"):
        SequenceDataset(gru_set, 8, "pencil")
    with pytest.raises(SketchmineError, match="ImageFolder"):
        SequenceDataset(torch.utils.data.TensorDataset(torch.ones(3, 1, 4, 4)), 8)  # type: ignore[arg-type]
    with pytest.raises(SketchmineError, match="the run used 'stroke-order/v9' drawings"):
        reopen({"sequence": {"transform": "stroke-order/v9", "steps": 8}}, gru_set)
    with pytest.raises(SketchmineError, match="already a sequence of 8 steps"):
        sketchmine.mine("demo-gru", SequenceDataset(gru_set, 8), steps=6, out="unused.zarr")


# ---- mining a folder from the CLI, and the passes after it ------------------------------------
def test_cli_mines_a_folder_as_the_models_drawings_and_reopens_it(gru_set, folders, tmp_path, capsys):
    light, _ = folders
    ref = sketchmine.mine("demo-gru", SequenceDataset(gru_set, 8), out=tmp_path / "py.zarr", batch_size=64)
    out = tmp_path / "cli.zarr"
    assert main(["mine", "--model", "demo-gru", "--data", str(light), "--out", str(out), "--batch-size", "64"]) == 0
    run = sketchmine.open_run(out)
    assert run.attrs["dataset"]["sequence"] == {"transform": "outline-then-fill/v1", "steps": 8, "ink": "auto"}
    to_array = np.array([_array_index(p) for p in run.paths])
    assert run.accuracy() == ref.accuracy()
    for layer in ref.layers:
        va, ia, _ = ref.topk(layer)
        vb, ib, _ = run.topk(layer)
        np.testing.assert_allclose(vb, va, rtol=1e-5, atol=1e-6)
        assert all(set(a) == set(to_array[b]) for a, b in zip(ia.reshape(-1, ia.shape[-1]), ib.reshape(-1, ib.shape[-1])))

    moved = tmp_path / "moved"
    shutil.copytree(light, moved)
    assert main(["visualize", str(out), "--layers", "gru,features.3", "--data", str(moved)]) == 0
    sketchmine.visualize(ref, layers=["gru", "features.3"], data=SequenceDataset(gru_set, 8))
    run, ref = sketchmine.open_run(out), sketchmine.open_run(ref.path)
    for layer in ("gru", "features.3"):
        pa, pb = (np.asarray(r.layer_group(layer)["patches"][...]) for r in (ref, run))
        _, ia, _ = ref.topk(layer)
        _, ib, _ = run.topk(layer)
        same = ia == to_array[ib]  # entries of the same image at the same rank (ties may swap)
        assert same.mean() > 0.9
        np.testing.assert_array_equal(pb[same], pa[same])

    assert main(["importance", str(out), "--layers", "gru", "--data", str(moved), "-n", "3"]) == 0
    table = run.unit_importance("gru")
    assert len(table) == 64 and table.attrs["images"] == 200 and table.attrs["method"] == "split"
    assert "units that matter most" in capsys.readouterr().out


def test_cli_steps_on_a_dark_folder(folders, tmp_path):
    _, dark = folders
    out = tmp_path / "dark.zarr"
    assert main(["mine", "--model", "demo-gru", "--data", str(dark), "--out", str(out), "--steps", "4",
                 "--ink", "dark", "--layers", "gru"]) == 0
    run = sketchmine.open_run(out)
    assert run.attrs["dataset"]["sequence"]["steps"] == 4 and run.layer_shape("gru") == (64, 4)
    assert "drawings" not in run.attrs  # what the resume check names differences by: not a record of the run
    # other steps or ink: other samples, refused naming what differs and what resumes it (not two hashes)
    said = r"pass steps=4, ink='dark' \(--steps 4 --ink dark\)\. Use another --out"
    with pytest.raises(SketchmineError, match=r"other settings: steps \(run: 4, now: 6\) of the progressive drawings; "
                       + said):
        sketchmine.mine("demo-gru", dark, steps=6, ink="dark", layers=["gru"], out=out)
    with pytest.raises(SketchmineError, match=r"other settings: ink \(run: dark, now: light\) of the progressive "
                       r"drawings; " + said):
        sketchmine.mine("demo-gru", dark, steps=4, ink="light", layers=["gru"], out=out)
    with pytest.raises(SketchmineError, match=r"other settings: steps \(run: 4, now: 8\); ink \(run: dark, now: auto\) "
                       r"of the progressive drawings; " + said):  # the model's own steps and the default ink
        sketchmine.mine("demo-gru", dark, layers=["gru"], out=out)
    other = export_image_folder(per_class_subset(animal_shape("test"), 2, "0:20"), tmp_path / "other")
    with pytest.raises(SketchmineError, match=r"other settings: dataset \(run: [0-9a-f]{16}…, now: [0-9a-f]{16}…: "
                                                 r"images: \d+ gone \(bear/\S+\.png, .*\), \d+ new \(.*\)\)\."):
        sketchmine.mine("demo-gru", other, steps=6, ink="dark", layers=["gru"], out=out)  # other images: the hashes
    single = sketchmine.mine("demo", other, layers=["features.0"], out=tmp_path / "single.zarr").path
    with pytest.raises(SketchmineError, match=r"other settings: progressive drawings \(run: single images, now: 2 "
                       r"steps; leave steps / --steps out\)\."):
        sketchmine.mine("demo", other, steps=2, layers=["features.0"], out=single)


def test_retrained_architectures_load_by_name_with_their_sidecar(folders, tmp_path):
    """`--model sketchgru --weights FILE.pt`: the weights file the training script writes, with
    its JSON beside it giving the preprocessing and the drawing steps (here: the embedded
    CNN + GRU's own files, so the run must equal the 'demo-gru' spec's)."""
    from sketchmine.data import embedded_path
    from sketchmine.model.models import load_model, weights_hash

    light, _ = folders
    for arch, spec in (("sketchgru", "demo-gru"), ("sketchresnet", "demo-resnet"), ("sketchnet", "demo")):
        loaded, ref = load_model(arch, embedded_path(f"{arch}_animal.pt")), load_model(spec)
        assert weights_hash(loaded.module) == weights_hash(ref.module)
        assert loaded.preprocessing["mean"] == ref.preprocessing["mean"] and loaded.sequence == ref.sequence
    a, b = tmp_path / "spec.zarr", tmp_path / "arch.zarr"
    assert main(["mine", "--model", "demo-gru", "--data", str(light), "--out", str(a), "--layers", "gru"]) == 0
    assert main(["mine", "--model", "sketchgru", "--weights", str(embedded_path("sketchgru_animal.pt")),
                 "--data", str(light), "--out", str(b), "--layers", "gru"]) == 0
    ra, rb = sketchmine.open_run(a), sketchmine.open_run(b)
    assert rb.attrs["dataset"]["sequence"]["steps"] == 8 and rb.attrs["preprocessing"] == ra.attrs["preprocessing"]
    for x, y in zip(ra.topk("gru"), rb.topk("gru")):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(SketchmineError, match="unknown model 'sketchgrux'.*did you mean sketchgru"):
        load_model("sketchgrux")
