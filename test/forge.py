"""Forged frames and streams, made with the project's own packers (valid CRC): shared by the
hostile-input tests, the subprocesses they start and benchmarks/fuzz_decoders.py."""
import struct


def forged(model_id: str, w: int, h: int, section: bytes = b"\0" * 4, version: int = 0, **header) -> bytes:
    """A learned-codec frame in format ``version`` (0: the current one; imported here: the
    classical tests need no torch)."""
    from rgbd_codec_ros.codec.learned import bitstream as bs
    from rgbd_codec_ros.codec.learned.backend import padded_size

    ph, pw = padded_size(h, w)
    fields = dict(model_id=model_id, quality=1.0, width=w, height=h, padded_width=pw, padded_height=ph,
                  color_mode=bs.COLOR_RGB, depth_type=bs.DEPTH_U16, depth_scale_per_m=1000.0,
                  depth_range_m=10.0, z_height=ph // 64, z_width=pw // 64, latent_hash=b"\0" * 8)
    fields.update(header)
    sections = {n: section for n in bs.SECTIONS}
    sections.update(hole_mask=b"\0", clipped_mask=b"\0", far_depth=b"")
    return bs.pack(bs.LearnedFrameHeader(**fields), sections, version=version or bs.VERSION)


def jxl_size_header(width: int, height: int) -> bytes:
    """A JPEG XL codestream signature + SizeHeader (ISO/IEC 18181-1), written bit by bit."""
    bits = []

    def put(v, n):
        bits.extend((v >> i) & 1 for i in range(n))

    def u32(v):   # selector 3: 1 + u(30)
        put(3, 2)
        put(v - 1, 30)
    put(0, 1)              # not small
    u32(height)
    put(0, 3)              # ratio 0: explicit width
    u32(width)
    bits += [0] * (-len(bits) % 8)
    body = bytes(sum(b << i for i, b in enumerate(bits[k:k + 8])) for k in range(0, len(bits), 8))
    return b"\xff\x0a" + body


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
