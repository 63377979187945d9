"""Hostile and faulty inputs at the live nodes (issue 9), over real DDS.

Decoder: forged learned frames (valid CRC, the shipped model id, absurd declared sizes, 4-byte
coded sections), frames over ``max_pixels``, stale messages and codec streams that make native
libraries print to stderr all end as the node's own (throttled) warning; the process stays up
and decodes good messages afterwards.

Encoder: codec parameters are checked before anything is applied (torch's thread count
included, ``threads`` is bounded), a learned backend is built in the background while frames
keep flowing with the old one and swapped in when ready, a failed build keeps the old backend
and sets the parameters back, and pairs older than ``max_age_s`` are dropped uncoded.
"""
from __future__ import annotations

import os
import re
import time
from typing import Dict, List

import numpy as np
import pytest

from conftest import NodeProcess, Probe, load_real_pairs, make_image, reliable_qos, unique_namespace
from ros_param_helpers import param_value
from learned_fixtures import TRAINED_TINY
from test_ros_pipeline import compressed_msg

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS

SHIPPED_WEIGHTS = "lite-separate.pt"


# ---------------------------------------------------------------------------- helpers




class Params:
    """set_parameters / get_parameters of one node, through its real services."""

    def __init__(self, probe: Probe, node_name: str):
        from rcl_interfaces.srv import GetParameters, SetParametersAtomically

        self.probe = probe
        self.set_client = probe.node.create_client(SetParametersAtomically, f"{node_name}/set_parameters_atomically")
        self.get_client = probe.node.create_client(GetParameters, f"{node_name}/get_parameters")
        assert probe.spin_until(lambda: self.set_client.service_is_ready() and self.get_client.service_is_ready(),
                                120), f"{node_name} parameter services never appeared"

    def _call(self, client, request, timeout: float = 60.0):
        future = client.call_async(request)
        assert self.probe.spin_until(future.done, timeout), "no answer from the parameter service"
        return future.result()

    def set(self, **values):
        """Set them together (codec with its options); returns the SetParametersResult."""
        from rcl_interfaces.msg import Parameter
        from rcl_interfaces.srv import SetParametersAtomically

        req = SetParametersAtomically.Request()
        for name, value in values.items():
            req.parameters.append(Parameter(name=name, value=param_value(value)))
        return self._call(self.set_client, req).result

    def get(self, *names) -> Dict[str, object]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        values = self._call(self.get_client, GetParameters.Request(names=list(names))).values
        return {n: parameter_value_to_python(v) for n, v in zip(names, values)}

    def destroy(self):
        self.probe.node.destroy_client(self.set_client)
        self.probe.node.destroy_client(self.get_client)


def wait_diagnostics(probe: Probe, component: str, condition, timeout: float = 60.0) -> dict:
    """Values of the first /diagnostics status of ``component`` for which ``condition(values)`` holds."""
    from diagnostic_msgs.msg import DiagnosticArray

    found = []

    def on_array(msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if component in status.name and condition(values):
                found.append(values)
    sub = probe.node.create_subscription(DiagnosticArray, "/diagnostics", on_array, 10)
    try:
        assert probe.spin_until(lambda: bool(found), timeout), f"no matching {component} diagnostics"
        return found[0]
    finally:
        probe.node.destroy_subscription(sub)


def now_ns() -> int:
    return time.time_ns()


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def set_stamp(msg, stamp: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
    msg.depth_header.stamp.sec, msg.depth_header.stamp.nanosec = divmod(stamp + 10**6, 10**9)
    return msg


def stamp_text(stamp: int) -> str:
    """How the nodes write a stamp in their log lines."""
    sec, nsec = divmod(stamp, 10**9)
    return f"{sec}.{nsec:09d}"


class DecoderRig:
    """A decoder process and the test's publisher of rgbd/compressed + subscriber of its output."""

    def __init__(self, probe: Probe, decoder: NodeProcess):
        from sensor_msgs.msg import Image

        from rgbd_codec_ros.msg import CompressedRGBD

        self.probe, self.decoder = probe, decoder
        qos = reliable_qos(100)
        self.pub = probe.node.create_publisher(CompressedRGBD, "rgbd/compressed", qos)
        self.color_out: Dict[int, Image] = {}
        self.sub = probe.node.create_subscription(
            Image, "decoded/color/image_raw", lambda m: self.color_out.__setitem__(stamp_of(m), m), qos)
        probe.wait_matched(self.pub, processes=[decoder])
        probe.wait_matched(self.sub, processes=[decoder])  # the decoder is lazy: it must see us

    def wait_decoded(self, stamps: List[int], timeout: float = 120.0) -> bool:
        def done():
            if not self.decoder.alive():
                raise AssertionError(f"decoder exited with {self.decoder.proc.returncode}:\n"
                                     f"{self.decoder.log()[-3000:]}")
            return all(s in self.color_out for s in stamps)
        return self.probe.spin_until(done, timeout)

    def wait_log(self, pattern: str, timeout: float = 120.0) -> None:
        def found():
            if not self.decoder.alive():
                raise AssertionError(f"decoder exited with {self.decoder.proc.returncode}:\n"
                                     f"{self.decoder.log()[-3000:]}")
            return re.search(pattern, self.decoder.log()) is not None
        assert self.probe.spin_until(found, timeout), \
            f"decoder never logged {pattern!r}:\n{self.decoder.log()[-3000:]}"


@pytest.fixture
def rigs(rclpy_context, tmp_path):
    """``make(module, params)`` -> (probe, process) in a namespace of their own; all stopped afterwards."""
    made = []

    def make(module: str, params: dict, tag: str):
        ns = unique_namespace(tag)
        proc = NodeProcess(module, tmp_path, ns, params)
        probe = Probe(f"{tag}_probe", ns)
        made.append((probe, proc))
        return probe, proc

    yield make
    for probe, proc in made:
        probe.destroy()
        proc.stop()


def small_pair(h: int = 96, w: int = 128, source: str = "realsense_d435_taeyoung"):
    (color, depth), = load_real_pairs(source, 1)
    return color[:h, :w].copy(), depth[:h, :w].copy()


# ---------------------------------------------------------------------------- forged learned frames


@pytest.fixture(scope="module")
def shipped_learned():
    """The learned backend with the shipped weights (in this process: model id, a good frame)."""
    from rgbd_codec_ros.codec.learned.backend import MODELS_DIR, LearnedBackend

    path = os.path.join(MODELS_DIR, SHIPPED_WEIGHTS)
    if not os.path.isfile(path):
        pytest.fail(f"{path} is not installed")
    return LearnedBackend(weights=path, device="cpu")


def forged_learned_msg(backend, width: int, height: int, stamp: int, fields=None, version: int = 0):
    """A CompressedRGBD whose learned payload has a valid CRC and the shipped model id, declares
    ``width`` x ``height`` and carries 4-byte coded sections (empty masks, no far depth).
    ``fields`` = the (width, height) the message's own fields claim (default: the same);
    ``version`` = the payload's format version (0: the current one)."""
    from rgbd_codec_ros.codec.learned import bitstream as bs
    from rgbd_codec_ros.codec.learned.backend import padded_size
    from rgbd_codec_ros.codec.learned.depth import encode_mask
    from rgbd_codec_ros.msg import CompressedRGBD

    ph, pw = padded_size(height, width)
    header = bs.LearnedFrameHeader(
        model_id=backend.model_id, quality=1.0, width=width, height=height, padded_width=pw, padded_height=ph,
        color_mode=bs.COLOR_RGB, depth_type=bs.DEPTH_U16, depth_scale_per_m=1000.0,
        depth_range_m=backend.model.depth_range_m, z_height=ph // 64, z_width=pw // 64, latent_hash=bytes(8))
    no_mask = encode_mask(np.zeros((1, 1), bool))
    sections = {"z_rgb": b"\x11\x22\x33\x44", "z_depth": b"\x55\x66\x77\x88", "y_rgb": b"\x99\xaa\xbb\xcc",
                "y_depth": b"\xdd\xee\xff\x00", "hole_mask": no_mask, "clipped_mask": no_mask, "far_depth": b""}
    payload = bs.pack(header, sections, version=version or bs.VERSION)
    assert bs.unpack(payload)[0].width == width  # a frame the container itself accepts
    fw, fh = fields or (width, height)
    msg = CompressedRGBD(codec="learned", model_id=backend.model_id, quality="q=1", payload=payload,
                         color_encoding="rgb8", depth_encoding="16UC1", color_width=fw, color_height=fh,
                         depth_width=fw, depth_height=fh, depth_scale_per_m=1000.0)
    template = compressed_msg(*small_pair(8, 8), 0)  # the version and hole fields a real sender fills in
    msg.format_version, msg.depth_invalid = template.format_version, template.depth_invalid
    msg.header.frame_id, msg.depth_header.frame_id = "c", "d"
    return set_stamp(msg, stamp)


def good_learned_msg(backend, stamp: int):
    from rgbd_codec_ros import convert
    from rgbd_codec_ros.msg import CompressedRGBD

    color, depth = small_pair(128, 160, "osd_kinect_pcl_mosd")
    frame = convert.images_to_frame(color, "rgb8", depth, "16UC1")
    fields = convert.compressed_fields(backend.encode(frame), frame, "rgb8", "16UC1")
    msg = convert.fill_compressed(CompressedRGBD(), fields)
    msg.header.frame_id, msg.depth_header.frame_id = "c", "d"
    return set_stamp(msg, stamp)


def test_forged_learned_frames_end_as_warnings(rigs, shipped_learned, data_dir):
    """The 117-byte frames of issue 9: the decoder refuses them, stays up, decodes good ones after."""
    probe, decoder = rigs("decoder_node", {"input_depth": 50, "log_period": 1.0}, "forged")
    rig = DecoderRig(probe, decoder)
    forged = {
        # declares 16384x16384 in payload and fields: refused on the fields, before any decoding
        1: forged_learned_msg(shipped_learned, 16384, 16384, 1 * 10**9),
        # declares 16384x16384 in the payload, fields say 640x480: the codec must refuse the header
        2: forged_learned_msg(shipped_learned, 16384, 16384, 2 * 10**9, fields=(640, 480)),
        # a plausible size with 4-byte coded sections: the codec must refuse the sections
        3: forged_learned_msg(shipped_learned, 640, 480, 3 * 10**9),
        # the same in the format of older recordings (version 2, its own framing)
        4: forged_learned_msg(shipped_learned, 640, 480, 4 * 10**9, version=2),
    }
    assert all(len(m.payload) < 200 for m in forged.values())
    for msg in forged.values():
        rig.pub.publish(msg)
    good = [good_learned_msg(shipped_learned, 1000 * 10**9),
            set_stamp(compressed_msg(*small_pair(), 0), 1001 * 10**9)]
    for msg in good:
        rig.pub.publish(msg)
    assert rig.wait_decoded([stamp_of(m) for m in good], timeout=300), \
        f"good frames after the forged ones were not decoded:\n{decoder.log()[-3000:]}"
    assert decoder.alive(), f"decoder died (exit {decoder.proc.returncode}):\n{decoder.log()[-3000:]}"
    assert not any(stamp_of(m) in rig.color_out for m in forged.values())
    log = decoder.log()
    for sec in forged:
        assert re.search(rf"\[WARN\].*dropped a 'learned' message stamped {sec}\.000000000: ", log), \
            f"no warning for forged frame {sec}:\n{log[-3000:]}"
    assert re.search(r"stamped 1\.000000000: message declares a 16384x16384 frame .*over max_pixels", log), log
    assert "Traceback" not in log and "callback failed" not in log
    good_color = rig.color_out[stamp_of(good[0])]
    assert (good_color.width, good_color.height) == (160, 128)


# ---------------------------------------------------------------------------- decoder limits


def test_decoder_max_pixels_checks_the_message_before_decoding(rigs, data_dir):
    probe, decoder = rigs("decoder_node", {"max_pixels": 20000, "input_depth": 50}, "maxpix")
    rig = DecoderRig(probe, decoder)
    params = Params(probe, "rgbd_decoder")
    try:
        small, big = small_pair(96, 128), small_pair(240, 320)   # 12288 and 76800 pixels
        honest_big = set_stamp(compressed_msg(*big, 0), 11 * 10**9)
        # a payload that is not even classical: refused on the size fields, so never decoded
        junk_big = set_stamp(compressed_msg(*big, 0, payload=b"RDCL junk that no decoder should see"), 12 * 10**9)
        # the fields claim the small size, the payload holds the big frame
        lying = set_stamp(compressed_msg(*big, 0, color_width=128, color_height=96, depth_width=128,
                                         depth_height=96), 13 * 10**9)
        good = set_stamp(compressed_msg(*small, 0), 14 * 10**9)
        for msg in (honest_big, junk_big, lying, good):
            rig.pub.publish(msg)
        assert rig.wait_decoded([stamp_of(good)]), decoder.log()[-3000:]
        for msg in (honest_big, junk_big):
            rig.wait_log(rf"stamped {stamp_text(stamp_of(msg))}: message declares a 320x240 frame "
                         r"\(76800 pixels\), over max_pixels 20000: not decoded")
        rig.wait_log(rf"dropped a 'classical' message stamped {stamp_text(stamp_of(lying))}: ")
        assert not any(stamp_of(m) in rig.color_out for m in (honest_big, junk_big, lying))
        # live: outside the declared range is refused, 0 (the backends' defaults) lets the big frame in
        assert not params.set(max_pixels=(1 << 26) + 1).successful
        assert params.set(max_pixels=0).successful
        again = set_stamp(compressed_msg(*big, 0), 15 * 10**9)
        rig.pub.publish(again)
        assert rig.wait_decoded([stamp_of(again)]), decoder.log()[-3000:]
        assert decoder.alive() and "Traceback" not in decoder.log()
    finally:
        params.destroy()


def test_decoder_drops_stale_messages_when_asked(rigs, data_dir):
    probe, decoder = rigs("decoder_node", {"max_age_s": 2.0, "diagnostics_period": 0.5}, "stale_dec")
    rig = DecoderRig(probe, decoder)
    params = Params(probe, "rgbd_decoder")
    try:
        pair = small_pair()
        old = set_stamp(compressed_msg(*pair, 0), now_ns() - 30 * 10**9)
        fresh = set_stamp(compressed_msg(*pair, 0), now_ns())
        rig.pub.publish(old)
        rig.pub.publish(fresh)
        assert rig.wait_decoded([stamp_of(fresh)]), decoder.log()[-3000:]
        rig.wait_log(r"s old, over max_age_s 2: dropped without decoding")
        assert stamp_of(old) not in rig.color_out
        wait_diagnostics(probe, "rgbd_decoder", lambda v: int(v["stale_drops"]) >= 1)
        assert params.set(max_age_s=0.0).successful   # off: old stamps decode (bag replay)
        old2 = set_stamp(compressed_msg(*pair, 0), now_ns() - 30 * 10**9)
        rig.pub.publish(old2)
        assert rig.wait_decoded([stamp_of(old2)]), decoder.log()[-3000:]
    finally:
        params.destroy()


# ---------------------------------------------------------------------------- native stderr


def forged_avif_msg(stamp: int):
    """A classical message (valid CRCs) whose AVIF colour stream makes dav1d print to stderr and
    fail; None if no such damage was found (a codec library that stays quiet)."""
    from rgbd_codec_ros import convert
    from rgbd_codec_ros.codec import classical, container
    from rgbd_codec_ros.codec.base import CodecError, create_backend
    from rgbd_codec_ros.ros.common import NativeOutput

    if not classical.color_codec_available("avif"):
        pytest.skip("this imagecodecs build has no AVIF")
    color, depth = small_pair(96, 128, "osd_kinect_pcl_mosd")
    backend = create_backend("classical", color_codec="avif", color_quality=90)
    frame = convert.images_to_frame(color, "rgb8", depth, "16UC1")
    good = compressed_msg(color, depth, stamp)
    fields = convert.compressed_fields(backend.encode(frame), frame, "rgb8", "16UC1")
    version, header, (avif, depth_section) = container.unpack(fields["payload"], classical.MAGIC,
                                                               (classical.FORMAT_VERSION,))
    start = avif.index(b"mdat") + 4   # the AV1 OBUs: damage their headers
    native = NativeOutput()
    rng = np.random.default_rng(9)
    for _ in range(500):
        damaged = bytearray(avif)
        damaged[start + int(rng.integers(0, 24))] ^= int(rng.integers(1, 256))
        payload = container.pack(classical.MAGIC, version, header, [bytes(damaged), depth_section])
        with native.capture():
            try:
                backend.decode(payload)
                failed = False
            except CodecError:
                failed = True
        if failed and native.text.strip():
            for name, value in fields.items():
                setattr(good, name, value)
            good.payload = payload
            return good, native.text.strip().splitlines()[0].strip()
    return None


def test_native_codec_messages_go_through_the_node_log(rigs, data_dir):
    found = forged_avif_msg(21 * 10**9)
    if found is None:
        pytest.skip("no damaged AVIF stream made the codec library print")
    bad, printed = found
    probe, decoder = rigs("decoder_node", {"input_depth": 50}, "native")
    rig = DecoderRig(probe, decoder)
    rig.pub.publish(bad)
    good = set_stamp(compressed_msg(*small_pair(), 0), 22 * 10**9)
    rig.pub.publish(good)
    assert rig.wait_decoded([stamp_of(good)]), decoder.log()[-3000:]
    rig.wait_log(r"dropped a 'classical' message stamped 21\.000000000: .*\(codec library said: ")
    lines = [line for line in decoder.log().splitlines() if printed in line]
    assert lines, f"what the library printed ({printed!r}) is not in the decoder's log:\n{decoder.log()[-3000:]}"
    for line in lines:   # only inside the node's own warning, never as a bare stderr line
        assert "[WARN]" in line and "rgbd_decoder]: " in line and "codec library said" in line, line
    assert stamp_of(bad) not in rig.color_out and decoder.alive()


# ---------------------------------------------------------------------------- encoder


class EncoderRig:
    """The test's side of one encoder: image publishers, a subscriber of rgbd/compressed."""

    def __init__(self, probe: Probe, encoder: NodeProcess):
        from sensor_msgs.msg import Image

        from rgbd_codec_ros.msg import CompressedRGBD

        self.probe, self.encoder = probe, encoder
        qos = reliable_qos(100)
        self.pub_color = probe.node.create_publisher(Image, "color/image_raw", qos)
        self.pub_depth = probe.node.create_publisher(Image, "depth/image_raw", qos)
        self.out: Dict[int, CompressedRGBD] = {}
        self.sub = probe.node.create_subscription(
            CompressedRGBD, "rgbd/compressed", lambda m: self.out.__setitem__(stamp_of(m), m), qos)
        probe.wait_matched(self.sub, processes=[encoder])
        for pub in (self.pub_color, self.pub_depth):   # lazy: it subscribes once we listen
            probe.wait_matched(pub, processes=[encoder])
        self.color, self.depth = small_pair()

    def send(self, stamp: int) -> int:
        self.pub_color.publish(make_image(self.color, "rgb8", stamp, "c"))
        self.pub_depth.publish(make_image(self.depth, "16UC1", stamp, "d"))
        return stamp

    def wait_coded(self, stamps: List[int], timeout: float = 120.0) -> bool:
        def done():
            if not self.encoder.alive():
                raise AssertionError(f"encoder exited with {self.encoder.proc.returncode}:\n"
                                     f"{self.encoder.log()[-3000:]}")
            return all(s in self.out for s in stamps)
        return self.probe.spin_until(done, timeout)


def test_encoder_refuses_bad_codec_parameters_before_applying_anything(rigs, data_dir):
    probe, encoder = rigs("encoder_node", {"input_qos": "reliable", "diagnostics_period": 0.5}, "enc_refuse")
    rig = EncoderRig(probe, encoder)
    params = Params(probe, "rgbd_encoder")
    try:
        refused = [
            ("learned", "threads=1017", r"threads must be an integer in 0\.\.\d+"),
            ("learned", "threads=-1", r"threads"),
            ("learned", "threads=true", r"threads"),
            ("learned", "device=tpu", r"device must be one of auto, cpu, cuda"),
            ("learned", "quality=high", r"quality must be a number"),
            ("learned", "pixel_exact=3", r"pixel_exact must be true or false"),
            ("learned", "color_quality=50", r"unknown option 'color_quality' for the learned codec"),
            ("learned", "max_pixels=0", r"max_pixels"),
            ("wavelet9000", "", r"unknown codec 'wavelet9000'"),
            ("classical", "threads=2", r"threads"),
            ("classical", "color_quality=500", r"color_quality"),
        ]
        for codec, options, reason in refused:
            result = params.set(codec=codec, codec_options=options)
            assert not result.successful, f"codec={codec} codec_options={options!r} was accepted"
            assert re.search(reason, result.reason), (codec, options, result.reason)
        assert params.get("codec", "codec_options") == {"codec": "classical", "codec_options": ""}
        stamp = rig.send(now_ns())
        assert rig.wait_coded([stamp]), encoder.log()[-3000:]
        assert rig.out[stamp].codec == "classical"
        # nothing was loaded or set for the refused learned options: torch was never even imported
        values = wait_diagnostics(probe, "rgbd_encoder", lambda v: int(v["frames"]) >= 1)
        assert "torch_threads" not in values and values["codec"] == "classical", values
    finally:
        params.destroy()


def test_encoder_refuses_unbounded_threads_at_start(rigs):
    _, encoder = rigs("encoder_node", {"codec": "learned", "codec_options": "threads=1017"}, "enc_threads")
    assert encoder.wait_exit(120) == 2, encoder.log()
    assert re.search(r"threads must be an integer in 0\.\.\d+ .*got 1017", encoder.log()), encoder.log()
    assert "Traceback" not in encoder.log()


def test_encoder_switches_codec_in_the_background(rigs, tmp_path, data_dir):
    probe, encoder = rigs("encoder_node", {"input_qos": "reliable", "input_depth": 50, "output_depth": 50,
                                           "max_age_s": 0.0, "diagnostics_period": 0.5}, "enc_switch")
    rig = EncoderRig(probe, encoder)
    params = Params(probe, "rgbd_encoder")
    try:
        first = rig.send(now_ns())
        assert rig.wait_coded([first]) and rig.out[first].codec == "classical"
        tiny = f"weights={TRAINED_TINY}, device=cpu, threads=1, quality=1"
        result = params.set(codec="learned", codec_options=tiny)
        assert result.successful, result.reason
        # the callback answered before the model was loaded (loading imports torch: seconds)
        assert "now coding with learned" not in encoder.log(), encoder.log()[-2000:]
        assert params.get("codec")["codec"] == "learned"
        # frames keep flowing meanwhile: every one is coded, classical until the swap, then learned
        sent = [first]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            sent.append(rig.send(now_ns()))
            probe.spin_for(0.2)
            if any(m.codec == "learned" for m in rig.out.values()):
                break
        assert rig.wait_coded(sent, timeout=240), f"frames lost during the switch:\n{encoder.log()[-3000:]}"
        codecs = [rig.out[s].codec for s in sorted(sent)]
        assert codecs[-1] == "learned", codecs
        assert codecs == sorted(codecs, key=lambda c: c == "learned"), f"not one clean switch: {codecs}"
        assert re.search(r"making codec 'learned' .* in the background; coding with classical", encoder.log())
        assert wait_diagnostics(probe, "rgbd_encoder", lambda v: v.get("torch_threads") == "1")["codec"] == "learned"

        # a build that fails: the learned backend in force stays, the parameters are set back
        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(b"this is not a weights file" * 10)
        result = params.set(codec_options=f"weights={garbage}, device=cpu")
        assert result.successful, result.reason   # the cheap checks pass; loading fails in the background
        assert probe.spin_until(lambda: "cannot switch to codec 'learned'" in encoder.log(), 120), \
            encoder.log()[-3000:]
        assert probe.spin_until(lambda: params.get("codec_options")["codec_options"] == tiny, 60), \
            params.get("codec_options")
        after = rig.send(now_ns())
        assert rig.wait_coded([after], timeout=120)
        assert rig.out[after].codec == "learned" and rig.out[after].model_id.startswith("tiny-test@")

        # a refused change leaves torch's thread count alone
        refused = params.set(codec_options=f"weights={TRAINED_TINY}, device=cpu, threads=2, quality=99")
        assert not refused.successful and "quality" in refused.reason, refused.reason
        assert not params.set(codec_options="threads=1017").successful
        values = wait_diagnostics(probe, "rgbd_encoder", lambda v: "torch_threads" in v)
        assert values["torch_threads"] == "1", values
        if (os.cpu_count() or 1) >= 2:
            assert params.set(codec_options=f"weights={TRAINED_TINY}, device=cpu, threads=2").successful
            wait_diagnostics(probe, "rgbd_encoder", lambda v: v.get("torch_threads") == "2")
        assert encoder.alive() and "Traceback" not in encoder.log()
        assert "callback failed" not in encoder.log(), encoder.log()[-3000:]
    finally:
        params.destroy()


def test_encoder_drops_stale_pairs_uncoded(rigs, data_dir):
    probe, encoder = rigs("encoder_node", {"input_qos": "reliable", "diagnostics_period": 0.5}, "enc_stale")
    rig = EncoderRig(probe, encoder)
    params = Params(probe, "rgbd_encoder")
    try:
        assert params.get("max_age_s")["max_age_s"] == 1.0   # on by default
        old = rig.send(now_ns() - 10 * 10**9)
        fresh = rig.send(now_ns())
        assert rig.wait_coded([fresh]), encoder.log()[-3000:]
        assert old not in rig.out
        assert re.search(rf"pair stamped {stamp_text(old)} is [\d.]+ s old .*over max_age_s 1: dropped without "
                         r"coding", encoder.log()), encoder.log()[-3000:]
        values = wait_diagnostics(probe, "rgbd_encoder", lambda v: int(v["stale_drops"]) >= 1)
        assert int(values["refused"]) == 0
        assert not params.set(max_age_s=-1.0).successful
        assert params.set(max_age_s=0.0).successful   # off: the old stamp is coded now
        old2 = rig.send(now_ns() - 10 * 10**9)
        assert rig.wait_coded([old2]), encoder.log()[-3000:]
    finally:
        params.destroy()


# ---------------------------------------------------------------------------- the helpers themselves


def test_background_builder_latest_request_wins():
    """A build under way is let finish and dropped when a newer request came meanwhile."""
    import threading

    from rgbd_codec_ros.codec.base import CodecError, create_backend
    from rgbd_codec_ros.ros.codec_switch import BackgroundBuilder

    release, started, done = threading.Event(), threading.Event(), threading.Event()

    def build(key):
        started.set()
        if key == "slow":
            assert release.wait(30)
        if key == "broken":
            raise CodecError("these weights do not load")
        return create_backend("classical", color_quality=int(key) if key.isdigit() else 90)

    builder = BackgroundBuilder(build, done.set)
    try:
        builder.request("slow")
        assert started.wait(30) and builder.busy
        builder.request("40")           # supersedes the slow one, which is still building
        release.set()
        assert done.wait(30)
        key, backend, error = builder.take()
        assert (key, error) == ("40", None) and "40" in backend.quality
        assert builder.take() is None and not builder.busy
        done.clear()
        builder.request("broken")
        assert done.wait(30)
        key, backend, error = builder.take()
        assert (key, backend, error) == ("broken", None, "these weights do not load")
        done.clear()
        release.clear()
        builder.request("slow")
        builder.cancel()                # a cancelled build reports nothing
        release.set()
        assert not done.wait(1.0) and builder.take() is None
    finally:
        release.set()
        builder.close()


def test_native_output_captures_file_descriptor_2():
    from rgbd_codec_ros.ros.common import NativeOutput

    native = NativeOutput()
    try:
        with native.capture():
            os.write(2, b"dav1d: Error parsing OBU data\nagain\nagain\n")
        assert native.text.startswith("dav1d: Error parsing OBU data")
        assert native.summary() == "dav1d: Error parsing OBU data; again"
        with native.capture():
            pass
        assert native.text == "" and native.summary() == ""
        os.fstat(2)   # stderr is back
    finally:
        native.close()
