"""Batched preprocessing on the mining device (data/batchprep.py, mining/prefetch.py,
mining/memory.py): the batched op against the per-image rule, native batches grouped by size,
JPEG decoding with its PIL fallback, whole mining passes by both routes, the resume check and
the out-of-memory message."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import sketchmine
from sketchmine.data import ImageFolderDataset, chw, preset
from sketchmine.data.batchprep import DevicePreparer, NativeSamples, choose, collate_native, decode_jpegs, prepare_uint8
from sketchmine.errors import SketchmineError
from sketchmine.mining import memory
from sketchmine.mining.prefetch import prepared
from tests.helpers import StopAfter, assert_same_store, image_folder, store_arrays

CUDA = torch.cuda.is_available()


def per_image(images: np.ndarray, pre) -> torch.Tensor:
    """The reference: `Preprocessing.prepare` one image at a time, as the cpu route does."""
    return torch.stack([pre.prepare(chw(im)[None])[0] for im in images])


@st.composite
def batches(draw):
    """Random uint8 batches (never all zero), 1 or 3 stored channels (2 and 4: with alpha),
    and a preprocessing to 1 or 3 channels, resized (up or down) or not."""
    n, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    c = draw(st.sampled_from([1, 2, 3, 4]))
    seed = draw(st.integers(0, 2**32 - 1))
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    assume(images.any())
    size = draw(st.one_of(st.none(), st.tuples(st.integers(1, 48), st.integers(1, 48))))
    pre = preset(draw(st.sampled_from(["imagenet", "none"])), draw(st.sampled_from([1, 3])), size)
    return images, pre


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_batched_op_equals_the_per_image_rule(case):
    images, pre = case
    got = prepare_uint8(torch.from_numpy(images), pre)
    want = per_image(images[..., 0] if images.shape[-1] == 1 else images, pre)  # (H, W) and (H, W, 1) alike
    assert got.shape == want.shape and got.stride() == want.contiguous().stride() == torch.empty(want.shape).stride()
    assert torch.equal(got, want)  # on the CPU: the same floats


def rule_written_out(x: torch.Tensor, pre) -> torch.Tensor:
    """The preprocessing rule step by step, each step materialised: the channels converted
    (alpha dropped, grey repeated, colour to luma), every plane resized, then (x - mean) / std."""
    if x.shape[1] in (2, 4):
        x = x[:, :-1]
    if pre.channels == 1 and x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(dim=1, keepdim=True)
    elif x.shape[1] == 1 and pre.channels > 1:
        x = x.repeat(1, pre.channels, 1, 1)
    else:
        x = x[:, :pre.channels]
    if pre.size is not None and tuple(x.shape[-2:]) != tuple(pre.size):
        x = pre.resize(x)
    if pre.mean:
        x = (x - torch.tensor(pre.mean).view(-1, 1, 1)) / torch.tensor(pre.std).view(-1, 1, 1)
    return x


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_prepare_equals_the_rule_written_out(case):
    """`prepare` resizes a grey plane once and writes the repeat in the normalisation: the same
    floats as the rule done step by step, with a repeat written (no zero stride)."""
    images, pre = case
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    got, want = pre.prepare(x), rule_written_out(x, pre)
    assert got.shape == want.shape and 0 not in got.stride()
    assert torch.equal(got, want)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=40)
@given(batches())
def test_batched_op_on_cuda_is_within_float_rounding(case):
    images, pre = case
    got = prepare_uint8(torch.from_numpy(images).cuda(), pre).cpu()
    want = per_image(images, pre)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_constants_of_a_device_batch_are_made_once(monkeypatch):
    """Off the CPU the normalisation's mean and std and the luma weights are made once per
    device, not per batch: torch.tensor(..., device="cuda") is a blocking copy that waits for
    the side stream's queued work (the previous batch's forward) at every batch. The meta
    device stands in for CUDA here; the values are those of a fresh tensor."""
    made = []
    real = torch.tensor

    def counted(*args, **kwargs):
        if torch.device(kwargs.get("device") or "cpu").type != "cpu":
            made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counted)
    colour, grey = preset("imagenet", 3, (8, 8)), preset("imagenet", 1, (8, 8))
    for _ in range(3):
        assert colour.prepare(torch.zeros(2, 1, 5, 5, device="meta")).shape == (2, 3, 8, 8)
        assert grey.prepare(torch.zeros(2, 3, 5, 5, device="meta")).shape == (2, 1, 8, 8)
    assert len(made) <= 5  # at most once each: colour mean, std; grey mean, std; luma
    from sketchmine.data.preprocess import LUMA, constant
    kept = constant(LUMA, torch.float32, torch.device("meta"))
    assert kept.shape == (3, 1, 1) and not kept.is_inference() and not kept.requires_grad


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_batched_op_on_cuda_waits_for_nothing():
    """After a first batch, preparing a batch on CUDA queues its work without a host
    synchronisation (one a batch would stall the prefetch: mining/prefetch.py)."""
    for pre, c in ((preset("imagenet", 3, (224, 224)), 1), (preset("imagenet", 1, (32, 32)), 3)):
        x = torch.randint(0, 256, (4, 28, 28, c), dtype=torch.uint8, device="cuda")
        want = prepare_uint8(x, pre)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = prepare_uint8(x, pre)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.equal(got, want)


def test_cuda_jpegs_are_decoded_after_the_callers_queued_work(monkeypatch):
    """The caller's stream is synchronised before nvJPEG is called (the workaround for
    pytorch/vision#9606); the decoder and the stream are stand-ins here, the CUDA test below
    checks the memory on a GPU."""
    import torchvision.io

    calls = []

    class Stream:
        def synchronize(self) -> None:
            calls.append("sync")

    def decode(data, mode, device):
        calls.append("decode")
        one = torch.zeros(3, 2, 2, dtype=torch.uint8)
        return [one] * len(data) if isinstance(data, list) else one

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode)
    for n in (1, 3):
        calls.clear()
        out = decode_jpegs([torch.zeros(4, dtype=torch.uint8)] * n, torch.device("cuda"))
        assert calls == ["sync", "decode"] and [im.shape for im in out] == [(2, 2, 3)] * n


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_jpeg_decoding_leaves_memory_that_queued_work_reads(small_test_set):
    """nvJPEG's outputs come from blocks freed on the caller's stream; it must not write them
    while kernels queued there still read them (pytorch/vision#9606): freed tensors of the
    decoded images' size, still read by reductions queued behind a long kernel, keep their
    values, and the images decode as on the CPU."""
    import io

    data = []
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(small_test_set.images[i])).convert("RGB").resize((64, 64)).save(buf, "JPEG")
        data.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    want = decode_jpegs(data, torch.device("cpu"))
    dev, size = torch.device("cuda"), 64 * 64 * 3
    for _ in range(10):
        filled = [torch.full((size,), 7, dtype=torch.uint8, device=dev) for _ in data]
        torch.cuda.synchronize()
        torch.cuda._sleep(20_000_000)  # the reductions below wait behind it
        sums = [t.sum(dtype=torch.int64) for t in filled]
        del filled  # freed on the current stream while the reductions are still queued
        got = decode_jpegs(data, dev)
        torch.cuda.synchronize()
        assert [int(s) for s in sums] == [7 * size] * len(data)
        for g, w in zip(got, want):
            assert g is not None and g.shape == w.shape
            assert (g.cpu().int() - w.int()).abs().max() <= 8  # nvJPEG's IDCT rounds differently from libjpeg's


def test_grey_conversion_is_luma_on_real_colour_pixels(small_test_set):
    """RGB → 1 channel through the batch op is R*.299 + G*.587 + B*.114 of the real images."""
    grey = small_test_set.images[:8]
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1).astype(np.uint8)
    got = prepare_uint8(torch.from_numpy(rgb), preset("none", 1, None))[:, 0].double()
    want = torch.from_numpy(rgb.astype(np.float64) / 255 @ np.array([0.299, 0.587, 0.114]))
    assert float(want.abs().max()) > 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def folder_batch(ds, indices, jpeg_bytes=False):
    return collate_native([NativeSamples(ds, jpeg_bytes)[i] for i in indices])


def test_mixed_sizes_are_grouped_and_equal_the_per_image_route(tmp_path, small_test_set):
    root = image_folder(small_test_set, tmp_path / "f", per_class=1)
    files = sorted(root.rglob("*.png"))
    Image.open(files[1]).resize((40, 30)).save(files[1])  # one 30×40 image among 28×28 ones
    Image.open(files[2]).convert("RGB").save(files[2])  # and one colour file
    ds = ImageFolderDataset(root, preset("imagenet", 3, (32, 32)))
    idx, packed, _, notes = folder_batch(ds, range(len(ds)))
    assert len(packed[0]) == 3  # 28×28 grey, 30×40 grey, 28×28 colour
    x, _ = DevicePreparer(ds, torch.device("cpu"))(idx, packed, notes)
    assert torch.equal(x, torch.stack([ds[i][1] for i in range(len(ds))]))


def test_differing_sizes_without_a_size_name_two_files(tmp_path, small_test_set):
    root = image_folder(small_test_set, tmp_path / "f", per_class=1)
    files = sorted(root.rglob("*.png"))
    Image.open(files[3]).resize((20, 24)).save(files[3])
    ds = ImageFolderDataset(root, preset("none", 1, None))
    idx, packed, _, notes = folder_batch(ds, range(len(ds)))
    with pytest.raises(SketchmineError, match=r"images differ in size: .*\.png is \(1, 28, 28\), .*\.png is \(1, 24, 20\)"):
        DevicePreparer(ds, torch.device("cpu"))(idx, packed, notes)


@pytest.mark.parametrize("case", ["colour beside grey", "second batch"])
def test_differing_sizes_are_named_alike_on_both_routes(tmp_path, small_test_set, case):
    """"images differ in size" named other files on each route: the cpu route the batch's first
    readable image and its first of another shape, the batched route the last image grouped
    under each stored (H, W) (a grey and a colour file of one size are two groups). Both now
    name the image the model was probed with (the dataset's first readable one) and the first
    image of another size in dataset order, whatever the batches."""
    root = image_folder(small_test_set, tmp_path / "f", per_class=1)
    files = sorted(root.rglob("*.png"))  # the dataset's order
    if case == "colour beside grey":  # old: cpu named files 0 and 2, device files 1 and 2
        Image.open(files[1]).convert("RGB").save(files[1])
        other = files[2]
    else:  # the first of batch 2 differs: both named files 4 and 5, 5 being of the first size
        other = files[4]
    Image.open(other).resize((30, 30)).save(other)
    Image.open(files[7]).resize((20, 24)).save(files[7])  # a third size, later
    rel = [str(f.relative_to(root)) for f in (files[0], other)]
    for route in ("cpu", "device"):
        with pytest.raises(SketchmineError) as err:
            sketchmine.mine("demo", root, out=tmp_path / f"{route}.zarr", preprocess=route, layers=["features.0"],
                            k=1, batch_size=4)
        assert str(err.value) == (f"images differ in size: {rel[0]} is (1, 28, 28) as model input, {rel[1]} is "
                                  "(1, 30, 30); pass --image-size (image_size=) to resize them all"), route


def test_a_jpeg_decoded_apart_is_named_in_dataset_order(tmp_path, small_test_set):
    """The device route decodes JPEGs apart and grouped them after the stored pixels, so a
    leading JPEG of another size was named second (files 1 and 0); the batch's order now holds."""
    root = image_folder(small_test_set, tmp_path / "f", per_class=1)
    files = sorted(root.rglob("*.png"))
    Image.open(files[0]).resize((30, 30)).save(files[0].with_suffix(".jpg"), quality=95)
    files[0].unlink()
    ds = ImageFolderDataset(root, preset("none", 1, None))
    idx, packed, _, notes = collate_native([NativeSamples(ds, jpeg_bytes=True)[i] for i in range(4)])
    assert len(packed[1]) == 1  # the JPEG, decoded by `decode`
    with pytest.raises(SketchmineError, match=rf"^images differ in size: {ds.path(0)} is \(1, 30, 30\), "
                                              rf"{ds.path(1)} is \(1, 28, 28\)"):
        DevicePreparer(ds, torch.device("cpu"))(idx, packed, notes)


def write_jpegs(ds, root, colour):
    for i in range(4):
        folder = root / ds.class_names[int(ds.labels()[i])]
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(np.asarray(ds.images[i]))
        (im.convert("RGB") if colour and i % 2 else im).resize((40, 40)).save(folder / f"{i}.jpg", quality=90)


def test_jpegs_decoded_in_the_loop_match_pil(tmp_path, small_test_set):
    """The device route's decoder (torchvision's decode_jpeg; here on the CPU, nvJPEG on a GPU)
    gives PIL's pixels for grey and colour JPEGs of real images, so the same inputs."""
    write_jpegs(small_test_set, tmp_path / "j", colour=True)
    ds = ImageFolderDataset(tmp_path / "j", preset("imagenet", 3, (32, 32)))
    idx, packed, _, notes = folder_batch(ds, range(len(ds)), jpeg_bytes=True)
    assert len(packed[1]) == len(ds) and notes == ["jpeg"] * len(ds)
    prep = DevicePreparer(ds, torch.device("cpu"))
    x, notes = prep(idx, packed, notes)
    assert not prep.fallbacks
    assert notes == [ds[i][3] for i in range(len(ds))]  # the grey files' "converted:L" as PIL says
    torch.testing.assert_close(x, torch.stack([ds[i][1] for i in range(len(ds))]), rtol=0, atol=1e-6)


def test_a_jpeg_the_decoder_refuses_falls_back_to_pil_and_is_counted(tmp_path, small_test_set):
    write_jpegs(small_test_set, tmp_path / "j", colour=False)
    ds = ImageFolderDataset(tmp_path / "j", preset("none", 1, (28, 28)))
    bad = ds.root / ds.path(2)
    Image.fromarray(np.asarray(small_test_set.images[9])).save(bad, format="PNG")  # PIL reads it, decode_jpeg not
    assert decode_jpegs([torch.frombuffer(bytearray(bad.read_bytes()), dtype=torch.uint8)], torch.device("cpu")) == [None]
    idx, packed, _, notes = folder_batch(ds, range(len(ds)), jpeg_bytes=True)
    prep = DevicePreparer(ds, torch.device("cpu"))
    x, notes = prep(idx, packed, notes)
    assert prep.fallbacks == [ds.path(2)]
    torch.testing.assert_close(x, torch.stack([ds[i][1] for i in range(len(ds))]), rtol=0, atol=1e-6)


def test_prepared_batches_on_the_cpu_are_the_loaders_in_order(small_test_set):
    from torch.utils.data import DataLoader

    loader = DataLoader(NativeSamples(small_test_set), batch_size=7, collate_fn=collate_native)
    prep = DevicePreparer(small_test_set, torch.device("cpu"))
    got = list(prepared(loader, prep, torch.device("cpu")))
    assert torch.equal(torch.cat([b[0] for b in got]), torch.arange(len(small_test_set)))
    assert torch.equal(torch.cat([b[1] for b in got]), torch.stack([small_test_set[i][1] for i in range(len(small_test_set))]))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_prepared_batches_ahead_on_cuda_match_the_cpu(small_test_set):
    from torch.utils.data import DataLoader

    loader = DataLoader(NativeSamples(small_test_set), batch_size=64, collate_fn=collate_native, pin_memory=True)
    dev = torch.device("cuda")
    got = torch.cat([b[1].cpu() for b in prepared(loader, DevicePreparer(small_test_set, dev), dev)])
    want = torch.stack([small_test_set[i][1] for i in range(len(small_test_set))])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_both_routes_mine_the_same_store(tmp_path, demo_model, small_test_set):
    runs = {p: sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / f"{p}.zarr", batch_size=32,
                               preprocess=p) for p in ("cpu", "device")}
    assert runs["cpu"].attrs["preprocess"] == "cpu" and runs["device"].attrs["preprocess"] == "device"
    assert_same_store(tmp_path / "device.zarr", tmp_path / "cpu.zarr")
    assert float(np.nanmax(store_arrays(tmp_path / "cpu.zarr")["layers/features.0/values"])) > 0


def test_both_routes_mine_the_same_folder_resized(tmp_path, demo_model, small_test_set):
    """An ImageFolder of three sizes and a colour file, resized to the model's 28 px: grey
    conversion and antialiased resize per batch, by size group."""
    root = image_folder(small_test_set, tmp_path / "f", per_class=4)
    files = sorted(root.rglob("*.png"))
    Image.open(files[5]).convert("RGB").save(files[5])
    for f in files[::3]:
        Image.open(f).resize((41, 33), Image.Resampling.BICUBIC).save(f)
    for f in files[1::7]:
        Image.open(f).resize((20, 17)).save(f)
    for p in ("cpu", "device"):
        sketchmine.mine(demo_model.module, root, out=tmp_path / f"{p}.zarr", batch_size=16, image_size=28,
                        preprocess=p)
    assert_same_store(tmp_path / "device.zarr", tmp_path / "cpu.zarr")


def test_resume_must_agree_on_the_route(tmp_path, demo_model, small_test_set):
    out = tmp_path / "r.zarr"
    kw = dict(out=out, batch_size=30, flush_every=2)
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, preprocess="device", progress=StopAfter(150), **kw)
    with pytest.raises(SketchmineError, match=r"preprocess \(run: device, now: cpu; pass --preprocess device\)"):
        sketchmine.mine(demo_model.module, small_test_set, preprocess="cpu", **kw)
    run = sketchmine.mine(demo_model.module, small_test_set, **kw)  # None: the run's own
    assert run.attrs["preprocess"] == "device"
    sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "whole.zarr", batch_size=30, preprocess="cpu")
    assert_same_store(out, tmp_path / "whole.zarr")


def test_route_choice(small_test_set):
    from sketchmine.data import TorchDataset

    tensors = TorchDataset(torch.utils.data.TensorDataset(torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])))
    assert choose(None, small_test_set, None) == "device"
    assert choose(None, small_test_set, "cpu") == "cpu"
    assert choose(None, tensors, None) == "cpu"
    with pytest.raises(SketchmineError, match="pass preprocess='cpu'"):
        choose("device", tensors, None)
    with pytest.raises(SketchmineError, match="must be 'device' or 'cpu'"):
        choose("gpu", small_test_set, None)


def test_cli_records_the_route(tmp_path, small_test_set):
    root = image_folder(small_test_set, tmp_path / "f", per_class=2)
    out = tmp_path / "cli.zarr"
    done = subprocess.run([sys.executable, "-m", "sketchmine", "mine", "--model", "demo", "--data", str(root),
                           "--out", str(out), "--preprocess", "cpu", "--workers", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sketchmine.open_run(out).attrs["preprocess"] == "cpu"


# ---- out of memory -----------------------------------------------------------------------------
@given(st.integers(1, 4096), st.integers(0, 2**34), st.integers(1, 2**33), st.integers(0, 2**32),
       st.integers(2**20, 2**36))
def test_fitting_batch_size_fits_by_the_measure_and_is_the_largest(batch, before, used, asked, capacity):
    peak = before + used
    fits = memory.fitting_batch_size(batch, before, peak, asked, capacity)
    per_image = (peak + asked - before) / batch
    room = (capacity - before) * memory.MARGIN  # of what is left (see the ulimit -v test below)
    assert fits >= 0
    assert before + fits * per_image <= before + room + 1e-6 * per_image or fits == 0
    assert (fits + 1) * per_image > room - 1e-6 * per_image


def test_asked_bytes_reads_torchs_messages():
    cuda = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB"
    cpu = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 123456 bytes."
    assert memory.asked_bytes(cuda) == 2 * 2**30 and memory.asked_bytes(cpu) == 123456
    assert memory.asked_bytes("something else") == 0
    # the compiled block cache's own words: read as 0 bytes asked, the advice measured a failed
    # batch of 1,000 images as "not even one image fits" where 400 did (the resources audit)
    ours = "sketchmine: out of memory mapping 100352000 bytes for a CPU tensor"
    assert memory.asked_bytes(ours) == 100352000 and memory.is_out_of_memory(RuntimeError(ours))
    assert memory.is_out_of_memory(RuntimeError(cpu)) and not memory.is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_real_failed_allocation_becomes_the_message():
    """A real allocation no machine holds, inside the loop's guard: torch's CPU allocator error
    becomes the SketchmineError, measured (not even one image fits, by what it asked)."""
    with pytest.raises(SketchmineError, match=r"out of cpu memory mining batches of 64 images: the attempt needed "
                                              r"more than [\d,]+ MiB .* not even one image fits"):
        with memory.guard(torch.device("cpu"), 64):
            torch.empty(2**52, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="shape"), memory.guard(torch.device("cpu"), 64):  # other errors pass
        torch.ones(2, 3) @ torch.ones(2, 3)


def test_the_message_names_the_fitting_batch_size():
    mib = 2**20
    before, after = memory.Memory(1000 * mib, 1000 * mib, 8000 * mib), memory.Memory(7000 * mib, 7500 * mib, 8000 * mib)
    text = memory.message(torch.device("cuda"), 256, before, after, 1500 * mib)
    # the attempt: 7500 + 1500 - 1000 = 8000 MiB for 256 images; room 0.9 * (8000 - 1000) = 6300 MiB → 201
    assert "needed more than 8,000 MiB on top of the 1,000 MiB in use before it, of 8,000 MiB" in text
    assert "--batch-size 201 (batch_size=) fits" in text


def test_the_advice_under_an_address_space_limit_leaves_room_for_a_batch():
    """Under `ulimit -v` 4 GiB, 3,941 MiB were mapped before the first batch and 1,000 images failed
    asking 96 MiB where 400 fit (the resources audit): the margin taken of the whole limit said "not
    even one image fits"; the attempt failed before its peak, so the measure cannot name a batch."""
    mib = 2**20
    before, after = memory.Memory(3941 * mib, 3941 * mib, 4096 * mib), memory.Memory(3949 * mib, 3949 * mib, 4096 * mib)
    text = memory.message(torch.device("cpu"), 1000, before, after, 96 * mib)
    assert "not even one image" not in text and "try --batch-size 500 (batch_size=)" in text, text
    # a failure at the attempt's peak: the measure names the batch that fits, below the one asked
    after = memory.Memory(3941 * mib, 4090 * mib, 4096 * mib)
    assert "--batch-size 936 (batch_size=) fits by that measure" in memory.message(torch.device("cpu"), 1000, before,
                                                                                  after, 0 * mib)


def test_a_run_made_before_the_record_resumes_per_image(tmp_path, demo_model, small_test_set):
    """A run whose attributes predate `preprocess` was mined per image: the default resumes it so."""
    import json

    out = tmp_path / "old.zarr"
    kw = dict(out=out, batch_size=30, flush_every=2)
    with pytest.raises(KeyboardInterrupt):
        sketchmine.mine(demo_model.module, small_test_set, preprocess="cpu", progress=StopAfter(150), **kw)
    meta = json.loads((out / "zarr.json").read_text())
    del meta["attributes"]["preprocess"]
    (out / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SketchmineError, match=r"preprocess \(run: cpu, now: device"):
        sketchmine.mine(demo_model.module, small_test_set, preprocess="device", **kw)
    sketchmine.mine(demo_model.module, small_test_set, **kw)
    sketchmine.mine(demo_model.module, small_test_set, out=tmp_path / "whole.zarr", batch_size=30, preprocess="cpu")
    assert_same_store(out, tmp_path / "whole.zarr")


def test_a_one_pixel_wide_size_is_resized_right():
    """torch's antialiased resize into a one-pixel-wide output repeats its first row; the rule
    resizes the transpose there. Rows 95, 217, 15 to 2 rows: the triangle filter's weights are
    0.625/0.375 (hand-computed), on the per-image and the batched route, colour and grey."""
    column = np.array([95, 217, 15], dtype=np.uint8)
    image = np.repeat(column[:, None, None], 3, axis=2)[:, :1]  # (H=3, W=1, 3), grey in RGB
    image[..., 1] = 255 - image[..., 1]  # channels that differ
    pre = sketchmine.data.preprocess.Preprocessing("none", 3, (2, 1), (), ())
    want = np.array([95 * 0.625 + 217 * 0.375, 217 * 0.375 + 15 * 0.625]) / 255
    for got in (per_image(image[None], pre), prepare_uint8(torch.from_numpy(image[None]), pre)):
        np.testing.assert_allclose(got[0, 0, :, 0].numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(got[0, 1, :, 0].numpy(), 1 - want, rtol=1e-6)
    grey = column[:, None, None]  # (H=3, W=1, 1): one plane resized, then repeated to 3 channels
    for got in (per_image(grey[None], pre), prepare_uint8(torch.from_numpy(grey[None]), pre)):
        np.testing.assert_allclose(got[0, :, :, 0].numpy(), np.stack([want] * 3), rtol=1e-6)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60)
@given(st.integers(1, 40), st.integers(2, 40), st.integers(0, 64), st.integers(0, 64), st.integers(0, 2**32 - 1))
@example(33, 33, 58, 58, 96)  # the old bound's counterexample
def test_enlarging_is_the_antialiased_filter_to_its_rounding(h, w, dh, dw, seed):
    """Enlarged, the antialiased filter's weights are bilinear's and torch's bilinear kernel
    computes them: as far from the exact (float64) values as float32 source coordinates allow.
    A coordinate up to the source size s is rounded by up to s·eps/2, which moves both weights
    of a pair of [0, 1] values by that much: s·eps bounds the error, with a margin (measured:
    up to 0.79·s·eps, as torch's antialiased kernel in float32). Holding it to the antialiased
    kernel's own error plus two ulps, as before, failed by 2.8 eps at 33 → 91 px (seed 96)."""
    assume(dh or dw)
    x = torch.from_numpy(np.random.default_rng(seed).random((2, 1, h, w), dtype=np.float32))
    size = (h + dh, w + dw)
    got = preset("none", 1, size).resize(x)
    exact = torch.nn.functional.interpolate(x.double(), size=size, mode="bilinear", antialias=True)
    eps = torch.finfo(torch.float32).eps
    assert (got - exact).abs().max() <= max(h, w) * eps
