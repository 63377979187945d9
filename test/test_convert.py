"""rgbd_codec_ros.convert: Image <-> numpy, colour/depth conventions, CompressedRGBD fields.

Messages are plain attribute objects and rosbags dataclasses here (the bag
tools' case); the ROS tests exercise the same code with rclpy messages.
"""
from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from rgbd_codec_ros import convert
from rgbd_codec_ros.codec.base import CodecError, create_backend


def image_msg(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, as_type=bytes,
              stamp=(12, 345), frame_id="cam"):
    """A duck-typed sensor_msgs/Image holding ``arr``, with ``pad`` bytes of row padding."""
    h, w = arr.shape[:2]
    a = arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<")) if arr.dtype.itemsize > 1 else arr
    rows = a.reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    raw = padded.tobytes()
    data = {bytes: raw, array.array: array.array("B", raw), np.ndarray: np.frombuffer(raw, np.uint8),
            list: list(raw)}[as_type]
    header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp[0], nanosec=stamp[1]), frame_id=frame_id)
    return SimpleNamespace(header=header, height=h, width=w, encoding=encoding,
                           is_bigendian=int(bigendian), step=padded.shape[1], data=data)


def random_image(encoding: str, h=7, w=5, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype, ch = convert._LAYOUT[encoding]
    shape = (h, w) if ch == 1 else (h, w, ch)
    if np.dtype(dtype) == np.float32:
        return rng.uniform(0.1, 9.0, shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def as_message_kind(plain, kind: str, store):
    """The same Image as a plain object, an rclpy message or a rosbags dataclass."""
    if kind == "plain":
        return plain
    raw = np.frombuffer(convert.as_bytes(plain.data), np.uint8)
    if kind == "rclpy":
        import rgbd_codec_ros.ros  # noqa: F401  (finds the installed generated messages)
        from sensor_msgs.msg import Image

        msg = Image(height=plain.height, width=plain.width, encoding=plain.encoding,
                    is_bigendian=plain.is_bigendian, step=plain.step)
        msg.data = raw.tobytes()
        return msg
    T = store.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="f")
    return T["sensor_msgs/msg/Image"](header=header, height=plain.height, width=plain.width,
                                      encoding=plain.encoding, is_bigendian=plain.is_bigendian,
                                      step=plain.step, data=raw.copy())


@pytest.mark.parametrize("kind", ["plain", "rclpy", "rosbags"])
@pytest.mark.parametrize("encoding", convert.IMAGE_ENCODINGS)
@pytest.mark.parametrize("pad,bigendian,as_type", [
    (0, False, bytes), (3, False, array.array), (8, True, np.ndarray), (1, True, list)])
def test_image_to_array_reads_every_layout(encoding, pad, bigendian, as_type, kind, rosbags_types):
    arr = random_image(encoding, seed=pad)
    msg = as_message_kind(image_msg(arr, encoding, pad=pad, bigendian=bigendian, as_type=as_type), kind,
                          rosbags_types)
    out = convert.image_to_array(msg)
    assert out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("encoding", convert.IMAGE_ENCODINGS)
def test_array_to_image_data_round_trips(encoding):
    arr = random_image(encoding, h=3, w=11, seed=4)
    step, data = convert.array_to_image_data(arr, encoding)
    msg = SimpleNamespace(height=3, width=11, encoding=encoding, is_bigendian=0, step=step, data=data)
    assert step * 3 == len(data)
    np.testing.assert_array_equal(convert.image_to_array(msg), arr)


def test_fill_image_writes_all_fields():
    msg = SimpleNamespace(header=None, height=0, width=0, encoding="", is_bigendian=1, step=0, data=b"")
    depth = random_image("16UC1", h=4, w=6)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2), frame_id="d")
    convert.fill_image(msg, depth, "16UC1", header=header)
    assert (msg.height, msg.width, msg.step, msg.is_bigendian, msg.header) == (4, 6, 12, 0, header)
    np.testing.assert_array_equal(convert.image_to_array(msg), depth)


def test_image_to_array_rejects_bad_images_and_copies():
    arr = random_image("rgb8")
    msg = image_msg(arr, "rgb8", as_type=np.ndarray)
    out = convert.image_to_array(msg)
    out[0, 0, 0] ^= 0xFF  # the result must be a copy, never a view of the message buffer
    np.testing.assert_array_equal(convert.image_to_array(msg), arr)


@pytest.mark.parametrize("change,needle", [
    (dict(encoding="yuv422"), "unsupported image encoding 'yuv422'"),
    (dict(width=0), "empty image"),
    (dict(height=0), "empty image"),
    (dict(step=4), "needs step >= 15"),
    (dict(data=b"\x00" * 10), "got 10 \\(truncated"),
    (dict(data=b"\x00" * 1000), "got 1000 \\(height or step wrong"),
    (dict(width=1 << 20, step=3 << 20), "larger than"),
])
def test_image_to_array_rejects_bad_images(change, needle):
    msg = image_msg(random_image("rgb8"), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(CodecError, match=needle):
        convert.image_to_array(msg)


def test_array_to_image_data_rejects_wrong_arrays():
    with pytest.raises(CodecError, match="16UC1 needs a uint16"):
        convert.array_to_image_data(np.zeros((2, 2), np.uint8), "16UC1")
    with pytest.raises(CodecError, match="rgba8 needs a uint8 HxWx4"):
        convert.array_to_image_data(np.zeros((2, 2, 3), np.uint8), "rgba8")
    with pytest.raises(CodecError, match="unsupported image encoding '8UC1'"):
        convert.array_to_image_data(np.zeros((2, 2), np.uint8), "8UC1")
    with pytest.raises(CodecError, match="empty image"):
        convert.array_to_image_data(np.zeros((0, 2), np.uint8), "mono8")


def test_colour_conversions():
    rgb = random_image("rgb8", seed=1)
    bgr = rgb[:, :, ::-1]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    bgra = np.concatenate([bgr, np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=2)
    for encoding, arr in (("rgb8", rgb), ("bgr8", bgr), ("rgba8", rgba), ("bgra8", bgra)):
        coded = convert.color_to_codec(arr, encoding)
        np.testing.assert_array_equal(coded, rgb)
        assert coded.flags.c_contiguous
        back = convert.color_from_codec(coded, encoding)
        assert back.shape == arr.shape
        np.testing.assert_array_equal(back[:, :, :3], arr[:, :, :3])
        if back.shape[2] == 4:
            assert (back[:, :, 3] == 255).all()
    mono = random_image("mono8")
    np.testing.assert_array_equal(convert.color_from_codec(convert.color_to_codec(mono, "mono8"), "mono8"), mono)
    with pytest.raises(CodecError, match="unsupported colour encoding '16UC1'"):
        convert.color_to_codec(random_image("16UC1"), "16UC1")
    with pytest.raises(CodecError, match="three channels but the message says mono8"):
        convert.color_from_codec(rgb, "mono8")
    with pytest.raises(CodecError, match="rgb8 colour array has dtype uint8 and shape"):
        convert.color_to_codec(mono, "rgb8")


def test_depth_conversions():
    d16 = random_image("16UC1")
    d16[0, :] = 0
    depth, scale = convert.depth_to_codec(d16, "16UC1")
    assert scale == 1000.0 and depth.dtype == np.uint16
    assert convert.depth_to_codec(d16, "16UC1", 10000)[1] == 10000.0
    d32 = random_image("32FC1")
    d32[1, 1] = np.nan
    depth, scale = convert.depth_to_codec(d32, "32FC1", 1000)  # 32FC1 is metres whatever is asked
    assert scale == 1.0 and depth.dtype == np.float32
    np.testing.assert_array_equal(convert.depth_from_codec(depth, "32FC1", 1.0), d32)
    # across encodings: mm -> metres with NaN holes, and back
    metres = convert.depth_from_codec(d16, "32FC1", 1000.0)
    assert np.isnan(metres[0]).all() and np.allclose(metres[1:], d16[1:] / 1000.0)
    np.testing.assert_array_equal(convert.depth_from_codec(metres, "16UC1", 1000.0), d16)
    with pytest.raises(CodecError, match="depth_scale_per_m must be > 0"):
        convert.depth_to_codec(d16, "16UC1", 0)
    with pytest.raises(CodecError, match="unsupported depth encoding 'mono16'"):
        convert.depth_to_codec(d16, "mono16")
    with pytest.raises(CodecError, match="16UC1 depth must be uint16"):
        convert.depth_to_codec(d32, "16UC1")


def test_format_version_matches_the_message_definition():
    from conftest import MSG_FILE
    text = MSG_FILE.read_text()
    assert f"uint16 FORMAT_VERSION={convert.FORMAT_VERSION}" in text
    assert f"uint8 DEPTH_INVALID_ZERO={convert.DEPTH_INVALID_ZERO}" in text
    assert f"uint8 DEPTH_INVALID_NAN={convert.DEPTH_INVALID_NAN}" in text


# ---------------------------------------------------------------- CompressedRGBD


def new_compressed(store, fields, color_hdr, depth_hdr, info=None):
    """A CompressedRGBD as the bag tools make it (rosbags dataclass, numpy payload)."""
    T = store.types["rgbd_codec_ros/msg/CompressedRGBD"]
    values = dict(fields)
    values["payload"] = np.frombuffer(bytes(values["payload"]), np.uint8)
    return T(header=color_hdr, depth_header=depth_hdr, color_camera_info=[info] if info else [],
             depth_camera_info=[], **values)


def header(store, sec, nsec, frame_id):
    return store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)


def real_pair(data_dir, source="realsense_f200_apc", index=0):
    folder = data_dir / source
    names = sorted(p.name for p in (folder / "color").iterdir())
    color = np.asarray(PILImage.open(folder / "color" / names[index]).convert("RGB"))
    depth_name = names[index].rsplit(".", 1)[0] + ".png"
    depth = np.asarray(PILImage.open(folder / "depth" / depth_name)).astype(np.uint16)
    return color, depth


def encode_msg(store, backend, color, depth, color_encoding="bgr8", depth_encoding="16UC1", scale=1000.0):
    """Image messages -> arrays -> frame -> payload -> CompressedRGBD, as the encoder node does it."""
    cmsg = image_msg(convert.color_from_codec(color, color_encoding), color_encoding, pad=2)
    dmsg = image_msg(depth, depth_encoding)
    frame = convert.images_to_frame(convert.image_to_array(cmsg), color_encoding,
                                    convert.image_to_array(dmsg), depth_encoding, scale)
    fields = convert.compressed_fields(backend.encode(frame), frame, color_encoding, depth_encoding)
    return new_compressed(store, fields, header(store, 100, 5, "color_optical"),
                          header(store, 100, 7, "depth_optical"))


def test_compressed_round_trip_through_cdr(rosbags_types, data_dir):
    """fields -> CDR bytes -> decode: real frame, real classical bitstream, rosbags message type."""
    color, depth = real_pair(data_dir)
    msg = encode_msg(rosbags_types, create_backend("classical"), color, depth, scale=10000.0)
    assert msg.codec == "classical" and msg.format_version == convert.FORMAT_VERSION == 2 and msg.depth_invalid == 0
    assert msg.keyframe and msg.sequence == 0
    back = rosbags_types.deserialize_cdr(rosbags_types.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    assert (back.header.stamp.sec, back.header.stamp.nanosec, back.header.frame_id) == (100, 5, "color_optical")
    frame, cenc, denc = convert.decode_compressed(back)
    assert (cenc, denc) == ("bgr8", "16UC1") and frame.depth_scale_per_m == 10000.0
    assert frame.color.shape == color.shape and frame.depth.shape == depth.shape
    np.testing.assert_array_equal(frame.depth == 0, depth == 0)  # holes exactly where they were
    color_out, depth_out = convert.frame_to_images(frame, cenc, denc)
    assert color_out.shape == color.shape and depth_out.dtype == np.uint16


def test_compressed_32fc1_mono(rosbags_types, data_dir):
    color, depth = real_pair(data_dir, "osd_kinect_pcl_mosd", 3)
    mono = np.asarray(PILImage.fromarray(color).convert("L"))
    metres = np.where(depth > 0, depth / np.float32(1000), np.nan).astype(np.float32)
    msg = encode_msg(rosbags_types, create_backend("classical"), mono, metres, "mono8", "32FC1")
    assert msg.depth_invalid == 1 and msg.depth_scale_per_m == 1.0
    frame, cenc, denc = convert.decode_compressed(msg)
    assert (cenc, denc) == ("mono8", "32FC1")
    assert frame.color.ndim == 2 and frame.depth.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(frame.depth), np.isnan(metres))


@pytest.fixture(scope="module")
def good_msg(data_dir):
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    from conftest import MSG_FILE
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(MSG_FILE.read_text(), "rgbd_codec_ros/msg/CompressedRGBD"))
    color, depth = real_pair(data_dir, "realsense_d435_taeyoung", 0)
    msg = encode_msg(store, create_backend("classical"), color[:120, :160].copy(), depth[:120, :160].copy())
    convert.decode_compressed(msg)  # it is good
    return store, msg


def mutated(good, **changes):
    store, msg = good
    copy = store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    for key, value in changes.items():
        setattr(copy, key, value)
    return copy


@pytest.mark.parametrize("changes,needle", [
    (dict(format_version=3), "format_version 3 is not supported"),
    (dict(codec="wavelet"), "unknown codec 'wavelet'"),
    (dict(codec=""), "codec is empty"),
    (dict(color_width=161, depth_width=161), "but the message says 161x120"),
    (dict(depth_height=121), "differ in size"),
    (dict(color_width=0, depth_width=0), "empty image"),
    (dict(color_encoding="yuv422"), "unsupported color_encoding 'yuv422'"),
    (dict(depth_encoding="mono16"), "unsupported depth_encoding 'mono16'"),
    (dict(depth_encoding="32FC1", depth_invalid=1, depth_scale_per_m=1.0), "payload holds uint16 depth"),
    (dict(color_encoding="mono8"), "3-channel colour image but the message says mono8"),
    (dict(depth_invalid=1), "depth_invalid 1 does not fit"),
    (dict(depth_scale_per_m=float("nan")), "depth_scale_per_m must be > 0"),
    (dict(payload=np.zeros(0, np.uint8)), "payload is empty"),
])
def test_decode_compressed_rejects_inconsistent_messages(good_msg, changes, needle):
    with pytest.raises(CodecError, match=needle):
        convert.decode_compressed(mutated(good_msg, **changes))


def test_decode_compressed_rejects_damaged_payloads(good_msg):
    payload = good_msg[1].payload
    for bad in (payload[: len(payload) // 2], payload[:5], np.zeros(len(payload), np.uint8)):
        with pytest.raises(CodecError):
            convert.decode_compressed(mutated(good_msg, payload=bad.copy()))


def test_backend_cache_is_reused(good_msg):
    cache = {}
    convert.decode_compressed(good_msg[1], cache)
    backend = cache["classical"]
    convert.decode_compressed(good_msg[1], cache)
    assert cache["classical"] is backend
