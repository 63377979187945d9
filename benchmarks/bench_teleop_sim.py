"""Teleoperation without the CPU contention: the encoder's rate control on a virtual 10 Hz clock.

``bench_teleop.py`` runs the real nodes, so on a loaded machine its frame rate and latency
measure the machine as much as the codec. This benchmark takes the CPU out: real frames, the
real classical backend and ``rgbd_codec_ros.ratecontrol`` with the encoder node's glue (JPEG
colour: one controller for both streams, re-coded cheaper when a frame would break the window;
H.264 colour: the video encoder at ``0.9 * (1 - depth_share) * T``, a depth-only controller at
``max(depth_share * T, T - colour of the last second)``), frames offered every 1/rate s of a
virtual clock, and a link that loses ``--loss`` % of the frames at random (a lost H.264 frame
makes the decoder wait for the keyframe it asks for, which the next coded frame is). It reports,
per source, budget and contender: frames delivered per second, RGB PSNR and depth RMSE of what
the operator sees, the bit rate (mean, highest 1 s window), and the encode and decode CPU time
per frame (``time.process_time``; pessimistic on a shared machine, see ``--help``).

    .venv/bin/python benchmarks/bench_teleop_sim.py --sources realsense_d4xx_visp_rbt --budgets 1000
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rgbd_codec_ros import ratecontrol  # noqa: E402
from rgbd_codec_ros.codec.base import MissingReference, RGBDFrame  # noqa: E402
from rgbd_codec_ros.codec import video  # noqa: E402
from rgbd_codec_ros.codec.classical import ClassicalBackend  # noqa: E402
from rgbd_codec_ros.ros.sources import open_source  # noqa: E402

from bench_teleop import add_common_args, run_grid  # noqa: E402  (this folder: the shared arguments and grid)

DATA = Path(os.environ.get("RGBD_DATA_DIR", REPO / ".." / "shared" / "data" / "rgbd"))
if not DATA.is_dir():
    DATA = Path("/work/shared/data/rgbd")

#: the encoder node's share of the colour budget handed to a video encoder (encoder_node.py)
VIDEO_RATE_SHARE = 0.9
CONTENDERS = {"classical": ("jpeg", 0.35), "classical-h264": ("h264", 0.6)}


def simulate(source: str, budget: float, contender: str, seconds: float, rate: float, loss: float,
             depth_share=None, seed: int = 0) -> dict:
    colour_codec, share = CONTENDERS[contender]
    share = share if depth_share is None else depth_share
    src = open_source(source if source == "synthetic" else str(DATA / source))
    video_on = colour_codec == "h264"
    enc = ClassicalBackend(color_codec=colour_codec)
    dec = ClassicalBackend()
    if video_on:
        ctl = ratecontrol.RateController(budget * share, [ratecontrol.classical_depth_ladder()])
        enc.configure(color_bitrate_kbps=budget * (1 - share) * VIDEO_RATE_SHARE)
    else:
        ctl = ratecontrol.RateController(budget, [ratecontrol.classical_color_ladder(),
                                                  ratecontrol.classical_depth_ladder()], depth_share=share)
    colour_window = ratecontrol.SlidingWindow(1.0)
    rng = random.Random(seed)
    sent, shown, enc_cpu, dec_cpu = [], [], [], []
    skipped = lost = waiting = keyframes = 0
    key_bits = []
    for k in range(int(seconds * rate)):
        t = k / rate
        color, depth = src.frame(k % len(src))
        color = np.ascontiguousarray(color[..., :3]) if color.ndim == 3 else color
        frame = RGBDFrame(color=color, depth=depth, depth_scale_per_m=src.depth_scale_per_m, stamp_s=t)
        if video_on:
            ctl.set_target(max(budget * share, budget - colour_window.bits(t) / 1000.0))
        plan = ctl.plan(t, frame.width * frame.height)
        c0 = time.process_time()
        while plan is not None:
            enc.configure(**plan.options)
            e = enc.encode(frame)
            bits = 8.0 * (len(e.payload) + 200)  # + the message fields and camera infos
            ctl.observe(plan, [8.0 * e.bytes_rgb, 8.0 * e.bytes_depth], bits)
            if video_on or ctl.fits(t, bits):
                break
            plan = ctl.smaller(plan, bits, t)
        enc_cpu.append(time.process_time() - c0)
        if plan is None:
            skipped += 1
            continue
        ctl.sent(t, bits, plan)
        sent.append((t, bits))
        keyframes += bool(e.keyframe) and k > 0
        if video_on and e.keyframe and k > 0:
            key_bits.append(bits)
        if video_on:
            colour_window.add(t, 8.0 * e.bytes_rgb)
        if rng.random() < loss / 100.0:
            lost += 1
            continue
        c0 = time.process_time()
        try:
            out = dec.decode(e.payload)
        except MissingReference:
            waiting += 1
            enc.request_keyframe()  # the decoder asks; the next coded frame answers
            continue
        dec_cpu.append(time.process_time() - c0)
        mse = float(np.mean((color.astype(np.float64) - out.color.astype(np.float64)) ** 2))
        both = (depth > 0) & (out.depth > 0)
        diff = (depth[both].astype(np.float64) - out.depth[both].astype(np.float64)) / src.depth_scale_per_m * 1000
        shown.append((10 * math.log10(255.0 ** 2 / mse) if mse else 99.0,
                      float(np.sqrt(np.mean(diff ** 2))) if diff.size else 0.0))
    ts = np.array([s[0] for s in sent])
    bs = np.array([s[1] for s in sent])
    windows = [bs[(ts > w - 1.0) & (ts <= w)].sum() / 1000.0 for w in np.arange(1.0, seconds, 0.05)]
    return {"fps": len(shown) / seconds, "rgb_psnr_db": float(np.mean([s[0] for s in shown])),
            "depth_rmse_mm": float(np.mean([s[1] for s in shown])), "kbps_mean": float(bs.sum()) / 1000 / seconds,
            "kbps_max_1s": float(max(windows)), "skipped": skipped, "lost": lost, "waiting_for_keyframe": waiting,
            "keyframes_after_first": keyframes,
            "keyframe_message_kbit": float(np.mean(key_bits)) / 1000 if key_bits else None,
            "message_kbit_max": float(bs.max()) / 1000, "encode_cpu_ms": 1000 * float(np.median(enc_cpu)),
            "decode_cpu_ms": 1000 * float(np.median(dec_cpu)), "depth_share": share,
            "vbv_s": video.VBV_SECONDS if video_on else None}


def _case(args, source: str, budget: float, contender: str) -> dict:
    r = simulate(source, budget, contender, args.seconds, args.rate, args.loss, args.depth_share)
    r.update(source=source, budget_kbps=budget, contender=contender,
             load_avg_1min=round(os.getloadavg()[0], 2))
    print(f"{source:26s} {budget:6.0f} {contender:15s} {r['fps']:5.1f} {r['rgb_psnr_db']:5.1f} "
          f"{r['depth_rmse_mm']:6.1f} {r['kbps_mean']:6.0f} {r['kbps_max_1s']:6.0f} "
          f"{r['skipped']:4d} {r['encode_cpu_ms']:6.1f} {r['decode_cpu_ms']:6.1f}", flush=True)
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, ["realsense_d4xx_visp_rbt", "realsense_d435_taeyoung"], CONTENDERS,
                  "--seconds", "virtual seconds per run (default 20)")
    p.add_argument("--loss", type=float, default=1.0, help="random loss on the link, percent (default 1)")
    p.add_argument("--depth-share", type=float, default=None, help="override each contender's depth_share")
    p.add_argument("--vbv", type=float, default=None,
                   help="the video encoder's VBV buffer, seconds of its rate (default: codec/video.py's)")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    if args.vbv is not None:
        video.VBV_SECONDS = args.vbv
    print(f"virtual {args.rate:g} Hz clock, {args.seconds:g} s per run, {args.loss:g} % loss; "
          f"load average {os.getloadavg()[0]:.1f} (CPU times are per frame, on this machine)", flush=True)
    print(f"{'source':26s} {'budget':>6s} {'contender':15s} {'fps':>5s} {'PSNR':>5s} {'dRMSE':>6s} "
          f"{'kbps':>6s} {'max1s':>6s} {'skip':>4s} {'encms':>6s} {'decms':>6s}", flush=True)
    return run_grid(args, lambda source, budget, contender: _case(args, source, budget, contender))


if __name__ == "__main__":
    sys.exit(main())
