"""The learned codec's container: one frame = header + six sections + CRC32.

Layout (little endian):
    b"RGBDL" | u8 format version | u16 header length | header | sections | u32 crc32
header:
    u8 len + model id (ascii, "<name>@<weights hash>") | i16 quality x 256 (version 1: u8 index) |
    u16 width | u16 height | u16 padded width | u16 padded height |
    u8 colour mode (0 RGB, 1 mono) | u8 depth type (0 uint16, 1 float32 m) |
    f32 depth units per metre | f32 depth range in metres |
    u16 z height | u16 z width | 8 bytes hash of the decoded latents |
    7 x u32 section lengths: z rgb, z depth, y rgb, y depth, hole mask, far mask, far depth
    (version 1 had six: no far depth section; its far pixels decode as the range limit)
The CRC catches transport damage; the latent hash catches a decoder whose
probability tables diverged from the encoder's (it then refuses to output).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Dict

from ..base import CodecError

MAGIC = b"RGBDL"
VERSION = 2
SECTIONS = ("z_rgb", "z_depth", "y_rgb", "y_depth", "hole_mask", "clipped_mask", "far_depth")
#: versions this decoder reads -> the sections they carry
_SECTIONS_OF = {1: SECTIONS[:6], 2: SECTIONS}
_FIXED_OF = {1: struct.Struct("<BHHHHBBffHH8s6I"), 2: struct.Struct("<hHHHHBBffHH8s7I")}
#: quality resolution of version 2 headers (fractional qualities)
QUALITY_STEPS = 256
COLOR_RGB, COLOR_MONO = 0, 1
DEPTH_U16, DEPTH_F32 = 0, 1


@dataclass
class LearnedFrameHeader:
    model_id: str
    quality: float
    width: int
    height: int
    padded_width: int
    padded_height: int
    color_mode: int
    depth_type: int
    depth_scale_per_m: float
    depth_range_m: float
    z_height: int
    z_width: int
    latent_hash: bytes


def pack(header: LearnedFrameHeader, sections: Dict[str, bytes], version: int = VERSION) -> bytes:
    """One frame. ``version`` < VERSION writes an older layout (tests of old recordings); the
    sections that layout lacks must be empty."""
    if version not in _SECTIONS_OF or any(sections.get(n) for n in SECTIONS if n not in _SECTIONS_OF[version]):
        raise CodecError(f"cannot write these sections as format version {version}")
    names = _SECTIONS_OF[version]
    q = round(header.quality * QUALITY_STEPS) if version >= 2 else int(header.quality)
    if version < 2 and q != header.quality:
        raise CodecError(f"format version {version} has no fractional qualities")
    mid = header.model_id.encode("ascii")
    if len(mid) > 255:
        raise CodecError("model id longer than 255 bytes")
    body = bytes([len(mid)]) + mid + _FIXED_OF[version].pack(
        q, header.width, header.height, header.padded_width, header.padded_height,
        header.color_mode, header.depth_type, header.depth_scale_per_m, header.depth_range_m,
        header.z_height, header.z_width, header.latent_hash, *(len(sections[s]) for s in names))
    out = MAGIC + bytes([version]) + struct.pack("<H", len(body)) + body + b"".join(sections[s] for s in names)
    return out + struct.pack("<I", zlib.crc32(out))


def is_learned_payload(payload: bytes) -> bool:
    return payload[: len(MAGIC)] == MAGIC


def unpack(payload: bytes):
    """-> (LearnedFrameHeader, sections). Raises CodecError saying what is wrong."""
    payload = bytes(payload)
    if not is_learned_payload(payload):
        raise CodecError("not a learned-codec payload (bad magic)")
    if len(payload) < len(MAGIC) + 3 + 4:
        raise CodecError(f"learned payload truncated ({len(payload)} bytes)")
    version = payload[len(MAGIC)]
    if version not in _SECTIONS_OF:
        raise CodecError(f"learned payload format version {version} is not supported "
                         f"(this decoder reads versions {', '.join(map(str, _SECTIONS_OF))}); "
                         "update rgbd_codec_ros")
    fixed, names = _FIXED_OF[version], _SECTIONS_OF[version]
    (crc,) = struct.unpack("<I", payload[-4:])
    if zlib.crc32(payload[:-4]) != crc:
        raise CodecError("learned payload is corrupted or truncated (CRC mismatch)")
    pos = len(MAGIC) + 1
    (hlen,) = struct.unpack_from("<H", payload, pos)
    pos += 2
    if pos + hlen > len(payload) - 4 or hlen < 1:
        raise CodecError("learned payload header is truncated")
    n = payload[pos]
    if 1 + n + fixed.size != hlen:
        raise CodecError("learned payload header has the wrong length")
    try:
        model_id = payload[pos + 1: pos + 1 + n].decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("learned payload has a malformed model id") from None
    f = fixed.unpack_from(payload, pos + 1 + n)
    quality = f[0] / QUALITY_STEPS if version >= 2 else float(f[0])
    header = LearnedFrameHeader(model_id, quality, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11])
    lengths = f[12:]
    pos += hlen
    if pos + sum(lengths) != len(payload) - 4:
        raise CodecError("learned payload section lengths do not match its size")
    sections = dict.fromkeys(SECTIONS, b"")   # sections an older version lacks are empty
    for name, ln in zip(names, lengths):
        sections[name] = payload[pos: pos + ln]
        pos += ln
    return header, sections
