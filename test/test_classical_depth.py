"""Classical depth through JPEG XL (issue 12) on real frames: lossless exactness, holes, the
sparse and 32-bit fallbacks, JPEG XL for the bounded quantiser's integers, and forged JPEG XL
depth sections."""
import json
import time

import imagecodecs
import numpy as np
import pytest

from rgbd_codec_ros.codec import CodecError, RGBDFrame, classical, container

from conftest import DATA_DIR, load_real_pairs
from forge import jxl_size_header
from test_classical import _rewrite as rewrite_payload

#: sources whose depth is dense (JPEG XL is the smaller coder there) and sparse (RVL is)
DENSE = ("7scenes_kinect1", "osd_kinect_pcl_mosd", "realsense_d415_ovni", "realsense_d435_taeyoung",
         "realsense_d4xx_visp_rbt", "iphone_lidar_imagereloc", "iphone_arkit_tsdf_frames")
SPARSE = ("realsense_f200_apc", "realsense_f200_kinfu_sample")


def _frames(sources, count=2):
    out = []
    for src in sources:
        scale = float(json.loads((DATA_DIR / src / "meta.json").read_text())["depth_scale_per_m"])
        for k, (color, depth) in enumerate(load_real_pairs(src, count, step=17)):
            out.append((f"{src}#{k}", RGBDFrame(color, depth, scale)))
    return out


@pytest.fixture(scope="module")
def dense(data_dir):
    return _frames(DENSE)


@pytest.fixture(scope="module")
def sparse(data_dir):
    return _frames(SPARSE)


def _depth_format(payload: bytes) -> int:
    _, header, _ = container.unpack(payload, classical.MAGIC, classical.READABLE_VERSIONS)
    return classical._HEADER.unpack_from(header)[7]


def test_jpegxl_is_the_default_lossless_depth_codec():
    codec = classical.ClassicalBackend()
    assert codec.options["depth_codec"] == "jpegxl" and codec.options["depth_jxl_effort"] == 2
    assert codec.quality == "jpeg=90,depth=jpegxl"
    assert set(classical.LOSSLESS_DEPTH_CODECS) == {"jpegxl", "rvl", "png"}


@pytest.mark.parametrize("effort", [1, 2, 4])
def test_jpegxl_depth_is_bit_exact_with_holes_kept(dense, sparse, effort):
    codec = classical.ClassicalBackend(depth_jxl_effort=effort)
    for name, f in dense + sparse:
        enc = codec.encode(f)
        out = codec.decode(enc.payload).depth
        assert out.dtype == np.uint16 and np.array_equal(out, f.depth), name
        assert np.array_equal(out == 0, f.depth == 0), name
        fmt = _depth_format(enc.payload)
        if name.split("#")[0] in SPARSE:
            assert fmt == classical.FMT_RVL_ZSTD and "sparse" in enc.info["depth_fallback"], name
        else:
            assert fmt == classical.FMT_JXL16 and "depth_fallback" not in enc.info, name


def test_jpegxl_depth_is_smaller_than_rvl_on_dense_depth(dense, sparse):
    jxl, rvl = classical.ClassicalBackend(), classical.ClassicalBackend(depth_codec="rvl")
    ratios = []
    for name, f in dense:
        ratio = jxl.encode(f).bytes_depth / rvl.encode(f).bytes_depth
        if name.split("#")[0] not in ("iphone_arkit_tsdf_frames",):  # upsampled: about even there
            assert ratio < 0.9, f"{name}: JPEG XL {ratio:.2f} x RVL"
        ratios.append(ratio)
    assert np.mean(ratios) < 0.75
    for name, f in sparse:  # the fallback: never larger than RVL
        assert jxl.encode(f).bytes_depth == rvl.encode(f).bytes_depth, name


def test_float_metres_through_jpegxl(dense):
    codec = classical.ClassicalBackend()
    for name, f in dense[:4]:
        m = f.depth.astype(np.float32) / np.float32(f.depth_scale_per_m)
        m[f.depth == 0] = np.nan
        m[0, :3] = [np.inf, -1.0, 0.0]                      # holes too
        enc = codec.encode(RGBDFrame(f.color, m, 1.0))
        out = codec.decode(enc.payload).depth
        valid = np.isfinite(m) & (m > 0)
        assert _depth_format(enc.payload) == classical.FMT_JXL16, name
        assert out.dtype == np.float32 and np.array_equal(np.isnan(out), ~valid), name
        assert np.array_equal(out[valid], m[valid]), name


def test_values_above_16_bits_fall_back_to_rvl(dense):
    _, f = dense[0]
    m = f.depth.astype(np.float32) / np.float32(1000.0)
    m[f.depth == 0] = np.nan
    m[10:20, 10:20] = 70.0                                  # 70 m: 70000 mm units
    valid = ~np.isnan(m)
    codec = classical.ClassicalBackend()
    enc = codec.encode(RGBDFrame(f.color, m, 1.0))
    out = codec.decode(enc.payload).depth
    assert enc.info["depth_fallback"] == "values above 65535: RVL+zstd instead of 16-bit JPEG XL"
    assert _depth_format(enc.payload) == classical.FMT_RVL_ZSTD
    assert np.array_equal(np.isnan(out), ~valid) and np.array_equal(out[valid], m[valid])
    # the bounded quantiser's indices of the same depth fit 16 bits: JPEG XL again
    lossy = classical.ClassicalBackend(depth_codec="rvl_lossy")
    enc = lossy.encode(RGBDFrame(f.color, m, 1.0))
    out = lossy.decode(enc.payload).depth
    assert _depth_format(enc.payload) == classical.FMT_JXL16 and "depth_fallback" not in enc.info
    assert np.array_equal(np.isnan(out), ~valid)
    err_mm = np.abs(out[valid].astype(np.float64) - m[valid]) * 1000
    assert (err_mm <= np.maximum(1.0, 0.002 * m[valid] * 1000) + 1e-3).all()


@pytest.mark.parametrize("err_mm,rel", [(1.0, 0.002), (5.0, 0.01), (2.0, 0.0)])
def test_bounded_depth_through_jpegxl_keeps_the_bound_and_is_smaller(dense, sparse, err_mm, rel):
    opts = dict(depth_codec="rvl_lossy", depth_max_error_mm=err_mm, depth_rel_error=rel)
    auto = classical.ClassicalBackend(**opts)
    rvl = classical.ClassicalBackend(depth_entropy="zstd", **opts)
    assert auto.options["depth_entropy"] == "auto"
    for name, f in dense + sparse:
        enc = auto.encode(f)
        out = auto.decode(enc.payload).depth.astype(np.int64)
        d = f.depth.astype(np.int64)
        assert np.array_equal(out == 0, d == 0), f"{name}: holes moved"
        bound = np.floor(np.maximum(err_mm * f.depth_scale_per_m / 1000.0, rel * d) + 1e-9)
        assert (np.abs(out - d) <= bound).all(), name
        # the same quantised integers: RVL decodes to the very same depth
        enc_rvl = rvl.encode(f)
        assert np.array_equal(rvl.decode(enc_rvl.payload).depth, out), name
        if name.split("#")[0] in SPARSE:
            assert enc.bytes_depth == enc_rvl.bytes_depth, name
        elif name.split("#")[0] != "iphone_arkit_tsdf_frames":
            assert enc.bytes_depth < enc_rvl.bytes_depth, name


def test_depth_options():
    codec = classical.ClassicalBackend()
    for bad in (dict(depth_jxl_effort=0), dict(depth_jxl_effort=10), dict(depth_jxl_effort="fast"),
                dict(depth_codec="rvl", depth_entropy="jpegxl"), dict(depth_entropy="brotli")):
        with pytest.raises(CodecError, match="depth"):
            codec.configure(**bad)
    assert codec.options["depth_codec"] == "jpegxl"
    codec.configure(depth_codec="rvl_lossy", depth_entropy="jpegxl", depth_jxl_effort=3)
    assert codec.options["depth_jxl_effort"] == 3


# ----------------------------------------------------------------------------- forged sections
@pytest.fixture(scope="module")
def jxl_payload(dense):
    _, f = dense[0]
    small = RGBDFrame(np.ascontiguousarray(f.color[:48, :64]), np.ascontiguousarray(f.depth[:48, :64]),
                      f.depth_scale_per_m)
    codec = classical.ClassicalBackend()
    payload = codec.encode(small).payload
    assert _depth_format(payload) == classical.FMT_JXL16
    return small, payload


def _with_depth(payload: bytes, section: bytes, **fields) -> bytes:
    """The payload with another depth section (and header fields), checksums valid."""
    return rewrite_payload(payload, depth_section=section, **fields)


def _jxl(img: np.ndarray) -> bytes:
    """A bare lossless JPEG XL codestream of any image imagecodecs takes."""
    return classical.jxl_bare_codestream(bytes(imagecodecs.jpegxl_encode(img, lossless=True, effort=1)))


def test_rewritten_payload_still_decodes(jxl_payload):
    frame, payload = jxl_payload
    _, _, sections = container.unpack(payload, classical.MAGIC, classical.READABLE_VERSIONS)
    out = classical.ClassicalBackend().decode(_with_depth(payload, sections[1]))
    assert np.array_equal(out.depth, frame.depth)


#: forged depth sections for a 64x48 frame: (builder from the real section, expected message)
FORGED_SECTIONS = {
    "bigger than its header": (lambda real: jxl_size_header(16384, 16384) + bytes(31000),
                               "16384x16384, the header says 64x48"),
    "another size": (lambda real: _jxl(np.full((64, 48), 700, np.uint16)), "48x64, the header says 64x48"),
    "truncated size header": (lambda real: real[:3], "truncated in its size header"),
    "truncated": (lambda real: real[: len(real) // 2], "cannot be decoded"),
    "empty": (lambda real: b"", "not a bare JPEG XL"),
    "garbage": (lambda real: bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)),
                "not a bare JPEG XL"),
    "garbage after the size header": (
        lambda real: real[:12] + bytes(np.random.default_rng(2).integers(0, 256, 400, dtype=np.uint8)),
        "depth JPEG XL"),
    "container form": (lambda real: bytes(imagecodecs.jpegxl_encode(np.full((48, 64), 9, np.uint16),
                                                                    lossless=True)),
                       "not a bare JPEG XL"),
    "8-bit": (lambda real: _jxl(np.full((48, 64), 7, np.uint8)), "decodes to uint8"),
    "RGB": (lambda real: _jxl(np.full((48, 64, 3), 700, np.uint16)), r"\(48, 64, 3\)"),
    "an RVL stream": (lambda real: classical.rvl.encode_zstd(np.full(48 * 64, 700, np.int64)),
                      "not a bare JPEG XL"),
}


@pytest.mark.parametrize("case", list(FORGED_SECTIONS))
def test_forged_jpegxl_depth_sections_are_refused(jxl_payload, case):
    _, payload = jxl_payload
    _, _, sections = container.unpack(payload, classical.MAGIC, classical.READABLE_VERSIONS)
    build, message = FORGED_SECTIONS[case]
    with pytest.raises(CodecError, match=message):
        classical.ClassicalBackend().decode(_with_depth(payload, build(sections[1])))


def test_every_truncation_and_a_contradicting_header_are_refused(jxl_payload):
    _, payload = jxl_payload
    codec = classical.ClassicalBackend()
    _, _, sections = container.unpack(payload, classical.MAGIC, classical.READABLE_VERSIONS)
    real = sections[1]
    for n in range(len(real)):
        with pytest.raises(CodecError):
            codec.decode(_with_depth(payload, real[:n]))
    with pytest.raises(CodecError, match="JPEG XL depth must be 16-bit"):
        codec.decode(_with_depth(payload, real, bits=32))


def test_out_of_range_values_in_a_bounded_jpegxl_section_are_refused(jxl_payload):
    frame, _ = jxl_payload
    codec = classical.ClassicalBackend(depth_codec="rvl_lossy", depth_max_error_mm=50.0,
                                       depth_rel_error=0.2)
    payload = codec.encode(frame).payload
    assert _depth_format(payload) == classical.FMT_JXL16
    levels = classical.get_quantiser(50.0, 0.2, 0.0, 0xFFFF).levels
    too_big = np.full(frame.depth.shape, levels + 1, np.uint16)
    with pytest.raises(CodecError, match="out of range"):
        codec.decode(_with_depth(payload, _jxl(too_big)))


def test_a_forged_animation_costs_nothing(jxl_payload):
    """A JPEG XL depth stream of 300 frames is refused from its headers, before libjxl runs
    (session 6: libjxl composes zero-duration layers into the first frame, so reading the first
    frame only was not enough)."""
    frame, payload = jxl_payload
    frames = np.ascontiguousarray(np.broadcast_to(frame.depth, (300,) + frame.depth.shape))
    animation = _jxl(frames)
    t = time.perf_counter()
    with pytest.raises(CodecError, match="depth JPEG XL stream is an animation"):
        classical.ClassicalBackend().decode(_with_depth(payload, animation))
    assert time.perf_counter() - t < 1.0
