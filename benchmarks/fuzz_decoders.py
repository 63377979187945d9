"""Hostile-input fuzzing of every decode path: classical and learned payloads, the decoder node's
message handling and the ``rgbd-codec decode|info`` command line.

Real payloads are made with the project's own encoders from real frames of the shared data
(``../shared/data/rgbd``; the learned ones with the tiny trained test model,
``test/data/tiny_trained.pt``), for every colour x depth combination the classical decoder reads
(payload format versions 1 and 2; video keyframes and predicted frames) and every learned format
version. Each case mutates one of them: truncations, raw bit flips, header fields set to
0 / -1 / huge / NaN / inf / negative values, inner-stream bit flips, overwrites and truncations,
inner streams swapped for another format's (WebP where JPEG is declared, an AVIF image sequence,
a JPEG XL container, a PNG, a video packet, ...), and inner size fields patched to agree with a
forged header. Every mutation but the raw ones re-packs the payload with the project's packers,
so the checksums are right and the mutation reaches the decoders.

Cases run in a worker process (one at a time, ``nice``), so a native crash is seen as a signal;
the parent watches the worker's memory and time. A failure is:

- ``signal``: the worker died on a signal (SIGSEGV, SIGABRT, ...)
- ``memory``: the worker's resident memory grew past ``--max-rss-mib`` (default 1536), or
  by more than 4x what a real frame of the declared size costs (measured on the seeds)
- ``hang``: a case took more than ``--hang-s`` seconds (default 30)
- ``exception``: ``decode()`` raised something other than CodecError
- ``cli``: ``rgbd-codec decode|info`` wrote a traceback or exited other than 0/1/2

Usage (deterministic for a given seed):

    nice -n 10 .venv/bin/python benchmarks/fuzz_decoders.py --cases 2000 --seconds 900
    nice -n 10 .venv/bin/python benchmarks/fuzz_decoders.py --families classical --cases 500

Failing inputs are written to ``--out`` (default runs/fuzz_decoders/) as ``<family>-<case>.rgbd``.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import multiprocessing as mp
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SVT_LOG", "1")   # SVT-AV1: errors only
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))

from forge import progressive_jpeg  # noqa: E402  (test/: the forging helpers the hostile tests use)

DATA_DIR = Path(os.environ.get("RGBD_DATA_DIR", REPO / ".." / "shared" / "data" / "rgbd"))
TINY_WEIGHTS = REPO / "test" / "data" / "tiny_trained.pt"
#: classical seeds: a crop of a real frame (small: cases are many) and one whole frame
SEED_SOURCES = (("realsense_d435_taeyoung", 0), ("7scenes_kinect1", 0))
CROP = (96, 128)   # rows, columns


# --------------------------------------------------------------------------- seeds
@dataclasses.dataclass
class Seed:
    family: str          # classical | learned
    name: str            # e.g. jpeg+rvl/v2, h264+png/v2/pred
    prefix: List[bytes]  # payloads decoded first (a video stream's keyframe and frames before)
    payload: bytes       # the payload that is mutated


def _frames():
    from learned_fixtures import load_pair

    out = []
    for source, index in SEED_SOURCES:
        color, depth, scale = load_pair(DATA_DIR, source, index)
        out.append((source, color, depth, scale))
    return out


def classical_seeds() -> List[Seed]:
    import numpy as np

    from rgbd_codec_ros.codec import classical, container
    from rgbd_codec_ros.codec.base import RGBDFrame

    seeds: List[Seed] = []
    frames = _frames()
    source, color, depth, scale = frames[0]
    h, w = CROP
    color, depth = color[:h, :w].copy(), depth[:h, :w].copy()
    grey = np.round(color.mean(axis=2)).astype(np.uint8)
    metres = np.where(depth > 0, depth.astype(np.float32) / np.float32(scale), np.nan).astype(np.float32)
    odd = metres + np.float32(1e-5)   # no exact integer grid: the float32 bits format
    depth_modes = [("jpegxl", {}), ("rvl", {"depth_entropy": "zstd"}), ("rvl", {"depth_entropy": "none"}),
                   ("png", {}), ("rvl_lossy", {"depth_entropy": "jpegxl"}),
                   ("rvl_lossy", {"depth_entropy": "zstd", "depth_rel_error": 0.002}),
                   ("rvl_lossy", {"depth_entropy": "none", "depth_rel_error": 0.0})]
    colours = [c for c in classical.COLOR_CODECS if classical.color_codec_available(c)]
    for cc in colours:
        video = cc in classical.VIDEO_COLOR_CODECS
        for dc, extra in depth_modes:
            for mono in (False, True):
                if mono and dc not in ("rvl",):   # mono colour with one depth mode is enough
                    continue
                b = classical.ClassicalBackend(color_codec=cc, depth_codec=dc, color_quality=60,
                                               keyframe_interval=0, video_threads=1, **extra)
                col = grey if mono else color
                tag = f"{cc}{'(mono)' if mono else ''}+{dc}/{extra.get('depth_entropy', '')}"
                payloads = [b.encode(RGBDFrame(col, depth, scale)).payload
                            for _ in range(3 if video else 1)]
                seeds.append(Seed("classical", tag + "/v2", [], payloads[0]))
                if video:
                    seeds.append(Seed("classical", tag + "/v2/pred", payloads[:2], payloads[2]))
                else:
                    v, header, secs = container.unpack(payloads[0], classical.MAGIC, (2,))
                    v1 = container.pack(classical.MAGIC, 1, header[:classical._HEADER.size], secs)
                    seeds.append(Seed("classical", tag + "/v1", [], v1))
        for dmode, d, s in (("f32-exact", metres, 1.0), ("f32-bits", odd, 1.0)):
            b = classical.ClassicalBackend(color_codec=cc, depth_codec="rvl", color_quality=60, video_threads=1)
            seeds.append(Seed("classical", f"{cc}+{dmode}/v2", [], b.encode(RGBDFrame(color, d, s)).payload))
    # one whole real frame of another source
    _, color, depth, scale = frames[1]
    b = classical.ClassicalBackend()
    seeds.append(Seed("classical", "jpeg+jpegxl/v2/full", [], b.encode(RGBDFrame(color, depth, scale)).payload))
    return seeds


def learned_seeds() -> List[Seed]:
    import torch

    from rgbd_codec_ros.codec.base import RGBDFrame
    from rgbd_codec_ros.codec.learned import bitstream as bs
    from rgbd_codec_ros.codec.learned.backend import LearnedBackend

    torch.set_num_threads(1)
    seeds: List[Seed] = []
    _, color, depth, scale = _frames()[0]
    h, w = CROP
    b = LearnedBackend(weights=str(TINY_WEIGHTS), device="cpu", threads=1)
    for quality, mono in ((1.0, False), (0.5, True)):
        b.configure(quality=quality)
        col = color[:h, :w]
        if mono:
            col = col.mean(axis=2).round().astype("uint8")
        payload = b.encode(RGBDFrame(col.copy(), depth[:h, :w].copy(), scale)).payload
        header, sections = bs.unpack(payload)
        for version in bs.READABLE_VERSIONS:
            if version == 1 and (header.quality != int(header.quality) or sections["far_depth"]):
                continue
            seeds.append(Seed("learned", f"learned/q{quality:g}{'/mono' if mono else ''}/v{version}", [],
                              bs.pack(header, sections, version=version)))
    return seeds


# --------------------------------------------------------------------------- hostile streams
def _avif_sequence(w: int, h: int, frames: int) -> bytes:
    import imagecodecs
    import numpy as np

    img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    return bytes(imagecodecs.avif_encode(np.stack([img] * frames), level=60, speed=8))


def _avif_empty_box(which: bytes) -> bytes:
    """ftyp + meta whose last child is an empty ``which`` box (iinf) or an iinf with an empty infe."""
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"avif", 0, b"avif")
    inner = struct.pack(">I4s", 8, b"iinf") if which == b"iinf" else (
        struct.pack(">I4s", 8 + 6 + 8, b"iinf") + b"\0\0\0\0\0\1" + struct.pack(">I4s", 8, b"infe"))
    return ftyp + struct.pack(">I4s", 12 + len(inner), b"meta") + b"\0\0\0\0" + inner


class StreamPool:
    """Inner streams of every kind, to swap into a payload's sections."""

    def __init__(self, classical_seed_list: List[Seed]):
        import imagecodecs
        import numpy as np

        from rgbd_codec_ros.codec import classical, container, rvl

        self.streams: Dict[str, bytes] = {}
        for s in classical_seed_list:
            _, header, secs = container.unpack(s.payload, classical.MAGIC, (1, 2))
            codec = classical._COLOR_NAMES[header[18]] if len(header) > 18 else "?"
            self.streams.setdefault(f"colour:{codec}", secs[0])
            self.streams.setdefault(f"depth:fmt{header[20]}", secs[1])
        h, w = CROP
        rng = np.random.default_rng(1)
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        d16 = (rng.random((h, w)) * 4000).astype(np.uint16)
        ic = imagecodecs
        self.streams.update({
            "jxl-container": bytes(ic.jpegxl_encode(img, level=80, effort=1, usecontainer=True)),
            "jxl-rgb16": classical.jxl_bare_codestream(bytes(ic.jpegxl_encode(
                np.repeat(d16[:, :, None], 3, axis=2), lossless=True, effort=1))),
            "png-rgb8": bytes(ic.png_encode(img)),
            "png-grey8": bytes(ic.png_encode(np.ascontiguousarray(img[:, :, 0]))),
            "png-interlaced?": bytes(ic.png_encode(d16)),
            "webp-lossless": bytes(ic.webp_encode(img, lossless=True)),
            "avif-sequence": _avif_sequence(w, h, 8),
            "avif-empty-iinf": _avif_empty_box(b"iinf"),
            "avif-empty-infe": _avif_empty_box(b"infe"),
            "jpeg-progressive-200": progressive_jpeg(w, h, 200),
            "rvl-bare": rvl.encode(d16),
            "zstd-empty": bytes(ic.zstd_encode(b"")),
            "empty": b"",
            "one": b"\x00",
            "random-64": bytes(rng.integers(0, 256, 64, dtype=np.uint8)),
            "ff-1k": b"\xff" * 1024,
        })
        self.names = sorted(self.streams)

    def pick(self, rng: random.Random) -> Tuple[str, bytes]:
        name = rng.choice(self.names)
        return name, self.streams[name]


# --------------------------------------------------------------------------- mutations
_INTERESTING_U = (0, 1, 2, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 0x7FFF, 0xFFFF, 0x10000,
                  0x7FFFFFFF, 0xFFFFFFFF)
_INTERESTING_F = (0.0, -0.0, -1.0, 1.0, 1e-300, 5e-324, 1e300, math.inf, -math.inf, math.nan, 1000.0,
                  10000.0, 0.5, 4e9)


def _fit(value, code: str):
    """An interesting value made to fit a struct code (integers wrap, floats stay floats)."""
    if code in "fd":
        return float(value)
    bits = {"B": 8, "b": 8, "H": 16, "h": 16, "I": 32, "i": 32, "Q": 64}[code]
    value = int(value) & ((1 << bits) - 1) if not isinstance(value, float) else int(value) & ((1 << bits) - 1)
    if code.islower() and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _interesting(rng: random.Random, code: str, old):
    if code in "fd":
        return rng.choice(_INTERESTING_F + (old * 2, -old, old + 1e-3))
    return _fit(rng.choice(_INTERESTING_U + (old + 1, old - 1, old * 2, old * 64)), code)


def _flip(rng: random.Random, data: bytes, n: int) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(n):
        i = rng.randrange(len(b) * 8)
        b[i >> 3] ^= 1 << (i & 7)
    return bytes(b)


def _overwrite(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    start = rng.randrange(len(b))
    n = min(len(b) - start, rng.choice((1, 2, 4, 8, 16, 64)))
    fill = rng.choice((b"\x00", b"\xff", None))
    b[start:start + n] = fill * n if fill else bytes(rng.randrange(256) for _ in range(n))
    return bytes(b)


def _patch_inner_size(data: bytes, w: int, h: int) -> Optional[bytes]:
    """The inner stream with the size it states set to w x h (JPEG SOF, WebP, JPEG XL
    SizeHeader, AVIF ispe, PNG IHDR), or None where this stream has no such field we can set."""
    import zlib

    from forge import jxl_size_header

    b = bytearray(data)
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 9 <= len(b) and b[pos] == 0xFF:
            marker, length = b[pos + 1], int.from_bytes(b[pos + 2:pos + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                b[pos + 5:pos + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
                return bytes(b)
            pos += 2 + length
        return None
    if data[:4] == b"RIFF" and len(data) >= 30:
        if data[12:16] == b"VP8 ":
            b[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
        elif data[12:16] == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            bits = (bits & ~0xFFFFFFF) | ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
            b[21:25] = bits.to_bytes(4, "little")
        elif data[12:16] == b"VP8X":
            b[24:30] = ((w - 1) & 0xFFFFFF).to_bytes(3, "little") + ((h - 1) & 0xFFFFFF).to_bytes(3, "little")
        return bytes(b)
    if data[:2] == b"\xff\x0a":
        # replace the SizeHeader: the rest of the codestream is misaligned garbage after it
        return jxl_size_header(w, h) + data[2 + 4:]
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33:
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
        return bytes(b)
    at = data.find(b"ispe")
    if data[4:8] == b"ftyp" and at > 0:
        while at > 0:
            b[at + 8:at + 16] = struct.pack(">II", w, h)
            at = data.find(b"ispe", at + 4)
        return bytes(b)
    return None


@dataclasses.dataclass
class Case:
    family: str
    seed: str
    mutation: str
    prefix: List[bytes]
    payload: bytes
    declared_pixels: int


def crafted_cases() -> List[Case]:
    """Hand-made hostile payloads the random mutations rarely reach, at sizes the default limit
    allows: a progressive JPEG of many empty scans, an AVIF image sequence, AVIF boxes cut short."""
    import imagecodecs
    import numpy as np

    from rgbd_codec_ros.codec import classical, container, rvl

    def payload(w, h, color_id, colour: bytes, mono: bool) -> bytes:
        depth = rvl.encode_zstd(np.zeros(w * h, np.int64), 16, 1)
        header = classical._HEADER.pack(w, h, 1 if mono else 0, 0, 1000.0, color_id, 90,
                                        classical.FMT_RVL_ZSTD, 16, 1, 1000.0, 0xFFFF, 0, 0.0, 0.0, 0.0)
        header += classical._STREAM.pack(1, 0, 1)
        return container.pack(classical.MAGIC, 2, header, [colour, depth])

    jpeg, avif = classical.COLOR_CODECS["jpeg"], classical.COLOR_CODECS["avif"]
    flat = np.full((480, 640, 3), 90, np.uint8)
    sequence = bytes(imagecodecs.avif_encode(np.stack([flat] * 300), level=30, speed=10))
    cases = [
        Case("classical", "crafted", "jpeg 3840x2160, 12000 empty progressive scans",
             [], payload(3840, 2160, jpeg, progressive_jpeg(3840, 2160, 12000), True), 3840 * 2160),
        Case("classical", "crafted", f"avif image sequence 640x480 x300 ({len(sequence)} bytes)",
             [], payload(640, 480, avif, sequence, False), 640 * 480),
        Case("classical", "crafted", "avif meta ending in an empty iinf box",
             [], payload(64, 64, avif, _avif_empty_box(b"iinf"), False), 64 * 64),
        Case("classical", "crafted", "avif iinf ending in an empty infe box",
             [], payload(64, 64, avif, _avif_empty_box(b"infe"), False), 64 * 64),
    ]
    return cases


class ClassicalMutator:
    HEADER_CODES = "IIBBdBBBBBdIBddd"
    STREAM_CODES = "IIB"
    FIELDS = ("width", "height", "flags", "depth_dtype", "depth_scale", "colour_codec", "colour_quality",
              "depth_format", "depth_bits", "level", "stored_scale", "max_value", "quantiser", "q_abs",
              "q_rel", "q_margin", "stream_id", "sequence", "frame_flags")

    def __init__(self, pool: StreamPool):
        from rgbd_codec_ros.codec import classical, container

        self.classical, self.container, self.pool = classical, container, pool

    def _split(self, payload: bytes):
        c = self.classical
        version, header, secs = self.container.unpack(payload, c.MAGIC, c.READABLE_VERSIONS)
        fields = list(c._HEADER.unpack_from(header))
        if version >= 2:
            fields += list(c._STREAM.unpack_from(header, c._HEADER.size))
        return version, fields, list(secs)

    def _join(self, version: int, fields, secs) -> bytes:
        c = self.classical
        header = c._HEADER.pack(*fields[:16]) + (c._STREAM.pack(*fields[16:19]) if version >= 2 else b"")
        return self.container.pack(c.MAGIC, version, header, secs)

    def mutate(self, rng: random.Random, seed: Seed) -> Tuple[str, bytes, int]:
        version, fields, secs = self._split(seed.payload)
        declared = fields[0] * fields[1]
        kind = rng.choice(("truncate", "bitflip-raw", "header-field", "header-field", "header-fields",
                           "section-flip", "section-flip", "section-overwrite", "section-truncate",
                           "section-swap", "section-swap", "inner-size", "version", "container"))
        p = seed.payload
        if kind == "truncate":
            n = rng.randrange(len(p))
            return f"truncate@{n}", p[:n], declared
        if kind == "bitflip-raw":
            n = rng.choice((1, 2, 8))
            return f"bitflip-raw x{n}", _flip(rng, p, n), declared
        if kind in ("header-field", "header-fields"):
            codes = self.HEADER_CODES + (self.STREAM_CODES if version >= 2 else "")
            names = []
            for _ in range(1 if kind == "header-field" else rng.randint(2, 4)):
                i = rng.randrange(len(codes))
                fields[i] = _interesting(rng, codes[i], fields[i])
                names.append(f"{self.FIELDS[i]}={fields[i]!r}")
            try:
                out = self._join(version, fields, secs)
            except struct.error:
                return "noop", p, declared
            return "header " + ",".join(names), out, fields[0] * fields[1]
        if kind.startswith("section-") and kind != "section-swap":
            i = rng.randrange(2)
            if kind == "section-flip":
                n = rng.choice((1, 1, 2, 4, 16))
                secs[i] = _flip(rng, secs[i], n)
                what = f"flip x{n}"
            elif kind == "section-overwrite":
                secs[i] = _overwrite(rng, secs[i])
                what = "overwrite"
            else:
                n = rng.randrange(len(secs[i]) + 1)
                secs[i] = secs[i][:n]
                what = f"truncate@{n}"
            return f"section {('colour', 'depth')[i]} {what}", self._join(version, fields, secs), declared
        if kind == "section-swap":
            i = rng.randrange(2)
            name, stream = self.pool.pick(rng)
            secs[i] = stream
            if rng.random() < 0.5 and i == 0:   # and declare some colour codec
                fields[5] = rng.choice(sorted(self.classical._COLOR_NAMES))
            if rng.random() < 0.5 and i == 1:
                fields[7] = rng.choice((1, 2, 3, 4, 5))
            return (f"section {('colour', 'depth')[i]} := {name} (codec {fields[5]}, depth fmt {fields[7]})",
                    self._join(version, fields, secs), declared)
        if kind == "inner-size":
            w = rng.choice((1, 8, 64, 1000, 1920, 3840, 4096, 16383, 16384, 65535, fields[0] + 8))
            h = rng.choice((1, 8, 64, 1000, 1080, 2160, 4096, 16383, 16384, 65535, fields[1] + 8))
            i = rng.randrange(2)
            patched = _patch_inner_size(secs[i], w, h)
            if patched is None:
                return "noop", p, declared
            secs[i] = patched
            if rng.random() < 0.8:          # and the header agrees with it
                fields[0], fields[1] = w, h
            return (f"inner {('colour', 'depth')[i]} size {w}x{h} (header {fields[0]}x{fields[1]})",
                    self._join(version, fields, secs), fields[0] * fields[1])
        if kind == "version":
            v = rng.choice((0, 1, 2, 3, 255))
            if v == 1:
                fields = fields[:16]
            elif version == 1:
                fields = fields + [0, 0, 1]
            out = self._join(1 if v == 1 else 2, fields, secs)
            return f"version {v}", out[:4] + bytes([v]) + out[5:], declared
        # container: forged framing with valid checksums
        return self._container(rng, p, declared)

    def _container(self, rng, p: bytes, declared: int):
        import zlib

        magic, version, nsec, hlen = struct.unpack_from("<4sBBH", p)
        head_end = 8 + nsec * 8 + hlen
        head = bytearray(p[:head_end])
        what = rng.choice(("nsec", "hlen", "length"))
        if what == "nsec":
            head[5] = rng.choice((0, 1, 3, 255))
        elif what == "hlen":
            struct.pack_into("<H", head, 6, rng.choice((0, 1, hlen - 1, hlen + 1, 0xFFFF)))
        else:
            i = rng.randrange(nsec)
            struct.pack_into("<I", head, 8 + 8 * i, rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF)))
        head = bytes(head)
        return f"container {what}", head + struct.pack("<I", zlib.crc32(head)) + p[head_end + 4:], declared


class LearnedMutator:
    FIELDS = ("quality", "width", "height", "padded_width", "padded_height", "color_mode", "depth_type",
              "depth_scale_per_m", "depth_range_m", "z_height", "z_width")

    def __init__(self, pool: StreamPool):
        from rgbd_codec_ros.codec.learned import bitstream as bs

        self.bs, self.pool = bs, pool

    def mutate(self, rng: random.Random, seed: Seed) -> Tuple[str, bytes, int]:
        bs = self.bs
        p = seed.payload
        header, sections = bs.unpack(p)
        version = bs.format_version(p)
        declared = header.width * header.height
        names = bs._SECTIONS_OF[version]
        kind = rng.choice(("truncate", "bitflip-raw", "header-field", "header-fields", "model-id",
                           "section-flip", "section-flip", "section-overwrite", "section-truncate",
                           "section-swap", "section-swap", "legacy-lengths"))
        if kind == "truncate":
            n = rng.randrange(len(p))
            return f"truncate@{n}", p[:n], declared
        if kind == "bitflip-raw":
            return "bitflip-raw", _flip(rng, p, rng.choice((1, 2, 8))), declared
        if kind in ("header-field", "header-fields", "model-id"):
            changes = {}
            if kind == "model-id":
                changes["model_id"] = rng.choice(("", "x" * 255, header.model_id + "\n",
                                                  header.model_id.split("@")[0] + "@0000"))
            for _ in range(0 if kind == "model-id" else 1 if kind == "header-field" else rng.randint(2, 4)):
                name = rng.choice(self.FIELDS)
                old = getattr(header, name)
                code = "f" if isinstance(old, float) else "H"
                if name in ("color_mode", "depth_type"):
                    code = "B"
                if name == "quality":
                    code = "f"
                value = _interesting(rng, code, old)
                if name == "quality":
                    value = rng.choice((-1.0, -129.0, 127.99, 1e9, math.nan, 0.25, 3.0, 1.5)) \
                        if version >= 2 else float(rng.choice((0, 1, 2, 255)))
                changes[name] = value
                if name in ("width", "height") and rng.random() < 0.7:   # keep the sizes consistent
                    from rgbd_codec_ros.codec.learned.backend import padded_size
                    w = changes.get("width", header.width)
                    h = changes.get("height", header.height)
                    ph, pw = padded_size(max(h, 1), max(w, 1))
                    changes.update(padded_width=pw & 0xFFFF, padded_height=ph & 0xFFFF,
                                   z_width=(pw // 64) & 0xFFFF, z_height=(ph // 64) & 0xFFFF)
            new = dataclasses.replace(header, **changes)
            try:
                out = bs.pack(new, sections, version=version)
            except (bs.CodecError, struct.error, OverflowError, UnicodeEncodeError) as exc:
                return f"noop ({exc})", p, declared
            return "header " + ",".join(f"{k}={v!r}" for k, v in changes.items()), out, new.width * new.height
        if kind == "legacy-lengths" and version < 3:
            # a legacy frame whose section lengths disagree with its size; the crc re-computed
            body_start = len(bs.LEGACY_MAGIC) + 3
            hlen = struct.unpack_from("<H", p, len(bs.LEGACY_MAGIC) + 1)[0]
            b = bytearray(p[:-4])
            n = len(names)
            at = body_start + hlen - 4 * n + 4 * rng.randrange(n)
            struct.pack_into("<I", b, at, rng.choice((0, 1, 0xFFFFFFFF, 0x80000000)))
            import zlib
            return "legacy section length", bytes(b) + struct.pack("<I", zlib.crc32(bytes(b))), declared
        name = rng.choice(names)
        body = sections[name]
        if kind == "section-flip":
            sections[name] = _flip(rng, body, rng.choice((1, 2, 8, 64)))
        elif kind == "section-overwrite":
            sections[name] = _overwrite(rng, body)
        elif kind == "section-truncate":
            sections[name] = body[:rng.randrange(len(body) + 1)]
        else:
            other = rng.choice([n for n in names if n != name])
            sections[name] = rng.choice((sections[other], self.pool.pick(rng)[1], b"\x00" * 8, b"\xff" * 64,
                                         body * 2))
            kind = f"section-swap<-{other}"
        try:
            out = bs.pack(header, sections, version=version)
        except bs.CodecError as exc:
            return f"noop ({exc})", p, declared
        return f"{kind} {name}", out, declared


# --------------------------------------------------------------------------- the worker
def _rss_kib(pid: int = 0) -> Tuple[int, int]:
    """(VmRSS, VmHWM) in KiB of a process (0: this one)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _worker(conn, family: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rgbd_codec_ros.codec.base import CodecError

    if family == "learned":
        import torch

        from rgbd_codec_ros.codec.learned.backend import LearnedBackend

        torch.set_num_threads(1)
        learned = LearnedBackend(weights=str(TINY_WEIGHTS), device="cpu", threads=1)

        def make():
            return learned
    else:
        from rgbd_codec_ros.codec.classical import ClassicalBackend

        def make():
            return ClassicalBackend(video_threads=1)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        prefix, payload = msg
        backend = make()
        try:
            with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current RSS
                f.write("5")
        except OSError:
            pass
        start_rss = _rss_kib()[0]
        t0 = time.perf_counter()
        outcome = "ok"
        try:
            for good in prefix:
                backend.decode(good)
            backend.decode(payload)
        except CodecError as exc:
            outcome = "codec-error: " + str(exc).splitlines()[0][:160] if str(exc) else "codec-error"
        except BaseException as exc:   # what the harness looks for
            outcome = f"EXCEPTION {type(exc).__name__}: {str(exc)[:200]}"
        seconds = time.perf_counter() - t0
        conn.send((outcome, seconds, _rss_kib()[1] - start_rss))


class Worker:
    def __init__(self, family: str):
        self.family = family
        self.proc = None
        self.conn = None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.family), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(300):
            raise RuntimeError("fuzz worker did not start")
        self.conn.recv()

    def run(self, case: Case, hang_s: float, max_rss_kib: int) -> Tuple[str, str, float, int]:
        """(kind, detail, seconds, rss growth KiB); kind is ok / codec-error / a failure kind."""
        if self.proc is None or not self.proc.is_alive():
            self.start()
        base = _rss_kib(self.proc.pid)[0]
        self.conn.send((case.prefix, case.payload))
        t0 = time.monotonic()
        peak = 0
        while True:
            if self.conn.poll(0.05):
                try:
                    outcome, seconds, growth = self.conn.recv()
                except EOFError:
                    break
                if outcome.startswith("EXCEPTION"):
                    return "exception", outcome, seconds, growth
                return ("ok" if outcome == "ok" else "codec-error"), outcome, seconds, growth
            if not self.proc.is_alive():
                break
            peak = max(peak, _rss_kib(self.proc.pid)[0])
            if peak > max_rss_kib:
                self.kill()
                return "memory", f"RSS over {max_rss_kib // 1024} MiB (killed)", time.monotonic() - t0, peak - base
            if time.monotonic() - t0 > hang_s:
                self.kill()
                return "hang", f"no answer in {hang_s:g} s (killed)", time.monotonic() - t0, peak - base
        self.proc.join(5)
        code = self.proc.exitcode
        self.proc = None
        if code is not None and code < 0:
            import signal
            return "signal", f"worker died on {signal.Signals(-code).name}", time.monotonic() - t0, peak - base
        return "signal", f"worker exited with status {code}", time.monotonic() - t0, peak - base

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(10)
        self.kill()


# --------------------------------------------------------------------------- CLI check
def cli_check(payload: bytes, family: str, path: Path) -> Optional[str]:
    """None if ``rgbd-codec decode`` and ``info`` end with 0/1/2 and at most one line; else why."""
    path.write_bytes(payload)
    out = path.with_suffix("")
    problems = []
    for cmd in (["info", str(path)],
                ["decode", str(path), "--color-out", f"{out}-c.png", "--depth-out", f"{out}-d.png"]
                + (["--model", str(TINY_WEIGHTS), "--threads", "1"] if family == "learned" else [])):
        try:
            r = subprocess.run([sys.executable, "-m", "rgbd_codec_ros.cli"] + cmd, capture_output=True,
                               text=True, timeout=120, cwd=REPO)
        except subprocess.TimeoutExpired:
            problems.append(f"{cmd[0]}: no exit in 120 s")
            continue
        # Python warnings of the libraries (torch's FutureWarning) are not the CLI's own lines
        err = [line for line in r.stderr.splitlines() if line.strip() and "Warning:" not in line
               and line.strip() != "warnings.warn("]
        if r.returncode not in (0, 1, 2) or "Traceback" in r.stderr or (r.returncode and len(err) > 1):
            problems.append(f"{cmd[0]}: exit {r.returncode}: {' | '.join(err[-3:])[:300]}")
    for suffix in ("-c.png", "-d.png"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    return "; ".join(problems) or None


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000, help="cases per family (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=600.0, help="time budget in all (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default="classical,learned")
    ap.add_argument("--hang-s", type=float, default=30.0)
    ap.add_argument("--max-rss-mib", type=int, default=1536)
    ap.add_argument("--cli-samples", type=int, default=6,
                    help="cases per family also run through rgbd-codec decode|info (and every failure)")
    ap.add_argument("--out", default=str(REPO / "runs" / "fuzz_decoders"))
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    families = [f for f in args.families.split(",") if f]

    print("making seed payloads with the project's encoders ...", flush=True)
    cseeds = classical_seeds()
    pool = StreamPool(cseeds)
    seeds = {"classical": cseeds}
    mutators: Dict[str, object] = {"classical": ClassicalMutator(pool)}
    if "learned" in families:
        seeds["learned"] = learned_seeds()
        mutators["learned"] = LearnedMutator(pool)
    for fam in families:
        print(f"  {fam}: {len(seeds[fam])} seeds ({', '.join(s.name for s in seeds[fam][:6])}, ...)")
    print(f"  stream pool: {len(pool.names)} inner streams; seeds made in {time.monotonic() - t_start:.0f} s")

    tried: Dict[str, collections.Counter] = {}
    failures: List[Tuple[str, Case, str, str]] = []
    per_pixel_kib: Dict[str, float] = {}
    budget_end = t_start + args.seconds
    for fam in families:
        worker = Worker(fam)
        worker.start()
        # what a real frame costs: the seeds decoded whole
        costs = []
        for s in seeds[fam]:
            kind, detail, secs, growth = worker.run(Case(fam, s.name, "none", s.prefix, s.payload, 1),
                                                    args.hang_s, args.max_rss_mib * 1024)
            if kind != "ok":
                print(f"  seed {s.name} does not decode: {kind} {detail}")
            from rgbd_codec_ros.codec import classical
            if fam == "classical":
                w, h = struct.unpack_from("<II", classical.container.unpack(s.payload, b"RDCL", (1, 2))[1])
            else:
                from rgbd_codec_ros.codec.learned import bitstream as bs
                hd = bs.unpack(s.payload)[0]
                w, h = hd.width, hd.height
            costs.append(max(growth, 0) / (w * h))
        per_pixel_kib[fam] = max(costs + [0.001])
        rng = random.Random(f"{args.seed}-{fam}")
        counts = tried.setdefault(fam, collections.Counter())
        samples = []
        if fam == "classical":
            for k, case in enumerate(crafted_cases()):
                kind, detail, secs, growth = worker.run(case, args.hang_s, args.max_rss_mib * 1024)
                counts["crafted"] += 1
                counts["outcome:" + kind] += 1
                allowed = 4 * per_pixel_kib[fam] * case.declared_pixels + 64 * 1024
                if kind in ("ok", "codec-error") and growth > allowed:
                    kind, detail = "memory", f"RSS grew {growth // 1024} MiB (allowed {allowed // 1024:.0f})"
                print(f"  crafted [{case.mutation}]: {kind} {detail[:150]} ({secs:.1f} s, "
                      f"+{growth // 1024} MiB)", flush=True)
                if kind not in ("ok", "codec-error"):
                    failures.append((kind, case, detail, f"{secs:.1f} s"))
                    (out_dir / f"crafted-{k}.rgbd").write_bytes(case.payload)
        for i in range(args.cases):
            if time.monotonic() > budget_end:
                print(f"  {fam}: time budget spent after {i} cases")
                break
            seed = rng.choice(seeds[fam])
            try:
                mutation, payload, declared = mutators[fam].mutate(rng, seed)
            except Exception as exc:   # a mutation that cannot be built (e.g. struct range)
                mutation, payload, declared = f"noop ({type(exc).__name__})", seed.payload, 1
            case = Case(fam, seed.name, mutation, seed.prefix, payload, max(1, declared))
            kind, detail, secs, growth = worker.run(case, args.hang_s, args.max_rss_mib * 1024)
            counts[seed.name.split("/")[0]] += 1
            counts["outcome:" + kind] += 1
            allowed = 4 * per_pixel_kib[fam] * min(case.declared_pixels, 1 << 26) + 64 * 1024
            if kind in ("ok", "codec-error") and growth > allowed:
                kind, detail = "memory", f"RSS grew {growth // 1024} MiB (a real frame of the declared size: " \
                                         f"{per_pixel_kib[fam] * case.declared_pixels / 1024:.0f} MiB)"
            if kind not in ("ok", "codec-error"):
                failures.append((kind, case, detail, f"{secs:.1f} s"))
                name = out_dir / f"{fam}-{i}.rgbd"
                name.write_bytes(payload)
                print(f"  FAIL {kind}: case {i} {seed.name} [{mutation}] -> {detail} ({secs:.1f} s) -> {name}",
                      flush=True)
            elif len(samples) < args.cli_samples and rng.random() < 0.05 and not seed.prefix:
                samples.append((i, payload))
            if (i + 1) % 200 == 0:
                print(f"  {fam}: {i + 1} cases, {time.monotonic() - t_start:.0f} s", flush=True)
        worker.stop()
        for i, payload in samples + [(f"fail{k}", c.payload) for k, (_, c, _, _) in enumerate(failures)
                                     if c.family == fam and not c.prefix]:
            problem = cli_check(payload, fam, out_dir / f"cli-{fam}-{i}.rgbd")
            counts["cli-runs"] += 1
            if problem:
                failures.append(("cli", Case(fam, "", f"cli {i}", [], payload, 1), problem, ""))
                print(f"  FAIL cli: {fam} case {i}: {problem}", flush=True)
            else:
                (out_dir / f"cli-{fam}-{i}.rgbd").unlink(missing_ok=True)

    print("\n== cases tried ==")
    for fam, counts in tried.items():
        total = sum(v for k, v in counts.items() if k.startswith("outcome:"))
        print(f"{fam}: {total} cases; " + ", ".join(f"{k[8:]} {v}" for k, v in sorted(counts.items())
                                                      if k.startswith("outcome:")))
        print("  by colour codec / seed family: " + ", ".join(
            f"{k} {v}" for k, v in sorted(counts.items()) if not k.startswith(("outcome:", "cli"))))
        print(f"  CLI runs: {counts['cli-runs']}")
    print("\n== failures by kind ==")
    by_kind = collections.Counter(k for k, *_ in failures)
    for kind in ("signal", "memory", "hang", "exception", "cli"):
        print(f"{kind}: {by_kind.get(kind, 0)}")
    distinct = collections.OrderedDict()
    for kind, case, detail, secs in failures:
        distinct.setdefault((kind, case.mutation.split(" ")[0] + " " + detail[:60]), (case, detail, secs))
    for (kind, _), (case, detail, secs) in distinct.items():
        print(f"  {kind}: {case.family} {case.seed} [{case.mutation}] -> {detail} {secs}")
    print(f"\n{time.monotonic() - t_start:.0f} s in all")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
