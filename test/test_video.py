"""Temporal colour: rgbd_codec_ros.codec.video and the classical backend's h264 / hevc / av1.

Real bitstreams from the real encoders and decoders (libx264, libx265, SVT-AV1 + dav1d through
PyAV), small frames of the project's synthetic scene, no mocks.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rgbd_codec_ros.codec import CodecError, RGBDFrame, container, create_backend, rvl, video
from rgbd_codec_ros.codec.base import MissingReference
from rgbd_codec_ros.synthetic import SyntheticSequence

REPO = Path(__file__).resolve().parents[1]
W, H = 96, 64
CODECS = [pytest.param(c, marks=pytest.mark.skipif(not video.video_codec_available(c),
                                                    reason=f"this PyAV build has no {c} encoder/decoder"))
          for c in video.VIDEO_CODECS]
#: RGB PSNR floors at quality 70 on the synthetic scene at 96x64: the RGB -> 4:2:0 -> RGB
#: conversion alone gives 25.9 dB here (fine saturated texture and colour noise), the codecs
#: measured 25.4-26.0 dB; grey has no chroma to lose (measured 38.8-49.9 dB)
RGB_FLOOR_DB = 23.0
GREY_FLOOR_DB = 35.0
#: the classical payload header of format version 1 (no stream fields), spelled out here so a
#: change of the module's layout cannot go unnoticed
V1_HEADER = struct.Struct("<IIBBdBBBBBdIBddd")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def clip():
    seq = SyntheticSequence(W, H, seed=1, fps=10.0)
    return [seq.frame(i) for i in range(12)]


def _backend(codec: str, **opts):
    return create_backend("classical", color_codec=codec, color_quality=70, depth_codec="rvl",
                          depth_entropy="zstd", **opts)


def _stream(codec: str, clip, n: int = 10, keyframe_interval: int = 4):
    """Payloads of n frames and their in-order decodes (the reference)."""
    enc = _backend(codec, keyframe_interval=keyframe_interval)
    encoded = [enc.encode(RGBDFrame(c, d, 1000.0, stamp_s=0.1 * i)) for i, (c, d) in enumerate(clip[:n])]
    dec = _backend(codec)
    ref = [dec.decode(e.payload) for e in encoded]
    return encoded, ref


def _same(frame: RGBDFrame, ref: RGBDFrame, depth: np.ndarray) -> None:
    assert np.array_equal(frame.color, ref.color)
    assert np.array_equal(frame.depth, depth)


# ---------------------------------------------------------------------------- VideoEncoder / Decoder
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_one_packet_per_frame(codec, clip):
    enc = video.VideoEncoder(codec, W, H, quality=70, keyframe_interval=30, threads=2)
    dec = video.VideoDecoder(codec, W, H, threads=2)
    keys, scores = [], []
    for i, (color, _) in enumerate(clip[:8]):
        data, key = enc.encode(color, timestamp_s=0.1 * i)
        assert isinstance(data, bytes) and data
        keys.append(key)
        out = dec.decode(data)  # one packet in, one frame out, at once (decode() checks it)
        assert out.shape == color.shape and out.dtype == np.uint8
        scores.append(psnr(color, out))
    assert keys == [True] + [False] * 7
    assert min(scores) >= RGB_FLOOR_DB, scores
    # nothing held back: a flush of either side returns nothing (no frame of delay)
    assert enc._ctx.encode(None) == []
    assert dec._ctx.decode(None) == []


@pytest.mark.parametrize("codec", CODECS)
def test_quality_monotone_in_size_and_psnr(codec, clip):
    sizes, scores = [], []
    for q in (20, 50, 80):
        enc = video.VideoEncoder(codec, W, H, quality=q)
        dec = video.VideoDecoder(codec, W, H)
        total, s = 0, []
        for color, _ in clip[:6]:
            data, _ = enc.encode(color)
            total += len(data)
            s.append(psnr(color, dec.decode(data)))
        sizes.append(total)
        scores.append(np.mean(s))
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert scores[0] < scores[1] < scores[2], scores


@pytest.mark.parametrize("codec", CODECS)
def test_keyframes_periodic_and_forced_late_joiner(codec, clip):
    enc = video.VideoEncoder(codec, W, H, quality=60, keyframe_interval=4)
    packets = [enc.encode(c, force_keyframe=(i == 6)) for i, (c, _) in enumerate(clip[:11])]
    assert [k for _, k in packets] == [i in (0, 4, 6, 10) for i in range(11)]
    ref_dec = video.VideoDecoder(codec, W, H)
    ref = [ref_dec.decode(p) for p, _ in packets]
    late = video.VideoDecoder(codec, W, H)  # joins at the forced keyframe
    for i in range(6, 11):
        assert np.array_equal(late.decode(packets[i][0]), ref[i])


@pytest.mark.parametrize("codec", CODECS)
def test_grey(codec, clip):
    enc = video.VideoEncoder(codec, W, H, mono=True, quality=70)
    dec = video.VideoDecoder(codec, W, H, mono=True)
    for color, _ in clip[:4]:
        grey = np.ascontiguousarray(color.mean(axis=2).round().astype(np.uint8))
        out = dec.decode(enc.encode(grey)[0])
        assert out.shape == grey.shape and out.dtype == np.uint8
        assert psnr(grey, out) >= GREY_FLOOR_DB
    with pytest.raises(CodecError):  # an RGB image for a grey stream is refused, not guessed at
        enc.encode(clip[0][0])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", [(33, 17), (17, 33), (1, 1), (65, 3)])
@pytest.mark.parametrize("mono", [False, True], ids=["rgb", "grey"])
def test_odd_and_tiny_sizes(codec, size, mono, clip):
    w, h = size
    enc = video.VideoEncoder(codec, w, h, mono=mono, quality=80)
    dec = video.VideoDecoder(codec, w, h, mono=mono)
    for color, _ in clip[:3]:
        img = np.ascontiguousarray(color[:h, :w, 1] if mono else color[:h, :w])
        out = dec.decode(enc.encode(img)[0])
        assert out.shape == img.shape
        if w * h >= 256:
            assert psnr(img, out) >= RGB_FLOOR_DB - 3


def test_unknown_codec_and_encoder_names():
    with pytest.raises(CodecError, match="h264"):
        video.VideoEncoder("vp9", W, H)
    with pytest.raises(CodecError) as err:
        video.VideoEncoder("h264", W, H, encoder="libnope264")
    msg = str(err.value)
    assert "libnope264" in msg and "available" in msg and "libx264" in msg
    with pytest.raises(CodecError, match="libx264"):  # an encoder of another codec
        video.VideoEncoder("h264", W, H, encoder="libx265")
    # through the backend: refused at configure time, the settings stay as they were
    backend = _backend("jpeg")
    before = backend.quality
    with pytest.raises(CodecError) as err:
        backend.configure(color_codec="hevc", video_encoder="libx264")
    assert "libx265" in str(err.value)
    assert backend.quality == before
    with pytest.raises(CodecError):
        create_backend("classical", color_codec="mpeg2")


# ---------------------------------------------------------------------------- classical backend
@pytest.mark.parametrize("codec", CODECS)
def test_backend_stream_in_order(codec, clip):
    encoded, ref = _stream(codec, clip)
    assert [e.keyframe for e in encoded] == [i % 4 == 0 for i in range(10)]
    assert all(e.info["video_encoder"] for e in encoded)
    assert sum(e.bytes_rgb for e in encoded[1:4]) < encoded[0].bytes_rgb * 3  # prediction pays
    for (color, depth), frame in zip(clip, ref):
        assert np.array_equal(frame.depth, depth)
        assert psnr(color, frame.color) >= RGB_FLOOR_DB
    backend = _backend(codec)
    assert backend.temporal and not _backend("jpeg").temporal


@pytest.mark.parametrize("codec", CODECS)
def test_dropped_payload_waits_for_keyframe(codec, clip):
    encoded, ref = _stream(codec, clip)
    dec = _backend(codec)
    for i in (0, 1):
        _same(dec.decode(encoded[i].payload), ref[i], clip[i][1])
    with pytest.raises(MissingReference) as err:  # frame 2 lost: 3 has no reference
        dec.decode(encoded[3].payload)
    assert not err.value.stale
    with pytest.raises(MissingReference):
        dec.decode(encoded[3].payload)  # still nothing until a keyframe
    for i in (4, 5, 6):  # keyframe 4: decoding resumes, exactly as the unbroken stream
        _same(dec.decode(encoded[i].payload), ref[i], clip[i][1])


@pytest.mark.parametrize("codec", CODECS)
def test_duplicates_and_late_copies_are_stale(codec, clip):
    encoded, ref = _stream(codec, clip)
    dec = _backend(codec)
    for i in (0, 1, 2):
        dec.decode(encoded[i].payload)
    for i in (2, 1, 0):  # a duplicate, a late predicted copy, a late keyframe copy
        with pytest.raises(MissingReference) as err:
            dec.decode(encoded[i].payload)
        assert err.value.stale
    for i in (3, 4, 5):  # dropping stale copies costs nothing: no keyframe needed
        _same(dec.decode(encoded[i].payload), ref[i], clip[i][1])


@pytest.mark.parametrize("codec", CODECS)
def test_reordered_payloads_never_yield_a_frame(codec, clip):
    encoded, ref = _stream(codec, clip)
    dec = _backend(codec)
    dec.decode(encoded[0].payload)
    dec.decode(encoded[1].payload)
    for i in (3, 2, 3):  # 3 overtook 2: neither may be shown (3 lacks 2, 2 is now unanchored)
        with pytest.raises(MissingReference):
            dec.decode(encoded[i].payload)
    for i in (4, 5):
        _same(dec.decode(encoded[i].payload), ref[i], clip[i][1])


@pytest.mark.parametrize("codec", CODECS)
def test_late_joiner_and_requested_keyframe(codec, clip):
    enc = _backend(codec, keyframe_interval=0)  # keyframes only first and on request
    frames = [RGBDFrame(c, d, 1000.0) for c, d in clip[:8]]
    encoded = []
    for i, f in enumerate(frames):
        if i == 5:
            enc.request_keyframe()
        encoded.append(enc.encode(f))
    assert [e.keyframe for e in encoded] == [i in (0, 5) for i in range(8)]
    joiner = _backend(codec)
    for i in (2, 3, 4):
        with pytest.raises(MissingReference):
            joiner.decode(encoded[i].payload)
    ref = _backend(codec)
    expect = [ref.decode(e.payload) for e in encoded]
    for i in (5, 6, 7):
        _same(joiner.decode(encoded[i].payload), expect[i], clip[i][1])
    joiner.reset_decoder()
    with pytest.raises(MissingReference):
        joiner.decode(encoded[7].payload)


@pytest.mark.parametrize("codec", CODECS)
def test_live_quality_change(codec, clip):
    enc, dec = _backend(codec, keyframe_interval=0), _backend(codec)
    sizes = []
    for i, (color, depth) in enumerate(clip[:8]):
        if i == 4:
            enc.configure(color_quality=20)  # applied at once, on a keyframe
        e = enc.encode(RGBDFrame(color, depth, 1000.0))
        assert e.keyframe == (i in (0, 4))
        sizes.append(e.bytes_rgb)
        out = dec.decode(e.payload)
        assert np.array_equal(out.depth, depth)
        assert psnr(color, out.color) >= 18.0
    assert sum(sizes[5:8]) < sum(sizes[1:4])


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_restart_is_a_new_stream(codec, clip):
    encoded, ref = _stream(codec, clip, n=6)
    dec = _backend(codec)
    for e in encoded:
        dec.decode(e.payload)
    restarted, _ = _stream(codec, clip, n=3)  # a new encoder: new stream id, sequence from 0
    assert restarted[0].keyframe
    with pytest.raises(MissingReference):  # its predicted frames do not follow the old stream
        dec.decode(restarted[1].payload)
    first = dec.decode(restarted[0].payload)  # its keyframe is not "older" than frame 5
    assert np.array_equal(first.depth, clip[0][1])
    assert np.array_equal(dec.decode(restarted[1].payload).depth, clip[1][1])


@pytest.mark.parametrize("codec", CODECS)
def test_resolution_change_makes_a_keyframe(codec, clip):
    enc, dec = _backend(codec, keyframe_interval=0), _backend(codec)
    sizes = [(W, H)] * 3 + [(64, 48)] * 3 + [(W, H)] * 2
    for i, (w, h) in enumerate(sizes):
        color, depth = clip[i]
        color, depth = np.ascontiguousarray(color[:h, :w]), np.ascontiguousarray(depth[:h, :w])
        e = enc.encode(RGBDFrame(color, depth, 1000.0))
        assert e.keyframe == (i in (0, 3, 6))
        out = dec.decode(e.payload)
        assert out.color.shape == color.shape
        assert np.array_equal(out.depth, depth)
        assert psnr(color, out.color) >= RGB_FLOOR_DB - 2


def _with_colour(payload: bytes, colour: bytes) -> bytes:
    """The payload with another colour section, repacked so that every CRC is valid again."""
    version, header, sections = container.unpack(payload, b"RDCL", (1, 2))
    return container.pack(b"RDCL", version, header, [colour, sections[1]])


@pytest.mark.parametrize("codec", CODECS)
def test_corrupted_colour_section(codec, clip):
    encoded, ref = _stream(codec, clip)
    dec = _backend(codec)
    dec.decode(encoded[0].payload)
    dec.decode(encoded[1].payload)
    _, _, sections = container.unpack(encoded[2].payload, b"RDCL", (2,))
    broken = bytes(b ^ 0xFF for b in sections[0])  # no start code / OBU header survives
    with pytest.raises(CodecError) as err:
        dec.decode(_with_colour(encoded[2].payload, broken))
    assert not isinstance(err.value, MissingReference)
    with pytest.raises(MissingReference):  # the chain is broken: wait for a keyframe
        dec.decode(encoded[3].payload)
    for i in (4, 5):
        _same(dec.decode(encoded[i].payload), ref[i], clip[i][1])
    # a damaged keyframe, and damage inside a valid-looking bitstream: a CodecError or an image
    # of the declared size (decoders conceal slice damage), never a crash or another exception
    rng = np.random.default_rng(7)
    for k in range(12):
        i = (0, 1, 4, 5)[k % 4]
        _, _, sections = container.unpack(encoded[i].payload, b"RDCL", (2,))
        body = bytearray(sections[0])
        for pos in rng.integers(0, len(body), 4):
            body[pos] ^= int(rng.integers(1, 256))
        d = _backend(codec)
        if i in (1, 5):
            d.decode(encoded[i - 1].payload)
        try:
            out = d.decode(_with_colour(encoded[i].payload, bytes(body)))
        except CodecError:
            continue
        assert out.color.shape == clip[i][0].shape and out.color.dtype == np.uint8


def test_version1_payload_still_decodes(clip):
    import imagecodecs

    color, depth = clip[0]
    jpeg = bytes(imagecodecs.jpeg8_encode(color, level=80, optimize=True))
    depth_stream = rvl.encode_zstd(depth.ravel().astype(np.int64), 16, 6)
    header = V1_HEADER.pack(W, H, 0, 0, 1000.0,  # size, flags, uint16 depth, scale
                            1, 80,                # colour: JPEG, quality 80
                            2, 16, 6, 1000.0, 0xFFFF,  # RVL planes + zstd, 16 bits, level 6
                            0, 0.0, 0.0, 0.0)     # no quantiser
    payload = container.pack(b"RDCL", 1, header, [jpeg, depth_stream])
    for codec in ("jpeg", "h264"):  # whatever the decoding backend is set to
        out = _backend(codec).decode(payload)
        assert np.array_equal(out.depth, depth)
        assert np.array_equal(out.color, imagecodecs.jpeg8_decode(jpeg))
    # and a v1 payload in the middle of a video stream neither breaks nor joins it
    encoded, ref = _stream("h264", clip, n=3)
    dec = _backend("h264")
    dec.decode(encoded[0].payload)
    dec.decode(payload)
    _same(dec.decode(encoded[1].payload), ref[1], clip[1][1])


# ---------------------------------------------------------------------------- the benchmark
@pytest.mark.slow
def test_benchmark_quick(tmp_path):
    out = tmp_path / "bench"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_temporal.py"), "--quick", "--depth",
                           "--out-dir", str(out), "--json", str(out / "q.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "q.json").read_text())
    for name in ("temporal_color.csv", "temporal_bd.csv", "temporal_delay.csv", "temporal_depth.csv",
                 "temporal_rd.png"):
        assert (out / name).stat().st_size > 0, name
    assert {d["codec"] for d in result["delay"]} == set(video.VIDEO_CODECS)
    for d in result["delay"]:
        assert d["max_encoder_lag_frames"] == 0 and d["encoder_flush_packets"] == 0
        assert d["max_decoder_lag_frames"] == 0 and d["decoder_flush_frames"] == 0
    best = [r for r in result["bd_rate"] if r["best_intra"] and r["codec"] in video.VIDEO_CODECS]
    assert best and all(r["bd_psnr_percent"] is not None for r in best)
    assert all(r["holes_exact"] and r["bound_ok"] for r in result["depth"])
    assert set(result["depth_verdict"]) and time.monotonic() - t0 < 600
