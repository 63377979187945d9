"""rgbd-demo: player -> encoder -> decoder as three processes, measured live.

Starts the player (the synthetic room, or a folder of yours), the encoder and
the decoder as separate processes in the namespace /rgbd_demo, and measures
what arrives with a subscriber of its own: per second it prints frames per
second, bit rate of rgbd/compressed, compression ratio, colour PSNR, depth
RMSE (mm, over pixels measured in both), whether the depth holes came back
exactly, and end-to-end latency (player stamp -> decoded image here). It
stops everything after --duration seconds of measurement.

Over a thin link: --target-kbps sets the encoder's budget (rate control), --link-kbps,
--link-delay-ms and --link-loss put rgbd_link_emulator between encoder and decoder,
--adapt-to-link lets the encoder follow the decoder's link feedback, and --json OUT writes
the per-second figures and a summary.

DDS stays on this machine (the shared-memory transport only: the processes open
no network socket) in a domain of its own, unless --dds-network is given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

NAMESPACE = "/rgbd_demo"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgbd-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: rgbd-demo --codec classical --codec-options "
                                       "'color_quality=70, depth_codec=rvl' --duration 30")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measurement (default 20)")
    p.add_argument("--codec", default="classical", help="encoder backend (default classical)")
    p.add_argument("--codec-options", default="", metavar="'NAME=VALUE, ...'",
                   help="backend options, e.g. 'color_quality=70' for the classical codec")
    p.add_argument("--source", default="synthetic",
                   help="'synthetic' (default) or a folder with color/ and depth/ images (+ optional meta.json)")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second of the player (default 10)")
    p.add_argument("--width", type=int, default=640, help="synthetic frame width (default 640)")
    p.add_argument("--height", type=int, default=480, help="synthetic frame height (default 480)")
    p.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID (default: one derived from this process id, in 1..100)")
    p.add_argument("--dds-network", action="store_true",
                   help="use the DDS settings of the environment instead of keeping traffic on this machine")
    p.add_argument("--log-dir", default=None, help="where the nodes' logs go (default: a temporary folder)")
    p.add_argument("--target-kbps", type=float, default=0.0,
                   help="encoder bit-rate budget in kbit/s over every 1 s window (default 0 = no rate control)")
    p.add_argument("--depth-share", type=float, default=None,
                   help="the encoder's depth_share under rate control (default: the encoder's own)")
    p.add_argument("--adapt-to-link", action="store_true",
                   help="the encoder lowers its target on link loss / rising delay (needs --target-kbps)")
    p.add_argument("--link-kbps", type=float, default=0.0,
                   help="emulated link rate in kbit/s (starts rgbd_link_emulator; default 0 = no emulator)")
    p.add_argument("--link-delay-ms", type=float, default=0.0, help="emulated one-way delay, ms")
    p.add_argument("--link-jitter-ms", type=float, default=0.0, help="emulated jitter (0..value), ms")
    p.add_argument("--link-loss", type=float, default=0.0, help="emulated random loss, percent")
    p.add_argument("--link-queue-ms", type=float, default=500.0,
                   help="emulated radio buffer: tail drop past this many ms of queue (default 500)")
    p.add_argument("--json", default=None, metavar="OUT",
                   help='write {"summary": {...}, "seconds": [...]} to OUT')
    p.add_argument("--startup-timeout", type=float, default=120.0,
                   help="seconds to wait for the first decoded frame (default 120)")
    return p


def _validate(args) -> Optional[str]:
    if not args.duration > 0:
        return "--duration must be > 0"
    if not 0.1 <= args.rate <= 120:
        return "--rate must be in 0.1..120"
    if not (8 <= args.width <= 8192 and 8 <= args.height <= 8192):
        return "--width/--height must be in 8..8192"
    if args.depth_share is not None and not 0.0 < args.depth_share < 1.0:
        return f"--depth-share must be in (0, 1), got {args.depth_share:g}"
    if not (args.target_kbps == 0 or 10 <= args.target_kbps <= 1e6):
        return "--target-kbps must be 0 (off) or in 10..1000000"
    if not 0 <= args.link_kbps <= 1e7:
        return "--link-kbps must be in 0..10000000 (0 = unlimited)"
    if not (0 <= args.link_delay_ms <= 60000 and 0 <= args.link_jitter_ms <= 10000):
        return "--link-delay-ms must be in 0..60000 and --link-jitter-ms in 0..10000"
    if not 0 <= args.link_loss <= 100:
        return "--link-loss is a percentage: 0..100"
    if not 1 <= args.link_queue_ms <= 60000:
        return "--link-queue-ms must be in 1..60000"
    if args.domain_id is not None and not 0 <= args.domain_id <= 232:
        return "--domain-id must be in 0..232"
    if args.source != "synthetic" and not Path(args.source).expanduser().is_dir():
        return f"--source {args.source}: no such folder (give 'synthetic' or a folder with color/ and depth/)"
    try:
        from rgbd_codec_ros.ros.options import parse_codec_options

        parse_codec_options(args.codec_options)
    except ValueError as exc:
        return f"--codec-options: {exc}"
    return None


#: the demo decoder's max_age_s (see main)
DECODER_MAX_AGE_S = 2.0
#: originals of coded pairs kept for their decoded images (about 150 MB of 640x480 pairs at most;
#: far more than a decoder's input queue holds)
CODED_KEPT = 100


class Measurer:
    """The demo's own subscriber: originals, compressed stream and decoded output, matched by stamp."""

    def __init__(self, node):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from rgbd_codec_ros.msg import CompressedRGBD

        qos = QoSProfile(depth=30, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.node = node
        self.orig_color: Dict[int, object] = {}
        self.orig_depth: Dict[int, object] = {}
        # originals of the pairs the encoder did code (colour stamp -> (colour, depth)), kept until
        # their decoded images arrive however late: a slow codec (the learned one on 2 cores takes
        # seconds a frame, and the decoder's queue adds more) delivers frames far older than the
        # recent originals kept above, and those frames must be measured too (issue 11)
        self.coded: Dict[int, tuple] = {}
        self.decoded_color: Dict[int, tuple] = {}
        self.compressed: deque = deque()  # (receive time, message bytes, raw bytes)
        self.all_compressed: List[tuple] = []
        self.results: deque = deque()     # (receive time, psnr, rmse_mm, holes_exact, latency_s)
        self.all_results: List[tuple] = []
        self.subs = [
            node.create_subscription(Image, "color/image_raw", self._on_orig_color, qos),
            node.create_subscription(Image, "depth/image_raw", self._on_orig_depth, qos),
            node.create_subscription(CompressedRGBD, "rgbd/compressed", self._on_compressed, qos),
            node.create_subscription(Image, "decoded/color/image_raw", self._on_decoded_color, qos),
            node.create_subscription(Image, "decoded/depth/image_raw", self._on_decoded_depth, qos),
        ]

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    @staticmethod
    def _keep_recent(table: Dict[int, object], limit: int = 60) -> None:
        while len(table) > limit:
            del table[min(table)]

    def _on_orig_color(self, msg) -> None:
        self.orig_color[self._stamp(msg)] = msg
        self._keep_recent(self.orig_color)

    def _on_orig_depth(self, msg) -> None:
        self.orig_depth[self._stamp(msg)] = msg
        self._keep_recent(self.orig_depth)

    def _on_compressed(self, msg) -> None:
        from rclpy.serialization import serialize_message

        channels = 1 if msg.color_encoding == "mono8" else 4 if msg.color_encoding.endswith("a8") else 3
        raw = msg.color_width * msg.color_height * channels
        raw += msg.depth_width * msg.depth_height * (2 if msg.depth_encoding == "16UC1" else 4)
        item = (time.monotonic(), len(serialize_message(msg)), raw)
        self.compressed.append(item)
        self.all_compressed.append(item)
        depth_stamp = msg.depth_header.stamp.sec * 1_000_000_000 + msg.depth_header.stamp.nanosec
        color, depth = self.orig_color.get(self._stamp(msg)), self.orig_depth.get(depth_stamp)
        if color is not None and depth is not None:
            self.coded[self._stamp(msg)] = (color, depth)
            self._keep_recent(self.coded, CODED_KEPT)

    def _on_decoded_color(self, msg) -> None:
        self.decoded_color[self._stamp(msg)] = (msg, time.time())
        self._keep_recent(self.decoded_color)

    def _on_decoded_depth(self, msg) -> None:
        from rgbd_codec_ros import convert

        stamp = self._stamp(msg)
        received = time.time()
        color_stamp = next((s for s in self.decoded_color if 0 <= stamp - s < 50_000_000), None)
        if color_stamp is None:
            return
        orig_color, orig_depth = self.coded.pop(color_stamp, (self.orig_color.get(color_stamp),
                                                              self.orig_depth.get(stamp)))
        if orig_color is None or orig_depth is None:
            return
        decoded_color, _ = self.decoded_color.pop(color_stamp)
        a = convert.image_to_array(orig_color).astype(np.float64)
        b = convert.image_to_array(decoded_color).astype(np.float64)
        if a.ndim == 3 and a.shape[2] == 4:
            a, b = a[:, :, :3], b[:, :, :3]
        mse = float(np.mean((a - b) ** 2))
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
        d0 = convert.image_to_array(orig_depth)
        d1 = convert.image_to_array(msg)
        if d0.dtype == np.float32:
            hole0, hole1, scale = ~np.isfinite(d0), ~np.isfinite(d1), 1000.0
        else:
            hole0, hole1, scale = d0 == 0, d1 == 0, 1.0
        both = ~hole0 & ~hole1
        diff = (d0[both].astype(np.float64) - d1[both].astype(np.float64)) * scale
        rmse = float(np.sqrt(np.mean(diff ** 2))) if diff.size else 0.0
        max_err = float(np.abs(diff).max()) if diff.size else 0.0
        holes_exact = bool(np.array_equal(hole0, hole1))
        latency = received - color_stamp / 1e9
        item = (time.monotonic(), psnr, rmse, holes_exact, latency, max_err)
        self.results.append(item)
        self.all_results.append(item)

    def window(self, seconds: float) -> Optional[dict]:
        now = time.monotonic()
        while self.compressed and self.compressed[0][0] < now - seconds:
            self.compressed.popleft()
        while self.results and self.results[0][0] < now - seconds:
            self.results.popleft()
        if not self.results:
            return None
        payload = sum(c[1] for c in self.compressed)
        raw = sum(c[2] for c in self.compressed)
        lat = np.array([r[4] for r in self.results]) * 1000
        psnrs = [r[1] for r in self.results]
        return {"fps": len(self.results) / seconds, "kbit_s": payload * 8 / 1000 / seconds,
                "ratio": raw / payload if payload else 0.0, "psnr": float(np.mean(psnrs)),
                "rmse": float(np.mean([r[2] for r in self.results])),
                "holes": 100.0 * np.mean([r[3] for r in self.results]),
                "latency": float(np.median(lat)), "latency_p95": float(np.percentile(lat, 95))}


def _start(module: str, params: Dict[str, object], log_dir: Path, env: Dict[str, str],
           remap: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    args = [sys.executable, "-m", f"rgbd_codec_ros.ros.{module}", "--ros-args", "-r", f"__ns:={NAMESPACE}"]
    for a, b in (remap or {}).items():
        args += ["-r", f"{a}:={b}"]
    for name, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text if text else chr(39) * 2}"]
    log = open(log_dir / f"{module}.log", "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def _stop(procs: Dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs.values():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _fmt(w: dict) -> str:
    psnr = "inf" if w["psnr"] == float("inf") else f"{w['psnr']:.1f}"
    return (f"{w['fps']:5.1f} fps | {w['kbit_s']:8.0f} kbit/s | ratio {w['ratio']:5.1f}:1 | "
            f"RGB PSNR {psnr} dB | depth RMSE {w['rmse']:.2f} mm | holes exact {w['holes']:.0f}% | "
            f"latency {w['latency']:.0f} ms (p95 {w['latency_p95']:.0f})")


def _json_safe(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _settings(args) -> dict:
    return {k: getattr(args, k) for k in ("codec", "codec_options", "source", "rate", "width", "height",
                                          "target_kbps", "adapt_to_link", "link_kbps", "link_delay_ms",
                                          "link_jitter_ms", "link_loss", "link_queue_ms", "duration")}


def summarize(measurer: "Measurer", start: float, duration: float) -> dict:
    """The --json summary over the measured period: what was sent and delivered, rates, latency
    (capture stamp to decoded image here), quality against the originals."""
    end = start + duration
    sent = [c for c in measurer.all_compressed if start <= c[0] < end]
    got = [r for r in measurer.all_results if start <= r[0] < end]
    times = np.array([c[0] for c in sent])
    bits = np.array([c[1] * 8.0 for c in sent])
    max_1s = 0.0
    for t in np.arange(start + 1.0, end + 1e-9, 0.05):
        max_1s = max(max_1s, float(bits[(times > t - 1.0) & (times <= t)].sum()) / 1000.0)
    lat = np.array([r[4] for r in got]) * 1000.0
    psnrs = [r[1] for r in got if math.isfinite(r[1])]
    summary = {
        "frames_sent": len(sent), "frames_delivered": len(got), "fps": len(got) / duration,
        "kbps_mean": float(bits.sum()) / 1000.0 / duration, "kbps_max_1s": max_1s,
        "latency_ms_p50": float(np.median(lat)) if lat.size else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
        "rgb_psnr_db": float(np.mean(psnrs)) if psnrs else (None if not got else float("inf")),
        "depth_rmse_mm": float(np.sqrt(np.mean([r[2] ** 2 for r in got]))) if got else None,
        "depth_max_err_mm": float(max(r[5] for r in got)) if got else None,
    }
    return _json_safe(summary)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = _validate(args)
    if problem:
        print(f"rgbd-demo: error: {problem}", file=sys.stderr)
        return 2
    from rgbd_codec_ros.ros.dds_env import localhost_dds_env

    if args.dds_network:
        env = dict(os.environ)
        if args.domain_id is not None:
            env["ROS_DOMAIN_ID"] = str(args.domain_id)
    else:
        env = localhost_dds_env(domain_id=args.domain_id)
    os.environ.update(env)  # for rclpy in this process, before it starts
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="rgbd-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node

    print(f"rgbd-demo: ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID', '0')}, "
          f"{'DDS as configured in the environment' if args.dds_network else 'DDS on this machine only'}, "
          f"namespace {NAMESPACE}, node logs in {log_dir}", flush=True)
    use_link = args.link_kbps > 0 or args.link_delay_ms > 0 or args.link_jitter_ms > 0 or args.link_loss > 0
    procs = {
        # the stream is live: a message the decoder gets to more than DECODER_MAX_AGE_S after
        # capture is dropped undecoded, so a slow codec's input queue (10 messages) cannot turn
        # into seconds of latency (measured with the learned codec here: 16 s without it)
        "decoder": _start("decoder_node", {"log_period": 5.0, "max_age_s": DECODER_MAX_AGE_S}, log_dir, env,
                          remap={"rgbd/compressed": "link/rgbd/compressed"} if use_link else None),
        "encoder": _start("encoder_node", {"codec": args.codec, "codec_options": args.codec_options,
                                           "log_period": 5.0, "target_kbps": float(args.target_kbps),
                                           "adapt_to_link": bool(args.adapt_to_link),
                                           **({} if args.depth_share is None
                                              else {"depth_share": float(args.depth_share)})}, log_dir, env),
        "player": _start("player_node", {"source": str(Path(args.source).expanduser()) if args.source != "synthetic"
                                         else "synthetic", "rate": float(args.rate), "width": args.width,
                                         "height": args.height}, log_dir, env),
    }
    if use_link:
        procs["link_emulator"] = _start("link_emulator_node", {
            "bandwidth_kbps": float(args.link_kbps), "delay_ms": float(args.link_delay_ms),
            "jitter_ms": float(args.link_jitter_ms), "loss_pct": float(args.link_loss),
            "queue_ms": float(args.link_queue_ms), "log_period": 5.0}, log_dir, env)
    rclpy.init(args=[])
    node = Node("rgbd_demo_measurer", namespace=NAMESPACE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    measurer = Measurer(node)
    code = 0
    try:
        print(f"rgbd-demo: starting player, encoder ({args.codec}) and decoder; waiting for the first "
              "decoded frame...", flush=True)
        deadline = time.monotonic() + args.startup_timeout
        while not measurer.all_results:
            executor.spin_once(timeout_sec=0.1)
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"nothing decoded in {args.startup_timeout:.0f} s"
                print(f"rgbd-demo: error: {reason}; see the logs in {log_dir}", file=sys.stderr)
                for name in dead or procs:
                    tail = (log_dir / f"{name}_node.log").read_text(errors="replace")[-1500:]
                    print(f"--- {name} ---\n{tail}", file=sys.stderr)
                return 1
        start = time.monotonic()
        next_report = start + 1.0
        seconds: List[dict] = []
        while time.monotonic() < start + args.duration:
            executor.spin_once(timeout_sec=0.05)
            if time.monotonic() >= next_report:
                w = measurer.window(1.0)
                t = next_report - start
                print(f"[{t:4.0f} s] " + (_fmt(w) if w else "no frames decoded in the last second"), flush=True)
                seconds.append(dict(_json_safe(w) if w else {"fps": 0.0}, t=round(t, 1)))
                next_report += 1.0
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead:
                print(f"rgbd-demo: error: {', '.join(dead)} stopped; see {log_dir}", file=sys.stderr)
                code = 1
                break
        results = [r for r in measurer.all_results if r[0] >= start]
        if results:
            lat = np.array([r[4] for r in results]) * 1000
            finite = [r[1] for r in results if np.isfinite(r[1])]
            print(f"rgbd-demo: {len(results)} frames in {args.duration:.0f} s; mean RGB PSNR "
                  f"{np.mean(finite) if finite else float('inf'):.1f} dB, mean depth RMSE "
                  f"{np.mean([r[2] for r in results]):.2f} mm, holes exact in "
                  f"{100 * np.mean([r[3] for r in results]):.0f}% of frames, latency median "
                  f"{np.median(lat):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms", flush=True)
            fps = len(results) / args.duration
            if fps < 0.9 * args.rate:
                print(f"rgbd-demo: the pipeline cannot keep up with {args.rate:g} Hz on this machine: "
                      f"{fps:.2f} frames/s delivered and measured (see the encoder's and decoder's "
                      f"per-frame times in {log_dir})", flush=True)
        else:
            code = 1
        if args.json:
            summary = summarize(measurer, start, args.duration)
            Path(args.json).write_text(json.dumps({"summary": summary, "seconds": seconds,
                                                   "settings": _settings(args)}, indent=1))
            print(f"rgbd-demo: wrote {args.json}", flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        print("rgbd-demo: interrupted", file=sys.stderr)
        code = 130
    finally:
        _stop(procs)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
