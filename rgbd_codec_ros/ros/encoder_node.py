"""encoder_node: synchronized colour + depth in, one CompressedRGBD per pair out.

Subscribes ``color/image_raw``, ``depth/image_raw`` (and ``color/camera_info``,
``depth/camera_info`` when ``use_camera_info``), pairs them by stamp
(rgbd_codec_ros.sync), codes each pair with the backend named by ``codec``
and publishes ``rgbd/compressed``. All coding goes through the backend
interface and rgbd_codec_ros.convert; this node only wires ROS to them.

Lazy subscription (``lazy``, default true): the image topics are subscribed
only while ``rgbd/compressed`` has a subscriber, so a camera's raw streams
cost nothing when nobody listens (a bag recorder counts as a listener).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from rclpy.node import Node

from rgbd_codec_ros import convert
from rgbd_codec_ros.codec.base import CodecError, create_backend
from rgbd_codec_ros.ros import common
from rgbd_codec_ros.ros.options import parse_codec_options
from rgbd_codec_ros.ros.stats import StreamStats
from rgbd_codec_ros.sync import StampPairer

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rgbd_codec_ros.msg import CompressedRGBD  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

NODE_NAME = "rgbd_encoder"


def parameter_specs() -> Dict[str, tuple]:
    d = common.describe
    return {
        "codec": ("classical", d("Backend that codes the pairs (classical, learned, ...); changeable live")),
        "codec_options": ("", d("Backend options as 'name=value, name=value' (e.g. colour quality); "
                                "passed to the backend, changeable live")),
        "depth_scale_per_m": (1000.0, d("Units per metre of 16UC1 input depth (1000 = mm as in REP 118; "
                                        "10000 for 0.1 mm sensors); ignored for 32FC1",
                                        float_range=(1.0, 1.0e6))),
        "exact_time": (False, d("Pair only colour and depth with identical stamps")),
        "slop": (0.02, d("Approximate-time pairing: largest stamp difference in seconds",
                         float_range=(0.0, 1.0))),
        "queue_size": (10, d("Unpaired images kept per stream while waiting for a partner",
                             int_range=(1, 1000))),
        "use_camera_info": (True, d("Subscribe to color/camera_info and depth/camera_info and send "
                                    "them along", read_only=True)),
        "camera_info_period": (30, d("Attach the camera infos every N frames (and whenever they change); "
                                     "0 = only when they change", int_range=(0, 100000))),
        "lazy": (True, d("Subscribe to the images only while rgbd/compressed has subscribers",
                         read_only=True)),
        "input_qos": ("sensor_data", d("QoS of the image and camera_info subscriptions", read_only=True,
                                       choices=common.QOS_CHOICES)),
        "input_depth": (5, d("History depth of the input subscriptions", read_only=True,
                             int_range=(1, 1000))),
        "output_qos": ("reliable", d("QoS of rgbd/compressed", read_only=True,
                                     choices=("reliable", "best_effort"))),
        "output_depth": (10, d("History depth of rgbd/compressed", read_only=True, int_range=(1, 1000))),
        "diagnostics_period": (1.0, d("Seconds between /diagnostics messages; 0 = none", read_only=True,
                                      float_range=(0.0, 3600.0))),
        "log_period": (10.0, d("Seconds between statistics log lines; 0 = none", read_only=True,
                               float_range=(0.0, 3600.0))),
    }


class EncoderNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        p = common.declare(self, parameter_specs())
        for name, choices in (("input_qos", common.QOS_CHOICES), ("output_qos", ("reliable", "best_effort"))):
            reason = common.check_choice(name, p[name], choices)
            if reason:
                raise common.StartupError(reason)
        self._params = p
        try:
            self._codec_options = parse_codec_options(p["codec_options"])
            self._backend = create_backend(p["codec"], **self._codec_options)
        except Exception as exc:  # noqa: BLE001 - CodecError, or a backend that cannot load (weights, ...)
            raise common.StartupError(f"cannot start codec {p['codec']!r}: {exc}") from exc
        self._pairer = StampPairer(slop_s=p["slop"], queue_size=p["queue_size"], exact=p["exact_time"])
        self.stats = StreamStats()
        self._last_error: Optional[str] = None
        self._log_refusal = common.RefusalLog(self.get_logger())
        self._color_info: Optional[CameraInfo] = None
        self._depth_info: Optional[CameraInfo] = None
        self._info_schedule = convert.CameraInfoSchedule(p["camera_info_period"])

        self._pub = self.create_publisher(CompressedRGBD, "rgbd/compressed",
                                          common.qos_profile(p["output_qos"], p["output_depth"]))
        self._in_qos = common.qos_profile(p["input_qos"], p["input_depth"])
        self._subs: List[Any] = []
        if p["lazy"]:
            self._update_subscriptions()
            self._lazy_timer = self.create_timer(0.2, self._update_subscriptions)
        else:
            self._subscribe()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if p["diagnostics_period"] > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._diag_stats = StreamStats()
            self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        if p["log_period"] > 0:
            self._log_stats = StreamStats()
            self.create_timer(p["log_period"], self._log_statistics)
        self.get_logger().info(
            f"encoding {self.resolve_topic_name('color/image_raw')} + "
            f"{self.resolve_topic_name('depth/image_raw')} -> {self._pub.topic_name} with "
            f"{self._backend.name} ({self._backend.quality})"
            + (", subscribing while rgbd/compressed has subscribers" if p["lazy"] else ""))

    # ---------------------------------------------------------------- subscriptions

    def _subscribe(self) -> None:
        if self._subs:
            return
        self._subs = [
            self.create_subscription(Image, "color/image_raw", self._on_color, self._in_qos),
            self.create_subscription(Image, "depth/image_raw", self._on_depth, self._in_qos),
        ]
        if self._params["use_camera_info"]:
            self._subs += [
                self.create_subscription(CameraInfo, "color/camera_info", self._on_color_info, self._in_qos),
                self.create_subscription(CameraInfo, "depth/camera_info", self._on_depth_info, self._in_qos),
            ]

    def _unsubscribe(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._pairer.reset()

    def _update_subscriptions(self) -> None:
        listeners = self._pub.get_subscription_count()
        if listeners and not self._subs:
            self.get_logger().info(f"{listeners} subscriber(s) on {self._pub.topic_name}: subscribing to images")
            self._subscribe()
        elif not listeners and self._subs:
            self.get_logger().info(f"no subscriber on {self._pub.topic_name}: unsubscribing from images")
            self._unsubscribe()

    # ---------------------------------------------------------------- parameters

    def _on_set_parameters(self, params) -> Any:
        changes = {prm.name: prm.value for prm in params}
        codec = changes.get("codec", self._params["codec"])
        try:
            options = parse_codec_options(changes.get("codec_options", self._params["codec_options"]))
        except CodecError as exc:
            return common.result(str(exc))
        if "codec" in changes or "codec_options" in changes:
            try:
                if codec != self._backend.name:
                    backend = create_backend(codec, **options)  # the old one stays if this fails
                else:
                    # Same codec: reconfigure in place (a learned backend keeps its loaded
                    # weights). Options left out of the new string keep their values.
                    self._backend.configure(**options)
                    backend = self._backend
            except Exception as exc:  # noqa: BLE001 - the node keeps the backend it has
                return common.result(f"codec {codec!r} refused the options: {exc}")
            self._backend, self._codec_options = backend, options
            self.get_logger().info(f"now coding with {backend.name} ({backend.quality})")
        sync_changes = {k: changes[k] for k in ("slop", "queue_size", "exact_time") if k in changes}
        if sync_changes:
            self._pairer.configure(slop_s=sync_changes.get("slop"), queue_size=sync_changes.get("queue_size"),
                                   exact=sync_changes.get("exact_time"))
        self._params.update(changes)
        return common.result(None)

    # ---------------------------------------------------------------- callbacks

    def _on_color_info(self, msg: CameraInfo) -> None:
        self._color_info = msg

    def _on_depth_info(self, msg: CameraInfo) -> None:
        self._depth_info = msg

    def _on_color(self, msg: Image) -> None:
        for pair in self._pairer.add_color(common.stamp_ns(msg.header.stamp), msg):
            self._encode(pair.color, pair.depth)

    def _on_depth(self, msg: Image) -> None:
        for pair in self._pairer.add_depth(common.stamp_ns(msg.header.stamp), msg):
            self._encode(pair.color, pair.depth)

    def _infos_to_send(self):
        """The camera infos to attach to this frame: periodically and whenever they change."""
        self._info_schedule.period = self._params["camera_info_period"]
        return self._info_schedule.infos_for_frame(self._color_info, self._depth_info)

    def _encode(self, color_msg: Image, depth_msg: Image) -> None:
        start = time.perf_counter()
        try:
            color_arr = convert.image_to_array(color_msg)
            depth_arr = convert.image_to_array(depth_msg)
            frame = convert.images_to_frame(color_arr, color_msg.encoding, depth_arr, depth_msg.encoding,
                                            self._params["depth_scale_per_m"])
            encoded = self._backend.encode(frame)
            fields = convert.compressed_fields(encoded, frame, color_msg.encoding, depth_msg.encoding)
        except CodecError as exc:
            self._refuse(f"pair at {color_msg.header.stamp.sec}.{color_msg.header.stamp.nanosec:09d} "
                         f"dropped: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a backend bug must not stop the node
            self._refuse(f"pair dropped, {self._backend.name} failed: {type(exc).__name__}: {exc}")
            return
        out = CompressedRGBD()
        convert.fill_compressed(out, fields, header=color_msg.header, depth_header=depth_msg.header)
        color_info, depth_info = self._infos_to_send()
        out.color_camera_info = [color_info] if color_info is not None else []
        out.depth_camera_info = [depth_info] if depth_info is not None else []
        self._pub.publish(out)
        latency = time.perf_counter() - start
        raw = len(color_msg.data) + len(depth_msg.data)
        for stats in self._all_stats():
            stats.add(raw, len(fields["payload"]), latency)

    def _refuse(self, reason: str) -> None:
        for stats in self._all_stats():
            stats.errors += 1
        self._last_error = reason
        self._log_refusal(reason)

    def _all_stats(self):
        return [s for s in (self.stats, getattr(self, "_diag_stats", None), getattr(self, "_log_stats", None))
                if s is not None]

    # ---------------------------------------------------------------- reporting

    def _sync_drops(self) -> int:
        return self._pairer.dropped_color + self._pairer.dropped_depth

    def _publish_diagnostics(self) -> None:
        w = self._diag_stats.window()
        since = self.stats.seconds_since_last_frame()
        if not self._subs:
            level, text = DiagnosticStatus.OK, "idle: nobody subscribes to rgbd/compressed"
        elif w["frames"] == 0 and w["errors"] > 0:
            level, text = DiagnosticStatus.ERROR, f"every pair refused: {self._last_error}"
        elif since is None or since > 5.0:
            level, text = DiagnosticStatus.WARN, "no synchronized colour + depth pairs coming in"
        elif w["errors"]:
            level, text = DiagnosticStatus.WARN, f"{w['errors']} pair(s) refused: {self._last_error}"
        else:
            level, text = DiagnosticStatus.OK, "encoding"
        values = {"codec": self._backend.name, "model_id": self._backend.model_id,
                  "quality": self._backend.quality, "frames": self.stats.frames,
                  "bytes": self.stats.bytes_out, "fps": w["fps"], "kbit_s": w["kbit_s"],
                  "compression_ratio": w["ratio"], "encode_latency_ms": w["latency_ms"],
                  "encode_latency_max_ms": 1000.0 * self.stats.latency_max_s,
                  "refused": self.stats.errors, "sync_drops": self._sync_drops(),
                  "subscribed": bool(self._subs)}
        self._diag_pub.publish(common.diagnostic_array(self, level, text, values, "encoder"))

    def _log_statistics(self) -> None:
        w = self._log_stats.window()
        if not self._subs and w["frames"] == 0:
            return
        self.get_logger().info(
            f"{w['frames']} frames in {w['seconds']:.1f} s ({w['fps']:.1f} fps), {w['kbit_s']:.0f} kbit/s, "
            f"ratio {w['ratio']:.1f}:1, encode {w['latency_ms']:.1f} ms; total {self.stats.frames} frames, "
            f"{self.stats.bytes_out} bytes, refused {self.stats.errors}, sync drops {self._sync_drops()}")


def main(argv=None) -> int:
    return common.run_node(EncoderNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
