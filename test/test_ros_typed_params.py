"""Typed backend parameters (issue 14, item 3), on real node processes over real DDS.

Each option of a backend's schema is a parameter ``classical.<option>`` / ``learned.<option>``
whose descriptor (asked over the node's real describe_parameters service, as ``ros2 param
describe`` does) carries its range or choices; a live set changes the next frames; a value out
of range, of the wrong type or not among the choices is refused with a reason and the node runs
on; ``codec_options`` stays a shorthand with the documented precedence.
"""
from __future__ import annotations

import re
import time
from typing import Dict, List

import pytest

from conftest import load_real_pairs, make_image, reliable_qos, unique_namespace

from ros_param_helpers import param_msg
from rgbd_codec_ros.codec.base import CodecError, check_options, option_schema
from rgbd_codec_ros.codec.classical import DEFAULTS, ClassicalBackend
from rgbd_codec_ros.ros.options import parse_codec_options

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS


# ---------------------------------------------------------------------------- the schema itself


def test_classical_schema_covers_every_option_and_checks_them():
    schema = option_schema("classical")
    assert {s.name for s in schema} == set(DEFAULTS)
    assert all(s.default == DEFAULTS[s.name] and type(s.default) is s.type for s in schema)
    with pytest.raises(CodecError, match=r"unknown option 'colour_quality' for the classical codec "
                                         r"\(known: .*color_quality.*\)"):
        ClassicalBackend(colour_quality=50)
    with pytest.raises(CodecError, match=r"color_quality must be an integer in 1\.\.100; got 500"):
        ClassicalBackend(color_quality=500)
    with pytest.raises(CodecError, match=r"depth_codec must be one of jpegxl, rvl, png, rvl_lossy"):
        ClassicalBackend().configure(depth_codec="zip")
    # the gap a range cannot say is refused by the backend with its reason
    with pytest.raises(CodecError, match=r"depth_rel_error must be 0 or in"):
        ClassicalBackend(depth_rel_error=1e-5)
    assert ClassicalBackend(color_quality="40", depth_max_error_mm=2).options["depth_max_error_mm"] == 2.0


def test_learned_schema_reads_without_torch_and_types_the_shorthand():
    import subprocess
    import sys

    code = ("import sys; from rgbd_codec_ros.codec.base import option_schema; "
            "s = {o.name: o for o in option_schema('learned')}; "
            "assert s['quality'].range == (-1.0, 3.0) and not s['weights'].live and s['runtime'].choices; "
            "assert 'torch' not in sys.modules, 'the schema imported torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    schema = option_schema("learned")
    assert parse_codec_options("weights=123, quality=2", schema, "learned") == {"weights": "123", "quality": 2.0}
    with pytest.raises(CodecError, match=r"quality must be a number in \[-1, 3\]; got 7"):
        parse_codec_options("quality=7", schema, "learned")
    with pytest.raises(CodecError, match=r"unknown option 'color_quality' for the learned codec \(known: "):
        check_options(schema, {"color_quality": 1}, "learned")


# ---------------------------------------------------------------------------- helpers


class ParamServices:
    """list / describe / get / set_parameters of a node process, through its real services."""

    def __init__(self, probe, node: str, process):
        from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters, SetParameters

        self.probe, self.process = probe, process
        self.clients = {
            "list": probe.node.create_client(ListParameters, f"{node}/list_parameters"),
            "describe": probe.node.create_client(DescribeParameters, f"{node}/describe_parameters"),
            "get": probe.node.create_client(GetParameters, f"{node}/get_parameters"),
            "set": probe.node.create_client(SetParameters, f"{node}/set_parameters"),
        }

        def ready():
            assert process.alive(), process.log()[-3000:]
            return all(c.service_is_ready() for c in self.clients.values())
        assert probe.spin_until(ready, 120), f"{node} parameter services never appeared"

    def _call(self, kind: str, request):
        future = self.clients[kind].call_async(request)
        assert self.probe.spin_until(future.done, 60), f"no answer from {kind}_parameters"
        return future.result()

    def names(self) -> List[str]:
        from rcl_interfaces.srv import ListParameters

        return list(self._call("list", ListParameters.Request()).result.names)

    def describe(self, *names) -> Dict[str, object]:
        from rcl_interfaces.srv import DescribeParameters

        return dict(zip(names, self._call("describe", DescribeParameters.Request(names=list(names))).descriptors))

    def get(self, *names) -> Dict[str, object]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        values = self._call("get", GetParameters.Request(names=list(names))).values
        return {n: parameter_value_to_python(v) for n, v in zip(names, values)}

    def set(self, name: str, value):
        from rcl_interfaces.srv import SetParameters

        return self._call("set", SetParameters.Request(parameters=[param_msg(name, value)])).results[0]

    def wait_value(self, name: str, value, timeout: float = 30.0) -> None:
        assert self.probe.spin_until(lambda: self.get(name)[name] == value, timeout), \
            (name, self.get(name), self.process.log()[-2000:])


class EncoderSide:
    """The test's side of one encoder: image publishers and a subscriber of rgbd/compressed."""

    def __init__(self, probe, encoder):
        from sensor_msgs.msg import Image

        from rgbd_codec_ros.msg import CompressedRGBD

        self.probe, self.encoder = probe, encoder
        qos = reliable_qos(50)
        self.pub_color = probe.node.create_publisher(Image, "color/image_raw", qos)
        self.pub_depth = probe.node.create_publisher(Image, "depth/image_raw", qos)
        self.out: Dict[int, object] = {}
        self.sub = probe.node.create_subscription(
            CompressedRGBD, "rgbd/compressed",
            lambda m: self.out.__setitem__(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m), qos)
        probe.wait_matched(self.sub, processes=[encoder])
        for pub in (self.pub_color, self.pub_depth):   # lazy: it subscribes once we listen
            probe.wait_matched(pub, processes=[encoder])
        (color, depth), = load_real_pairs("7scenes_kinect1", 1)
        self.color, self.depth = color[:240, :320].copy(), depth[:240, :320].copy()

    def code_one(self):
        """Send one real pair; the CompressedRGBD it became."""
        stamp = time.time_ns()
        self.pub_color.publish(make_image(self.color, "rgb8", stamp, "c"))
        self.pub_depth.publish(make_image(self.depth, "16UC1", stamp, "c"))

        def done():
            assert self.encoder.alive(), self.encoder.log()[-3000:]
            return stamp in self.out
        assert self.probe.spin_until(done, 60), f"pair not coded:\n{self.encoder.log()[-3000:]}"
        return self.out[stamp]


@pytest.fixture
def encoder_rig(node_processes, probe_factory):
    def make(params: dict, tag: str):
        ns = unique_namespace(tag)
        encoder = node_processes("encoder_node", ns, dict({"input_qos": "reliable", "max_age_s": 0.0}, **params))
        probe = probe_factory(ns, f"{tag}_probe")
        side = EncoderSide(probe, encoder)
        return side, ParamServices(probe, "rgbd_encoder", encoder)
    return make


# ---------------------------------------------------------------------------- the encoder


def test_encoder_describes_typed_parameters_with_their_ranges(encoder_rig):
    from rcl_interfaces.msg import ParameterType

    side, params = encoder_rig({}, "typed_describe")
    names = params.names()
    for name in ("classical.color_quality", "classical.depth_codec", "classical.depth_max_error_mm",
                 "learned.quality", "learned.weights", "learned.threads", "codec_options"):
        assert name in names, names
    # keyframe_interval is the node's own parameter, not a second classical.keyframe_interval
    assert "keyframe_interval" in names and "classical.keyframe_interval" not in names
    d = params.describe("classical.color_quality", "classical.depth_max_error_mm", "classical.color_codec",
                        "learned.quality", "learned.weights", "learned.threads")
    q = d["classical.color_quality"]
    assert q.type == ParameterType.PARAMETER_INTEGER and not q.read_only
    assert (q.integer_range[0].from_value, q.integer_range[0].to_value) == (1, 100)
    assert "quality" in q.description.lower()
    err = d["classical.depth_max_error_mm"].floating_point_range[0]
    assert (err.from_value, err.to_value) == (0.1, 10000.0)
    assert d["classical.color_codec"].type == ParameterType.PARAMETER_STRING
    assert "one of: jpeg, webp, avif, jpegxl, h264, hevc, av1" in d["classical.color_codec"].additional_constraints
    lq = d["learned.quality"].floating_point_range[0]
    assert (lq.from_value, lq.to_value) == (-1.0, 3.0)
    assert d["learned.threads"].integer_range[0].to_value >= 1
    # made in the background by the encoder: changeable live, and the description says how
    assert not d["learned.weights"].read_only and "background" in d["learned.weights"].description
    assert params.get("classical.color_quality", "learned.quality") == {"classical.color_quality": 90,
                                                                         "learned.quality": 1.0}


def test_live_typed_set_changes_the_next_frames_and_bad_sets_are_refused(encoder_rig):
    side, params = encoder_rig({"diagnostics_period": 0.0}, "typed_live")
    q90 = side.code_one()
    assert "jpeg=90" in q90.quality, q90.quality
    res = params.set("classical.color_quality", 25)
    assert res.successful, res.reason
    q25 = side.code_one()
    assert "jpeg=25" in q25.quality and len(q25.payload) < 0.8 * len(q90.payload), (q25.quality, len(q25.payload))

    refused = [
        ("classical.color_quality", 500, r"color_quality"),              # out of the integer range
        ("classical.color_quality", 50.5, r"type|Type"),                 # wrong type
        ("classical.color_quality", "high", r"type|Type"),
        ("classical.depth_max_error_mm", 0.01, r"depth_max_error_mm"),
        ("classical.color_codec", "gif", r"color_codec must be one of jpeg, webp"),
        ("classical.depth_rel_error", 1e-5, r"depth_rel_error must be 0 or in"),  # the backend's own check
        ("learned.quality", 9.0, r"learned.quality"),                    # the backend not in force: checked too
        ("learned.device", "tpu", r"device must be one of auto, cpu, cuda"),
    ]
    for name, value, reason in refused:
        res = params.set(name, value)
        assert not res.successful, f"{name}={value!r} was accepted"
        assert re.search(reason, res.reason), (name, value, res.reason)
    assert params.get("classical.color_quality", "classical.color_codec") == {
        "classical.color_quality": 25, "classical.color_codec": "jpeg"}
    still = side.code_one()  # the node runs on, with what was in force
    assert "jpeg=25" in still.quality and still.codec == "classical"
    # an option of the backend not in force is kept (checked, nothing loaded) for when it is chosen
    assert params.set("learned.quality", 2.0).successful
    assert "classical" in side.code_one().codec
    assert side.encoder.alive() and "Traceback" not in side.encoder.log()


def test_codec_options_shorthand_and_precedence(encoder_rig):
    # at start codec_options wins over a typed value given on the command line (with a warning)
    side, params = encoder_rig({"classical.color_quality": 50, "codec_options": "color_quality=35",
                                "diagnostics_period": 0.0}, "typed_prec")
    first = side.code_one()
    assert "jpeg=35" in first.quality, first.quality
    assert params.get("classical.color_quality")["classical.color_quality"] == 35
    assert re.search(r"codec_options sets color_quality=35, over the parameter classical.color_quality=50",
                     side.encoder.log())
    # the shorthand still works live, and the typed parameter follows what it put in force
    assert params.set("codec_options", "color_quality=20, depth_codec=rvl").successful
    short = side.code_one()
    assert "jpeg=20" in short.quality and "depth=rvl" in short.quality, short.quality
    params.wait_value("classical.color_quality", 20)
    params.wait_value("classical.depth_codec", "rvl")
    # afterwards a live set of the typed parameter wins over the string
    assert params.set("classical.color_quality", 70).successful
    typed = side.code_one()
    assert "jpeg=70" in typed.quality and "depth=rvl" in typed.quality, typed.quality
    assert params.get("codec_options")["codec_options"] == "color_quality=20, depth_codec=rvl"
    # keyframe_interval stays the node's own parameter
    res = params.set("codec_options", "keyframe_interval=5")
    assert not res.successful and "node parameter 'keyframe_interval'" in res.reason, res.reason


def test_typed_colour_quality_under_rate_control(encoder_rig):
    """Under rate control the controller picks the colour quality per frame; a typed value set
    meanwhile is accepted and is what is in force once rate control is turned off."""
    side, params = encoder_rig({"target_kbps": 3000.0, "diagnostics_period": 0.0}, "typed_rate")
    side.code_one()
    assert params.set("classical.color_quality", 33).successful
    side.code_one()
    assert params.set("target_kbps", 0.0).successful
    after = side.code_one()
    assert "jpeg=33" in after.quality, after.quality
    assert side.encoder.alive() and "Traceback" not in side.encoder.log()


# ---------------------------------------------------------------------------- the decoder


def test_decoder_typed_parameters(node_processes, probe_factory):
    ns = unique_namespace("typed_dec")
    decoder = node_processes("decoder_node", ns, {"learned.pixel_exact": False})
    probe = probe_factory(ns, "typed_dec_probe")
    params = ParamServices(probe, "rgbd_decoder", decoder)
    names = params.names()
    for name in ("classical.video_threads", "learned.pixel_exact", "learned.runtime", "learned.device",
                 "learned.threads"):
        assert name in names, names
    d = params.describe("classical.video_threads", "learned.device", "learned.runtime", "learned.pixel_exact")
    assert (d["classical.video_threads"].integer_range[0].from_value,
            d["classical.video_threads"].integer_range[0].to_value) == (1, 64)
    assert d["learned.device"].read_only and not d["learned.runtime"].read_only
    assert "one of: auto, torch, onnxruntime" in d["learned.runtime"].additional_constraints
    assert params.get("learned.pixel_exact")["learned.pixel_exact"] is False
    res = params.set("learned.runtime", "tensorflow")
    assert not res.successful and "runtime must be one of auto, torch, onnxruntime" in res.reason, res.reason
    res = params.set("learned.device", "cpu")
    assert not res.successful and res.reason, "a read-only option was changed"
    res = params.set("classical.video_threads", 0)
    assert not res.successful and res.reason
    assert params.set("classical.video_threads", 3).successful
    assert params.get("classical.video_threads")["classical.video_threads"] == 3
    assert decoder.alive() and "Traceback" not in decoder.log()


def _diagnostics_value(side, key: str, condition, timeout: float = 30.0) -> str:
    """The value of ``key`` in the first /diagnostics status of this encoder for which
    ``condition(value)`` holds."""
    from diagnostic_msgs.msg import DiagnosticArray

    name = side.encoder_name
    seen = []

    def on_array(msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.startswith(name + ":") and key in values:
                seen.append(values[key])
    sub = side.probe.node.create_subscription(DiagnosticArray, "/diagnostics", on_array, 10)
    try:
        assert side.probe.spin_until(lambda: any(condition(v) for v in seen), timeout), (key, seen[-5:])
        return next(v for v in seen if condition(v))
    finally:
        side.probe.node.destroy_subscription(sub)


def test_depth_share_follows_the_colour_codec_unless_set(encoder_rig):
    """depth_share's default (negative: automatic) gives depth 0.6 of the budget beside video
    colour and 0.35 beside intra colour; a value in 0..1 overrides that, live, and -1 restores it."""
    side, params = encoder_rig({"target_kbps": 3000.0, "codec_options": "color_codec=h264",
                                "diagnostics_period": 0.2}, "share_auto")
    side.encoder_name = f"{side.probe.node.get_namespace().rstrip('/')}/rgbd_encoder"
    d = params.describe("depth_share")["depth_share"]
    assert params.get("depth_share")["depth_share"] == -1.0 and "automatic" in d.description
    assert d.floating_point_range[0].from_value == -1.0
    side.code_one()
    assert float(_diagnostics_value(side, "depth_share_in_force", lambda v: float(v) == 0.6)) == 0.6
    assert params.set("classical.color_codec", "jpeg").successful
    side.code_one()
    _diagnostics_value(side, "depth_share_in_force", lambda v: float(v) == 0.35)
    assert params.set("depth_share", 0.5).successful
    _diagnostics_value(side, "depth_share_in_force", lambda v: float(v) == 0.5)
    assert params.set("depth_share", -1.0).successful
    _diagnostics_value(side, "depth_share_in_force", lambda v: float(v) == 0.35)
    assert not params.set("depth_share", 1.5).successful       # outside the descriptor's range
    assert side.encoder.alive() and "Traceback" not in side.encoder.log()
