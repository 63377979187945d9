"""Building and reading the messages the bag tools write, as rosbags objects (CDR bytes).

The array <-> message conversions themselves live in ``rgbd_codec_ros.convert``
(shared with the nodes); this module only wraps them for rosbags' dataclasses,
which must be constructed with every field at once.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from rgbd_codec_ros import convert
from rgbd_codec_ros.bag import msgdefs


def _types():
    return msgdefs.typestore().types


def serialize(msg: Any, msgtype: str) -> bytes:
    return bytes(msgdefs.typestore().serialize_cdr(msg, msgtype))


def deserialize(data, msgtype: str) -> Any:
    """CDR bytes -> rosbags object; any failure of a damaged message becomes a ValueError."""
    try:
        return msgdefs.typestore().deserialize_cdr(data, msgtype)
    except Exception as exc:
        raise ValueError(f"cannot deserialize {msgtype} ({len(data)} bytes): "
                         f"{type(exc).__name__}: {exc}") from exc


def stream_fields(msg: Any) -> Tuple[bool, Optional[int]]:
    """(keyframe, sequence) of a CompressedRGBD. Format 1 messages predate both fields: they
    come from intra-only codecs, so every one is a keyframe, and they carry no sequence."""
    if int(msg.format_version) < 2 or not hasattr(msg, "keyframe"):
        return True, None
    return bool(msg.keyframe), int(msg.sequence)


def compressed_in_current_definition(data, stored_type: str, sequence: int) -> bytes:
    """CDR bytes of a CompressedRGBD recorded with an older definition (``stored_type``, from
    ``msgdefs.read_type``), re-serialized in the current one, so that nodes built with it can
    read them. Fields keep their values (``format_version`` too); a format 1 message becomes
    a keyframe numbered ``sequence``. A damaged message is a ValueError."""
    old = deserialize(data, stored_type)
    keyframe, old_sequence = stream_fields(old)
    names = [name for name, _ in msgdefs.typestore().fielddefs[msgdefs.COMPRESSED_RGBD][1]]
    values = {name: getattr(old, name) for name in names if hasattr(old, name)}
    values.setdefault("sequence", sequence if old_sequence is None else old_sequence)
    values.setdefault("keyframe", keyframe)
    try:
        msg = _types()[msgdefs.COMPRESSED_RGBD](**values)
    except TypeError as exc:    # a stored definition that lacks more than format 2 added
        raise ValueError(f"cannot convert {stored_type} to {msgdefs.COMPRESSED_RGBD}: {exc}") from exc
    return serialize(msg, msgdefs.COMPRESSED_RGBD)


def header(stamp_ns: int, frame_id: str = "") -> Any:
    t = _types()
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)


def copy_header(h: Any) -> Any:
    t = _types()
    return t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=int(h.stamp.sec), nanosec=int(h.stamp.nanosec)),
        frame_id=str(h.frame_id))


def image(arr: np.ndarray, encoding: str, hdr: Any) -> Any:
    """A rosbags sensor_msgs/Image holding ``arr`` (little-endian, unpadded)."""
    step, data = convert.array_to_image_data(arr, encoding)
    return _types()[msgdefs.IMAGE](
        header=hdr, height=int(arr.shape[0]), width=int(arr.shape[1]), encoding=encoding,
        is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))


def compressed(fields: dict, hdr: Any, depth_hdr: Any, color_info: Optional[Any] = None,
               depth_info: Optional[Any] = None) -> Any:
    """A rosbags CompressedRGBD from ``convert.compressed_fields`` output and headers."""
    values = dict(fields)
    values["payload"] = np.frombuffer(bytes(values["payload"]), np.uint8)
    return _types()[msgdefs.COMPRESSED_RGBD](
        header=hdr, depth_header=depth_hdr,
        color_camera_info=[color_info] if color_info is not None else [],
        depth_camera_info=[depth_info] if depth_info is not None else [],
        **values)


def restamp_camera_info(info: Any, hdr: Any) -> Any:
    """A copy of a CameraInfo whose stamp is that of ``hdr`` (frame_id kept)."""
    t = _types()
    h = t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=int(hdr.stamp.sec), nanosec=int(hdr.stamp.nanosec)),
        frame_id=str(info.header.frame_id))
    return t[msgdefs.CAMERA_INFO](
        header=h, height=info.height, width=info.width, distortion_model=info.distortion_model,
        d=np.asarray(info.d, dtype=np.float64), k=np.asarray(info.k, dtype=np.float64),
        r=np.asarray(info.r, dtype=np.float64), p=np.asarray(info.p, dtype=np.float64),
        binning_x=info.binning_x, binning_y=info.binning_y, roi=info.roi)
