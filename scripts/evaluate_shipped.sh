#!/usr/bin/env bash
# Reproduce the learned-codec results of README.md and rgbd_codec_ros/models/lite.md:
# the shipped model (and its `separate` ablation) against classical anchors on the
# held-out source, on the sources it was trained on, and on synthetic frames it never saw.
#   bash scripts/evaluate_shipped.sh [OUT_DIR]      (default docs/results; ~10 min on 2 cores)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${1:-docs/results}"
DATA="../shared/data/rgbd"
PY=.venv/bin/python
EVAL=(.venv/bin/rgbd-codec eval --threads 2 --quiet)
MODELS=rgbd_codec_ros/models
mkdir -p "$OUT"

# synthetic frames from the project's own generator (never seen in training)
SYN="$(mktemp -d)"
trap 'rm -rf "$SYN"' EXIT
"$PY" - "$SYN" <<'PY'
import json, os, sys
import imagecodecs
from rgbd_codec_ros.synthetic import SyntheticSequence
out = sys.argv[1]
os.makedirs(f"{out}/synthetic/color"); os.makedirs(f"{out}/synthetic/depth")
seq = SyntheticSequence(seed=7)
for i in range(0, 80, 10):
    color, depth = seq.frame(i)
    imagecodecs.imwrite(f"{out}/synthetic/color/{i:04d}.png", color)
    imagecodecs.imwrite(f"{out}/synthetic/depth/{i:04d}.png", depth)
json.dump({"depth_scale_per_m": 1000.0}, open(f"{out}/synthetic/meta.json", "w"))
PY

ANCHORS=(jpeg+png16 jpegxl+jpegxl16-lossy)
# the four trained points plus two extrapolated below them (quality -1 and -0.5)
LQ=(--quality learned=-1,-0.5,0,1,2,3)
# 1. the D435: held out until session 2, a training source since session 3 (these 8 pairs span the whole
#    sequence, most of them trained on): the shipped joint model, the classical backend, anchors
"${EVAL[@]}" --data "$DATA/realsense_d435_taeyoung" --limit 8 --weights "$MODELS/lite.pt" "${LQ[@]}" \
    --codec learned classical "${ANCHORS[@]}" --json "$OUT/heldout_d435.json" --plot "$OUT/rd_heldout_d435.png" \
    | tee "$OUT/heldout_d435.txt"
# 2. synthetic frames (not trained on at all)
"${EVAL[@]}" --data "$SYN/synthetic" --weights "$MODELS/lite.pt" "${LQ[@]}" \
    --codec learned "${ANCHORS[@]}" --json "$OUT/synthetic.json" --plot "$OUT/rd_synthetic.png" | tee "$OUT/synthetic.txt"
# 3. the joint-gain experiment: the separate ablation, same data and budget, same pairs
"${EVAL[@]}" --data "$DATA/realsense_d435_taeyoung" --limit 8 --weights "$MODELS/lite-separate.pt" "${LQ[@]}" \
    --codec learned --json "$OUT/heldout_d435_separate.json" | tee "$OUT/heldout_d435_separate.txt"
# 4. training sources (seen in training; near-duplicate frames, so optimistic)
"${EVAL[@]}" --data "$DATA/7scenes_kinect1" "$DATA/osd_kinect_pcl_mosd" --limit 4 --weights "$MODELS/lite.pt" "${LQ[@]}" \
    --codec learned "${ANCHORS[@]}" --json "$OUT/train_sources.json" | tee "$OUT/train_sources.txt"
# one RD plot of the held-out source with both learned variants and the anchors
"$PY" - "$OUT/heldout_d435.json" "$OUT/heldout_d435_separate.json" "$OUT/rd_heldout_d435.png" <<'PY'
import json, sys
from rgbd_codec_ros.training.evaluate import plot_rd
joint, separate = (json.load(open(p))["summary"] for p in sys.argv[1:3])
rows = [dict(r, codec="learned lite (joint, default)") if r["codec"] == "learned" else r for r in joint]
rows += [dict(r, codec="learned lite-separate") for r in separate if r["codec"] == "learned"]
plot_rd(rows, sys.argv[3], "8 held-out pairs: realsense_d435_taeyoung")
PY
# BD-rate of the joint model against the separate ablation (same pairs)
"$PY" - "$OUT/heldout_d435.json" "$OUT/heldout_d435_separate.json" <<'PY' | tee "$OUT/joint_vs_separate.txt"
import json, sys
from rgbd_codec_ros.training.evaluate import bd_rate
joint, separate = ([r for r in json.load(open(p))["summary"] if r["codec"] == "learned"] for p in sys.argv[1:3])
for metric, rate in (("rgb_psnr_db", "bpp_total"), ("rgb_psnr_db", "bpp_rgb"), ("depth_psnr_db", "bpp_depth"),
                     ("depth_psnr_db", "bpp_total")):
    v = bd_rate([r[rate] for r in separate], [r[metric] for r in separate],
                [r[rate] for r in joint], [r[metric] for r in joint])
    print(f"joint vs separate  {metric:>14} / {rate:<9} BD-rate {'n/a' if v is None else f'{v:+.1f} %'}")
for name, rows in (("joint", joint), ("separate", separate)):
    for r in rows:
        print(f"{name:<9} {r['quality']:<10} bpp {r['bpp_total']:.3f} (rgb {r['bpp_rgb']:.3f}, depth {r['bpp_depth']:.3f}) "
              f"RGB {r['rgb_psnr_db']:.2f} dB  depth {r['depth_psnr_db']:.2f} dB / {r['depth_rmse_mm']:.0f} mm")
PY
