"""Fuzzing the decoder with mutated CompressedRGBD messages.

Volume in-process (thousands of messages through the very function the
decoder node runs for each message), then a burst over real DDS at a live
decoder process. The contract: a bad message raises CodecError (the node logs
and drops it) and never yields images that disagree with the message; the
node stays up and decodes good messages afterwards.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import NodeProcess, Probe, load_real_pairs, reliable_qos, unique_namespace

# ROS messages and a live decoder over DDS; slow: thousands of fuzzed decodes
pytestmark = [pytest.mark.ros, pytest.mark.slow]

SEED = 20240611
N_FIELD_AND_PAYLOAD = 3000
N_CDR = 1000

# Codec names a message may claim. "learned" stays out: its backend loads torch and
# weights, and is fuzzed with the learned codec's own tests.
CODEC_NAMES = ("classical", "", "wavelet", "classical\x00", "CLASSICAL")
STRINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1", "yuv422", "", "8UC3", "rgb8 ",
           "16UC1\x00", "mono16")
INTS = (0, 1, 2, 3, 7, 47, 48, 63, 64, 65, 480, 640, 65535, 2**31 - 1, 2**32 - 1)
FLOATS = (0.0, -1.0, 1.0, 1000.0, 10000.0, float("nan"), float("inf"), -float("inf"), 1e-30, 3.4e38)


def base_messages():
    """Small real frames coded with several classical settings, as rclpy messages."""
    from rgbd_codec_ros import convert
    from rgbd_codec_ros.codec.base import create_backend
    from rgbd_codec_ros.msg import CompressedRGBD

    (rgb, depth_mm), = load_real_pairs("osd_kinect_pcl_mosd", 1)
    rgb, depth_mm = rgb[200:248, 300:364].copy(), depth_mm[200:248, 300:364].copy()
    metres = np.where(depth_mm > 0, depth_mm / np.float32(1000), np.nan).astype(np.float32)
    grey = rgb[:, :, 1].copy()
    cases = [
        (rgb, "rgb8", depth_mm, "16UC1", {}),
        (grey, "mono8", metres, "32FC1", {}),
        (convert.color_from_codec(rgb, "bgra8"), "bgra8", depth_mm, "16UC1", {"depth_codec": "png"}),
        (rgb, "rgb8", depth_mm, "16UC1", {"depth_codec": "rvl_lossy"}),
        (rgb, "rgb8", metres, "32FC1", {"color_codec": "webp", "depth_entropy": "none"}),
    ]
    messages = []
    for color, cenc, depth, denc, options in cases:
        frame = convert.images_to_frame(color, cenc, depth, denc)
        fields = convert.compressed_fields(create_backend("classical", **options).encode(frame), frame, cenc, denc)
        msg = CompressedRGBD()
        convert.fill_compressed(msg, fields)
        msg.header.frame_id, msg.depth_header.frame_id = "c", "d"
        messages.append(msg)
    return messages


def mutate(msg, rng: np.random.Generator):
    """A copy of ``msg`` with one or two random defects."""
    out = copy.deepcopy(msg)
    for _ in range(int(rng.integers(1, 3))):
        payload = bytearray(bytes(out.payload))
        kind = int(rng.integers(0, 9))
        if kind == 0 and payload:      # flip a few bytes
            for i in rng.integers(0, len(payload), int(rng.integers(1, 9))):
                payload[i] ^= int(rng.integers(1, 256))
        elif kind == 1:                # truncate
            payload = payload[: int(rng.integers(0, len(payload) + 1))]
        elif kind == 2:                # append junk
            payload += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif kind == 3:                # random bytes keeping the first k (magic, header) of the original
            k = int(rng.integers(0, min(len(payload), 80) + 1))
            payload = payload[:k] + rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        elif kind == 4:                # zero a run
            if payload:
                i = int(rng.integers(0, len(payload)))
                n = int(rng.integers(1, 32))
                payload[i:i + n] = bytes(len(payload[i:i + n]))
        elif kind == 5:
            setattr(out, str(rng.choice(["color_width", "color_height", "depth_width", "depth_height",
                                         "format_version", "depth_invalid"])),
                    int(rng.choice(INTS)))  # out of a field's range: rclpy refuses (AssertionError)
        elif kind == 6:
            setattr(out, str(rng.choice(["color_encoding", "depth_encoding"])), str(rng.choice(STRINGS)))
        elif kind == 7:
            out.depth_scale_per_m = float(rng.choice(FLOATS))
        else:
            out.codec = str(rng.choice(CODEC_NAMES))
        out.payload = bytes(payload)
    return out


def check_contract(msg, backends) -> bool:
    """True if decoded (and then consistent with the message), False if refused with CodecError."""
    from rgbd_codec_ros import convert
    from rgbd_codec_ros.codec.base import CodecError
    from rgbd_codec_ros.ros.decoder_node import decode_to_images

    try:
        color, depth = decode_to_images(msg, backends)
    except CodecError:
        return False
    assert (color.width, color.height, color.encoding) == (msg.color_width, msg.color_height, msg.color_encoding)
    assert (depth.width, depth.height, depth.encoding) == (msg.depth_width, msg.depth_height, msg.depth_encoding)
    assert len(color.data) == color.step * color.height and len(depth.data) == depth.step * depth.height
    d = convert.image_to_array(depth)
    if msg.depth_encoding == "32FC1":
        assert not np.any(d <= 0), "32FC1 depth came back with non-positive values instead of NaN"
    return True


@pytest.fixture(scope="module")
def messages(data_dir):
    return base_messages()


def test_fuzz_fields_and_payloads(messages):

    rng = np.random.default_rng(SEED)
    backends = {}
    for msg in messages:  # the originals decode
        assert check_contract(msg, backends)
    decoded = 0
    for i in range(N_FIELD_AND_PAYLOAD):
        base = messages[i % len(messages)]
        try:
            bad = mutate(base, rng)
        except AssertionError:  # rclpy refused a value for a typed field: a sender cannot send it
            continue
        decoded += check_contract(bad, backends)
    # Most mutations must be caught (a flipped byte in an image body may legitimately decode).
    assert decoded < N_FIELD_AND_PAYLOAD * 0.5, f"{decoded} of {N_FIELD_AND_PAYLOAD} mutated messages decoded"


def test_fuzz_serialized_bytes(messages):
    """Mutated CDR: either not a CompressedRGBD at all (the node logs it), or it obeys the contract."""
    from rclpy.serialization import deserialize_message, serialize_message

    from rgbd_codec_ros.msg import CompressedRGBD

    rng = np.random.default_rng(SEED + 1)
    backends = {}
    raw = [serialize_message(m) for m in messages]
    not_cdr = 0
    for i in range(N_CDR):
        data = bytearray(raw[i % len(raw)])
        if rng.random() < 0.5:
            data = data[: int(rng.integers(0, len(data)))]
        for j in rng.integers(0, max(len(data), 1), int(rng.integers(1, 6))):
            if data:
                data[j] ^= int(rng.integers(1, 256))
        try:
            msg = deserialize_message(bytes(data), CompressedRGBD)
        except Exception:
            not_cdr += 1
            continue
        check_contract(msg, backends)
    assert not_cdr > 0


def test_fuzz_burst_at_live_decoder(messages, rclpy_context, tmp_path):
    """Hundreds of mutated messages and raw junk over DDS; the node survives and decodes good ones."""
    from sensor_msgs.msg import Image

    from rgbd_codec_ros.msg import CompressedRGBD

    ns = unique_namespace("fuzz")
    decoder = NodeProcess("decoder_node", tmp_path, ns, {"input_depth": 1000, "log_period": 1.0})
    probe = Probe("fuzz_probe", ns)
    try:
        qos = reliable_qos(1000)
        pub = probe.node.create_publisher(CompressedRGBD, "rgbd/compressed", qos)
        got = {}
        sub = probe.node.create_subscription(
            Image, "decoded/color/image_raw", lambda m: got.__setitem__(m.header.stamp.sec, m), qos)
        probe.wait_matched(pub, processes=[decoder])
        probe.wait_matched(sub, processes=[decoder])
        rng = np.random.default_rng(SEED + 2)
        sent = 0
        for i in range(400):
            if i % 10 == 9:
                pub.publish(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
                sent += 1
                continue
            try:
                bad = mutate(messages[i % len(messages)], rng)
            except AssertionError:
                continue
            bad.header.stamp.sec = 0  # good messages below are told apart by their stamps
            pub.publish(bad)
            sent += 1
            if i % 50 == 0:
                probe.spin_for(0.01)
        good = []
        for k, msg in enumerate(messages):
            msg = copy.deepcopy(msg)
            msg.header.stamp.sec = 1000 + k
            pub.publish(msg)
            good.append(1000 + k)
        assert probe.spin_until(lambda: all(s in got for s in good), 120), \
            f"good messages after the burst not decoded; decoder log:\n{decoder.log()[-3000:]}"
        assert decoder.alive()
        assert decoder.wait_for_log(r"refused [1-9]\d*", timeout=30)
        assert "Traceback" not in decoder.log()
        assert sent > 300
    finally:
        probe.destroy()
        assert decoder.stop() == 0
