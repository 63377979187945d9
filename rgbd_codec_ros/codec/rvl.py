"""RVL: run-length / variable-length lossless depth coding, vectorised with numpy.

Written for this project from the published description of the scheme (A. D.
Wilson, "Fast Lossless Depth Image Compression", ISS 2017): the image is read
in raster order as alternating runs of zero pixels (no measurement) and
non-zero pixels. The stream is a sequence of unsigned integers:

    zeros_0, nonzeros_0, delta, delta, ..., zeros_1, nonzeros_1, delta, ...

where each ``delta`` is a non-zero pixel minus the previous non-zero pixel (the
predictor starts at 0 and carries across zero runs), folded to an unsigned
number with the zig-zag map (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...). Every
integer is written as variable-length nibbles: 3 value bits, least significant
group first, plus a continuation bit (0x8) on every nibble but the last one.
Nibbles are packed eight to a 32-bit little-endian word, first nibble in the
most significant bits; the final word is padded with zero nibbles.

There is no per-pixel Python loop. Encoding is a handful of whole-array numpy
operations. Decoding splits the nibbles into integers with whole-array
operations, then finds the run headers: each header at position ``i`` is
followed by the next at ``i + 2 + value[i + 1]``. Dense depth has a few
thousand runs, which a short walk over the headers finds; sparse depth (tens
of thousands of runs) switches to pointer doubling: every position is treated
as a possible header, and composing the successor map with itself collects
the header chain from position 0 in log2(number of runs) whole-array steps.

Entry points:

- :func:`encode_values` / :func:`decode_values` work on a flat stream whose
  pixel count the caller knows (the classical container stores the size in
  its header).
- :func:`encode` / :func:`decode` add a 16-byte header (magic ``RVL1``, width,
  height, value width) so that a stream stands alone.
- :func:`encode_planes` / :func:`encode_zstd` (and their decoders) are a
  byte-aligned layout of the same model, made for a zstd post-pass: plain RVL
  is larger than ROS compressedDepth's PNG on dense depth, RVL planes + zstd is
  smaller on every source (docs/classical.md).

The decoder never trusts the stream: a truncated, padded or corrupted stream,
or one that does not describe exactly the declared number of pixels, raises
:class:`CodecError`. Memory use is bounded by the declared output size and
the input length.
"""
from __future__ import annotations

import struct

import numpy as np

from .base import CodecError

#: largest image (pixels) a decoder agrees to allocate
MAX_PIXELS = 1 << 26
#: an integer in the stream is at most 33 bits = 11 nibbles (32-bit pixels, run lengths)
_MAX_NIBBLES = 11

_MAGIC = b"RVL1"
_HEADER = struct.Struct("<4sIIB3x")


def _as_bytes(data) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"an RVL stream is bytes, got {type(data).__name__}")
    return bytes(data)


def _zigzag(d: np.ndarray) -> np.ndarray:
    return (d << 1) ^ (d >> 63)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    return (u >> 1) ^ -(u & 1)


def _vle_pack(tokens: np.ndarray) -> bytes:
    """Unsigned int64 tokens -> variable-length nibbles packed in 32-bit LE words."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size == 0:
        return b""
    # nibbles per token: 1 + number of extra 3-bit groups
    count = np.ones(tokens.shape, dtype=np.int64)
    limit = 8
    top = int(tokens.max())
    while limit <= top:
        count += tokens >= limit
        limit <<= 3
    offset = np.cumsum(count) - count
    total = int(offset[-1] + count[-1])
    nib = np.zeros((total + 7) // 8 * 8, dtype=np.uint8)
    more = count > 1
    nib[offset] = (tokens & 7).astype(np.uint8) | (more.astype(np.uint8) << 3)
    idx = np.flatnonzero(more)  # most tokens are done after one nibble
    k = 1
    while idx.size:
        c = count[idx]
        nib[offset[idx] + k] = (((tokens[idx] >> (3 * k)) & 7).astype(np.uint8)
                                | ((c > k + 1).astype(np.uint8) << 3))
        k += 1
        idx = idx[c > k]
    packed = (nib[0::2] << 4) | nib[1::2]
    return packed.view(">u4").astype("<u4").tobytes()


def _vle_unpack(data: bytes) -> tuple:
    """Packed words -> (int64 tokens, nibble index one past each token's end)."""
    if len(data) % 4:
        raise CodecError(f"RVL stream length {len(data)} is not a multiple of 4 bytes")
    if not data:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # 32-bit little-endian words, first nibble most significant: read them big-endian
    b = np.frombuffer(data, dtype="<u4").byteswap().view(np.uint8)
    nib = np.empty(b.size * 2, dtype=np.uint8)
    nib[0::2] = b >> 4
    nib[1::2] = b & 15
    ends = np.flatnonzero(nib < 8)  # last nibble of each token
    if ends.size == 0:
        raise CodecError("RVL stream holds no complete integer")
    # unterminated nibbles after the last token are only legal as nothing at all
    if int(ends[-1]) + 1 != nib.size:
        raise CodecError("RVL stream corrupted: it ends inside an integer")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > _MAX_NIBBLES:
        raise CodecError("RVL stream corrupted: an integer longer than 33 bits")
    tokens = (nib[starts] & 7).astype(np.int64)
    idx = np.flatnonzero(lengths > 1)  # most tokens are one or two nibbles
    k = 1
    while idx.size:
        tokens[idx] |= (nib[starts[idx] + k] & 7).astype(np.int64) << (3 * k)
        k += 1
        idx = idx[lengths[idx] > k]
    return tokens, ends + 1


def encode_values(flat: np.ndarray) -> bytes:
    """Encode a flat array of non-negative integers (< 2**32) as an RVL stream."""
    flat = np.asarray(flat).ravel()
    if flat.dtype.kind not in "ui":
        raise CodecError(f"RVL codes integer images, got {flat.dtype}")
    v = flat.astype(np.int64)
    if v.size and (int(v.min()) < 0 or int(v.max()) >= 1 << 32):
        raise CodecError("RVL codes values in 0 .. 2**32-1")
    npix = v.size
    if npix == 0:
        return b""
    runs, vals = _runs_and_deltas(v)
    deltas = _zigzag(np.diff(vals, prepend=0))
    npairs = runs.size // 2
    # a pair's header sits after all deltas of the pairs before it
    nnz_before = np.concatenate(([0], np.cumsum(runs[1::2])[:-1]))
    hpos = 2 * np.arange(npairs) + nnz_before
    tokens = np.empty(2 * npairs + vals.size, dtype=np.int64)
    is_delta = np.ones(tokens.size, dtype=bool)
    is_delta[hpos] = False
    is_delta[hpos + 1] = False
    tokens[hpos] = runs[0::2]
    tokens[hpos + 1] = runs[1::2]
    tokens[is_delta] = deltas
    return _vle_pack(tokens)


#: follow at most this many run headers one by one before switching to pointer doubling
_WALK_LIMIT = 4096


def _header_chain(tokens: np.ndarray, npix: int) -> np.ndarray:
    """Positions of the run headers, following i -> i + 2 + tokens[i + 1] from 0.

    Returns at least the headers needed to cover ``npix`` pixels (when the stream
    holds them). Dense depth has few runs: a short walk finds them. Sparse depth
    (hundreds of thousands of runs) is handled by pointer doubling instead.
    """
    n = tokens.size
    get = tokens.item
    heads, i, total = [], 0, 0
    for _ in range(_WALK_LIMIT):
        if total >= npix or i + 1 >= n:
            return np.asarray(heads, dtype=np.int64)
        heads.append(i)
        total += get(i) + get(i + 1)
        i += 2 + get(i + 1)
    nxt = np.full(n + 1, n, dtype=np.int64)  # n is the sink
    if n >= 2:
        np.minimum(np.arange(2, n + 1, dtype=np.int64) + tokens[1:], n, out=nxt[:n - 1])
    chain = np.zeros(1, dtype=np.int64)  # headers at chain distance < 2**k
    jump = nxt                           # successor 2**k steps on
    while True:
        far = jump[chain]
        if far[0] == n:  # 2**k steps from 0 is past the end: chain is complete
            break
        chain = np.concatenate((chain, far[far < n]))
        jump = jump[jump]
    chain.sort()
    return chain


def decode_values(data: bytes, npix: int, max_value: int = 0xFFFF) -> np.ndarray:
    """Decode an RVL stream of exactly ``npix`` pixels into a flat int64 array.

    Every non-zero pixel must lie in 1 .. ``max_value``.
    """
    data = _as_bytes(data)
    npix = int(npix)
    if npix < 0 or npix > MAX_PIXELS:
        raise CodecError(f"RVL image of {npix} pixels is out of range (max {MAX_PIXELS})")
    if npix == 0:
        if data:
            raise CodecError("RVL stream for an empty image must be empty")
        return np.zeros(0, np.int64)
    tokens, token_end = _vle_unpack(data)
    heads = _header_chain(tokens, npix)
    heads = heads[heads + 1 < tokens.size]
    if heads.size == 0:
        raise CodecError("RVL stream truncated: no complete run header")
    nzero = tokens[heads]
    nnz = tokens[heads + 1]
    cum = np.cumsum(nzero + nnz)
    last = int(np.searchsorted(cum, npix))
    if last >= cum.size or int(cum[last]) != npix:
        raise CodecError(
            f"RVL stream does not describe {npix} pixels (truncated or corrupted)")
    heads, nzero, nnz = heads[: last + 1], nzero[: last + 1], nnz[: last + 1]
    consumed = int(heads[-1] + 2 + nnz[-1])  # tokens used
    if consumed > tokens.size:
        raise CodecError("RVL stream truncated inside a run of pixels")
    # after the last token only the zero nibbles padding the final 32-bit word may follow
    pad = tokens.size - consumed
    nib_used = int(token_end[consumed - 1])
    padding = len(data) * 2 - nib_used
    if padding >= 8 or padding != pad or (pad and (tokens[consumed:] != 0).any()):
        raise CodecError("RVL stream corrupted: data after the last run")
    is_delta = np.ones(consumed, dtype=bool)
    is_delta[heads] = False
    is_delta[heads + 1] = False
    deltas = _unzigzag(tokens[:consumed][is_delta])
    values = np.cumsum(deltas)
    if values.size and (int(values.min()) < 1 or int(values.max()) > max_value):
        raise CodecError("RVL stream corrupted: a decoded pixel is out of range")
    lengths = np.empty(2 * heads.size, dtype=np.int64)
    lengths[0::2] = nzero
    lengths[1::2] = nnz
    flags = np.zeros(2 * heads.size, dtype=bool)
    flags[1::2] = True
    valid = np.repeat(flags, lengths)
    out = np.zeros(npix, dtype=np.int64)
    out[valid] = values
    return out


def _runs_and_deltas(v: np.ndarray) -> tuple:
    """Run lengths (zeros, non-zeros alternating) and non-zero values of a flat int64 image."""
    npix = v.size
    nz = v != 0
    starts = np.flatnonzero(nz[:-1] & ~nz[1:]) + 1
    starts = np.concatenate(([0], starts))
    ends = np.append(starts[1:], npix)
    csum = np.zeros(npix + 1, dtype=np.int64)
    np.cumsum(nz, out=csum[1:])
    nnz = csum[ends] - csum[starts]
    runs = np.empty(2 * starts.size, dtype=np.int64)
    runs[0::2] = (ends - starts) - nnz
    runs[1::2] = nnz
    return runs, v[nz]


def _leb128(values: np.ndarray) -> np.ndarray:
    """Unsigned ints -> LEB128 bytes (7 bits a byte, low group first, 0x80 = more)."""
    count = np.ones(values.shape, dtype=np.int64)
    limit = 128
    top = int(values.max()) if values.size else 0
    while limit <= top:
        count += values >= limit
        limit <<= 7
    offset = np.cumsum(count) - count
    out = np.zeros(int(count.sum()), dtype=np.uint8)
    idx = np.arange(values.size)
    for k in range(int(count.max()) if values.size else 0):
        if k:
            idx = idx[count[idx] > k]
        out[offset[idx] + k] = (((values[idx] >> (7 * k)) & 127)
                                | ((count[idx] > k + 1).astype(np.int64) << 7)).astype(np.uint8)
    return out


def _unleb128(buf: np.ndarray) -> np.ndarray:
    ends = np.flatnonzero(buf < 128)
    if buf.size == 0:
        return np.zeros(0, np.int64)
    if ends.size == 0 or int(ends[-1]) != buf.size - 1:
        raise CodecError("RVL run table corrupted: it ends inside a number")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > 5:
        raise CodecError("RVL run table corrupted: a run length longer than 35 bits")
    pos = np.arange(buf.size, dtype=np.int64) - np.repeat(starts, lengths)
    return np.add.reduceat((buf & 127).astype(np.int64) << (7 * pos), starts)


_PLANE_HEADER = struct.Struct("<I")


def encode_planes(flat: np.ndarray, bits: int = 16) -> bytes:
    """Byte-aligned RVL layout, made for a general-purpose entropy coder after it.

    Same model as RVL (zero / non-zero runs, non-zero pixels predicted by the
    previous non-zero pixel), laid out so that a byte-oriented compressor
    (zstd) sees aligned, homogeneous streams instead of packed nibbles::

        u32 n          length of the run table in bytes
        n bytes        run lengths (zeros, non-zeros alternating), LEB128
        bits/8 planes  zig-zag deltas modulo 2**bits, byte plane 0 (low) first,
                       each plane one byte per non-zero pixel
    """
    if bits not in (16, 32):
        raise CodecError("RVL planes are 16 or 32 bits")
    v = np.asarray(flat).ravel().astype(np.int64)
    if v.size == 0:
        return _PLANE_HEADER.pack(0)
    if int(v.min()) < 0 or int(v.max()) >= 1 << bits:
        raise CodecError(f"RVL planes code values in 0 .. 2**{bits}-1")
    runs, vals = _runs_and_deltas(v)
    table = _leb128(runs)
    mask = (1 << bits) - 1
    d = np.diff(vals, prepend=0) & mask
    d = np.where(d >> (bits - 1), d - (1 << bits), d)  # wrapped delta as signed
    zz = ((d << 1) ^ (d >> 63)) & mask
    planes = [((zz >> (8 * k)) & 255).astype(np.uint8).tobytes() for k in range(bits // 8)]
    return _PLANE_HEADER.pack(table.size) + table.tobytes() + b"".join(planes)


def planes_bound(npix: int, bits: int) -> int:
    """Largest :func:`encode_planes` output for ``npix`` pixels (for bounded decompression)."""
    return _PLANE_HEADER.size + 5 * (npix + 2) + npix * bits // 8


def decode_planes(data: bytes, npix: int, bits: int = 16, max_value: int = 0) -> np.ndarray:
    """Inverse of :func:`encode_planes`: a flat int64 array of ``npix`` pixels."""
    npix = int(npix)
    if bits not in (16, 32):
        raise CodecError("RVL planes are 16 or 32 bits")
    if npix < 0 or npix > MAX_PIXELS:
        raise CodecError(f"RVL image of {npix} pixels is out of range (max {MAX_PIXELS})")
    max_value = max_value or (1 << bits) - 1
    data = _as_bytes(data)
    if len(data) < _PLANE_HEADER.size:
        raise CodecError("RVL planes truncated: no run table length")
    (ntab,) = _PLANE_HEADER.unpack_from(data)
    if ntab > len(data) - _PLANE_HEADER.size:
        raise CodecError("RVL planes truncated: run table runs past the end")
    table = np.frombuffer(data, np.uint8, ntab, _PLANE_HEADER.size)
    runs = _unleb128(table)
    if npix == 0:
        if runs.size or len(data) != _PLANE_HEADER.size:
            raise CodecError("RVL planes for an empty image must be empty")
        return np.zeros(0, np.int64)
    if runs.size % 2:
        raise CodecError("RVL run table corrupted: odd number of run lengths")
    if int(runs.sum()) != npix:
        raise CodecError(f"RVL run table does not describe {npix} pixels")
    count = int(runs[1::2].sum())
    nbytes = bits // 8
    body = len(data) - _PLANE_HEADER.size - ntab
    if body != count * nbytes:
        raise CodecError(
            f"RVL planes hold {body} bytes, expected {count * nbytes} for {count} pixels")
    planes = np.frombuffer(data, np.uint8, count * nbytes, _PLANE_HEADER.size + ntab)
    zz = np.zeros(count, dtype=np.int64)
    for k in range(nbytes):
        zz |= planes[k * count:(k + 1) * count].astype(np.int64) << (8 * k)
    mask = (1 << bits) - 1
    values = np.cumsum(_unzigzag(zz)) & mask
    if count and (int(values.min()) < 1 or int(values.max()) > max_value):
        raise CodecError("RVL planes corrupted: a decoded pixel is out of range")
    flags = np.zeros(runs.size, dtype=bool)
    flags[1::2] = True
    out = np.zeros(npix, dtype=np.int64)
    out[np.repeat(flags, runs)] = values
    return out


def encode(depth: np.ndarray) -> bytes:
    """Encode an HxW ``uint16`` (or ``uint32``) image; the stream carries its size."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.uint32):
        raise CodecError(f"RVL codes HxW uint16 or uint32 images, got {depth.dtype} {depth.shape}")
    h, w = depth.shape
    if h * w > MAX_PIXELS:
        raise CodecError(f"image of {w}x{h} pixels is too large for RVL (max {MAX_PIXELS})")
    return _HEADER.pack(_MAGIC, w, h, depth.dtype.itemsize * 8) + encode_values(depth)


def decode(data: bytes) -> np.ndarray:
    """Decode a stream made by :func:`encode`."""
    data = _as_bytes(data)
    if len(data) < _HEADER.size:
        raise CodecError(f"RVL stream of {len(data)} bytes is shorter than its header")
    magic, w, h, bits = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CodecError("not an RVL stream (bad magic)")
    if bits not in (16, 32):
        raise CodecError(f"RVL stream declares {bits}-bit pixels; only 16 and 32 exist")
    if w * h > MAX_PIXELS:
        raise CodecError(f"RVL stream declares {w}x{h} pixels, more than {MAX_PIXELS}")
    dtype = np.uint16 if bits == 16 else np.uint32
    flat = decode_values(data[_HEADER.size:], w * h, int(np.iinfo(dtype).max))
    return flat.astype(dtype).reshape(h, w)


def encode_zstd(flat: np.ndarray, bits: int = 16, level: int = 6) -> bytes:
    """:func:`encode_planes` followed by zstd (the lossless default of the classical codec)."""
    import imagecodecs

    return imagecodecs.zstd_encode(encode_planes(flat, bits), level=int(level))


def decode_zstd(data: bytes, npix: int, bits: int = 16, max_value: int = 0) -> np.ndarray:
    """Inverse of :func:`encode_zstd`; decompression is capped at the largest valid size."""
    import imagecodecs

    npix = int(npix)
    if npix < 0 or npix > MAX_PIXELS:
        raise CodecError(f"RVL image of {npix} pixels is out of range (max {MAX_PIXELS})")
    try:
        raw = imagecodecs.zstd_decode(_as_bytes(data), out=planes_bound(npix, bits))
    except Exception as exc:  # imagecodecs.ZstdError and friends
        raise CodecError(f"RVL+zstd depth stream is corrupted or truncated ({exc})") from None
    return decode_planes(raw, npix, bits, max_value)
