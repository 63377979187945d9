"""The learned codec's fast paths keep their guarantees.

- the int8-digit exact convolution equals the float64 reference bit for bit (random and real
  latents, 1 and 2 threads), and streams / decodes of the committed weights do not change;
- the cached rANS tables and the one-call y encoder write the streams the old code wrote;
- the onnxruntime transforms: cached per weights, checked against torch, thread options,
  and payloads cross-decode between runtimes within the documented tolerance.
No timings are asserted here (benchmarks/bench_learned.py measures).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_codec_ros.codec import CodecError, RGBDFrame
from rgbd_codec_ros.codec.learned import exact_conv as ec
from rgbd_codec_ros.codec.learned import runtime as rt
from rgbd_codec_ros.codec.learned.backend import MODELS_DIR, LearnedBackend
from rgbd_codec_ros.codec.learned.model import latent_hash
from rgbd_codec_ros.codec.learned.weights_io import load_model

from learned_fixtures import load_pair

LITE = os.path.join(MODELS_DIR, "lite.pt")
LITE_SEPARATE = os.path.join(MODELS_DIR, "lite-separate.pt")
needs_ort = pytest.mark.skipif(not rt.onnxruntime_available(), reason="onnxruntime not installed")


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("RGBD_CODEC_CACHE_DIR", str(d))
    return d


class _CountIntMM:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = torch._int_mm

        def counted(a, b):
            self.calls += 1
            return real(a, b)
        monkeypatch.setattr(torch, "_int_mm", counted)


# ------------------------------------------------------------------ digits and the int8 kernel
def test_int8_gemm_selftest_and_digit_round_trip():
    assert ec.int8_gemm_ok(), "this machine's int8 GEMM failed the exactness self-test"
    g = torch.Generator().manual_seed(3)
    for bits in (6, 13, 20, 27, 34):
        x = torch.randint(-2 ** bits, 2 ** bits, (4000,), generator=g).double()
        x[:2] = torch.tensor([2.0 ** bits, -2.0 ** bits])
        n = ec.digits_needed(float(x.abs().max()))
        d = ec.split_digits(x, n)
        assert d.dtype == torch.int8 and int(d.min()) >= -ec.HALF and int(d.max()) <= ec.HALF - 1
        back = sum(d[i].long() * (ec.BASE ** i) for i in range(n))
        assert torch.equal(back, x.long())
    assert ec.digits_needed(63) == 1 and ec.digits_needed(64) == 2 and ec.digits_needed(2047) == 2


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_conv_equals_float64_reference_on_random_integers(threads, monkeypatch):
    torch.set_num_threads(threads)
    monkeypatch.setenv("RGBD_CODEC_EXACT_KERNEL", "int8")   # whatever auto chose on this CPU
    counter = _CountIntMM(monkeypatch)
    monkeypatch.setattr(ec, "MIN_K", 1)          # every case through the int8 path
    g = torch.Generator().manual_seed(threads)
    cases = [(48, 32, 5, 1, 2, (32, 40)), (85, 64, 5, 1, 2, (13, 17)), (192, 128, 3, 1, 1, (9, 11)),
             (256, 42, 1, 1, 0, (8, 10)), (16, 24, 5, 2, 2, (20, 22)), (7, 5, 3, 1, 1, (30, 31))]
    for cin, cout, k, stride, pad, (h, w) in cases:
        for bits in (10, 16, 21):
            x = torch.randint(-2 ** bits, 2 ** bits, (2, cin, h, w), generator=g).double()
            wt = torch.randint(-2047, 2048, (cout, cin, k, k), generator=g).double()
            wt[0].fill_(2047)                       # extreme weights on one output
            x[0, :, 0, 0] = -(2.0 ** bits)
            ref = F.conv2d(x, wt, None, stride, pad)
            got = ec.conv2d(x, wt, ec.WeightDigits(), 0.0, (stride, stride), (pad, pad))
            assert torch.equal(ref, got), (cin, cout, k, stride, bits)
    for cin, cout, (h, w) in [(32, 16, (8, 10)), (96, 48, (5, 7))]:
        x = torch.randint(-2 ** 17, 2 ** 17, (1, cin, h, w), generator=g).double()
        wt = torch.randint(-2047, 2048, (cin, cout, 5, 5), generator=g).double()
        ref = F.conv_transpose2d(x, wt, None, 2, 2, 1)
        got = ec.conv_transpose2d(x, wt, ec.WeightDigits(), 0.0, (2, 2), (2, 2), (1, 1))
        assert torch.equal(ref, got)
    assert counter.calls >= len(cases) * 3 + 2


def test_exact_conv_falls_back_to_the_reference_where_it_cannot_prove_exactness(monkeypatch):
    monkeypatch.setenv("RGBD_CODEC_EXACT_KERNEL", "int8")
    counter = _CountIntMM(monkeypatch)
    # 5 digits would hold 2**33, but the sums can pass 2**53: the reference, as before
    x = torch.full((1, 64, 6, 6), 2.0 ** 33)
    wt = torch.full((8, 64, 3, 3), 2047.0)
    assert torch.equal(ec.conv2d(x, wt, ec.WeightDigits(), 0.0, (1, 1), (1, 1)), F.conv2d(x, wt, None, 1, 1))
    assert counter.calls == 0
    ec.conv2d(x / 64, wt, ec.WeightDigits(), 0.0, (1, 1), (1, 1))    # within the bound: int8
    assert counter.calls == 1
    counter.calls = 0
    with ec.exact_kernel("reference"):
        x = torch.randint(-100, 100, (1, 64, 16, 16)).double()
        wt = torch.randint(-2047, 2048, (16, 64, 5, 5)).double()
        ec.conv2d(x, wt, ec.WeightDigits(), 0.0, (1, 1), (2, 2))
    assert counter.calls == 0
    with pytest.raises(ValueError):
        with ec.exact_kernel("float32"):
            pass


def test_auto_kernel_is_chosen_once_by_measurement_and_changes_no_bit(monkeypatch):
    """auto runs the int8 digits only on a CPU where they measured faster than the float64
    reference (on AVX2-only CPUs torch's int8 GEMM is a slow generic loop); the choice is made
    once per process and both kernels give the same integers."""
    choice = ec.kernel_choice()
    assert choice["kernel"] in ("int8", "reference") and choice["reference_ms"] > 0
    if choice["int8_ms"] is not None:
        faster = choice["int8_ms"] * ec.INT8_MARGIN < choice["reference_ms"]
        assert (choice["kernel"] == "int8") == faster, choice
    assert ec.kernel_choice() == choice          # measured once, not per call
    counter = _CountIntMM(monkeypatch)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-2 ** 15, 2 ** 15, (1, 32, 12, 14), generator=g).double()
    wt = torch.randint(-2047, 2048, (16, 32, 5, 5), generator=g).double()
    ref = F.conv2d(x, wt, None, 1, 2)
    with ec.exact_kernel("auto"):
        assert torch.equal(ec.conv2d(x, wt, ec.WeightDigits(), 0.0, (1, 1), (2, 2)), ref)
    assert counter.calls == (1 if choice["kernel"] == "int8" else 0)
    with ec.exact_kernel("int8"):
        assert torch.equal(ec.conv2d(x, wt, ec.WeightDigits(), 0.0, (1, 1), (2, 2)), ref)
    assert counter.calls == (2 if choice["kernel"] == "int8" else 1)


def test_weight_digits_follow_in_place_weight_changes(monkeypatch):
    monkeypatch.setenv("RGBD_CODEC_EXACT_KERNEL", "int8")
    wd = ec.WeightDigits()
    w = torch.randint(-2047, 2048, (8, 64, 3, 3)).double()
    x = torch.randint(-5000, 5000, (1, 64, 9, 9)).double()
    with_int8 = ec.conv2d(x, w, wd, 0.0, (1, 1), (1, 1))
    w[0] += 1.0
    assert not torch.equal(ec.conv2d(x, w, wd, 0.0, (1, 1), (1, 1)), with_int8)
    assert torch.equal(ec.conv2d(x, w, wd, 0.0, (1, 1), (1, 1)), F.conv2d(x, w, None, 1, 1))


# ------------------------------------------------------------------ the whole entropy path
def _frame(data_dir, source="realsense_d435_taeyoung", index=10, size=None):
    color, depth, scale = load_pair(data_dir, source, index)
    if size is not None:
        w, h = size
        color, depth = np.ascontiguousarray(color[:h, :w]), np.ascontiguousarray(depth[:h, :w])
    return RGBDFrame(color, depth, scale)


def _old_encode_y(model, symbols, indexes) -> bytes:
    """The rANS y encoder as it was: tables converted and one call per coding step."""
    from compressai.ans import BufferedRansEncoder
    gc = model.bicee.gaussian
    enc = BufferedRansEncoder()
    for s, i in zip(symbols, indexes):
        enc.encode_with_indexes(s.cpu().int().tolist(), i.cpu().int().tolist(), gc._quantized_cdf.tolist(),
                                gc._cdf_length.tolist(), gc._offset.tolist())
    return enc.flush()


@pytest.mark.parametrize("weights", [LITE, LITE_SEPARATE, "tiny"])
def test_committed_weights_streams_and_decodes_do_not_change(weights, trained_tiny_weights, data_dir,
                                                             monkeypatch):
    """Reference kernel + old rANS encoder (the code as it was) against the new paths, on a real
    640x480 pair, at 1 and 2 threads: identical streams, latent hashes and decoded pixels."""
    path = trained_tiny_weights if weights == "tiny" else weights
    model, meta = load_model(path)
    counter = _CountIntMM(monkeypatch)
    frame = _frame(data_dir)
    payloads = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for kernel in ("reference", "int8", "auto"):
            be = LearnedBackend(model=model, model_id=meta["model_id"], device="cpu", runtime="torch", quality=1)
            with ec.exact_kernel(kernel):
                payloads[(threads, kernel)] = be.encode(frame).payload
    assert counter.calls > 0, "the int8 path was never used"
    for threads in (1, 2):    # (torch's float g_a itself depends on the thread count, not the kernel)
        assert payloads[(threads, "reference")] == payloads[(threads, "int8")] == payloads[(threads, "auto")]
    first = payloads[(1, "reference")]

    # the one-call y encoder writes the old per-step stream
    torch.set_num_threads(2)
    x = torch.rand(1, 3, 128, 192)
    d = torch.rand(1, 1, 128, 192)
    y, z_sym, z_fixed = model._analyse(x, d, 1)
    from rgbd_codec_ros.codec.learned.entropy import ExactCoder
    coder = ExactCoder(model.bicee, y=y)
    y_fixed = model._entropy_path(z_fixed, coder)
    for m in ("rgb", "depth"):
        assert model._encode_y(coder.symbols[m], coder.indexes[m]) == _old_encode_y(
            model, coder.symbols[m], coder.indexes[m])
    # the same real latents through both kernels and thread counts: identical symbols and indexes
    for threads in (1, 2):
        torch.set_num_threads(threads)
        coder_ref = ExactCoder(model.bicee, y=y)
        with ec.exact_kernel("reference"):
            y_ref = model._entropy_path(z_fixed, coder_ref)
        coder_new = ExactCoder(model.bicee, y=y)
        with ec.exact_kernel("int8"):
            y_new = model._entropy_path(z_fixed, coder_new)
        assert latent_hash(z_fixed, y_fixed) == latent_hash(z_fixed, y_ref) == latent_hash(z_fixed, y_new)
        for m in ("rgb", "depth"):
            for a, b, c in zip(coder.indexes[m], coder_ref.indexes[m], coder_new.indexes[m]):
                assert torch.equal(a, b) and torch.equal(a, c)

    # a payload of the old path decodes with the new one (hash checked), to the same pixels
    decoded = []
    for threads, kernel in ((1, "reference"), (2, "int8"), (1, "int8"), (2, "auto")):
        torch.set_num_threads(threads)
        be = LearnedBackend(model=model, model_id=meta["model_id"], device="cpu", runtime="torch")
        with ec.exact_kernel(kernel):
            decoded.append(be.decode(first))
    for out in decoded[1:]:
        assert np.array_equal(out.color, decoded[0].color) and np.array_equal(out.depth, decoded[0].depth)


def test_rans_tables_are_converted_once_and_follow_changes(trained_tiny_weights):
    model, _ = load_model(trained_tiny_weights)
    a = model._gaussian_tables()
    assert model._gaussian_tables() is a
    z = model._z_tables("rgb")
    assert model._z_tables("rgb") is z and model._z_tables("depth") is not z
    gc = model.bicee.gaussian
    gc._offset.add_(0)                    # an in-place change: the cache must notice
    assert model._gaussian_tables() is not a
    assert model._gaussian_tables()[2] == gc._offset.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_exact_path_equals_the_cpu_one(trained_tiny_weights, data_dir):
    frame = _frame(data_dir, size=(320, 240))
    cpu = LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="torch")
    gpu = LearnedBackend(weights=trained_tiny_weights, device="cuda", runtime="torch")
    gpu.decode(cpu.encode(frame).payload)
    cpu.decode(gpu.encode(frame).payload)


# ------------------------------------------------------------------ the onnxruntime transforms
def test_runtime_option_is_checked(trained_tiny_weights):
    with pytest.raises(CodecError, match="runtime"):
        LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="tensorflow")
    be = LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="torch")
    assert be.runtime == "torch"
    with pytest.raises(CodecError, match="runtime"):
        be.configure(runtime=3)


@needs_ort
def test_onnx_exports_are_cached_per_weights_and_checked(trained_tiny_weights, cache, monkeypatch):
    be = LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="auto")
    assert be.runtime == "onnxruntime"
    files = sorted((cache / "onnx").glob("*.onnx"))
    assert len(files) == 2 and "-g_a-" in files[0].name and "-g_s-" in files[1].name

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache holds the files")
    monkeypatch.setattr(rt, "_export", no_export)
    assert LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="onnxruntime").runtime == "onnxruntime"

    # other weights -> other files; a damaged cache file is replaced by a fresh export
    monkeypatch.undo()
    monkeypatch.setenv("RGBD_CODEC_CACHE_DIR", str(cache))
    files[0].write_bytes(b"not an onnx file")
    model, _ = load_model(trained_tiny_weights)
    with torch.no_grad():
        next(model.g_s.parameters()).add_(1e-3)
    rt.OnnxTransforms(model)
    assert len(list((cache / "onnx").glob("*.onnx"))) == 3
    rt.OnnxTransforms(load_model(trained_tiny_weights)[0])
    assert files[0].read_bytes() != b"not an onnx file"


@needs_ort
def test_onnxruntime_sessions_use_the_thread_setting_without_spinning(trained_tiny_weights, cache):
    model, _ = load_model(trained_tiny_weights)
    ort_t = rt.OnnxTransforms(model)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ort_t.g_a(torch.rand(1, 3, 128, 128), torch.rand(1, 1, 128, 128))
        opts = ort_t._session("g_a", threads).get_session_options()
        assert opts.intra_op_num_threads == threads and opts.inter_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@needs_ort
@pytest.mark.parametrize("weights", [LITE_SEPARATE, "tiny"])
def test_payloads_cross_decode_between_runtimes_within_the_tolerance(weights, trained_tiny_weights,
                                                                     data_dir, cache):
    path = trained_tiny_weights if weights == "tiny" else weights
    torch.set_num_threads(2)
    frame = _frame(data_dir)
    backends = {name: LearnedBackend(weights=path, device="cpu", runtime=name, quality=1)
                for name in ("torch", "onnxruntime")}
    assert backends["onnxruntime"].runtime == "onnxruntime"
    for enc_name, enc_be in backends.items():
        payload = enc_be.encode(frame).payload
        outs = {name: be.decode(payload) for name, be in backends.items()}   # hash checked: exact latents
        a, b = outs["torch"], outs["onnxruntime"]
        assert np.abs(a.color.astype(int) - b.color.astype(int)).max() <= rt.COLOR_TOLERANCE_LEVELS
        da, db = a.depth.astype(np.int64), b.depth.astype(np.int64)
        allowed = np.maximum(rt.DEPTH_TOLERANCE_UNITS, np.ceil(rt.DEPTH_TOLERANCE_REL * np.maximum(da, db)))
        assert (np.abs(da - db) <= allowed).all(), enc_name
        assert np.array_equal(a.depth == 0, frame.depth == 0) and np.array_equal(b.depth == 0, frame.depth == 0)


@needs_ort
def test_onnxruntime_pixel_exact_decodes_do_not_depend_on_threads(trained_tiny_weights, data_dir, cache):
    frame = _frame(data_dir, "7scenes_kinect1", 7)
    payload = LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="onnxruntime").encode(frame).payload
    outs = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        outs.append(LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="onnxruntime").decode(payload))
    for o in outs[1:]:
        assert np.array_equal(o.color, outs[0].color) and np.array_equal(o.depth, outs[0].depth)
    # the fast path (pixel_exact=false) stays within the cross-runtime tolerance of it
    fast = LearnedBackend(weights=trained_tiny_weights, device="cpu", runtime="onnxruntime",
                          pixel_exact=False).decode(payload)
    assert np.abs(fast.color.astype(int) - outs[0].color.astype(int)).max() <= rt.COLOR_TOLERANCE_LEVELS


# ------------------------------------------------------------------ the checkerboard-only last layer
def test_last_convolution_at_checkerboard_phases_equals_the_full_one():
    """forward_exact_at gives forward_exact's integers at every position of the phases and zeros
    elsewhere, for odd and even sizes, both kernels and both checkerboard halves."""
    from rgbd_codec_ros.codec.learned.entropy import ANCHOR, CHECKERBOARD_PHASES, NON_ANCHOR, checkerboard
    from rgbd_codec_ros.codec.learned.fixedpoint import ExactConv2d, freeze_exact, set_exact

    g = torch.Generator().manual_seed(11)
    for cin, cout, k, (h, w) in [(24, 16, 5, (9, 12)), (24, 16, 5, (8, 7)), (16, 8, 3, (1, 5)), (16, 8, 5, (2, 1))]:
        conv = ExactConv2d(cin, cout, k)
        with torch.no_grad():
            conv.layer.weight.normal_(0, 0.05, generator=g)
            conv.layer.bias.normal_(0, 0.5, generator=g)
        freeze_exact(conv)
        set_exact(conv, True)
        x = torch.randint(-2 ** 14, 2 ** 14, (2, cin, h, w), generator=g).double()
        full = conv(x)
        for which in (ANCHOR, NON_ANCHOR):
            for kernel in ("reference", "int8"):
                with ec.exact_kernel(kernel):
                    got = conv.forward_exact_at(x, CHECKERBOARD_PHASES[which])
                mask = checkerboard(h, w, which).expand_as(full)
                assert torch.equal(got[mask], full[mask]), (cin, cout, k, h, w, which, kernel)
                assert not got[~mask].any()


def test_checkerboard_only_parameters_code_the_same_streams(trained_tiny_weights, data_dir, monkeypatch):
    """The entropy path with the parameter nets' last layer at the coded half only writes the
    very streams of the full layer, and decodes them to the same images (odd latent sizes too)."""
    from rgbd_codec_ros.codec.learned.entropy import EntropyParameters

    model, meta = load_model(trained_tiny_weights)
    frame = _frame(data_dir, size=(272, 208))            # latents 17 x 13: odd both ways
    out = {}
    for only in (False, True):
        monkeypatch.setattr(EntropyParameters, "checkerboard_only", only)
        be = LearnedBackend(model=model, model_id=meta["model_id"], device="cpu", runtime="torch", quality=2)
        payload = be.encode(frame).payload
        out[only] = (payload, be.decode(payload))
    assert out[True][0] == out[False][0]
    assert np.array_equal(out[True][1].color, out[False][1].color)
    assert np.array_equal(out[True][1].depth, out[False][1].depth)
