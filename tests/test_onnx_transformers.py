"""Vision transformers exported to ONNX are mined as their torch modules: the graph's axes are
followed through the patch flattening, the class token's Concat, window partitions (Reshape,
Transpose), a patch merge's strided slices and the attention's Gemm, so that every LayerNorm,
attention output, MLP activation and block is read by its features, as the torch backend reads
it; the default layers leave out the attention's products, whose rows are not the images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchmine
from tests.test_channels_last_layers import _Grey3, _transformers

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def sketches(small_test_set):
    from tests.test_channels_last_layers import per_class_subset

    sub = per_class_subset(small_test_set, 4, "channels-last")
    x = torch.from_numpy(np.asarray(sub.images)).float().div(255)[:, None]
    return torch.utils.data.TensorDataset(x, torch.from_numpy(sub.labels()).long())


@pytest.mark.parametrize("which", ["MaxVit", "SwinTransformer", "VisionTransformer"])
def test_an_exported_transformer_is_mined_as_its_torch_module(which, sketches, tmp_path, caplog):
    from tests.test_onnx import export

    net, layers, _ = next(t for t in _transformers() if type(t[0]).__name__ == which)
    model = torch.nn.Sequential(_Grey3(), net).eval()  # the export takes the sketches' one channel
    layers = [f"1.{layer}" for layer in layers]
    onnx = sketchmine.load_model(export(model, tmp_path / "m.onnx"))
    with caplog.at_level("WARNING", logger="sketchmine"):
        got = sketchmine.mine(onnx, sketches, layers=layers, k=3, out=tmp_path / "o.zarr")
    assert not [r for r in caplog.records if "read with their units on axis 1" in r.getMessage()]
    want = sketchmine.mine(model, sketches, layers=layers, k=3, out=tmp_path / "t.zarr")
    for layer in layers:
        assert got.layer_shape(layer) == want.layer_shape(layer), layer
        assert got.layer_attrs(layer)["layout"] == want.layer_attrs(layer)["layout"], layer
        (gv, gi, gyx), (wv, wi, wyx) = got.topk(layer), want.topk(layer)
        assert np.array_equal(gi, wi) and np.array_equal(gyx, wyx), layer
        assert np.allclose(gv, wv, rtol=1e-5, atol=1e-5), layer


def test_the_default_layers_of_an_exported_transformer_leave_out_the_attention_products(sketches, tmp_path, caplog):
    """A ViT's attention computes (N·heads, T, T) scores and a (T·N, D) projection: ONNX tensors
    whose rows are not the images. Mined by default, they refused the whole model; they are left
    out, and said, and the class softmax is the logits' (not an attention's Softmax node)."""
    from tests.test_onnx import export

    net = next(t[0] for t in _transformers() if type(t[0]).__name__ == "VisionTransformer")
    onnx = sketchmine.load_model(export(torch.nn.Sequential(_Grey3(), net).eval(), tmp_path / "vit.onnx"))
    with caplog.at_level("WARNING", logger="sketchmine"):
        run = sketchmine.mine(onnx, sketches, k=3, out=tmp_path / "r.zarr")
    said = [r.getMessage() for r in caplog.records if "first dimension is not the batch" in r.getMessage()]
    assert len(said) == 1 and "self_attention" in said[0]
    block = "1.encoder.layers.encoder_layer_0"
    assert {f"{block}.mlp.0", f"{block}.mlp.3", "softmax"} <= set(run.layers)
    assert not [layer for layer in run.layers if "self_attention" in layer]
    assert run.layer_shape(f"{block}.mlp.0") == (20, 17)
    probabilities = run.topk("softmax")[0]
    assert probabilities.shape[0] == 10 and np.all((probabilities > 0) & (probabilities <= 1))
    with pytest.raises(sketchmine.SketchmineError, match="first dimension is not the batch"):
        sketchmine.mine(onnx, sketches, layers=["|1|encoder|layers|encoder_layer_0|self_attention|MatMul"],
                        out=tmp_path / "named.zarr")  # asked for by name: refused, as before
    assert not (tmp_path / "named.zarr").exists()


def test_a_vision_transformers_tokens_are_positions_not_steps(sketches, tmp_path):
    """A ViT's (N, T, D) layers were positioned as a sequence's steps, as a recurrent head's are:
    the report called its tokens "17 steps", asked for "the drawings at each entry's step" and
    wrote "t=13 of 17" on its cards. An image's tokens are tokens, for torch and ONNX alike."""
    import json

    from sketchmine.present.report import write_report
    from tests.test_onnx import export

    net = next(t[0] for t in _transformers() if type(t[0]).__name__ == "VisionTransformer")
    model = torch.nn.Sequential(_Grey3(), net).eval()
    layer = "1.encoder.layers.encoder_layer_0.ln_1"
    onnx = sketchmine.load_model(export(model, tmp_path / "vit.onnx"))
    for name, m in (("torch", model), ("onnx", onnx)):
        run = sketchmine.mine(m, sketches, layers=[layer], k=3, out=tmp_path / f"{name}.zarr")
        attrs = run.layer_attrs(layer)
        assert (attrs["position"], attrs["yx"], attrs["layout"]) == ("tokens", "(0, token)", "(N, T, F) → (N, F, T)")
    page = write_report(run, tmp_path / "rep").parent / "layers" / f"00-{layer}.html"
    assert "steps" not in page.read_text() and "12×17" in page.read_text()
    data = (page.parent.parent / "data" / f"00-{layer}" / "page_0000.js").read_text()
    assert all("t" not in e for u in json.loads(data[data.index("["):data.rindex("]") + 1]) for e in u["entries"])


def test_a_softmax_node_before_a_flatten_is_the_mined_softmax(sketches, tmp_path):
    """The class softmax was taken for an attention's unless it made or fed the graph's output:
    a head's Softmax followed by a Flatten was replaced by the virtual softmax, a softmax of the
    probabilities the graph returns (0.2123 for 0.2605)."""
    from tests.test_onnx import export

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, stride=3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Conv2d(6, 10, 1), torch.nn.Softmax(dim=1), torch.nn.Flatten()).eval()
    onnx = sketchmine.load_model(export(head, tmp_path / "head.onnx"))
    run = sketchmine.mine(onnx, sketches, k=3, out=tmp_path / "r.zarr")
    assert "softmax" not in run.layers and run.layers[-1] == "3"
    with torch.no_grad():
        probs = head(sketches.tensors[0])
    assert np.allclose(run.topk("3")[0][:, 0], probs.max(0).values.numpy(), rtol=1e-5)
