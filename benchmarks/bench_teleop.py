"""Teleoperation benchmark: encoder -> rgbd_link_emulator -> decoder at several bit-rate budgets.

For each source (real shared sequences played at 10 Hz, and the synthetic room), each budget
(default 500, 1000, 2000, 5000 kbit/s) and each contender, it runs ``rgbd-demo`` with the
link 25 % above the budget, 50 ms one-way delay and 1 % random loss, and prints what the
operator gets: delivered fps, p50/p95 latency (capture stamp to decoded image), RGB PSNR,
depth RMSE and depth maximum error, and the bit rate sent (mean and highest 1 s window).

Contenders:
- ``classical``: our classical codec under rate control (target = budget, adapt_to_link);
- ``classical-h264``: the same with temporal colour (H.264, the encoder's own rate control on
  the colour share; keyframes every 30 frames and on the decoder's request after a loss), with
  ``depth_share`` 0.6 (H.264 colour is cheap, depth is what costs);
- ``learned``: our learned codec under rate control (slow on a CPU: flagged when it cannot
  keep up with 10 Hz);
- ``ros-defaults``: what users get today: JPEG q80 + compressedDepth-style PNG, no rate control.

    .venv/bin/python benchmarks/bench_teleop.py                       # everything (long)
    .venv/bin/python benchmarks/bench_teleop.py --budgets 1000 --sources realsense_d4xx_visp_rbt \\
        --contenders classical ros-defaults --duration 15 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RGBD_DATA_DIR", REPO / ".." / "shared" / "data" / "rgbd"))
if not DATA.is_dir():
    DATA = Path("/work/shared/data/rgbd")

CONTENDERS = {
    "classical": {"codec": "classical", "codec_options": "", "rate_control": True},
    # H.264 colour costs a tenth of JPEG per frame: depth gets the larger share (measured: at 1000
    # kbit/s, 0.35 left depth at its cheapest rungs, RMSE 92 mm; 0.6 gave 37-74 mm at 31-33 dB)
    "classical-h264": {"codec": "classical", "codec_options": "color_codec=h264", "rate_control": True,
                       "depth_share": 0.6},
    "learned": {"codec": "learned", "codec_options": "threads=1", "rate_control": True},
    "ros-defaults": {"codec": "classical", "codec_options": "color_quality=80, depth_codec=png, png_level=3",
                     "rate_control": False},
}


def run_one(source: str, budget: float, contender: str, duration: float, rate: float, log_root: Path,
            depth_share: Optional[float] = None) -> dict:
    spec = CONTENDERS[contender]
    share = depth_share if depth_share is not None else spec.get("depth_share")
    out = Path(tempfile.mkstemp(suffix=".json", dir=log_root)[1])
    cmd = [sys.executable, "-m", "rgbd_codec_ros.ros.demo", "--duration", str(duration), "--rate", str(rate),
           "--codec", spec["codec"], "--codec-options", spec["codec_options"],
           "--source", source if source == "synthetic" else str(DATA / source),
           "--link-kbps", str(1.25 * budget), "--link-delay-ms", "50", "--link-loss", "1",
           "--json", str(out), "--log-dir", str(log_root / f"{Path(source).name}_{int(budget)}_{contender}"),
           "--startup-timeout", "240"]
    if spec["rate_control"]:
        cmd += ["--target-kbps", str(budget), "--adapt-to-link"]
        if share is not None:
            cmd += ["--depth-share", str(share)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 400)
    load = {"load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "depth_share": share if spec["rate_control"] else None}
    if proc.returncode != 0 or not out.stat().st_size:
        return {"error": (proc.stderr or proc.stdout)[-600:], **load}
    return {**json.loads(out.read_text())["summary"], **load}


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def add_common_args(p: argparse.ArgumentParser, sources: List[str], contenders, length_option: str,
                  length_help: str) -> None:
    """What both teleoperation benchmarks take first: the grid they sweep (--sources, --budgets,
    --contenders), how long a run is (``length_option``) and the camera rate."""
    p.add_argument("--sources", nargs="+", default=sources)
    p.add_argument("--budgets", nargs="+", type=float, default=[500, 1000, 2000, 5000])
    p.add_argument("--contenders", nargs="+", default=list(contenders), choices=list(contenders))
    p.add_argument(length_option, type=float, default=20.0, help=length_help)
    p.add_argument("--rate", type=float, default=10.0, help="camera rate, Hz (default 10)")


def run_grid(args, run_case: Callable[[str, float, str], dict]) -> int:
    """``run_case(source, budget, contender)``, which prints its row and returns its result, for
    every case of the grid, in order; all the results as JSON to --json."""
    results = [run_case(source, budget, contender)
               for source in args.sources for budget in args.budgets for contender in args.contenders]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _case(args, log_root: Path, source: str, budget: float, contender: str) -> dict:
    r = run_one(source, budget, contender, args.duration, args.rate, log_root, args.depth_share)
    row = {"source": source, "budget_kbps": budget, "contender": contender, **r}
    if "error" in r:
        print(f"{source:26s} {budget:6.0f} {contender:13s} failed: {r['error'][-200:]}", flush=True)
        return row
    note = []
    if r["fps"] < 0.9 * args.rate:
        note.append(f"cannot keep up with {args.rate:g} Hz")
    if r["kbps_max_1s"] > 1.1 * budget:
        note.append("over budget")
    print(f"{source:26s} {budget:6.0f} {contender:13s} {r['fps']:5.1f} {_f(r['latency_ms_p50'], '6.0f')} "
          f"{_f(r['latency_ms_p95'], '6.0f')} {_f(r['rgb_psnr_db'], '5.1f')} "
          f"{_f(r['depth_rmse_mm'], '6.1f')} {_f(r['depth_max_err_mm'], '6.0f')} "
          f"{r['kbps_mean']:6.0f} {r['kbps_max_1s']:6.0f}  load {r['load_avg_1min'][0]:.1f}-"
          f"{r['load_avg_1min'][1]:.1f} {'; '.join(note)}", flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, ["realsense_d4xx_visp_rbt", "synthetic"], CONTENDERS,
                  "--duration", "seconds measured per run (default 20)")
    p.add_argument("--depth-share", type=float, default=None,
                   help="depth_share of the rate-controlled contenders (default: each contender's own)")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    log_root = Path(tempfile.mkdtemp(prefix="bench-teleop-"))
    print(f"link = 1.25 x budget, 50 ms delay, 1 % loss; {args.rate:g} Hz; {args.duration:g} s per run; "
          f"logs in {log_root}", flush=True)
    header = (f"{'source':26s} {'budget':>6s} {'contender':13s} {'fps':>5s} {'p50ms':>6s} {'p95ms':>6s} "
              f"{'PSNR':>5s} {'dRMSE':>6s} {'dMAX':>6s} {'kbps':>6s} {'max1s':>6s}  note")
    print(header + "\n" + "-" * len(header), flush=True)
    return run_grid(args, lambda source, budget, contender: _case(args, log_root, source, budget, contender))


if __name__ == "__main__":
    sys.exit(main())
