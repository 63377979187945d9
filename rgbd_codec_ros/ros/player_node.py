"""player_node: publishes a colour + depth sequence like an RGB-D camera driver.

Source (``source`` parameter): ``synthetic`` (the procedural room of
rgbd_codec_ros.synthetic) or a dataset folder (``color/`` and ``depth/`` images, optional
``index.csv`` giving the pairs and their order, optional ``meta.json`` with ``depth_scale_per_m``
and the camera matrix for camera_info; docs/folder_format.md). Publishes
``color/image_raw``, ``depth/image_raw``, ``color/camera_info`` and
``depth/camera_info`` at ``rate`` Hz, stamped with the current time.
Depth goes out as REP 118 16UC1 millimetres or 32FC1 metres. Grey images of a folder go out as
mono8 whatever ``color_encoding`` says (grey stays grey; both codec backends code mono8).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
from rclpy.node import Node
from rclpy.task import Future

from rgbd_codec_ros import convert
from rgbd_codec_ros.codec.base import CodecError
from rgbd_codec_ros.ros import common
from rgbd_codec_ros.ros.sources import open_source

from sensor_msgs.msg import CameraInfo, Image

NODE_NAME = "rgbd_player"


def parameter_specs() -> Dict[str, tuple]:
    d = common.describe
    return {
        "source": ("synthetic", d("'synthetic' or a folder holding color/ and depth/ images", read_only=True)),
        "rate": (10.0, d("Frames per second", read_only=True, float_range=(0.1, 120.0))),
        "loop": (True, d("Start again after the last frame of a folder (else stop the node)",
                         read_only=True)),
        "max_frames": (0, d("Stop after this many frames; 0 = no limit", read_only=True,
                            int_range=(0, 10_000_000))),
        "width": (640, d("Synthetic frame width", read_only=True, int_range=(8, 8192))),
        "height": (480, d("Synthetic frame height", read_only=True, int_range=(8, 8192))),
        "seed": (0, d("Synthetic scene seed", read_only=True, int_range=(0, 2**31 - 1))),
        "color_encoding": ("rgb8", d("Encoding of the colour images (grey images of a folder are always "
                                     "mono8; mono8 turns colour grey)", read_only=True,
                                     choices=convert.COLOR_ENCODINGS)),
        "depth_encoding": ("16UC1", d("Encoding of the depth images (16UC1 millimetres, 32FC1 metres)",
                                      read_only=True, choices=convert.DEPTH_ENCODINGS)),
        "depth_scale_per_m": (0.0, d("Units per metre of the folder's depth PNGs; 0 = from meta.json "
                                     "(else 1000)", read_only=True, float_range=(0.0, 1.0e6))),
        "color_frame_id": ("camera_color_optical_frame", d("frame_id of colour", read_only=True)),
        "depth_frame_id": ("camera_color_optical_frame", d("frame_id of depth (registered to colour, so "
                                                           "the colour frame by default)", read_only=True)),
        "depth_stamp_offset": (0.0, d("Seconds added to the depth stamps (to exercise approximate-time "
                                      "pairing)", read_only=True, float_range=(-1.0, 1.0))),
        "focal_length": (0.0, d("Focal length in pixels for camera_info of a folder; 0 = the camera "
                                "matrix of its meta.json, else 525 scaled to the width", read_only=True,
                                float_range=(0.0, 100000.0))),
        "wait_for_subscribers": (0, d("Start only once color/ and depth/image_raw have this many subscribers "
                                      "(so the first frames are not sent to nobody); 0 = start at once",
                                      read_only=True, int_range=(0, 1000))),
        "qos": ("reliable", d("QoS of the published topics", read_only=True, choices=common.QOS_CHOICES)),
        "qos_depth": (5, d("History depth of the published topics", read_only=True, int_range=(1, 1000))),
    }


class PlayerNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        p = common.declare(self, parameter_specs())
        for name, choices in (("color_encoding", convert.COLOR_ENCODINGS),
                              ("depth_encoding", convert.DEPTH_ENCODINGS), ("qos", common.QOS_CHOICES)):
            reason = common.check_choice(name, p[name], choices)
            if reason:
                raise common.StartupError(reason)
        self._params = p
        try:
            self._source = open_source(p["source"], width=p["width"], height=p["height"], seed=p["seed"],
                                       fps=p["rate"], depth_scale_per_m=p["depth_scale_per_m"] or None)
        except CodecError as exc:    # a DatasetError (bad folder) is one
            raise common.StartupError(f"source {p['source']!r}: {exc}") from exc
        qos = common.qos_profile(p["qos"], p["qos_depth"])
        self._pub_color = self.create_publisher(Image, "color/image_raw", qos)
        self._pub_depth = self.create_publisher(Image, "depth/image_raw", qos)
        self._pub_color_info = self.create_publisher(CameraInfo, "color/camera_info", qos)
        self._pub_depth_info = self.create_publisher(CameraInfo, "depth/camera_info", qos)
        self.index = 0
        #: completed (with the exit code) when the data is done; run_node spins until then
        self.finished = Future()
        self._said_grey = False
        self._timer = self.create_timer(1.0 / p["rate"], self._tick)
        self.get_logger().info(
            f"playing {p['source']} at {p['rate']:g} Hz as {p['color_encoding']} + {p['depth_encoding']} "
            f"on {self._pub_color.topic_name}, {self._pub_depth.topic_name}")

    def _camera_info(self, width: int, height: int, frame_id: str, stamp) -> CameraInfo:
        info = CameraInfo()
        info.header.stamp = stamp
        info.header.frame_id = frame_id
        info.width, info.height = width, height
        intr = getattr(self._source, "intrinsics", None)
        focal = self._params["focal_length"] if self._params["source"] != "synthetic" else 0.0
        if not focal and intr is not None and (intr.width, intr.height) == (width, height):
            fx, fy, cx, cy = intr.fx, intr.fy, intr.cx, intr.cy
        else:
            fx = fy = focal or 525.0 * width / 640.0
            cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return info

    def _done(self) -> bool:
        p = self._params
        if p["max_frames"] and self.index >= p["max_frames"]:
            return True
        return not p["loop"] and p["source"] != "synthetic" and self.index >= len(self._source)

    def _tick(self) -> None:
        wanted = self._params["wait_for_subscribers"]
        if self.index == 0 and wanted and min(self._pub_color.get_subscription_count(),
                                              self._pub_depth.get_subscription_count()) < wanted:
            return
        if self._done():
            self._timer.cancel()
            # a reliable subscriber may not have acknowledged the last frame yet, and a publisher
            # that goes away takes its unacknowledged messages with it
            for pub in (self._pub_color_info, self._pub_depth_info, self._pub_color, self._pub_depth):
                pub.wait_for_all_acked(_duration(2.0))
            self.get_logger().info(f"published {self.index} frames; done")
            self.finished.set_result(0)  # ends run_node's spin, which cleans up
            return
        p = self._params
        try:
            color_units, depth_units = self._source.frame(self.index)
        except CodecError as exc:
            self.get_logger().error(f"frame {self.index} skipped: {exc}")
            self.index += 1
            return
        color_encoding = "mono8" if color_units.ndim == 2 else p["color_encoding"]
        if color_units.ndim == 2 and p["color_encoding"] != "mono8" and not self._said_grey:
            self._said_grey = True
            self.get_logger().info(f"the source's colour is grey: publishing mono8 (color_encoding "
                                   f"{p['color_encoding']!r} applies to colour images)")
        color_arr = convert.color_from_codec(
            _grey(color_units) if color_encoding == "mono8" and color_units.ndim == 3 else color_units,
            color_encoding)
        scale = self._source.depth_scale_per_m
        if p["depth_encoding"] == "32FC1":
            depth_arr = np.where(depth_units > 0, depth_units / np.float32(scale), np.nan).astype(np.float32)
        elif scale != 1000.0:  # REP 118: 16UC1 is millimetres
            depth_arr = np.clip(np.rint(depth_units.astype(np.float64) * (1000.0 / scale)), 0, 65535)
            depth_arr = depth_arr.astype(np.uint16)
        else:
            depth_arr = depth_units
        now = self.get_clock().now()
        stamp = now.to_msg()
        depth_stamp = (now + _duration(p["depth_stamp_offset"])).to_msg()
        color = convert.fill_image(Image(), color_arr, color_encoding)
        color.header.stamp, color.header.frame_id = stamp, p["color_frame_id"]
        depth = convert.fill_image(Image(), depth_arr, p["depth_encoding"])
        depth.header.stamp, depth.header.frame_id = depth_stamp, p["depth_frame_id"]
        h, w = depth_arr.shape
        self._pub_color_info.publish(self._camera_info(w, h, p["color_frame_id"], stamp))
        self._pub_depth_info.publish(self._camera_info(w, h, p["depth_frame_id"], depth_stamp))
        self._pub_color.publish(color)
        self._pub_depth.publish(depth)
        self.index += 1


def _grey(rgb: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(rgb.astype(np.float32) @ weights), 0, 255).astype(np.uint8)


def _duration(seconds: float):
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(round(seconds * 1e9)))


def main(argv=None) -> int:
    return common.run_node(PlayerNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
