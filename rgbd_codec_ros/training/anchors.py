"""Classical anchors for the RD evaluation: one colour codec + one depth codec, named ``COLOUR+DEPTH``.

Colour (8-bit RGB, imagecodecs):
  ``jpeg``    libjpeg(-turbo) baseline, quality sweep 15..95 (4:2:0);
  ``avif``    AV1 still image, quality sweep 15..90 at speed 6;
  ``jpegxl``  JPEG XL (VarDCT), Butteraugli distance sweep 12..1.3 (effort 7).
Depth (the 16-bit integer units of the input; float metres are first rounded to millimetres):
  ``png16``           lossless 16-bit PNG (one point);
  ``jpegxl16``        lossless 16-bit JPEG XL (modular) (one point);
  ``jpegxl16-lossy``  lossy 16-bit JPEG XL, distance sweep 12..0.25. Holes are kept exact the
                      way the learned codec keeps them: they are filled smoothly before coding
                      (no bits spent on hole edges) and restored from a losslessly coded mask,
                      with the learned codec's own mask coder (so the comparison is of the depth
                      values alone); a valid pixel never decodes to 0. The mask bytes count as
                      depth bytes.

Settings of a pair: with a lossless depth codec, the colour sweep; with two lossy codecs, the
two sweeps paired point by point (low with low, high with high).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from rgbd_codec_ros.codec.learned.depth import decode_mask, encode_mask, fill_holes


class AnchorError(ValueError):
    pass


@dataclass(frozen=True)
class _Codec:
    name: str
    sweep: Tuple[Optional[float], ...]          # (None,) for lossless
    encode: Callable[[np.ndarray, Optional[float]], bytes]
    decode: Callable[[bytes], np.ndarray]


def _ic():
    import imagecodecs
    return imagecodecs


# ----------------------------------------------------------------- colour
def _jpeg_enc(rgb, q):
    return _ic().jpeg8_encode(rgb, level=int(q))


def _avif_enc(rgb, q):
    return _ic().avif_encode(rgb, level=int(q), speed=6, numthreads=1)


def _jxl_enc(rgb, q):
    return _ic().jpegxl_encode(rgb, distance=float(q), effort=7, numthreads=1)


COLOUR_CODECS: Dict[str, _Codec] = {
    "jpeg": _Codec("jpeg", (15, 30, 50, 70, 85, 95), _jpeg_enc, lambda b: _ic().jpeg8_decode(b)),
    "avif": _Codec("avif", (15, 30, 45, 60, 75, 90), _avif_enc, lambda b: _ic().avif_decode(b)),
    "jpegxl": _Codec("jpegxl", (12.0, 8.0, 5.0, 3.0, 2.0, 1.3), _jxl_enc,
                     lambda b: _ic().jpegxl_decode(b)),
}


# ----------------------------------------------------------------- depth
def _png16_enc(d, _q):
    return _ic().png_encode(d, level=6)


def _jxl16_lossless_enc(d, _q):
    return _ic().jpegxl_encode(d, lossless=True, effort=7, numthreads=1)


def jxl16_lossy_encode(d: np.ndarray, distance: float, effort: int = 7) -> bytes:
    """Lossy 16-bit JPEG XL of the depth values, holes filled, + the losslessly coded hole mask
    (the ``jpegxl16-lossy`` anchor; benchmarks/bench_lossy_depth.py sweeps its effort too)."""
    valid = d != 0
    filled = np.clip(np.round(fill_holes(d.astype(np.float32), valid)), 1, 65535).astype(np.uint16) \
        if valid.any() else np.zeros_like(d)
    body = _ic().jpegxl_encode(filled, distance=float(distance), effort=effort, numthreads=1)
    mask = encode_mask(valid)
    h, w = d.shape
    return (h.to_bytes(4, "little") + w.to_bytes(4, "little") + len(mask).to_bytes(4, "little")
            + mask + body)


def jxl16_lossy_decode(data: bytes) -> np.ndarray:
    h, w, n = (int.from_bytes(data[i:i + 4], "little") for i in (0, 4, 8))
    valid = decode_mask(data[12:12 + n], h, w)
    d = np.asarray(_ic().jpegxl_decode(data[12 + n:]))
    if d.ndim == 3:
        d = d[:, :, 0]
    d = d.astype(np.uint16)
    return np.where(valid, np.maximum(d, 1), 0).astype(np.uint16)


DEPTH_CODECS: Dict[str, _Codec] = {
    "png16": _Codec("png16", (None,), _png16_enc, lambda b: _ic().png_decode(b)),
    "jpegxl16": _Codec("jpegxl16", (None,), _jxl16_lossless_enc, lambda b: _ic().jpegxl_decode(b)),
    "jpegxl16-lossy": _Codec("jpegxl16-lossy", (12.0, 6.0, 3.0, 1.5, 0.6, 0.25), jxl16_lossy_encode,
                             jxl16_lossy_decode),
}


def is_anchor(name: str) -> bool:
    parts = name.split("+")
    return len(parts) == 2 and parts[0] in COLOUR_CODECS and parts[1] in DEPTH_CODECS


def anchor_names() -> List[str]:
    return [f"{c}+{d}" for c in COLOUR_CODECS for d in DEPTH_CODECS]


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "lossless"
    return f"{v:g}"


class AnchorPair:
    """A colour anchor + a depth anchor, coded as two separate streams."""

    def __init__(self, name: str):
        parts = name.split("+")
        if len(parts) != 2 or parts[0] not in COLOUR_CODECS or parts[1] not in DEPTH_CODECS:
            if name in COLOUR_CODECS:
                raise AnchorError(f"anchor {name!r} codes colour only: combine it with a depth "
                                  f"anchor, e.g. {name}+png16 ({', '.join(DEPTH_CODECS)})")
            if name in DEPTH_CODECS:
                raise AnchorError(f"anchor {name!r} codes depth only: combine it with a colour "
                                  f"anchor, e.g. jpeg+{name} ({', '.join(COLOUR_CODECS)})")
            raise AnchorError(f"unknown anchor {name!r}: use COLOUR+DEPTH with COLOUR in "
                              f"{', '.join(COLOUR_CODECS)} and DEPTH in {', '.join(DEPTH_CODECS)}")
        self.name = name
        self.colour, self.depth = COLOUR_CODECS[parts[0]], DEPTH_CODECS[parts[1]]

    def default_settings(self) -> List[Tuple[float, Optional[float]]]:
        cs, dsw = self.colour.sweep, self.depth.sweep
        if dsw == (None,):
            return [(c, None) for c in cs]
        n = min(len(cs), len(dsw))
        return [(cs[i], dsw[i]) for i in range(n)]

    def parse_setting(self, text: str) -> Tuple[float, Optional[float]]:
        """'80' (lossless depth) or '80:2.0' (colour:depth)."""
        parts = str(text).split(":")
        try:
            c = float(parts[0])
            d = float(parts[1]) if len(parts) > 1 else None
        except ValueError:
            raise AnchorError(f"--quality {text!r} for {self.name}: expected COLOUR[:DEPTH] numbers") from None
        if len(parts) > 2:
            raise AnchorError(f"--quality {text!r}: expected COLOUR[:DEPTH]")
        if d is None and self.depth.sweep != (None,):
            raise AnchorError(f"--quality {text!r}: {self.name} has a lossy depth codec; give "
                              "COLOUR:DEPTH, e.g. 70:1.0")
        if d is not None and self.depth.sweep == (None,):
            d = None
        return c, d

    @staticmethod
    def label(setting: Tuple[float, Optional[float]]) -> str:
        c, d = setting
        return _fmt(c) if d is None else f"{_fmt(c)}:{_fmt(d)}"

    def encode(self, color: np.ndarray, depth_u16: np.ndarray, setting) -> Tuple[bytes, bytes]:
        c, d = setting
        return (bytes(self.colour.encode(np.ascontiguousarray(color), c)),
                bytes(self.depth.encode(np.ascontiguousarray(depth_u16), d)))

    def decode(self, b_rgb: bytes, b_depth: bytes) -> Tuple[np.ndarray, np.ndarray]:
        color = np.asarray(self.colour.decode(b_rgb))
        depth = np.asarray(self.depth.decode(b_depth))
        if depth.ndim == 3:
            depth = depth[:, :, 0]
        return color, depth.astype(np.uint16)
