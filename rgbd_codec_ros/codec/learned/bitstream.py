"""The learned codec's container: one frame = header + six sections + CRC32.

Layout (little endian):
    b"RGBDL" | u8 format version | u16 header length | header | sections | u32 crc32
header:
    u8 len + model id (ascii, "<name>@<weights hash>") | u8 quality index |
    u16 width | u16 height | u16 padded width | u16 padded height |
    u8 colour mode (0 RGB, 1 mono) | u8 depth type (0 uint16, 1 float32 m) |
    f32 depth units per metre | f32 depth range in metres |
    u16 z height | u16 z width | 8 bytes hash of the decoded latents |
    6 x u32 section lengths: z rgb, z depth, y rgb, y depth, hole mask, clipped mask
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
VERSION = 1
SECTIONS = ("z_rgb", "z_depth", "y_rgb", "y_depth", "hole_mask", "clipped_mask")
_FIXED = struct.Struct("<BHHHHBBffHH8s6I")
COLOR_RGB, COLOR_MONO = 0, 1
DEPTH_U16, DEPTH_F32 = 0, 1


@dataclass
class LearnedFrameHeader:
    model_id: str
    quality: int
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


def pack(header: LearnedFrameHeader, sections: Dict[str, bytes]) -> bytes:
    mid = header.model_id.encode("ascii")
    if len(mid) > 255:
        raise CodecError("model id longer than 255 bytes")
    body = bytes([len(mid)]) + mid + _FIXED.pack(
        header.quality, header.width, header.height, header.padded_width, header.padded_height,
        header.color_mode, header.depth_type, header.depth_scale_per_m, header.depth_range_m,
        header.z_height, header.z_width, header.latent_hash, *(len(sections[s]) for s in SECTIONS))
    out = MAGIC + bytes([VERSION]) + struct.pack("<H", len(body)) + body + b"".join(sections[s] for s in SECTIONS)
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
    if version != VERSION:
        raise CodecError(f"learned payload format version {version} is not supported "
                         f"(this decoder reads version {VERSION}); update rgbd_codec_ros")
    (crc,) = struct.unpack("<I", payload[-4:])
    if zlib.crc32(payload[:-4]) != crc:
        raise CodecError("learned payload is corrupted or truncated (CRC mismatch)")
    pos = len(MAGIC) + 1
    (hlen,) = struct.unpack_from("<H", payload, pos)
    pos += 2
    if pos + hlen > len(payload) - 4 or hlen < 1:
        raise CodecError("learned payload header is truncated")
    n = payload[pos]
    if 1 + n + _FIXED.size != hlen:
        raise CodecError("learned payload header has the wrong length")
    try:
        model_id = payload[pos + 1: pos + 1 + n].decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("learned payload has a malformed model id") from None
    f = _FIXED.unpack_from(payload, pos + 1 + n)
    header = LearnedFrameHeader(model_id, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11])
    lengths = f[12:]
    pos += hlen
    if pos + sum(lengths) != len(payload) - 4:
        raise CodecError("learned payload section lengths do not match its size")
    sections = {}
    for name, ln in zip(SECTIONS, lengths):
        sections[name] = payload[pos: pos + ln]
        pos += ln
    return header, sections
