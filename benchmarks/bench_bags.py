#!/usr/bin/env python3
"""Bag sizes: raw colour + depth bags vs the same recordings compressed with `rgbd-codec bag compress`.

For every source folder of the shared data, a raw bag is made the way a camera
driver would record it (sensor_msgs/Image rgb8 + 16UC1 at 640x480, CameraInfo
where the source has intrinsics, 30 Hz stamps) and then compressed with each
setting (``--drop-raw``: the output holds only the CompressedRGBD topic). Bag
sizes are what is on disk: the whole bag (metadata and indexes included).

Baseline row: the raw bag with the storage's own zstd compression (what
``ros2 bag record --compression-format zstd`` / an MCAP zstd profile gives), a
lossless reference.

Usage::

    python benchmarks/bench_bags.py                         # classical settings, every pair
    python benchmarks/bench_bags.py --codec learned         # learned qualities (needs weights)
    python benchmarks/bench_bags.py --codec classical,learned --limit 20 --json out.json

Prints a markdown table (the one in docs/bags.md); --json also writes the
per-source figures. Nothing here asserts: it prints figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgbd_codec_ros.bag.compress import CompressOptions, compress_bag  # noqa: E402
from rgbd_codec_ros.bag.dataset import DEFAULT_TOPICS, folder_to_bag, list_pairs  # noqa: E402
from rgbd_codec_ros.bag.storage import bag_bytes  # noqa: E402
from rgbd_codec_ros.codec.base import CodecError, create_backend  # noqa: E402

DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "rgbd"
FPS = 30.0

CLASSICAL = [
    ("jpeg q95 + jpegxl depth", dict(color_codec="jpeg", color_quality=95)),
    ("jpeg q90 + jpegxl depth (default)", dict(color_codec="jpeg", color_quality=90)),
    ("jpeg q90 + rvl", dict(color_codec="jpeg", color_quality=90, depth_codec="rvl")),
    ("jpeg q75 + jpegxl depth", dict(color_codec="jpeg", color_quality=75)),
    ("jpeg q50 + jpegxl depth", dict(color_codec="jpeg", color_quality=50)),
    ("jpeg q75 + rvl_lossy 1mm+0.2%", dict(color_codec="jpeg", color_quality=75,
                                           depth_codec="rvl_lossy", depth_max_error_mm=1.0,
                                           depth_rel_error=0.002)),
    ("webp q75 + jpegxl depth", dict(color_codec="webp", color_quality=75)),
]


def learned_settings():
    """One row per quality index the shipped model has (found by asking the backend)."""
    rows = []
    q = 0
    while True:
        try:
            backend = create_backend("learned", quality=q)
        except CodecError as exc:
            if q == 0:
                print(f"learned codec not available: {exc}", file=sys.stderr)
            break
        rows.append((f"learned {backend.quality}", dict(quality=q)))
        q += 1
    return rows


def zstd_copy(raw: Path, out: Path, storage: str) -> None:
    """The raw bag re-written with the storage's zstd compression (lossless baseline)."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    mode = CompressionMode.STORAGE if storage == "mcap" else CompressionMode.MESSAGE
    with Reader(raw) as reader:
        writer = Writer(out, version=9, storage_plugin=plugin)
        writer.set_compression(mode, CompressionFormat.ZSTD)
        with writer:
            conns = {c.id: writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data,
                                                 rihs01=c.digest or _hash(c.msgtype))
                     for c in reader.connections}
            for conn, t, data in reader.messages():
                writer.write(conns[conn.id], t, data)


def _hash(msgtype):
    from rgbd_codec_ros.bag import msgdefs

    return msgdefs.definition_and_hash(msgtype)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sources", help="comma-separated source folders (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="pairs per source (default: all)")
    ap.add_argument("--codec", default="classical", help="classical, learned or classical,learned")
    ap.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary bags go")
    ap.add_argument("--json", type=Path, help="write all figures here")
    args = ap.parse_args(argv)

    data = args.data.resolve()
    sources = (args.sources.split(",") if args.sources else
               sorted(p.name for p in data.iterdir() if (p / "color").is_dir()))
    settings = [("raw + zstd (lossless baseline)", None, None)]
    for codec in args.codec.split(","):
        if codec == "classical":
            settings += [(label, "classical", opts) for label, opts in CLASSICAL]
        elif codec == "learned":
            settings += [(label, "learned", opts) for label, opts in learned_settings()]
        else:
            ap.error(f"unknown codec {codec!r}")

    work = Path(tempfile.mkdtemp(prefix="bench_bags.", dir=args.workdir))
    suffix = ".mcap" if args.storage == "mcap" else ".db3"
    results = {label: {"codec": codec or "-", "options": opts or {}, "sources": {}}
               for label, codec, opts in settings}
    raw_totals = {}
    try:
        for src in sources:
            folder = data / src
            n = len(list_pairs(folder)) if args.limit is None else min(args.limit, len(list_pairs(folder)))
            raw = work / f"raw_{src}{suffix}"
            made = folder_to_bag(folder, raw, limit=n, rate_hz=FPS, storage=args.storage)
            raw_totals[src] = {"pairs": made["pairs"], "bytes": bag_bytes(raw)}
            scale = made["depth_scale_per_m"]
            print(f"{src}: {made['pairs']} pairs, raw bag {raw_totals[src]['bytes'] / 1e6:.1f} MB",
                  file=sys.stderr)
            for label, codec, opts in settings:
                out = work / f"out{suffix}"
                t = time.perf_counter()
                if codec is None:
                    zstd_copy(raw, work / "zstd", args.storage)
                    size = bag_bytes(work / "zstd")
                    shutil.rmtree(work / "zstd")
                else:
                    stats = compress_bag(raw, out, CompressOptions(
                        color_topic=DEFAULT_TOPICS["color"], depth_topic=DEFAULT_TOPICS["depth"],
                        color_info_topic=made["topics"].get("color_info") and DEFAULT_TOPICS["color_info"],
                        depth_info_topic=made["topics"].get("depth_info") and DEFAULT_TOPICS["depth_info"],
                        codec=codec, codec_options=opts, drop_raw=True, depth_scale_per_m=scale,
                        storage=args.storage, progress=False))
                    assert stats.pairs == made["pairs"], stats.summary()
                    size = bag_bytes(out)
                    out.unlink()
                elapsed = time.perf_counter() - t
                results[label]["sources"][src] = {"pairs": made["pairs"], "bytes": size,
                                                  "seconds": elapsed}
                print(f"  {label:<34} {size / 1e6:9.2f} MB  {elapsed:6.1f} s", file=sys.stderr)
            raw.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    raw_bytes = sum(v["bytes"] for v in raw_totals.values())
    pairs = sum(v["pairs"] for v in raw_totals.values())
    duration = pairs / FPS
    lines = [
        f"{pairs} pairs (640x480 rgb8 + 16UC1, {', '.join(sources)}), {args.storage} bags, "
        f"stamps at {FPS:g} Hz; raw bag {raw_bytes / 1e6:.1f} MB "
        f"({raw_bytes * 8 / duration / 1e6:.0f} Mbit/s).",
        "",
        "| setting | codec | bag size (MB) | vs raw bag | Mbit/s at 30 Hz | s per pair (compress) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, codec, _ in settings:
        per = results[label]["sources"]
        size = sum(v["bytes"] for v in per.values())
        secs = sum(v["seconds"] for v in per.values())
        results[label].update({"bytes": size, "ratio": raw_bytes / size, "seconds": secs})
        lines.append(f"| {label} | {codec or '-'} | {size / 1e6:.1f} | {raw_bytes / size:.1f}:1 | "
                     f"{size * 8 / duration / 1e6:.1f} | {secs / pairs:.3f} |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} CPUs",
            "storage": args.storage, "fps": FPS, "raw": raw_totals, "raw_bytes": raw_bytes,
            "pairs": pairs, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
