#!/usr/bin/env python3
"""Lossy depth for a thin link: bits per pixel against maximum error and RMSE, on real depth.

Every method keeps holes exactly (0 stays 0, a valid pixel never becomes 0; checked on every
frame). Methods and their settings:

- ``bounded + RVL``: the classical ``rvl_lossy`` quantiser (error bound ``max(abs, rel * z)``,
  guaranteed per pixel), its integers through RVL planes + zstd (``depth_entropy=zstd``);
- ``bounded + JPEG XL``: the same quantiser, its integers through JPEG XL lossless
  (``depth_entropy=jpegxl``, what ``auto`` picks for ``rvl_lossy``; sparse frames go to
  RVL+zstd, so the two rows agree there);
  both bounded methods run as two families: ``abs`` (rel = 0: a fixed bound) and ``abs+rel``
  (the bound grows with distance);
- ``JPEG XL lossy eN``: 16-bit JPEG XL (VarDCT) at a Butteraugli distance, effort N, holes
  filled smoothly and restored from a losslessly coded mask whose bytes count (the
  ``jpegxl16-lossy`` anchor of training/anchors.py);
- ``LERC`` and ``LERC + zstd``: imagecodecs' LERC 2 with ``maxZErr`` and the valid mask.

Lossless references: JPEG XL lossless (the classical default) and RVL+zstd.

Printed: one row per method and setting (pooled over all frames: mean bits per pixel, the
largest error of any valid pixel, RMSE over valid pixels, median encode / decode ms), then
bits per pixel at equal maximum error and at equal RMSE, interpolated log-log along each
method's Pareto front (a dash where a method's points do not reach the target), pooled and per
source. The bounded and lossless methods run through the classical backend with a flat grey
colour image; its JPEG time, measured alone, is subtracted.

Usage::

    python benchmarks/bench_lossy_depth.py                      # 3 frames of every source
    python benchmarks/bench_lossy_depth.py --per-source 5 --repeat 2
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_backends import DEFAULT_DATA, load_frames, machine, markdown, timed  # noqa: E402

from rgbd_codec_ros.codec import RGBDFrame  # noqa: E402
from rgbd_codec_ros.codec.classical import ClassicalBackend  # noqa: E402
from rgbd_codec_ros.training.anchors import jxl16_lossy_decode, jxl16_lossy_encode  # noqa: E402

#: (floor mm, relative error) of the bounded quantiser: a fixed bound, then one growing with z
BOUNDED_ABS = ((1.0, 0.0), (2.0, 0.0), (5.0, 0.0), (10.0, 0.0), (20.0, 0.0), (50.0, 0.0))
BOUNDED_REL = ((1.0, 0.002), (2.0, 0.005), (5.0, 0.01), (10.0, 0.02), (20.0, 0.04), (50.0, 0.1))
JXL_DISTANCES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
LERC_MAX_ERROR_MM = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
MAX_ERROR_TARGETS_MM = (2.0, 5.0, 10.0, 20.0, 50.0)
RMSE_TARGETS_MM = (0.5, 1.0, 2.0, 5.0, 10.0)

#: a method at one setting: frame -> (depth bytes, decoded uint16 depth, encode ms, decode ms)
Run = Callable[[RGBDFrame], Tuple[int, np.ndarray, float, float]]


@dataclass
class Point:
    """One method at one setting, pooled over frames."""
    method: str
    setting: str
    bits: float = 0.0
    pixels: int = 0
    sq_err: float = 0.0
    valid: int = 0
    max_err: float = 0.0
    enc_ms: List[float] = field(default_factory=list)
    dec_ms: List[float] = field(default_factory=list)

    @property
    def bpp(self) -> float:
        return self.bits / self.pixels

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sq_err / self.valid) if self.valid else 0.0


# ----------------------------------------------------------------------- the methods
def _grey(frame: RGBDFrame) -> RGBDFrame:
    return RGBDFrame(np.full(frame.depth.shape, 128, np.uint8), frame.depth, frame.depth_scale_per_m)


def classical_method(repeat: int, **options) -> Run:
    """The classical backend's depth (bytes_depth), times less its flat grey colour image's JPEG."""
    import imagecodecs

    backend = ClassicalBackend(color_codec="jpeg", **options)

    def run(frame: RGBDFrame):
        grey = _grey(frame)
        enc, t_enc = timed(backend.encode, grey, repeat=repeat)
        out, t_dec = timed(backend.decode, enc.payload, repeat=repeat)
        jpeg, t_cenc = timed(imagecodecs.jpeg8_encode, grey.color, level=backend.options["color_quality"],
                             optimize=True, repeat=repeat)
        _, t_cdec = timed(imagecodecs.jpeg8_decode, jpeg, repeat=repeat)
        return enc.bytes_depth, out.depth, t_enc - t_cenc, t_dec - t_cdec
    return run


def jxl_lossy_method(repeat: int, distance: float, effort: int) -> Run:
    def run(frame: RGBDFrame):
        data, t_enc = timed(jxl16_lossy_encode, frame.depth, distance, effort, repeat=repeat)
        out, t_dec = timed(jxl16_lossy_decode, data, repeat=repeat)
        return len(data), out, t_enc, t_dec
    return run


def lerc_method(repeat: int, max_error_mm: float, compression=None) -> Run:
    import imagecodecs

    def run(frame: RGBDFrame):
        valid = frame.depth > 0
        max_z_err = max_error_mm * frame.depth_scale_per_m / 1000.0
        data, t_enc = timed(imagecodecs.lerc_encode, frame.depth, level=max_z_err, masks=valid,
                            compression=compression, repeat=repeat)
        (depth, mask), t_dec = timed(imagecodecs.lerc_decode, data, masks=True, repeat=repeat)
        if mask is None:  # LERC stores no mask when every pixel is valid
            mask = np.ones(depth.shape, bool)
        # holes from the mask; LERC may round a valid pixel to 0, which must stay valid
        out = np.where(mask, np.maximum(depth, 1), 0).astype(np.uint16)
        return len(data), out, t_enc, t_dec
    return run


def methods(repeat: int) -> List[Tuple[str, str, Run]]:
    out = [("lossless JPEG XL (default)", "e2", classical_method(repeat)),
           ("lossless RVL+zstd", "", classical_method(repeat, depth_codec="rvl"))]
    for family, grid in (("abs", BOUNDED_ABS), ("abs+rel", BOUNDED_REL)):
        for entropy, label in (("zstd", "RVL"), ("jpegxl", "JPEG XL")):
            for err, rel in grid:
                out.append((f"bounded {family} + {label}", f"{err:g}mm+{100 * rel:g}%",
                            classical_method(repeat, depth_codec="rvl_lossy", depth_entropy=entropy,
                                             depth_max_error_mm=err, depth_rel_error=rel)))
    for effort in (3, 7):
        for d in JXL_DISTANCES:
            out.append((f"JPEG XL lossy e{effort}", f"d{d:g}", jxl_lossy_method(repeat, d, effort)))
    for compression, label in ((None, "LERC"), ("zstd", "LERC + zstd")):
        for err in LERC_MAX_ERROR_MM:
            out.append((label, f"{err:g}mm", lerc_method(repeat, err, compression)))
    return out


# ----------------------------------------------------------------------- measuring
def measure(frames, repeat: int) -> Tuple[List[Point], Dict[str, List[Point]]]:
    """Points pooled over all frames, and per source."""
    pooled: Dict[Tuple[str, str], Point] = {}
    by_source: Dict[str, Dict[Tuple[str, str], Point]] = {}
    for method, setting, run in methods(repeat):
        run(frames[0][1])  # warm-up: codebooks, libraries
        for src, frame in frames:
            nbytes, out, t_enc, t_dec = run(frame)
            d = frame.depth
            valid = d > 0
            if not np.array_equal(out > 0, valid):
                raise AssertionError(f"{method} {setting} moved holes on a {src} frame")
            err_mm = np.abs(out[valid].astype(np.float64) - d[valid]) * (1000.0 / frame.depth_scale_per_m)
            for table in (pooled, by_source.setdefault(src, {})):
                p = table.setdefault((method, setting), Point(method, setting))
                p.bits += 8 * nbytes
                p.pixels += d.size
                p.sq_err += float(np.sum(err_mm ** 2))
                p.valid += int(valid.sum())
                p.max_err = max(p.max_err, float(err_mm.max()) if err_mm.size else 0.0)
                p.enc_ms.append(t_enc)
                p.dec_ms.append(t_dec)
    return list(pooled.values()), {s: list(t.values()) for s, t in by_source.items()}


def bpp_at(points: Sequence[Point], metric: str, target: float) -> float:
    """Bits per pixel at ``target`` error, log-log along the method's Pareto front (nan outside)."""
    curve = sorted((getattr(p, metric), p.bpp) for p in points if getattr(p, metric) > 0)
    front: List[Tuple[float, float]] = []
    for err, bpp in curve:                      # keep the points no smaller-error point beats
        if not front or bpp < front[-1][1]:
            front.append((err, bpp))
    if not front or not front[0][0] <= target <= front[-1][0]:
        return float("nan")
    xs = [math.log(e) for e, _ in front]
    ys = [math.log(b) for _, b in front]
    return math.exp(float(np.interp(math.log(target), xs, ys)))


def lossy_methods(points: Sequence[Point]) -> Dict[str, List[Point]]:
    out: Dict[str, List[Point]] = {}
    for p in points:
        if not p.method.startswith("lossless"):
            out.setdefault(p.method, []).append(p)
    return out


def fmt(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared RGB-D data folder")
    p.add_argument("--per-source", type=int, default=3, help="frames per source folder")
    p.add_argument("--repeat", type=int, default=1, help="time each call N times, keep the best")
    p.add_argument("--source-max-error", type=float, default=10.0,
                   help="maximum error (mm) of the per-source table")
    p.add_argument("--source-rmse", type=float, default=2.0, help="RMSE (mm) of the per-source table")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found", file=sys.stderr)
        return 2
    frames = load_frames(args.data, args.per_source)
    sizes = sorted({f"{f.depth.shape[1]}x{f.depth.shape[0]}" for _, f in frames})
    print(f"# Lossy depth: {len(frames)} frames, {args.per_source} from each of "
          f"{len({s for s, _ in frames})} sources ({', '.join(sizes)})\n")
    print(f"Machine: {machine()}\n")
    pooled, by_source = measure(frames, args.repeat)

    print(markdown(["method", "setting", "bits/pixel", "max error mm", "RMSE mm", "enc ms", "dec ms"],
                   [[q.method, q.setting, f"{q.bpp:.3f}", f"{q.max_err:.1f}", f"{q.rmse:.2f}",
                     f"{statistics.median(q.enc_ms):.1f}", f"{statistics.median(q.dec_ms):.1f}"]
                    for q in pooled]))
    curves = lossy_methods(pooled)
    for metric, targets, title in (("max_err", MAX_ERROR_TARGETS_MM, "equal maximum error"),
                                   ("rmse", RMSE_TARGETS_MM, "equal RMSE")):
        print(f"\n## Bits per pixel at {title} (all frames pooled)\n")
        print(markdown(["method"] + [f"{t:g} mm" for t in targets],
                       [[m] + [fmt(bpp_at(pts, metric, t)) for t in targets] for m, pts in curves.items()]))
    for metric, target, title in (("max_err", args.source_max_error, "maximum error"),
                                  ("rmse", args.source_rmse, "RMSE")):
        print(f"\n## Bits per pixel per source at {title} {target:g} mm\n")
        rows = []
        for src, pts in sorted(by_source.items()):
            per = lossy_methods(pts)
            lossless = {q.method: q.bpp for q in pts if q.method.startswith("lossless")}
            rows.append([src] + [f"{v:.3f}" for v in lossless.values()]
                        + [fmt(bpp_at(per[m], metric, target)) for m in curves])
        print(markdown(["source"] + [q.method for q in pooled if q.method.startswith("lossless")]
                       + list(curves), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
