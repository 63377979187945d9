"""A procedural RGB-D sequence: a small ray-cast room with moving objects. No ROS imports.

The demo and the tests need colour + depth that behave like a real sensor
without shipping anyone's data. This module renders, with numpy only, a
static camera looking into a textured room (checkered floor, shelves, a
painting, a window, a dark rug) while two spheres and a rotating box move
through it. Depth is the optical-axis distance in millimetres (uint16,
REP 118) and has the kinds of holes real sensors have:

- out of range: nearer than ``min_range_m`` or farther than ``max_range_m``
  (a doorway at the back opens onto a corridor beyond the range);
- materials a depth sensor cannot see: the window (specular/transparent) and
  the dark rug (absorbs the infrared pattern); specular highlights on the
  shiny sphere;
- occlusion shadows: a few pixels beside depth discontinuities, where the
  projector's view is blocked (structured light / stereo).

Depth carries sensor-like noise and quantisation in disparity (error growing
with the square of distance) and colour carries a little pixel noise, so the frames compress like camera
frames rather than like cartoons. Everything is deterministic from ``seed``
and the frame index: ``SyntheticSequence(seed=3).frame(17)`` is the same on
every machine with the same numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

DEPTH_SCALE_PER_M = 1000.0  # depth is in millimetres


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def k(self) -> Tuple[float, ...]:
        """The row-major 3x3 camera matrix of sensor_msgs/CameraInfo."""
        return (self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0)

    def p(self) -> Tuple[float, ...]:
        """The row-major 3x4 projection matrix of sensor_msgs/CameraInfo (no stereo baseline)."""
        return (self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0)


# Room geometry in the world frame (metres): x right, y down, z forward; camera at the origin.
_LEFT_X, _RIGHT_X = -2.4, 2.4
_CEILING_Y, _FLOOR_Y = -1.4, 1.1
_BACK_Z = 5.6
_LIGHT = np.array([0.3, -1.2, 2.8])
_AMBIENT = 0.35
_BASELINE_M = 0.075  # projector-camera baseline of the simulated depth sensor


class _Noise2D:
    """Smooth value noise: a seeded random lattice sampled with bilinear interpolation."""

    def __init__(self, rng: np.random.Generator, size: int = 64):
        self.size = size
        self.grid = rng.random((size, size)).astype(np.float32)

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        n = self.size
        u = np.mod(u, n)
        v = np.mod(v, n)
        u0 = np.floor(u).astype(np.int64)
        v0 = np.floor(v).astype(np.int64)
        fu = (u - u0).astype(np.float32)
        fv = (v - v0).astype(np.float32)
        u1, v1 = (u0 + 1) % n, (v0 + 1) % n
        g = self.grid
        top = g[v0, u0] * (1 - fu) + g[v0, u1] * fu
        bottom = g[v1, u0] * (1 - fu) + g[v1, u1] * fu
        return top * (1 - fv) + bottom * fv


def _hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer cell (a, b)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _ball_pattern(normals: np.ndarray, material: str, time_s: float) -> np.ndarray:
    """Albedo (Nx3) of ball points with these outward ``normals``: a latitude/longitude checker that
    rotates with time, so motion is visible."""
    lon = np.arctan2(normals[:, 0], normals[:, 2]) + 1.5 * time_s
    lat = np.arcsin(np.clip(normals[:, 1], -1, 1))
    check = (np.floor(lon * 4 / math.pi) + np.floor(lat * 4 / math.pi)).astype(np.int64) % 2
    base = np.array([0.85, 0.2, 0.15] if material == "shiny" else [0.2, 0.45, 0.9], np.float32)
    return np.where(check[:, None] == 0, base, base * 0.45 + 0.3)


def _specular(points: np.ndarray, view: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Blinn-Phong highlight strength (N, 0..1) of the light at ``points`` seen along ``view``."""
    to_light = _LIGHT - points
    to_light /= np.linalg.norm(to_light, axis=1, keepdims=True)
    half_vec = to_light + view
    half_vec /= np.linalg.norm(half_vec, axis=1, keepdims=True)
    return np.clip(np.sum(half_vec * normals, axis=1), 0, 1) ** 60


def _cube_entry(origin: np.ndarray, rays: np.ndarray, half: float):
    """Where rays from ``origin`` enter the axis-aligned cube of half-side ``half`` (slab test):
    (entry distance, axis of the entry face, whether the ray enters it in front of the origin)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / rays
        t1 = (-half - origin) * inv
        t2 = (half - origin) * inv
    t_near = np.minimum(t1, t2)
    t_far = np.maximum(t1, t2)
    t_enter = np.nanmax(t_near, axis=-1)
    t_exit = np.nanmin(t_far, axis=-1)
    face = np.nanargmax(t_near, axis=-1)
    return t_enter, face, (t_enter < t_exit) & (t_enter > 0)


class SyntheticSequence:
    """Colour + depth frames of the procedural room; ``frame(i)`` -> (RGB uint8 HxWx3, depth uint16 mm)."""

    def __init__(self, width: int = 640, height: int = 480, seed: int = 0, fps: float = 15.0,
                 min_range_m: float = 0.4, max_range_m: float = 6.0, depth_noise: bool = True,
                 color_noise: bool = True):
        if width < 8 or height < 8:
            raise ValueError(f"synthetic frames must be at least 8x8, got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not 0 <= min_range_m < max_range_m:
            raise ValueError(f"need 0 <= min_range_m < max_range_m, got {min_range_m}, {max_range_m}")
        self.width, self.height, self.seed, self.fps = int(width), int(height), int(seed), float(fps)
        self.min_range_m, self.max_range_m = float(min_range_m), float(max_range_m)
        self.depth_noise, self.color_noise = bool(depth_noise), bool(color_noise)
        focal = 525.0 * self.width / 640.0  # a Kinect-like field of view at any resolution
        self.intrinsics = Intrinsics(self.width, self.height, focal, focal,
                                     (self.width - 1) / 2.0, (self.height - 1) / 2.0)
        self.depth_scale_per_m = DEPTH_SCALE_PER_M
        rng = np.random.default_rng(self.seed)
        self._noise = _Noise2D(rng)
        self._fine_noise = _Noise2D(rng)
        self._phases = rng.uniform(0, 2 * math.pi, 4)
        self._pitch = math.radians(8.0)  # looking slightly down, so the floor is in view
        self._setup_rays()
        self._render_background()
        # Sensor noise for every frame is a window of one long pre-drawn buffer at an
        # offset chosen per frame: drawing fresh Gaussian noise for 1.2 M values took
        # more time than rendering the frame.
        npix = self.width * self.height
        self._noise_extra = 1 << 16
        self._color_noise = np.clip(np.rint(rng.standard_normal(3 * npix + self._noise_extra)), -4, 4)
        self._color_noise = self._color_noise.astype(np.float32)
        self._depth_noise = rng.standard_normal(npix + self._noise_extra).astype(np.float32) * np.float32(0.06)

    # ------------------------------------------------------------------ geometry

    def _setup_rays(self) -> None:
        k = self.intrinsics
        u = (np.arange(self.width, dtype=np.float64) - k.cx) / k.fx
        v = (np.arange(self.height, dtype=np.float64) - k.cy) / k.fy
        uu, vv = np.meshgrid(u, v)
        cam = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
        norm = np.linalg.norm(cam, axis=-1, keepdims=True)
        cam /= norm
        self._cos_to_axis = cam[..., 2]  # optical-axis depth = distance along the ray x this
        c, s = math.cos(self._pitch), math.sin(self._pitch)
        # camera -> world: rotate about x so the optical axis tips downwards (y is down)
        self._cam_to_world = np.array([[1, 0, 0], [0, c, s], [0, -s, c]], dtype=np.float64)
        self._rays = cam @ self._cam_to_world.T  # unit ray directions in the world, HxWx3

    def _render_background(self) -> None:
        d = self._rays
        h, w = self.height, self.width
        t = np.full((h, w), np.inf)
        normal = np.zeros((h, w, 3))
        albedo = np.zeros((h, w, 3), dtype=np.float32)
        invalid = np.zeros((h, w), dtype=bool)  # materials the depth sensor cannot see

        planes = (  # axis, position, inward normal, surface name
            (0, _LEFT_X, (1, 0, 0), "left"),
            (0, _RIGHT_X, (-1, 0, 0), "right"),
            (1, _CEILING_Y, (0, 1, 0), "ceiling"),
            (1, _FLOOR_Y, (0, -1, 0), "floor"),
            (2, _BACK_Z, (0, 0, -1), "back"),
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis, pos, n, name in planes:
                tp = pos / d[..., axis]
                hit = (tp > 0) & (tp < t)
                t = np.where(hit, tp, t)
                normal[hit] = n
                p = d[hit] * tp[hit, None]
                col, bad = self._surface(name, p)
                albedo[hit] = col
                invalid[hit] = bad
        self._bg_t = t
        self._bg_invalid = invalid
        # the room does not move: its lit colour is computed once
        self._bg_color = albedo * self._shade(d * t[..., None], normal)[..., None] * np.float32(255.0)

    def _surface(self, name: str, p: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Albedo (Nx3, 0..1) and depth-invisible flags (N) of room surface points ``p``."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        n = len(p)
        bad = np.zeros(n, dtype=bool)
        if name == "floor":
            tile = (np.floor(x / 0.5) + np.floor(z / 0.5)).astype(np.int64) % 2
            grain = self._noise(x * 3.0, z * 40.0)[:, None]
            light = np.array([0.78, 0.62, 0.42], np.float32)
            dark = np.array([0.55, 0.38, 0.22], np.float32)
            col = np.where(tile[:, None] == 0, light, dark) * (0.8 + 0.35 * grain)
            rug = (np.abs(x + 0.6) < 0.7) & (np.abs(z - 2.3) < 0.45)
            col[rug] = np.array([0.05, 0.05, 0.06], np.float32) * (0.7 + 0.6 * grain[rug])
            bad |= rug
        elif name == "ceiling":
            col = np.tile(np.array([0.86, 0.86, 0.83], np.float32), (n, 1))
            panel = (np.abs(x) < 0.6) & (np.abs(z - 3.0) < 0.6)
            col[panel] = 1.0
        elif name == "back":
            # shelves: cells of books in hashed colours
            cx, cy = np.floor(x / 0.12), np.floor(y / 0.45)
            hue = _hash01(cx, cy, 1)
            shelf = np.abs(np.mod(y, 0.45) - 0.02) < 0.025
            col = np.stack([0.3 + 0.6 * hue, 0.25 + 0.5 * _hash01(cx, cy, 2),
                            0.2 + 0.6 * _hash01(cx, cy, 3)], axis=1).astype(np.float32)
            col[shelf] = np.array([0.45, 0.3, 0.18], np.float32)
            # a doorway to a long corridor: beyond the sensor's range, so no depth
            door = (np.abs(x - 1.3) < 0.45) & (y > -0.6)
            col[door] = (0.12 + 0.1 * self._noise(x[door] * 4, y[door] * 4))[:, None] * np.float32([1, 1, 1.1])
            bad |= door
        else:  # side walls
            along = z
            stripes = 0.9 + 0.1 * np.sign(np.sin(along * 2 * math.pi / 0.8))
            base = np.array([0.72, 0.76, 0.70] if name == "left" else [0.80, 0.74, 0.66], np.float32)
            col = base[None, :] * stripes[:, None] * (0.9 + 0.2 * self._fine_noise(along * 8, y * 8))[:, None]
            if name == "left":  # a painting: high-frequency detail for the colour codec
                frame = (np.abs(z - 3.2) < 0.7) & (np.abs(y + 0.2) < 0.45)
                pu, pv = z[frame] * 12.0, y[frame] * 12.0
                col[frame] = np.stack([self._noise(pu, pv), self._noise(pu + 17, pv + 5),
                                       0.3 + 0.5 * self._fine_noise(pu * 3, pv * 3)], axis=1)
            else:  # a window: bright, and invisible to the depth sensor
                window = (np.abs(z - 4.0) < 0.8) & (np.abs(y + 0.3) < 0.55)
                sky = 0.75 + 0.25 * self._noise(z[window] * 2, y[window] * 2)
                col[window] = np.stack([0.55 * sky, 0.75 * sky, np.ones_like(sky)], axis=1)
                bad |= window
        return np.clip(col, 0, 1).astype(np.float32), bad

    def _shade(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        to_light = _LIGHT - points
        dist = np.linalg.norm(to_light, axis=-1, keepdims=True)
        lambert = np.clip(np.sum(normals * to_light / np.maximum(dist, 1e-9), axis=-1), 0, 1)
        falloff = 1.0 / (1.0 + 0.04 * dist[..., 0] ** 2)
        return (_AMBIENT + 0.9 * lambert * falloff).astype(np.float32)

    # ------------------------------------------------------------------ moving objects

    def _objects(self, time_s: float):
        ph = self._phases
        r1, r2 = 0.35, 0.25
        sphere1 = (np.array([1.0 * math.cos(0.6 * time_s + ph[0]), _FLOOR_Y - r1,
                             3.6 + 1.0 * math.sin(0.6 * time_s + ph[0])]), r1, "shiny")
        bounce = abs(math.sin(1.7 * time_s + ph[1]))
        sphere2 = (np.array([-1.1 + 0.3 * math.sin(0.4 * time_s + ph[2]), _FLOOR_Y - r2 - 0.9 * bounce,
                             2.6]), r2, "matte")
        half = 0.3
        box = (np.array([-0.2 + 0.8 * math.sin(0.3 * time_s + ph[3]), _FLOOR_Y - half - 0.4, 5.0]),
               half, 0.8 * time_s)
        return (sphere1, sphere2), box

    def _screen_rect(self, center: np.ndarray, radius: float) -> Optional[Tuple[int, int, int, int]]:
        """Pixel rectangle (y0, y1, x0, x1) that holds the projection of a ball, or None if unseen."""
        corners = center + radius * np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        cam = corners @ self._cam_to_world  # world -> camera (the rotation's inverse is its transpose)
        if np.any(cam[:, 2] <= 0.05):
            return 0, self.height, 0, self.width
        k = self.intrinsics
        u = k.fx * cam[:, 0] / cam[:, 2] + k.cx
        v = k.fy * cam[:, 1] / cam[:, 2] + k.cy
        x0, x1 = int(max(0, math.floor(u.min()))), int(min(self.width, math.ceil(u.max()) + 1))
        y0, y1 = int(max(0, math.floor(v.min()))), int(min(self.height, math.ceil(v.max()) + 1))
        if x0 >= x1 or y0 >= y1:
            return None
        return y0, y1, x0, x1

    # ------------------------------------------------------------------ frames

    def __len__(self) -> int:  # endless, but a length makes it usable where one is needed
        return 1 << 31

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        i = 0
        while True:
            yield self.frame(i)
            i += 1

    def frame(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Frame ``index`` (>= 0): ``(color RGB uint8 HxWx3, depth uint16 millimetres, 0 = hole)``."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        time_s = index / self.fps
        # range along each ray, lit colour (0..255 float) and depth-invisible flags: the room,
        # then every moving object drawn over it where it is nearer
        t = self._bg_t.copy()
        color = self._bg_color.copy()
        invalid = self._bg_invalid.copy()
        spheres, box = self._objects(time_s)
        for center, radius, material in spheres:
            self._draw_sphere(center, radius, material, time_s, t, color, invalid)
        self._draw_box(*box, t, color, invalid)
        color_offset, depth_offset = np.random.default_rng([self.seed, index]).integers(
            0, self._noise_extra, 2)
        return self._sensor_color(color, color_offset), self._sensor_depth(t, invalid, depth_offset)

    def _draw_sphere(self, center: np.ndarray, radius: float, material: str, time_s: float,
                     t: np.ndarray, color: np.ndarray, invalid: np.ndarray) -> None:
        """Ray-cast one ball into the range, colour and invalid images (in place) where it is nearer."""
        rect = self._screen_rect(center, radius)
        if rect is None:
            return
        y0, y1, x0, x1 = rect
        d = self._rays[y0:y1, x0:x1]
        b = d @ center
        disc = b * b - (center @ center - radius * radius)
        hit = disc > 0
        th = np.where(hit, b - np.sqrt(np.where(hit, disc, 0)), np.inf)
        hit &= (th > 0) & (th < t[y0:y1, x0:x1])
        if not hit.any():
            return
        p = d[hit] * th[hit, None]
        n = (p - center) / radius
        col = _ball_pattern(n, material, time_s)
        sh = self._shade(p, n)
        bad = np.zeros(len(p), dtype=bool)
        if material == "shiny":  # a specular highlight: saturated colour and no depth
            spec = _specular(p, -d[hit], n)
            col = col + spec[:, None] * 2.0
            bad = spec > 0.5
        sub = (slice(y0, y1), slice(x0, x1))
        t[sub][hit] = th[hit]
        color[sub][hit] = col * sh[:, None] * 255.0
        invalid[sub][hit] = bad

    def _draw_box(self, center: np.ndarray, half: float, angle: float,
                  t: np.ndarray, color: np.ndarray, invalid: np.ndarray) -> None:
        """Ray-cast the box (turned ``angle`` about y) into the images (in place) where it is nearer."""
        rect = self._screen_rect(center, half * math.sqrt(3))
        if rect is None:
            return
        y0, y1, x0, x1 = rect
        ca, sa = math.cos(angle), math.sin(angle)
        rot = np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])  # box -> world, about y
        d = self._rays[y0:y1, x0:x1] @ rot  # world -> box frame
        o = -center @ rot
        t_enter, face, hit = _cube_entry(o, d, half)
        hit &= t_enter < t[y0:y1, x0:x1]
        if not hit.any():
            return
        p_local = o + d[hit] * t_enter[hit, None]
        f = face[hit]
        n_local = np.zeros_like(p_local)
        n_local[np.arange(len(f)), f] = np.sign(p_local[np.arange(len(f)), f])
        n_world = n_local @ rot.T
        p_world = center + p_local @ rot.T
        # a grid pattern on each face
        grid = (np.abs(np.mod(p_local * 5, 1.0) - 0.5) > 0.42).any(axis=1)
        col = np.where(grid[:, None], np.array([0.1, 0.1, 0.1], np.float32),
                       np.array([0.95, 0.8, 0.2], np.float32))
        sub = (slice(y0, y1), slice(x0, x1))
        t[sub][hit] = t_enter[hit]
        color[sub][hit] = col * self._shade(p_world, n_world)[:, None] * 255.0
        invalid[sub][hit] = False

    def _sensor_color(self, color: np.ndarray, noise_offset: int) -> np.ndarray:
        """The camera's uint8 image of the lit colour (modified in place), with its pixel noise."""
        if self.color_noise:  # about one grey level
            color += self._color_noise[noise_offset:noise_offset + color.size].reshape(color.shape)
        np.clip(color, 0, 255, out=color)
        return np.rint(color, out=color).astype(np.uint8)

    def _sensor_depth(self, t: np.ndarray, invalid: np.ndarray, noise_offset: int) -> np.ndarray:
        """The depth sensor's uint16 millimetres of the ranges ``t``: noise, range limits, holes."""
        z = t * self._cos_to_axis  # optical-axis depth in metres
        if self.depth_noise:
            # Like a structured-light / stereo sensor: noise and quantisation live in
            # disparity (1/8 pixel steps), so depth error grows with distance squared
            # and far surfaces come out as terraces of repeated values.
            fb = self.intrinsics.fx * _BASELINE_M
            with np.errstate(divide="ignore", invalid="ignore"):
                disparity = (fb / z).astype(np.float32)
                disparity += self._depth_noise[noise_offset:noise_offset + z.size].reshape(z.shape)
                z = fb / (np.rint(disparity * 8.0) / 8.0)
        invalid |= ~np.isfinite(z) | (z < self.min_range_m) | (z > self.max_range_m)
        invalid |= self._occlusion_shadow(z)
        depth = np.where(invalid, 0.0, np.rint(z * DEPTH_SCALE_PER_M))
        return np.clip(depth, 0, 65535).astype(np.uint16)

    @staticmethod
    def _occlusion_shadow(z: np.ndarray, jump_m: float = 0.15, width: int = 3) -> np.ndarray:
        """Pixels just right of a near-to-far edge: the projector (to the right) cannot light them."""
        zf = np.where(np.isfinite(z), z, 1e9)
        edge = (zf[:, 1:] - zf[:, :-1]) > jump_m  # the pixel at x+1 is much farther than x
        shadow = np.zeros_like(zf, dtype=bool)
        for k in range(1, width + 1):
            shadow[:, k:] |= edge[:, : zf.shape[1] - k]
        return shadow

    def camera_info_fields(self) -> dict:
        """Fields of a sensor_msgs/CameraInfo for this camera (plumb_bob, no distortion)."""
        k = self.intrinsics
        return {"width": k.width, "height": k.height, "distortion_model": "plumb_bob",
                "d": [0.0] * 5, "k": list(k.k()), "r": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                "p": list(k.p())}
