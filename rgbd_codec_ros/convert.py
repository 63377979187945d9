"""Conversions between ROS image messages and the codec's arrays. No ROS imports.

Everything here is duck-typed: a message is anything with the fields of
``sensor_msgs/Image`` (or ``CompressedRGBD``), so the same code serves rclpy
message objects (``uint8[]`` is an ``array.array``) and rosbags dataclasses
(``uint8[]`` is a numpy array).

Codec form (see ``codec/base.py``): colour is uint8 HxWx3 RGB or HxW mono;
depth is uint16 integer units (0 = hole) or float32 metres (NaN = hole).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from rgbd_codec_ros.codec.base import CodecBackend, CodecError, EncodedRGBD, RGBDFrame, create_backend

#: CompressedRGBD.FORMAT_VERSION this code writes (the .msg constant; a test keeps the two
#: equal); it reads these (version 1 messages, from older bags, have no sequence/keyframe)
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
#: CompressedRGBD.DEPTH_INVALID_* constants
DEPTH_INVALID_ZERO = 0
DEPTH_INVALID_NAN = 1

#: encoding -> (numpy dtype, channels)
_LAYOUT = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")
IMAGE_ENCODINGS = COLOR_ENCODINGS + DEPTH_ENCODINGS

#: the largest side we accept from a message; protects against absurd headers
#: (a 4-byte corrupted width would otherwise ask for gigabytes)
MAX_SIDE = 1 << 15


def _layout(encoding: str) -> Tuple[np.dtype, int]:
    try:
        dtype, channels = _LAYOUT[encoding]
    except (KeyError, TypeError):
        raise CodecError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(IMAGE_ENCODINGS)}"
        ) from None
    return np.dtype(dtype), channels


def as_bytes(data: Any) -> bytes:
    """The bytes of a ``uint8[]`` field, whatever container holds them."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    try:
        return memoryview(data).tobytes()  # array.array, bytearray, memoryview
    except TypeError:
        return bytes(data)  # a list of ints


def _as_uint8_buffer(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data.reshape(-1)).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def _check_side(name: str, value: Any) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise CodecError(f"{name} must be an integer, got {value!r}") from None
    if v <= 0:
        raise CodecError(f"empty image: {name} is {v}")
    if v > MAX_SIDE:
        raise CodecError(f"{name} {v} is larger than the supported {MAX_SIDE}")
    return v


# --------------------------------------------------------------------------- Image <-> array

def image_to_array(msg: Any) -> np.ndarray:
    """The pixels of a ``sensor_msgs/Image`` as a new numpy array in native byte order.

    Shapes: HxW for one channel, HxWxC otherwise. Row padding (``step`` larger
    than a row) is skipped and ``is_bigendian`` honoured.
    """
    encoding = getattr(msg, "encoding", None)
    dtype, channels = _layout(encoding)
    height = _check_side("height", msg.height)
    width = _check_side("width", msg.width)
    row_bytes = width * channels * dtype.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise CodecError(
            f"{encoding} image of width {width} needs step >= {row_bytes} bytes, got step {step}")
    buf = _as_uint8_buffer(msg.data)
    needed = step * (height - 1) + row_bytes
    if buf.size < needed:
        raise CodecError(
            f"{encoding} image {width}x{height} with step {step} needs {step * height} bytes "
            f"of data, got {buf.size} (truncated?)")
    if buf.size > step * height:
        raise CodecError(
            f"{encoding} image {width}x{height} with step {step} needs {step * height} bytes "
            f"of data, got {buf.size} (height or step wrong?)")
    if step * height > buf.size:  # last row without its padding: pad so reshape works
        buf = np.concatenate([buf, np.zeros(step * height - buf.size, np.uint8)])
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    order = ">" if int(getattr(msg, "is_bigendian", 0)) else "<"
    wire = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
    arr = np.ascontiguousarray(rows).view(wire).reshape(height, width, channels)
    arr = arr.astype(dtype, copy=True)  # native order, and never a view of the message
    return arr[:, :, 0] if channels == 1 else arr


def array_to_image_data(arr: np.ndarray, encoding: str) -> Tuple[int, bytes]:
    """``(step, data)`` for an Image of ``encoding`` holding ``arr``; little-endian, no padding."""
    dtype, channels = _layout(encoding)
    if not isinstance(arr, np.ndarray):
        raise CodecError("image must be a numpy array")
    expected_ndim = 2 if channels == 1 else 3
    if arr.dtype != dtype or arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        shape = "HxW" if channels == 1 else f"HxWx{channels}"
        raise CodecError(f"{encoding} needs a {dtype} {shape} array, got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CodecError("empty image")
    wire = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
    return int(arr.shape[1]) * channels * dtype.itemsize, wire.tobytes()


def fill_image(msg: Any, arr: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Set the fields of an Image message (rclpy) from ``arr``; returns ``msg``."""
    step, data = array_to_image_data(arr, encoding)
    if header is not None:
        msg.header = header
    msg.height = int(arr.shape[0])
    msg.width = int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = step
    msg.data = data
    return msg


# --------------------------------------------------------------------------- colour

def color_to_codec(arr: np.ndarray, encoding: str) -> np.ndarray:
    """An image array of a colour ``encoding`` -> uint8 RGB HxWx3 (or HxW for mono8)."""
    if encoding not in COLOR_ENCODINGS:
        raise CodecError(
            f"unsupported colour encoding {encoding!r}; supported: {', '.join(COLOR_ENCODINGS)}")
    dtype, channels = _layout(encoding)
    ok = arr.dtype == dtype and (arr.ndim == 2 if channels == 1 else
                                 arr.ndim == 3 and arr.shape[2] == channels)
    if not ok:
        raise CodecError(f"{encoding} colour array has dtype {arr.dtype} and shape {arr.shape}")
    if encoding in ("rgb8", "mono8"):
        return np.ascontiguousarray(arr)
    if encoding == "bgr8":
        return np.ascontiguousarray(arr[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(arr[:, :, :3])
    return np.ascontiguousarray(arr[:, :, 2::-1])  # bgra8


def color_from_codec(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Codec colour (RGB HxWx3 or mono HxW) -> an array of ``encoding``; alpha comes back as 255."""
    if encoding not in COLOR_ENCODINGS:
        raise CodecError(
            f"unsupported colour encoding {encoding!r}; supported: {', '.join(COLOR_ENCODINGS)}")
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise CodecError(f"codec colour must be uint8 HxWx3 or HxW, got {arr.dtype} {arr.shape}")
    if encoding == "mono8":
        if arr.ndim == 3:
            raise CodecError("decoded colour has three channels but the message says mono8")
        return np.ascontiguousarray(arr)
    rgb = np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr
    if encoding == "rgb8":
        return np.ascontiguousarray(rgb)
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    if encoding == "rgba8":
        return np.concatenate([rgb, alpha], axis=2)
    return np.concatenate([rgb[:, :, ::-1], alpha], axis=2)  # bgra8


# --------------------------------------------------------------------------- depth

def depth_to_codec(arr: np.ndarray, encoding: str,
                   depth_scale_per_m: float = 1000.0) -> Tuple[np.ndarray, float]:
    """A depth array of ``encoding`` -> ``(depth, depth_scale_per_m)`` in codec form.

    16UC1 keeps its integer units (``depth_scale_per_m`` units per metre; REP 118
    says millimetres, 1000, but sensors in 0.1 mm exist); 32FC1 is metres (scale 1).
    """
    if encoding == "16UC1":
        if arr.dtype != np.uint16 or arr.ndim != 2:
            raise CodecError(f"16UC1 depth must be uint16 HxW, got {arr.dtype} {arr.shape}")
        scale = float(depth_scale_per_m)
        if not math.isfinite(scale) or scale <= 0:
            raise CodecError(f"depth_scale_per_m must be > 0, got {depth_scale_per_m}")
        return np.ascontiguousarray(arr), scale
    if encoding == "32FC1":
        if arr.dtype != np.float32 or arr.ndim != 2:
            raise CodecError(f"32FC1 depth must be float32 HxW, got {arr.dtype} {arr.shape}")
        return np.ascontiguousarray(arr), 1.0
    raise CodecError(
        f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}")


def depth_from_codec(depth: np.ndarray, encoding: str, depth_scale_per_m: float) -> np.ndarray:
    """Codec depth -> an array of ``encoding`` (16UC1: 0 = hole; 32FC1 metres: NaN = hole)."""
    if encoding not in DEPTH_ENCODINGS:
        raise CodecError(
            f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}")
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
        raise CodecError(f"codec depth must be HxW uint16 or float32, got {depth.dtype} {depth.shape}")
    if encoding == "16UC1":
        if depth.dtype == np.uint16:
            return np.ascontiguousarray(depth)
        units = np.where(np.isfinite(depth) & (depth > 0), depth * depth_scale_per_m, 0.0)
        return np.clip(np.rint(units), 0, 65535).astype(np.uint16)
    if depth.dtype == np.float32:
        out = depth.copy()
        out[~np.isfinite(out) | (out <= 0)] = np.nan
        return out
    metres = depth.astype(np.float32) / np.float32(depth_scale_per_m)
    metres[depth == 0] = np.nan
    return metres


# --------------------------------------------------------------------------- images -> frame

def images_to_frame(color_arr: np.ndarray, color_encoding: str, depth_arr: np.ndarray,
                    depth_encoding: str, depth_scale_per_m: float = 1000.0) -> RGBDFrame:
    """Image arrays -> a validated RGBDFrame (raises CodecError on anything a backend refuses)."""
    color = color_to_codec(color_arr, color_encoding)
    depth, scale = depth_to_codec(depth_arr, depth_encoding, depth_scale_per_m)
    frame = RGBDFrame(color=color, depth=depth, depth_scale_per_m=scale)
    frame.validate()
    return frame


def frame_to_images(frame: RGBDFrame, color_encoding: str,
                    depth_encoding: str) -> Tuple[np.ndarray, np.ndarray]:
    """A decoded frame -> ``(colour array, depth array)`` in the original encodings."""
    return (color_from_codec(frame.color, color_encoding),
            depth_from_codec(frame.depth, depth_encoding, frame.depth_scale_per_m))


# --------------------------------------------------------------------------- CompressedRGBD

def compressed_fields(encoded: EncodedRGBD, frame: RGBDFrame, color_encoding: str,
                      depth_encoding: str, sequence: int = 0) -> Dict[str, Any]:
    """The plain (non-message) fields of a CompressedRGBD for one coded frame.

    ``sequence`` is the sender's count of the frames it published (a receiver sees loss as
    gaps in it).

    Headers and camera infos are message objects and stay with the caller.
    ``payload`` is ``bytes`` (rclpy accepts it; rosbags wants
    ``np.frombuffer(payload, np.uint8)``).
    """
    if color_encoding not in COLOR_ENCODINGS:
        raise CodecError(f"unsupported colour encoding {color_encoding!r}")
    if depth_encoding not in DEPTH_ENCODINGS:
        raise CodecError(f"unsupported depth encoding {depth_encoding!r}")
    return {
        "format_version": FORMAT_VERSION,
        "codec": encoded.codec,
        "model_id": encoded.model_id,
        "quality": encoded.quality,
        "sequence": int(sequence) & 0xFFFFFFFF,
        "keyframe": bool(encoded.keyframe),
        "color_width": frame.width,
        "color_height": frame.height,
        "color_encoding": color_encoding,
        "depth_width": int(frame.depth.shape[1]),
        "depth_height": int(frame.depth.shape[0]),
        "depth_encoding": depth_encoding,
        "depth_scale_per_m": float(frame.depth_scale_per_m),
        "depth_invalid": DEPTH_INVALID_ZERO if depth_encoding == "16UC1" else DEPTH_INVALID_NAN,
        "payload": encoded.payload,
    }


def fill_compressed(msg: Any, fields: Dict[str, Any], header: Any = None,
                    depth_header: Any = None) -> Any:
    """Set ``fields`` (from ``compressed_fields``) and the headers on ``msg``; returns ``msg``."""
    for name, value in fields.items():
        setattr(msg, name, value)
    if header is not None:
        msg.header = header
    if depth_header is not None:
        msg.depth_header = depth_header
    return msg


def check_compressed(msg: Any) -> None:
    """Raise CodecError if the descriptive fields of a CompressedRGBD are inconsistent."""
    version = int(getattr(msg, "format_version", -1))
    if version not in READABLE_FORMAT_VERSIONS:
        raise CodecError(
            f"format_version {version} is not supported (this decoder reads "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}); update rgbd_codec_ros on the older side")
    if not msg.codec:
        raise CodecError("codec is empty; the sender did not say which codec made the payload")
    if msg.color_encoding not in COLOR_ENCODINGS:
        raise CodecError(f"unsupported color_encoding {msg.color_encoding!r}; "
                         f"supported: {', '.join(COLOR_ENCODINGS)}")
    if msg.depth_encoding not in DEPTH_ENCODINGS:
        raise CodecError(f"unsupported depth_encoding {msg.depth_encoding!r}; "
                         f"supported: {', '.join(DEPTH_ENCODINGS)}")
    for name in ("color_width", "color_height", "depth_width", "depth_height"):
        _check_side(name, getattr(msg, name))
    if (msg.color_width, msg.color_height) != (msg.depth_width, msg.depth_height):
        raise CodecError(
            f"colour {msg.color_width}x{msg.color_height} and depth "
            f"{msg.depth_width}x{msg.depth_height} differ in size; backends code registered pairs only")
    expected_invalid = DEPTH_INVALID_ZERO if msg.depth_encoding == "16UC1" else DEPTH_INVALID_NAN
    if int(msg.depth_invalid) != expected_invalid:
        raise CodecError(f"depth_invalid {msg.depth_invalid} does not fit {msg.depth_encoding} "
                         f"(expected {expected_invalid})")
    scale = float(msg.depth_scale_per_m)
    if not math.isfinite(scale) or scale <= 0:
        raise CodecError(f"depth_scale_per_m must be > 0, got {scale}")
    if msg.depth_encoding == "32FC1" and scale != 1.0:
        raise CodecError(f"32FC1 depth is in metres: depth_scale_per_m must be 1, got {scale}")
    if len(msg.payload) == 0:
        raise CodecError("payload is empty")


def decode_compressed(msg: Any, backends: Optional[Dict[str, CodecBackend]] = None
                      ) -> Tuple[RGBDFrame, str, str]:
    """Decode a CompressedRGBD -> ``(frame in codec form, color_encoding, depth_encoding)``.

    ``backends`` caches backend instances by codec name (pass the same dict on
    every call; a missing name is created with ``create_backend``). Raises
    CodecError with a clear reason for any inconsistent or corrupted message;
    never returns a frame whose sizes differ from what the message states.
    """
    check_compressed(msg)
    if backends is None:
        backends = {}
    backend = backends.get(msg.codec)
    if backend is None:
        backend = create_backend(msg.codec)  # CodecError names the known codecs
        backends[msg.codec] = backend
    try:
        frame = backend.decode(as_bytes(msg.payload))
    except CodecError:
        raise
    except Exception as exc:  # a backend bug must not look like success
        raise CodecError(f"{msg.codec} payload could not be decoded: {type(exc).__name__}: {exc}") from exc
    if not isinstance(frame, RGBDFrame):
        raise CodecError(f"{msg.codec} backend returned {type(frame).__name__}, not a frame")
    c_h, c_w = frame.color.shape[:2]
    d_h, d_w = frame.depth.shape[:2]
    if (c_w, c_h) != (msg.color_width, msg.color_height):
        raise CodecError(f"payload holds colour {c_w}x{c_h} but the message says "
                         f"{msg.color_width}x{msg.color_height}")
    if (d_w, d_h) != (msg.depth_width, msg.depth_height):
        raise CodecError(f"payload holds depth {d_w}x{d_h} but the message says "
                         f"{msg.depth_width}x{msg.depth_height}")
    if msg.color_encoding == "mono8" and frame.color.ndim != 2:
        raise CodecError("payload holds a 3-channel colour image but the message says mono8")
    if msg.color_encoding != "mono8" and frame.color.ndim != 3:
        raise CodecError(f"payload holds a mono image but the message says {msg.color_encoding}")
    expected_depth = np.uint16 if msg.depth_encoding == "16UC1" else np.float32
    if frame.depth.dtype != expected_depth:
        raise CodecError(f"payload holds {frame.depth.dtype} depth but the message says "
                         f"{msg.depth_encoding}")
    return frame, msg.color_encoding, msg.depth_encoding


# --------------------------------------------------------------------------- calibration schedule
def camera_info_key(info: Any) -> tuple:
    """What identifies a calibration (everything but the stamp, which changes every frame)."""
    roi = info.roi
    return (str(info.header.frame_id), int(info.height), int(info.width), str(info.distortion_model),
            tuple(np.asarray(info.d, dtype=float).tolist()), tuple(np.asarray(info.k, dtype=float).tolist()),
            tuple(np.asarray(info.r, dtype=float).tolist()), tuple(np.asarray(info.p, dtype=float).tolist()),
            int(info.binning_x), int(info.binning_y),
            (int(roi.x_offset), int(roi.y_offset), int(roi.height), int(roi.width), bool(roi.do_rectify)))


class CameraInfoSchedule:
    """When calibration rides along a CompressedRGBD: every ``period`` frames (0 = never
    periodically) and whenever it changes. Shared by the encoder node and ``bag compress``."""

    def __init__(self, period: int):
        self.period = int(period)
        self._sent_keys: tuple = (None, None)
        self._since = 0   # frames sent since the infos were last attached

    def infos_for_frame(self, color_info: Any, depth_info: Any) -> tuple:
        """(colour info, depth info) to attach to this frame, or (None, None)."""
        keys = tuple(None if i is None else camera_info_key(i) for i in (color_info, depth_info))
        due = keys != self._sent_keys or (self.period > 0 and self._since >= self.period - 1)
        if not due or keys == (None, None):
            self._since += 1
            return None, None
        self._sent_keys = keys
        self._since = 0
        return color_info, depth_info

