"""``rgbd-codec curve``: the held-out learning curve of a training campaign, on real payloads.

Each snapshot (or finished weights file) codes the held-out frames of training's own split
(the contiguous tail of every source, ``datasets.split_within_sources``) to real bytes at a
few qualities, decodes them and appends one CSV row per file and quality: bits per pixel,
colour PSNR, and depth RMSE overall, within 4 m, and its 99th percentile error. Appending
keeps a campaign's curve in one file across sessions.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Dict, List

import numpy as np

from . import datasets as ds
from .evaluate import CodecUnderTest, _metres, code_one, rgb_metrics

FIELDS = ["label", "file", "step", "quality", "pairs", "bpp_total", "bpp_rgb", "bpp_depth",
          "rgb_psnr_db", "depth_rmse_mm", "depth_rmse_4m_mm", "depth_p99_mm", "holes_exact"]
NEAR_M = 4.0


class CurveError(ValueError):
    """Bad arguments; the message says what to fix."""


def _backend_for(path: str):
    from rgbd_codec_ros.codec.base import CodecError
    from rgbd_codec_ros.codec.learned.backend import LearnedBackend
    from .snapshots import frozen_from_snapshot, is_snapshot
    if not os.path.isfile(path):
        raise CurveError(f"{path}: no such file")
    try:
        if is_snapshot(path):
            model, model_id, info = frozen_from_snapshot(path)
            return LearnedBackend(model=model, model_id=model_id, weights=None), info["step"]
        be = LearnedBackend(weights=path)
    except (CodecError, ValueError) as exc:
        raise CurveError(f"{path}: {exc}") from None
    import torch
    meta = torch.load(path, map_location="cpu", weights_only=True).get("metadata", {})
    return be, meta.get("trained_steps", meta.get("steps"))


def depth_errors(orig, orig_scale, dec, dec_scale) -> Dict[str, float]:
    om, ov = _metres(orig, orig_scale)
    dm, _ = _metres(dec, dec_scale)
    e = np.abs(dm - om)[ov]
    near = ov & (om <= NEAR_M)
    en = np.abs(dm - om)[near]
    return {"sq": float(np.sum(e ** 2)), "n": int(e.size), "sq_near": float(np.sum(en ** 2)),
            "n_near": int(en.size), "p99": float(np.percentile(e, 99)) if e.size else float("nan")}


def run_curve(args) -> int:
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.limit < 1:
        raise CurveError("--limit must be >= 1")
    sources = ds.discover(args.data, nyu=args.nyu_mat, tum=args.tum, sun=args.sun, max_dt=args.tum_max_dt)
    whole = [s for s in sources if any(__import__("fnmatch").fnmatchcase(s.name, p) for p in args.val_source)]
    rest = [s for s in sources if s not in whole]
    _, held = ds.split_within_sources(rest, args.val_fraction, args.val_gap)
    pairs = ds.evenly_spaced([p for s in held + whole for p in s.pairs], args.limit)
    steps = getattr(args, "steps", None)
    if steps is not None and len(steps) != len(args.weights):
        raise CurveError(f"--steps gives {len(steps)} steps for {len(args.weights)} files")
    rows: List[Dict] = []
    for i, path in enumerate(args.weights):
        backend, step = _backend_for(path)
        if steps is not None:
            step = steps[i]
        for q in args.quality:
            try:
                backend.configure(quality=q)
            except ValueError as exc:
                raise CurveError(f"{path}: quality {q}: {exc}") from None
            cut = CodecUnderTest("learned", "backend", [q], backend)
            acc = {"bits": 0.0, "bits_rgb": 0.0, "bits_depth": 0.0, "px": 0, "psnr": [], "sq": 0.0, "n": 0,
                   "sq_near": 0.0, "n_near": 0, "p99": [], "holes": True}
            for ref in pairs:
                raw = ds.load_raw(ref)
                r = code_one(cut, q, raw)
                H, W = raw.color.shape[:2]
                acc["bits"] += 8 * r["bytes_total"]
                acc["bits_rgb"] += 8 * (r["bytes_rgb"] or 0)
                acc["bits_depth"] += 8 * (r["bytes_depth"] or 0)
                acc["px"] += H * W
                acc["psnr"].append(rgb_metrics(raw.color, np.asarray(r["color"]))[0])
                de = depth_errors(raw.depth, raw.depth_scale_per_m, np.asarray(r["depth"]), r["depth_scale"])
                for k in ("sq", "n", "sq_near", "n_near"):
                    acc[k] += de[k]
                acc["p99"].append(de["p99"])
                om, ov = _metres(raw.depth, raw.depth_scale_per_m)
                _, dv = _metres(np.asarray(r["depth"]), r["depth_scale"])
                acc["holes"] &= bool(np.array_equal(ov, dv))
            rows.append({
                "label": args.label, "file": os.path.basename(path), "step": step, "quality": q,
                "pairs": len(pairs), "bpp_total": acc["bits"] / acc["px"], "bpp_rgb": acc["bits_rgb"] / acc["px"],
                "bpp_depth": acc["bits_depth"] / acc["px"],
                "rgb_psnr_db": float(np.mean([p for p in acc["psnr"] if p is not None])),
                "depth_rmse_mm": 1000 * math.sqrt(acc["sq"] / max(acc["n"], 1)),
                "depth_rmse_4m_mm": 1000 * math.sqrt(acc["sq_near"] / max(acc["n_near"], 1)),
                "depth_p99_mm": 1000 * float(np.nanmean(acc["p99"])), "holes_exact": acc["holes"]})
            r = rows[-1]
            print(f"{r['file']} step {r['step']} q{q:g}: {r['bpp_total']:.4f} bpp, rgb {r['rgb_psnr_db']:.2f} dB, "
                  f"depth rmse {r['depth_rmse_mm']:.1f} mm (<4 m {r['depth_rmse_4m_mm']:.1f}, "
                  f"p99 {r['depth_p99_mm']:.0f}), holes exact {r['holes_exact']}")
    new = not os.path.isfile(args.csv)
    if os.path.dirname(args.csv):
        os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"{len(rows)} rows ({len(pairs)} held-out pairs) appended to {args.csv}")
    if args.plot:
        plot_curve(args.csv, args.plot)
        print(f"curve -> {args.plot}")
    return 0


def plot_curve(csv_path: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["step"] not in ("", "None")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    keys = sorted({(r["label"], r["quality"]) for r in rows})
    for label, q in keys:
        rs = sorted((r for r in rows if (r["label"], r["quality"]) == (label, q)), key=lambda r: int(float(r["step"])))
        steps = [int(float(r["step"])) for r in rs]
        for ax, k in zip(axes, ("rgb_psnr_db", "depth_rmse_4m_mm", "bpp_total")):
            ax.plot(steps, [float(r[k]) for r in rs], marker="o", label=f"{label} q{float(q):g}")
    for ax, t in zip(axes, ("RGB PSNR (dB)", "depth RMSE within 4 m (mm)", "bits per pixel")):
        ax.set_xlabel("campaign step")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
