"""The classical backend: a standard image or video codec for colour, RVL for depth.

Colour is coded with JPEG, WebP, AVIF or JPEG XL (imagecodecs), or temporally with H.264,
HEVC or AV1 (:mod:`.video`, through FFmpeg); depth with
JPEG XL lossless (the default; sparse depth goes to RVL instead), RVL (lossless, the
project's own vectorised implementation, followed by zstd by default), 16-bit PNG
(lossless) or error-bounded quantisation + JPEG XL or RVL (lossy; holes stay exactly holes). The two streams are independent sections
of one checksummed container (:mod:`.container`), so ``bytes_rgb`` and
``bytes_depth`` are exact.

Payload = container with magic ``RDCL``, format version 2 (version 1 payloads, which lack
the stream fields, still decode), the header below and two sections (0: colour, 1: depth).
Header, little-endian::

    width u32, height u32, flags u8 (bit 0: mono colour),
    depth dtype u8 (0: uint16, 1: float32 metres), depth_scale_per_m f64,
    colour codec u8, colour quality u8,
    depth format u8 (1: RVL, 2: RVL planes + zstd, 3: PNG 16-bit,
                     4: float32 bits, byte planes + zstd, 5: JPEG XL lossless 16-bit),
    depth bits u8 (16 or 32: width of the coded integers),
    level u8 (zstd/PNG level, JPEG XL effort; informative),
    stored scale f64 (units per metre of the coded integers),
    max value u32 (largest coded depth unit), quantiser u8 (0: none, 1: bounded),
    quantiser floor f64 (units), relative error f64, margin f64,
    (version 2:) stream id u32, sequence u32, frame flags u8 (bit 0: keyframe)

Video colour is the one temporal part: a predicted frame decodes only in its stream (stream
id: one encoder's run), right after the previous sequence number, from a keyframe on. The
decoder keeps that state and refuses anything else with MissingReference, so a lost,
reordered or duplicated frame is never shown wrong; depth is always intra.

See docs/classical.md for the options, the precision of float32 depth and
measured figures.
"""
from __future__ import annotations

import math
import os
import struct
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import container, rvl, video
from .base import (DEFAULT_MAX_PIXELS, HARD_MAX_PIXELS, CodecBackend, CodecError, EncodedRGBD, MissingReference,
                   OptionSpec, RGBDFrame, check_frame_size, check_max_pixels, check_options, register_backend)
from .stream_sizes import avif_size, jpeg_size, jpegxl_check_one_frame, jpegxl_size, webp_size
from .depth_quant import MAX_REL, MIN_REL, get_quantiser

MAGIC = b"RDCL"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

COLOR_CODECS = {"jpeg": 1, "webp": 2, "avif": 3, "jpegxl": 4, "h264": 5, "hevc": 6, "av1": 7}
VIDEO_COLOR_CODECS = tuple(video.VIDEO_CODECS)
_COLOR_NAMES = {v: k for k, v in COLOR_CODECS.items()}
DEPTH_CODECS = ("jpegxl", "rvl", "png", "rvl_lossy")
LOSSLESS_DEPTH_CODECS = ("jpegxl", "rvl", "png")
#: how rvl / rvl_lossy code their integers; auto: RVL planes + zstd for rvl, JPEG XL for rvl_lossy
DEPTH_ENTROPY = ("auto", "zstd", "none", "jpegxl")

FMT_RVL, FMT_RVL_ZSTD, FMT_PNG, FMT_FLOAT_ZSTD, FMT_JXL16 = 1, 2, 3, 4, 5

#: JPEG XL loses to RVL on sparse depth: with more hole/valid boundaries than this per pixel
#: (raster order) the depth goes to RVL+zstd instead. Measured (docs/classical.md): the dotted
#: F200 sources have 0.18-0.30 and JPEG XL is 1.5-2x RVL's size there; dense sensors have
#: under 0.02 and JPEG XL is 0.45-0.9x (about even on the upsampled iPhone depth).
JXL_MAX_HOLE_BOUNDARIES = 0.05
_DTYPE_U16, _DTYPE_F32 = 0, 1
_FLAG_MONO = 1

#: scales (units per metre) tried to store float32 metres as exact integers
FLOAT_EXACT_SCALES = (1000.0, 10000.0, 100000.0, 1000000.0)
#: scale used by the lossy mode for float32 metres (0.1 mm units)
FLOAT_LOSSY_SCALE = 10000.0

#: encoder effort for the slow colour codecs (a real-time setting)
AVIF_SPEED = 8
JPEGXL_EFFORT = 3

_HEADER = struct.Struct("<IIBBdBBBBBdIBddd")
_STREAM = struct.Struct("<IIB")
_FRAME_KEY = 1

DEFAULTS: Dict[str, Any] = {
    "color_codec": "jpeg",
    "color_quality": 90,
    "depth_codec": "jpegxl",
    "depth_entropy": "auto",
    # JPEG XL lossless effort for depth: 2 is within 3-7 % of effort 4's size at a tenth of its
    # encode time; 3 is larger than 2 on depth (measured, docs/classical.md)
    "depth_jxl_effort": 2,
    "depth_zstd_level": 6,
    "png_level": 6,
    "depth_max_error_mm": 1.0,
    "depth_rel_error": 0.002,
    # video colour (h264, hevc, av1): a keyframe every this many frames (0: only the first
    # and on request); a rate for the encoder's own rate control (0: quality mode)
    "keyframe_interval": 30,
    "color_bitrate_kbps": 0.0,
    "video_encoder": "auto",
    "video_threads": 2,
    # decoding: the largest frame a payload may declare (README, "Security")
    "max_pixels": DEFAULT_MAX_PIXELS,
}


#: The options of the classical backend (defaults: DEFAULTS). Ranges are the ones ``configure``
#: enforces; two have a gap a range cannot say (depth_rel_error: 0 or >= MIN_REL;
#: color_bitrate_kbps: 0 or >= 10), which ``configure`` refuses with the reason. Every option
#: is live: ``configure`` takes it between two frames.
OPTION_SCHEMA: Tuple[OptionSpec, ...] = (
    OptionSpec("color_codec", str, DEFAULTS["color_codec"],
               "Colour codec: an image codec (jpeg, webp, avif, jpegxl) or a temporal video codec (h264, hevc, "
               "av1; keyframes: keyframe_interval)", choices=tuple(COLOR_CODECS)),
    OptionSpec("color_quality", int, DEFAULTS["color_quality"],
               "Colour quality of the image codec (video codecs: mapped to their quantiser); higher = larger "
               "and better. Under rate control (target_kbps > 0) the controller chooses it per frame",
               range=(1, 100)),
    OptionSpec("depth_codec", str, DEFAULTS["depth_codec"],
               "Depth codec: jpegxl (lossless; sparse depth goes to RVL), rvl (lossless), png (lossless "
               "16-bit) or rvl_lossy (error-bounded: depth_max_error_mm, depth_rel_error)",
               choices=DEPTH_CODECS),
    OptionSpec("depth_entropy", str, DEFAULTS["depth_entropy"],
               "What codes rvl / rvl_lossy integers: auto (rvl: RVL planes + zstd; rvl_lossy: JPEG XL), zstd, "
               "none (plain RVL) or jpegxl (rvl_lossy only)", choices=DEPTH_ENTROPY),
    OptionSpec("depth_jxl_effort", int, DEFAULTS["depth_jxl_effort"],
               "JPEG XL effort for lossless depth (higher: slower, a little smaller)", range=(1, 9)),
    OptionSpec("depth_zstd_level", int, DEFAULTS["depth_zstd_level"], "zstd level of RVL+zstd depth",
               range=(1, 22)),
    OptionSpec("png_level", int, DEFAULTS["png_level"], "Compression level of 16-bit PNG depth", range=(0, 9)),
    OptionSpec("depth_max_error_mm", float, DEFAULTS["depth_max_error_mm"],
               "rvl_lossy: largest depth error in millimetres (plus depth_rel_error of the depth)",
               range=(0.1, 10000.0)),
    OptionSpec("depth_rel_error", float, DEFAULTS["depth_rel_error"],
               f"rvl_lossy: extra error allowed as a share of the depth; 0 or {MIN_REL:g}..{MAX_REL:g}",
               range=(0.0, MAX_REL)),
    OptionSpec("keyframe_interval", int, DEFAULTS["keyframe_interval"],
               "Video colour: a keyframe every this many frames; 0 = only the first and on request",
               range=(0, 100000)),
    OptionSpec("color_bitrate_kbps", float, DEFAULTS["color_bitrate_kbps"],
               "Video colour: bit rate for the video encoder's own rate control in kbit/s; 0 = quality mode "
               "(color_quality), else 10..1e6", range=(0.0, 1.0e6)),
    OptionSpec("video_encoder", str, DEFAULTS["video_encoder"],
               "Video colour: 'auto' or the name of an FFmpeg encoder of this PyAV build"),
    OptionSpec("video_threads", int, DEFAULTS["video_threads"], "Video colour: threads of the video coder",
               range=(1, 64), decode=True),
    OptionSpec("max_pixels", int, DEFAULTS["max_pixels"],
               "Largest frame (width x height) a payload may declare to be decoded", range=(1, HARD_MAX_PIXELS),
               encode=False, decode=True),
)

def _imagecodecs():
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise CodecError(f"the classical codec needs imagecodecs ({exc})") from None
    return imagecodecs


def color_codec_available(name: str) -> bool:
    if name in VIDEO_COLOR_CODECS:
        return video.video_codec_available(name)
    ic = _imagecodecs()
    attr = {"jpeg": "JPEG8", "webp": "WEBP", "avif": "AVIF", "jpegxl": "JPEGXL"}[name]
    codec = getattr(ic, attr, None)
    return bool(codec is not None and codec.available)


# --------------------------------------------------------------------------- colour

def _encode_color(img: np.ndarray, codec: str, quality: int) -> bytes:
    ic = _imagecodecs()
    mono = img.ndim == 2
    try:
        if codec == "jpeg":
            return bytes(ic.jpeg8_encode(img, level=quality, optimize=True))
        if codec == "webp":  # WebP has no grey mode: code the grey as RGB
            rgb = np.repeat(img[:, :, None], 3, axis=2) if mono else img
            return bytes(ic.webp_encode(np.ascontiguousarray(rgb), level=quality, lossless=False))
        if codec == "avif":  # 2-D input would be coded losslessly; ask for 4:0:0 instead
            if mono:
                rgb = np.repeat(img[:, :, None], 3, axis=2)
                return bytes(ic.avif_encode(rgb, level=quality, speed=AVIF_SPEED, pixelformat="400"))
            return bytes(ic.avif_encode(img, level=quality, speed=AVIF_SPEED))
        if codec == "jpegxl":
            return bytes(ic.jpegxl_encode(img, level=quality, effort=JPEGXL_EFFORT))
    except Exception as exc:
        raise CodecError(f"{codec} cannot code a {img.shape[1]}x{img.shape[0]} "
                         f"{'mono' if mono else 'RGB'} image: {exc}") from None
    raise CodecError(f"unknown colour codec {codec!r}")


def _decode_color(data: bytes, codec: str, w: int, h: int, mono: bool) -> np.ndarray:
    ic = _imagecodecs()
    # the size the inner stream states, checked before the library allocates for it
    readers = {"jpeg": jpeg_size, "webp": webp_size, "avif": avif_size, "jpegxl": jpegxl_size}
    if codec not in readers:
        raise CodecError(f"unknown colour codec {codec!r}")
    size = readers[codec](data)
    if size != (w, h):
        raise CodecError(f"colour stream is {size[0]}x{size[1]}, the header says {w}x{h}")
    if codec == "jpegxl":
        jpegxl_check_one_frame(data, "colour")
    try:
        if codec == "jpeg":
            img = ic.jpeg8_decode(data)
        elif codec == "webp":
            img = ic.webp_decode(data)
        elif codec == "avif":
            img = ic.avif_decode(data)
        elif codec == "jpegxl":
            img = ic.jpegxl_decode(data, index=0)  # the first frame only: a forged animation costs one
        else:
            raise CodecError(f"unknown colour codec {codec!r}")
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"colour {codec} stream cannot be decoded: {exc}") from None
    img = np.asarray(img)
    if mono and codec == "webp" and img.ndim == 3 and img.shape[2] == 3:  # grey coded as RGB
        img = np.rint(img.mean(axis=2)).astype(np.uint8)
    want = (h, w) if mono else (h, w, 3)
    if img.dtype != np.uint8 or img.shape != want:
        raise CodecError(f"colour {codec} stream decodes to {img.dtype} {img.shape}, "
                         f"the header says uint8 {want}")
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------- depth

def _float_to_units(depth: np.ndarray, valid: np.ndarray, lossless: bool):
    """float32 metres -> (uint units, scale) or (None, 0) where no integer grid is exact."""
    v = depth[valid].astype(np.float64)
    scales = FLOAT_EXACT_SCALES if lossless else (FLOAT_LOSSY_SCALE,)
    for scale in scales:
        units = np.rint(v * scale)
        if units.size and units.max() > 0xFFFFFFFF:
            continue
        if lossless:
            if units.size and (units.min() < 1 or not np.array_equal(
                    (units / scale).astype(np.float32), depth[valid])):
                continue
        else:
            np.maximum(units, 1, out=units)  # below 0.05 mm: the smallest unit
        out = np.zeros(depth.shape, dtype=np.int64)
        out[valid] = units.astype(np.int64)
        return out, scale
    if lossless:
        return None, 0.0
    raise CodecError(f"float32 depth beyond {0xFFFFFFFF / FLOAT_LOSSY_SCALE:.0f} m "
                     "cannot be coded by rvl_lossy")


def _encode_float_bits(depth: np.ndarray, valid: np.ndarray, level: int) -> bytes:
    ic = _imagecodecs()
    bits = np.where(valid, depth, np.float32(np.nan)).astype("<f4").view("<u4").ravel()
    planes = b"".join(((bits >> (8 * k)) & 255).astype(np.uint8).tobytes() for k in range(4))
    return bytes(ic.zstd_encode(planes, level=level))


def _decode_float_bits(data: bytes, npix: int) -> np.ndarray:
    ic = _imagecodecs()
    try:
        raw = ic.zstd_decode(data, out=4 * npix)
    except Exception as exc:
        raise CodecError(f"float depth stream is corrupted or truncated ({exc})") from None
    if len(raw) != 4 * npix:
        raise CodecError(f"float depth stream holds {len(raw)} bytes, expected {4 * npix}")
    p = np.frombuffer(raw, np.uint8).reshape(4, npix).astype(np.uint32)
    bits = p[0] | (p[1] << 8) | (p[2] << 16) | (p[3] << 24)
    depth = bits.astype("<u4").view("<f4").astype(np.float32)
    ok = np.isnan(depth) | (np.isfinite(depth) & (depth > 0))
    if not ok.all():
        raise CodecError("float depth stream corrupted: a value is not positive or NaN")
    return depth


def _depth_coder(opts: Dict[str, Any]) -> str:
    """What codes the depth integers: png, jpegxl, zstd (RVL planes + zstd) or none (plain RVL)."""
    codec, entropy = opts["depth_codec"], opts["depth_entropy"]
    if codec in ("png", "jpegxl"):
        return codec
    if entropy == "auto":
        return "jpegxl" if codec == "rvl_lossy" else "zstd"
    return entropy


def _hole_boundaries_per_pixel(coded: np.ndarray) -> float:
    """Hole/valid transitions in raster order per pixel: what makes JPEG XL lose to RVL."""
    valid = coded.ravel() > 0
    return np.count_nonzero(valid[1:] != valid[:-1]) / max(1, valid.size)


def _encode_jxl16(img: np.ndarray, effort: int) -> bytes:
    """16-bit grey as a bare JPEG XL lossless codestream."""
    try:
        data = bytes(_imagecodecs().jpegxl_encode(img, lossless=True, effort=effort))
    except Exception as exc:
        raise CodecError(f"JPEG XL cannot code {img.shape[1]}x{img.shape[0]} depth: {exc}") from None
    return jxl_bare_codestream(data)


def jxl_bare_codestream(data: bytes) -> bytes:
    """The codestream of a JPEG XL file, out of its ISO BMFF container if it has one.

    libjxl wraps 16-bit images in a container only to signal codestream level 10 (a 'jxll'
    box); the decoder does not need that box, and the bare codestream is the form whose size
    :func:`jpegxl_size` reads before decoding (and 49 bytes shorter).
    """
    if data[:2] == b"\xff\x0a":
        return data
    pos, whole, parts = 0, [], []
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size < 8 or pos + size > len(data):
            break
        if kind == b"jxlc":
            whole.append(data[pos + 8:pos + size])
        elif kind == b"jxlp":  # a codestream in parts, in order, each after a u32 part index
            parts.append(data[pos + 12:pos + size])
        pos += size
    streams = whole + ([b"".join(parts)] if parts else [])
    if pos != len(data) or len(streams) != 1 or streams[0][:2] != b"\xff\x0a":
        raise CodecError("JPEG XL container without exactly one codestream")
    return streams[0]


def _decode_jxl16(data: bytes, w: int, h: int, top: int) -> np.ndarray:
    size = jpegxl_size(data, "depth")
    if size != (w, h):
        raise CodecError(f"depth JPEG XL stream is {size[0]}x{size[1]}, the header says {w}x{h}")
    jpegxl_check_one_frame(data, "depth")
    try:
        # the first frame only: a forged animation cannot make the library decode more
        img = _imagecodecs().jpegxl_decode(data, index=0)
    except Exception as exc:
        raise CodecError(f"depth JPEG XL stream cannot be decoded: {exc}") from None
    return _coded_from_image(img, w, h, top, "JPEG XL")


def _coded_from_image(img, w: int, h: int, top: int, what: str) -> np.ndarray:
    """The coded integers of a decoded 16-bit depth image, checked against the header."""
    img = np.asarray(img)
    if img.dtype != np.uint16 or img.shape != (h, w):
        raise CodecError(f"depth {what} decodes to {img.dtype} {img.shape}, "
                         f"the header says uint16 {(h, w)}")
    coded = img.ravel().astype(np.int64)
    if coded.size and int(coded.max()) > top:
        raise CodecError(f"depth {what} holds values out of range")
    return coded


def _png_size(data: bytes) -> Tuple[int, int, int, int]:
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise CodecError("depth section is not a PNG stream")
    w, h = struct.unpack(">II", data[16:24])
    return w, h, data[24], data[25]


class ClassicalBackend(CodecBackend):
    """Image or video colour + JPEG XL / RVL / PNG / bounded-error depth."""

    name = "classical"
    option_schema = OPTION_SCHEMA

    def __init__(self, **options: Any):
        self._opts: Dict[str, Any] = dict(DEFAULTS)
        # one stream per backend instance: encoder side and decoder side state
        self._stream_id = int.from_bytes(os.urandom(4), "little")
        self._sequence = 0
        self._video_enc: Optional[video.VideoEncoder] = None
        self._keyframe_requested = False
        self._video_dec: Optional[video.VideoDecoder] = None
        self._dec_state: Optional[Tuple[int, int, Tuple]] = None  # (stream id, last seq, setup)
        self.configure(**options)

    # ---------------------------------------------------------------- options
    @property
    def model_id(self) -> str:
        return ""

    @property
    def options(self) -> Dict[str, Any]:
        return dict(self._opts)

    @property
    def quality(self) -> str:
        o = self._opts
        if o["color_codec"] in VIDEO_COLOR_CODECS and o["color_bitrate_kbps"]:
            s = f"{o['color_codec']}@{o['color_bitrate_kbps']:g}kbps,depth={o['depth_codec']}"
        else:
            s = f"{o['color_codec']}={o['color_quality']},depth={o['depth_codec']}"
        if o["depth_codec"] == "rvl_lossy":
            s += f"({o['depth_max_error_mm']:g}mm"
            if o["depth_rel_error"]:
                s += f"+{100 * o['depth_rel_error']:g}%"
            s += ")"
        return s

    def configure(self, **options: Any) -> None:
        new = dict(self._opts)
        new.update(check_options(OPTION_SCHEMA, options, self.name))  # names, types, ranges
        new["color_codec"] = _choice(new, "color_codec", tuple(COLOR_CODECS))
        if not color_codec_available(new["color_codec"]):
            lib = "PyAV" if new["color_codec"] in VIDEO_COLOR_CODECS else "imagecodecs"
            raise CodecError(f"colour codec {new['color_codec']!r} is not available in this "
                             f"{lib} build")
        new["color_quality"] = _int_in(new, "color_quality", 1, 100)
        new["keyframe_interval"] = _int_in(new, "keyframe_interval", 0, 100000)
        new["video_threads"] = _int_in(new, "video_threads", 1, 64)
        rate = _number(new, "color_bitrate_kbps")
        if not (rate == 0 or 10 <= rate <= 1e6):
            raise CodecError(f"color_bitrate_kbps must be 0 (quality mode) or in [10, 1e6], got {rate}")
        new["color_bitrate_kbps"] = rate
        enc = new["video_encoder"]
        if not isinstance(enc, str) or not enc:
            raise CodecError(f"video_encoder must be 'auto' or an FFmpeg encoder name, got {enc!r}")
        if enc != "auto" and new["color_codec"] in VIDEO_COLOR_CODECS:
            have = video.available_encoders(new["color_codec"])
            if enc not in have:
                raise CodecError(f"video encoder {enc!r} is not in this PyAV build for "
                                 f"{new['color_codec']}; available: {', '.join(have) or 'none'} "
                                 "(or 'auto')")
        new["depth_codec"] = _choice(new, "depth_codec", DEPTH_CODECS)
        new["depth_entropy"] = _choice(new, "depth_entropy", DEPTH_ENTROPY)
        if new["depth_codec"] == "rvl" and new["depth_entropy"] == "jpegxl":
            raise CodecError("depth_entropy=jpegxl codes rvl_lossy's integers; lossless JPEG XL "
                             "depth is depth_codec=jpegxl")
        new["depth_jxl_effort"] = _int_in(new, "depth_jxl_effort", 1, 9)
        new["depth_zstd_level"] = _int_in(new, "depth_zstd_level", 1, 22)
        new["png_level"] = _int_in(new, "png_level", 0, 9)
        err = _number(new, "depth_max_error_mm")
        if not 0.1 <= err <= 10000:
            raise CodecError(f"depth_max_error_mm must be in [0.1, 10000] mm, got {err}")
        rel = _number(new, "depth_rel_error")
        if not (rel == 0 or MIN_REL <= rel <= MAX_REL):
            raise CodecError(f"depth_rel_error must be 0 or in [{MIN_REL}, {MAX_REL}], got {rel}")
        new["depth_max_error_mm"], new["depth_rel_error"] = err, rel
        new["max_pixels"] = check_max_pixels(new["max_pixels"])
        self._opts = new
        self._update_video_encoder()

    # ---------------------------------------------------------------- temporal colour
    @property
    def temporal(self) -> bool:
        return self._opts["color_codec"] in VIDEO_COLOR_CODECS

    def request_keyframe(self) -> None:
        self._keyframe_requested = True

    def reset_decoder(self) -> None:
        self._video_dec, self._dec_state = None, None

    def _update_video_encoder(self) -> None:
        """Apply option changes to a running video encoder (or drop it: the next frame opens a
        new one, on a keyframe)."""
        enc, o = self._video_enc, self._opts
        if enc is None:
            return
        if (o["color_codec"] != enc.codec or o["video_encoder"] not in ("auto", enc.encoder_name)
                or o["keyframe_interval"] != enc.keyframe_interval or o["video_threads"] != enc.threads):
            self._video_enc = None
            return
        enc.set_bitrate(int(o["color_bitrate_kbps"] * 1000))
        enc.set_quality(o["color_quality"])

    def _encode_video(self, color: np.ndarray, stamp_s: Optional[float]) -> Tuple[bytes, bool]:
        o = self._opts
        h, w = color.shape[:2]
        mono = color.ndim == 2
        enc = self._video_enc
        if enc is None or (enc.width, enc.height, enc.mono) != (w, h, mono):
            # a new encoder (first frame, new settings or a new size) starts on a keyframe
            enc = self._video_enc = video.VideoEncoder(
                o["color_codec"], w, h, mono=mono, quality=o["color_quality"],
                bitrate_bps=int(o["color_bitrate_kbps"] * 1000),
                keyframe_interval=o["keyframe_interval"], encoder=o["video_encoder"],
                threads=o["video_threads"])
        force, self._keyframe_requested = self._keyframe_requested, False
        return enc.encode(color, timestamp_s=stamp_s, force_keyframe=force)

    def _decode_video(self, data: bytes, codec: str, w: int, h: int, mono: bool,
                      stream: Tuple[int, int, bool]) -> np.ndarray:
        stream_id, seq, key = stream
        setup = (codec, w, h, mono)
        state = self._dec_state
        if not key:
            if state is None:
                raise MissingReference(f"predicted {codec} frame {seq}: no keyframe decoded yet")
            last_stream, last_seq, last_setup = state
            if last_stream != stream_id or last_setup != setup:
                raise MissingReference(f"predicted {codec} frame {seq} of another stream or setup "
                                       "than the one being decoded")
            if seq != (last_seq + 1) & 0xFFFFFFFF:
                stale = (last_seq - seq) & 0xFFFFFFFF < (1 << 31)  # not newer: dropping loses nothing
                if not stale:  # a gap: the reference chain is broken until the next keyframe
                    self.reset_decoder()
                raise MissingReference(f"predicted {codec} frame {seq} after frame {last_seq}",
                                       stale=stale)
        elif state is not None and state[0] == stream_id and (state[1] - seq) & 0xFFFFFFFF < (1 << 31):
            # a duplicate, or an older keyframe arriving late: showing it would step back in time
            raise MissingReference(f"keyframe {seq} is not newer than frame {state[1]}", stale=True)
        if key or self._video_dec is None:
            self._video_dec = video.VideoDecoder(codec, w, h, mono=mono,
                                                 threads=self._opts["video_threads"])
        try:
            img = self._video_dec.decode(data)
        except CodecError:
            self.reset_decoder()
            raise
        self._dec_state = (stream_id, seq, setup)
        return img

    # ---------------------------------------------------------------- encode
    def encode(self, frame: RGBDFrame) -> EncodedRGBD:
        if not isinstance(frame, RGBDFrame):
            raise CodecError(f"encode takes an RGBDFrame, got {type(frame).__name__}")
        frame.validate()
        o = self._opts
        h, w = frame.depth.shape
        if h * w > rvl.MAX_PIXELS:
            raise CodecError(f"{w}x{h} is larger than the classical codec's {rvl.MAX_PIXELS} pixels")
        color = np.ascontiguousarray(frame.color)
        mono = color.ndim == 2
        # depth first: a depth error after the video encoder took the frame would leave the
        # next predicted frame referring to a frame that was never sent
        depth_bytes, dh, info = self._encode_depth(frame)
        if self.temporal:
            color_bytes, keyframe = self._encode_video(color, frame.stamp_s)
        else:
            color_bytes, keyframe = _encode_color(color, o["color_codec"], o["color_quality"]), True
        header = _HEADER.pack(
            w, h, _FLAG_MONO if mono else 0,
            _DTYPE_F32 if frame.depth.dtype == np.float32 else _DTYPE_U16,
            float(frame.depth_scale_per_m),
            COLOR_CODECS[o["color_codec"]], o["color_quality"],
            dh["fmt"], dh["bits"], dh["level"], dh["scale"], dh["max_value"],
            dh["quant"], dh["q_abs"], dh["q_rel"], dh["q_margin"])
        header += _STREAM.pack(self._stream_id, self._sequence, _FRAME_KEY if keyframe else 0)
        payload = container.pack(MAGIC, FORMAT_VERSION, header, [color_bytes, depth_bytes])
        info.update(overhead_bytes=len(payload) - len(color_bytes) - len(depth_bytes),
                    sequence=self._sequence)
        if self.temporal:
            info["video_encoder"] = self._video_enc.encoder_name
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        return EncodedRGBD(payload=payload, codec=self.name, model_id="", quality=self.quality,
                           bytes_rgb=len(color_bytes), bytes_depth=len(depth_bytes), info=info,
                           keyframe=keyframe)

    def _encode_depth(self, frame: RGBDFrame):
        o = self._opts
        depth = frame.depth
        lossy = o["depth_codec"] == "rvl_lossy"
        dh = dict(fmt=0, bits=16, level=0, scale=float(frame.depth_scale_per_m),
                  max_value=0xFFFF, quant=0, q_abs=0.0, q_rel=0.0, q_margin=0.0)
        info: Dict[str, Any] = {}
        if depth.dtype == np.uint16:
            units = depth.astype(np.int64)
            margin = 0.0
        else:
            valid = ~frame.hole_mask()
            units, scale = _float_to_units(depth, valid, lossless=not lossy)
            if units is None:  # no exact integer grid: keep the float32 bits
                dh.update(fmt=FMT_FLOAT_ZSTD, bits=32, level=o["depth_zstd_level"], scale=0.0,
                          max_value=0)
                info["depth_float"] = "float32 bits"
                return _encode_float_bits(depth, valid, o["depth_zstd_level"]), dh, info
            top = int(units.max()) if units.size else 0
            dh.update(scale=scale, max_value=0xFFFF if top <= 0xFFFF else 0xFFFFFFFF)
            info["depth_float"] = f"integer units of {1000.0 / scale:g} mm"
            margin = 0.5 * (1.0 + o["depth_rel_error"]) if lossy else 0.0
        coded = units
        if lossy:
            q_abs = o["depth_max_error_mm"] * dh["scale"] / 1000.0
            quant = get_quantiser(q_abs, o["depth_rel_error"], margin, dh["max_value"])
            valid = units > 0
            coded = np.zeros_like(units)
            coded[valid] = quant.quantise(units[valid]) + 1
            dh.update(quant=1, q_abs=q_abs, q_rel=o["depth_rel_error"], q_margin=margin)
            info["depth_levels"] = quant.levels
        top = int(coded.max()) if coded.size else 0
        bits = 16 if top <= 0xFFFF else 32
        dh["bits"] = bits
        coder = _depth_coder(o)
        if coder in ("png", "jpegxl") and bits == 32:
            info["depth_fallback"] = (f"values above 65535: RVL+zstd instead of 16-bit "
                                      f"{'PNG' if coder == 'png' else 'JPEG XL'}")
            coder = "zstd"
        if coder == "jpegxl" and _hole_boundaries_per_pixel(coded) > JXL_MAX_HOLE_BOUNDARIES:
            info["depth_fallback"] = "sparse depth: RVL+zstd instead of JPEG XL"
            coder = "zstd"
        if coder == "png":
            dh.update(fmt=FMT_PNG, level=o["png_level"])
            ic = _imagecodecs()
            return bytes(ic.png_encode(coded.astype(np.uint16), level=o["png_level"])), dh, info
        if coder == "jpegxl":
            dh.update(fmt=FMT_JXL16, level=o["depth_jxl_effort"])
            return _encode_jxl16(coded.astype(np.uint16), o["depth_jxl_effort"]), dh, info
        if coder == "none":
            dh["fmt"] = FMT_RVL
            return rvl.encode_values(coded.ravel()), dh, info
        dh.update(fmt=FMT_RVL_ZSTD, level=o["depth_zstd_level"])
        return rvl.encode_zstd(coded.ravel(), bits, o["depth_zstd_level"]), dh, info

    # ---------------------------------------------------------------- decode
    def decode(self, payload: bytes) -> RGBDFrame:
        version, header, sections = container.unpack(payload, MAGIC, READABLE_VERSIONS,
                                                     what="classical payload")
        stream_size = _STREAM.size if version >= 2 else 0
        if len(header) != _HEADER.size + stream_size or len(sections) != 2:
            raise CodecError("classical payload has a malformed header")
        (w, h, flags, dtype_id, depth_scale, color_id, color_q, fmt, bits, _level, scale,
         max_value, quant, q_abs, q_rel, q_margin) = _HEADER.unpack_from(header)
        stream_id, seq, frame_flags = (_STREAM.unpack_from(header, _HEADER.size) if stream_size
                                       else (0, 0, _FRAME_KEY))
        if frame_flags & ~_FRAME_KEY:
            raise CodecError(f"classical payload has unknown frame flags {frame_flags:#x}")
        check_frame_size(w, h, min(self._opts["max_pixels"], rvl.MAX_PIXELS), "classical payload")
        if flags & ~_FLAG_MONO:
            raise CodecError(f"classical payload has unknown flags {flags:#x}")
        if dtype_id not in (_DTYPE_U16, _DTYPE_F32):
            raise CodecError(f"classical payload has unknown depth dtype {dtype_id}")
        if not (math.isfinite(depth_scale) and depth_scale > 0) or (
                dtype_id == _DTYPE_F32 and depth_scale != 1.0):
            raise CodecError(f"classical payload has an invalid depth scale {depth_scale}")
        if color_id not in _COLOR_NAMES:
            raise CodecError(f"classical payload uses unknown colour codec id {color_id}")
        codec, mono = _COLOR_NAMES[color_id], bool(flags & _FLAG_MONO)
        if codec in VIDEO_COLOR_CODECS:
            color = self._decode_video(sections[0], codec, w, h, mono,
                                       (stream_id, seq, bool(frame_flags & _FRAME_KEY)))
        elif not frame_flags & _FRAME_KEY:
            raise CodecError(f"classical payload marks an intra {codec} frame as predicted")
        else:
            color = _decode_color(sections[0], codec, w, h, mono)
        depth = self._decode_depth(sections[1], w, h, dtype_id, depth_scale, fmt, bits, scale,
                                   max_value, quant, q_abs, q_rel, q_margin)
        return RGBDFrame(color=color, depth=depth, depth_scale_per_m=depth_scale)

    @staticmethod
    def _decode_depth(data, w, h, dtype_id, depth_scale, fmt, bits, scale, max_value,
                      quant, q_abs, q_rel, q_margin) -> np.ndarray:
        npix = w * h
        if fmt == FMT_FLOAT_ZSTD:
            if dtype_id != _DTYPE_F32:
                raise CodecError("classical payload: float depth format for uint16 depth")
            return _decode_float_bits(data, npix).reshape(h, w)
        if bits not in (16, 32):
            raise CodecError(f"classical payload declares {bits}-bit depth values")
        if max_value not in (0xFFFF, 0xFFFFFFFF) or (dtype_id == _DTYPE_U16 and max_value != 0xFFFF):
            raise CodecError(f"classical payload declares an invalid depth range {max_value}")
        if quant not in (0, 1):
            raise CodecError(f"classical payload uses unknown depth quantiser {quant}")
        if dtype_id == _DTYPE_U16 and scale != depth_scale:
            raise CodecError("classical payload: stored depth scale differs from the frame's")
        if dtype_id == _DTYPE_F32 and scale not in FLOAT_EXACT_SCALES + (FLOAT_LOSSY_SCALE,):
            raise CodecError(f"classical payload has an invalid float depth scale {scale}")
        quantiser = None
        if quant:
            try:
                quantiser = get_quantiser(q_abs, q_rel, q_margin, max_value)
            except CodecError as exc:
                raise CodecError(f"classical payload has invalid quantiser settings ({exc})") from None
            top = quantiser.levels
        else:
            top = max_value
        top = min(top, (1 << bits) - 1)
        if fmt == FMT_RVL:
            coded = rvl.decode_values(data, npix, top)
        elif fmt == FMT_RVL_ZSTD:
            coded = rvl.decode_zstd(data, npix, bits, top)
        elif fmt == FMT_PNG:
            if bits != 16:
                raise CodecError("classical payload: PNG depth must be 16-bit")
            pw, ph, pdepth, pcolor = _png_size(data)
            if (pw, ph) != (w, h) or pdepth != 16 or pcolor != 0:
                raise CodecError(f"depth PNG is {pw}x{ph} ({pdepth}-bit, type {pcolor}), "
                                 f"the header says {w}x{h} 16-bit grey")
            try:
                img = _imagecodecs().png_decode(data)
            except Exception as exc:
                raise CodecError(f"depth PNG stream cannot be decoded: {exc}") from None
            coded = _coded_from_image(img, w, h, top, "PNG")
        elif fmt == FMT_JXL16:
            if bits != 16:
                raise CodecError("classical payload: JPEG XL depth must be 16-bit")
            coded = _decode_jxl16(data, w, h, top)
        else:
            raise CodecError(f"classical payload uses unknown depth format {fmt}")
        units = coded
        if quantiser is not None:
            valid = coded > 0
            units = np.zeros_like(coded)
            units[valid] = quantiser.reconstruct(coded[valid] - 1)
        units = units.reshape(h, w)
        if dtype_id == _DTYPE_U16:
            return units.astype(np.uint16)
        depth = (units / scale).astype(np.float32)
        depth[units == 0] = np.nan
        return depth


def describe(payload: bytes) -> Dict[str, Any]:
    """The header of a classical payload as names and values (checksums checked; nothing decoded)."""
    version, header, sections = container.unpack(payload, MAGIC, READABLE_VERSIONS, what="classical payload")
    stream_size = _STREAM.size if version >= 2 else 0
    if len(header) != _HEADER.size + stream_size or len(sections) != 2:
        raise CodecError("classical payload has a malformed header")
    (w, h, flags, dtype_id, depth_scale, color_id, color_q, fmt, bits, level, scale, max_value, quant,
     q_abs, q_rel, q_margin) = _HEADER.unpack_from(header)
    out: Dict[str, Any] = {
        "format_version": version, "width": w, "height": h, "mono": bool(flags & _FLAG_MONO),
        "depth_dtype": {_DTYPE_U16: "uint16", _DTYPE_F32: "float32"}.get(dtype_id, dtype_id),
        "depth_scale_per_m": depth_scale, "color_codec": _COLOR_NAMES.get(color_id, color_id),
        "color_quality": color_q, "depth_format": fmt, "depth_bits": bits, "bounded_error": bool(quant),
        "color_bytes": len(sections[0]), "depth_bytes": len(sections[1])}
    if stream_size:
        stream_id, seq, frame_flags = _STREAM.unpack_from(header, _HEADER.size)
        out.update(stream_id=f"{stream_id:08x}", sequence=seq, keyframe=bool(frame_flags & _FRAME_KEY))
    else:
        out["keyframe"] = True
    return out


def _choice(opts: Dict[str, Any], key: str, allowed) -> str:
    value = opts[key]
    if not isinstance(value, str) or value.lower() not in allowed:
        raise CodecError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    return value.lower()


def _int_in(opts: Dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = opts[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str, float)):
        raise CodecError(f"{key} must be an integer in {lo}..{hi}; got {value!r}")
    try:
        as_float = float(value)
    except ValueError:
        raise CodecError(f"{key} must be an integer in {lo}..{hi}; got {value!r}") from None
    if not as_float.is_integer() or not lo <= as_float <= hi:
        raise CodecError(f"{key} must be an integer in {lo}..{hi}; got {value!r}")
    return int(as_float)


def _number(opts: Dict[str, Any], key: str) -> float:
    value = opts[key]
    if isinstance(value, bool):
        raise CodecError(f"{key} must be a number; got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CodecError(f"{key} must be a number; got {value!r}") from None
    if not math.isfinite(out):
        raise CodecError(f"{key} must be finite; got {value!r}")
    return out


register_backend("classical", ClassicalBackend)
