#!/usr/bin/env python3
"""Benchmark RGB-D codec backends against ROS image_transport's own compression.

For a sample of pairs from each source of the shared data set, prints
one row per setting: encode / decode milliseconds per frame (median), bytes
per frame (colour, depth, total; mean), colour PSNR (dB, mean over frames) and
depth RMSE (mm over the input's valid pixels), plus whether every hole came
back exactly. The ROS baselines are computed in the same run:

- ``compressed``: JPEG (libjpeg-turbo via imagecodecs, 4:2:0, no Huffman
  optimisation, as OpenCV's defaults) at quality 95 (the ROS default) and 80;
- ``compressedDepth``: 16-bit PNG with zlib level 3 and level 9 (ROS 2's
  ``png_level`` default), plus the 12-byte header the plug-in adds.

A second table compares lossless depth coders per source.

Usage::

    python benchmarks/bench_backends.py                       # classical + baselines
    python benchmarks/bench_backends.py --backends classical,learned --per-source 6
    python benchmarks/bench_backends.py --extra 'learned:{"quality": 4}'

A backend that cannot be created (not installed, no weights) is skipped with
a note. Nothing here asserts: it prints figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgbd_codec_ros.codec import CodecError, RGBDFrame, create_backend  # noqa: E402

DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "rgbd"

# (label, backend, options)
CLASSICAL_SETTINGS = [
    ("jpeg q90 + jpegxl depth, the default", "classical", dict(color_codec="jpeg", color_quality=90)),
    ("jpeg q90 + rvl (zstd)", "classical", dict(color_codec="jpeg", color_quality=90, depth_codec="rvl")),
    ("jpeg q80 + jpegxl depth", "classical", dict(color_codec="jpeg", color_quality=80)),
    ("jpeg q80 + rvl (zstd)", "classical", dict(color_codec="jpeg", color_quality=80, depth_codec="rvl")),
    ("jpeg q80 + rvl (plain)", "classical",
     dict(color_codec="jpeg", color_quality=80, depth_codec="rvl", depth_entropy="none")),
    ("jpeg q80 + png L3", "classical",
     dict(color_codec="jpeg", color_quality=80, depth_codec="png", png_level=3)),
    ("jpeg q80 + rvl_lossy 1mm+0.2% (jpegxl)", "classical",
     dict(color_codec="jpeg", color_quality=80, depth_codec="rvl_lossy",
          depth_max_error_mm=1.0, depth_rel_error=0.002)),
    ("jpeg q80 + rvl_lossy 1mm+0.2% (zstd)", "classical",
     dict(color_codec="jpeg", color_quality=80, depth_codec="rvl_lossy", depth_entropy="zstd",
          depth_max_error_mm=1.0, depth_rel_error=0.002)),
    ("jpeg q80 + rvl_lossy 2mm+0.5% (jpegxl)", "classical",
     dict(color_codec="jpeg", color_quality=80, depth_codec="rvl_lossy",
          depth_max_error_mm=2.0, depth_rel_error=0.005)),
    ("webp q80 + jpegxl depth", "classical", dict(color_codec="webp", color_quality=80)),
    ("avif q60 + jpegxl depth", "classical", dict(color_codec="avif", color_quality=60)),
    ("jpegxl q80 + jpegxl depth", "classical", dict(color_codec="jpegxl", color_quality=80)),
]
DEFAULT_SETTINGS = {"classical": CLASSICAL_SETTINGS, "learned": [("learned (defaults)", "learned", {})]}


def load_frames(data: Path, per_source: int, sources=None):
    """``per_source`` evenly spaced pairs of each source folder (or of the named ``sources``)."""
    import imagecodecs

    frames = []
    found = sorted(p for p in os.listdir(data) if (data / p / "index.csv").is_file())
    for src in sources or found:
        meta = json.load(open(data / src / "meta.json"))
        rows = list(csv.DictReader(open(data / src / "index.csv")))
        step = max(1, len(rows) // per_source)
        for row in rows[::step][:per_source]:
            color = np.ascontiguousarray(imagecodecs.imread(data / src / row["color"])[:, :, :3])
            depth = imagecodecs.imread(data / src / row["depth"])
            frames.append((src, RGBDFrame(color, depth, float(meta["depth_scale_per_m"]))))
    return frames


def psnr(a, b) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def depth_errors(ref: RGBDFrame, out: RGBDFrame):
    """(squared errors in mm^2 over valid input pixels, holes identical)."""
    valid = ~ref.hole_mask()
    holes_same = np.array_equal(~valid, out.hole_mask()) if out.depth.shape == ref.depth.shape else False
    a = ref.depth.astype(np.float64) / ref.depth_scale_per_m
    b = out.depth.astype(np.float64) / out.depth_scale_per_m
    diff = np.where(valid, np.nan_to_num(b) - a, 0.0) * 1000.0
    return float(np.sum(diff ** 2)), int(valid.sum()), holes_same


class Result:
    def __init__(self, label):
        self.label = label
        self.enc, self.dec, self.rgb, self.dep, self.tot, self.psnr = [], [], [], [], [], []
        self.se, self.n, self.holes = 0.0, 0, True

    def row(self):
        rmse = (self.se / self.n) ** 0.5 if self.n else float("nan")
        mean_psnr = statistics.fmean(self.psnr)
        return [self.label, f"{statistics.median(self.enc):.1f}", f"{statistics.median(self.dec):.1f}",
                f"{statistics.fmean(self.rgb) / 1000:.1f}", f"{statistics.fmean(self.dep) / 1000:.1f}",
                f"{statistics.fmean(self.tot) / 1000:.1f}",
                "inf" if mean_psnr == float("inf") else f"{mean_psnr:.2f}",
                f"{rmse:.2f}", "yes" if self.holes else "NO"]


def timed(fn, *args, repeat=1, **kw):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t)
    return out, best * 1000.0


def bench_backend(label, backend, frames, repeat):
    res = Result(label)
    backend.decode(backend.encode(frames[0][1]).payload)  # warm-up (tables, libraries)
    for _, f in frames:
        enc, t_enc = timed(backend.encode, f, repeat=repeat)
        out, t_dec = timed(backend.decode, enc.payload, repeat=repeat)
        res.enc.append(t_enc)
        res.dec.append(t_dec)
        res.tot.append(len(enc.payload))
        res.rgb.append(enc.bytes_rgb if enc.bytes_rgb is not None else float("nan"))
        res.dep.append(enc.bytes_depth if enc.bytes_depth is not None else float("nan"))
        res.psnr.append(psnr(f.color, out.color))
        se, n, holes = depth_errors(f, out)
        res.se, res.n, res.holes = res.se + se, res.n + n, res.holes and holes
    return res


def bench_ros(frames, jpeg_q, png_level, repeat):
    """ROS compressed (JPEG) + compressedDepth (16-bit PNG) as the plug-ins do it."""
    import imagecodecs

    res = Result(f"ROS compressed q{jpeg_q} + compressedDepth png L{png_level}")
    header = 12  # compressedDepth's ConfigHeader (format + 2 floats)
    for _, f in frames:
        cj, t_cj = timed(imagecodecs.jpeg8_encode, f.color, level=jpeg_q, subsampling="420",
                         optimize=False, repeat=repeat)
        cd, t_cd = timed(imagecodecs.png_encode, f.depth, level=png_level, repeat=repeat)
        color, t_dj = timed(imagecodecs.jpeg8_decode, cj, repeat=repeat)
        depth, t_dd = timed(imagecodecs.png_decode, cd, repeat=repeat)
        res.enc.append(t_cj + t_cd)
        res.dec.append(t_dj + t_dd)
        res.rgb.append(len(cj))
        res.dep.append(len(cd) + header)
        res.tot.append(len(cj) + len(cd) + header)
        res.psnr.append(psnr(f.color, color))
        se, n, holes = depth_errors(f, RGBDFrame(color, depth, f.depth_scale_per_m))
        res.se, res.n, res.holes = res.se + se, res.n + n, res.holes and holes
    return res


def depth_table(frames, repeat):
    """Lossless depth only, per source: mean bytes and encode / decode ms."""
    import imagecodecs

    from rgbd_codec_ros.codec import rvl

    def jxl(effort):
        return (f"JPEG XL lossless e{effort}" + (" (classical default)" if effort == 2 else ""),
                lambda d: imagecodecs.jpegxl_encode(d, lossless=True, effort=effort),
                lambda b, shape: imagecodecs.jpegxl_decode(b))

    # (name, encode(depth), decode(bytes, shape))
    coders = [
        ("PNG L3 (compressedDepth, as briefed)", lambda d: imagecodecs.png_encode(d, level=3),
         lambda b, shape: imagecodecs.png_decode(b)),
        ("PNG L9 (compressedDepth default)", lambda d: imagecodecs.png_encode(d, level=9),
         lambda b, shape: imagecodecs.png_decode(b)),
        ("RVL plain", rvl.encode, lambda b, shape: rvl.decode(b)),
        ("RVL + zstd 6", lambda d: rvl.encode_zstd(d, 16, 6),
         lambda b, shape: rvl.decode_zstd(b, shape[0] * shape[1], 16).reshape(shape)),
        jxl(1), jxl(2), jxl(4),
    ]
    rows = []
    by_src = {}
    for src, f in frames:
        by_src.setdefault(src, []).append(f.depth)
    for src, depths in by_src.items():
        cells = [src]
        for name, enc, dec in coders:
            sizes, te, td = [], [], []
            for d in depths:
                b, t1 = timed(enc, d, repeat=repeat)
                out, t2 = timed(dec, b, d.shape, repeat=repeat)
                assert np.array_equal(out, d), (src, name)  # lossless, checked
                sizes.append(len(b))
                te.append(t1)
                td.append(t2)
            cells.append(f"{statistics.fmean(sizes) / 1000:.1f} kB ({statistics.median(te):.0f}/"
                         f"{statistics.median(td):.0f} ms)")
        rows.append(cells)
    return ["source"] + [c[0] for c in coders], rows


def markdown(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def machine():
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import imagecodecs

    return (f"{cpu}, {os.cpu_count()} CPU cores visible; Python {platform.python_version()}, "
            f"numpy {np.__version__}, imagecodecs {imagecodecs.__version__}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared RGB-D data folder")
    p.add_argument("--per-source", type=int, default=4, help="frames per source folder")
    p.add_argument("--sources", help="comma-separated source folders (default: all)")
    p.add_argument("--backends", default="classical",
                   help="comma-separated backends to run with their default settings list")
    p.add_argument("--extra", action="append", default=[],
                   help="an extra setting 'backend:{json options}' (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="time each call N times, keep the best")
    p.add_argument("--no-depth-table", action="store_true")
    args = p.parse_args(argv)

    if not args.data.is_dir():
        print(f"data folder {args.data} not found", file=sys.stderr)
        return 2
    frames = load_frames(args.data, args.per_source, args.sources and args.sources.split(","))
    sources = sorted({s for s, _ in frames})
    sizes = sorted({f"{f.depth.shape[1]}x{f.depth.shape[0]}" for _, f in frames})
    print(f"# Backend benchmark: {len(frames)} pairs ({', '.join(sizes)}), {args.per_source} from "
          f"each of {len(sources)} sources\n")
    print(f"Machine: {machine()}\n")

    settings = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        settings += DEFAULT_SETTINGS.get(name, [(f"{name} (defaults)", name, {})])
    for spec in args.extra:
        name, _, opts = spec.partition(":")
        settings.append((f"{name} {opts}", name, json.loads(opts or "{}")))

    results = [bench_ros(frames, 95, 3, args.repeat), bench_ros(frames, 80, 3, args.repeat),
               bench_ros(frames, 95, 9, args.repeat)]
    for label, name, opts in settings:
        try:
            backend = create_backend(name, **opts)
        except Exception as exc:  # not installed, no weights, bad option: skip, say why
            print(f"skipped {label}: {type(exc).__name__}: {exc}")
            continue
        try:
            results.append(bench_backend(label, backend, frames, args.repeat))
        except CodecError as exc:
            print(f"skipped {label}: {exc}")
    print()
    print(markdown(["setting", "enc ms", "dec ms", "colour kB", "depth kB", "total kB",
                    "RGB PSNR dB", "depth RMSE mm", "holes exact"], [r.row() for r in results]))
    if not args.no_depth_table:
        print("\n## Lossless depth per source: mean size (median encode/decode ms)\n")
        header, rows = depth_table(frames, args.repeat)
        print(markdown(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
