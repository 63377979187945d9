"""RVL depth coding: exact round trips on real and synthetic depth, format, robustness."""
import csv
import zlib

import numpy as np
import pytest

from rgbd_codec_ros.codec import rvl
from rgbd_codec_ros.codec.base import CodecError

from conftest import DATA_DIR

DATA = DATA_DIR
SOURCES = ("7scenes_kinect1", "osd_kinect_pcl_mosd", "realsense_d435_taeyoung",
           "realsense_f200_apc", "realsense_f200_kinfu_sample")


def _depth_frames(per_source=1):
    if not DATA.is_dir():
        pytest.skip(f"shared RGB-D data not found at {DATA}")
    import imagecodecs

    out = []
    for src in SOURCES:
        rows = list(csv.DictReader(open(DATA / src / "index.csv")))
        for row in rows[:: max(1, len(rows) // per_source)][:per_source]:
            out.append((f"{src}/{row['id']}", imagecodecs.imread(DATA / src / row["depth"])))
    return out


@pytest.fixture(scope="module")
def real_depth():
    return _depth_frames(per_source=2)


def test_real_frames_round_trip_exactly_in_every_layout(real_depth):
    for name, d in real_depth:
        assert d.dtype == np.uint16 and d.shape == (480, 640), name
        stream = rvl.encode(d)
        back = rvl.decode(stream)
        assert back.dtype == np.uint16 and np.array_equal(back, d), name
        flat = rvl.decode_values(rvl.encode_values(d), d.size)
        assert np.array_equal(flat.reshape(d.shape), d), name
        planes = rvl.decode_planes(rvl.encode_planes(d, 16), d.size, 16)
        assert np.array_equal(planes.reshape(d.shape), d), name
        z = rvl.decode_zstd(rvl.encode_zstd(d, 16, 3), d.size, 16)
        assert np.array_equal(z.reshape(d.shape), d), name
        # RVL actually compresses real depth (raw is 2 bytes a pixel)
        assert len(stream) < d.nbytes * 0.7, name


def test_known_bitstream():
    # pixels 0 0 5 3: 2 zeros, 2 non-zeros, deltas +5 -> 10, -2 -> 3 (zig-zag)
    # nibbles: 2 | 2 | 10 = 0b001_010 -> 0xA (2, more) 0x1 | 3, padded: 0x22A13000
    data = rvl.encode_values(np.array([0, 0, 5, 3], np.uint16))
    assert data == (0x22A13000).to_bytes(4, "little")
    assert rvl.decode_values(data, 4).tolist() == [0, 0, 5, 3]
    # [65535]: 0 zeros | 1 non-zero | zz(65535) = 131070 -> groups 6,7,7,7,7,3 -> E F F F F 3
    data = rvl.encode_values(np.array([65535], np.uint16))
    assert data == (0x01EFFFF3).to_bytes(4, "little")
    assert rvl.decode_values(data, 1).tolist() == [65535]
    # [0, 65535]: 1 | 1 | E F F F F 3 = exactly one word
    data = rvl.encode_values(np.array([0, 65535], np.uint16))
    assert data == (0x11EFFFF3).to_bytes(4, "little")
    assert rvl.decode_values(data, 2).tolist() == [0, 65535]
    # [0, 65535, 1]: the delta -65534 (zz 131067: B F F F F 3) spills into a padded second word
    data = rvl.encode_values(np.array([0, 65535, 1], np.uint16))
    assert data == (0x12EFFFF3).to_bytes(4, "little") + (0xBFFFF300).to_bytes(4, "little")
    assert rvl.decode_values(data, 3).tolist() == [0, 65535, 1]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (17, 33), (479, 641)])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 0.97, 1.0])
def test_synthetic_round_trip(shape, density):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1] + int(density * 100))
    d = rng.integers(1, 65536, size=shape, dtype=np.int64)
    d[rng.random(shape) >= density] = 0
    d = d.astype(np.uint16)
    assert np.array_equal(rvl.decode(rvl.encode(d)), d)
    assert np.array_equal(rvl.decode_zstd(rvl.encode_zstd(d), d.size).reshape(shape), d)


def test_extreme_values_and_patterns():
    cases = [
        np.zeros((5, 5), np.uint16),
        np.full((5, 5), 65535, np.uint16),
        np.tile(np.array([[1, 65535]], np.uint16), (3, 8)),      # largest deltas both ways
        np.indices((9, 9)).sum(0).astype(np.uint16) % 2 * 700,   # checkerboard of holes
    ]
    for d in cases:
        assert np.array_equal(rvl.decode(rvl.encode(d)), d)
        assert np.array_equal(rvl.decode_planes(rvl.encode_planes(d), d.size).reshape(d.shape), d)


def test_32_bit_values():
    rng = np.random.default_rng(7)
    d = rng.integers(0, 2**32, size=(31, 29), dtype=np.uint64).astype(np.uint32)
    d[::3] = 0
    assert np.array_equal(rvl.decode(rvl.encode(d)), d)
    flat = rvl.decode_zstd(rvl.encode_zstd(d, 32), d.size, 32, 2**32 - 1)
    assert np.array_equal(flat.reshape(d.shape), d)


def test_empty_image():
    assert rvl.encode_values(np.zeros(0, np.uint16)) == b""
    assert rvl.decode_values(b"", 0).size == 0
    assert rvl.decode_planes(rvl.encode_planes(np.zeros(0, np.uint16)), 0).size == 0


def test_bad_inputs_to_encoder():
    with pytest.raises(CodecError):
        rvl.encode(np.zeros((4, 4), np.float32))
    with pytest.raises(CodecError):
        rvl.encode(np.zeros((4, 4, 2), np.uint16))
    with pytest.raises(CodecError):
        rvl.encode_values(np.array([-1, 3]))
    with pytest.raises(CodecError):
        rvl.encode_planes(np.array([70000]), 16)


def test_every_truncation_is_an_error(real_depth):
    _, d = real_depth[3]  # a sparse F200 frame: many short runs
    d = d[:40]
    stream = rvl.encode(d)
    for n in range(len(stream)):
        with pytest.raises(CodecError):
            rvl.decode(stream[:n])
    planes = rvl.encode_zstd(d)
    for n in range(0, len(planes), 7):
        with pytest.raises(CodecError):
            rvl.decode_zstd(planes[:n], d.size)


def test_padding_and_trailing_data_are_errors(real_depth):
    _, d = real_depth[0]
    stream = rvl.encode_values(d)
    for extra in (b"\0\0\0\0", b"\x12\x34\x56\x78"):
        with pytest.raises(CodecError):
            rvl.decode_values(stream + extra, d.size)
    with pytest.raises(CodecError):
        rvl.decode_values(stream, d.size + 1)
    with pytest.raises(CodecError):
        rvl.decode_values(stream, d.size - 1)
    raw = rvl.encode_planes(d)
    with pytest.raises(CodecError):
        rvl.decode_planes(raw + b"\0", d.size)
    with pytest.raises(CodecError):
        rvl.decode_planes(raw, d.size - 3)


def test_random_corruption_never_crashes_and_keeps_size(real_depth):
    """Raw RVL has no checksum (the container adds one): damage must give CodecError
    or an image of the declared size with valid values, never an exception or a bad shape."""
    rng = np.random.default_rng(1)
    _, d = real_depth[6]
    d = d[100:180]
    stream = bytearray(rvl.encode(d))
    raw_planes = bytearray(rvl.encode_planes(d))
    errors = 0
    for trial in range(150):
        for buf, decode in ((stream, rvl.decode),
                            (raw_planes, lambda b: rvl.decode_planes(b, d.size))):
            bad = bytearray(buf)
            for _ in range(1 + trial % 3):
                pos = int(rng.integers(len(bad)))
                bad[pos] ^= 1 << int(rng.integers(8))
            try:
                out = decode(bytes(bad))
            except CodecError:
                errors += 1
                continue
            assert out.size == d.size
            assert int(out.min()) >= 0 and int(out.max()) <= 65535
    assert errors > 0


def test_declared_size_bounds_allocation():
    with pytest.raises(CodecError, match="out of range"):
        rvl.decode_values(b"\0" * 4, rvl.MAX_PIXELS + 1)
    header = rvl._HEADER.pack(b"RVL1", 100000, 100000, 16)
    with pytest.raises(CodecError, match="more than"):
        rvl.decode(header + b"\0" * 4)
    # a tiny stream claiming a zero run longer than the image
    with pytest.raises(CodecError):
        rvl.decode_values(rvl.encode_values(np.zeros(1000, np.uint16)), 10)
    with pytest.raises(CodecError, match="not an RVL"):
        rvl.decode(b"PNG\0" + bytes(20))
    with pytest.raises(CodecError):
        rvl.decode_zstd(zlib.compress(b"x" * 100), 10)
