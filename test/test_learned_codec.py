"""The learned codec on real pairs: exact round trips, sizes, holes, rate, and refusing bad streams."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_codec_ros.codec import CodecError, RGBDFrame, create_backend
from rgbd_codec_ros.codec.learned import bitstream as bs
from rgbd_codec_ros.codec.learned.backend import LearnedBackend, padded_size
from rgbd_codec_ros.codec.learned.depth import (decode_far_depth, decode_mask, encode_far_depth, encode_mask,
                                                 far_step, fill_holes)
from rgbd_codec_ros.codec.learned.model import build_model
from rgbd_codec_ros.codec.learned.weights_io import load_model

from learned_fixtures import load_pair

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_paper_preset_has_the_papers_parameter_count():
    model = build_model("paper")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 149.5e6) / 149.5e6 < 0.01, n


@pytest.mark.parametrize("variant", ["joint", "one-way", "separate"])
def test_variants_train_forward_with_likelihoods(variant):
    model = build_model("tiny", variant)
    out = model(torch.rand(2, 3, 128, 128), torch.rand(2, 1, 128, 128), torch.tensor([0, 1]))
    assert out["x_hat"]["rgb"].shape == (2, 3, 128, 128)
    assert out["x_hat"]["depth"].shape == (2, 1, 128, 128)
    for m in ("rgb", "depth"):
        for lik in out["likelihoods"][m].values():
            assert torch.all(lik > 0) and torch.all(lik <= 1)


def test_separate_variant_has_no_cross_modal_dependency():
    """Changing depth must not change the RGB reconstruction when the modalities are coded alone."""
    torch.manual_seed(0)
    model = build_model("tiny", "separate").eval()
    model.freeze()
    rgb = torch.rand(1, 3, 128, 128)
    a = model.reconstruct(rgb, torch.rand(1, 1, 128, 128), 0)["x_hat"]["rgb"]
    b = model.reconstruct(rgb, torch.rand(1, 1, 128, 128), 0)["x_hat"]["rgb"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("weights_fixture", ["untrained_tiny_weights", "trained_tiny_weights"])
def test_decompress_equals_the_models_own_quantised_reconstruction(weights_fixture, request, data_dir):
    model, _ = load_model(request.getfixturevalue(weights_fixture))
    color, depth, scale = load_pair(data_dir, "osd_kinect_pcl_mosd", 5)
    backend = LearnedBackend(model=model, quality=1, device="cpu")
    enc = backend.encode(RGBDFrame(color, depth, scale))
    # the same input through the exact path without the entropy coder
    h, w = depth.shape
    ph, pw = padded_size(h, w)
    from rgbd_codec_ros.codec.learned.depth import depth_to_metres, normalise
    metres, valid = depth_to_metres(depth, scale)
    norm, _ = normalise(metres, valid, model.depth_range_m)
    x = torch.nn.functional.pad(torch.from_numpy(color).permute(2, 0, 1)[None].float() / 255,
                                (0, pw - w, 0, ph - h), mode="replicate")
    d = torch.nn.functional.pad(torch.from_numpy(fill_holes(norm, valid))[None, None],
                                (0, pw - w, 0, ph - h), mode="replicate")
    rec = model.reconstruct(x, d, 1)
    header, sections = bs.unpack(enc.payload)
    x_r, x_d = model.decompress({k: sections[k] for k in ("z_rgb", "z_depth", "y_rgb", "y_depth")},
                                (header.z_height, header.z_width), 1, header.latent_hash)
    assert torch.equal(x_r, rec["x_hat"]["rgb"])
    assert torch.equal(x_d, rec["x_hat"]["depth"])
    # and the backend output is that reconstruction, with holes exactly where they were
    out = backend.decode(enc.payload)
    expected_rgb = (rec["x_hat"]["rgb"][0, :, :h, :w].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(out.color, expected_rgb)
    assert np.array_equal(out.depth == 0, depth == 0)


def test_actual_stream_size_matches_the_estimated_rate(trained_tiny_weights, data_dir):
    model, _ = load_model(trained_tiny_weights)
    backend = LearnedBackend(model=model, quality=3, device="cpu")
    color, depth, scale = load_pair(data_dir, "7scenes_kinect1", 3)
    enc = backend.encode(RGBDFrame(color, depth, scale))
    _, sections = bs.unpack(enc.payload)
    actual_bits = 8 * sum(len(sections[k]) for k in ("z_rgb", "z_depth", "y_rgb", "y_depth"))
    estimated = sum(enc.info["estimated_bits"].values())
    assert estimated > 8000, "the trained fixture should spend real bits"
    assert abs(actual_bits - estimated) / estimated < 0.02, (actual_bits, estimated)


@pytest.mark.parametrize("size", [(128, 128), (131, 197), (480, 640), (720, 1280)])
def test_sizes_round_trip_with_exact_holes(size, untrained_tiny_weights, data_dir):
    h, w = size
    color, depth, scale = load_pair(data_dir, "realsense_f200_apc", 2)
    reps = (-(-h // color.shape[0]), -(-w // color.shape[1]))
    color = np.tile(color, reps + (1,))[:h, :w].copy()
    depth = np.tile(depth, reps)[:h, :w].copy()
    backend = LearnedBackend(weights=untrained_tiny_weights, quality=0, device="cpu")
    out = backend.decode(backend.encode(RGBDFrame(color, depth, scale)).payload)
    assert out.color.shape == color.shape and out.color.dtype == np.uint8
    assert out.depth.shape == depth.shape and out.depth.dtype == np.uint16
    assert np.array_equal(out.depth == 0, depth == 0)


def test_float_metres_mono_and_clipped_depth(untrained_tiny_weights, data_dir):
    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 0)
    metres = depth.astype(np.float32) / scale
    metres[depth == 0] = np.nan
    metres[:4, :4] = 25.0           # beyond the model's 10 m range: clipped, flagged, on the log grid
    mono = color.mean(axis=2).astype(np.uint8)
    backend = LearnedBackend(weights=untrained_tiny_weights, device="cpu")
    enc = backend.encode(RGBDFrame(mono, metres, 1.0))
    assert enc.info["clipped_pixels"] >= 16
    out = backend.decode(enc.payload)
    assert out.color.shape == mono.shape and out.depth.dtype == np.float32
    assert np.array_equal(np.isnan(out.depth), np.isnan(metres))
    step = far_step(1, 4)   # the default quality index
    assert np.all(np.abs(out.depth[:4, :4] / 25.0 - 1) <= step / 2 + 1e-6)


def test_depth_beyond_the_range_keeps_its_value_on_real_d435_frames(untrained_tiny_weights, data_dir):
    """The D435 source has about 4 % of its pixels beyond 10 m (and 65.5 m spikes)."""
    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 1)
    far = depth > 10 * scale
    assert far.mean() > 0.01
    errors = []
    for quality in (0, 3):
        backend = LearnedBackend(weights=untrained_tiny_weights, device="cpu", quality=quality)
        enc = backend.encode(RGBDFrame(color, depth, scale))
        out = backend.decode(enc.payload)
        rel = np.abs(out.depth[far].astype(np.float64) / depth[far] - 1)
        assert rel.max() <= far_step(quality, 4) / 2 + 1e-3   # + the rounding to millimetres
        assert np.array_equal(out.depth == 0, depth == 0)
        errors.append(rel.mean())
    assert errors[1] < errors[0]    # higher quality, finer grid


def test_far_depth_section_round_trip_and_damage():
    rng = np.random.default_rng(1)
    metres = rng.uniform(0.5, 70.0, (48, 64))
    far = metres > 10.0
    data = encode_far_depth(metres, far, 10.0, 0.02)
    back = decode_far_depth(data, far, 10.0)
    assert np.all(np.abs(back / metres[far] - 1) <= 0.01 + 1e-9)
    assert encode_far_depth(metres, np.zeros_like(far), 10.0, 0.02) == b""
    assert decode_far_depth(b"", far, 10.0) is None     # version-1 streams: range limit
    for bad in (data[:3], data[:-4], data[:2] + bytes(len(data) - 2)):
        with pytest.raises(CodecError):
            decode_far_depth(bad, far, 10.0)
    with pytest.raises(CodecError, match="does not match"):
        decode_far_depth(data, np.zeros_like(far), 10.0)


def test_version_1_payloads_still_decode(trained_tiny_weights, data_dir):
    """Recordings made before the far-depth section (format version 1) decode, far pixels at 10 m."""
    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 2)
    backend = LearnedBackend(weights=trained_tiny_weights, device="cpu")
    payload = backend.encode(RGBDFrame(color, depth, scale)).payload
    header, sections = bs.unpack(payload)
    assert sections["far_depth"]
    old = bs.pack(header, dict(sections, far_depth=b""), version=1)
    assert old.startswith(bs.LEGACY_MAGIC) and old[len(bs.LEGACY_MAGIC)] == 1
    new_out, old_out = backend.decode(payload), backend.decode(old)
    far = depth > 10 * scale
    assert np.array_equal(old_out.depth[~far], new_out.depth[~far])
    assert np.all(old_out.depth[far] == 10 * scale)
    with pytest.raises(CodecError, match="version 1"):
        bs.pack(header, sections, version=1)


def test_version_2_payloads_decode_to_the_same_images_as_version_3(trained_tiny_weights, data_dir):
    """Recordings made before the container framing (format version 2, magic RGBDL) carry the
    same header and sections: they decode to the very images of the version 3 payload."""
    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 2)
    backend = LearnedBackend(weights=trained_tiny_weights, device="cpu")
    payload = backend.encode(RGBDFrame(color, depth, scale)).payload
    assert payload.startswith(bs.MAGIC) and payload[len(bs.MAGIC)] == bs.VERSION == 3
    header, sections = bs.unpack(payload)
    assert sections["far_depth"] and np.any(depth > 10 * scale)
    old = bs.pack(header, sections, version=2)
    assert old.startswith(bs.LEGACY_MAGIC) and old[len(bs.LEGACY_MAGIC)] == 2
    assert bs.is_learned_payload(old) and bs.is_learned_payload(payload)
    assert (bs.format_version(old), bs.format_version(payload)) == (2, 3)
    assert bs.unpack(old) == (header, sections)
    new_out, old_out = backend.decode(payload), backend.decode(old)
    assert np.array_equal(old_out.color, new_out.color) and np.array_equal(old_out.depth, new_out.depth)
    # the container's table costs 8 bytes a section against the old 4-byte length, plus the
    # header's own crc32
    assert len(payload) - len(old) == 28


def test_a_recorded_version_2_payload_still_decodes(trained_tiny_weights):
    """test/data/learned_v2_tiny.rgbd was written by the version 2 packer itself (a 160x160 crop
    of a D435 pair, tiny_trained.pt, quality 2): it decodes, the latent hash vouching for the
    latents, and today's version 2 writer reproduces it byte for byte."""
    old = (Path(REPO) / "test" / "data" / "learned_v2_tiny.rgbd").read_bytes()
    header, sections = bs.unpack(old)
    assert old.startswith(bs.LEGACY_MAGIC) and bs.format_version(old) == 2
    assert (header.width, header.height, header.quality) == (160, 160, 2.0) and sections["far_depth"]
    assert bs.pack(header, sections, version=2) == old
    backend = LearnedBackend(weights=trained_tiny_weights, device="cpu")
    old_out = backend.decode(old)
    new_out = backend.decode(bs.pack(header, sections))
    assert np.array_equal(old_out.color, new_out.color) and np.array_equal(old_out.depth, new_out.depth)
    holes = decode_mask(sections["hole_mask"], 160, 160)
    assert holes.any() and np.array_equal(old_out.depth == 0, holes)
    assert np.any(old_out.depth > 10 * header.depth_scale_per_m)   # far pixels from the far-depth section


def test_mask_coding_is_lossless_on_real_masks(data_dir):
    for source in ("7scenes_kinect1", "realsense_f200_apc", "osd_kinect_pcl_mosd"):
        _, depth, _ = load_pair(data_dir, source, 1)
        holes = depth == 0
        assert np.array_equal(decode_mask(encode_mask(holes), *holes.shape), holes)
    assert len(encode_mask(np.zeros((480, 640), bool))) == 1


def _write_pngs(tmp_path, color, depth):
    import imagecodecs
    c, d = tmp_path / "c.png", tmp_path / "d.png"
    imagecodecs.imwrite(str(c), color)
    imagecodecs.imwrite(str(d), depth)
    return c, d


def _cli(*args, threads=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, "-m", "rgbd_codec_ros.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_cross_process_cross_thread_decoding_is_bit_identical(trained_tiny_weights, data_dir, tmp_path):
    """Encode with 2 threads in one process, decode with 1 thread in another: identical images."""
    import imagecodecs
    color, depth, scale = load_pair(data_dir, "7scenes_kinect1", 7)
    c, d = _write_pngs(tmp_path, color, depth)
    f = tmp_path / "pair.rgbd"
    r = _cli("encode", "--color", str(c), "--depth", str(d), "--depth-scale", str(scale), "--out", str(f),
             "--model", trained_tiny_weights, "--quality", "2", "--threads", "2")
    assert r.returncode == 0, r.stderr
    r = _cli("decode", str(f), "--color-out", str(tmp_path / "c2.png"), "--depth-out", str(tmp_path / "d2.png"),
             "--model", trained_tiny_weights, "--threads", "1")
    assert r.returncode == 0, r.stderr
    torch.set_num_threads(2)
    here = LearnedBackend(weights=trained_tiny_weights, device="cpu").decode(f.read_bytes())
    assert np.array_equal(imagecodecs.imread(str(tmp_path / "c2.png")), here.color)
    assert np.array_equal(imagecodecs.imread(str(tmp_path / "d2.png")), here.depth)
    assert np.array_equal(here.depth == 0, depth == 0)


def test_float_noise_in_the_transforms_does_not_change_the_decoded_latents(trained_tiny_weights, data_dir):
    """Only the exact path feeds the coder: perturbing every float weight keeps decoding valid."""
    color, depth, scale = load_pair(data_dir, "osd_kinect_pcl_mosd", 9)
    enc = LearnedBackend(weights=trained_tiny_weights, device="cpu").encode(RGBDFrame(color, depth, scale))
    model, meta = load_model(trained_tiny_weights)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-6)
    out = LearnedBackend(model=model, model_id=meta["model_id"], device="cpu").decode(enc.payload)
    assert np.array_equal(out.depth == 0, depth == 0)


def test_diverging_probability_tables_are_an_error_not_an_image(trained_tiny_weights, data_dir):
    color, depth, scale = load_pair(data_dir, "osd_kinect_pcl_mosd", 2)
    enc = LearnedBackend(weights=trained_tiny_weights, device="cpu").encode(RGBDFrame(color, depth, scale))
    model, meta = load_model(trained_tiny_weights)
    layer = model.bicee.params[0][0][-1]      # last conv of the first parameter net
    layer.b_int += 300.0                      # means/scales now differ from the encoder's
    with pytest.raises(CodecError, match="do not match"):
        LearnedBackend(model=model, model_id=meta["model_id"], device="cpu").decode(enc.payload)


def test_other_weights_corruption_truncation_and_version_are_clear_errors(
        trained_tiny_weights, untrained_tiny_weights, data_dir, tmp_path):
    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 4)
    payload = LearnedBackend(weights=trained_tiny_weights, device="cpu").encode(
        RGBDFrame(color, depth, scale)).payload
    other = LearnedBackend(weights=untrained_tiny_weights, device="cpu")
    with pytest.raises(CodecError, match="encoded with model"):
        other.decode(payload)
    own = LearnedBackend(weights=trained_tiny_weights, device="cpu")
    rng = np.random.default_rng(0)
    for cut in sorted(set(rng.integers(1, len(payload), 20).tolist())):
        with pytest.raises(CodecError):
            own.decode(payload[:cut])
    for pos in rng.integers(0, len(payload), 40):
        bad = bytearray(payload)
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(CodecError):
            own.decode(bytes(bad))
    newer = bytearray(payload)
    newer[len(bs.MAGIC)] = bs.VERSION + 1
    with pytest.raises(CodecError, match="version"):
        own.decode(bytes(newer))
    # the command line exits non-zero with a message
    f = tmp_path / "cut.rgbd"
    f.write_bytes(payload[: len(payload) // 2])
    r = _cli("decode", str(f), "--color-out", str(tmp_path / "c.png"), "--depth-out", str(tmp_path / "d.png"),
             "--model", trained_tiny_weights)
    assert r.returncode != 0 and "learned payload truncated" in r.stderr
    assert not (tmp_path / "c.png").exists()


def test_cli_rejects_bad_arguments_with_a_message(tmp_path):
    r = _cli("encode", "--color", str(tmp_path / "missing.png"), "--depth", str(tmp_path / "d.png"),
             "--out", str(tmp_path / "x.rgbd"))
    assert r.returncode != 0 and "no such file" in r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_encoder_cpu_decoder_and_back(trained_tiny_weights, data_dir):
    color, depth, scale = load_pair(data_dir, "7scenes_kinect1", 11)
    frame = RGBDFrame(color, depth, scale)
    gpu = LearnedBackend(weights=trained_tiny_weights, device="cuda")
    cpu = LearnedBackend(weights=trained_tiny_weights, device="cpu")
    for enc_be, dec_be in ((gpu, cpu), (cpu, gpu)):
        out = dec_be.decode(enc_be.encode(frame).payload)   # raises if the latents diverged
        assert np.array_equal(out.depth == 0, depth == 0)


def test_registered_as_a_backend(untrained_tiny_weights):
    backend = create_backend("learned", weights=untrained_tiny_weights, device="cpu", quality=2)
    assert backend.quality.startswith("q=2")
    with pytest.raises(CodecError, match="quality"):
        backend.configure(quality=99)
    with pytest.raises(CodecError, match="unknown option"):
        backend.configure(colour=1)
    with pytest.raises(CodecError, match="pixel_exact"):
        backend.configure(pixel_exact="maybe")
    backend.configure(pixel_exact=False)
    assert backend.model.deterministic_synthesis is False


def test_fractional_and_extrapolated_qualities(trained_tiny_weights, data_dir):
    """Qualities between the trained points interpolate the gains; below 0 they extrapolate to
    lower rates. The header carries the fraction, so the decoder uses the same gains."""
    color, depth, scale = load_pair(data_dir, "7scenes_kinect1", 3)
    backend = LearnedBackend(weights=trained_tiny_weights, device="cpu")
    sizes = {}
    for q in (-1, -0.5, 0, 0.5, 1):
        backend.configure(quality=q)
        enc = backend.encode(RGBDFrame(color, depth, scale))
        header, _ = bs.unpack(enc.payload)
        assert header.quality == q
        out = backend.decode(enc.payload)
        assert np.array_equal(out.depth == 0, depth == 0)
        sizes[q] = len(enc.payload)
    assert sizes[-1] < sizes[-0.5] < sizes[0] < sizes[0.5] < sizes[1]
    assert backend.quality == "q=1 (1_1)"
    backend.configure(quality=0.3)
    assert backend.quality == "q=0.300781"          # on the header's 1/256 grid
    for bad in (-1.5, 3.5, "high"):
        with pytest.raises(CodecError, match="quality must be"):
            backend.configure(quality=bad)
    # an integral quality uses exactly the trained gains; a fraction lies between two rows
    model = backend.model
    for m in ("rgb", "depth"):
        for q in range(model.num_qualities):
            assert torch.equal(model._gain(m, q).flatten(), torch.exp(model.log_gain[m][q]))
        lo, hi, mid = (model._gain(m, q).flatten() for q in (1, 2, 1.5))
        assert torch.allclose(mid, torch.sqrt(lo * hi))
    a = LearnedBackend(weights=trained_tiny_weights, device="cpu", quality=2)
    b = LearnedBackend(weights=trained_tiny_weights, device="cpu", quality=2.0)
    frame = RGBDFrame(color, depth, scale)
    assert a.encode(frame).payload == b.encode(frame).payload
