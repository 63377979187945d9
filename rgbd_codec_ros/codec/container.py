"""A small sectioned, checksummed container for codec payloads.

Layout (all integers little-endian)::

    magic        4 bytes   identifies the codec ("RDCL" classical, "RDLN" learned)
    version      u8        format version of that codec
    n_sections   u8
    header_len   u16
    table        n_sections x (length u32, crc32 u32)
    header       header_len bytes, codec specific
    header_crc   u32       crc32 of everything above
    sections     the section bodies, back to back

The payload must be exactly as long as the table says: a truncated or padded
payload, a damaged header or table, or a damaged section (crc32 mismatch) is a
:class:`CodecError` naming what is wrong. crc32 catches every burst error up
to 32 bits and all but ~2**-32 of random damage.
"""
from __future__ import annotations

import struct
import zlib
from typing import List, Sequence, Tuple

from .base import CodecError

_PREFIX = struct.Struct("<4sBBH")
_ENTRY = struct.Struct("<II")
_CRC = struct.Struct("<I")


def pack(magic: bytes, version: int, header: bytes, sections: Sequence[bytes]) -> bytes:
    if len(magic) != 4:
        raise ValueError("magic must be 4 bytes")
    if len(sections) > 255 or len(header) > 0xFFFF:
        raise ValueError("too many sections or header too long")
    parts = [_PREFIX.pack(magic, version, len(sections), len(header))]
    for body in sections:
        parts.append(_ENTRY.pack(len(body), zlib.crc32(body)))
    parts.append(bytes(header))
    head = b"".join(parts)
    return head + _CRC.pack(zlib.crc32(head)) + b"".join(bytes(s) for s in sections)


def unpack(data: bytes, magic: bytes, versions: Sequence[int], what: str = "payload",
           section_names: Sequence[str] = ()) -> Tuple[int, bytes, List[bytes]]:
    """Check and split a payload: (version, header, sections). ``section_names`` name the
    sections in errors (else their index)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise CodecError(f"{what} of {len(data)} bytes is too short to be one")
    got_magic, version, nsec, hlen = _PREFIX.unpack_from(data)
    if got_magic != magic:
        raise CodecError(f"{what} does not start with {magic!r} (got {got_magic!r}): "
                         "not this codec's data")
    if version not in versions:
        raise CodecError(f"{what} has format version {version}; this decoder reads "
                         f"{', '.join(map(str, versions))}")
    head_end = _PREFIX.size + nsec * _ENTRY.size + hlen
    if len(data) < head_end + _CRC.size:
        raise CodecError(f"{what} truncated inside its header ({len(data)} bytes)")
    (crc,) = _CRC.unpack_from(data, head_end)
    if crc != zlib.crc32(data[:head_end]):
        raise CodecError(f"{what} header is corrupted (checksum mismatch)")
    entries = [_ENTRY.unpack_from(data, _PREFIX.size + i * _ENTRY.size) for i in range(nsec)]
    header = data[head_end - hlen:head_end]
    pos = head_end + _CRC.size
    total = pos + sum(length for length, _ in entries)
    if len(data) < total:
        raise CodecError(f"{what} truncated: {len(data)} bytes, its header says {total}")
    if len(data) > total:
        raise CodecError(f"{what} has {len(data) - total} unexpected bytes after its end")
    sections = []
    for i, (length, crc) in enumerate(entries):
        body = data[pos:pos + length]
        if zlib.crc32(body) != crc:
            name = section_names[i] if i < len(section_names) else i
            raise CodecError(f"{what} section {name} is corrupted (checksum mismatch)")
        sections.append(body)
        pos += length
    return version, header, sections
