"""Organized XYZRGB point clouds from a decoded pair (sensor_msgs/PointCloud2 layout). No ROS imports
except in ``fill_pointcloud2``, which takes the message classes it fills.

Layout: one point per pixel (height x width, row-major, organized), fields ``x``, ``y``, ``z``
(float32 metres, in the colour camera's optical frame: x right, y down, z forward) and ``rgb``
(float32 whose bits are 0x00RRGGBB, the PCL / RViz convention); 16 bytes per point. Pixels
without depth get NaN for x, y and z, so ``is_dense`` is false. Depth is registered to colour,
so pixel (u, v) of depth and colour is the same ray: x = (u - cx) z / fx, y = (v - cy) z / fy
with the colour camera's K (lens distortion is not undone: the decoded images are image_raw).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")])


def depth_to_metres(depth: np.ndarray, encoding: str, depth_scale_per_m: float) -> np.ndarray:
    """A decoded depth image -> float32 metres, NaN where there is no measurement."""
    if encoding == "32FC1":
        z = depth.astype(np.float32, copy=True)
        z[~np.isfinite(z) | (z <= 0)] = np.nan
        return z
    z = depth.astype(np.float32) / np.float32(depth_scale_per_m)
    z[depth == 0] = np.nan
    return z


def color_to_rgb(color: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded colour image -> HxWx3 uint8 RGB."""
    if encoding == "mono8" or color.ndim == 2:
        return np.repeat(color.reshape(color.shape[0], color.shape[1], 1), 3, axis=2)
    rgb = color[:, :, :3]
    if encoding.startswith("bgr"):
        rgb = rgb[:, :, ::-1]
    return rgb


def intrinsics(info: Any) -> Tuple[float, float, float, float]:
    k = list(info.k)
    return float(k[0]), float(k[4]), float(k[2]), float(k[5])


def organized_points(z: np.ndarray, rgb: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """HxW structured array of POINT_DTYPE from depth in metres (NaN = hole) and RGB."""
    h, w = z.shape
    pts = np.empty((h, w), POINT_DTYPE)
    u = (np.arange(w, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
    v = (np.arange(h, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
    pts["x"] = u[None, :] * z
    pts["y"] = v[:, None] * z
    pts["z"] = z
    r, g, b = (rgb[:, :, i].astype(np.uint32) for i in range(3))
    pts["rgb"] = ((r << 16) | (g << 8) | b).view(np.float32)
    return pts


def fill_pointcloud2(msg: Any, field_cls: Any, pts: np.ndarray, header: Any) -> Any:
    """Fill a sensor_msgs/PointCloud2 ``msg`` from ``organized_points`` output."""
    h, w = pts.shape
    msg.header = header
    msg.height, msg.width = h, w
    msg.fields = [field_cls(name=n, offset=4 * i, datatype=field_cls.FLOAT32, count=1)
                  for i, n in enumerate(("x", "y", "z", "rgb"))]
    msg.is_bigendian = False
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = POINT_DTYPE.itemsize * w
    msg.data = pts.tobytes()
    msg.is_dense = False
    return msg


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """The inverse, for tests and tools: an organized HxW POINT_DTYPE array."""
    return np.frombuffer(bytes(msg.data), POINT_DTYPE).reshape(msg.height, msg.width)
