"""Late joiners with temporal colour: how long after it joins does a decoder show a right image?

Runs player -> encoder (``color_codec=h264`` or the codec given) as processes, lets the stream
run, then starts decoders one after another mid-stream (each one a late joiner) and measures,
for each: time from its start to its first keyframe request, from that request to its first
decoded image, and how many frames that took, plus the PSNR of its first image against the
original with the same stamp. ``keyframe_interval`` 0 isolates keyframes on request; a value N
shows the "within N frames" bound.

    .venv/bin/python benchmarks/bench_late_join.py --source ../shared/data/rgbd/realsense_d4xx_visp_rbt \\
        --joins 5 --keyframe-interval 0 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rgbd_codec_ros.ros.demo import NAMESPACE, _start, _stop  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="synthetic")
    p.add_argument("--codec-options", default="color_codec=h264, color_quality=60")
    p.add_argument("--keyframe-interval", type=int, default=0)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--joins", type=int, default=5, help="late decoders started one after another")
    p.add_argument("--wait", type=float, default=12.0, help="seconds each late decoder runs (start-up included)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from rgbd_codec_ros.ros.dds_env import localhost_dds_env

    env = localhost_dds_env()
    os.environ.update(env)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-late-join-"))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from rgbd_codec_ros import convert
    from rgbd_codec_ros.msg import CompressedRGBD

    procs = {
        "encoder": _start("encoder_node", {"codec_options": args.codec_options, "log_period": 5.0,
                                           "keyframe_interval": args.keyframe_interval, "lazy": False}, log_dir, env),
        "player": _start("player_node", {"source": args.source, "rate": args.rate}, log_dir, env),
    }
    rclpy.init(args=[])
    node = Node("late_join_probe", namespace=NAMESPACE)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    qos = QoSProfile(depth=30, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    originals, compressed, requests, decoded = {}, [], [], []

    def stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def on_orig(msg):
        originals[stamp(msg)] = convert.image_to_array(msg).copy()
        for old in sorted(originals)[:-60]:
            del originals[old]

    node.create_subscription(Image, "color/image_raw", on_orig, qos)
    node.create_subscription(CompressedRGBD, "rgbd/compressed",
                             lambda m: compressed.append((time.monotonic(), m.keyframe, m.sequence)), qos)
    node.create_subscription(String, "rgbd/keyframe_request", lambda m: requests.append(time.monotonic()), qos)
    node.create_subscription(Image, "decoded/color/image_raw",
                             lambda m: decoded.append((time.monotonic(), stamp(m), convert.image_to_array(m).copy())),
                             qos)

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)

    results = []
    try:
        deadline = time.monotonic() + 120.0   # the encoder's first frame (imports, a loaded machine)
        while not compressed and time.monotonic() < deadline:
            spin(0.5)
        spin(3.0)
        if not compressed:
            raise SystemExit(f"no compressed frames; logs in {log_dir}")
        for k in range(args.joins):
            requests.clear()
            decoded.clear()
            t_start = time.monotonic()
            dec = _start("decoder_node", {"lazy": False, "log_period": 2.0}, log_dir, env)
            spin(args.wait)
            _stop({"decoder": dec})
            if not decoded:
                results.append({"join": k, "error": "no image", "requests": len(requests)})
                print(results[-1], flush=True)
                continue
            t_img, s_img, img = decoded[0]
            frames_between = sum(1 for t, _, _ in compressed if (requests[0] if requests else t_start) <= t <= t_img)
            ref = originals.get(s_img)
            psnr = None
            if ref is not None:
                mse = np.mean((img.astype(float) - ref.astype(float)) ** 2)
                psnr = float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))
            t_req = requests[0] if requests else t_start
            key_t = next((t for t, key, _ in compressed if key and t >= t_req), None)
            results.append({"join": k, "request_to_keyframe_ms": None if key_t is None else 1000 * (key_t - t_req),
                            "start_to_request_ms": 1000 * (requests[0] - t_start) if requests else None,
                            "request_to_image_ms": 1000 * (t_img - requests[0]) if requests else None,
                            "start_to_image_ms": 1000 * (t_img - t_start), "frames_from_request": frames_between,
                            "first_image_psnr_db": psnr})
            print(results[-1], flush=True)
            spin(1.0)
    finally:
        _stop(procs)
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    ok = [r for r in results if "error" not in r and r["request_to_image_ms"] is not None]
    if ok:
        print(f"request -> first image: median {np.median([r['request_to_image_ms'] for r in ok]):.0f} ms, "
              f"max {max(r['request_to_image_ms'] for r in ok):.0f} ms over {len(ok)} joins "
              f"(keyframe_interval {args.keyframe_interval}, {args.rate:g} Hz)")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "joins": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
