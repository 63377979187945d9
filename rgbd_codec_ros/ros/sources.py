"""Colour + depth sequences for the player node: a folder of images or the synthetic room. No ROS imports.

A folder holds ``color/`` and ``depth/`` images paired by file stem (``color/0001.jpg`` with
``depth/0001.png``); depth is a 16-bit single-channel PNG, 0 = no measurement, in units of
``depth_scale_per_m`` per metre, read from an optional ``meta.json`` (default 1000, millimetres).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from rgbd_codec_ros.codec.base import CodecError

COLOR_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")


class FolderSource:
    """Frames of a folder; ``frame(i)`` -> (RGB uint8 HxWx3, depth uint16 in source units)."""

    def __init__(self, folder, depth_scale_per_m: Optional[float] = None):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"source folder {self.folder} does not exist")
        color_dir, depth_dir = self.folder / "color", self.folder / "depth"
        if not color_dir.is_dir() or not depth_dir.is_dir():
            raise CodecError(f"{self.folder} must hold color/ and depth/ sub-folders")
        depth_by_stem = {p.stem: p for p in depth_dir.iterdir() if p.suffix.lower() == ".png"}
        self.pairs: List[Tuple[Path, Path]] = sorted(
            (p, depth_by_stem[p.stem]) for p in color_dir.iterdir()
            if p.suffix.lower() in COLOR_SUFFIXES and p.stem in depth_by_stem)
        if not self.pairs:
            raise CodecError(f"{self.folder}: no colour image in color/ has a depth PNG of the same "
                             "name in depth/")
        scale = depth_scale_per_m
        meta = self.folder / "meta.json"
        if scale is None and meta.is_file():
            try:
                scale = float(json.loads(meta.read_text()).get("depth_scale_per_m", 1000.0))
            except (ValueError, AttributeError) as exc:
                raise CodecError(f"{meta}: cannot read depth_scale_per_m ({exc})") from exc
        self.depth_scale_per_m = 1000.0 if scale is None else float(scale)
        if not np.isfinite(self.depth_scale_per_m) or self.depth_scale_per_m <= 0:
            raise CodecError(f"depth_scale_per_m must be > 0, got {self.depth_scale_per_m}")
        self.intrinsics = None  # unknown: the player uses its parameters or a default

    def __len__(self) -> int:
        return len(self.pairs)

    def frame(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        color_path, depth_path = self.pairs[index % len(self.pairs)]
        try:
            with Image.open(color_path) as im:
                color = np.asarray(im.convert("RGB"))
            with Image.open(depth_path) as im:
                depth = np.asarray(im)
        except OSError as exc:
            raise CodecError(f"cannot read {color_path.name}/{depth_path.name}: {exc}") from exc
        if depth.ndim != 2 or depth.dtype.kind not in "ui":
            raise CodecError(f"{depth_path}: depth must be a single-channel integer PNG, got {depth.dtype} "
                             f"{depth.shape}")
        if depth.shape != color.shape[:2]:
            raise CodecError(f"{color_path.name} is {color.shape[1]}x{color.shape[0]} but "
                             f"{depth_path.name} is {depth.shape[1]}x{depth.shape[0]}")
        return np.ascontiguousarray(color), depth.astype(np.uint16)


class SyntheticSource:
    """The procedural room of ``rgbd_codec_ros.synthetic`` (depth in millimetres)."""

    def __init__(self, width: int = 640, height: int = 480, seed: int = 0, fps: float = 15.0):
        from rgbd_codec_ros.synthetic import SyntheticSequence

        self.sequence = SyntheticSequence(width=width, height=height, seed=seed, fps=fps)
        self.depth_scale_per_m = self.sequence.depth_scale_per_m
        self.intrinsics = self.sequence.intrinsics

    def __len__(self) -> int:
        return len(self.sequence)

    def frame(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.sequence.frame(index)


def open_source(source: str, width: int = 640, height: int = 480, seed: int = 0, fps: float = 15.0,
                depth_scale_per_m: Optional[float] = None):
    """``"synthetic"`` or a folder path -> a source with ``frame(i)``, ``len()``, ``depth_scale_per_m``."""
    if source == "synthetic":
        return SyntheticSource(width=width, height=height, seed=seed, fps=fps)
    return FolderSource(source, depth_scale_per_m=depth_scale_per_m)
