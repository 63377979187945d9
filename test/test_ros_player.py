"""The player node and its sources, and the whole chain player -> encoder -> decoder with defaults.

Also: lazy subscription, live pairing parameters, start-up errors and clean shutdown.
"""
from __future__ import annotations

import signal

import numpy as np
import pytest

from conftest import reliable_qos, unique_namespace
from rgbd_codec_ros.codec.base import CodecError
from rgbd_codec_ros.dataset_folder import DatasetError
from rgbd_codec_ros.ros.sources import FolderSource, open_source
from rgbd_codec_ros.synthetic import SyntheticSequence

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


# ------------------------------------------------------------------ sources (no ROS)


def test_synthetic_sequence_is_deterministic_and_sensor_like():
    seq = SyntheticSequence(seed=3)
    color, depth = seq.frame(5)
    assert color.shape == (480, 640, 3) and color.dtype == np.uint8
    assert depth.shape == (480, 640) and depth.dtype == np.uint16
    again_color, again_depth = SyntheticSequence(seed=3).frame(5)
    np.testing.assert_array_equal(color, again_color)
    np.testing.assert_array_equal(depth, again_depth)
    other_color, _ = SyntheticSequence(seed=4).frame(5)
    assert not np.array_equal(color, other_color), "the seed must change the scene"
    later_color, later_depth = seq.frame(25)
    moved = np.mean(np.any(later_color != color, axis=2))
    assert moved > 0.01, "objects must move between frames"
    holes = np.mean(depth == 0)
    assert 0.02 < holes < 0.5, f"{holes:.1%} holes: a sensor-like frame has some, not mostly"
    valid = depth[depth > 0]
    assert valid.min() >= 400 and valid.max() <= 6000, "depth stays within the sensor's range (mm)"
    assert np.std(color.astype(np.float32)) > 20, "the scene is textured"
    # smaller and odd sizes, with the intrinsics scaled along
    small = SyntheticSequence(width=161, height=121, seed=3)
    c, d = small.frame(0)
    assert c.shape == (121, 161, 3) and d.shape == (121, 161)
    assert small.intrinsics.fx == pytest.approx(525.0 * 161 / 640)
    with pytest.raises(ValueError):
        SyntheticSequence(width=4)


def test_folder_source(data_dir, tmp_path):
    src = FolderSource(data_dir / "realsense_f200_apc")
    assert len(src) == 33 and src.depth_scale_per_m == 10000.0  # from its meta.json
    color, depth = src.frame(2)
    assert color.shape == (480, 640, 3) and depth.dtype == np.uint16 and (depth == 0).any()
    assert src.intrinsics is None                                 # its meta.json states none
    kinect = open_source(str(data_dir / "7scenes_kinect1"))
    assert kinect.depth_scale_per_m == 1000.0
    assert (kinect.intrinsics.width, kinect.intrinsics.height, kinect.intrinsics.fx) == (640, 480, 585.0)
    with pytest.raises(DatasetError, match="does not exist"):
        FolderSource(tmp_path / "nowhere")
    (tmp_path / "color").mkdir()
    with pytest.raises(CodecError, match="color/ and depth/"):
        FolderSource(tmp_path)
    (tmp_path / "depth").mkdir()
    with pytest.raises(CodecError, match="no colour image"):
        FolderSource(tmp_path)


# ------------------------------------------------------------------ nodes


def test_player_folder_source_32fc1(data_dir, node_processes, probe_factory):
    """A folder in 0.1 mm units comes out as REP 118 metres; the player stops after max_frames."""
    from sensor_msgs.msg import CameraInfo, Image

    from rgbd_codec_ros import convert

    ns = unique_namespace("player_folder")
    probe = probe_factory(ns)
    got_color, got_depth, got_info = {}, {}, {}
    qos = reliable_qos(50)
    subs = [probe.node.create_subscription(Image, "color/image_raw", lambda m: got_color.__setitem__(stamp_ns(m.header), m), qos),
            probe.node.create_subscription(Image, "depth/image_raw", lambda m: got_depth.__setitem__(stamp_ns(m.header), m), qos),
            probe.node.create_subscription(CameraInfo, "color/camera_info", lambda m: got_info.__setitem__(stamp_ns(m.header), m), qos)]
    player = node_processes("player_node", ns, {
        "source": str(data_dir / "realsense_f200_apc"), "rate": 20.0, "max_frames": 200, "loop": False,
        "depth_encoding": "32FC1", "color_encoding": "bgr8", "qos_depth": 50, "wait_for_subscribers": 1})
    for sub in subs:
        probe.wait_matched(sub, processes=[player])
    # the folder has 33 frames and loop is off: the player stops by itself after them
    assert probe.spin_until(lambda: not player.alive(), 120), "player did not stop at the end of the folder"
    assert player.proc.returncode == 0, player.log()[-2000:]
    probe.spin_for(0.5)
    # Discovery may complete on the player's side a moment before on ours: the first
    # frame or two can be lost; every later one arrives (reliable, deep queue).
    assert len(got_color) >= 30 and len(got_depth) >= 30, f"{len(got_color)} colour, {len(got_depth)} depth"
    src = FolderSource(data_dir / "realsense_f200_apc")
    raw_color, raw_depth = src.frame(32)  # the last frame of the folder is the last one published
    last = max(got_depth)
    depth = convert.image_to_array(got_depth[last])
    assert got_depth[last].encoding == "32FC1" and got_color[last].encoding == "bgr8"
    np.testing.assert_array_equal(np.isnan(depth), raw_depth == 0)
    np.testing.assert_allclose(depth[raw_depth > 0], raw_depth[raw_depth > 0] / 10000.0, rtol=1e-6)
    np.testing.assert_array_equal(convert.image_to_array(got_color[last])[:, :, ::-1], raw_color)
    info = got_info[min(got_info)]
    assert info.width == 640 and info.k[0] == pytest.approx(525.0) and info.header.frame_id == "camera_color_optical_frame"
    assert "published 33 frames; done" in player.log()


def grey_folder(root):
    """Four grey 64x48 pairs, played in index.csv's order (not the file names'), with meta.json's
    camera matrix and depth in 0.5 mm units; pixel (0, 0) of colour frame i is 50 * (i + 1)."""
    import imagecodecs

    (root / "color").mkdir(parents=True)
    (root / "depth").mkdir()
    yy, xx = np.mgrid[0:48, 0:64]
    rows = ["id,color,depth"]
    for i, name in enumerate(["d", "b", "c", "a"]):
        grey = ((xx * 3 + yy * 2 + 40 * i) % 200).astype(np.uint8)
        grey[0, 0] = 50 * (i + 1)
        (root / "color" / f"{name}.png").write_bytes(imagecodecs.png_encode(grey))
        (root / "depth" / f"{name}.png").write_bytes(
            imagecodecs.png_encode((2000 + 10 * xx + 100 * i).astype(np.uint16)))
        rows.append(f"{name},color/{name}.png,depth/{name}.png")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    k = [[70.5, 0, 31.0], [0, 71.5, 23.5], [0, 0, 1]]
    (root / "meta.json").write_text(__import__("json").dumps({"depth_scale_per_m": 2000, "intrinsics": k}))
    return root, k


def test_player_grey_folder_index_order_and_calibration(tmp_path, node_processes, probe_factory):
    """A grey folder goes out as mono8 (which the encoder takes: test_ros_pipeline's encodings), in
    index.csv's order, with meta.json's camera matrix in camera_info and depth as REP 118 mm."""
    from sensor_msgs.msg import CameraInfo, Image

    from rgbd_codec_ros import convert

    folder, k = grey_folder(tmp_path / "grey")
    ns = unique_namespace("player_grey")
    probe = probe_factory(ns)
    colour, depth, info = [], [], []
    qos = reliable_qos(50)
    subs = [probe.node.create_subscription(Image, "color/image_raw", colour.append, qos),
            probe.node.create_subscription(Image, "depth/image_raw", depth.append, qos),
            probe.node.create_subscription(CameraInfo, "color/camera_info", info.append, qos)]
    player = node_processes("player_node", ns, {
        "source": str(folder), "rate": 20.0, "max_frames": 6, "qos_depth": 50, "wait_for_subscribers": 1})
    for sub in subs:
        probe.wait_matched(sub, processes=[player])
    assert probe.spin_until(lambda: not player.alive(), 120), "player did not stop after max_frames"
    assert player.proc.returncode == 0, player.log()[-2000:]
    probe.spin_for(0.3)
    assert len(colour) >= 4 and info, f"{len(colour)} colour images, {len(info)} camera_info"
    assert all(m.encoding == "mono8" and (m.width, m.height) == (64, 48) for m in colour)
    # index.csv's order (d, b, c, a), looping on: 50, 100, 150, 200, 50, ...
    firsts = [int(convert.image_to_array(m)[0, 0]) for m in colour]
    start = [50, 100, 150, 200].index(firsts[0])
    assert firsts == [50 * ((start + j) % 4 + 1) for j in range(len(firsts))], firsts
    assert list(info[0].k) == pytest.approx([v for row in k for v in row])
    # depth in 0.5 mm units comes out as millimetres, paired as index.csv pairs it
    grey_at = {stamp_ns(m.header): int(convert.image_to_array(m)[0, 0]) for m in colour}
    paired = [(grey_at[stamp_ns(m.header)], convert.image_to_array(m)) for m in depth
              if stamp_ns(m.header) in grey_at]
    assert len(paired) >= 3 and all(m.encoding == "16UC1" for m in depth)
    for grey, mm in paired:                   # pair i: grey 50 (i + 1), depth 2000 + 100 i half-mm
        assert mm[0, 0] == 950 + grey and mm.dtype == np.uint16
    assert "the source's colour is grey: publishing mono8" in player.log()
    assert "Traceback" not in player.log(), player.log()[-2000:]


def test_chain_with_defaults(node_processes, probe_factory):
    """player (synthetic) -> encoder -> decoder, default QoS, depth stamped 5 ms after colour."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from sensor_msgs.msg import CameraInfo, Image

    ns = unique_namespace("chain")
    probe = probe_factory(ns)
    color_out, depth_out, info_out = {}, {}, {}
    qos = reliable_qos(50)
    subs = [
        probe.node.create_subscription(Image, "decoded/color/image_raw", lambda m: color_out.__setitem__(stamp_ns(m.header), m), qos),
        probe.node.create_subscription(Image, "decoded/depth/image_raw", lambda m: depth_out.__setitem__(stamp_ns(m.header), m), qos),
        probe.node.create_subscription(CameraInfo, "decoded/depth/camera_info", lambda m: info_out.__setitem__(stamp_ns(m.header), m), qos),
    ]
    decoder = node_processes("decoder_node", ns)
    encoder = node_processes("encoder_node", ns, {"log_period": 2.0})
    player = node_processes("player_node", ns, {
        "width": 320, "height": 240, "rate": 10.0, "depth_stamp_offset": 0.005, "color_encoding": "bgr8",
        "color_frame_id": "cam_color", "depth_frame_id": "cam_depth"})
    procs = [decoder, encoder, player]
    for sub in subs:
        probe.wait_matched(sub, processes=procs)
    assert probe.spin_until(lambda: len(color_out) >= 10, 120), \
        f"{len(color_out)} frames decoded; encoder log:\n{encoder.log()[-2000:]}"
    probe.spin_for(0.3)
    for stamp, color in list(color_out.items())[:10]:
        assert color.encoding == "bgr8" and (color.width, color.height) == (320, 240)
        assert color.header.frame_id == "cam_color"
        depth_stamps = [s for s in depth_out if 0 <= s - stamp < 10**8]
        assert depth_stamps and depth_stamps[0] - stamp == 5_000_000, "depth stamp not kept"
        assert depth_out[depth_stamps[0]].header.frame_id == "cam_depth"
        assert depth_out[depth_stamps[0]].encoding == "16UC1"
    # calibration reaches the decoder once the encoder has received it (a camera_info may
    # arrive after the first images on a loaded machine): wait for it rather than assume it
    assert probe.spin_until(lambda: len(info_out) > 0, 60), "no decoded depth camera_info"
    info = next(iter(info_out.values()))
    assert info.k[0] == pytest.approx(525.0 * 320 / 640) and info.header.frame_id == "cam_depth"

    # live pairing parameters: exact time cannot pair stamps 5 ms apart; approximate can again
    client = probe.node.create_client(SetParameters, "rgbd_encoder/set_parameters")
    assert probe.spin_until(client.service_is_ready, 60)

    def set_bool(name, value) -> int:
        """Set a parameter; returns the time (ns, the clock the player stamps with) it was in force."""
        req = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_BOOL, bool_value=value))])
        future = client.call_async(req)
        assert probe.spin_until(future.done, 60) and future.result().results[0].successful
        return probe.node.get_clock().now().nanoseconds

    # Pairs formed before the switch may still be on their way; none can be formed after
    # it, so no decoded frame may carry a colour stamp later than the switch.
    switched = set_bool("exact_time", True)
    probe.spin_for(3.0)
    late = [s for s in color_out if s > switched]
    assert not late, f"exact-time pairing paired {len(late)} frames whose stamps are 5 ms apart"
    resumed = set_bool("exact_time", False)
    assert probe.spin_until(lambda: sum(s > resumed for s in color_out) >= 3, 60), "pairing did not resume"
    probe.node.destroy_client(client)

    assert player.stop(signal.SIGTERM) == 0
    assert encoder.stop(signal.SIGINT) == 0
    assert decoder.stop(signal.SIGINT) == 0
    for proc in procs:
        assert "Traceback" not in proc.log(), proc.log()[-2000:]


def test_lazy_subscription(node_processes, probe_factory):
    """The encoder subscribes to the images only while someone listens to rgbd/compressed."""
    from sensor_msgs.msg import Image

    from rgbd_codec_ros.msg import CompressedRGBD

    ns = unique_namespace("lazy")
    probe = probe_factory(ns)
    pub = probe.node.create_publisher(Image, "color/image_raw", reliable_qos(5))
    encoder = node_processes("encoder_node", ns, {"slopp": 0.1})  # a typo'd parameter name
    encoder.wait_for_log(r"encoding .*color/image_raw")
    encoder.wait_for_log(r"parameter 'slopp' was given but rgbd_encoder has no such parameter")
    probe.spin_for(1.5)
    assert pub.get_subscription_count() == 0, "subscribed to images with nobody listening"
    sub = probe.node.create_subscription(CompressedRGBD, "rgbd/compressed", lambda m: None, reliable_qos(5))
    probe.wait_matched(pub, 1, processes=[encoder])
    probe.node.destroy_subscription(sub)
    assert probe.spin_until(lambda: pub.get_subscription_count() == 0, 60), "did not unsubscribe"
    assert encoder.stop() == 0


@pytest.mark.parametrize("module,params,message", [
    ("encoder_node", {"codec": "wavelet"}, r"unknown codec 'wavelet'"),
    ("encoder_node", {"codec_options": "color_quality=500"}, r"color_quality"),
    ("encoder_node", {"codec_options": "quality"}, r"not of the form name=value"),
    ("encoder_node", {"input_qos": "fast"}, r"input_qos must be one of sensor_data, reliable, best_effort"),
    ("encoder_node", {"slop": 5.0}, r"slop"),
    ("decoder_node", {"output_qos": "x"}, r"output_qos must be one of"),
    ("player_node", {"source": "/nonexistent/frames"}, r"/nonexistent/frames does not exist"),
    ("player_node", {"depth_encoding": "mono16"}, r"depth_encoding must be one of 16UC1, 32FC1"),
])
def test_bad_start_parameters_exit_with_a_reason(node_processes, module, params, message):
    node = node_processes(module, unique_namespace("bad_start"), params)
    assert node.wait_exit(120) == 2, node.log()[-2000:]
    assert __import__("re").search(message, node.log()), node.log()[-2000:]
