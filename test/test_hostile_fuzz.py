"""Regression tests for what benchmarks/fuzz_decoders.py found in the classical decoder: each
builds the hostile payload with the project's own packers (valid checksums) and asserts a clear
CodecError before any library decodes it."""
from __future__ import annotations

import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from rgbd_codec_ros.codec import classical, container, rvl
from rgbd_codec_ros.codec.base import CodecError
from rgbd_codec_ros.codec.classical import ClassicalBackend


def _payload(w: int, h: int, codec: str, colour: bytes, mono: bool = False) -> bytes:
    """A classical format-2 payload of this colour stream and an all-hole RVL+zstd depth."""
    depth = rvl.encode_zstd(np.zeros(w * h, np.int64), 16, 1)
    header = classical._HEADER.pack(w, h, 1 if mono else 0, 0, 1000.0, classical.COLOR_CODECS[codec], 90,
                                    classical.FMT_RVL_ZSTD, 16, 1, 1000.0, 0xFFFF, 0, 0.0, 0.0, 0.0)
    header += classical._STREAM.pack(1, 0, 1)
    return container.pack(classical.MAGIC, classical.FORMAT_VERSION, header, [colour, depth])


def _avif_cut_box(which: bytes) -> bytes:
    """An AVIF whose meta box ends in an empty 'iinf' box, or in an 'iinf' whose 'infe' is empty."""
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"avif", 0, b"avif")
    if which == b"iinf":
        inner = struct.pack(">I4s", 8, b"iinf")
    else:
        inner = struct.pack(">I4s", 8 + 6 + 8, b"iinf") + b"\0\0\0\0\0\1" + struct.pack(">I4s", 8, b"infe")
    return ftyp + struct.pack(">I4s", 12 + len(inner), b"meta") + b"\0\0\0\0" + inner


def progressive_jpeg(w: int, h: int, scans: int) -> bytes:
    """A grey progressive JPEG of ``scans`` AC scans that each code one end-of-band run over every
    block: ~20 bytes a scan, a pass over the whole image each for libjpeg."""
    def seg(marker, body):
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    out = b"\xff\xd8" + seg(0xDB, b"\x00" + bytes([1] * 64))
    out += seg(0xC2, struct.pack(">BHHB", 8, h, w, 1) + bytes([1, 0x11, 0]))
    out += seg(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\xe0")    # AC table: EOB14 only
    left, bits = ((w + 7) // 8) * ((h + 7) // 8), ""
    while left > 0:
        run = max(16384, min(left, 32767))
        bits += "0" + format(run - 16384, "014b")
        left -= run
    bits += "1" * (-len(bits) % 8)
    data = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    sos = seg(0xDA, bytes([1, 1, 0x00, 1, 63, 0x00]))
    return out + (sos + data) * scans + b"\xff\xd9"


@pytest.mark.parametrize("which", [b"iinf", b"infe"])
def test_avif_item_boxes_cut_short_are_codec_errors(which):
    # was: IndexError out of ClassicalBackend.decode (the size reader read past the box)
    payload = _payload(64, 64, "avif", _avif_cut_box(which))
    with pytest.raises(CodecError, match="short item"):
        ClassicalBackend().decode(payload)


def test_cli_decode_of_a_cut_avif_box_is_one_line(tmp_path):
    # was: a traceback (IndexError) and exit status 1 from rgbd-codec decode
    path = tmp_path / "cut.rgbd"
    path.write_bytes(_payload(64, 64, "avif", _avif_cut_box(b"iinf")))
    r = subprocess.run([sys.executable, "-m", "rgbd_codec_ros.cli", "decode", str(path),
                        "--color-out", str(tmp_path / "c.png"), "--depth-out", str(tmp_path / "d.png")],
                       capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and "short item" in lines[0], r.stderr
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "d.png").exists()


def test_avif_image_sequence_is_refused_before_decoding():
    # was: libavif decoded every frame of the track (a forged payload of one small keyframe and
    # hundreds of repeats costs hundreds of frames; asking it for one frame crashes libavif 1.3)
    import imagecodecs

    img = np.full((48, 64, 3), 90, np.uint8)
    sequence = bytes(imagecodecs.avif_encode(np.stack([img] * 4), level=60, speed=10))
    with pytest.raises(CodecError, match="image sequence"):
        ClassicalBackend().decode(_payload(64, 48, "avif", sequence))


def test_avif_still_images_of_the_encoder_still_decode(data_dir):
    from learned_fixtures import load_pair
    from rgbd_codec_ros.codec.base import RGBDFrame

    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 0)
    for mono in (False, True):
        col = np.round(color[:96, :128].mean(axis=2)).astype(np.uint8) if mono else color[:96, :128].copy()
        b = ClassicalBackend(color_codec="avif", depth_codec="rvl")
        out = b.decode(b.encode(RGBDFrame(col, depth[:96, :128].copy(), scale)).payload)
        assert out.color.shape == col.shape


def test_jpeg_of_many_empty_scans_is_refused_before_decoding():
    # was: 2.5 ms of libjpeg per 20-byte scan at 3840x2160 (a 240 kB payload: 30 s), and the
    # frame then decoded; a real 3840x2160 JPEG decodes in 0.1 s
    payload = _payload(3840, 2160, "jpeg", progressive_jpeg(3840, 2160, 2000), mono=True)
    t0 = time.perf_counter()
    with pytest.raises(CodecError, match="2000 scans"):
        ClassicalBackend().decode(payload)
    assert time.perf_counter() - t0 < 2.0


def test_progressive_jpeg_of_few_scans_still_decodes():
    payload = _payload(64, 48, "jpeg", progressive_jpeg(64, 48, classical_scans_limit()), mono=True)
    frame = ClassicalBackend().decode(payload)
    assert frame.color.shape == (48, 64)


def classical_scans_limit() -> int:
    from rgbd_codec_ros.codec.stream_sizes import MAX_JPEG_SCANS

    return MAX_JPEG_SCANS
