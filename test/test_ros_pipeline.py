"""Encoder and decoder nodes as separate processes over real DDS, fed real RGB-D frames.

One encoder and one decoder process serve the whole module (starting a node
costs seconds on a busy machine); every test sends its own frames with its
own stamps and checks what comes out of the decoder.

QoS in this module: the encoder's image inputs and both nodes' queues are
set to reliable with deep history, so that a slow moment of a loaded 2-core
machine delays frames instead of dropping them; what is measured here is
that every frame that goes in comes out right. (Defaults are exercised by
test_ros_player.py.)
"""
from __future__ import annotations

import re
import signal
import time
from typing import Dict, List, Tuple

import numpy as np
import pytest

from conftest import (NodeProcess, Probe, load_real_pairs, make_image, psnr, reliable_qos,
                      unique_namespace)
from ros_param_helpers import param_msg

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS

#: JPEG at the classical codec's default quality 90 keeps real 640x480 frames well above this
PSNR_FLOOR_DB = 30.0
RATE_HZ = 10.0
COLOR_FRAME = "test_color_optical"
DEPTH_FRAME = "test_depth_optical"


class Pipeline:
    """The test's side of encoder + decoder: publishers of inputs, subscribers of outputs."""

    def __init__(self, probe: Probe, encoder: NodeProcess, decoder: NodeProcess):
        from sensor_msgs.msg import CameraInfo, Image

        from rgbd_codec_ros.msg import CompressedRGBD

        self.probe, self.encoder, self.decoder = probe, encoder, decoder
        node = probe.node
        qos = reliable_qos(100)
        self.pub_color = node.create_publisher(Image, "color/image_raw", qos)
        self.pub_depth = node.create_publisher(Image, "depth/image_raw", qos)
        self.pub_color_info = node.create_publisher(CameraInfo, "color/camera_info", qos)
        self.pub_depth_info = node.create_publisher(CameraInfo, "depth/camera_info", qos)
        self.pub_compressed = node.create_publisher(CompressedRGBD, "rgbd/compressed", qos)
        self.color_out: Dict[int, Image] = {}
        self.depth_out: Dict[int, Image] = {}
        self.color_info_out: Dict[int, CameraInfo] = {}
        self.depth_info_out: Dict[int, CameraInfo] = {}
        self.compressed: Dict[int, CompressedRGBD] = {}
        self.subs = [
            node.create_subscription(Image, "decoded/color/image_raw", self._store(self.color_out), qos),
            node.create_subscription(Image, "decoded/depth/image_raw", self._store(self.depth_out), qos),
            node.create_subscription(CameraInfo, "decoded/color/camera_info", self._store(self.color_info_out), qos),
            node.create_subscription(CameraInfo, "decoded/depth/camera_info", self._store(self.depth_info_out), qos),
            node.create_subscription(CompressedRGBD, "rgbd/compressed", self._store(self.compressed), qos),
        ]
        self._stamp = 1_700_000_000 * 10**9

    @staticmethod
    def _store(table):
        def callback(msg):
            table[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = msg
        return callback

    def wait_ready(self) -> None:
        procs = (self.encoder, self.decoder)
        for sub in self.subs[:4]:
            self.probe.wait_matched(sub, 1, processes=procs)      # decoder's outputs
        self.probe.wait_matched(self.pub_compressed, 1, processes=procs)  # decoder's input
        self.probe.wait_matched(self.subs[4], 1, processes=procs)  # encoder's output
        # the encoder subscribes lazily, once rgbd/compressed has subscribers
        for pub in (self.pub_color, self.pub_depth, self.pub_color_info, self.pub_depth_info):
            self.probe.wait_matched(pub, 1, processes=procs)

    def next_stamp(self) -> int:
        self._stamp += int(1e9 / RATE_HZ)
        return self._stamp

    def camera_info(self, width: int, height: int, stamp_ns: int, frame_id: str):
        from sensor_msgs.msg import CameraInfo

        info = CameraInfo()
        info.header.stamp.sec, info.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        info.header.frame_id = frame_id
        info.width, info.height = width, height
        info.distortion_model = "plumb_bob"
        info.d = [0.01, -0.02, 0.0, 0.0, 0.0]
        info.k = [525.0, 0.0, width / 2, 0.0, 525.0, height / 2, 0.0, 0.0, 1.0]
        return info

    def send(self, color: np.ndarray, color_encoding: str, depth: np.ndarray, depth_encoding: str,
             with_info: bool = True) -> int:
        """Publish one pair (colour and depth stamped 1 ms apart); returns the colour stamp."""
        stamp = self.next_stamp()
        h, w = depth.shape[:2]
        if with_info:
            self.pub_color_info.publish(self.camera_info(w, h, stamp, COLOR_FRAME))
            self.pub_depth_info.publish(self.camera_info(w, h, stamp + 10**6, DEPTH_FRAME))
        self.pub_color.publish(make_image(color, color_encoding, stamp, COLOR_FRAME))
        self.pub_depth.publish(make_image(depth, depth_encoding, stamp + 10**6, DEPTH_FRAME))
        return stamp

    def send_at_rate(self, items: List[Tuple]) -> List[int]:
        stamps = []
        next_time = time.monotonic()
        for item in items:
            stamps.append(self.send(*item))
            next_time += 1.0 / RATE_HZ
            self.probe.spin_for(max(0.0, next_time - time.monotonic()))
        return stamps

    def wait_decoded(self, stamps: List[int], timeout: float = 120.0, fraction: float = 1.0) -> int:
        need = int(np.ceil(fraction * len(stamps)))

        def done():
            return sum(s in self.color_out and s + 10**6 in self.depth_out for s in stamps) >= need
        self.probe.spin_until(done, timeout)
        # Late stragglers get a short extra moment, so the count below is final.
        self.probe.spin_for(0.5)
        return sum(s in self.color_out and s + 10**6 in self.depth_out for s in stamps)


@pytest.fixture(scope="module")
def pipeline(rclpy_context, tmp_path_factory):
    ns = unique_namespace("pipeline")
    log_dir = tmp_path_factory.mktemp("pipeline")
    encoder = NodeProcess("encoder_node", log_dir, ns, {
        "input_qos": "reliable", "input_depth": 50, "output_depth": 50, "camera_info_period": 4,
        "log_period": 2.0, "diagnostics_period": 0.5,
        "max_age_s": 0.0})  # the test frames carry fixed stamps of 2023 (test_hostile_nodes.py checks max_age_s)
    decoder = NodeProcess("decoder_node", log_dir, ns, {"input_depth": 50, "output_depth": 50, "log_period": 2.0})
    probe = Probe("pipeline_probe", ns)
    try:
        pipe = Pipeline(probe, encoder, decoder)
        pipe.wait_ready()
        yield pipe
    finally:
        probe.destroy()
        encoder.stop()
        decoder.stop()


def check_pair(pipe: Pipeline, stamp: int, color: np.ndarray, color_encoding: str, depth: np.ndarray,
               depth_encoding: str) -> float:
    """Assert what the decoder published for one pair; returns the colour PSNR."""
    from rgbd_codec_ros import convert

    c, d = pipe.color_out[stamp], pipe.depth_out[stamp + 10**6]
    assert (c.header.stamp.sec * 10**9 + c.header.stamp.nanosec, c.header.frame_id) == (stamp, COLOR_FRAME)
    assert (d.header.stamp.sec * 10**9 + d.header.stamp.nanosec, d.header.frame_id) == (stamp + 10**6, DEPTH_FRAME)
    assert (c.encoding, d.encoding) == (color_encoding, depth_encoding)
    assert (c.height, c.width) == color.shape[:2] and (d.height, d.width) == depth.shape[:2]
    c_arr, d_arr = convert.image_to_array(c), convert.image_to_array(d)
    assert c_arr.shape == color.shape and d_arr.dtype == depth.dtype
    # lossless depth (the classical default, JPEG XL): every value, holes included, exactly back
    np.testing.assert_array_equal(d_arr, depth)
    if depth_encoding == "16UC1":
        np.testing.assert_array_equal(d_arr == 0, depth == 0)
    else:
        np.testing.assert_array_equal(np.isnan(d_arr), np.isnan(depth))
    if color_encoding in ("rgba8", "bgra8"):
        assert (c_arr[:, :, 3] == 255).all(), "alpha is not kept and must come back as 255"
        return psnr(c_arr[:, :, :3], color[:, :, :3])
    return psnr(c_arr, color)


def test_real_frames_at_10hz(pipeline, data_dir):
    """Real 640x480 pairs of three sensors at 10 Hz: >= 95 % decoded, headers kept, depth exact."""
    pairs = []
    for source in ("7scenes_kinect1", "realsense_d435_taeyoung", "osd_kinect_pcl_mosd"):
        pairs += load_real_pairs(source, 10, step=3)
    items = [(color, "rgb8", depth, "16UC1") for color, depth in pairs]
    stamps = pipeline.send_at_rate(items)
    got = pipeline.wait_decoded(stamps, fraction=1.0)
    assert got >= 0.95 * len(stamps), f"only {got} of {len(stamps)} pairs decoded"
    quality = []
    for stamp, (color, depth) in zip(stamps, pairs):
        if stamp in pipeline.color_out:
            quality.append(check_pair(pipeline, stamp, color, "rgb8", depth, "16UC1"))
    assert min(quality) > PSNR_FLOOR_DB, f"colour PSNR {min(quality):.1f} dB below {PSNR_FLOOR_DB} dB"
    # camera infos: decoded with every frame from the first one that carried them (the
    # encoder may see the first images before the first camera_info), stamped like it
    for field, table, offset, frame_id in (("color_camera_info", pipeline.color_info_out, 0, COLOR_FRAME),
                                           ("depth_camera_info", pipeline.depth_info_out, 10**6, DEPTH_FRAME)):
        first_info = min(s for s in stamps if s in pipeline.compressed and len(getattr(pipeline.compressed[s], field)))
        assert first_info <= stamps[2], f"{field} did not ride along from the start"
        for stamp in stamps:
            if stamp in pipeline.color_out and stamp >= first_info:
                info = table[stamp + offset]
                assert info.header.frame_id == frame_id and list(info.d) == [0.01, -0.02, 0.0, 0.0, 0.0]
    # ... but they ride along the compressed stream only every camera_info_period (4) frames
    sent = [pipeline.compressed[s] for s in stamps if s in pipeline.compressed]
    with_info = sum(len(m.color_camera_info) == 1 for m in sent)
    assert 0 < with_info <= len(sent) // 4 + 2, f"{with_info} of {len(sent)} messages carried camera_info"
    ratio = np.mean([(c.nbytes + d.nbytes) / len(m.payload) for (c, d), m in zip(pairs, sent)])
    assert ratio > 2.0, f"compression ratio {ratio:.2f}"


ENCODING_CASES = [(c, d) for c in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8") for d in ("16UC1", "32FC1")]


def _as_encoding(rgb: np.ndarray, depth_mm: np.ndarray, color_encoding: str, depth_encoding: str):
    from rgbd_codec_ros import convert

    if color_encoding == "mono8":
        color = np.rint(rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])).astype(np.uint8)
    else:
        color = convert.color_from_codec(rgb, color_encoding)
        if color.shape[2] == 4:  # an alpha that is not 255 must not matter
            color = color.copy()
            color[:, :, 3] = 77
    if depth_encoding == "32FC1":
        depth = np.where(depth_mm > 0, depth_mm / np.float32(1000.0), np.nan).astype(np.float32)
    else:
        depth = depth_mm
    return color, depth


def test_every_encoding_and_odd_sizes(pipeline, data_dir):
    (rgb, depth_mm), = load_real_pairs("realsense_f200_kinfu_sample", 1)
    items = []
    sizes = [(480, 640), (251, 333), (17, 33), (1, 1)]
    for i, (color_encoding, depth_encoding) in enumerate(ENCODING_CASES):
        h, w = sizes[i % len(sizes)]
        y, x = 7 * i, 11 * i  # a different crop each time
        color, depth = _as_encoding(rgb[y:y + h, x:x + w].copy(), depth_mm[y:y + h, x:x + w].copy(),
                                    color_encoding, depth_encoding)
        items.append((color, color_encoding, depth, depth_encoding))
    stamps = pipeline.send_at_rate(items)
    got = pipeline.wait_decoded(stamps)
    assert got == len(stamps), f"{len(stamps) - got} of {len(stamps)} pairs missing: " + \
        f"{[items[i][1] + '/' + items[i][3] for i, s in enumerate(stamps) if s not in pipeline.color_out]}\n" + \
        pipeline.encoder.log()[-2000:]
    for stamp, (color, cenc, depth, denc) in zip(stamps, items):
        quality = check_pair(pipeline, stamp, color, cenc, depth, denc)
        if color.shape[0] >= 17:
            assert quality > PSNR_FLOOR_DB - 3, f"{cenc} {color.shape}: PSNR {quality:.1f} dB"


def _bad_image(kind: str, color: np.ndarray, depth: np.ndarray, stamp: int):
    """(colour msg, depth msg) with one defect."""
    c = make_image(color, "rgb8", stamp, COLOR_FRAME)
    d = make_image(depth, "16UC1", stamp + 10**6, DEPTH_FRAME)
    if kind == "unsupported colour encoding":
        c.encoding = "yuv422"
    elif kind == "unsupported depth encoding":
        d.encoding = "mono16"
    elif kind == "empty image":
        c.width = c.height = c.step = 0
        c.data = b""
    elif kind == "truncated data":
        d.data = bytes(d.data)[: len(d.data) // 2]
    elif kind == "mismatched sizes":
        d = make_image(np.ascontiguousarray(depth[: depth.shape[0] // 2]), "16UC1", stamp + 10**6, DEPTH_FRAME)
    elif kind == "step too small":
        c.step = c.width  # one byte per pixel for rgb8
    return c, d


BAD_INPUTS = {
    "unsupported colour encoding": r"unsupported image encoding 'yuv422'",
    "unsupported depth encoding": r"unsupported image encoding 'mono16'",
    "empty image": r"empty image",
    "truncated data": r"truncated",
    "mismatched sizes": r"differ in size",
    "step too small": r"needs step >=",
}


def test_encoder_drops_bad_images_and_keeps_going(pipeline, data_dir):
    (color, depth), = load_real_pairs("osd_kinect_pcl_mosd", 1)
    bad_stamps = []
    for kind in BAD_INPUTS:
        stamp = pipeline.next_stamp()
        c, d = _bad_image(kind, color, depth, stamp)
        pipeline.pub_color.publish(c)
        pipeline.pub_depth.publish(d)
        bad_stamps.append(stamp)
        pipeline.probe.spin_for(0.1)
    good = pipeline.send_at_rate([(color, "rgb8", depth, "16UC1")] * 3)
    assert pipeline.wait_decoded(good) == 3, "good frames after bad ones were not decoded"
    assert pipeline.encoder.alive() and pipeline.decoder.alive()
    assert not any(s in pipeline.color_out or s in pipeline.compressed for s in bad_stamps)
    log = pipeline.encoder.log()
    for kind, needle in BAD_INPUTS.items():
        assert re.search(needle, log), f"encoder did not log why it dropped '{kind}':\n{log[-3000:]}"
    wait_diagnostics(pipeline, "rgbd_encoder", lambda v: int(v["refused"]) >= len(BAD_INPUTS))


def compressed_msg(color: np.ndarray, depth: np.ndarray, stamp: int, **changes):
    """An rclpy CompressedRGBD coded in-process with the classical backend, then fields changed."""
    from rgbd_codec_ros import convert
    from rgbd_codec_ros.codec.base import create_backend
    from rgbd_codec_ros.msg import CompressedRGBD

    frame = convert.images_to_frame(color, "rgb8", depth, "16UC1")
    fields = convert.compressed_fields(create_backend("classical").encode(frame), frame, "rgb8", "16UC1")
    msg = CompressedRGBD()
    convert.fill_compressed(msg, fields)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
    msg.header.frame_id = COLOR_FRAME
    msg.depth_header.stamp.sec, msg.depth_header.stamp.nanosec = divmod(stamp + 10**6, 10**9)
    msg.depth_header.frame_id = DEPTH_FRAME
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


def test_decoder_drops_malformed_messages_and_keeps_going(pipeline, data_dir):
    (color, depth), = load_real_pairs("realsense_d435_taeyoung", 1)
    color, depth = color[:240, :320].copy(), depth[:240, :320].copy()
    payload = bytes(compressed_msg(color, depth, 1).payload)
    flipped = bytearray(payload)
    for i in range(40, len(flipped), 97):
        flipped[i] ^= 0x5A
    bad = {
        "truncated payload": (dict(payload=payload[: len(payload) // 3]), r"truncat|short|end of|size"),
        "corrupted payload": (dict(payload=bytes(flipped)), r"checksum|crc|corrupt|damaged|invalid"),
        "unknown codec": (dict(codec="wavelet9000"), r"unknown codec 'wavelet9000'"),
        "mismatched sizes": (dict(color_width=321, depth_width=321), r"321x240"),
        "future format": (dict(format_version=7), r"format_version 7"),
        "unsupported encoding": (dict(color_encoding="yuv422"), r"yuv422"),
        "empty payload": (dict(payload=b""), r"payload is empty"),
        "depth kind mismatch": (dict(depth_encoding="32FC1", depth_invalid=1, depth_scale_per_m=1.0),
                                r"uint16 depth but the message says 32FC1"),
    }
    not_cdr = r"\d+ bytes that is not a valid CompressedRGBD"
    bad_stamps = []
    for name, (changes, _) in bad.items():
        stamp = pipeline.next_stamp()
        pipeline.pub_compressed.publish(compressed_msg(color, depth, stamp, **changes))
        bad_stamps.append(stamp)
    # A message that is not even valid CDR, published as raw bytes
    pipeline.pub_compressed.publish(b"\x00\x01\x00\x00" + b"\xff" * 13)
    good = []
    for _ in range(3):
        stamp = pipeline.next_stamp()
        pipeline.pub_compressed.publish(compressed_msg(color, depth, stamp))
        good.append(stamp)
    assert pipeline.wait_decoded(good) == 3, "good messages after bad ones were not decoded\n" + \
        pipeline.decoder.log()[-3000:]
    assert pipeline.decoder.alive()
    assert not any(s in pipeline.color_out for s in bad_stamps)
    log = pipeline.decoder.log()
    for name, (_, needle) in list(bad.items()) + [("not CDR", (None, not_cdr))]:
        assert re.search(needle, log, re.IGNORECASE), f"decoder did not log why it dropped '{name}':\n{log[-3000:]}"


def wait_diagnostics(pipe: Pipeline, component: str, condition, timeout: float = 30.0) -> dict:
    """Values of the first /diagnostics status of ``component`` for which ``condition(values)`` holds."""
    from diagnostic_msgs.msg import DiagnosticArray

    found = []

    def on_array(msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if component in status.name and condition(values):
                found.append(values)
    sub = pipe.probe.node.create_subscription(DiagnosticArray, "/diagnostics", on_array, 10)
    try:
        assert pipe.probe.spin_until(lambda: bool(found), timeout), f"no matching {component} diagnostics"
        return found[0]
    finally:
        pipe.probe.node.destroy_subscription(sub)


def test_diagnostics_report_traffic(pipeline, data_dir):
    (color, depth), = load_real_pairs("7scenes_kinect1", 1, step=7)
    stamps = pipeline.send_at_rate([(color, "rgb8", depth, "16UC1")] * 2)
    assert pipeline.wait_decoded(stamps) == 2
    values = wait_diagnostics(pipeline, "rgbd_encoder", lambda v: int(v["frames"]) >= 2)
    assert int(values["bytes"]) > 0 and values["codec"] == "classical" and values["subscribed"] == "True"
    for key in ("kbit_s", "compression_ratio", "encode_latency_ms", "encode_latency_max_ms"):
        assert float(values[key]) >= 0
    int(values["sync_drops"])
    values = wait_diagnostics(pipeline, "rgbd_decoder", lambda v: int(v["frames"]) >= 2)
    assert float(values["decode_latency_ms"]) >= 0 and "classical" in values["codecs"]


def test_live_codec_options(pipeline, data_dir):
    """codec_options changes between frames; bad values are refused with a reason."""
    from rcl_interfaces.srv import SetParameters

    node = pipeline.probe.node
    client = node.create_client(SetParameters, "rgbd_encoder/set_parameters")
    try:
        assert pipeline.probe.spin_until(lambda: client.service_is_ready(), 60)

        def set_params(**values):
            req = SetParameters.Request()
            for name, value in values.items():
                req.parameters.append(param_msg(name, value))
            future = client.call_async(req)
            assert pipeline.probe.spin_until(future.done, 60)
            return future.result().results

        (color, depth), = load_real_pairs("7scenes_kinect1", 1)
        before = pipeline.send_at_rate([(color, "rgb8", depth, "16UC1")])
        assert set_params(codec_options="color_quality=40")[0].successful
        after = pipeline.send_at_rate([(color, "rgb8", depth, "16UC1")])
        assert pipeline.wait_decoded(before + after) == 2
        q90, q40 = pipeline.compressed[before[0]], pipeline.compressed[after[0]]
        assert "40" in q40.quality and q40.quality != q90.quality
        assert len(q40.payload) < len(q90.payload)
        refused = {
            "codec_options": "color_quality=500",
            "codec": "wavelet9000",
            "slop": 5.0,            # outside its range
            "input_qos": "best_effort",  # read-only: QoS is fixed once subscribed
        }
        for name, value in refused.items():
            result = set_params(**{name: value})[0]
            assert not result.successful, f"{name}={value!r} was accepted"
            assert result.reason, f"{name}={value!r} refused without a reason"
        assert set_params(codec_options="")[0].successful
    finally:
        node.destroy_client(client)


def test_clean_shutdown(pipeline):
    assert pipeline.encoder.stop(signal.SIGINT) == 0, pipeline.encoder.log()[-2000:]
    assert pipeline.decoder.stop(signal.SIGTERM) == 0, pipeline.decoder.log()[-2000:]
    assert "Traceback" not in pipeline.encoder.log() + pipeline.decoder.log()
