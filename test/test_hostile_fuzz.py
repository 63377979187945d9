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
from forge import progressive_jpeg

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


# --------------------------------------------------------------------------- JPEG XL frames
def _depth_payload(w: int, h: int, depth: bytes) -> bytes:
    """A classical payload of a real grey JPEG colour stream and this 16-bit JPEG XL depth stream."""
    import imagecodecs

    colour = bytes(imagecodecs.jpeg8_encode(np.full((h, w), 90, np.uint8), level=90))
    header = classical._HEADER.pack(w, h, 1, 0, 1000.0, classical.COLOR_CODECS["jpeg"], 90,
                                    classical.FMT_JXL16, 16, 1, 1000.0, 0xFFFF, 0, 0.0, 0.0, 0.0)
    header += classical._STREAM.pack(1, 0, 1)
    return container.pack(classical.MAGIC, classical.FORMAT_VERSION, header, [colour, depth])


def _jxl_payload(section: str, w: int, h: int, stream: bytes) -> bytes:
    stream = classical.jxl_bare_codestream(stream)
    return _payload(w, h, "jpegxl", stream) if section == "colour" else _depth_payload(w, h, stream)


def _jxl_frames(section: str, frames: int, w: int = 64, h: int = 48) -> bytes:
    """A constant colour (RGB) or 16-bit depth image of ``frames`` frames from imagecodecs."""
    import imagecodecs

    if section == "colour":
        return bytes(imagecodecs.jpegxl_encode(np.full((frames, h, w, 3), 90, np.uint8), level=90, effort=1))
    return bytes(imagecodecs.jpegxl_encode(np.full((frames, h, w), 9, np.uint16), lossless=True, effort=1))


def jxl_layers(single: bytes, layers: int) -> bytes:
    """A still (not animated) JPEG XL codestream of ``layers`` copies of the one frame of
    ``single``: every copy but the last has is_last cleared (and the three bits a non-last frame
    adds, save_as_reference 0 and save_before_color_transform 0, inserted after it). libjxl
    composes every layer into frame 0. The frame start and the is_last bit are searched for
    and each candidate is checked with libjxl, so nothing here depends on the size reader."""
    import imagecodecs

    want = imagecodecs.jpegxl_decode(single)
    bits = [(x >> i) & 1 for x in single for i in range(8)]

    def pack(b):
        b = b + [0] * (-len(b) % 8)
        return bytes(sum(b[k + i] << i for i in range(8)) for k in range(0, len(b), 8))

    for start in range(3, 16):                       # the frame's first byte
        for p in range(8 * start, 8 * start + 32):   # its is_last bit
            if not bits[p]:
                continue
            for end in range(p // 8 + 1, p // 8 + 4):  # where its table of contents' entries start
                head = bits[8 * start:p] + [0, 0, 0, 0] + bits[p + 1:8 * end]
                if any(head[8 * (end - start):]):
                    continue
                layer = pack(head[:8 * (end - start)]) + single[end:]
                two = single[:start] + layer + single[start:]
                try:
                    out = imagecodecs.jpegxl_decode(two)
                except Exception:
                    continue
                try:   # the layer alone must not be a whole image: its is_last is what was cleared
                    imagecodecs.jpegxl_decode(single[:start] + layer)
                    continue
                except Exception:
                    pass
                if out.shape == want.shape and np.array_equal(out, want):
                    return single[:start] + layer * (layers - 1) + single[start:]
    raise AssertionError("no is_last bit found in the JPEG XL frame")


@pytest.mark.parametrize("section", ["colour", "depth"])
def test_jpegxl_animation_is_refused_before_decoding(section):
    # was: decoded (index=0, one frame): harmless alone, but an animation's frames of zero
    # duration are layers that libjxl composes into frame 0 (see the next test)
    with pytest.raises(CodecError, match="is an animation"):
        ClassicalBackend().decode(_jxl_payload(section, 64, 48, _jxl_frames(section, 4)))


@pytest.mark.parametrize("section", ["colour", "depth"])
def test_jpegxl_layers_are_refused_before_decoding(section):
    # was: libjxl decoded every layer into frame 0: 300 constant 640x480 layers (a 47 kB colour or
    # 74 kB depth stream) took 7.7 s / 6.6 s, where a real frame takes 0.07 s / 0.03 s
    single = classical.jxl_bare_codestream(_jxl_frames(section, 1))
    payload = _jxl_payload(section, 64, 48, jxl_layers(single, 50))
    t0 = time.perf_counter()
    with pytest.raises(CodecError, match="more than one frame"):
        ClassicalBackend().decode(payload)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("section", ["colour", "depth"])
def test_jpegxl_extra_channels_are_refused_before_decoding(section):
    # was: every extra channel decoded as a whole plane before the shape check refused it:
    # 256 constant 640x480 channels in an 8.6 kB depth stream cost +300 MiB and 3.4 s
    import imagecodecs

    planes = np.full((17, 48, 64), 9, np.uint8 if section == "colour" else np.uint16)
    stream = bytes(imagecodecs.jpegxl_encode(planes, lossless=True, effort=1, planar=True))
    if section == "colour":
        payload = _payload(64, 48, "jpegxl", classical.jxl_bare_codestream(stream), mono=True)
    else:
        payload = _depth_payload(64, 48, classical.jxl_bare_codestream(stream))
    with pytest.raises(CodecError, match="16 extra channels"):
        ClassicalBackend().decode(payload)


def test_jpegxl_streams_of_the_encoder_still_decode(data_dir):
    from learned_fixtures import load_pair

    from rgbd_codec_ros.codec.base import RGBDFrame

    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 0)
    col, dep = color[:96, :128].copy(), depth[:96, :128].copy()
    for quality in (1, 50, 100):
        for effort in (1, 5, 9):
            b = ClassicalBackend(color_codec="jpegxl", color_quality=quality, depth_codec="jpegxl",
                                 depth_jxl_effort=effort)
            out = b.decode(b.encode(RGBDFrame(col, dep, scale)).payload)
            assert out.color.shape == col.shape and out.depth.shape == dep.shape


# --------------------------------------------------------------------------- AVIF idat
def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def avif_in_idat(small: bytes, big: bytes) -> bytes:
    """``small`` (an AVIF of the encoder) with the AV1 data of ``big`` moved into a 'meta/idat'
    box (iloc version 1, construction_method 1) and ``small``'s own AV1 sequence header added to
    its 'av1C' box, so every sequence header the size reader used to see states the small size."""
    from rgbd_codec_ros.codec.stream_sizes import _boxes

    def top(data, kind):
        return next((s, e) for k, s, e in _boxes(data, 0, len(data)) if k == kind)

    ms, me = top(small, b"meta")
    mdat_s, mdat_e = top(small, b"mdat")
    bs, be = top(big, b"mdat")
    pos, seq = mdat_s, b""
    while not seq:           # the sequence header OBU (type 1) of the run of OBUs in mdat
        head, length = small[pos], small[pos + 1]
        assert head & 6 == 2 and length < 0x80          # sized OBUs without extension
        seq = small[pos:pos + 2 + length] if head >> 3 & 15 == 1 else b""
        pos += 2 + length
    kids = []
    for kind, s, e in _boxes(small, ms + 4, me):
        body = small[s:e]
        if kind == b"iloc":      # one item, one extent: the whole idat
            body = bytes([1, 0, 0, 0, 0x44, 0x00]) + struct.pack(">HHHHHII", 1, 1, 1, 0, 1, 0, be - bs)
        elif kind == b"iprp":
            (cs, ce), = [(s2, e2) for k2, s2, e2 in _boxes(small, s, e) if k2 == b"ipco"]
            props = b""
            for k3, s3, e3 in _boxes(small, cs, ce):
                props += _box(k3, small[s3:e3] + (seq if k3 == b"av1C" else b""))
            body = small[s:cs - 8] + _box(b"ipco", props) + small[ce:e]
        kids.append(_box(kind, body))
    kids.append(_box(b"idat", big[bs:be]))
    return small[:ms - 8][:top(small, b"ftyp")[1]] + _box(b"meta", small[ms:ms + 4] + b"".join(kids))


def test_avif_image_data_in_idat_is_refused_before_decoding():
    # was: the AV1 sequence headers were read from 'mdat' and 'av1C' only: a 640x480 AVIF
    # whose 'idat' held a 2560x1920 frame passed the size check and cost libavif 3.8x the memory
    # of the real frame (the forged frame's size is bounded by nothing)
    import imagecodecs

    small = bytes(imagecodecs.avif_encode(np.full((48, 64, 3), 90, np.uint8), level=60, speed=10))
    big = bytes(imagecodecs.avif_encode(np.full((192, 256, 3), 90, np.uint8), level=60, speed=10))
    with pytest.raises(CodecError, match="idat"):
        ClassicalBackend().decode(_payload(64, 48, "avif", avif_in_idat(small, big)))
