"""The classical backend on real RGB-D frames: exactness, bounds, sizes, odd inputs, bad payloads."""
import csv
import struct

import numpy as np
import pytest

from rgbd_codec_ros.codec import CodecError, RGBDFrame
from rgbd_codec_ros.codec import classical, container

from conftest import DATA_DIR

DATA = DATA_DIR
SOURCES = ("7scenes_kinect1", "osd_kinect_pcl_mosd", "realsense_d435_taeyoung",
           "realsense_f200_apc", "realsense_f200_kinfu_sample")
COLOR_CODECS = [c for c in classical.COLOR_CODECS if classical.color_codec_available(c)]


def _load(per_source):
    if not DATA.is_dir():
        pytest.skip(f"shared RGB-D data not found at {DATA}")
    import imagecodecs
    import json

    frames = []
    for src in SOURCES:
        scale = float(json.load(open(DATA / src / "meta.json"))["depth_scale_per_m"])
        rows = list(csv.DictReader(open(DATA / src / "index.csv")))
        if src == "7scenes_kinect1":  # prefer the frames shipped with lossless colour
            rows = [r for r in rows if r["color"].endswith(".png")] or rows
        for row in rows[:: max(1, len(rows) // per_source)][:per_source]:
            color = imagecodecs.imread(DATA / src / row["color"])[:, :, :3]
            depth = imagecodecs.imread(DATA / src / row["depth"])
            frames.append((f"{src}/{row['id']}", RGBDFrame(color, depth, scale)))
    return frames


@pytest.fixture(scope="module")
def frames():
    return _load(per_source=1)


def make(**opts):
    return classical.ClassicalBackend(**opts)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _metres(frame):
    d = frame.depth.astype(np.float32) / np.float32(frame.depth_scale_per_m)
    d[frame.depth == 0] = np.nan
    return d


def test_registered():
    from rgbd_codec_ros.codec import available_backends, create_backend

    assert "classical" in available_backends()
    codec = create_backend("classical", color_quality=75)
    assert isinstance(codec, classical.ClassicalBackend)
    assert codec.name == "classical" and codec.model_id == ""
    assert codec.quality == "jpeg=75,depth=jpegxl"


@pytest.mark.parametrize("opts", [{}, {"depth_codec": "rvl"}, {"depth_codec": "rvl", "depth_entropy": "none"},
                                  {"depth_codec": "png"}, {"depth_codec": "png", "png_level": 1}])
def test_lossless_depth_is_exact(frames, opts):
    codec = make(**opts)
    for name, f in frames:
        enc = codec.encode(f)
        assert enc.codec == "classical"
        assert enc.bytes_rgb + enc.bytes_depth + enc.info["overhead_bytes"] == len(enc.payload)
        out = codec.decode(enc.payload)
        assert out.depth.dtype == np.uint16 and np.array_equal(out.depth, f.depth), name
        assert out.depth_scale_per_m == f.depth_scale_per_m
        assert out.color.shape == f.color.shape and out.color.dtype == np.uint8


def test_lossless_depth_beats_ros_compressed_depth(frames):
    """JPEG XL (the default) and RVL+zstd must be no larger than compressedDepth's 16-bit PNG
    (zlib 3)."""
    import imagecodecs

    for codec in (make(), make(depth_codec="rvl")):
        for name, f in frames:
            ours = codec.encode(f).bytes_depth
            png3 = len(imagecodecs.png_encode(f.depth, level=3))
            assert ours <= png3, f"{name} {codec.quality}: {ours} bytes vs PNG level 3 {png3}"


@pytest.mark.parametrize("err_mm,rel", [(1.0, 0.002), (5.0, 0.0), (0.5, 0.01)])
def test_lossy_depth_bound_and_holes(frames, err_mm, rel):
    codec = make(depth_codec="rvl_lossy",
                           depth_max_error_mm=err_mm, depth_rel_error=rel)
    lossless = make()
    for name, f in frames:
        enc = codec.encode(f)
        out = codec.decode(enc.payload).depth
        d = f.depth.astype(np.int64)
        assert np.array_equal(out == 0, d == 0), f"{name}: holes moved"
        units_per_mm = f.depth_scale_per_m / 1000.0
        bound = np.floor(np.maximum(err_mm * units_per_mm, rel * d) + 1e-9)
        err = np.abs(out.astype(np.int64) - d)
        assert (err <= bound).all(), f"{name}: error {err.max()} above bound"
        assert err.max() > 0  # it is lossy ...
        assert enc.bytes_depth < lossless.encode(f).bytes_depth  # ... and smaller


def test_lossy_depth_error_grows_with_distance(frames):
    name, f = frames[0]  # Kinect: depths from ~0.5 m to 3.5 m
    codec = make(depth_codec="rvl_lossy", depth_max_error_mm=1.0,
                           depth_rel_error=0.004)
    out = codec.decode(codec.encode(f).payload).depth.astype(np.int64)
    d = f.depth.astype(np.int64)
    near, far = (d > 0) & (d < 1000), d > 2500
    assert near.any() and far.any()
    err = np.abs(out - d)
    assert err[near].max() <= 3 and err[far].max() > 3


@pytest.mark.parametrize("quality,floor", [(95, 33.0), (90, 32.0), (80, 31.0), (50, 29.0)])
def test_jpeg_colour_psnr_floor(frames, quality, floor):
    codec = make(color_codec="jpeg", color_quality=quality)
    for name, f in frames:
        out = codec.decode(codec.encode(f).payload)
        assert psnr(f.color, out.color) >= floor, name


def test_colour_quality_trades_bytes_for_fidelity(frames):
    name, f = frames[1]
    for cc in COLOR_CODECS:
        lo = make(color_codec=cc, color_quality=40)
        hi = make(color_codec=cc, color_quality=90)
        elo, ehi = lo.encode(f), hi.encode(f)
        assert elo.bytes_rgb < ehi.bytes_rgb, cc
        assert psnr(f.color, lo.decode(elo.payload).color) < psnr(f.color, hi.decode(ehi.payload).color), cc


@pytest.mark.parametrize("cc", COLOR_CODECS)
def test_every_colour_codec_rgb_and_mono(frames, cc):
    _, f = frames[2]
    codec = make(color_codec=cc, color_quality=80)
    out = codec.decode(codec.encode(f).payload)
    assert out.color.shape == f.color.shape and psnr(f.color, out.color) > 30
    assert np.array_equal(out.depth, f.depth)
    grey = np.rint(f.color.mean(axis=2)).astype(np.uint8)
    mono = RGBDFrame(grey, f.depth, f.depth_scale_per_m)
    enc = codec.encode(mono)
    out = codec.decode(enc.payload)
    assert out.color.shape == grey.shape and out.color.dtype == np.uint8
    assert psnr(grey, out.color) > 34
    assert enc.bytes_rgb < codec.encode(f).bytes_rgb * 1.05


def test_float_metres_on_a_mm_grid_are_exact(frames):
    codec = make()
    for name, f in frames:
        m = _metres(f)
        m[:3, :3] = [[np.inf, -np.inf, -1.0], [0.0, np.nan, 2.5], [1e-3, 7.0, 65.535]]
        enc = codec.encode(RGBDFrame(f.color, m, 1.0))
        out = codec.decode(enc.payload).depth
        valid = np.isfinite(m) & (m > 0)
        assert out.dtype == np.float32
        assert np.array_equal(np.isnan(out), ~valid), name
        assert np.array_equal(out[valid], m[valid]), name
        assert "integer units" in enc.info["depth_float"]


def test_float_metres_off_any_grid_keep_their_bits(frames):
    _, f = frames[4]
    m = _metres(f) * np.float32(1.0000123)
    for opts in ({}, {"depth_codec": "rvl"}, {"depth_codec": "png"},
                 {"depth_codec": "rvl", "depth_entropy": "none"}):
        codec = make(**opts)
        enc = codec.encode(RGBDFrame(f.color, m, 1.0))
        out = codec.decode(enc.payload).depth
        assert enc.info["depth_float"] == "float32 bits"
        assert np.array_equal(np.isnan(out), np.isnan(m))
        assert np.array_equal(out[~np.isnan(m)], m[~np.isnan(m)])


def test_float_metres_lossy_bound(frames):
    codec = make(depth_codec="rvl_lossy", depth_max_error_mm=2.0,
                           depth_rel_error=0.001)
    for name, f in frames[:3]:
        m = _metres(f) * np.float32(1.0000123)  # not on any integer grid
        out = codec.decode(codec.encode(RGBDFrame(f.color, m, 1.0)).payload).depth
        valid = ~np.isnan(m)
        assert np.array_equal(np.isnan(out), ~valid), name
        err_mm = np.abs(out[valid].astype(np.float64) - m[valid]) * 1000
        bound_mm = np.maximum(2.0, 0.001 * m[valid] * 1000)
        # float32 output adds at most one ulp (< 1 um below 100 m)
        assert (err_mm <= bound_mm + 1e-3).all(), name


def test_uint32_range_float_depth():
    """Depths above 65.535 m at 1 mm need 32-bit units (and JPEG XL and PNG fall back to RVL)."""
    rng = np.random.default_rng(3)
    m = (rng.integers(1, 400_000, size=(21, 37)) / 1000.0).astype(np.float32)
    m[::4] = np.nan
    color = rng.integers(0, 256, size=(21, 37, 3), dtype=np.uint8)
    for opts in ({}, {"depth_codec": "rvl"}, {"depth_codec": "png"},
                 {"depth_codec": "rvl", "depth_entropy": "none"}):
        codec = make(**opts)
        out = codec.decode(codec.encode(RGBDFrame(color, m, 1.0)).payload).depth
        assert np.array_equal(np.isnan(out), np.isnan(m))
        assert np.array_equal(out[~np.isnan(m)], m[~np.isnan(m)])


@pytest.mark.parametrize("size", [(17, 33), (479, 641), (1, 1), (1, 9), (9, 1), (2, 3)])
def test_odd_and_tiny_sizes(frames, size):
    h, w = size
    _, f = frames[3]
    color = np.pad(f.color, ((0, 1), (0, 1), (0, 0)), mode="reflect")[:h, :w]
    depth = np.pad(f.depth, ((0, 1), (0, 1)), mode="reflect")[:h, :w]
    frame = RGBDFrame(np.ascontiguousarray(color), np.ascontiguousarray(depth), f.depth_scale_per_m)
    for cc in COLOR_CODECS:
        for dc in classical.DEPTH_CODECS:
            codec = make(color_codec=cc, depth_codec=dc)
            out = codec.decode(codec.encode(frame).payload)
            assert out.color.shape == (h, w, 3) and out.depth.shape == (h, w), (cc, dc)
            assert np.array_equal(out.depth == 0, depth == 0)
            if dc != "rvl_lossy":
                assert np.array_equal(out.depth, depth)


def test_bad_options():
    bad = [dict(color_codec="gif"), dict(color_quality=0), dict(color_quality=101),
           dict(color_quality="high"), dict(color_quality=True), dict(color_quality=80.5),
           dict(depth_codec="jpeg"), dict(depth_entropy="lzma"), dict(depth_zstd_level=0),
           dict(png_level=10), dict(depth_max_error_mm=0), dict(depth_max_error_mm=float("nan")),
           dict(depth_rel_error=0.5), dict(depth_rel_error=1e-6), dict(colour_quality=80),
           dict(depth_jxl_effort=0), dict(depth_jxl_effort=10)]
    codec = make()
    for opts in bad:
        with pytest.raises(CodecError, match=next(iter(opts)).split("_")[0]):
            codec.configure(**opts)
        with pytest.raises(CodecError):
            make(**opts)
    assert codec.quality == "jpeg=90,depth=jpegxl"  # a refused configure changes nothing
    codec.configure(color_codec="WEBP", color_quality="70", depth_codec="rvl_lossy")
    assert codec.quality == "webp=70,depth=rvl_lossy(1mm+0.2%)"


def test_bad_frames(frames):
    _, f = frames[0]
    codec = make()
    bad = [RGBDFrame(f.color[:-1], f.depth, 1000.0),
           RGBDFrame(f.color.astype(np.float32), f.depth, 1000.0),
           RGBDFrame(f.color, f.depth.astype(np.int32), 1000.0),
           RGBDFrame(f.color, f.depth.astype(np.float32), 1000.0),
           RGBDFrame(f.color, f.depth, 0.0),
           RGBDFrame(f.color[:0], f.depth[:0], 1000.0)]
    for frame in bad:
        with pytest.raises(CodecError):
            codec.encode(frame)
    with pytest.raises(CodecError):
        codec.encode((f.color, f.depth))


@pytest.fixture(scope="module")
def payload(frames):
    _, f = frames[3]
    return make().encode(f).payload


def test_every_truncation_is_an_error(payload):
    codec = make()
    cuts = list(range(0, 200)) + list(range(200, len(payload), 997)) + [len(payload) - 1]
    for n in cuts:
        with pytest.raises(CodecError):
            codec.decode(payload[:n])


def test_random_damage_is_detected(payload):
    codec = make()
    rng = np.random.default_rng(5)
    for trial in range(300):
        bad = bytearray(payload)
        for _ in range(1 + trial % 4):
            pos = int(rng.integers(len(bad))) if trial % 2 else int(rng.integers(120))
            bad[pos] ^= 1 << int(rng.integers(8))
        if bytes(bad) == payload:
            continue
        with pytest.raises(CodecError):
            codec.decode(bytes(bad))


def test_other_bad_payloads(payload):
    codec = make()
    for bad in (b"", b"RDCL", payload + b"\0", b"\0" * 100, payload[:4] + b"\x07" + payload[5:],
                b"XXXX" + payload[4:], bytes(reversed(payload))):
        with pytest.raises(CodecError):
            codec.decode(bad)
    with pytest.raises(CodecError, match="bytes"):
        codec.decode(None)
    with pytest.raises(CodecError, match="version"):
        codec.decode(payload[:4] + b"\x03" + payload[5:])


def _rewrite(payload, **changes):
    """Re-pack a payload with header fields changed and valid checksums (a crafted payload)."""
    version, header, sections = container.unpack(payload, classical.MAGIC, classical.READABLE_VERSIONS)
    names = ["w", "h", "flags", "dtype", "scale", "ccodec", "cq", "fmt", "bits", "level",
             "sscale", "maxv", "quant", "qabs", "qrel", "qmargin"]
    fields = dict(zip(names, classical._HEADER.unpack_from(header)))
    stream = header[classical._HEADER.size:]
    sections = list(sections)
    if "depth_section" in changes:
        sections[1] = changes.pop("depth_section")
    fields.update(changes)
    return container.pack(classical.MAGIC, version, classical._HEADER.pack(*fields.values()) + stream, sections)


def test_crafted_payloads_with_valid_checksums_are_refused(payload):
    codec = make()
    assert codec.decode(_rewrite(payload)).depth.shape == (480, 640)  # the rewrite is faithful
    for changes in (dict(w=641), dict(h=1), dict(w=100000, h=100000), dict(flags=1),
                    dict(flags=4), dict(dtype=1), dict(dtype=7), dict(scale=float("nan")),
                    dict(ccodec=9), dict(ccodec=2), dict(fmt=3), dict(fmt=1), dict(fmt=5), dict(fmt=9),
                    dict(bits=8), dict(maxv=1000), dict(quant=1, qabs=1.0, qrel=0.5),
                    dict(quant=1, qabs=-1.0, qrel=0.0), dict(quant=1, qabs=1.0, qmargin=2.0),
                    dict(quant=3), dict(sscale=1000.0), dict(depth_section=b""),
                    dict(depth_section=b"\x28\xb5\x2f\xfd" + bytes(20))):
        with pytest.raises(CodecError):
            codec.decode(_rewrite(payload, **changes))


def test_encoding_is_deterministic(frames):
    _, f = frames[1]
    # the same frame gives the same streams and header (the stream fields count the frames)
    codec = make(depth_codec="rvl_lossy")
    first, second = (container.unpack(codec.encode(f).payload, classical.MAGIC, (classical.FORMAT_VERSION,))
                     for _ in range(2))
    size = classical._HEADER.size
    assert first[2] == second[2] and first[1][:size] == second[1][:size]
    stream_id, seq0, key0 = classical._STREAM.unpack_from(first[1], size)
    assert classical._STREAM.unpack_from(second[1], size) == (stream_id, seq0 + 1, key0) and key0 == 1


def test_header_layout_is_stable(payload):
    # magic, version, 2 sections, header length: a format change must be deliberate
    assert payload[:4] == b"RDCL" and payload[4] == 2 and payload[5] == 2
    assert struct.unpack_from("<H", payload, 6)[0] == classical._HEADER.size + classical._STREAM.size


@pytest.mark.parametrize("abs_units,rel,margin", [(1.0, 0.002, 0.0), (10.0, 0.0, 0.0),
                                                   (0.5, 0.01, 0.0), (9.7, 0.001, 0.5005)])
def test_quantiser_bound_holds_for_every_16_bit_value(abs_units, rel, margin):
    from rgbd_codec_ros.codec.depth_quant import get_quantiser

    q = get_quantiser(abs_units, rel, margin, 0xFFFF)
    u = np.arange(1, 0x10000, dtype=np.int64)
    idx = q.quantise(u)
    r = q.reconstruct(idx)
    bound = np.maximum(0, np.floor(np.maximum(abs_units, rel * u) - margin + 1e-9))
    assert (np.abs(r - u) <= bound).all()
    assert (np.diff(idx) >= 0).all() and idx.min() == 0 and idx.max() == q.levels - 1
    assert r.min() >= 1 and r.max() <= 0xFFFF
    with pytest.raises(CodecError):
        q.reconstruct(np.array([q.levels]))
