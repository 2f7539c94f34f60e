"""The ONNX Runtime backend: the embedded demo model exported with torch.onnx.export, mined
through ONNX Runtime and compared with the torch path on the real test images."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine.data import ArrayDataset, export_image_folder, preset
from sketchmine.errors import SketchmineError
from tests.helpers import all_activations, brute_topk, assert_same_store
from tests.test_cli import assert_clean_error, sm
from tests.helpers import StopAfter
from tests.test_miner import assert_same_topk

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def export(model: torch.nn.Module, path, batch: int | None = None, dynamo: bool = False):
    """The model as ONNX; batch=None gives a dynamic batch dimension."""
    x = torch.zeros(batch or 2, 1, 28, 28)
    kwargs = {}
    if batch is None:
        kwargs = ({"dynamic_shapes": {"x": {0: torch.export.Dim("N")}}} if dynamo
                  else {"dynamic_axes": {"input": {0: "N"}, "logits": {0: "N"}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=["input"], output_names=["logits"],
                          **kwargs)
    return path


def subset(ds: ArrayDataset, n: int) -> ArrayDataset:
    return ArrayDataset(ds.images[:n], ds.labels()[:n], ds.class_names, ds.preprocessing,
                        {**ds.describe(), "subset": f"0:{n}"})


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, demo_model):
    return export(demo_model.module, tmp_path_factory.mktemp("onnx") / "sketchnet.onnx")


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, demo_model, small_test_set):
    return sketchmine.mine(demo_model.module, small_test_set, out=tmp_path_factory.mktemp("t") / "run.zarr",
                           batch_size=50)


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory, onnx_path, small_test_set):
    return sketchmine.mine(str(onnx_path), small_test_set, out=tmp_path_factory.mktemp("o") / "run.zarr",
                           batch_size=50, flush_every=2)


def test_onnx_mining_matches_torch(onnx_run, torch_run):
    """Same layers (named by torch module), same top-k up to float rounding, same accuracy."""
    assert onnx_run.complete and onnx_run.layers == torch_run.layers
    for name in torch_run.layers:
        assert_same_topk(onnx_run.topk(name), torch_run.topk(name), name, rtol=1e-4)
        same_image = onnx_run.topk(name)[1] == torch_run.topk(name)[1]
        np.testing.assert_array_equal(onnx_run.topk(name)[2][same_image], torch_run.topk(name)[2][same_image])
    ev_o, ev_t = onnx_run.store.group["eval"], torch_run.store.group["eval"]
    np.testing.assert_allclose(ev_o["logits"][...], ev_t["logits"][...], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ev_o["predictions"][...], ev_t["predictions"][...])
    assert onnx_run.accuracy() == torch_run.accuracy()
    assert onnx_run.attrs["model"] == "onnx:sketchnet.onnx"
    assert onnx_run.attrs["weights_hash"] != torch_run.attrs["weights_hash"]  # initializers, not a state_dict
    layer = onnx_run.store.group["layers/features.0"].attrs
    assert layer["kind"] == "conv"
    assert layer["receptive_field"] == torch_run.store.group["layers/features.0"].attrs["receptive_field"]
    assert layer["onnx_tensor"] == "/features/features.0/Conv_output_0"
    assert onnx_run.store.group["layers/classifier.1"].attrs["kind"] == "gemm"


def test_layers_by_module_node_and_tensor_name(tmp_path, onnx_path, demo_model, small_test_set):
    """A torch module (also a container), a node name and a tensor name tap what the torch
    module hooks see: brute-force top-k over the same images."""
    ds = subset(small_test_set, 80)
    onnx_layers = ["features.6", "/features/features.7/Relu", "/classifier/classifier.4/Gemm_output_0", "features"]
    torch_layers = ["features.6", "features.7", "classifier.4", "features"]
    run = sketchmine.mine(str(onnx_path), ds, layers=onnx_layers, k=5, out=tmp_path / "r.zarr", batch_size=16)
    assert run.layers == ["features.6", "|features|features.7|Relu", "|classifier|classifier.4|Gemm_output_0",
                          "features"]
    onnx_layers = run.layers  # "/" is written "|" in the store
    assert run.layer_shape("features") == (64, 3, 3)
    acts, _ = all_activations(demo_model.module, ds, torch_layers)
    for o_name, t_name in zip(onnx_layers, torch_layers):
        values, index, position = brute_topk(acts[t_name], 5)
        assert_same_topk(run.topk(o_name), (values, index, None), o_name, rtol=1e-4)
    relu, conv = run.topk("|features|features.7|Relu")[0], run.topk("features.6")[0]
    np.testing.assert_allclose(relu[:, 0], np.maximum(conv[:, 0], 0), rtol=1e-6)  # the ReLU of that conv


def test_fixed_batch_graph_is_run_in_chunks(tmp_path, demo_model, small_test_set):
    """A graph exported with a fixed batch of 4 mines batches of 7 (padded chunks of 4)."""
    path = export(demo_model.module, tmp_path / "fixed.onnx", batch=4)
    ds = subset(small_test_set, 30)
    run = sketchmine.mine(str(path), ds, out=tmp_path / "o.zarr", batch_size=7, k=4)
    ref = sketchmine.mine(demo_model.module, ds, out=tmp_path / "t.zarr", batch_size=7, k=4)
    for name in ref.layers:
        assert_same_topk(run.topk(name), ref.topk(name), name, rtol=1e-4)
    assert run.accuracy() == ref.accuracy()


class TimeFirst(torch.nn.Module):
    """A conv's (T, N, 4) positions read by a Linear: its tensor holds the images on axis 1."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, stride, stride=stride)
        self.mix, self.head = torch.nn.Linear(4, 6), torch.nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.conv(x).flatten(2).permute(2, 0, 1)).mean(0))


@pytest.mark.parametrize("stride", [14, 7])
def test_a_fixed_batch_graph_keeps_each_tensors_images_on_their_axis(stride, tmp_path, small_test_set):
    """A (T, N, D) tensor of a graph of batch 4 was joined and cut along axis 0: one row an image,
    (T, 4, D) read as 6 units at 4 positions, the padded chunk's images, and mined where the graph
    with a dynamic batch leaves it out. T = 4 (stride 14) is the batch size itself; T = 16 is not.
    Both graphs now mine the same layers alike, and refuse `mix` by name alike."""
    model, ds = TimeFirst(stride).eval(), subset(small_test_set, 30)
    runs, refusals = [], []
    for batch in (4, None):
        path = export(model, tmp_path / f"{batch}.onnx", batch=batch)
        runs.append(sketchmine.mine(str(path), ds, out=tmp_path / f"{batch}.zarr", batch_size=7, k=4))
        with pytest.raises(SketchmineError, match="first dimension is not the batch") as refused:
            sketchmine.mine(str(path), ds, layers=["mix"], out=tmp_path / f"{batch}-mix.zarr")
        refusals.append(str(refused.value).replace(path.name, "m.onnx"))
    fixed, dynamic = runs
    assert fixed.layers == dynamic.layers == ["conv", "head", "softmax"]
    for name in dynamic.layers:
        assert_same_topk(fixed.topk(name), dynamic.topk(name), name, rtol=1e-4)
    assert refusals[0] == refusals[1] == (f"layer 'mix' of m.onnx returns {(28 // stride) ** 2} rows for 1 image(s): "
                                          "its first dimension is not the batch, so its positions cannot be credited "
                                          "to images; mine the modules or tensors before or after it")


def test_the_images_axis_is_found_where_an_image_is_the_padding(tmp_path, small_test_set):
    """Under preprocessing='none' a sketch's black background is the zero padding: the image's first
    two 7×7 patches equalled the padded samples' there, and the (16, N, 6) tensor of a graph of
    batch 16 was read along its 16 positions as images, mined where a dynamic graph refuses it."""
    blank = next(i for i in range(len(small_test_set)) if not small_test_set.images[i][:7, :14].any())
    order = [blank, *(i for i in range(30) if i != blank)]
    ds = ArrayDataset(small_test_set.images[order], small_test_set.labels()[order], small_test_set.class_names)
    model = TimeFirst(7).eval()
    said = []
    for batch in (16, None):
        path = export(model, tmp_path / f"{batch}.onnx", batch=batch)
        with pytest.raises(SketchmineError, match="first dimension is not the batch") as refused:
            sketchmine.mine(str(path), ds, layers=["mix"], preprocessing="none", out=tmp_path / f"{batch}.zarr",
                            batch_size=7, k=3)
        said.append(str(refused.value).replace(path.name, "m.onnx"))
    assert said[0] == said[1]


def test_onnx_resume_is_identical_to_uninterrupted(tmp_path, onnx_path, onnx_run, small_test_set):
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(str(onnx_path), small_test_set, out=out, batch_size=50, flush_every=2,
                        progress=StopAfter(160))
    assert sketchmine.open_run(out).images_done == 100
    sketchmine.mine(str(onnx_path), small_test_set, out=out, batch_size=50, flush_every=2)
    assert_same_store(out, onnx_run.path)


def test_dynamo_export_names_layers_by_module(tmp_path, demo_model, small_test_set):
    """The new exporter names nodes node_conv2d; its name-scope metadata still gives torch names."""
    pytest.importorskip("onnxscript")
    path = export(demo_model.module, tmp_path / "dyn.onnx", dynamo=True)
    ds = subset(small_test_set, 40)
    run = sketchmine.mine(str(path), ds, out=tmp_path / "o.zarr", batch_size=20, k=3)
    ref = sketchmine.mine(demo_model.module, ds, out=tmp_path / "t.zarr", batch_size=20, k=3)
    assert run.layers == ref.layers
    for name in ref.layers:
        assert_same_topk(run.topk(name), ref.topk(name), name, rtol=1e-4)


def test_bad_onnx_inputs(tmp_path, onnx_path, small_test_set):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model, just text" * 20)
    with pytest.raises(SketchmineError, match=r"garbage\.onnx is not an ONNX model"):
        sketchmine.mine(str(garbage), small_test_set, out=tmp_path / "a.zarr")
    with pytest.raises(SketchmineError, match=r"ONNX model file .*missing\.onnx does not exist"):
        sketchmine.mine(str(tmp_path / "missing.onnx"), small_test_set, out=tmp_path / "a.zarr")
    with pytest.raises(SketchmineError, match=r"unknown layer 'features\.99' in sketchnet\.onnx.*"
                                              r"closest matches: features\.9.*available by default: features\.0"):
        sketchmine.mine(str(onnx_path), small_test_set, layers=["features.99"], out=tmp_path / "a.zarr")
    with pytest.raises(SketchmineError, match=r"closest matches: /features/features\.0/Conv_output_0"):
        sketchmine.mine(str(onnx_path), small_test_set, layers=["/features/features.0/Conv_output_7"],
                        out=tmp_path / "a.zarr")
    with pytest.raises(SketchmineError, match="carries its own weights"):
        sketchmine.mine(str(onnx_path), small_test_set, weights=str(garbage), out=tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_onnx_cli(tmp_path, onnx_path, demo_test_set):
    """`sketchmine mine --model x.onnx` on PNGs equals the torch model on them; a non-ONNX
    file is one clean error line."""
    ds = demo_test_set
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:6] for c in range(10)])
    folder = export_image_folder(ArrayDataset(ds.images[pick], ds.labels()[pick], ds.class_names, ds.preprocessing,
                                              ds.describe()), tmp_path / "images")
    out = tmp_path / "run.zarr"
    proc = sm("mine", "--model", str(onnx_path), "--data", str(folder), "--out", str(out), "--batch-size", "16",
              "--workers", "0", "--preprocessing", "imagenet")
    assert proc.returncode == 0, proc.stderr
    assert "features.0" in proc.stdout and "accuracy" in proc.stdout
    run = sketchmine.open_run(out)
    ref = sketchmine.mine("demo", folder, out=tmp_path / "ref.zarr", batch_size=16,
                          preprocessing=preset("imagenet", 1, None))
    for name in ref.layers:
        assert_same_topk(run.topk(name), ref.topk(name), name, rtol=1e-4)
    bad = tmp_path / "model.onnx"
    bad.write_text("not onnx")
    assert_clean_error(sm("mine", "--model", str(bad), "--data", str(folder), "--out", str(tmp_path / "r")),
                       r"model\.onnx is not an ONNX model")


def test_a_float16_graph_is_said(tmp_path, demo_model, small_test_set):
    """A float16 graph's activations are float16's: its run records and says so, as a half torch
    model's does (it was shown as float32)."""
    import copy

    half = copy.deepcopy(demo_model.module).half()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(half, (torch.rand(2, 1, 28, 28).half(),), str(tmp_path / "half.onnx"), dynamo=False,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}})
    run = sketchmine.mine(str(tmp_path / "half.onnx"), subset(small_test_set, 20), out=tmp_path / "o.zarr",
                          batch_size=10, layers=["features.0"])
    assert run.attrs["model_dtype"] == "float16" and run.precision == "float16" and "float16" in repr(run)
    assert sketchmine.open_run(tmp_path / "o.zarr").precision == "float16"


def test_a_graph_of_frame_sequences_is_refused_as_one(tmp_path):
    """demo-gru exported to ONNX takes (batch, steps, 1, 28, 28); its frames fold into the batch
    inside the graph, so the ONNX backend cannot credit them to images. It was refused as a model
    of 8-channel input (the step axis read as channels); now as what it is, naming the way that
    mines it (the torch module)."""
    from sketchmine import SequenceDataset
    from sketchmine.data import animal_shape

    model = sketchmine.load_model("demo-gru").module
    path = tmp_path / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 8, 1, 28, 28),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    frames = SequenceDataset(subset(animal_shape("test", sketchmine.preprocessing_for("demo-gru")), 16), 8)
    with pytest.raises(SketchmineError, match=r"gru\.onnx: the graph's input 'x' is \('batch', 8, 1, 28, 28\), 5-D; "
                                              r".* from its torch module"):
        sketchmine.mine(str(path), frames, out=tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
