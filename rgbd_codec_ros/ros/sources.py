"""Colour + depth sequences for the player node: a dataset folder or the synthetic room. No ROS imports.

A folder is read by ``rgbd_codec_ros.dataset_folder`` (docs/folder_format.md): pairs in
``index.csv`` order (else by file stem), depth in ``depth_scale_per_m`` units per metre and the
camera matrix from ``meta.json``. Grey colour stays grey (the player publishes it as mono8).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from rgbd_codec_ros.dataset_folder import DatasetFolder
from rgbd_codec_ros.synthetic import Intrinsics, SyntheticSequence


class FolderSource:
    """Frames of a dataset folder; ``frame(i)`` -> (colour uint8 HxWx3 RGB or HxW grey, depth uint16
    in the folder's units). ``intrinsics``: meta.json's camera matrix for the folder's image size
    (that of its first pair), None if meta.json states none."""

    def __init__(self, folder, depth_scale_per_m: Optional[float] = None):
        self.dataset = DatasetFolder(folder, depth_scale_per_m=depth_scale_per_m)
        self.folder = self.dataset.path
        self.pairs = self.dataset.pairs
        self.depth_scale_per_m = self.dataset.depth_scale_per_m
        self.intrinsics: Optional[Intrinsics] = None
        k = self.dataset.camera_matrix
        if k is not None:
            # read the first pair now: its size is the calibration's, and a bad folder fails at start
            _, depth = self.dataset.read(0)
            self.intrinsics = Intrinsics(width=depth.shape[1], height=depth.shape[0], fx=float(k[0, 0]),
                                         fy=float(k[1, 1]), cx=float(k[0, 2]), cy=float(k[1, 2]))

    def __len__(self) -> int:
        return len(self.pairs)

    def frame(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.dataset.read(index % len(self.pairs))


class SyntheticSource:
    """The procedural room of ``rgbd_codec_ros.synthetic`` (depth in millimetres)."""

    def __init__(self, width: int = 640, height: int = 480, seed: int = 0, fps: float = 15.0):
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
