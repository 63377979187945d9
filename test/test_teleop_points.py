"""decoder_node publish_points: decoded/points checked against an independent back-projection.

The decoder runs as its own process over real DDS; the test publishes a CompressedRGBD coded
in-process (real frame, lossless depth, a colour camera_info with an off-centre K) and
back-projects every pixel itself with the inverse of K, the textbook way.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_real_pairs, reliable_qos, unique_namespace

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS

COLOR_FRAME = "points_color_optical"


def _message(color, depth, k):
    from sensor_msgs.msg import CameraInfo

    from rgbd_codec_ros import convert
    from rgbd_codec_ros.codec.base import RGBDFrame, create_backend
    from rgbd_codec_ros.msg import CompressedRGBD

    frame = RGBDFrame(color, depth, 1000.0)
    encoded = create_backend("classical", color_quality=95).encode(frame)
    msg = CompressedRGBD()
    convert.fill_compressed(msg, convert.compressed_fields(encoded, frame, "bgr8", "16UC1"))
    msg.header.stamp.sec, msg.header.frame_id = 1_700_000_123, COLOR_FRAME
    msg.depth_header.stamp.sec, msg.depth_header.frame_id = 1_700_000_123, COLOR_FRAME
    info = CameraInfo()
    info.header.frame_id = COLOR_FRAME
    info.height, info.width = depth.shape
    info.k = [float(v) for v in np.asarray(k).ravel()]
    msg.color_camera_info = [info]
    return msg


def test_points_match_an_independent_back_projection(node_processes, probe_factory, data_dir):
    from sensor_msgs.msg import Image, PointCloud2

    from rgbd_codec_ros import convert

    color, depth = load_real_pairs("realsense_d4xx_visp_rbt", 1, step=1)[0]
    color, depth = np.ascontiguousarray(color[::2, ::2]), np.ascontiguousarray(depth[::2, ::2])
    assert (depth == 0).any() and (depth > 0).any()
    k = np.array([[303.6, 0.0, 160.7], [0.0, 301.9, 121.2], [0.0, 0.0, 1.0]])
    ns = unique_namespace("teleop_points")
    decoder = node_processes("decoder_node", ns, {"publish_points": True})
    probe = probe_factory(ns)
    clouds, colors = [], []
    sub_pts = probe.node.create_subscription(PointCloud2, "decoded/points", clouds.append, reliable_qos(5))
    sub_col = probe.node.create_subscription(Image, "decoded/color/image_raw", colors.append, reliable_qos(5))
    pub = probe.node.create_publisher(type(_message(color, depth, k)), "rgbd/compressed", reliable_qos(5))
    for endpoint in (sub_pts, sub_col, pub):
        probe.wait_matched(endpoint, 1, processes=[decoder])
    msg = _message(color, depth, k)
    assert probe.spin_until(lambda: (pub.publish(msg) or True) and probe.spin_until(
        lambda: clouds and colors, 1.0), 60.0), decoder.log()[-3000:]
    cloud = clouds[-1]
    h, w = depth.shape
    assert (cloud.height, cloud.width) == (h, w)                 # organized
    assert cloud.header.frame_id == COLOR_FRAME and cloud.header.stamp.sec == 1_700_000_123
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == \
        [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]  # 7 = FLOAT32
    assert cloud.point_step == 16 and cloud.row_step == 16 * w and not cloud.is_dense
    assert not cloud.is_bigendian
    raw = np.frombuffer(bytes(cloud.data), np.float32).reshape(h, w, 4)

    # independent back-projection: X = z * K^-1 [u, v, 1]^T for every pixel, in float64
    v, u = np.mgrid[0:h, 0:w]
    rays = np.linalg.inv(k) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    z = depth.astype(np.float64).ravel() / 1000.0
    xyz = (rays * z).T.reshape(h, w, 3)
    holes = depth == 0
    assert np.isnan(raw[holes][:, :3]).all()
    assert np.isfinite(raw[~holes][:, :3]).all()
    np.testing.assert_allclose(raw[~holes][:, :3], xyz[~holes], rtol=1e-5, atol=1e-6)

    # colour: the decoded image's pixels, packed 0x00RRGGBB in the float's bits
    decoded = convert.image_to_array(colors[-1])  # bgr8, as the message said
    packed = raw[:, :, 3].copy().view(np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=2).astype(np.uint8)
    np.testing.assert_array_equal(rgb, decoded[:, :, ::-1])
    assert decoder.alive()
