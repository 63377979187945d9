#!/usr/bin/env python3
"""Held-out rate-distortion of training milestones: how fast does the codec improve with steps?

Each milestone (a ``model_step*.pt`` state dict written by train_warmup.py, or finished weights)
is frozen exactly as an export would be, then real payloads of a few held-out pairs are
encoded and decoded at the given qualities. One CSV row per milestone, variant and quality.

    python scripts/learning_curve.py runs/s2_joint runs/s2_separate --every 1000 --pairs 2 \
        --quality 0 3 --csv docs/results/learning_curve.csv
"""
import argparse
import csv
import glob
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rgbd_codec_ros.codec import RGBDFrame  # noqa: E402
from rgbd_codec_ros.codec.learned.backend import LearnedBackend  # noqa: E402
from rgbd_codec_ros.codec.learned.model import build_model, load_model  # noqa: E402
from rgbd_codec_ros.training import datasets as ds  # noqa: E402
from rgbd_codec_ros.training.evaluate import depth_metrics, rgb_metrics  # noqa: E402

FIELDS = ["run", "variant", "step", "quality", "pairs", "bpp_total", "bpp_rgb", "bpp_depth",
          "rgb_psnr_db", "depth_rmse_mm"]


def milestones(run: str, every: int):
    """(step, path) of a run folder's milestones that are multiples of ``every``, or one weights file."""
    if os.path.isfile(run):
        return [(None, run)]
    out = []
    for path in glob.glob(os.path.join(run, "model_step*.pt")):
        step = int(re.search(r"model_step(\d+)\.pt$", path).group(1))
        if step % every == 0:
            out.append((step, path))
    return sorted(out)


def frozen_model(path: str, preset: str, variant: str):
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if "metadata" in blob:                       # finished weights
        model, meta = load_model(path)
        return model, meta["variant"], meta.get("steps")
    model = build_model(preset, variant)
    model.load_state_dict(blob["model"])
    model.eval()
    model.freeze()
    return model, variant, blob.get("step")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="train_warmup.py output folders (or finished weights files)")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data/rgbd"))
    ap.add_argument("--source", default="realsense_d435_taeyoung", help="held-out source to code")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--quality", type=float, nargs="+", default=[0, 3])
    ap.add_argument("--every", type=int, default=1000, help="use milestones at multiples of this step")
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--plot", help="PNG: RGB PSNR and total bpp against steps, per variant and quality")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sources = [s for s in ds.discover([args.data]) if s.name == args.source]
    if not sources:
        sys.exit(f"no source {args.source!r} under {args.data}")
    pairs = [ds.load_raw(p) for p in ds.evenly_spaced(sources[0].pairs, args.pairs)]
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        for run in args.runs:
            variant = "separate" if "separate" in os.path.basename(run.rstrip("/")) else "joint"
            for step, path in milestones(run, args.every):
                model, variant, trained = frozen_model(path, args.preset, variant)
                backend = LearnedBackend(model=model, model_id=f"curve@{step}", device="cpu")
                for q in args.quality:
                    backend.configure(quality=q)
                    rows = []
                    for raw in pairs:
                        enc = backend.encode(RGBDFrame(raw.color, raw.depth, raw.depth_scale_per_m))
                        dec = backend.decode(enc.payload)
                        n = raw.color.shape[0] * raw.color.shape[1]
                        psnr, _ = rgb_metrics(raw.color, dec.color)
                        dm = depth_metrics(raw.depth, raw.depth_scale_per_m, dec.depth, dec.depth_scale_per_m)
                        rows.append((8 * len(enc.payload) / n, 8 * enc.bytes_rgb / n, 8 * enc.bytes_depth / n,
                                     psnr, dm["depth_rmse_mm"]))
                    m = np.mean(np.array(rows, dtype=np.float64), axis=0)
                    row = dict(zip(FIELDS, [os.path.basename(run.rstrip("/")), variant, trained if step is None
                                            else step, q, len(rows), *(round(float(v), 4) for v in m)]))
                    writer.writerow(row)
                    fh.flush()
                    print(row, flush=True)
    if args.plot:
        plot(args.csv, args.plot, args.source)


def plot(csv_path: str, png_path: str, source: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    curves = sorted({(r["variant"], r["quality"]) for r in rows})
    for variant, q in curves:
        pts = sorted((int(float(r["step"])), r) for r in rows if (r["variant"], r["quality"]) == (variant, q))
        steps = [s for s, _ in pts]
        style = "-o" if variant == "joint" else "--s"
        for ax, key in zip(axes, ("rgb_psnr_db", "bpp_total", "depth_rmse_mm")):
            ax.plot(steps, [float(r[key]) for _, r in pts], style, label=f"{variant} q{float(q):g}")
    for ax, title in zip(axes, ("RGB PSNR (dB)", "total bpp", "depth RMSE (mm)")):
        ax.set_xlabel("training step")
        ax.set_title(f"{title}, held-out {source}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main()
