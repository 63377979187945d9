"""decoder_node: CompressedRGBD in, the original colour + depth images and camera infos out.

Subscribes ``rgbd/compressed`` and publishes ``decoded/color/image_raw``,
``decoded/depth/image_raw``, ``decoded/color/camera_info`` and
``decoded/depth/camera_info`` with the original stamps, frame_ids, sizes and
encodings. A message that cannot be decoded (damaged payload, unknown codec,
inconsistent fields, a frame over ``max_pixels``, ...) is logged, throttled,
and dropped; the node keeps running. What a codec library prints to stderr
while decoding goes into that log line too. The message's size fields are
checked against ``max_pixels`` before anything is decoded, and every backend
is told the limit (``configure(max_pixels=...)``), so that it checks the
payload's own size before decoding. The latest camera infos received ride
along every decoded frame.

Temporal colour (h264, hevc, av1): frames decode in order from a keyframe. A predicted frame
whose reference this node does not hold (it joined late, a frame was lost or damaged, the
encoder restarted) is not decoded and nothing is published until the next keyframe; the node
asks for one on ``rgbd/keyframe_request`` (std_msgs/String, the reason), at most every
``keyframe_request_period_s`` while it waits. Duplicates and late reordered copies are dropped.

Link feedback (``feedback_period`` > 0): every period the node publishes
``rgbd/link_feedback`` (diagnostic_msgs/DiagnosticStatus, key/values) with what arrived over
the link: kbit/s, frames, the running count of frames received, the newest stamp and sequence
number received (the encoder, which knows what it sent, turns counts and stamps into loss),
latency from the stamps (receive time minus capture stamp: needs synchronized clocks across
machines), and a loss estimate from gaps in the sequence numbers (from gaps in the stamps for
format-1 senders, which have none).

With ``publish_points`` the decoded pair also goes out as an organized XYZRGB
``decoded/points`` (sensor_msgs/PointCloud2, rgbd_codec_ros.ros.points) in the colour camera's
frame, from the colour camera_info carried in the messages.

Backend options: each option a backend's schema lists for decoding is a typed parameter
``classical.<option>`` / ``learned.<option>`` (``classical.video_threads``, ``learned.pixel_exact``,
``learned.runtime``, ``learned.device``, ``learned.threads``; ``max_pixels`` and ``model_path``
are the node's own parameters). A backend is made with them on first use; the live ones are
applied to a backend already made (a value it refuses is refused with its reason), the others
(device, threads: only a new backend takes them) are read-only.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Dict, Optional

import numpy as np

from rclpy.node import Node
from rclpy.serialization import deserialize_message

from rgbd_codec_ros import convert
from rgbd_codec_ros.codec.base import (DEFAULT_MAX_PIXELS, HARD_MAX_PIXELS, LEARNED_DEFAULT_MAX_PIXELS, CodecError,
                                       MissingReference, create_backend)
from rgbd_codec_ros.codec.base import check_options, option_schema
from rgbd_codec_ros.ros import codec_switch, common, points
from rgbd_codec_ros.ros.options import explicit_options, typed_options
from rgbd_codec_ros.ros.stats import StreamStats

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rgbd_codec_ros.msg import CompressedRGBD
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import String as KeyframeRequest

NODE_NAME = "rgbd_decoder"
#: backend options this node has as parameters of its own (one limit for every backend; the
#: weights search path)
NODE_OWNED_OPTIONS = ("max_pixels", "model_path")
#: backends whose decoding options are typed parameters of this node
TYPED_BACKENDS = ("classical", "learned")
#: '<backend>.<option>' -> (backend, OptionSpec)
TYPED = typed_options(TYPED_BACKENDS, "decode", owned=NODE_OWNED_OPTIONS)


def typed_parameter_specs() -> Dict[str, tuple]:
    specs = {}
    for name, (codec, spec) in TYPED.items():
        rng = (0, codec_switch.max_threads()) if (codec, spec.name) == ("learned", "threads") else None
        note = "live" if spec.live else "read at start: only a new backend takes it"
        specs[name] = (spec.default, common.describe_option(spec, read_only=not spec.live, note=note,
                                                            value_range=rng))
    return specs


def parameter_specs() -> Dict[str, tuple]:
    return {**_node_parameter_specs(common.describe), **typed_parameter_specs()}


def _node_parameter_specs(d) -> Dict[str, tuple]:
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
        "max_pixels": (0, d("Largest frame (width x height) this decoder decodes; larger messages are "
                            "dropped before decoding. 0 = each backend's default (classical "
                            f"{DEFAULT_MAX_PIXELS}, learned {LEARNED_DEFAULT_MAX_PIXELS}); changeable live",
                            int_range=(0, HARD_MAX_PIXELS))),
        "max_age_s": (0.0, d("Drop, undecoded, a message whose stamp is older than this many seconds when "
                             "the decoder gets to it; 0 = off (the default: bags replay old stamps)",
                             float_range=(0.0, 3600.0))),
        "publish_points": (False, d("Also publish decoded/points: an organized XYZRGB sensor_msgs/PointCloud2 "
                                    "in the colour camera's frame, from the camera_info carried in the "
                                    "messages (live)")),
        "keyframe_request_period_s": (0.2, d("While waiting for a keyframe (temporal colour), ask the encoder "
                                             "for one on rgbd/keyframe_request at most this often (live)",
                                             float_range=(0.01, 60.0))),
        "feedback_period": (0.5, d("Seconds between rgbd/link_feedback reports (received kbit/s, loss, "
                                   "latency, newest stamp) for the encoder's adapt_to_link; 0 = none",
                                   read_only=True, float_range=(0.0, 60.0))),
        "diagnostics_period": (1.0, d("Seconds between /diagnostics messages; 0 = none", read_only=True,
                                      float_range=(0.0, 3600.0))),
        "log_period": (10.0, d("Seconds between statistics log lines; 0 = none", read_only=True,
                               float_range=(0.0, 3600.0))),
    }


#: the frame-size limit of a backend that is not told one (max_pixels 0)
BACKEND_DEFAULT_MAX_PIXELS = {"learned": LEARNED_DEFAULT_MAX_PIXELS}


#: backends whose default this node knows (to go back to it when max_pixels returns to 0)
BACKEND_DEFAULTS_KNOWN = ("classical", "learned")


def default_max_pixels(codec: str) -> int:
    return BACKEND_DEFAULT_MAX_PIXELS.get(codec, DEFAULT_MAX_PIXELS)


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
        # options of backends that need more than their defaults to decode: the typed parameters
        # off their defaults (checked now: choices and this machine's bounds), and model_path
        self._backend_options: Dict[str, Dict[str, Any]] = {}
        for codec in TYPED_BACKENDS:
            values = {spec.name: p[name] for name, (c, spec) in TYPED.items() if c == codec}
            try:
                values = check_options(option_schema(codec), values, codec)
                codec_switch.check_codec_options(codec, explicit_options(values, option_schema(codec)))
            except CodecError as exc:
                raise common.StartupError(str(exc)) from exc
            explicit = explicit_options(values, option_schema(codec))
            if explicit:
                self._backend_options[codec] = explicit
        if p["model_path"]:
            self._backend_options.setdefault("learned", {})["model_path"] = p["model_path"]
        self._color_info: Optional[CameraInfo] = None
        self._depth_info: Optional[CameraInfo] = None
        self.stats = StreamStats()
        self._last_error: Optional[str] = None
        self._log_refusal = common.RefusalLog(self.get_logger())
        self._native = common.NativeOutput()
        self._stale_drops = 0
        out_qos = common.qos_profile(p["output_qos"], p["output_depth"])
        self._pub_color = self.create_publisher(Image, "decoded/color/image_raw", out_qos)
        self._pub_depth = self.create_publisher(Image, "decoded/depth/image_raw", out_qos)
        self._pub_color_info = self.create_publisher(CameraInfo, "decoded/color/camera_info", out_qos)
        self._pub_depth_info = self.create_publisher(CameraInfo, "decoded/depth/camera_info", out_qos)
        self._pub_points = self.create_publisher(PointCloud2, "decoded/points", out_qos)
        self._outputs = (self._pub_color, self._pub_depth, self._pub_color_info, self._pub_depth_info,
                         self._pub_points)
        # link feedback: what arrived in the current period, and running totals
        self._arrivals: deque = deque()   # (monotonic time, bytes, stamp ns, latency ms, sequence)
        self._frames_total = 0
        self._last_stamp_ns = 0
        self._last_sequence: Optional[int] = None
        # temporal colour: waiting for a keyframe, and the requests made for one
        self._keyframe_pub = self.create_publisher(KeyframeRequest, "rgbd/keyframe_request", 10)
        self._last_request: Optional[float] = None
        self._keyframe_requests = 0
        self._waiting_drops = 0     # predicted frames not decoded for want of their reference
        self._duplicate_drops = 0   # duplicates and late reordered copies
        if p["feedback_period"] > 0:
            from diagnostic_msgs.msg import DiagnosticStatus as _Status

            self._feedback_pub = self.create_publisher(_Status, "rgbd/link_feedback", 10)
            self.create_timer(p["feedback_period"], self._publish_feedback)
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
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"decoding {self._sub.topic_name} -> {self._pub_color.topic_name}, {self._pub_depth.topic_name}")

    def _all_stats(self):
        return [s for s in (self.stats, getattr(self, "_diag_stats", None), getattr(self, "_log_stats", None))
                if s is not None]

    # ---------------------------------------------------------------- parameters

    def _on_set_parameters(self, params) -> Any:
        """max_pixels, max_age_s, publish_points and the live typed backend options (rclpy has
        checked types and ranges; the schema checks choices, the backend what it takes)."""
        changes = {prm.name: prm.value for prm in params}
        by_codec: Dict[str, Dict[str, Any]] = {}
        for name, value in changes.items():
            if name in TYPED:
                codec, spec = TYPED[name]
                by_codec.setdefault(codec, {})[spec.name] = value
        try:
            for codec, values in by_codec.items():
                by_codec[codec] = check_options(option_schema(codec), values, codec)
            # a backend already made takes them now (two backends in one request: the first may
            # have taken its values when the second refuses; each backend's values stay valid)
            for codec, values in by_codec.items():
                if codec in self._backends:
                    self._backends[codec].configure(**values)
        except CodecError as exc:
            return common.result(str(exc))
        for codec, values in by_codec.items():  # and a backend made later is made with them
            kept = dict(self._backend_options.get(codec, {}), **values)
            self._backend_options[codec] = explicit_options(kept, option_schema(codec))
        self._params.update(changes)
        if "max_pixels" in changes:
            for codec, backend in list(self._backends.items()):
                if changes["max_pixels"] or codec in BACKEND_DEFAULTS_KNOWN:
                    self._tell_limit(codec, backend)
                else:  # back to a default this node does not know: made afresh on next use
                    del self._backends[codec]
        return common.result(None)

    def _limit(self, codec: str) -> int:
        return self._params["max_pixels"] or default_max_pixels(codec)

    def _tell_limit(self, codec: str, backend) -> None:
        """Tell a backend the limit in force (max_pixels, or when 0 the backend's own default)."""
        try:
            backend.configure(max_pixels=self._limit(codec))
        except Exception as exc:
            self.get_logger().warning(
                f"codec {codec!r} does not take max_pixels ({exc}); its payloads are checked against "
                "the message's size fields only", throttle_duration_sec=60.0)

    def _backend(self, codec: str):
        backend = self._backends.get(codec)
        if backend is None:
            backend = create_backend(codec, **self._backend_options.get(codec, {}))  # CodecError if unknown
            if self._params["max_pixels"]:
                self._tell_limit(codec, backend)
            self._backends[codec] = backend
        return backend

    # ---------------------------------------------------------------- messages

    def _on_serialized(self, data: bytes) -> None:
        try:
            msg = deserialize_message(data, CompressedRGBD)
        except Exception as exc:
            self._refuse(f"dropped a message of {len(data)} bytes that is not a valid CompressedRGBD: "
                         f"{str(exc).splitlines()[0]}")
            return
        self._note_arrival(len(data), msg)
        try:
            self._on_compressed(msg)
        except Exception as exc:
            self._refuse(f"dropped a message: {type(exc).__name__}: {exc}")

    def _too_old(self, msg: CompressedRGBD) -> bool:
        max_age = self._params["max_age_s"]
        age = common.stale_age_s(self, msg.header.stamp, max_age)
        if age is None:
            return False
        self._stale_drops += 1
        for stats in self._all_stats():
            stats.dropped += 1
        self.get_logger().warning(
            f"message stamped {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} is {age:.1f} s old, over "
            f"max_age_s {max_age:g}: dropped without decoding ({self._stale_drops} so far)",
            throttle_duration_sec=5.0)
        return True

    def _check_size(self, msg: CompressedRGBD) -> None:
        """The message's own size fields against the limit, before a backend is made or decodes."""
        convert.check_compressed(msg)
        w, h = int(msg.color_width), int(msg.color_height)
        limit = self._limit(msg.codec)
        if w * h > limit:
            raise CodecError(f"message declares a {w}x{h} frame ({w * h} pixels), over max_pixels {limit}: "
                             "not decoded")

    def _on_compressed(self, msg: CompressedRGBD) -> None:
        if self._params["lazy"] and not any(pub.get_subscription_count() for pub in self._outputs):
            for stats in self._all_stats():
                stats.dropped += 1
            return
        if self._too_old(msg):
            return
        start = time.perf_counter()
        native = self._native
        native.text = ""
        try:
            self._check_size(msg)
            self._backend(msg.codec)  # made on first use (importing torch may warn: not this message's)
            with native.capture():
                color, depth = decode_to_images(msg, self._backends)
        except MissingReference as exc:
            self._missing_reference(msg, exc)
            return
        except CodecError as exc:
            if not getattr(msg, "keyframe", True):  # a damaged predicted frame: the chain is broken
                self._request_keyframe(f"damaged frame {msg.sequence}")
            self._refuse(f"dropped a {msg.codec!r} message stamped {msg.header.stamp.sec}."
                         f"{msg.header.stamp.nanosec:09d}: {exc}" + self._native_note(native))
            return
        except Exception as exc:
            self._refuse(f"dropped a {msg.codec!r} message: {type(exc).__name__}: {exc}" + self._native_note(native))
            return
        if native.text:
            self.get_logger().warning(f"codec library output while decoding a good {msg.codec!r} message: "
                                      f"{native.summary()}", throttle_duration_sec=10.0)
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
        if self._params["publish_points"] and self._pub_points.get_subscription_count():
            self._publish_points(msg, color, depth)
        for stats in self._all_stats():
            stats.add(len(color.data) + len(depth.data), len(msg.payload), latency)

    # ---------------------------------------------------------------- temporal colour

    def _missing_reference(self, msg: CompressedRGBD, exc: MissingReference) -> None:
        """A predicted frame this node cannot decode: nothing is published for it."""
        for stats in self._all_stats():
            stats.dropped += 1
        if exc.stale:
            self._duplicate_drops += 1
            self.get_logger().debug(f"dropped a duplicate or late frame: {exc}")
            return
        self._waiting_drops += 1
        self.get_logger().info(f"waiting for a keyframe: {exc}", throttle_duration_sec=2.0)
        self._request_keyframe(str(exc))

    def _request_keyframe(self, reason: str) -> None:
        now = time.monotonic()
        if self._last_request is not None and now - self._last_request < self._params["keyframe_request_period_s"]:
            return
        self._last_request = now
        self._keyframe_requests += 1
        self._keyframe_pub.publish(KeyframeRequest(data=f"{self.get_fully_qualified_name()}: {reason}"[:300]))

    # ---------------------------------------------------------------- operator outputs

    def _publish_points(self, msg: CompressedRGBD, color: Image, depth: Image) -> None:
        info = self._color_info
        if info is None:
            self.get_logger().warning("publish_points: no colour camera_info received yet (the encoder sends "
                                      "it every camera_info_period frames): no points", throttle_duration_sec=10.0)
            return
        fx, fy, cx, cy = points.intrinsics(info)
        if not (fx > 0 and fy > 0 and all(np.isfinite((fx, fy, cx, cy)))):
            self.get_logger().warning(f"publish_points: colour camera_info has no usable K ({list(info.k)})",
                                      throttle_duration_sec=10.0)
            return
        if info.width and info.height and (info.width, info.height) != (color.width, color.height):
            # calibration of another resolution: scale the intrinsics to this one
            sx, sy = color.width / info.width, color.height / info.height
            fx, cx, fy, cy = fx * sx, (cx + 0.5) * sx - 0.5, fy * sy, (cy + 0.5) * sy - 0.5
        try:
            z = points.depth_to_metres(convert.image_to_array(depth), depth.encoding, float(msg.depth_scale_per_m))
            rgb = points.color_to_rgb(convert.image_to_array(color), color.encoding)
            pts = points.organized_points(z, rgb, fx, fy, cx, cy)
        except (CodecError, ValueError) as exc:
            self.get_logger().warning(f"publish_points: {exc}", throttle_duration_sec=10.0)
            return
        self._pub_points.publish(points.fill_pointcloud2(PointCloud2(), PointField, pts, msg.header))

    # ---------------------------------------------------------------- link feedback

    def _note_arrival(self, size: int, msg: CompressedRGBD) -> None:
        stamp = common.stamp_ns(msg.header.stamp)
        latency_ms = (self.get_clock().now().nanoseconds - stamp) / 1e6
        sequence = int(msg.sequence) if int(getattr(msg, "format_version", 0)) >= 2 else None
        self._arrivals.append((time.monotonic(), int(size), stamp, latency_ms, sequence))
        while len(self._arrivals) > 10000:  # a flood between two reports
            self._arrivals.popleft()
        self._frames_total += 1
        self._last_stamp_ns = max(self._last_stamp_ns, stamp)
        if sequence is not None:
            self._last_sequence = sequence

    def feedback_values(self) -> Dict[str, Any]:
        """This period's report (and what it covers is forgotten)."""
        period = self._params["feedback_period"]
        items, self._arrivals = list(self._arrivals), deque()
        kbps = sum(i[1] for i in items) * 8 / 1000.0 / period
        lat = np.array([i[3] for i in items], dtype=np.float64)
        stamps = np.array(sorted(i[2] for i in items), dtype=np.int64)
        sequences = [i[4] for i in items if i[4] is not None]
        loss_pct = 0.0
        if len(sequences) >= 2 and len(sequences) == len(items):
            # frames the sender numbered in this period's range that did not arrive (wrap-safe:
            # offsets from the first one of the period)
            offsets = sorted({(q - sequences[0]) & 0xFFFFFFFF for q in sequences if
                              (q - sequences[0]) & 0xFFFFFFFF < (1 << 31)})
            span = offsets[-1] + 1
            loss_pct = 100.0 * (span - len(offsets)) / span
        elif stamps.size >= 3:
            gaps = np.diff(stamps)
            gaps = gaps[gaps > 0]
            if gaps.size:
                step = float(np.median(gaps))
                missing = float(np.sum(np.maximum(np.rint(gaps / step) - 1, 0)))
                loss_pct = 100.0 * missing / (missing + stamps.size)
        return {"kbps": kbps, "frames": len(items), "frames_total": self._frames_total,
                "last_stamp_ns": self._last_stamp_ns,
                "last_sequence": "" if self._last_sequence is None else self._last_sequence,
                "latency_ms_p50": float(np.median(lat)) if lat.size else "",
                "latency_ms_max": float(lat.max()) if lat.size else "",
                "loss_pct": loss_pct, "period_s": period}

    def _publish_feedback(self) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus as _Status

        values = self.feedback_values()
        status = _Status(level=_Status.OK, name="link_feedback", message="received over the link",
                         hardware_id=self.get_fully_qualified_name())
        status.values = common.key_values({k: v for k, v in values.items() if v != ""})
        self._feedback_pub.publish(status)

    @staticmethod
    def _native_note(native: common.NativeOutput) -> str:
        text = native.summary()
        return f" (codec library said: {text})" if text else ""

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
                  "refused": self.stats.errors,
                  "skipped_no_subscriber": (self.stats.dropped - self._stale_drops - self._waiting_drops
                                            - self._duplicate_drops),
                  "stale_drops": self._stale_drops, "max_pixels": self._params["max_pixels"],
                  "waiting_for_keyframe_drops": self._waiting_drops, "duplicate_drops": self._duplicate_drops,
                  "keyframe_requests": self._keyframe_requests,
                  "codecs": ",".join(sorted(self._backends))}
        self._diag_pub.publish(common.diagnostic_array(self, level, text, values, "decoder"))

    def _log_statistics(self) -> None:
        w = self._log_stats.window()
        if w["frames"] == 0 and w["errors"] == 0:
            return
        self.get_logger().info(
            f"{w['frames']} frames in {w['seconds']:.1f} s ({w['fps']:.1f} fps), in {w['kbit_s']:.0f} kbit/s, "
            f"decode {w['latency_ms']:.1f} ms, refused {w['errors']}; total {self.stats.frames} frames, "
            f"refused {self.stats.errors}, stale drops {self._stale_drops}")


def main(argv=None) -> int:
    return common.run_node(DecoderNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
