"""The classical backend: a standard image codec for colour, RVL for depth.

Colour is coded with JPEG, WebP, AVIF or JPEG XL (imagecodecs); depth with
RVL (lossless, the project's own vectorised implementation, followed by zstd
by default), 16-bit PNG (lossless) or error-bounded quantisation + RVL
(lossy; holes stay exactly holes). The two streams are independent sections
of one checksummed container (:mod:`.container`), so ``bytes_rgb`` and
``bytes_depth`` are exact.

Payload = container with magic ``RDCL``, format version 1, the header below
and two sections (0: colour, 1: depth). Header, little-endian::

    width u32, height u32, flags u8 (bit 0: mono colour),
    depth dtype u8 (0: uint16, 1: float32 metres), depth_scale_per_m f64,
    colour codec u8, colour quality u8,
    depth format u8 (1: RVL, 2: RVL planes + zstd, 3: PNG 16-bit,
                     4: float32 bits, byte planes + zstd),
    depth bits u8 (16 or 32: width of the coded integers), level u8 (zstd/PNG),
    stored scale f64 (units per metre of the coded integers),
    max value u32 (largest coded depth unit), quantiser u8 (0: none, 1: bounded),
    quantiser floor f64 (units), relative error f64, margin f64

See docs/classical.md for the options, the precision of float32 depth and
measured figures.
"""
from __future__ import annotations

import math
import struct
from typing import Any, Dict, Tuple

import numpy as np

from . import container, rvl
from .base import (DEFAULT_MAX_PIXELS, CodecBackend, CodecError, EncodedRGBD, RGBDFrame, check_frame_size,
                   check_max_pixels, register_backend)
from .stream_sizes import avif_size, jpeg_size, jpegxl_size, webp_size
from .depth_quant import MAX_REL, MIN_REL, get_quantiser

MAGIC = b"RDCL"
FORMAT_VERSION = 1

COLOR_CODECS = {"jpeg": 1, "webp": 2, "avif": 3, "jpegxl": 4}
_COLOR_NAMES = {v: k for k, v in COLOR_CODECS.items()}
DEPTH_CODECS = ("rvl", "png", "rvl_lossy")
DEPTH_ENTROPY = ("zstd", "none")

FMT_RVL, FMT_RVL_ZSTD, FMT_PNG, FMT_FLOAT_ZSTD = 1, 2, 3, 4
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

DEFAULTS: Dict[str, Any] = {
    "color_codec": "jpeg",
    "color_quality": 90,
    "depth_codec": "rvl",
    "depth_entropy": "zstd",
    "depth_zstd_level": 6,
    "png_level": 6,
    "depth_max_error_mm": 1.0,
    "depth_rel_error": 0.002,
    # decoding: the largest frame a payload may declare (README, "Security")
    "max_pixels": DEFAULT_MAX_PIXELS,
}


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise CodecError(f"the classical codec needs imagecodecs ({exc})") from None
    return imagecodecs


def color_codec_available(name: str) -> bool:
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
    try:
        if codec == "jpeg":
            img = ic.jpeg8_decode(data)
        elif codec == "webp":
            img = ic.webp_decode(data)
        elif codec == "avif":
            img = ic.avif_decode(data)
        elif codec == "jpegxl":
            img = ic.jpegxl_decode(data)
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


def _png_size(data: bytes) -> Tuple[int, int, int, int]:
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise CodecError("depth section is not a PNG stream")
    w, h = struct.unpack(">II", data[16:24])
    return w, h, data[24], data[25]


class ClassicalBackend(CodecBackend):
    """JPEG / WebP / AVIF / JPEG XL colour + RVL / PNG / bounded-error RVL depth."""

    name = "classical"

    def __init__(self, **options: Any):
        self._opts: Dict[str, Any] = dict(DEFAULTS)
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
        s = f"{o['color_codec']}={o['color_quality']},depth={o['depth_codec']}"
        if o["depth_codec"] == "rvl_lossy":
            s += f"({o['depth_max_error_mm']:g}mm"
            if o["depth_rel_error"]:
                s += f"+{100 * o['depth_rel_error']:g}%"
            s += ")"
        return s

    def configure(self, **options: Any) -> None:
        new = dict(self._opts)
        for key, value in options.items():
            if key not in DEFAULTS:
                raise CodecError(f"classical codec has no option {key!r}; "
                                 f"options: {', '.join(sorted(DEFAULTS))}")
            new[key] = value
        new["color_codec"] = _choice(new, "color_codec", tuple(COLOR_CODECS))
        if not color_codec_available(new["color_codec"]):
            raise CodecError(f"colour codec {new['color_codec']!r} is not available in this "
                             "imagecodecs build")
        new["color_quality"] = _int_in(new, "color_quality", 1, 100)
        new["depth_codec"] = _choice(new, "depth_codec", DEPTH_CODECS)
        new["depth_entropy"] = _choice(new, "depth_entropy", DEPTH_ENTROPY)
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
        color_bytes = _encode_color(color, o["color_codec"], o["color_quality"])
        depth_bytes, dh, info = self._encode_depth(frame)
        header = _HEADER.pack(
            w, h, _FLAG_MONO if mono else 0,
            _DTYPE_F32 if frame.depth.dtype == np.float32 else _DTYPE_U16,
            float(frame.depth_scale_per_m),
            COLOR_CODECS[o["color_codec"]], o["color_quality"],
            dh["fmt"], dh["bits"], dh["level"], dh["scale"], dh["max_value"],
            dh["quant"], dh["q_abs"], dh["q_rel"], dh["q_margin"])
        payload = container.pack(MAGIC, FORMAT_VERSION, header, [color_bytes, depth_bytes])
        info.update(overhead_bytes=len(payload) - len(color_bytes) - len(depth_bytes))
        return EncodedRGBD(payload=payload, codec=self.name, model_id="", quality=self.quality,
                           bytes_rgb=len(color_bytes), bytes_depth=len(depth_bytes), info=info)

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
        if o["depth_codec"] == "png" and bits == 16:
            dh.update(fmt=FMT_PNG, level=o["png_level"])
            ic = _imagecodecs()
            return bytes(ic.png_encode(coded.astype(np.uint16), level=o["png_level"])), dh, info
        if o["depth_codec"] == "png":
            info["depth_fallback"] = "values above 65535: RVL+zstd instead of 16-bit PNG"
        if o["depth_entropy"] == "none" and o["depth_codec"] != "png":
            dh["fmt"] = FMT_RVL
            return rvl.encode_values(coded.ravel()), dh, info
        dh.update(fmt=FMT_RVL_ZSTD, level=o["depth_zstd_level"])
        return rvl.encode_zstd(coded.ravel(), bits, o["depth_zstd_level"]), dh, info

    # ---------------------------------------------------------------- decode
    def decode(self, payload: bytes) -> RGBDFrame:
        _, header, sections = container.unpack(payload, MAGIC, (FORMAT_VERSION,),
                                               what="classical payload")
        if len(header) != _HEADER.size or len(sections) != 2:
            raise CodecError("classical payload has a malformed header")
        (w, h, flags, dtype_id, depth_scale, color_id, color_q, fmt, bits, _level, scale,
         max_value, quant, q_abs, q_rel, q_margin) = _HEADER.unpack(header)
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
        color = _decode_color(sections[0], _COLOR_NAMES[color_id], w, h, bool(flags & _FLAG_MONO))
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
            if img.dtype != np.uint16 or img.shape != (h, w):
                raise CodecError(f"depth PNG decodes to {img.dtype} {img.shape}")
            coded = img.ravel().astype(np.int64)
            if int(coded.max()) > top:
                raise CodecError("depth PNG holds values out of range")
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
