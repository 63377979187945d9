"""The learned codec's payload: one frame = header + seven sections, checksummed.

Format version 3 (written now) is a :mod:`rgbd_codec_ros.codec.container` payload, the
framing the classical codec uses: magic ``RDLN``, u8 version 3, seven sections with a
length and crc32 each in the container's table, the header below as the container's
header (with its own crc32). It costs 28 bytes a frame more than version 2 (8 bytes of table
a section against a 4-byte length, and the header crc) and names the damaged section.
Versions 1 and 2 (magic ``RGBDL``, their own framing) are still read, and written on request
for tests of old recordings.

Header (all versions; little endian):
    u8 len + model id (ascii, "<name>@<weights hash>") | i16 quality x 256 (version 1: u8 index) |
    u16 width | u16 height | u16 padded width | u16 padded height |
    u8 colour mode (0 RGB, 1 mono) | u8 depth type (0 uint16, 1 float32 m) |
    f32 depth units per metre | f32 depth range in metres |
    u16 z height | u16 z width | 8 bytes hash of the decoded latents
Sections, in this order: z rgb, z depth, y rgb, y depth, hole mask, far mask, far depth.

Versions 1 and 2:
    b"RGBDL" | u8 version | u16 header length | header + section lengths | sections | u32 crc32
    where the header ends with one u32 length per section: seven in version 2, six in
    version 1 (no far depth section; its far pixels decode as the range limit). The crc32
    covers everything before it.

The checksums catch transport damage; the latent hash catches a decoder whose probability
tables diverged from the encoder's (it then refuses to output).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Dict

from .. import container
from ..base import CodecError

#: magic of format version 3 and later (container framing); distinct from the classical
#: codec's b"RDCL" and not a prefix of the older magic below
MAGIC = b"RDLN"
#: magic of format versions 1 and 2, which had their own framing
LEGACY_MAGIC = b"RGBDL"
VERSION = 3
LEGACY_VERSIONS = (1, 2)
READABLE_VERSIONS = LEGACY_VERSIONS + (VERSION,)
SECTIONS = ("z_rgb", "z_depth", "y_rgb", "y_depth", "hole_mask", "clipped_mask", "far_depth")
#: versions this decoder reads -> the sections they carry
_SECTIONS_OF = {1: SECTIONS[:6], 2: SECTIONS, 3: SECTIONS}
#: the header's fields after the model id (quality .. latent hash); versions 1 and 2 append
#: the section lengths to them
_FIELDS_OF = {1: "<BHHHHBBffHH8s", 2: "<hHHHHBBffHH8s", 3: "<hHHHHBBffHH8s"}
_FIXED_OF = {v: struct.Struct(f + ("" if v >= 3 else f"{len(_SECTIONS_OF[v])}I"))
             for v, f in _FIELDS_OF.items()}
_LEGACY_PREFIX = struct.Struct("<BH")   # version, header length
_CRC = struct.Struct("<I")
#: quality resolution of version 2 and later headers (fractional qualities)
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


def _header_bytes(header: LearnedFrameHeader, version: int, lengths=()) -> bytes:
    q = round(header.quality * QUALITY_STEPS) if version >= 2 else int(header.quality)
    if version < 2 and q != header.quality:
        raise CodecError(f"format version {version} has no fractional qualities")
    mid = header.model_id.encode("ascii")
    if len(mid) > 255:
        raise CodecError("model id longer than 255 bytes")
    return bytes([len(mid)]) + mid + _FIXED_OF[version].pack(
        q, header.width, header.height, header.padded_width, header.padded_height,
        header.color_mode, header.depth_type, header.depth_scale_per_m, header.depth_range_m,
        header.z_height, header.z_width, header.latent_hash, *lengths)


def pack(header: LearnedFrameHeader, sections: Dict[str, bytes], version: int = VERSION) -> bytes:
    """One frame. ``version`` < VERSION writes an older layout (tests of old recordings); the
    sections that layout lacks must be empty."""
    if version not in _SECTIONS_OF or any(sections.get(n) for n in SECTIONS if n not in _SECTIONS_OF[version]):
        raise CodecError(f"cannot write these sections as format version {version}")
    names = _SECTIONS_OF[version]
    if version >= 3:
        return container.pack(MAGIC, version, _header_bytes(header, version), [sections[s] for s in names])
    body = _header_bytes(header, version, [len(sections[s]) for s in names])
    out = LEGACY_MAGIC + _LEGACY_PREFIX.pack(version, len(body)) + body + b"".join(sections[s] for s in names)
    return out + _CRC.pack(zlib.crc32(out))


def is_learned_payload(payload: bytes) -> bool:
    """Whether ``payload`` starts like a learned-codec frame of any version this package wrote."""
    head = bytes(payload[: len(LEGACY_MAGIC)])
    return head[: len(MAGIC)] == MAGIC or head == LEGACY_MAGIC


def format_version(payload: bytes) -> int:
    """The format version a learned payload declares (not yet checked against anything else)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"learned payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if not is_learned_payload(payload):
        raise CodecError("not a learned-codec payload (bad magic)")
    magic = MAGIC if payload.startswith(MAGIC) else LEGACY_MAGIC
    if len(payload) <= len(magic):
        raise CodecError(f"learned payload truncated ({len(payload)} bytes)")
    version = payload[len(magic)]
    if version not in (LEGACY_VERSIONS if magic == LEGACY_MAGIC else (VERSION,)):
        raise CodecError(f"learned payload format version {version} (magic {magic!r}) is not supported "
                         f"(this decoder reads versions {', '.join(map(str, READABLE_VERSIONS))}); "
                         "update rgbd_codec_ros")
    return version


def _parse_header(body: bytes, version: int) -> tuple:
    """-> (LearnedFrameHeader, the section lengths a version 1/2 header carries)."""
    fixed = _FIXED_OF[version]
    if not body or 1 + body[0] + fixed.size != len(body):
        raise CodecError("learned payload header has the wrong length")
    n = body[0]
    try:
        model_id = body[1: 1 + n].decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("learned payload has a malformed model id") from None
    f = fixed.unpack_from(body, 1 + n)
    quality = f[0] / QUALITY_STEPS if version >= 2 else float(f[0])
    header = LearnedFrameHeader(model_id, quality, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11])
    return header, f[12:]


def unpack(payload: bytes):
    """-> (LearnedFrameHeader, sections) of a version 1, 2 or 3 frame; the sections an older
    version lacks are empty. Raises CodecError saying what is wrong."""
    version = format_version(payload)
    payload = bytes(payload)
    names = _SECTIONS_OF[version]
    sections = dict.fromkeys(SECTIONS, b"")
    if version >= 3:
        _, body, bodies = container.unpack(payload, MAGIC, (version,), what="learned payload",
                                             section_names=names)
        if len(bodies) != len(names):
            raise CodecError(f"learned payload has {len(bodies)} sections; format version {version} "
                             f"has {len(names)}")
        header, _ = _parse_header(body, version)
        sections.update(zip(names, bodies))
        return header, sections
    if len(payload) < len(LEGACY_MAGIC) + _LEGACY_PREFIX.size + _CRC.size:
        raise CodecError(f"learned payload truncated ({len(payload)} bytes)")
    (crc,) = _CRC.unpack(payload[-_CRC.size:])
    if zlib.crc32(payload[:-_CRC.size]) != crc:
        raise CodecError("learned payload is corrupted or truncated (CRC mismatch)")
    _, hlen = _LEGACY_PREFIX.unpack_from(payload, len(LEGACY_MAGIC))
    pos = len(LEGACY_MAGIC) + _LEGACY_PREFIX.size
    if pos + hlen > len(payload) - _CRC.size or hlen < 1:
        raise CodecError("learned payload header is truncated")
    header, lengths = _parse_header(payload[pos: pos + hlen], version)
    pos += hlen
    if pos + sum(lengths) != len(payload) - _CRC.size:
        raise CodecError("learned payload section lengths do not match its size")
    for name, length in zip(names, lengths):
        sections[name] = payload[pos: pos + length]
        pos += length
    return header, sections
