#!/usr/bin/env python3
"""Temporal colour (H.264 / HEVC / AV1) against intra colour (JPEG / AVIF / JPEG XL) on real
consecutive RGB-D sequences, and a temporal depth study.

Colour, per sequence and codec at several qualities: bits per frame (keyframes included),
RGB PSNR (peak 255, mean of per-frame values) and MS-SSIM (pytorch_msssim, 5 scales, on
[0, 255]), encode / decode ms per frame. Intra codecs are imagecodecs with the classical
backend's settings (JPEG with Huffman optimisation, AVIF speed 8, JPEG XL effort 3; AVIF and
JPEG XL with 2 threads, libjpeg-turbo has one); temporal codecs go through
``rgbd_codec_ros.codec.video`` (VideoEncoder / VideoDecoder, 2 threads, quality mode,
a keyframe every ``KEYFRAME_INTERVAL`` coded frames). Each sequence is coded as stored
("10 Hz", consecutive frames) and subsampled to every 2nd frame ("5 Hz"); intra results at
5 Hz are the same frames' intra results. BD-rate (PSNR, and MS-SSIM) of every temporal codec
against every intra codec per source, with the project's Bjontegaard function
(``training.evaluate.bd_rate``: PCHIP of log-rate over quality, exact integral over the overlap).
Also: each video encoder's delay in frames (packets out against frames in, then what a flush
still holds) and each decoder's (frames out against packets in), and keyframe / predicted
frame sizes.

Depth (``--depth``): lossless intra (RVL + zstd, JPEG XL lossless effort 2) and bounded-error
intra (the classical ``rvl_lossy`` quantiser, its indices through RVL + zstd or JPEG XL
lossless) against temporal candidates, all with holes exact and every frame decoded and
checked:

- A, lossless temporal: the change of the hole mask (XOR with the previous frame's, bit-packed,
  zstd) and the residual against the previous decoded frame (its holes filled along rows),
  modulo 2^16, coded as zig-zag byte planes + zstd (``A-zstd``), the same after a spatial delta
  (``A-zstd-delta``), or as a biased uint16 image through JPEG XL lossless effort 2
  (``A-jxl``); ``A-best`` takes the smallest of those and intra per frame (+1 byte).
  For the bounded modes, A codes the quantiser's indices, and a pixel whose previous
  reconstruction is still within its bound keeps its previous index (conditional
  replenishment: the bound still holds per pixel, against the current depth).
- B, HEVC 12-bit: libx265 lossless (``lossless=1``, gray12) over the same index image
  (bounded modes only: lossless depth needs 16 bits).

Keyframes (intra) every ``KEYFRAME_INTERVAL`` frames, counted in the bits. The verdict a
temporal depth mode would have to reach: at least ``DEPTH_WIN`` fewer bits than the best intra
coder at the same error bound.

Usage::

    python benchmarks/bench_temporal.py                     # colour, every source, all frames
    python benchmarks/bench_temporal.py --depth             # and the depth study
    python benchmarks/bench_temporal.py --no-color --depth --frames 30
    python benchmarks/bench_temporal.py --quick --out-dir /tmp/t --json /tmp/t/t.json

Results go to ``--out-dir`` (default docs/results): temporal_color.csv (one row per source,
rate, codec and quality), temporal_bd.csv, temporal_delay.csv, temporal_depth.csv,
temporal.json (everything) and temporal_rd.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgbd_codec_ros.codec import rvl, video  # noqa: E402
from rgbd_codec_ros.codec.classical import AVIF_SPEED, JPEGXL_EFFORT  # noqa: E402
from rgbd_codec_ros.codec.depth_quant import get_quantiser  # noqa: E402
from rgbd_codec_ros.synthetic import SyntheticSequence  # noqa: E402
from rgbd_codec_ros.training.evaluate import bd_rate  # noqa: E402

DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "rgbd"
DEFAULT_OUT = ROOT / "docs" / "results"

KEYFRAME_INTERVAL = 30
THREADS = 2
#: nominal rate of consecutive frames; the 5 Hz run takes every 2nd frame
RATES = ((10, 1), (5, 2))
#: avif420: AVIF at 4:2:0, the video codecs' chroma format (the classical backend's AVIF is 4:4:4)
INTRA_CODECS = ("jpeg", "avif", "jpegxl", "avif420")
VIDEO_CODECS = ("h264", "hevc", "av1")
#: an experiment, not offered by codec.video (which codes 4:2:0): libx264 with VideoEncoder's
#: own settings but 4:4:4 chroma
EXPERIMENT_CODECS = ("h264-444",)
TEMPORAL_CODECS = VIDEO_CODECS + EXPERIMENT_CODECS
QUALITIES = {
    "jpeg": (20, 35, 50, 65, 80, 90),
    "avif": (25, 40, 50, 60, 70, 80),
    "avif420": (25, 40, 50, 60, 70, 80),
    "jpegxl": (30, 45, 60, 70, 80, 90),
    "h264": (30, 40, 50, 60, 70, 80),
    "hevc": (30, 40, 50, 60, 70, 80),
    "av1": (30, 40, 50, 60, 70, 80),
    "h264-444": (30, 40, 50, 60, 70, 80),
}
QUICK_QUALITIES = {"jpeg": (40, 70, 90), "avif": (10, 25, 45), "avif420": (25, 45, 65), "jpegxl": (45, 70, 90),
                   "h264": (40, 60, 80), "hevc": (40, 60, 80), "av1": (40, 60, 80), "h264-444": (40, 60, 80)}
#: the quality at which keyframe / predicted sizes are quoted
REFERENCE_VIDEO_QUALITY = 50

SOURCES = ("7scenes_kinect1", "realsense_f200_apc", "realsense_d435_taeyoung",
           "realsense_d4xx_visp_rbt", "synthetic")
SHORT = {"7scenes_kinect1": "7-Scenes", "realsense_f200_apc": "F200 APC",
         "realsense_d435_taeyoung": "D435", "realsense_d4xx_visp_rbt": "D4xx ViSP",
         "synthetic": "synthetic"}
#: how far apart the stored consecutive frames are (MANIFEST.md and meta.json)
SPACING_NOTE = {
    "7scenes_kinect1": "frames 150-199 of a 30 Hz Kinect recording (33 ms apart)",
    "realsense_f200_apc": "two runs of 15 and 18 consecutive frames (capture rate not stated)",
    "realsense_d435_taeyoung": "every 3rd frame of a 30 Hz capture (100 ms apart)",
    "realsense_d4xx_visp_rbt": "99 consecutive frames of a hand-held video (rate not stated)",
    "synthetic": "rendered at 10 Hz (moving objects, static camera)",
}
SYNTHETIC_FRAMES = 60

#: depth error bounds of the study: (floor mm, relative)
DEPTH_BOUNDS = ((1.0, 0.002), (2.0, 0.005))
DEPTH_WIN = 0.20
ZSTD_LEVEL = 6
JXL_DEPTH_EFFORT = 2


# =============================================================================== data
@dataclass
class Clip:
    """Consecutive frames of one source (a source may have several clips)."""
    source: str
    name: str
    colors: List[np.ndarray]
    depths: List[np.ndarray]
    scale: float  # depth units per metre

    def __len__(self) -> int:
        return len(self.colors)


def _read_rows(folder: Path) -> List[Dict[str, str]]:
    with open(folder / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_clips(data: Path, sources: Sequence[str], max_frames: int, size: Optional[Tuple[int, int]] = None
               ) -> List[Clip]:
    """The consecutive runs of each source, at most ``max_frames`` per run (0: all).
    ``size`` (w, h) crops real frames from their centre and renders the synthetic ones so."""
    import imagecodecs

    clips = []
    for src in sources:
        if src == "synthetic":
            w, h = size or (640, 480)
            seq = SyntheticSequence(w, h, seed=0, fps=10.0)
            n = max_frames or SYNTHETIC_FRAMES
            pairs = [seq.frame(i) for i in range(n)]
            clips.append(Clip(src, src, [p[0] for p in pairs], [p[1] for p in pairs], seq.depth_scale_per_m))
            continue
        folder = data / src
        meta = json.loads((folder / "meta.json").read_text())
        rows = _read_rows(folder)
        runs: Dict[str, List[Dict[str, str]]] = {}
        for row in rows:
            if src == "7scenes_kinect1":  # the consecutive run 150-199 (lossless PNG colour)
                if not row["color"].endswith(".png"):
                    continue
                key = "150-199"
            elif src == "realsense_f200_apc":  # a shelf run and a tote run
                key = row["id"].split("-frame-")[0]
            else:
                key = "all"
            runs.setdefault(key, []).append(row)
        for key, run in runs.items():
            run = sorted(run, key=lambda r: r["id"])
            if max_frames:
                run = run[:max_frames]
            colors, depths = [], []
            for row in run:
                c = np.asarray(imagecodecs.imread(folder / row["color"]))[:, :, :3]
                d = np.asarray(imagecodecs.imread(folder / row["depth"]))
                if size:
                    c, d = _crop(c, size), _crop(d, size)
                colors.append(np.ascontiguousarray(c))
                depths.append(np.ascontiguousarray(d.astype(np.uint16)))
            clips.append(Clip(src, f"{src}/{key}", colors, depths, float(meta["depth_scale_per_m"])))
    return clips


def _crop(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    w, h = size
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[y0:y0 + h, x0:x0 + w]


# =============================================================================== metrics
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0 ** 2 / max(mse, 1e-10))


class MsSsim:
    """MS-SSIM of uint8 RGB images with pytorch_msssim (5 scales, data range 255)."""

    def __init__(self):
        import torch
        from pytorch_msssim import ms_ssim

        torch.set_num_threads(1)  # metrics are not timed; leave the cores to the coders
        self._torch, self._ms_ssim = torch, ms_ssim

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        t = self._torch
        x = t.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()
        y = t.from_numpy(np.ascontiguousarray(b)).permute(2, 0, 1)[None].float()
        with t.no_grad():
            return float(self._ms_ssim(x, y, data_range=255.0, size_average=True))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


# =============================================================================== colour
def intra_encode(img: np.ndarray, codec: str, quality: int) -> bytes:
    import imagecodecs as ic

    if codec == "jpeg":
        return bytes(ic.jpeg8_encode(img, level=quality, optimize=True))
    if codec == "avif":
        return bytes(ic.avif_encode(img, level=quality, speed=AVIF_SPEED, numthreads=THREADS))
    if codec == "avif420":
        return bytes(ic.avif_encode(img, level=quality, speed=AVIF_SPEED, pixelformat="420", numthreads=THREADS))
    if codec == "jpegxl":
        return bytes(ic.jpegxl_encode(img, level=quality, effort=JPEGXL_EFFORT, numthreads=THREADS))
    raise ValueError(codec)


def intra_decode(data: bytes, codec: str) -> np.ndarray:
    import imagecodecs as ic

    if codec == "jpeg":
        return ic.jpeg8_decode(data)
    if codec in ("avif", "avif420"):
        return ic.avif_decode(data, numthreads=THREADS)
    return ic.jpegxl_decode(data, numthreads=THREADS)


def run_intra(clip: Clip, codec: str, quality: int, msssim: MsSsim) -> List[Dict[str, Any]]:
    out = []
    for i, img in enumerate(clip.colors):
        t0 = time.perf_counter()
        data = intra_encode(img, codec, quality)
        te = _ms(t0)
        t0 = time.perf_counter()
        dec = np.asarray(intra_decode(data, codec))
        td = _ms(t0)
        out.append(dict(frame=i, bytes=len(data), keyframe=True, psnr=psnr(img, dec),
                        msssim=msssim(img, dec), enc_ms=te, dec_ms=td))
    return out


class X264Yuv444:
    """The ``h264-444`` experiment: libx264 with VideoEncoder's own options (preset, tune, CRF,
    GOP), but 4:4:4 chroma (High 4:4:4 Predictive); one frame in, one packet out as well."""

    def __init__(self, w: int, h: int, quality: int):
        import av

        ref = video.VideoEncoder("h264", w, h, quality=quality, keyframe_interval=KEYFRAME_INTERVAL,
                                 threads=THREADS, encoder="libx264")
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv444p"
        ctx.time_base, ctx.framerate = Fraction(1, 1000), Fraction(video.NOMINAL_FPS, 1)
        ctx.gop_size, ctx.max_b_frames, ctx.thread_count = KEYFRAME_INTERVAL, 0, THREADS
        ctx.options = ref._options("libx264")
        ctx.open()
        dec = av.CodecContext.create("h264", "r")
        dec.thread_type, dec.thread_count = "SLICE", THREADS
        self._av, self._enc, self._dec = av, ctx, dec

    def encode(self, img: np.ndarray, timestamp_s: float) -> Tuple[bytes, bool]:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(
            format="yuv444p")
        frame.pts = int(round(timestamp_s * 1000))
        packets = self._enc.encode(frame)
        if len(packets) != 1:
            raise RuntimeError(f"libx264 4:4:4 gave {len(packets)} packets for one frame")
        return bytes(packets[0]), bool(packets[0].is_keyframe)

    def decode(self, data: bytes) -> np.ndarray:
        (frame,) = self._dec.decode(self._av.Packet(data))
        return frame.to_ndarray(format="rgb24")


def run_video(clip: Clip, codec: str, quality: int, step: int, msssim: MsSsim) -> List[Dict[str, Any]]:
    h, w = clip.colors[0].shape[:2]
    if codec == "h264-444":
        enc = dec = X264Yuv444(w, h, quality)
    else:
        enc = video.VideoEncoder(codec, w, h, quality=quality, keyframe_interval=KEYFRAME_INTERVAL,
                                 threads=THREADS)
        dec = video.VideoDecoder(codec, w, h, threads=THREADS)
    out = []
    for k, i in enumerate(range(0, len(clip), step)):
        img = clip.colors[i]
        t0 = time.perf_counter()
        data, key = enc.encode(img, timestamp_s=i * 0.1)
        te = _ms(t0)
        t0 = time.perf_counter()
        rec = dec.decode(data)
        td = _ms(t0)
        out.append(dict(frame=i, bytes=len(data), keyframe=bool(key), psnr=psnr(img, rec),
                        msssim=msssim(img, rec), enc_ms=te, dec_ms=td))
    return out


def conversion_ceiling(clip: Clip) -> float:
    """Mean PSNR of the video path's colour conversion alone (RGB -> yuv420p -> RGB, swscale,
    as in codec.video): no video codec can come back closer to the input than this."""
    import av

    vals = []
    for img in clip.colors:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
        vals.append(psnr(img, frame.to_ndarray(format="rgb24")))
    return statistics.fmean(vals)


def summarise(source: str, rate: int, codec: str, quality: int, recs: List[Dict[str, Any]]
              ) -> Dict[str, Any]:
    keys = [r["bytes"] for r in recs if r["keyframe"]]
    preds = [r["bytes"] for r in recs if not r["keyframe"]]
    return dict(source=source, rate_hz=rate, codec=codec, quality=quality, frames=len(recs),
                keyframes=len(keys), kbit_per_frame=8e-3 * statistics.fmean(r["bytes"] for r in recs),
                psnr_db=statistics.fmean(r["psnr"] for r in recs),
                msssim=statistics.fmean(r["msssim"] for r in recs),
                enc_ms=statistics.median(r["enc_ms"] for r in recs),
                dec_ms=statistics.median(r["dec_ms"] for r in recs),
                key_kbit=8e-3 * statistics.fmean(keys) if keys else None,
                pred_kbit=8e-3 * statistics.fmean(preds) if preds else None)


class Cache:
    """Measurements already made, in a JSON file (``--cache FILE``), so that a run that was
    stopped resumes where it stopped. Keys name what was measured, on how many frames of
    which size; delete the file to measure again."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.data: Dict[str, Any] = json.loads(path.read_text()) if path and path.is_file() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        if self.path is None:
            return
        self.data[key] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


def _clips_key(cl: Sequence[Clip]) -> str:
    h, w = cl[0].colors[0].shape[:2]
    return f"{'+'.join(str(len(c)) for c in cl)}@{w}x{h}"


def colour_study(clips: Sequence[Clip], qualities: Dict[str, Sequence[int]], log: Callable[[str], None],
                 cache: Optional[Cache] = None) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(per-frame records, summaries per source / rate / codec / quality)."""
    cache = cache or Cache(None)
    msssim = MsSsim()
    records: List[Dict[str, Any]] = []
    by_source: Dict[str, List[Clip]] = {}
    for c in clips:
        by_source.setdefault(c.source, []).append(c)
    summaries = []
    for source, cl in by_source.items():
        for codec in INTRA_CODECS + TEMPORAL_CODECS:
            for q in qualities[codec]:
                t0 = time.time()
                key = f"color|{source}|{_clips_key(cl)}|{codec}|{q}"
                cached = cache.get(key)
                per_rate: Dict[int, List[Dict[str, Any]]] = (
                    {int(r): v for r, v in cached.items()} if cached else {})
                for clip in ([] if cached else cl):
                    if codec in INTRA_CODECS:
                        recs = run_intra(clip, codec, q, msssim)
                        for rate, step in RATES:  # the same frames' intra results
                            per_rate.setdefault(rate, []).extend(
                                dict(r, clip=clip.name, rate_hz=rate) for r in recs if r["frame"] % step == 0)
                    else:
                        for rate, step in RATES:
                            recs = run_video(clip, codec, q, step, msssim)
                            per_rate.setdefault(rate, []).extend(dict(r, clip=clip.name, rate_hz=rate) for r in recs)
                if not cached:
                    cache.put(key, per_rate)
                for rate, recs in per_rate.items():
                    for r in recs:
                        records.append(dict(source=source, codec=codec, quality=q, **r))
                    summaries.append(summarise(source, rate, codec, q, recs))
                s = [x for x in summaries if x["source"] == source and x["codec"] == codec
                     and x["quality"] == q and x["rate_hz"] == 10][0]
                log(f"  {SHORT[source]:>9} {codec:>6} q{q:<3} {s['kbit_per_frame']:8.1f} kbit/frame "
                    f"{s['psnr_db']:6.2f} dB {s['msssim']:.4f}  enc {s['enc_ms']:6.1f} dec {s['dec_ms']:5.1f} ms"
                    f"  ({time.time() - t0:.0f} s)")
    return records, summaries


def _rate_gain(a: Tuple[Sequence[float], Sequence[float]], b: Tuple[Sequence[float], Sequence[float]]
               ) -> Optional[float]:
    """BD-rate of curve a against curve b (rates, PSNRs); where their PSNR ranges do not overlap,
    the sign of the mean PSNR gap over their common log-rate range (-1: a is better)."""
    bd = bd_rate(*b, *a)
    if bd is not None:
        return bd
    (ra, qa), (rb, qb) = [(np.log(np.asarray(r)), np.asarray(q)) for r, q in (a, b)]
    lo, hi = max(ra.min(), rb.min()), min(ra.max(), rb.max())
    if hi <= lo:
        return None
    x = np.linspace(lo, hi, 32)
    ia, ib = np.argsort(ra), np.argsort(rb)
    gap = float(np.mean(np.interp(x, ra[ia], qa[ia]) - np.interp(x, rb[ib], qb[ib])))
    return -1.0 if gap > 0 else 1.0


def best_intra(curves: Dict[str, Tuple[Sequence[float], Sequence[float]]]) -> str:
    """The intra codec that beats most of the others (BD-rate < 0), ties to the lower mean."""
    def score(c):
        gains = [g for o in curves if o != c for g in [_rate_gain(curves[c], curves[o])] if g is not None]
        return (-sum(g < 0 for g in gains), statistics.fmean(gains) if gains else 0.0)
    return min(curves, key=score)


def bd_rows(summaries: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """BD-rate of each temporal codec against each intra codec, per source and rate, on PSNR and
    MS-SSIM; ``best_intra`` marks the intra codec with the lowest PSNR BD-rate against JPEG."""
    def curve(source, rate, codec, metric):
        pts = [s for s in summaries if (s["source"], s["rate_hz"], s["codec"]) == (source, rate, codec)]
        return [p["kbit_per_frame"] for p in pts], [p[metric] for p in pts]

    rows = []
    for source in dict.fromkeys(s["source"] for s in summaries):
        for rate, _ in RATES:
            if not any(s["source"] == source and s["rate_hz"] == rate for s in summaries):
                continue
            best = best_intra({c: curve(source, rate, c, "psnr_db") for c in INTRA_CODECS})
            for codec in TEMPORAL_CODECS + INTRA_CODECS:
                for ref in INTRA_CODECS:
                    if codec == ref:
                        continue
                    rows.append(dict(source=source, rate_hz=rate, codec=codec, reference=ref,
                                     best_intra=ref == best,
                                     bd_psnr_percent=bd_rate(*curve(source, rate, ref, "psnr_db"),
                                                             *curve(source, rate, codec, "psnr_db")),
                                     bd_msssim_percent=bd_rate(*curve(source, rate, ref, "msssim"),
                                                               *curve(source, rate, codec, "msssim"))))
    return rows


# =============================================================================== delay
def delay_study(frames: Sequence[np.ndarray]) -> List[Dict[str, Any]]:
    """Frames in against packets out, through each VideoEncoder's opened FFmpeg context, and
    packets in against frames out through each VideoDecoder's; then a flush of both, which
    returns whatever they still held."""
    import av

    rows = []
    h, w = frames[0].shape[:2]
    for codec in VIDEO_CODECS:
        enc = video.VideoEncoder(codec, w, h, quality=REFERENCE_VIDEO_QUALITY,
                                 keyframe_interval=KEYFRAME_INTERVAL, threads=THREADS)
        ctx = enc._ctx  # the benchmark counts packets: the public encode() joins them
        dec = video.VideoDecoder(codec, w, h, threads=THREADS)
        packets_out = frames_out = 0
        enc_lag = dec_lag = 0
        first_packet_after = None
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(
                format="yuv420p")
            frame.pts = i * 100
            packets = ctx.encode(frame)
            packets_out += len(packets)
            if packets and first_packet_after is None:
                first_packet_after = i + 1
            enc_lag = max(enc_lag, i + 1 - packets_out)
            for p in packets:
                frames_out += len(dec._ctx.decode(p))
            dec_lag = max(dec_lag, packets_out - frames_out)
        held_enc = len(ctx.encode(None))
        held_dec = len(dec._ctx.decode(None))
        rows.append(dict(codec=codec, encoder=enc.encoder_name, decoder=dec.decoder_name,
                         frames_in=len(frames), packets_out=packets_out, frames_decoded=frames_out,
                         first_packet_after_frames=first_packet_after, max_encoder_lag_frames=enc_lag,
                         encoder_flush_packets=held_enc, max_decoder_lag_frames=dec_lag,
                         decoder_flush_frames=held_dec))
    return rows


# =============================================================================== depth
def _zstd(b: bytes) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.zstd_encode(b, level=ZSTD_LEVEL))


def _unzstd(b: bytes) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.zstd_decode(b))


def _jxl_lossless(img: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(np.ascontiguousarray(img, dtype=np.uint16), lossless=True,
                                           effort=JXL_DEPTH_EFFORT, numthreads=THREADS))


def _unjxl(b: bytes) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpegxl_decode(b, numthreads=THREADS)).astype(np.int64)


def fill_rows(img: np.ndarray) -> np.ndarray:
    """Holes (0) filled with the nearest valid pixel to their left, else to their right, in
    their row (rows without a valid pixel stay 0): the temporal prediction at new pixels."""
    h, w = img.shape
    valid = img > 0
    cols = np.arange(w)
    left = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(valid, cols, w)[:, ::-1], axis=1)[:, ::-1]
    src = np.where(left >= 0, left, right)
    rows = np.arange(h)[:, None]
    return np.where(src < w, img[rows, np.clip(src, 0, w - 1)], 0)


def _zigzag16(s: np.ndarray) -> np.ndarray:
    s = ((s + 32768) & 0xFFFF) - 32768  # modulo 2^16, as signed
    return ((s << 1) ^ (s >> 63)) & 0xFFFF


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ -(z & 1)


def _planes(z: np.ndarray) -> bytes:
    return (z & 255).astype(np.uint8).tobytes() + (z >> 8).astype(np.uint8).tobytes()


def _unplanes(b: bytes, n: int) -> np.ndarray:
    p = np.frombuffer(b, np.uint8)
    if p.size != 2 * n:
        raise ValueError("depth residual planes have the wrong size")
    return p[:n].astype(np.int64) | (p[n:].astype(np.int64) << 8)


class IntraRvl:
    name = "RVL+zstd"

    def encode(self, img, prev):
        return rvl.encode_zstd(img.ravel(), 16, ZSTD_LEVEL)

    def decode(self, data, prev, shape):
        return rvl.decode_zstd(data, shape[0] * shape[1], 16).reshape(shape)


class IntraJxl:
    name = "JPEG XL lossless e2"

    def encode(self, img, prev):
        return _jxl_lossless(img)

    def decode(self, data, prev, shape):
        return _unjxl(data)


class TemporalA:
    """Candidate A: hole-mask change + residual against the previous decoded image."""

    def __init__(self, mode: str):
        self.mode = mode  # "zstd", "zstd-delta" or "jxl"
        self.name = f"A-{mode}"

    def encode(self, img, prev):
        valid, pvalid = img > 0, prev > 0
        mask = _zstd(np.packbits(valid ^ pvalid).tobytes())
        pred = fill_rows(prev)
        if self.mode == "jxl":
            biased = np.where(valid, (img - pred + 32768) & 0xFFFF, 32768)
            body = _jxl_lossless(biased)
        else:
            s = (img - pred)[valid]
            if self.mode == "zstd-delta":
                s = np.diff(s, prepend=0)
            body = _zstd(_planes(_zigzag16(s)))
        return len(mask).to_bytes(4, "little") + mask + body

    def decode(self, data, prev, shape):
        n = int.from_bytes(data[:4], "little")
        npix = shape[0] * shape[1]
        change = np.unpackbits(np.frombuffer(_unzstd(data[4:4 + n]), np.uint8))[:npix].reshape(shape)
        valid = (prev > 0) ^ change.astype(bool)
        pred = fill_rows(prev)
        out = np.zeros(shape, np.int64)
        if self.mode == "jxl":
            biased = _unjxl(data[4 + n:])
            out[valid] = (pred[valid] + biased[valid] - 32768) & 0xFFFF
        else:
            s = _unzigzag(_unplanes(_unzstd(data[4 + n:]), int(valid.sum())))
            if self.mode == "zstd-delta":
                s = np.cumsum(s)
            out[valid] = (pred[valid] + s) & 0xFFFF
        return out


class HevcLossless12:
    """Candidate B: libx265 lossless, 12-bit grey, low delay, keyframes as the others."""

    name = "B-hevc12-lossless"

    def __init__(self, shape):
        import av

        h, w = shape
        ctx = av.CodecContext.create("libx265", "w")
        ctx.width, ctx.height, ctx.pix_fmt = w, h, "gray12le"
        ctx.time_base, ctx.framerate = Fraction(1, 1000), Fraction(10, 1)
        ctx.thread_count = THREADS
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1",
                       "x265-params": "lossless=1:log-level=error:repeat-headers=1:bframes=0:rc-lookahead=0:"
                                      f"scenecut=0:keyint={KEYFRAME_INTERVAL}:min-keyint={KEYFRAME_INTERVAL}"}
        ctx.open()
        self._enc, self._dec = ctx, av.CodecContext.create("hevc", "r")
        self._av, self._pts = av, 0

    def code(self, img: np.ndarray) -> Tuple[bytes, np.ndarray, float, float]:
        av = self._av
        if int(img.max()) > 4095:
            raise ValueError("12-bit HEVC needs indices below 4096")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint16), format="gray12le")
        frame.pts, self._pts = self._pts, self._pts + 100
        t0 = time.perf_counter()
        data = b"".join(bytes(p) for p in self._enc.encode(frame))
        te = _ms(t0)
        t0 = time.perf_counter()
        (out,) = self._dec.decode(av.Packet(data))
        rec = out.to_ndarray().astype(np.int64)
        return data, rec, te, _ms(t0)


def _bound(units: np.ndarray, q_abs: float, rel: float) -> np.ndarray:
    """Per-pixel error bound of the classical quantiser (margin 0: integer depth)."""
    return np.maximum(0, np.floor(np.maximum(q_abs, rel * units) + 1e-9)).astype(np.int64)


class Quant:
    """The classical ``rvl_lossy`` quantiser on integer depth: index image 0 (hole), 1..levels."""

    def __init__(self, floor_mm: float, rel: float, scale: float):
        self.q_abs, self.rel = floor_mm * scale / 1000.0, rel
        self.q = get_quantiser(self.q_abs, rel, 0.0, 0xFFFF)

    def indices(self, depth: np.ndarray) -> np.ndarray:
        out = np.zeros(depth.shape, np.int64)
        v = depth > 0
        out[v] = self.q.quantise(depth[v]) + 1
        return out

    def recon(self, idx: np.ndarray) -> np.ndarray:
        out = np.zeros(idx.shape, np.int64)
        v = idx > 0
        out[v] = self.q.reconstruct(idx[v] - 1)
        return out

    def replenish(self, depth: np.ndarray, idx: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """``idx``, except where the previous index still reconstructs within the bound."""
        keep = (depth > 0) & (prev > 0)
        d = depth[keep]
        ok = np.abs(self.recon(prev[keep]) - d) <= _bound(d, self.q_abs, self.rel)
        keep[keep] = ok
        return np.where(keep, prev, idx)


class DepthStream:
    """One depth method: ``key_coders`` at keyframes (and where there is no reference), else
    ``inter_coders``; with several coders the smallest wins per frame and a mode byte is added.
    With a quantiser, predicted frames use conditional replenishment (``Quant.replenish``).
    Every frame is decoded and checked against what was meant to be coded."""

    def __init__(self, name, key_coders, inter_coders, quant: Optional[Quant]):
        self.name, self.key_coders, self.inter_coders, self.quant = name, key_coders, inter_coders, quant
        self.prev: Optional[np.ndarray] = None

    def code(self, depth: np.ndarray, plain: np.ndarray, key: bool) -> Tuple[int, np.ndarray, float, float]:
        predicted = not key and self.prev is not None and self.inter_coders
        coders = self.inter_coders if predicted else self.key_coders
        target = plain
        if predicted and self.quant is not None:
            target = self.quant.replenish(depth, plain, self.prev)
        best, te_total = None, 0.0
        for coder in coders:
            t0 = time.perf_counter()
            data = coder.encode(target, self.prev)
            te_total += _ms(t0)
            if best is None or len(data) < len(best[1]):
                best = (coder, data)
        coder, data = best
        t0 = time.perf_counter()
        dec = coder.decode(data, self.prev, depth.shape)
        td = _ms(t0)
        if not np.array_equal(dec, target):
            raise AssertionError(f"{self.name}: {coder.name} did not decode what it coded")
        self.prev = dec
        return len(data) + (1 if len(coders) > 1 else 0), dec, te_total, td


class HevcStream:
    """Candidate B: libx265 lossless, 12-bit grey, low delay, keyframes every KEYFRAME_INTERVAL,
    over the quantiser's index image (with conditional replenishment)."""

    name = "B-hevc12-lossless"

    def __init__(self, shape: Tuple[int, int], quant: Quant):
        import av

        h, w = shape
        ctx = av.CodecContext.create("libx265", "w")
        ctx.width, ctx.height, ctx.pix_fmt = w, h, "gray12le"
        ctx.time_base, ctx.framerate = Fraction(1, 1000), Fraction(10, 1)
        ctx.thread_count = THREADS
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency",
                       "x265-params": "lossless=1:log-level=error:repeat-headers=1:bframes=0:rc-lookahead=0:"
                                      f"scenecut=0:keyint={KEYFRAME_INTERVAL}:min-keyint={KEYFRAME_INTERVAL}"}
        ctx.open()
        self._enc, self._dec = ctx, av.CodecContext.create("hevc", "r")
        self._av, self._pts, self.quant = av, 0, quant
        self.prev: Optional[np.ndarray] = None

    def code(self, depth: np.ndarray, plain: np.ndarray, key: bool) -> Tuple[int, np.ndarray, float, float]:
        av = self._av
        target = plain if self.prev is None else self.quant.replenish(depth, plain, self.prev)
        if int(target.max()) > 4095:
            raise ValueError("12-bit HEVC needs indices below 4096")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(target, dtype=np.uint16), format="gray12le")
        frame.pts, self._pts = self._pts, self._pts + 100
        t0 = time.perf_counter()
        data = b"".join(bytes(p) for p in self._enc.encode(frame))
        te = _ms(t0)
        t0 = time.perf_counter()
        (out,) = self._dec.decode(av.Packet(data))
        dec = out.to_ndarray().astype(np.int64)
        td = _ms(t0)
        if not np.array_equal(dec, target):
            raise AssertionError("HEVC lossless did not decode what it coded")
        self.prev = dec
        return len(data), dec, te, td


def depth_methods(shape, quant: Optional[Quant], with_b: bool) -> List[Any]:
    rvl_, jxl = IntraRvl(), IntraJxl()
    a = {m: TemporalA(m) for m in ("zstd", "zstd-delta", "jxl")}
    methods = [DepthStream(rvl_.name, [rvl_], [], quant), DepthStream(jxl.name, [jxl], [], quant),
               DepthStream("A-zstd", [rvl_], [a["zstd"]], quant),
               DepthStream("A-zstd-delta", [rvl_], [a["zstd-delta"]], quant),
               DepthStream("A-jxl", [jxl], [a["jxl"]], quant),
               DepthStream("A-best", [rvl_, jxl], [rvl_, jxl, *a.values()], quant)]
    if with_b and quant is not None:
        methods.append(HevcStream(shape, quant))
    return methods


def depth_clip_study(clip: Clip, step: int, bound: Optional[Tuple[float, float]], with_b: bool
                     ) -> List[Dict[str, Any]]:
    """Every method on one clip at one frame step and one error bound (None: lossless)."""
    depths = [d.astype(np.int64) for d in clip.depths[::step]]
    shape = depths[0].shape
    quant = Quant(bound[0], bound[1], clip.scale) if bound else None
    methods = depth_methods(shape, quant, with_b)
    acc = {m.name: dict(bits=0, sq=0.0, nvalid=0, max_err_mm=0.0, bound_ok=True, holes_exact=True,
                        enc_ms=[], dec_ms=[]) for m in methods}
    static, prev_depth = [], None
    for k, depth in enumerate(depths):
        plain = depth if quant is None else quant.indices(depth)
        valid = depth > 0
        if prev_depth is not None:  # what a temporal coder could reuse: unchanged / still within bound
            both = valid & (prev_depth > 0)
            if quant is None:
                same = depth[both] == prev_depth[both]
            else:
                prev_rec = quant.recon(quant.indices(prev_depth))[both]
                same = np.abs(prev_rec - depth[both]) <= _bound(depth[both], quant.q_abs, quant.rel)
            static.append(float(same.sum()) / max(1, int(valid.sum())))
        prev_depth = depth
        limit = _bound(depth[valid], quant.q_abs, quant.rel) if quant else 0
        for m in methods:
            nbytes, dec, te, td = m.code(depth, plain, k % KEYFRAME_INTERVAL == 0)
            rec = dec if quant is None else quant.recon(dec)
            err = np.abs(rec - depth)[valid]
            a = acc[m.name]
            a["bits"] += 8 * nbytes
            a["sq"] += float(np.sum((err * (1000.0 / clip.scale)) ** 2))
            a["nvalid"] += int(valid.sum())
            if err.size:
                a["max_err_mm"] = max(a["max_err_mm"], float(err.max()) * 1000.0 / clip.scale)
                a["bound_ok"] &= bool(np.all(err <= limit))
            a["holes_exact"] &= bool(np.array_equal(rec > 0, valid))
            a["enc_ms"].append(te)
            a["dec_ms"].append(td)
    npix = len(depths) * shape[0] * shape[1]
    return [dict(method=name, bits=a["bits"], pixels=npix, frames=len(depths), sq_mm2=a["sq"],
                 nvalid=a["nvalid"], max_err_mm=a["max_err_mm"], bound_ok=a["bound_ok"],
                 holes_exact=a["holes_exact"], enc_ms=a["enc_ms"], dec_ms=a["dec_ms"], static=static)
            for name, a in acc.items()]


def bound_label(bound: Optional[Tuple[float, float]]) -> str:
    return "lossless" if bound is None else f"{bound[0]:g}mm+{100 * bound[1]:g}%"


def depth_study(clips: Sequence[Clip], with_b: bool, log: Callable[[str], None],
                cache: Optional[Cache] = None) -> List[Dict[str, Any]]:
    """Rows per source, rate, bound and method, pooled over the source's clips."""
    cache = cache or Cache(None)
    rows = []
    by_source: Dict[str, List[Clip]] = {}
    for c in clips:
        by_source.setdefault(c.source, []).append(c)
    for source, cl in by_source.items():
        for rate, step in RATES:
            for bound in (None, *DEPTH_BOUNDS):
                t0 = time.time()
                key = f"depth|{source}|{_clips_key(cl)}|{rate}|{bound_label(bound)}|{with_b}"
                if cache.get(key):
                    rows += cache.get(key)
                    continue
                pooled: Dict[str, Dict[str, Any]] = {}
                for clip in cl:
                    for r in depth_clip_study(clip, step, bound, with_b and step == 1):
                        p = pooled.setdefault(r["method"], dict(r, enc_ms=[], dec_ms=[], bits=0, pixels=0,
                                                                frames=0, sq_mm2=0.0, nvalid=0, static=[]))
                        p["static"] += r["static"]
                        for f in ("bits", "pixels", "frames", "sq_mm2", "nvalid"):
                            p[f] += r[f]
                        p["max_err_mm"] = max(p["max_err_mm"], r["max_err_mm"])
                        p["bound_ok"] &= r["bound_ok"]
                        p["holes_exact"] &= r["holes_exact"]
                        p["enc_ms"] += r["enc_ms"]
                        p["dec_ms"] += r["dec_ms"]
                intra_best = min(pooled[m]["bits"] for m in (IntraRvl.name, IntraJxl.name))
                for name, p in pooled.items():
                    rows.append(dict(source=source, rate_hz=rate, bound=bound_label(bound), method=name,
                                     frames=p["frames"], bpp=p["bits"] / p["pixels"],
                                     vs_best_intra_percent=100.0 * (p["bits"] / intra_best - 1.0),
                                     rmse_mm=math.sqrt(p["sq_mm2"] / p["nvalid"]) if p["nvalid"] else 0.0,
                                     max_err_mm=p["max_err_mm"], bound_ok=p["bound_ok"],
                                     holes_exact=p["holes_exact"],
                                     reusable_percent=100 * statistics.fmean(p["static"]) if p["static"] else None,
                                     enc_ms=statistics.median(p["enc_ms"]), dec_ms=statistics.median(p["dec_ms"])))
                got = {r["method"]: r for r in rows[-len(pooled):]}
                cache.put(key, rows[-len(pooled):])
                log(f"  {SHORT[source]:>9} {rate:>2} Hz {bound_label(bound):>12}: " + ", ".join(
                    f"{n} {got[n]['bpp']:.3f}" for n in got) + f" bpp ({time.time() - t0:.0f} s)")
    return rows


# =============================================================================== report
def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:+.1f} %"


def _mean(vals: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def bd_table(bd: Sequence[Dict[str, Any]], rate: int, metric: str, reference: Optional[str] = None
             ) -> Tuple[List[str], List[List[str]]]:
    """Rows: each temporal codec against ``reference`` (default: the best intra codec of each
    source), and the mean over sources; then the intra codecs against JPEG."""
    sources = list(dict.fromkeys(r["source"] for r in bd))
    best = {s: reference or next(r["reference"] for r in bd if r["source"] == s and r["rate_hz"] == rate
                                 and r["best_intra"]) for s in sources}
    header = ["codec"] + [f"{SHORT[s]} (vs {best[s]})" for s in sources] + ["mean"]
    rows = []
    for codec in TEMPORAL_CODECS:
        vals = [next((r[metric] for r in bd if (r["source"], r["rate_hz"], r["codec"], r["reference"])
                      == (s, rate, codec, best[s])), None) for s in sources]
        rows.append([codec] + [_pct(v) for v in vals] + [_pct(_mean(vals))])
    for codec in INTRA_CODECS[1:]:
        if reference:
            break
        vals = [next((r[metric] for r in bd if (r["source"], r["rate_hz"], r["codec"], r["reference"])
                      == (s, rate, codec, "jpeg")), None) for s in sources]
        rows.append([f"({codec} vs jpeg)"] + [_pct(v) for v in vals] + [_pct(_mean(vals))])
    return header, rows


def speed_table(records: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[List[str]], List[Dict[str, Any]]]:
    header = ["codec", "encode ms (median)", "encode ms p95", "keyframe / predicted encode ms",
              "decode ms (median)", "frames"]
    rows, data = [], []
    for codec in INTRA_CODECS + TEMPORAL_CODECS:
        rs = [r for r in records if r["codec"] == codec and r["rate_hz"] == 10]
        if not rs:
            continue
        enc = sorted(r["enc_ms"] for r in rs)
        dec = [r["dec_ms"] for r in rs]
        key = [r["enc_ms"] for r in rs if r["keyframe"]]
        pred = [r["enc_ms"] for r in rs if not r["keyframe"]]
        d = dict(codec=codec, enc_ms=statistics.median(enc), enc_p95_ms=enc[int(0.95 * (len(enc) - 1))],
                 key_enc_ms=statistics.median(key) if key else None,
                 pred_enc_ms=statistics.median(pred) if pred else None,
                 dec_ms=statistics.median(dec), frames=len(rs))
        data.append(d)
        kp = "-" if codec in INTRA_CODECS else f"{d['key_enc_ms']:.1f} / {d['pred_enc_ms']:.1f}"
        rows.append([codec, f"{d['enc_ms']:.1f}", f"{d['enc_p95_ms']:.1f}", kp, f"{d['dec_ms']:.1f}", str(len(rs))])
    return header, rows, data


def reference_quality(summaries: Sequence[Dict[str, Any]]) -> int:
    """The video quality closest to REFERENCE_VIDEO_QUALITY among those measured."""
    have = {s["quality"] for s in summaries if s["codec"] in VIDEO_CODECS}
    return min(have, key=lambda q: (abs(q - REFERENCE_VIDEO_QUALITY), q))


def keyframe_table(summaries: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    header = ["source", "rate"] + [f"{c} key / predicted kbit (ratio)" for c in VIDEO_CODECS]
    rows = []
    ref_q = reference_quality(summaries)
    for source in dict.fromkeys(s["source"] for s in summaries):
        for rate, _ in RATES:
            cells = []
            for codec in VIDEO_CODECS:
                s = next((x for x in summaries if (x["source"], x["rate_hz"], x["codec"], x["quality"])
                          == (source, rate, codec, ref_q)), None)
                if s is None or s["key_kbit"] is None or s["pred_kbit"] is None:
                    cells.append("-")
                    continue
                cells.append(f"{s['key_kbit']:.0f} / {s['pred_kbit']:.1f} ({s['key_kbit'] / s['pred_kbit']:.1f}x)")
            rows.append([SHORT[source], f"{rate} Hz"] + cells)
    return header, rows


def depth_tables(rows: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    header = ["source", "rate", "bound", "reusable px"] + methods
    out = []
    keys = list(dict.fromkeys((r["source"], r["rate_hz"], r["bound"]) for r in rows))
    for source, rate, bound in keys:
        reuse = next(x["reusable_percent"] for x in rows if (x["source"], x["rate_hz"], x["bound"])
                     == (source, rate, bound))
        cells = ["-" if reuse is None else f"{reuse:.0f} %"]
        for m in methods:
            r = next((x for x in rows if (x["source"], x["rate_hz"], x["bound"], x["method"])
                      == (source, rate, bound, m)), None)
            cells.append("-" if r is None else f"{r['bpp']:.3f} ({r['vs_best_intra_percent']:+.0f} %)")
        out.append([SHORT[source], f"{rate} Hz", bound] + cells)
    return header, out


def depth_verdict(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Per rate and bound: the best temporal method's saving against the best intra, pooled over
    sources (total bits), and per source; the mode qualifies with DEPTH_WIN saved everywhere."""
    out = {}
    temporal = [m for m in dict.fromkeys(r["method"] for r in rows) if m.startswith(("A-", "B-"))]
    intra = (IntraRvl.name, IntraJxl.name)
    for rate, _ in RATES:
        for bound in dict.fromkeys(r["bound"] for r in rows):
            sel = [r for r in rows if r["rate_hz"] == rate and r["bound"] == bound]
            if not sel:
                continue
            sources = list(dict.fromkeys(r["source"] for r in sel))

            def bits(source, method):
                r = next((x for x in sel if x["source"] == source and x["method"] == method), None)
                return None if r is None else r["bpp"] * r["frames"]

            per_source = {}
            for s in sources:
                best_intra = min(bits(s, m) for m in intra)
                best_t = min((bits(s, m), m) for m in temporal if bits(s, m) is not None)
                per_source[s] = dict(best_temporal=best_t[1], saving_percent=100 * (1 - best_t[0] / best_intra))
            ok = all(r["holes_exact"] and (r["bound_ok"] or bound == "lossless") for r in sel)
            savings = [v["saving_percent"] for v in per_source.values()]
            out[f"{rate}Hz {bound}"] = dict(rate_hz=rate, bound=bound, per_source=per_source,
                                            min_saving_percent=min(savings), mean_saving_percent=statistics.fmean(savings),
                                            holes_exact_and_bounds_hold=ok,
                                            qualifies=ok and min(savings) >= 100 * DEPTH_WIN)
    return out


def rd_plot(summaries: Sequence[Dict[str, Any]], bd: Sequence[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys(s["source"] for s in summaries))
    ncols = 3
    nrows = -(-(len(sources) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    colours = {"jpeg": "#888888", "avif": "#2ca02c", "avif420": "#98df8a", "jpegxl": "#9467bd",
               "h264": "#1f77b4", "hevc": "#d62728", "av1": "#ff7f0e", "h264-444": "#17becf"}
    for ax, source in zip(axes.flat, sources):
        for codec in INTRA_CODECS + TEMPORAL_CODECS:
            for rate, _ in RATES:
                if codec in INTRA_CODECS and rate != 10:
                    continue
                pts = sorted((s["kbit_per_frame"], s["psnr_db"]) for s in summaries
                             if (s["source"], s["codec"], s["rate_hz"]) == (source, codec, rate))
                if not pts:
                    continue
                label = codec if codec in INTRA_CODECS else f"{codec} {rate} Hz"
                ax.plot(*zip(*pts), marker="o" if rate == 10 else "x", ms=3.5, color=colours[codec],
                        ls="-" if rate == 10 else "--", lw=1.2, label=label)
        ax.set_xscale("log")
        ax.set_title(SHORT[source])
        ax.set_xlabel("kbit per frame (keyframes included)")
        ax.set_ylabel("RGB PSNR (dB)")
        ax.grid(True, which="both", alpha=0.3)
    ax = axes.flat[len(sources)]
    names = [f"{c} {r} Hz" for c in VIDEO_CODECS for r, _ in RATES]
    vals = []
    for c in VIDEO_CODECS:
        for r, _ in RATES:
            vals.append(_mean([x["bd_psnr_percent"] for x in bd if x["codec"] == c and x["rate_hz"] == r
                               and x["best_intra"]]) or 0.0)
    ax.barh(names, vals, color=[colours[n.split()[0]] for n in names])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("BD-rate vs best intra codec, mean over sources (%)")
    ax.set_title("temporal gain (negative = fewer bits)")
    ax.invert_yaxis()
    for extra in list(axes.flat)[len(sources) + 1:]:
        extra.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    if not rows:
        return
    keys = [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in keys})


def machine() -> str:
    import av
    import imagecodecs

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores; PyAV {av.__version__}, imagecodecs {imagecodecs.__version__}, "
            f"numpy {np.__version__}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared RGB-D data folder")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma list of {', '.join(SOURCES)}")
    p.add_argument("--frames", type=int, default=0, help="at most this many frames per clip (0: all)")
    p.add_argument("--quick", action="store_true",
                   help="small run: synthetic only, 8 frames of 256x192, 3 qualities per codec")
    p.add_argument("--depth", action="store_true", help="add the temporal depth study")
    p.add_argument("--no-color", action="store_true", help="skip the colour study")
    p.add_argument("--no-hevc-depth", action="store_true", help="skip depth candidate B (slow)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where the CSV / PNG / JSON go")
    p.add_argument("--json", type=Path, default=None, help="JSON output (default OUT_DIR/temporal.json)")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep measurements in this JSON file and reuse them (resumes a stopped run)")
    args = p.parse_args(argv)

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        p.error(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    size, qualities = None, QUALITIES
    if args.quick:
        sources = sources if args.sources != p.get_default("sources") else ["synthetic"]
        size, qualities = (256, 192), QUICK_QUALITIES
        args.frames = args.frames or 8
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.out_dir / "temporal.json"

    def log(msg: str) -> None:
        print(msg, flush=True)

    cache = Cache(args.cache)
    load0 = os.getloadavg()
    t_start = time.time()
    clips = load_clips(args.data, sources, args.frames, size)
    log(f"machine: {machine()}; load average {load0[0]:.1f}")
    for c in clips:
        log(f"clip {c.name}: {len(c)} frames {c.colors[0].shape[1]}x{c.colors[0].shape[0]}")
    result: Dict[str, Any] = dict(
        machine=machine(), load_average_start=load0[0], keyframe_interval=KEYFRAME_INTERVAL, threads=THREADS,
        rates=[dict(rate_hz=r, frame_step=s) for r, s in RATES], qualities=qualities,
        clips=[dict(source=c.source, name=c.name, frames=len(c), width=c.colors[0].shape[1],
                    height=c.colors[0].shape[0], spacing=SPACING_NOTE[c.source]) for c in clips],
        settings=dict(jpeg="imagecodecs jpeg8, optimize=True, 4:2:0, 1 thread",
                      avif=f"imagecodecs avif speed {AVIF_SPEED}, {THREADS} threads",
                      jpegxl=f"imagecodecs jpegxl effort {JPEGXL_EFFORT}, {THREADS} threads",
                      video=f"rgbd_codec_ros.codec.video, quality mode, keyframe every {KEYFRAME_INTERVAL}, "
                            f"{THREADS} threads"))

    if not args.no_color:
        log("colour:")
        records, summaries = colour_study(clips, qualities, log, cache)
        bd = bd_rows(summaries)
        delay = delay_study([c for c in clips if c.source == clips[0].source][0].colors[:40])
        sh, srows, sdata = speed_table(records)
        ceiling = {src: statistics.fmean(conversion_ceiling(c) for c in clips if c.source == src)
                   for src in dict.fromkeys(c.source for c in clips)}
        result.update(color=summaries, bd_rate=bd, delay=delay, speed=sdata, yuv420_ceiling_psnr_db=ceiling)
        write_csv(args.out_dir / "temporal_color.csv", summaries)
        write_csv(args.out_dir / "temporal_bd.csv", bd)
        write_csv(args.out_dir / "temporal_delay.csv", delay)
        rd_plot(summaries, bd, args.out_dir / "temporal_rd.png")
        for rate, _ in RATES:
            for metric, what in (("bd_psnr_percent", "PSNR"), ("bd_msssim_percent", "MS-SSIM")):
                log(f"\nBD-rate ({what}) of temporal colour against the best intra codec, {rate} Hz "
                    f"(negative: fewer bits):")
                log(markdown(*bd_table(bd, rate, metric)))
                log(f"\nBD-rate ({what}) against AVIF 4:2:0 (the video codecs' chroma format), {rate} Hz:")
                log(markdown(*bd_table(bd, rate, metric, "avif420")))
        log(f"\nSpeed, 640x480 unless --quick, {THREADS} threads (median over every frame and quality, 10 Hz):")
        log(markdown(sh, srows))
        log(f"\nKeyframe and predicted frame sizes at video quality {reference_quality(summaries)}:")
        log(markdown(*keyframe_table(summaries)))
        log("\nPSNR of the RGB -> yuv420p -> RGB conversion alone (the video codecs' ceiling): " + ", ".join(
            f"{SHORT[k]} {v:.1f} dB" for k, v in ceiling.items()))
        log("\nDelay in frames (frames in vs packets out; packets in vs frames out):")
        log(markdown(["codec", "encoder", "decoder", "frames in", "packets out", "first packet after",
                      "max encoder lag", "held at flush (enc)", "max decoder lag", "held at flush (dec)"],
                     [[d["codec"], d["encoder"], d["decoder"], d["frames_in"], d["packets_out"],
                       d["first_packet_after_frames"], d["max_encoder_lag_frames"], d["encoder_flush_packets"],
                       d["max_decoder_lag_frames"], d["decoder_flush_frames"]] for d in delay]))
    if args.depth:
        log("\ndepth:")
        drows = depth_study(clips, not args.no_hevc_depth, log, cache)
        verdict = depth_verdict(drows)
        result.update(depth=drows, depth_verdict=verdict, depth_win_needed_percent=100 * DEPTH_WIN)
        write_csv(args.out_dir / "temporal_depth.csv", drows)
        log("\nDepth bits per pixel (in brackets: against the best intra coder at the same bound):")
        log(markdown(*depth_tables(drows)))
        for k, v in verdict.items():
            log(f"  {k}: best temporal saves {v['min_saving_percent']:.1f} % (worst source) .. "
                f"mean {v['mean_saving_percent']:.1f} %; holes exact and bounds hold: "
                f"{v['holes_exact_and_bounds_hold']}; qualifies (>= {100 * DEPTH_WIN:.0f} % everywhere): "
                f"{v['qualifies']}")
    load1 = os.getloadavg()
    result.update(load_average_end=load1[0], wall_s=time.time() - t_start)
    json_path.write_text(json.dumps(result, indent=1, default=float))
    log(f"\nwrote {json_path} (load average {load0[0]:.1f} -> {load1[0]:.1f}, {time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
