"""decoder_node: CompressedRGBD in, the original colour + depth images and camera infos out.

Subscribes ``rgbd/compressed`` and publishes ``decoded/color/image_raw``,
``decoded/depth/image_raw``, ``decoded/color/camera_info`` and
``decoded/depth/camera_info`` with the original stamps, frame_ids, sizes and
encodings. A message that cannot be decoded (damaged payload, unknown codec,
inconsistent fields, ...) is logged and dropped; the node keeps running.
The latest camera infos received ride along every decoded frame.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

from rclpy.node import Node
from rclpy.serialization import deserialize_message

from rgbd_codec_ros import convert
from rgbd_codec_ros.codec.base import CodecError, create_backend
from rgbd_codec_ros.ros import common
from rgbd_codec_ros.ros.stats import StreamStats

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rgbd_codec_ros.msg import CompressedRGBD  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

NODE_NAME = "rgbd_decoder"


def parameter_specs() -> Dict[str, tuple]:
    d = common.describe
    return {
        "input_qos": ("reliable", d("QoS of the rgbd/compressed subscription (best_effort also hears a "
                                    "reliable publisher)", read_only=True,
                                    choices=("reliable", "best_effort"))),
        "input_depth": (10, d("History depth of the rgbd/compressed subscription", read_only=True,
                              int_range=(1, 1000))),
        "output_qos": ("reliable", d("QoS of the decoded image and camera_info topics", read_only=True,
                                     choices=common.QOS_CHOICES)),
        "output_depth": (5, d("History depth of the decoded topics", read_only=True, int_range=(1, 1000))),
        "lazy": (True, d("Decode only while a decoded topic has a subscriber", read_only=True)),
        "model_path": ("", d("Learned-codec weights this decoder may need besides the installed ones: "
                             "files or folders separated by ':'", read_only=True)),
        "diagnostics_period": (1.0, d("Seconds between /diagnostics messages; 0 = none", read_only=True,
                                      float_range=(0.0, 3600.0))),
        "log_period": (10.0, d("Seconds between statistics log lines; 0 = none", read_only=True,
                               float_range=(0.0, 3600.0))),
    }


def decode_to_images(msg: Any, backends: Dict[str, Any]):
    """CompressedRGBD -> (colour Image, depth Image) rclpy messages; CodecError if it cannot be done.

    The function the node runs for every message, separate so it can be fuzzed in-process.
    """
    frame, color_encoding, depth_encoding = convert.decode_compressed(msg, backends)
    color_arr, depth_arr = convert.frame_to_images(frame, color_encoding, depth_encoding)
    color = convert.fill_image(Image(), color_arr, color_encoding, header=msg.header)
    depth = convert.fill_image(Image(), depth_arr, depth_encoding, header=msg.depth_header)
    return color, depth


class DecoderNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        p = common.declare(self, parameter_specs())
        for name, choices in (("input_qos", ("reliable", "best_effort")), ("output_qos", common.QOS_CHOICES)):
            reason = common.check_choice(name, p[name], choices)
            if reason:
                raise common.StartupError(reason)
        self._params = p
        self._backends: Dict[str, Any] = {}  # codec name -> backend, made on first use
        # options of backends that need more than their defaults to decode
        self._backend_options = {"learned": {"model_path": p["model_path"]}} if p["model_path"] else {}
        self._color_info: Optional[CameraInfo] = None
        self._depth_info: Optional[CameraInfo] = None
        self.stats = StreamStats()
        self._last_error: Optional[str] = None
        self._log_refusal = common.RefusalLog(self.get_logger())
        out_qos = common.qos_profile(p["output_qos"], p["output_depth"])
        self._pub_color = self.create_publisher(Image, "decoded/color/image_raw", out_qos)
        self._pub_depth = self.create_publisher(Image, "decoded/depth/image_raw", out_qos)
        self._pub_color_info = self.create_publisher(CameraInfo, "decoded/color/camera_info", out_qos)
        self._pub_depth_info = self.create_publisher(CameraInfo, "decoded/depth/camera_info", out_qos)
        self._outputs = (self._pub_color, self._pub_depth, self._pub_color_info, self._pub_depth_info)
        # Raw subscription: the node deserializes itself, so a message that is not even
        # valid CDR is logged and counted like any other bad input instead of vanishing
        # silently inside the middleware (deserializing costs ~0.2 ms per 200 kB).
        self._sub = self.create_subscription(CompressedRGBD, "rgbd/compressed", self._on_serialized,
                                             common.qos_profile(p["input_qos"], p["input_depth"]), raw=True)
        if p["diagnostics_period"] > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._diag_stats = StreamStats()
            self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        if p["log_period"] > 0:
            self._log_stats = StreamStats()
            self.create_timer(p["log_period"], self._log_statistics)
        self.get_logger().info(
            f"decoding {self._sub.topic_name} -> {self._pub_color.topic_name}, {self._pub_depth.topic_name}")

    def _all_stats(self):
        return [s for s in (self.stats, getattr(self, "_diag_stats", None), getattr(self, "_log_stats", None))
                if s is not None]

    def _on_serialized(self, data: bytes) -> None:
        try:
            msg = deserialize_message(data, CompressedRGBD)
        except Exception as exc:  # noqa: BLE001 - rclpy raises its RMWError for bad CDR
            self._refuse(f"dropped a message of {len(data)} bytes that is not a valid CompressedRGBD: "
                         f"{str(exc).splitlines()[0]}")
            return
        self._on_compressed(msg)

    def _on_compressed(self, msg: CompressedRGBD) -> None:
        if self._params["lazy"] and not any(pub.get_subscription_count() for pub in self._outputs):
            for stats in self._all_stats():
                stats.dropped += 1
            return
        start = time.perf_counter()
        try:
            if msg.codec in self._backend_options and msg.codec not in self._backends:
                self._backends[msg.codec] = create_backend(msg.codec, **self._backend_options[msg.codec])
            color, depth = decode_to_images(msg, self._backends)
        except CodecError as exc:
            self._refuse(f"dropped a {msg.codec!r} message stamped {msg.header.stamp.sec}."
                         f"{msg.header.stamp.nanosec:09d}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a backend bug on hostile input must not stop the node
            self._refuse(f"dropped a {msg.codec!r} message: {type(exc).__name__}: {exc}")
            return
        latency = time.perf_counter() - start
        # Calibration is taken only from messages that decode: a dropped message is dropped whole.
        if len(msg.color_camera_info):
            self._color_info = msg.color_camera_info[0]
        if len(msg.depth_camera_info):
            self._depth_info = msg.depth_camera_info[0]
        self._pub_color.publish(color)
        self._pub_depth.publish(depth)
        for info, header, pub in ((self._color_info, msg.header, self._pub_color_info),
                                  (self._depth_info, msg.depth_header, self._pub_depth_info)):
            if info is not None:
                info.header.stamp = header.stamp  # the calibration of this frame; its frame_id stays
                pub.publish(info)
        for stats in self._all_stats():
            stats.add(len(color.data) + len(depth.data), len(msg.payload), latency)

    def _refuse(self, reason: str) -> None:
        for stats in self._all_stats():
            stats.errors += 1
        self._last_error = reason
        self._log_refusal(reason)

    def _publish_diagnostics(self) -> None:
        w = self._diag_stats.window()
        if w["errors"] and not w["frames"]:
            level, text = DiagnosticStatus.ERROR, f"every message refused: {self._last_error}"
        elif w["errors"]:
            level, text = DiagnosticStatus.WARN, f"{w['errors']} message(s) refused: {self._last_error}"
        elif self._sub.get_publisher_count() == 0:
            level, text = DiagnosticStatus.WARN, "no publisher on rgbd/compressed"
        else:
            level, text = DiagnosticStatus.OK, "decoding"
        values = {"frames": self.stats.frames, "fps": w["fps"], "kbit_s_in": w["kbit_s"],
                  "compression_ratio": w["ratio"], "decode_latency_ms": w["latency_ms"],
                  "decode_latency_max_ms": 1000.0 * self.stats.latency_max_s,
                  "refused": self.stats.errors, "skipped_no_subscriber": self.stats.dropped,
                  "codecs": ",".join(sorted(self._backends))}
        self._diag_pub.publish(common.diagnostic_array(self, level, text, values, "decoder"))

    def _log_statistics(self) -> None:
        w = self._log_stats.window()
        if w["frames"] == 0 and w["errors"] == 0:
            return
        self.get_logger().info(
            f"{w['frames']} frames in {w['seconds']:.1f} s ({w['fps']:.1f} fps), in {w['kbit_s']:.0f} kbit/s, "
            f"decode {w['latency_ms']:.1f} ms, refused {w['errors']}; total {self.stats.frames} frames, "
            f"refused {self.stats.errors}")


def main(argv=None) -> int:
    return common.run_node(DecoderNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
