"""Folders of image pairs <-> bags of raw Image topics.

A dataset folder (``color/<id>.png|.jpg``, ``depth/<id>.png``, optional ``meta.json`` and
``index.csv``; see docs/folder_format.md) is read by ``rgbd_codec_ros.dataset_folder``, the one
reader of the format. ``folder_to_bag`` makes a bag of raw ``sensor_msgs/Image`` (+ CameraInfo)
topics from such a folder, the input a camera driver would have recorded;
``write_pairs_folder`` writes decoded pairs back in the same layout.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from rgbd_codec_ros.bag import messages, msgdefs
from rgbd_codec_ros.bag.storage import (
    AtomicBagWriter, OutputError, check_output, make_partial_dir, replace_output, resolve_output)
from rgbd_codec_ros.codec.base import CodecError
from rgbd_codec_ros.dataset_folder import DatasetFolder, PairFiles, list_pairs, read_pair

__all__ = ["DEFAULT_TOPICS", "PairFiles", "PairsFolderWriter", "camera_info", "folder_to_bag",
           "iter_dataset", "list_pairs", "load_pair"]

DEFAULT_TOPICS = {
    "color": "/camera/color/image_raw",
    "depth": "/camera/depth/image_raw",
    "color_info": "/camera/color/camera_info",
    "depth_info": "/camera/depth/camera_info",
}


def load_pair(pair: PairFiles, downscale: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(colour uint8 HxWx3 RGB or HxW grey, depth uint16 HxW); ``downscale`` keeps every n-th pixel."""
    color, depth = read_pair(pair)
    if downscale > 1:
        color = np.ascontiguousarray(color[::downscale, ::downscale])
        depth = np.ascontiguousarray(depth[::downscale, ::downscale])
    return color, depth


def camera_info(k: np.ndarray, width: int, height: int, hdr: Any, downscale: int = 1) -> Any:
    t = msgdefs.typestore().types
    k = k.copy()
    if downscale > 1:
        k[:2] /= downscale
    p = np.zeros((3, 4))
    p[:, :3] = k
    roi = t["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return t[msgdefs.CAMERA_INFO](
        header=hdr, height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1),
        binning_x=0, binning_y=0, roi=roi)


def folder_to_bag(folder, out, *, limit: Optional[int] = None, start: int = 0, rate_hz: float = 30.0,
                  downscale: int = 1, color_encoding: str = "rgb8", depth_encoding: str = "16UC1",
                  depth_offset_ns: int = 0,
                  jitter_ns: int = 0, start_stamp_ns: int = 1_700_000_000_000_000_000,
                  topics: Optional[Dict[str, str]] = None, camera_info_topics: bool = True,
                  frame_ids: Tuple[str, str] = ("camera_color_optical_frame",
                                                "camera_depth_optical_frame"),
                  storage: Optional[str] = None, force: bool = False) -> Dict[str, Any]:
    """Write a bag of raw Image (+ CameraInfo) topics from a dataset folder.

    Colour frame i is stamped ``start_stamp_ns + i / rate_hz``; its depth is
    stamped ``depth_offset_ns`` later, plus a deterministic jitter within
    +-``jitter_ns``. Messages are logged a few milliseconds after their stamps
    (depth before colour, as a driver's pipeline would deliver them).
    Depth is ``16UC1`` in the folder's units, or ``32FC1`` metres (NaN where no measurement).
    Colour goes out as ``color_encoding``, except that grey images stay grey: they are
    recorded as ``mono8`` whatever ``color_encoding`` says (``mono8`` turns colour grey).
    Returns {"pairs": n, "topics": {...}, "stamps": [(color_ns, depth_ns), ...]}.
    """
    from rgbd_codec_ros import convert

    if color_encoding not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        raise CodecError(f"unsupported colour encoding {color_encoding!r}")
    if depth_encoding not in ("16UC1", "32FC1"):
        raise CodecError(f"unsupported depth encoding {depth_encoding!r}; use 16UC1 or 32FC1")
    if rate_hz <= 0:
        raise CodecError(f"rate must be > 0 Hz, got {rate_hz}")
    topics = {**DEFAULT_TOPICS, **(topics or {})}
    source = DatasetFolder(folder)
    pairs = source.pairs[start:]
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise CodecError(f"{folder}: no pairs in the requested range")
    scale = source.depth_scale_per_m
    k = source.camera_matrix if camera_info_topics else None
    out_path, storage, single = resolve_output(out, storage, "mcap")
    period = int(round(1e9 / rate_hz))
    rng = np.random.default_rng(12345)
    stamps = []
    with AtomicBagWriter(out_path, storage=storage, force=force, single_file=single,
                         inputs=(folder,)) as bag:
        conns = {}
        for name, mtype in (("color", msgdefs.IMAGE), ("depth", msgdefs.IMAGE)) + (
                (("color_info", msgdefs.CAMERA_INFO), ("depth_info", msgdefs.CAMERA_INFO))
                if k is not None else ()):
            text, rihs = msgdefs.definition_and_hash(mtype)
            conns[name] = bag.add_connection(topics[name], mtype, text, rihs)
        bag.writer.set_custom_data("rgbd_codec_ros.depth_scale_per_m",
                                   str(scale))
        for i, pair in enumerate(pairs):
            color, depth = load_pair(pair, downscale)
            t_c = start_stamp_ns + i * period
            jitter = int(rng.integers(-jitter_ns, jitter_ns + 1)) if jitter_ns > 0 else 0
            t_d = t_c + depth_offset_ns + jitter
            stamps.append((t_c, t_d))
            encoding = "mono8" if color.ndim == 2 else color_encoding
            if encoding == "mono8":
                carr = (color if color.ndim == 2 else
                        np.rint(color @ np.array([0.299, 0.587, 0.114])).astype(np.uint8))
            else:
                carr = convert.color_from_codec(color, encoding)
            if depth_encoding == "32FC1":
                depth = convert.depth_from_codec(depth, "32FC1", scale)
            h_c = messages.header(t_c, frame_ids[0])
            h_d = messages.header(t_d, frame_ids[1])
            recs = [(t_d + 5_000_000, "depth", messages.image(depth, depth_encoding, h_d),
                     msgdefs.IMAGE),
                    (t_c + 8_000_000, "color", messages.image(carr, encoding, h_c), msgdefs.IMAGE)]
            if k is not None:   # a driver publishes calibration with (here: just before) the image
                recs.append((t_c + 7_900_000, "color_info",
                             camera_info(k, carr.shape[1], carr.shape[0], h_c, downscale),
                             msgdefs.CAMERA_INFO))
                recs.append((t_d + 4_900_000, "depth_info",
                             camera_info(k, depth.shape[1], depth.shape[0], h_d, downscale),
                             msgdefs.CAMERA_INFO))
            for t_log, name, msg, mtype in sorted(recs, key=lambda r: r[0]):
                bag.write(conns[name], t_log, messages.serialize(msg, mtype))
    return {"pairs": len(pairs), "topics": {n: topics[n] for n in conns}, "stamps": stamps,
            "depth_scale_per_m": 1.0 if depth_encoding == "32FC1" else scale,
            "output": str(out_path), "storage": storage}


class PairsFolderWriter:
    """Writes decoded pairs as a dataset folder (color/, depth/, meta.json, index.csv).

    Built under a temporary name next to the output and renamed into place by
    ``commit()``; ``discard()`` (or leaving a ``with`` block by an exception, or a
    failing commit) removes it. ``inputs``: what is being read, which the output
    must not be, hold or lie inside. ``force`` replaces only a folder that an
    earlier ``bag decompress --images`` wrote. Write failures are OutputError.
    """

    def __init__(self, out, force: bool = False, inputs=()):
        self.out = Path(out)
        self.force = force
        self.inputs = tuple(inputs)
        check_output(self.out, force, "images", self.inputs)
        self.tmp = make_partial_dir(self.out)
        try:
            (self.tmp / "color").mkdir()
            (self.tmp / "depth").mkdir()
        except OSError as exc:
            self.discard()
            raise OutputError(self.out, exc) from exc
        self.rows: List[Dict[str, Any]] = []
        self.scales = set()
        #: extra meta.json entries (provenance); depth_scale_per_m and num_pairs are filled in
        self.meta: Dict[str, Any] = {}
        self.committed = False

    def __enter__(self) -> "PairsFolderWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            if not self.committed:
                try:
                    self.commit()
                except BaseException:
                    self.discard()
                    raise
        else:
            self.discard()
        return False

    def add(self, pair_id: str, color: np.ndarray, depth_u16: np.ndarray, depth_scale_per_m: float,
            extra: Optional[Dict[str, Any]] = None) -> None:
        from PIL import Image

        if depth_u16.dtype != np.uint16:
            raise CodecError("depth must be uint16 to be written as PNG")
        cpath = f"color/{pair_id}.png"
        dpath = f"depth/{pair_id}.png"
        try:
            Image.fromarray(color).save(self.tmp / cpath, compress_level=1)
            Image.fromarray(depth_u16).save(self.tmp / dpath, compress_level=1)
        except OSError as exc:
            raise OutputError(self.out, exc) from exc
        self.scales.add(float(depth_scale_per_m))
        row = {"id": pair_id, "color": cpath, "depth": dpath}
        row.update(extra or {})
        self.rows.append(row)

    def commit(self) -> None:
        try:
            self._commit()
        except BaseException:
            self.discard()
            raise

    def _commit(self) -> None:
        if len(self.scales) > 1:
            raise CodecError(f"pairs have different depth scales {sorted(self.scales)}; "
                             "a dataset folder has one depth_scale_per_m")
        info = dict(self.meta)
        info["depth_scale_per_m"] = self.scales.pop() if self.scales else 1000.0
        info["num_pairs"] = len(self.rows)
        try:
            (self.tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            fields = list(self.rows[0].keys()) if self.rows else ["id", "color", "depth"]
            with (self.tmp / "index.csv").open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(self.rows)
            umask = os.umask(0)
            os.umask(umask)
            for d in (self.tmp, self.tmp / "color", self.tmp / "depth"):
                os.chmod(d, 0o777 & ~umask)     # mkdtemp made it private
        except OSError as exc:
            raise OutputError(self.out, exc) from exc
        replace_output(self.tmp, self.out, self.force, "images", self.inputs)
        self.committed = True

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def iter_dataset(folder, downscale: int = 1) -> Iterator[Tuple[PairFiles, np.ndarray, np.ndarray]]:
    for pair in list_pairs(folder):
        color, depth = load_pair(pair, downscale)
        yield pair, color, depth
