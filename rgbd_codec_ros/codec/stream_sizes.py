"""Frame size of a coded colour stream, read from its headers without decoding it.

A classical payload states its frame size in its own header; the colour stream inside it
states a size too, and the image library allocates for *that* one. A forged payload can pair
a small header with a huge stream (a 31 kB JPEG XL codestream of 16384x16384 took 1.75 GB and
18 s before it was refused), so the decoder reads the inner size here first and refuses a
mismatch before any library call. Each reader parses only what it needs of its format's
headers and raises :class:`CodecError` for anything it cannot vouch for.
"""
from __future__ import annotations

import struct
from typing import Iterator, List, Tuple

from .base import CodecError


# --------------------------------------------------------------------------- JPEG, WebP
#: most scans a JPEG may have. libjpeg walks every block of the image once per scan, and a
#: progressive scan that codes nothing (one end-of-band run) is ~20 bytes: a 240 kB forged
#: 3840x2160 JPEG of 12000 such scans took 16-30 s, where a real frame takes 0.1 s. The encoder
#: writes baseline JPEG (one scan); libjpeg's own progressive modes use at most 10.
MAX_JPEG_SCANS = 64


def jpeg_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from a JPEG's SOF marker; CodecError for a stream of more than
    MAX_JPEG_SCANS scans."""
    if data[:2] != b"\xff\xd8":
        raise CodecError("colour section is not a JPEG stream")
    # every scan starts with a start-of-scan marker FF DA, which coded data cannot hold (a coded
    # FF is followed by 00 or a restart marker): this count is at least the number of scans
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise CodecError(f"colour JPEG stream has {scans} scans (at most {MAX_JPEG_SCANS} are decoded: each "
                         "costs a pass over the whole image)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CodecError("colour JPEG stream is corrupted (bad marker)")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            h = int.from_bytes(data[pos + 5:pos + 7], "big")
            w = int.from_bytes(data[pos + 7:pos + 9], "big")
            return w, h
        pos += 2 + length
    raise CodecError("colour JPEG stream has no frame header (truncated?)")


def webp_size(data: bytes) -> Tuple[int, int]:
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CodecError("colour section is not a WebP stream")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise CodecError("colour WebP stream is corrupted")
        return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF)
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    raise CodecError("colour WebP stream has an unknown first chunk")


# --------------------------------------------------------------------------- bit readers
class _LsbBits:
    """JPEG XL reads bits least-significant first."""

    def __init__(self, data: bytes, pos: int = 0, what: str = "colour"):
        self.data, self.bit, self.what = data, pos * 8, what

    def read(self, n: int) -> int:
        v = 0
        for i in range(n):
            byte = self.bit >> 3
            if byte >= len(self.data):
                raise CodecError(f"{self.what} JPEG XL stream is truncated in its size header")
            v |= ((self.data[byte] >> (self.bit & 7)) & 1) << i
            self.bit += 1
        return v


class _MsbBits:
    """AV1 reads bits most-significant first."""

    def __init__(self, data: bytes):
        self.data, self.bit = data, 0

    def read(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.bit >> 3
            if byte >= len(self.data):
                raise CodecError("colour AVIF stream is truncated in its AV1 sequence header")
            v = (v << 1) | ((self.data[byte] >> (7 - (self.bit & 7))) & 1)
            self.bit += 1
        return v


# --------------------------------------------------------------------------- JPEG XL
#: SizeHeader aspect ratios (ISO/IEC 18181-1): ratio code -> (numerator, denominator)
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _jxl_u32(bits: _LsbBits, dists) -> int:
    sel = bits.read(2)
    offset, nbits = dists[sel]
    return offset + bits.read(nbits)


def _jxl_u64(bits: _LsbBits) -> int:
    sel = bits.read(2)
    if sel == 0:
        return 0
    if sel == 1:
        return 1 + bits.read(4)
    if sel == 2:
        return 17 + bits.read(8)
    value, shift = bits.read(12), 12
    while bits.read(1):
        if shift == 60:
            return value | bits.read(4) << 60
        value |= bits.read(8) << shift
        shift += 8
    return value


_JXL_ENUM = ((0, 0), (1, 0), (2, 4), (18, 6))
_JXL_XY = ((0, 19), (524288, 19), (1048576, 20), (2097152, 21))


def _jxl_skip_extensions(bits: _LsbBits) -> None:
    ext = _jxl_u64(bits)
    total = sum(_jxl_u64(bits) for i in range(64) if ext >> i & 1)
    if total > 8 * len(bits.data):
        raise CodecError(f"{bits.what} JPEG XL stream has a malformed header extension")
    bits.bit += total


def _jxl_check_single_frame(bits: _LsbBits, what: str) -> None:
    """Read the ImageMetadata after the SizeHeader and the first frame's header; refuse what
    can make libjxl do or allocate more than one frame of the stated size: extra channels (each a
    whole plane: 256 of them in a 9 kB stream cost 300 MiB at 640x480), animation, a preview,
    an ICC profile (which hides where the frame starts), and a first frame that is not the
    last one (layers: libjxl composes every one of them into frame 0; 300 constant layers in
    a 47 kB stream took 6.8 s at 640x480, a real frame 0.03 s) or is cropped or blended."""
    def refuse(why: str):
        raise CodecError(f"{what} JPEG XL stream {why}; this decoder accepts one plain frame without extra channels only")

    xyb = True
    if not bits.read(1):                        # ImageMetadata.all_default
        extra_fields = bits.read(1)
        if extra_fields:
            bits.read(3)                        # orientation
            if bits.read(1):                    # intrinsic size: a SizeHeader
                if bits.read(1):
                    bits.read(5)
                    if bits.read(3) == 0:
                        bits.read(5)
                else:
                    dists = ((1, 9), (1, 13), (1, 18), (1, 30))
                    _jxl_u32(bits, dists)
                    if bits.read(3) == 0:
                        _jxl_u32(bits, dists)
            if bits.read(1):
                refuse("has a preview image")
            if bits.read(1):
                refuse("is an animation")
        if bits.read(1):                        # BitDepth: floating point
            _jxl_u32(bits, ((32, 0), (16, 0), (24, 0), (1, 6)))
            bits.read(4)
        else:
            _jxl_u32(bits, ((8, 0), (10, 0), (12, 0), (1, 6)))
        bits.read(1)                            # modular_16_bit_buffer_sufficient
        extra = _jxl_u32(bits, ((0, 0), (1, 0), (2, 4), (1, 12)))
        if extra:
            refuse(f"has {extra} extra channel{'s' if extra > 1 else ''}")
        xyb = bits.read(1)
        if not bits.read(1):                    # ColorEncoding.all_default
            if bits.read(1):
                refuse("carries an ICC profile")
            space = _jxl_u32(bits, _JXL_ENUM)
            if space != 2:                      # not XYB: a white point
                if _jxl_u32(bits, _JXL_ENUM) == 2:
                    for _ in range(2):
                        _jxl_u32(bits, _JXL_XY)
            if space not in (1, 2):             # not grey, not XYB: primaries
                if _jxl_u32(bits, _JXL_ENUM) == 2:
                    for _ in range(6):
                        _jxl_u32(bits, _JXL_XY)
            if space != 2:                      # transfer function
                if bits.read(1):
                    bits.read(24)
                else:
                    _jxl_u32(bits, _JXL_ENUM)
            _jxl_u32(bits, _JXL_ENUM)           # rendering intent
        if extra_fields and not bits.read(1):   # ToneMapping.all_default
            bits.read(16 + 16 + 1 + 16)
        _jxl_skip_extensions(bits)
    if not bits.read(1):                        # CustomTransformData.all_default
        if xyb and not bits.read(1):            # OpsinInverseMatrix.all_default
            bits.read(16 * 16)
        mask = bits.read(3)
        bits.read(16 * ((15 if mask & 1 else 0) + (55 if mask & 2 else 0) + (210 if mask & 4 else 0)))
    bits.bit = -(-bits.bit // 8) * 8            # frames start on a byte boundary
    if bits.read(1):                            # FrameHeader.all_default: one regular last frame
        return
    if _jxl_u32(bits, ((0, 0), (1, 0), (2, 0), (3, 0))) != 0:
        refuse("starts with a DC or reference frame (more than one frame)")
    modular = bits.read(1)
    flags = _jxl_u64(bits)
    ycbcr = 0 if xyb else bits.read(1)
    if ycbcr and not flags & 32:
        bits.read(6)                            # chroma subsampling
    if not flags & 32:
        bits.read(2)                            # upsampling
    if modular:
        bits.read(2)                            # group size shift
    elif xyb:
        bits.read(6)                            # x/b quantisation matrix scales
    passes = _jxl_u32(bits, ((1, 0), (2, 0), (3, 0), (4, 3)))
    if passes != 1:
        down = _jxl_u32(bits, ((0, 0), (1, 0), (2, 0), (3, 1)))
        bits.read(2 * (passes - 1))
        bits.read(2 * down)
        for _ in range(down):
            _jxl_u32(bits, ((0, 0), (1, 0), (2, 0), (0, 3)))
    if bits.read(1):
        refuse("has a cropped or offset frame")
    if _jxl_u32(bits, ((0, 0), (1, 0), (2, 0), (3, 2))) != 0:
        refuse("blends its first frame")
    if not bits.read(1):
        refuse("has more than one frame (layers or an animation)")


def jpegxl_size(data: bytes, what: str = "colour") -> Tuple[int, int]:
    """(width, height) from a bare JPEG XL codestream's SizeHeader.

    The project writes bare codestreams (0xFF 0x0A); the ISO BMFF container form is refused
    rather than half-parsed. ``what`` names the section in errors (colour, depth). Once the size
    matches the payload header, :func:`jpegxl_check_one_frame` checks the rest of the headers.
    """
    return _jxl_size_bits(data, what)[0]


def jpegxl_check_one_frame(data: bytes, what: str = "colour") -> None:
    """CodecError unless the codestream holds one plain frame (see ``_jxl_check_single_frame``)."""
    _jxl_check_single_frame(_jxl_size_bits(data, what)[1], what)


def _jxl_size_bits(data: bytes, what: str):
    """((width, height), the bit reader just past the SizeHeader)."""
    if data[:2] != b"\xff\x0a":
        raise CodecError(f"{what} section is not a bare JPEG XL codestream")
    bits = _LsbBits(data, 2, what)
    dists = ((1, 9), (1, 13), (1, 18), (1, 30))
    if bits.read(1):   # small: multiples of 8 up to 256
        height = (bits.read(5) + 1) * 8
        ratio = bits.read(3)
        width = (bits.read(5) + 1) * 8 if ratio == 0 else None
    else:
        height = _jxl_u32(bits, dists)
        ratio = bits.read(3)
        width = _jxl_u32(bits, dists) if ratio == 0 else None
    if width is None:
        num, den = _JXL_RATIOS[ratio]
        width = height * num // den
    return (width, height), bits


# --------------------------------------------------------------------------- AVIF
def _boxes(data: bytes, start: int, end: int) -> Iterator[Tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO BMFF boxes in data[start:end]."""
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise CodecError("colour AVIF stream has a truncated box")
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                raise CodecError("colour AVIF stream has a truncated box")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise CodecError("colour AVIF stream has a box that runs past its parent")
        yield kind, pos + head, pos + size
        pos += size


def _av1_sequence_max_size(obu_payload: bytes) -> Tuple[int, int]:
    """(max_frame_width, max_frame_height) of an AV1 sequence header OBU's payload (AV1 spec
    5.5): no frame of the sequence can be larger, so this bounds what the decoder allocates."""
    b = _MsbBits(obu_payload)
    b.read(3)                              # seq_profile
    b.read(1)                              # still_picture
    reduced = b.read(1)
    if reduced:
        b.read(5)                          # seq_level_idx[0]
    else:
        timing = b.read(1)
        decoder_model = 0
        buffer_delay_len = 0
        if timing:
            b.read(32)
            b.read(32)                     # num_units_in_display_tick, time_scale
            if b.read(1):                  # equal_picture_interval: uvlc
                zeros = 0
                while not b.read(1):
                    zeros += 1
                    if zeros >= 32:
                        raise CodecError("colour AVIF stream has a malformed AV1 sequence header")
                b.read(zeros)
            decoder_model = b.read(1)
            if decoder_model:
                buffer_delay_len = b.read(5) + 1
                b.read(32)
                b.read(5)
                b.read(5)
        initial_delay = b.read(1)
        for _ in range(b.read(5) + 1):     # operating points
            b.read(12)
            level = b.read(5)
            if level > 7:
                b.read(1)
            if decoder_model and b.read(1):
                b.read(buffer_delay_len)
                b.read(buffer_delay_len)
                b.read(1)
            if initial_delay and b.read(1):
                b.read(4)
    wbits, hbits = b.read(4) + 1, b.read(4) + 1
    return b.read(wbits) + 1, b.read(hbits) + 1


def _leb128(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    value = 0
    for i in range(8):
        if pos >= end:
            raise CodecError("colour AVIF stream has a truncated AV1 OBU")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise CodecError("colour AVIF stream has a malformed AV1 OBU size")


def _av1_sequence_sizes(data: bytes, start: int, end: int) -> List[Tuple[int, int]]:
    """Max frame sizes of every AV1 sequence header in data[start:end] (a run of OBUs)."""
    sizes = []
    pos = start
    while pos < end:
        head = data[pos]
        if head & 0x80:
            raise CodecError("colour AVIF stream has a malformed AV1 OBU header")
        obu_type, has_ext, has_size = (head >> 3) & 0xF, (head >> 2) & 1, (head >> 1) & 1
        pos += 1 + has_ext
        if has_size:
            length, pos = _leb128(data, pos, end)
        else:
            length = end - pos
        if pos + length > end:
            raise CodecError("colour AVIF stream has an AV1 OBU that runs past its box")
        if obu_type == 1:                  # OBU_SEQUENCE_HEADER
            sizes.append(_av1_sequence_max_size(data[pos:pos + length]))
        pos += length
    return sizes


#: top-level boxes an AVIF still image may hold. An image sequence ('moov': a track of frames)
#: is refused: libavif decodes every frame of it (a forged payload of one small keyframe and
#: hundreds of repeats costs hundreds of frames), and libavif 1.3 crashes (SIGSEGV) when asked
#: for one frame of some of them
_AVIF_TOP_BOXES = {b"ftyp", b"meta", b"mdat", b"free", b"skip"}
#: item types an AVIF of this project may hold (one AV1 image, optional metadata); grids,
#: tone maps and other derived images can assemble large outputs from small parts
_AVIF_ITEM_TYPES = {b"av01", b"Exif", b"mime"}


def avif_size(data: bytes) -> Tuple[int, int]:
    """(width, height) of an AVIF still image: every 'ispe' property must agree, no derived
    (grid) items, and no AV1 sequence header in the media data may allow a larger frame."""
    if data[4:8] != b"ftyp":
        raise CodecError("colour section is not an AVIF stream")
    spatial, seq = [], []
    for kind, s, e in _boxes(data, 0, len(data)):
        if kind not in _AVIF_TOP_BOXES:
            what = " (an image sequence)" if kind == b"moov" else ""
            raise CodecError(f"colour AVIF stream holds a {kind!r} box{what}; this decoder accepts "
                             "still images only")
        if kind == b"meta":
            for k2, s2, e2 in _boxes(data, s + 4, e):          # meta is a full box
                if k2 == b"iprp":
                    for k3, s3, e3 in _boxes(data, s2, e2):
                        if k3 == b"ipco":
                            for k4, s4, e4 in _boxes(data, s3, e3):
                                if k4 == b"ispe":
                                    if e4 - s4 < 12:
                                        raise CodecError("colour AVIF stream has a short ispe box")
                                    spatial.append(struct.unpack_from(">II", data, s4 + 4))
                                elif k4 == b"av1C" and e4 - s4 > 4:
                                    seq += _av1_sequence_sizes(data, s4 + 4, e4)
                elif k2 == b"idat":
                    # item data inside 'meta': the AV1 sequence headers below are read from 'mdat'
                    # only, so a small one in 'av1C' would vouch for a larger frame kept here
                    raise CodecError("colour AVIF stream keeps its image data in an 'idat' box; this "
                                     "decoder accepts image data in 'mdat' only")
                elif k2 == b"iinf":
                    if e2 - s2 < 4:
                        raise CodecError("colour AVIF stream has a short item information box")
                    version = data[s2]
                    first = s2 + 4 + (2 if version == 0 else 4)
                    for k3, s3, e3 in _boxes(data, first, e2):
                        if k3 == b"infe":
                            if e3 - s3 < 4:
                                raise CodecError("colour AVIF stream has a short item entry")
                            v = data[s3]
                            if v < 2:
                                raise CodecError("colour AVIF stream has an old-style item entry")
                            at = s3 + 4 + (2 if v == 2 else 4) + 2
                            if at + 4 > e3:
                                raise CodecError("colour AVIF stream has a short item entry")
                            if data[at:at + 4] not in _AVIF_ITEM_TYPES:
                                raise CodecError(f"colour AVIF stream holds a {data[at:at + 4]!r} item, "
                                                 "which this decoder does not accept")
        elif kind == b"mdat":
            seq += _av1_sequence_sizes(data, s, e)
    if not spatial:
        raise CodecError("colour AVIF stream states no image size (no ispe property)")
    if len(set(spatial)) != 1:
        raise CodecError(f"colour AVIF stream states several image sizes {sorted(set(spatial))}")
    if not seq:
        raise CodecError("colour AVIF stream has no AV1 sequence header")
    w, h = spatial[0]
    for sw, sh in seq:
        if sw * sh > w * h or sw > w or sh > h:
            raise CodecError(f"colour AVIF stream codes frames up to {sw}x{sh} inside a {w}x{h} image")
    return w, h
