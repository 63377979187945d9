"""Temporal colour (h264) through the real nodes over real DDS: sequence numbers and keyframes,
keyframes on request, late joiners, and a decoder that never shows a frame decoded against a
missing reference (lost, reordered and duplicated messages).

Frames are real (realsense_d4xx_visp_rbt), halved to 320x240 to keep the loaded 2-core machine
comfortable. Timings are asserted only as behaviour with wide margins.
"""
from __future__ import annotations

import time
from typing import Dict, List

import numpy as np
import pytest

from conftest import load_real_pairs, make_image, psnr, reliable_qos, unique_namespace

pytestmark = pytest.mark.ros

SOURCE = "realsense_d4xx_visp_rbt"
FRAME_ID = "temporal_color_optical"


@pytest.fixture(scope="module")
def small_pairs(data_dir):
    pairs = load_real_pairs(SOURCE, 24, step=2)
    return [(np.ascontiguousarray(c[::2, ::2]), np.ascontiguousarray(d[::2, ::2])) for c, d in pairs]


class Recorder:
    """What the probe hears: compressed messages, decoded images (by stamp) and keyframe requests."""

    def __init__(self, probe):
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from rgbd_codec_ros.msg import CompressedRGBD

        node = probe.node
        self.compressed: List = []
        self.color: Dict[int, np.ndarray] = {}
        self.depth: Dict[int, np.ndarray] = {}
        self.requests: List[tuple] = []   # (monotonic time, reason)
        self.first_image_t = None
        self.subs = [
            node.create_subscription(CompressedRGBD, "rgbd/compressed", self.compressed.append, reliable_qos(50)),
            node.create_subscription(Image, "decoded/color/image_raw", self._on_color, reliable_qos(50)),
            node.create_subscription(Image, "decoded/depth/image_raw", self._on_depth, reliable_qos(50)),
            node.create_subscription(String, "rgbd/keyframe_request",
                                     lambda m: self.requests.append((time.monotonic(), m.data)), reliable_qos(10)),
        ]

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_color(self, msg) -> None:
        from rgbd_codec_ros import convert

        if self.first_image_t is None:
            self.first_image_t = time.monotonic()
        self.color[self._stamp(msg)] = convert.image_to_array(msg).copy()

    def _on_depth(self, msg) -> None:
        from rgbd_codec_ros import convert

        self.depth[self._stamp(msg)] = convert.image_to_array(msg).copy()


def _assert_every_decoded_frame_is_right(rec: Recorder, originals: Dict[int, tuple]) -> None:
    assert rec.color, "nothing was decoded"
    for stamp, color in rec.color.items():
        want_color, want_depth = originals[stamp]
        assert psnr(color, want_color) > 30.0, f"frame {stamp} decoded wrong ({psnr(color, want_color):.1f} dB)"
    for stamp, depth in rec.depth.items():
        assert np.array_equal(depth, originals[stamp][1]), f"depth of frame {stamp} differs"


def test_late_joiner_asks_for_a_keyframe_and_gets_correct_images(node_processes, probe_factory, small_pairs):
    from sensor_msgs.msg import Image

    ns = unique_namespace("temporal_late")
    encoder = node_processes("encoder_node", ns, {"codec_options": "color_codec=h264, color_quality=70",
                                                  "keyframe_interval": 0, "log_period": 2.0})
    probe = probe_factory(ns)
    rec = Recorder(probe)
    pub_color = probe.node.create_publisher(Image, "color/image_raw", reliable_qos(20))
    pub_depth = probe.node.create_publisher(Image, "depth/image_raw", reliable_qos(20))
    probe.wait_matched(pub_color, 1, processes=[encoder])
    probe.wait_matched(pub_depth, 1, processes=[encoder])
    originals: Dict[int, tuple] = {}
    index = [0]

    def send(seconds: float) -> None:
        next_t = time.monotonic()
        end = next_t + seconds
        while time.monotonic() < end:
            color, depth = small_pairs[index[0] % len(small_pairs)]
            index[0] += 1
            stamp = time.time_ns()
            originals[stamp] = (color, depth)
            pub_color.publish(make_image(color, "rgb8", stamp, FRAME_ID))
            pub_depth.publish(make_image(depth, "16UC1", stamp, FRAME_ID))
            next_t += 0.1
            probe.spin_for(max(0.0, next_t - time.monotonic()))

    send(2.5)
    probe.spin_for(1.0)
    sent = list(rec.compressed)
    assert len(sent) >= 10, f"only {len(sent)} messages from the encoder"
    # one keyframe at the start, then predicted frames only (keyframe_interval 0), numbered 0, 1, 2, ...
    assert [m.keyframe for m in sent[:1]] == [True] and not any(m.keyframe for m in sent[1:])
    assert [m.sequence for m in sent] == list(range(len(sent)))
    assert all(m.format_version == 2 and m.codec == "classical" for m in sent)

    # a decoder joins mid-stream: it cannot decode the predicted frames, so it asks for a keyframe
    decoder = node_processes("decoder_node", ns, {"log_period": 2.0, "lazy": False})
    probe.wait_matched(rec.subs[0], 1, processes=[encoder])
    t_join = time.monotonic()
    send(4.0)
    probe.spin_for(1.5)
    assert rec.requests, f"the late decoder never asked for a keyframe:\n{decoder.log()[-2000:]}"
    assert rec.first_image_t is not None, f"the late decoder never showed a frame:\n{decoder.log()[-2000:]}"
    # the answer: a keyframe within a couple of frames of the first request, and images from it on
    first_request = rec.requests[0][0]
    assert rec.first_image_t - first_request < 1.5, (rec.first_image_t - first_request)
    keyframes_after = [m for m in rec.compressed[len(sent):] if m.keyframe]
    assert 1 <= len(keyframes_after) <= 3, "requests are answered by a keyframe, and rate-limited"
    assert rec.first_image_t > t_join
    _assert_every_decoded_frame_is_right(rec, originals)
    assert encoder.alive() and decoder.alive()


def test_decoder_shows_nothing_wrong_on_lost_reordered_and_duplicated_messages(
        node_processes, probe_factory, small_pairs):
    """The probe is the encoder here: it codes the frames itself and sends them out of order."""
    from rgbd_codec_ros import convert
    from rgbd_codec_ros.codec.base import RGBDFrame, create_backend
    from rgbd_codec_ros.msg import CompressedRGBD

    backend = create_backend("classical", color_codec="h264", color_quality=70, keyframe_interval=6)
    base = time.time_ns()
    messages, originals = [], {}
    for i, (color, depth) in enumerate(small_pairs[:12]):
        frame = RGBDFrame(color, depth)
        encoded = backend.encode(frame)
        msg = convert.fill_compressed(CompressedRGBD(),
                                      convert.compressed_fields(encoded, frame, "rgb8", "16UC1", sequence=i))
        stamp = base + i * 100_000_000
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = msg.depth_header.frame_id = FRAME_ID
        msg.depth_header.stamp = msg.header.stamp
        messages.append(msg)
        originals[stamp] = (color, depth)
    assert [m.keyframe for m in messages] == [i % 6 == 0 for i in range(12)]

    ns = unique_namespace("temporal_loss")
    decoder = node_processes("decoder_node", ns, {"log_period": 2.0, "lazy": False,
                                                  "keyframe_request_period_s": 0.01})
    probe = probe_factory(ns)
    rec = Recorder(probe)
    pub = probe.node.create_publisher(CompressedRGBD, "rgbd/compressed", reliable_qos(50))
    probe.wait_matched(pub, 1, processes=[decoder])
    probe.wait_matched(rec.subs[1], 1, processes=[decoder])
    # 0 1 2 | 2 again (duplicate) | 4 before 3 (3 lost... and then late) | 5 | keyframe 6 7 | 9 (8 lost) | 10 11
    order = [0, 1, 2, 2, 4, 3, 5, 6, 7, 9, 10, 11]
    for i in order:
        pub.publish(messages[i])
        probe.spin_for(0.15)
    probe.spin_for(2.0)
    stamps = sorted(originals)
    shown = sorted(stamps.index(s) for s in rec.color)
    assert shown == [0, 1, 2, 6, 7], f"frames shown: {shown}\n{decoder.log()[-2000:]}"
    _assert_every_decoded_frame_is_right(rec, originals)
    assert len(rec.requests) >= 2, "a gap makes the decoder ask for a keyframe"
    assert decoder.alive()


@pytest.mark.parametrize("options, says", [
    ("color_codec=h264, video_encoder=libnotanencoder", r"libnotanencoder.*available: .*libx264"),
    ("color_codec=h264, keyframe_interval=5", r"keyframe_interval is the node parameter"),
])
def test_encoder_refuses_to_start_on_bad_video_settings(node_processes, options, says):
    ns = unique_namespace("temporal_startup")
    encoder = node_processes("encoder_node", ns, {"codec_options": options})
    assert encoder.wait_exit(60.0) == 2, encoder.log()[-2000:]
    encoder.wait_for_log(says, timeout=5.0)
