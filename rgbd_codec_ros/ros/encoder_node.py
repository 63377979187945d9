"""encoder_node: synchronized colour + depth in, one CompressedRGBD per pair out.

Subscribes ``color/image_raw``, ``depth/image_raw`` (and ``color/camera_info``,
``depth/camera_info`` when ``use_camera_info``), pairs them by stamp
(rgbd_codec_ros.sync), codes each pair with the backend named by ``codec``
and publishes ``rgbd/compressed``. All coding goes through the backend
interface and rgbd_codec_ros.convert; this node only wires ROS to them.

Lazy subscription (``lazy``, default true): the image topics are subscribed
only while ``rgbd/compressed`` has a subscriber, so a camera's raw streams
cost nothing when nobody listens (a bag recorder counts as a listener).

``codec`` and ``codec_options`` change live (rgbd_codec_ros.ros.codec_switch):
the values are checked in the parameter callback, a backend that is slow to
make (learned weights) is built on a worker thread while the old one keeps
coding, and it is swapped in between two frames; if building fails the old
backend stays and the parameters are set back. Pairs whose capture stamp is
older than ``max_age_s`` when the encoder gets to them are dropped uncoded.

Rate control (``target_kbps`` > 0, rgbd_codec_ros.ratecontrol, docs/ratecontrol.md): each
frame's settings (classical: colour quality, depth mode and error bound; learned: the
fractional quality) are chosen so that no 1 s window of rgbd/compressed carries more than the
target; a frame that comes out too big is re-coded smaller or skipped. While it is on, only
the newest pair is coded: pairs that arrive while one is being coded replace each other. With
``adapt_to_link`` the target in force follows rgbd/link_feedback from the decoder.

Temporal colour (``codec_options`` ``color_codec=h264|hevc|av1``): a keyframe every
``keyframe_interval`` frames, and on request: any message on ``rgbd/keyframe_request``
(std_msgs/String, the reason; decoders send it when they join late or see a gap) makes the
next frame a keyframe, at most one per ``keyframe_request_min_interval_s`` (a request inside
that time is served when it ends, not dropped). Under rate control the video encoder keeps its
share of the budget itself (its rate control, VBV <= 0.5 s): the controller chooses depth only,
and never skips or re-codes a frame after the video encoder has coded it (that would break the
reference chain). Every message carries ``sequence`` (the count of frames published) and
``keyframe``.

Backend options (docs/ros.md, "Backend options"): each option a backend's schema lists for
encoding is a typed parameter ``classical.<option>`` / ``learned.<option>`` (range, choices and
description in its descriptor; ``keyframe_interval`` is the node's own parameter). They all
change live: through the same checked path as ``codec_options`` (a weights, device or threads
change of the learned backend makes a new one in the background). ``codec_options`` stays as a
shorthand for the backend in force. Precedence: at start, an entry of ``codec_options`` wins
over the typed parameter (its YAML value, command-line value or default); afterwards the last
set wins, and in one request that sets both, the ``codec_options`` entry. The typed parameters
of the backend in force always show the options in force (the node sets them to what a
``codec_options`` change put in force); ``codec_options`` shows the last shorthand given. Typed
parameters of the other backend are checked and kept for when ``codec`` switches to it.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message

from rgbd_codec_ros import convert, ratecontrol
from rgbd_codec_ros.codec.base import CodecError, check_options, option_schema
from rgbd_codec_ros.codec.classical import DEFAULTS as CLASSICAL_DEFAULTS, LOSSLESS_DEPTH_CODECS
from rgbd_codec_ros.ros import codec_switch, common
from rgbd_codec_ros.ros.options import explicit_options, parse_codec_options, typed_options
from rgbd_codec_ros.ros.stats import StreamStats
from rgbd_codec_ros.sync import StampPairer

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from diagnostic_msgs.msg import DiagnosticStatus as LinkFeedback
from rgbd_codec_ros.msg import CompressedRGBD
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String as KeyframeRequest

NODE_NAME = "rgbd_encoder"
#: the smallest non-zero target_kbps taken before any frame has shown what a frame costs
MIN_TARGET_KBPS = 10.0
#: options the rate controller sets per frame (restored from codec_options when it stops)
RATE_OPTIONS = {"classical": ("color_quality", "depth_codec", "depth_max_error_mm", "depth_rel_error",
                              "color_bitrate_kbps"),
                "learned": ("quality",)}
#: share of the colour budget handed to a video encoder's own rate control (its VBV lets a
#: keyframe overshoot a little; the message fields and camera infos ride outside it)
VIDEO_RATE_SHARE = 0.9
#: depth_share when the parameter is negative (automatic), by colour codec: measured on the
#: D4xx frames at 1000 kbit/s (benchmarks/bench_teleop_sim.py, docs/results/teleop.json), 0.6
#: suits H.264 colour and 0.35 JPEG colour
AUTO_DEPTH_SHARE_VIDEO = 0.6
AUTO_DEPTH_SHARE_INTRA = 0.35
#: codec options the node's own parameters own
NODE_OWNED_OPTIONS = {"keyframe_interval": "keyframe_interval"}
#: backends whose options are typed parameters of this node
TYPED_BACKENDS = ("classical", "learned")
#: '<backend>.<option>' -> (backend, OptionSpec): the encoding options of every typed backend
TYPED = typed_options(TYPED_BACKENDS, "encode", owned=NODE_OWNED_OPTIONS)


def explicit_unset(codec: str) -> tuple:
    """Options of a backend whose '' means 'not given' (the default is '')."""
    return tuple(spec.name for spec in option_schema(codec) if spec.type is str and spec.default == "")


def lossless_depth_codec(options: Dict[str, Any]) -> str:
    """The richest rung of the classical depth ladder: the lossless depth codec the codec_options
    name, else the classical default."""
    codec = options.get("depth_codec")
    return codec if codec in LOSSLESS_DEPTH_CODECS else CLASSICAL_DEFAULTS["depth_codec"]


def typed_parameter_specs() -> Dict[str, tuple]:
    """The typed backend options: ``{name: (default, ParameterDescriptor)}``."""
    specs = {}
    for name, (codec, spec) in TYPED.items():
        # every one changes live here: what a running backend does not take (learned weights,
        # device, threads) the node applies by making a new backend, as for codec_options
        note = "live"
        if not spec.live:
            note = "live: a new backend is made in the background"
        rng = (0, codec_switch.max_threads()) if (codec, spec.name) == ("learned", "threads") else None
        specs[name] = (spec.default, common.describe_option(spec, note=note, value_range=rng))
    return specs


def parameter_specs() -> Dict[str, tuple]:
    d = common.describe
    return {**_node_parameter_specs(d), **typed_parameter_specs()}


def _node_parameter_specs(d) -> Dict[str, tuple]:
    return {
        "codec": ("classical", d("Backend that codes the pairs (classical, learned, ...); changeable live")),
        "codec_options": ("", d("Shorthand for the typed options (classical.*, learned.*) of the backend in "
                                "'codec', as 'name=value, name=value'; at start its entries win over the "
                                "typed parameters, afterwards the last set wins; changeable live (a learned "
                                "backend is loaded in the background and swapped in when ready)",
                                constraints=f"learned threads: 0..{codec_switch.max_threads()}")),
        "max_age_s": (1.0, d("Drop, uncoded, a pair whose capture stamp is older than this many seconds "
                             "when the encoder gets to it (stale frames queued behind a slow codec); "
                             "0 = off (replayed data with old stamps and no use_sim_time)",
                             float_range=(0.0, 3600.0))),
        "target_kbps": (0.0, d("Bit-rate budget of rgbd/compressed in kbit/s, kept over every 1 s window "
                               "by choosing each frame's settings (and skipping frames when even the "
                               "cheapest do not fit); 0 = off (live). A target below what one frame "
                               "at the cheapest settings needs is refused", float_range=(0.0, 1.0e6))),
        "depth_share": (-1.0, d("Share of each frame's budget for depth under rate control (classical; "
                                "what one stream leaves unused goes to the other); negative = automatic: "
                                f"{AUTO_DEPTH_SHARE_VIDEO:g} with a temporal colour codec (h264, hevc, av1), "
                                f"{AUTO_DEPTH_SHARE_INTRA:g} with an intra one (live)",
                                float_range=(-1.0, 1.0))),
        "keyframe_interval": (30, d("Temporal colour codecs (codec_options color_codec=h264, hevc, av1): a "
                                    "keyframe every this many frames; 0 = only the first and on request (live)",
                                    int_range=(0, 100000))),
        "keyframe_request_min_interval_s": (0.2, d("Least time between two keyframes made on request "
                                                   "(rgbd/keyframe_request); a request inside it is served when "
                                                   "it ends (live)", float_range=(0.0, 60.0))),
        "adapt_to_link": (False, d("Lower the target in force when rgbd/link_feedback shows loss or rising "
                                   "latency, probe back up to target_kbps when the link clears (live)")),
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
        # the typed backend options, per backend: the values in force (the backend in force) or
        # kept for when ``codec`` switches to that backend
        self._typed: Dict[str, Dict[str, Any]] = {c: {} for c in TYPED_BACKENDS}
        for name, (codec, spec) in TYPED.items():
            self._typed[codec][spec.name] = p[name]
        try:
            for codec in TYPED_BACKENDS:
                self._typed[codec] = self._check_typed(codec, self._typed[codec])
            text_options = self._check_options(p["codec"], p["codec_options"])
            # at start, codec_options entries win over the typed parameters
            typed_in_force = self._explicit(p["codec"])
            for key, value in text_options.items():
                if key in typed_in_force and typed_in_force[key] != value:
                    self.get_logger().warning(
                        f"codec_options sets {key}={value}, over the parameter {p['codec']}.{key}="
                        f"{typed_in_force[key]}: codec_options wins at start")
            options = dict(typed_in_force, **text_options)
            self._backend = codec_switch.build_backend(p["codec"], options)
            self._apply_keyframe_interval(self._backend)
        except Exception as exc:
            raise common.StartupError(f"cannot start codec {p['codec']!r}: {exc}") from exc
        codec_switch.apply_node_options(p["codec"], options)
        # the typed parameters show what is in force (no callback is registered yet)
        self._mirroring = False
        self._note_in_force(p["codec"], options)
        self.set_parameters(self._mirror_changes())
        self._mirror_due = self.create_guard_condition(self._mirror_typed)
        # the codec in force, and the one asked for (they differ while a new backend is built):
        # (codec name, options, the codec_options text they came from)
        self._active = self._target = (p["codec"], options, p["codec_options"])
        self._build_done = self.create_guard_condition(self._on_backend_built)
        self._builder = codec_switch.BackgroundBuilder(
            lambda key: codec_switch.build_backend(key[0], key[1]), self._build_done.trigger)
        self._stale_drops = 0
        # rate control (target_kbps > 0): made on the first frame, per codec
        target = p["target_kbps"]
        if 0 < target < MIN_TARGET_KBPS:
            raise common.StartupError(f"target_kbps {target:g} is below what one frame can carry (at least "
                                      f"{MIN_TARGET_KBPS:g} kbit/s; 0 = rate control off)")
        self._rc: Optional[ratecontrol.RateController] = None
        self._rc_key = None
        self._adapter: Optional[ratecontrol.LinkAdapter] = None
        self._sent_log = ratecontrol.SentLog()
        self._last_pixels: Optional[int] = None
        self._pending = None          # the newest pair waiting to be coded (rate control on)
        self._superseded = 0
        self._rate_skips = 0
        self._recoded = 0
        self._feedback_refused = 0
        self._encode_due = self.create_guard_condition(self._on_encode_due)
        self._img_subs: List[Any] = []
        self._feedback_sub = self.create_subscription(LinkFeedback, "rgbd/link_feedback", self._on_feedback, 10)
        # keyframes on request, and the message sequence
        self._sequence = 0
        self._keyframe_wanted_since: Optional[float] = None   # monotonic time of the oldest open request
        self._last_requested_keyframe: Optional[float] = None
        self._keyframe_requests = 0
        self._keyframes = 0
        self._over_budget = 0
        self._colour_window = ratecontrol.SlidingWindow(1.0)   # video colour bits sent, last second
        self._keyframe_sub = self.create_subscription(KeyframeRequest, "rgbd/keyframe_request",
                                                      self._on_keyframe_request, 10)
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
        self._img_subs = list(self._subs)
        if self._params["use_camera_info"]:
            self._subs += [
                self.create_subscription(CameraInfo, "color/camera_info", self._on_color_info, self._in_qos),
                self.create_subscription(CameraInfo, "depth/camera_info", self._on_depth_info, self._in_qos),
            ]

    def _unsubscribe(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._img_subs = []
        self._pending = None
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
        """Check everything first; apply only what passed (rclpy has checked the ranges)."""
        if self._mirroring:  # the node itself setting the typed parameters to what is in force
            return common.result(None)
        changes = {prm.name: prm.value for prm in params}
        typed = {name: value for name, value in changes.items() if name in TYPED}
        if "target_kbps" in changes:
            reason = self._check_target(changes["target_kbps"])
            if reason is not None:
                return common.result(reason)
        if "keyframe_interval" in changes:
            try:
                self._apply_keyframe_interval(self._backend, changes["keyframe_interval"])
            except CodecError as exc:
                return common.result(f"keyframe_interval refused: {exc}")
        if "codec" in changes or "codec_options" in changes or typed:
            reason = self._change_codec(changes.get("codec", self._params["codec"]),
                                        changes.get("codec_options", self._params["codec_options"]),
                                        typed, use_text="codec" in changes or "codec_options" in changes)
            if reason is not None:
                return common.result(reason)
        sync_changes = {k: changes[k] for k in ("slop", "queue_size", "exact_time") if k in changes}
        if sync_changes:
            self._pairer.configure(slop_s=sync_changes.get("slop"), queue_size=sync_changes.get("queue_size"),
                                   exact=sync_changes.get("exact_time"))
        was_on = self._rate_on()
        self._params.update(changes)
        if was_on and not self._rate_on():
            self._rate_off()
        elif self._rc is not None and ("target_kbps" in changes or "adapt_to_link" in changes):
            self._retarget()
        if self._rc is not None and "depth_share" in changes:
            self._rc.depth_share = self._depth_share()
            self._set_rate_target()
        return common.result(None)

    def _check_options(self, codec: str, text: str) -> Dict[str, Any]:
        """codec_options checked: the node's bounds first (threads: this machine's CPUs), then the
        backend's schema (names, types, ranges; values become the options' types)."""
        options = codec_switch.check_codec_options(codec, parse_codec_options(text))
        for key, param in NODE_OWNED_OPTIONS.items():
            if key in options:
                raise CodecError(f"{key} is the node parameter {param!r}, not a codec option")
        if codec in TYPED_BACKENDS:
            options = check_options(option_schema(codec), options, codec)
        return options

    def _check_typed(self, codec: str, values: Dict[str, Any]) -> Dict[str, Any]:
        """Typed parameter values of one backend checked (rclpy has checked types and ranges; here
        choices and the node's bounds). CodecError says what is wrong."""
        codec_switch.check_codec_options(codec, explicit_options(values, option_schema(codec)))
        return dict(values, **check_options(option_schema(codec), values, codec))

    def _explicit(self, codec: str) -> Dict[str, Any]:
        """The typed options of a backend that differ from its defaults (what a new one is made with)."""
        return explicit_options(self._typed.get(codec, {}), option_schema(codec)) if codec in self._typed else {}

    def _note_in_force(self, codec: str, options: Dict[str, Any]) -> None:
        """The typed options of the backend in force are what is in force."""
        if codec not in self._typed:
            return
        for name, (c, spec) in TYPED.items():
            if c == codec:
                self._typed[codec][spec.name] = options.get(spec.name, spec.default)

    def _mirror_changes(self) -> List[Parameter]:
        out = []
        for name, (codec, spec) in TYPED.items():
            value = self._typed[codec][spec.name]
            if self.get_parameter(name).value != value:
                out.append(Parameter(name, value=spec.type(value)))
        return out

    def _mirror_typed(self) -> None:
        """Set the typed parameters to what is in force (after a codec_options change, or a build
        that failed); the parameter callback lets these through unchanged."""
        changes = self._mirror_changes()
        if not changes:
            return
        self._mirroring = True
        try:
            self.set_parameters(changes)
        finally:
            self._mirroring = False

    def _apply_keyframe_interval(self, backend, value: Optional[int] = None) -> None:
        if backend.name == "classical":
            backend.configure(keyframe_interval=self._params["keyframe_interval"] if value is None else value)

    # ---------------------------------------------------------------- keyframes on request

    def _on_keyframe_request(self, msg) -> None:
        """Any message asks for a keyframe (its text is the reason, for the log)."""
        self._keyframe_requests += 1
        if self._keyframe_wanted_since is None:
            self._keyframe_wanted_since = time.monotonic()
        reason = str(getattr(msg, "data", ""))[:200]
        self.get_logger().info(f"keyframe requested ({reason or 'no reason given'})", throttle_duration_sec=2.0)

    def _keyframe_due(self) -> bool:
        """Whether an open request may be served by the next frame (rate-limited)."""
        if self._keyframe_wanted_since is None or not self._backend.temporal:
            return False
        last = self._last_requested_keyframe
        return last is None or time.monotonic() - last >= self._params["keyframe_request_min_interval_s"]

    def _prepare_frame(self) -> None:
        if self._keyframe_due():
            self._backend.request_keyframe()
            self._last_requested_keyframe = time.monotonic()

    def _published(self, encoded) -> None:
        """Book-keeping after a message went out: sequence, and keyframes answering requests."""
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        if encoded.keyframe:
            self._keyframes += 1
            self._keyframe_wanted_since = None  # every open request is answered by this keyframe

    # ---------------------------------------------------------------- rate control

    def _rate_on(self) -> bool:
        return self._params["target_kbps"] > 0

    def _min_target_kbps(self) -> float:
        """What one frame at the cheapest settings needs (once a frame has shown its size)."""
        if self._last_pixels is None:
            return MIN_TARGET_KBPS
        rc = self._rc if self._rc is not None and self._rc_key == self._controller_key() else \
            self._new_controller(1.0)
        return max(MIN_TARGET_KBPS, rc.min_target_kbps(self._last_pixels))

    def _check_target(self, target: float) -> Optional[str]:
        if target == 0:
            return None
        floor = self._min_target_kbps()
        if target < floor:
            size = f" for {self._last_pixels} pixels" if self._last_pixels else ""
            return (f"target_kbps {target:g} is below what one frame can carry: one frame at the cheapest "
                    f"settings{size} needs about {floor:.0f} kbit/s to fit a 1 s window (0 = rate control off)")
        return None

    def _controller_key(self):
        codec, options, _ = self._active
        return (codec, options.get("color_codec"), options.get("depth_codec"), options.get("weights"))

    def _set_rate_target(self) -> None:
        """Tell the controller (and a video encoder) the target in force."""
        if self._rc is None:
            return
        target = self._target_in_force()
        if self._video_colour():
            # colour gets its share; depth gets at least its own, and whatever colour left unused
            # over the last second (a static scene costs the video encoder little)
            share = self._depth_share()
            colour_kbps = self._colour_window.bits(time.monotonic()) / 1000.0
            self._rc.set_target(max(target * share, target - colour_kbps))
            self._backend.configure(color_bitrate_kbps=max(10.0, target * (1 - share) * VIDEO_RATE_SHARE))
        else:
            self._rc.set_target(target)

    def _depth_share(self) -> float:
        """depth_share in force: the parameter, or where it is negative the share that suits the
        colour codec. Video colour is cheap (H.264 at 250-350 kbit/s gives 34-35 dB on the D4xx
        frames) and depth is what costs there; intra JPEG colour is what costs
        (docs/ratecontrol.md, benchmarks/bench_teleop_sim.py)."""
        share = self._params["depth_share"]
        if share >= 0:
            return share
        return AUTO_DEPTH_SHARE_VIDEO if self._video_colour() else AUTO_DEPTH_SHARE_INTRA

    def _video_colour(self) -> bool:
        return self._backend.name == "classical" and self._backend.temporal

    def _new_controller(self, target: float) -> ratecontrol.RateController:
        codec, options, _ = self._active
        if codec == "classical" and self._video_colour():
            # the video encoder keeps its own share (its rate control): the controller sees depth only
            lossless = lossless_depth_codec(options)
            return ratecontrol.RateController(target * self._depth_share(),
                                              [ratecontrol.classical_depth_ladder(lossless)])
        if codec == "learned":
            rungs, prior = ratecontrol.learned_ladder()
            if self._backend.name == "learned":  # the qualities this model takes
                ok = []
                for i, r in enumerate(rungs):
                    try:
                        self._backend.configure(**r)
                        ok.append(i)
                    except CodecError:
                        pass
                rungs, prior = [rungs[i] for i in ok] or rungs, [prior[i] for i in ok] or prior
            streams = [(rungs, prior)]
        else:
            lossless = lossless_depth_codec(options)
            streams = [ratecontrol.classical_color_ladder(), ratecontrol.classical_depth_ladder(lossless)]
        return ratecontrol.RateController(target, streams, depth_share=self._depth_share())

    def _controller(self) -> ratecontrol.RateController:
        key = self._controller_key()
        if self._rc is None or self._rc_key != key:
            self._rc, self._rc_key = self._new_controller(self._params["target_kbps"]), key
            self._retarget()
        return self._rc

    def _target_in_force(self) -> float:
        target = self._params["target_kbps"]
        if self._params["adapt_to_link"] and self._adapter is not None:
            return min(target, self._adapter.kbps)
        return target

    def _retarget(self) -> None:
        target = self._params["target_kbps"]
        floor = self._min_target_kbps()
        if self._adapter is None:
            self._adapter = ratecontrol.LinkAdapter(target, min_kbps=floor)
        else:
            self._adapter.set_limits(target, floor)
        self._set_rate_target()

    def _rate_off(self) -> None:
        """target_kbps back to 0: the options of codec_options are in force again."""
        codec, options, _ = self._active
        self._rc, self._rc_key, self._pending = None, None, None
        if codec == "classical":
            from rgbd_codec_ros.codec.classical import DEFAULTS
            restore = {k: options.get(k, DEFAULTS[k]) for k in RATE_OPTIONS["classical"]}
        elif codec == "learned":
            restore = {"quality": options.get("quality", 1.0)}
        else:
            return
        try:
            self._backend.configure(**restore)
        except Exception as exc:
            self.get_logger().warning(f"rate control off: cannot restore {restore}: {exc}")

    def _on_feedback(self, msg) -> None:
        """A link feedback report: anything may arrive here (late, missing keys, nonsense)."""
        try:
            values = {str(kv.key): str(kv.value) for kv in msg.values}
            report = ratecontrol.parse_feedback(values)
        except Exception:
            report = None
        if report is None:
            self._feedback_refused += 1
        if not (self._rate_on() and self._params["adapt_to_link"]):
            return
        if self._adapter is None:
            self._retarget()
        loss = None
        if report is not None:
            loss = self._adapter.loss_from(report, self._sent_log)
            if loss is None and report.get("frames") == 0:
                # nothing arrived in the period while frames older than a second were sent: a dead link
                now_ns = self.get_clock().now().nanoseconds
                if self._sent_log.count_between(int(report["last_stamp_ns"]), now_ns - 1_000_000_000) >= 3:
                    loss = 1.0
        before = self._adapter.kbps
        self._adapter.update(time.monotonic(), report, loss)
        self._set_rate_target()
        if abs(self._adapter.kbps - before) > 0.2 * before:
            self.get_logger().info(f"link {self._adapter.state}: target in force {self._adapter.kbps:.0f} kbit/s "
                                   f"(loss {loss if loss is not None else float('nan'):.2f}, queuing delay "
                                   f"{self._adapter.last_queue_ms if self._adapter.last_queue_ms is not None else float('nan'):.0f} ms)")

    def _change_codec(self, codec: str, text: str, typed: Optional[Dict[str, Any]] = None,
                      use_text: bool = True) -> Optional[str]:
        """Take a new codec / codec_options / typed options: None if accepted, else the reason it
        is refused.

        Options left out of the string keep their values while the codec stays the same; a new
        codec starts from its typed parameters. ``typed``: changed typed parameters
        (``{'classical.color_quality': 40}``); those of another backend than ``codec`` are checked
        and kept for when it is chosen.
        """
        by_codec: Dict[str, Dict[str, Any]] = {}
        for name, value in (typed or {}).items():
            owner, spec = TYPED[name]
            by_codec.setdefault(owner, {})[spec.name] = value
        try:
            options = self._check_options(codec, text) if use_text else {}
            for owner, values in by_codec.items():
                by_codec[owner] = check_options(option_schema(owner), values, owner)
                kept = dict(self._typed[owner], **by_codec[owner])
                self._check_typed(owner, kept)
                if owner != codec and owner in codec_switch.CHEAP_CODECS:  # the combination, checked now
                    codec_switch.build_backend(owner, explicit_options(kept, option_schema(owner)))
        except CodecError as exc:
            return str(exc)
        typed_here = by_codec.get(codec, {})
        reason = None
        if use_text or typed_here:
            base_codec, base_options, _ = self._target
            if codec == base_codec:
                wanted = dict(base_options, **typed_here, **options)
            else:
                wanted = dict(self._explicit(codec), **typed_here, **options)
            if codec in TYPED_BACKENDS:  # weights='' / model_path='': not given
                wanted = {k: v for k, v in wanted.items() if not (v == "" and k in explicit_unset(codec))}
            reason = self._take_options(codec, wanted, text)
        if reason is None:
            for owner, values in by_codec.items():
                if owner != codec:
                    self._typed[owner].update(values)
        return reason

    def _take_options(self, codec: str, wanted: Dict[str, Any], text: str) -> Optional[str]:
        """Put checked options of ``codec`` in force: in place, by a new cheap backend, or by one
        made in the background. None if accepted, else the reason."""
        active_codec, active_options, _ = self._active
        same_codec = codec == active_codec
        if same_codec and wanted == active_options:  # nothing to build (or back to what is in force)
            if self._builder.busy:
                self._builder.cancel()
                self.get_logger().info(f"keeping {self._backend.name} ({self._backend.quality})")
            self._target = self._active
            return None
        if same_codec and not codec_switch.needs_rebuild(codec, active_options, wanted):
            changed = {k: v for k, v in wanted.items() if active_options.get(k) != v}
            try:  # validates every value before applying any
                codec_switch.configure_in_place(self._backend, codec, changed)
            except Exception as exc:
                return f"codec {codec!r} refused the options: {exc}"
            self._builder.cancel()
            self._go_live(self._backend, codec, wanted, text)
            return None
        if codec in codec_switch.CHEAP_CODECS:
            try:
                backend = codec_switch.build_backend(codec, wanted)
            except Exception as exc:
                return f"codec {codec!r} refused the options: {exc}"
            self._builder.cancel()
            self._go_live(backend, codec, wanted, text)
            return None
        # slow to make (weights to load): off the executor thread; frames keep their backend
        self._target = (codec, wanted, text)
        self._builder.request((codec, wanted))
        self.get_logger().info(f"making codec {codec!r} ({text or 'default options'}) in the background; "
                               f"coding with {self._backend.name} until it is ready")
        return None

    def _go_live(self, backend, codec: str, options: Dict[str, Any], text: str) -> None:
        """Put a backend in force (between two frames: this runs in the executor thread)."""
        try:
            self._apply_keyframe_interval(backend)
        except CodecError as exc:
            self.get_logger().warning(f"keyframe_interval not applied: {exc}")
        old, self._backend = self._backend, backend
        self._active = self._target = (codec, options, text)
        codec_switch.apply_node_options(codec, options)
        self._note_in_force(codec, options)
        self._mirror_due.trigger()  # not from inside a parameter callback
        if old is not backend:
            del old
            codec_switch.release_memory()
        self.get_logger().info(f"now coding with {backend.name} ({backend.quality})")

    def _on_backend_built(self) -> None:
        done = self._builder.take()
        if done is None:  # superseded meanwhile
            return
        (codec, options), backend, error = done
        if self._target[:2] != (codec, options):
            return
        if backend is not None:
            self._go_live(backend, codec, options, self._target[2])
            return
        active_codec, _, active_text = self._active
        self.get_logger().error(
            f"cannot switch to codec {codec!r} ({self._target[2] or 'default options'}): {error}; still "
            f"coding with {self._backend.name} ({self._backend.quality}), parameters set back")
        self._target = self._active
        # the parameters say what is in force (the callback sees no change and accepts)
        self.set_parameters_atomically([Parameter("codec", Parameter.Type.STRING, active_codec),
                                        Parameter("codec_options", Parameter.Type.STRING, active_text)])
        self._mirror_typed()

    def finish(self) -> None:
        self._builder.close()

    # ---------------------------------------------------------------- callbacks

    def _on_color_info(self, msg: CameraInfo) -> None:
        self._color_info = msg

    def _on_depth_info(self, msg: CameraInfo) -> None:
        self._depth_info = msg

    def _on_color(self, msg: Image) -> None:
        for pair in self._pairer.add_color(common.stamp_ns(msg.header.stamp), msg):
            self._take_pair(pair)

    def _on_depth(self, msg: Image) -> None:
        for pair in self._pairer.add_depth(common.stamp_ns(msg.header.stamp), msg):
            self._take_pair(pair)

    def _take_pair(self, pair) -> None:
        if not self._rate_on():
            self._encode(pair.color, pair.depth)
            return
        # rate control: the newest pair waits for its turn; an older one waiting is replaced
        if self._pending is not None:
            self._superseded += 1
            for stats in self._all_stats():
                stats.dropped += 1
        self._pending = pair
        self._encode_due.trigger()

    def _drain_inputs(self) -> None:
        """Take every image already waiting in the subscriptions, so that the newest pair is coded
        (the executor takes one message per subscription per turn)."""
        for sub, callback in zip(self._img_subs, (self._on_color, self._on_depth)):
            for _ in range(100):
                try:
                    with sub.handle:
                        taken = sub.handle.take_message(sub.msg_type, sub.raw)
                except Exception:
                    return
                if taken is None:
                    break
                callback(taken[0])

    def _on_encode_due(self) -> None:
        if self._pending is None:
            return
        self._drain_inputs()
        pair, self._pending = self._pending, None
        if pair is not None:
            self._encode(pair.color, pair.depth)

    def _infos_to_send(self):
        """The camera infos to attach to this frame: periodically and whenever they change."""
        self._info_schedule.period = self._params["camera_info_period"]
        return self._info_schedule.infos_for_frame(self._color_info, self._depth_info)

    def _too_old(self, color_msg: Image) -> bool:
        """Count and report a pair whose capture is older than max_age_s (it is not coded)."""
        max_age = self._params["max_age_s"]
        age = common.stale_age_s(self, color_msg.header.stamp, max_age)
        if age is None:
            return False
        self._stale_drops += 1
        for stats in self._all_stats():
            stats.dropped += 1
        self.get_logger().warning(
            f"pair stamped {color_msg.header.stamp.sec}.{color_msg.header.stamp.nanosec:09d} is {age:.1f} s old "
            f"when its turn comes, over max_age_s {max_age:g}: dropped without coding ({self._stale_drops} so far; "
            "max_age_s 0 turns this off, e.g. for replayed data without use_sim_time)",
            throttle_duration_sec=5.0)
        return True

    def _encode(self, color_msg: Image, depth_msg: Image) -> None:
        if self._too_old(color_msg):
            return
        start = time.perf_counter()
        try:
            color_arr = convert.image_to_array(color_msg)
            depth_arr = convert.image_to_array(depth_msg)
            frame = convert.images_to_frame(color_arr, color_msg.encoding, depth_arr, depth_msg.encoding,
                                            self._params["depth_scale_per_m"])
            frame.stamp_s = common.stamp_ns(color_msg.header.stamp) / 1e9
            self._prepare_frame()
            if self._rate_on():
                self._encode_to_budget(frame, color_msg, depth_msg, start)
                return
            encoded = self._backend.encode(frame)
            fields = convert.compressed_fields(encoded, frame, color_msg.encoding, depth_msg.encoding,
                                               sequence=self._sequence)
        except CodecError as exc:
            self._refuse(f"pair at {color_msg.header.stamp.sec}.{color_msg.header.stamp.nanosec:09d} "
                         f"dropped: {exc}")
            return
        except Exception as exc:
            self._refuse(f"pair dropped, {self._backend.name} failed: {type(exc).__name__}: {exc}")
            return
        out = CompressedRGBD()
        convert.fill_compressed(out, fields, header=color_msg.header, depth_header=depth_msg.header)
        color_info, depth_info = self._infos_to_send()
        out.color_camera_info = [color_info] if color_info is not None else []
        out.depth_camera_info = [depth_info] if depth_info is not None else []
        self._pub.publish(out)
        self._published(encoded)
        latency = time.perf_counter() - start
        raw = len(color_msg.data) + len(depth_msg.data)
        for stats in self._all_stats():
            stats.add(raw, len(fields["payload"]), latency)

    def _encode_to_budget(self, frame, color_msg: Image, depth_msg: Image, start: float) -> None:
        """Code one frame within the budget: re-coded smaller or skipped if it would break the window."""
        rc = self._controller()
        pixels = frame.width * frame.height
        self._last_pixels = pixels
        plan = rc.plan(time.monotonic(), pixels)
        color_info, depth_info = self._infos_to_send()
        # re-coding a learned frame costs as much as the next frame; a video frame cannot be taken
        # back once its encoder has coded it (the next frame refers to it)
        slow = self._backend.name != "classical"
        video = self._video_colour()
        while True:
            if plan is None:
                self._rate_skips += 1
                for stats in self._all_stats():
                    stats.dropped += 1
                return
            self._backend.configure(**plan.options)
            encoded = self._backend.encode(frame)
            fields = convert.compressed_fields(encoded, frame, color_msg.encoding, depth_msg.encoding,
                                               sequence=self._sequence)
            out = CompressedRGBD()
            convert.fill_compressed(out, fields, header=color_msg.header, depth_header=depth_msg.header)
            out.color_camera_info = [color_info] if color_info is not None else []
            out.depth_camera_info = [depth_info] if depth_info is not None else []
            data = serialize_message(out)
            bits = 8.0 * len(data)
            streams = [None if encoded.bytes_rgb is None else 8.0 * encoded.bytes_rgb,
                       None if encoded.bytes_depth is None else 8.0 * encoded.bytes_depth]
            rc.observe(plan, streams, bits)
            now = time.monotonic()
            if rc.fits(now, bits):
                break
            if video:  # sent anyway (see above); counted, and the encoder's VBV catches up
                self._over_budget += 1
                break
            if slow:
                plan = None
                continue
            self._recoded += 1
            plan = rc.smaller(plan, bits, now)
        self._pub.publish(data)
        self._published(encoded)
        rc.sent(now, bits, plan)
        if video:
            self._colour_window.add(now, 8.0 * (encoded.bytes_rgb or 0))
            self._set_rate_target()
        self._sent_log.add(common.stamp_ns(color_msg.header.stamp))
        latency = time.perf_counter() - start
        raw = len(color_msg.data) + len(depth_msg.data)
        for stats in self._all_stats():
            stats.add(raw, len(data), latency)

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
        elif w["frames"] == 0 and w["dropped"] > 0:
            level, text = DiagnosticStatus.WARN, (f"every pair older than max_age_s "
                                                  f"{self._params['max_age_s']:g} s: dropped uncoded")
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
                  "stale_drops": self._stale_drops, "subscribed": bool(self._subs),
                  "codec_pending": self._target[0] if self._builder.busy else "",
                  "target_kbps": self._params["target_kbps"],
                  "target_in_force_kbps": self._target_in_force() if self._rate_on() else 0.0,
                  "depth_share_in_force": self._depth_share(),
                  "rate_skips": self._rate_skips, "recoded": self._recoded, "superseded": self._superseded,
                  "feedback_refused": self._feedback_refused, "sequence": self._sequence,
                  "keyframes": self._keyframes, "keyframe_requests": self._keyframe_requests,
                  "over_budget": self._over_budget}
        if self._adapter is not None and self._params["adapt_to_link"]:
            values["link_state"] = self._adapter.state
            values["link_loss"] = -1.0 if self._adapter.last_loss is None else self._adapter.last_loss
            values["link_queue_ms"] = -1.0 if self._adapter.last_queue_ms is None else self._adapter.last_queue_ms
        threads = codec_switch.torch_threads()
        if threads is not None:
            values["torch_threads"] = threads
        self._diag_pub.publish(common.diagnostic_array(self, level, text, values, "encoder"))

    def _log_statistics(self) -> None:
        w = self._log_stats.window()
        if not self._subs and w["frames"] == 0:
            return
        self.get_logger().info(
            f"{w['frames']} frames in {w['seconds']:.1f} s ({w['fps']:.1f} fps), {w['kbit_s']:.0f} kbit/s, "
            f"ratio {w['ratio']:.1f}:1, encode {w['latency_ms']:.1f} ms; total {self.stats.frames} frames, "
            f"{self.stats.bytes_out} bytes, refused {self.stats.errors}, sync drops {self._sync_drops()}, "
            f"stale drops {self._stale_drops}"
            + (f"; target {self._target_in_force():.0f} kbit/s, rate skips {self._rate_skips}, re-coded "
               f"{self._recoded}, superseded {self._superseded}" if self._rate_on() else ""))


def main(argv=None) -> int:
    return common.run_node(EncoderNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
