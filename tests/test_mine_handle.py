"""What `mine` hands back and how it gets there: the run it returns answers its first reads of
the final arrays it wrote as a checked read's copy (the same dtypes, shapes and values as a
fresh handle's reads of the files), and the weights hash, computed on a thread while the model is
probed, is of the weights as they were, not of the meta tensors the probe's shape pass puts in
the module's place for a moment. Real test images, the demo model."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import sketchmine
from sketchmine import data
from sketchmine.errors import SketchmineError
from sketchmine.model.forward import TorchForward, module_weights_hash
from sketchmine.model.meta import meta_call
from sketchmine.model.models import load_model
from sketchmine.store import schema
from sketchmine.store.runstore import RunStore


@pytest.fixture(scope="module", params=[False, True], ids=["default", "distributions"])
def mined(request, tmp_path_factory) -> tuple[sketchmine.Run, Path]:
    out = tmp_path_factory.mktemp("handle") / "run.zarr"
    run = sketchmine.mine("demo", data.animal_shape("test"), out=out, batch_size=32, distributions=request.param)
    return run, out


def test_the_returned_run_reads_what_a_fresh_handle_reads(mined):
    run, out = mined
    fresh = RunStore.open(out)
    names = list(fresh.attrs[schema.CHECKSUMS])
    kept = {key[1] for key in run.store._blocks.blocks if key[0] == "final"}
    topk = {schema.layer_array(layer, key) for layer in run.layers for key in ("values", "image_index", "yx")}
    assert topk <= kept  # every layer's top-k as written, among the final arrays handed over
    for name in names:
        a, b = run.store.read(name), fresh.read(name)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), name
    layer = run.layers[0]
    assert np.array_equal(run.layer_array(layer, "values"), sketchmine.open_run(out).layer_array(layer, "values"))


def test_the_returned_run_answers_from_what_it_wrote_and_a_fresh_one_reads_the_files(tmp_path):
    out = tmp_path / "run.zarr"
    run = sketchmine.mine("demo", data.animal_shape("test"), out=out, batch_size=32)
    layer = run.layers[-1]  # the softmax: not read by mine's own notes
    written = sketchmine.open_run(out).layer_array(layer, "values")
    name = schema.layer_array(layer, "values")
    chunk = next(p for p in (out / name).rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])  # damaged after mine returned, before its first read
    assert np.array_equal(run.layer_array(layer, "values"), written)
    with pytest.raises(SketchmineError, match="damaged"):
        sketchmine.open_run(out).layer_array(layer, "values")


def test_the_weights_hash_taken_aside_is_of_the_weights_not_the_probes_meta_tensors():
    net = load_model("demo").module
    want = module_weights_hash(net)
    later = TorchForward(net).weights_hash_later()
    seen: list[str] = []

    def during(module, args):  # inside the meta call: the module's tensors are meta tensors now
        assert next(module.parameters()).device.type == "meta" or any(
            t.device.type == "meta" for t in args if isinstance(t, torch.Tensor))
        seen.append(later())

    handle = net.register_forward_pre_hook(during)
    try:
        meta_call(net, torch.rand(2, 1, 28, 28))
    finally:
        handle.remove()
    assert seen == [want]
    assert later() == want


def test_a_process_that_stops_while_the_weights_are_hashed_waits_for_the_hash(tmp_path):
    """A command refused early (an empty dataset) exits while the hash is computed: a daemon
    thread there was torn down inside torch and C++ aborted ("terminate called without an
    active exception") after the one-line error. The hash is slowed here so that it is
    certainly still running at the exit; it must have finished when the process is gone."""
    done = tmp_path / "hashed"
    script = textwrap.dedent(f"""
        import time
        import sketchmine.model.forward as fw
        from sketchmine.model.backend import as_forward, weights_hash_aside
        from sketchmine.model.models import load_model
        real = fw._tensors_hash
        def slow(tensors, algorithm):
            time.sleep(0.5)
            digest = real(tensors, algorithm)
            open({str(done)!r}, "w").write(digest)
            return digest
        fw._tensors_hash = slow
        weights_hash_aside(as_forward(load_model("demo").module))
        raise SystemExit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "terminate" not in proc.stderr, proc.stderr
    assert done.read_text() == module_weights_hash(load_model("demo").module)
