#!/usr/bin/env python3
"""Learned-codec speed: encode/decode ms and frames per second per transform runtime, thread
count and frame size, with the stages (transforms, entropy parameters, rANS, masks), idle and
with a busy process on one core (``--load``).

    python benchmarks/bench_learned.py [--weights lite] [--runtimes torch,onnxruntime]
        [--threads 1,2] [--sizes 640x480,320x240] [--kernels auto,int8,reference] [--load]
        [--repeat 3] [--device cpu|cuda] [--fast-synthesis]
    python benchmarks/bench_learned.py --presets tiny,lite,paper    # parameters, MACs, untrained presets

Frames: real pairs of three sensors (640x480; 320x240 is every other pixel of them). Figures
are medians over ``--repeat`` rounds after one warm-up round. ``--kernels reference`` times the
exact entropy path with the float64 ``F.conv2d`` it used before (exact_conv.py), ``int8`` with the
int8 digits wherever they apply, ``auto`` with what this process measured faster (printed). ``--load``
starts one busy-looping process for the whole run: it says how the codec behaves when
something else keeps a core busy, as on a robot. Nothing here is asserted; it prints.
Set OMP_WAIT_POLICY=PASSIVE (scripts/run_tests.sh does): torch's OpenMP threads otherwise spin,
which made the exact path 10x slower under load on the 2-core machine.
"""
import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rgbd_codec_ros.codec.base import RGBDFrame
from rgbd_codec_ros.codec.learned import backend as backend_mod
from rgbd_codec_ros.codec.learned.backend import LearnedBackend, resolve_weights
from rgbd_codec_ros.codec.learned.exact_conv import exact_kernel
from rgbd_codec_ros.codec.learned.model import build_model
from rgbd_codec_ros.codec.learned.weights_io import load_model
from rgbd_codec_ros.codec.learned.runtime import onnxruntime_available

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "rgbd")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data/rgbd"


def count_macs(model, h=512, w=640):
    macs = [0]

    def hook(mod, inp, out):
        k = mod.weight[0].numel() if isinstance(mod, torch.nn.Conv2d) else mod.weight.shape[1] * mod.weight[0, 0].numel()
        if isinstance(mod, torch.nn.ConvTranspose2d):   # every input pixel scatters in*out*k*k / in
            macs[0] += inp[0].numel() // inp[0].shape[0] * mod.weight.shape[1] * mod.weight[0, 0].numel()
        else:
            macs[0] += out.numel() // out.shape[0] * k

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, h, w), torch.rand(1, 1, h, w), 0)
    for hk in hooks:
        hk.remove()
    return macs[0] / (h * w)


class Timers:
    """Wall time per stage and direction, gathered by wrapping the model's and backend's phases.

    Stages: transforms (g_a / g_s), entropy parameters (the exact path, without the rANS
    decoding it drives), rANS (z and y streams), masks (hole filling, hole / far masks, far depth).
    """

    def __init__(self, model, device):
        self.t = defaultdict(float)
        self.device = device
        self.direction = "enc"
        self._nested = 0.0
        for name, stage in (("_run_g_a", "transforms"), ("_synthesise", "transforms"),
                            ("_entropy_path", "entropy"), ("_encode_y", "rANS"), ("_encode_z", "rANS"),
                            ("_decode_z", "rANS"), ("_decode_y_step", "rANS")):
            self._wrap(model, name, stage, nested=name == "_decode_y_step")
        for name in ("encode_mask", "decode_mask", "fill_holes", "encode_far_depth", "decode_far_depth"):
            self._wrap(backend_mod, name, "masks")

    def _wrap(self, owner, name, stage, nested=False):
        fn = getattr(owner, name)
        if getattr(fn, "_bench_wrapped", False):
            fn = fn._bench_inner

        def timed(*a, **k):
            if self.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if self.device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            self.t[(self.direction, stage)] += dt
            if nested:       # y decoding runs inside the entropy path: count it once, as rANS
                self.t[(self.direction, "entropy")] -= dt
            return out
        timed._bench_wrapped = True
        timed._bench_inner = fn
        setattr(owner, name, timed)


def load_frames(n=3):
    import imagecodecs
    import json
    out = []
    for src in ("7scenes_kinect1", "osd_kinect_pcl_mosd", "realsense_d435_taeyoung"):
        folder = os.path.join(DATA, src)
        scale = json.load(open(os.path.join(folder, "meta.json")))["depth_scale_per_m"]
        c = sorted(os.listdir(os.path.join(folder, "color")))[10]
        d = sorted(os.listdir(os.path.join(folder, "depth")))[10]
        out.append(RGBDFrame(np.ascontiguousarray(imagecodecs.imread(os.path.join(folder, "color", c))[..., :3]),
                             imagecodecs.imread(os.path.join(folder, "depth", d)), float(scale)))
    return out[:n]


def resize(frame, size):
    w, h = size
    if (frame.width, frame.height) == (w, h):
        return frame
    sy, sx = frame.height // h, frame.width // w
    return RGBDFrame(np.ascontiguousarray(frame.color[::sy, ::sx][:h, :w]),
                     np.ascontiguousarray(frame.depth[::sy, ::sx][:h, :w]), frame.depth_scale_per_m)


def busy_process():
    """One process that keeps a core busy until it is stopped (or this process ends)."""
    code = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
    return subprocess.Popen([sys.executable, "-c", code])


class Config:
    """Timings of one (runtime, exact kernel) configuration at one size and thread count."""

    def __init__(self, backend, kernel):
        self.backend, self.kernel = backend, kernel
        self.enc, self.dec, self.sizes, self.rounds = [], [], [], []


def run_round(cfg, model, timers, frames, record):
    timers.t.clear()
    with exact_kernel(cfg.kernel):
        for f in frames:
            timers.direction = "enc"
            t0 = time.perf_counter()
            e = cfg.backend.encode(f)
            t1 = time.perf_counter()
            timers.direction = "dec"
            cfg.backend.decode(e.payload)
            t2 = time.perf_counter()
            if record:
                cfg.enc.append(t1 - t0)
                cfg.dec.append(t2 - t1)
                cfg.sizes.append(len(e.payload))
    if record:
        cfg.rounds.append({k: v / len(frames) for k, v in timers.t.items()})


def summary(cfg):
    stages = {k: float(np.median([s.get(k, 0.0) for s in cfg.rounds])) for k in cfg.rounds[0]}
    return 1e3 * np.median(cfg.enc), 1e3 * np.median(cfg.dec), stages, int(np.mean(cfg.sizes))


def time_configs(configs, model, frames, repeat, device):
    """Every configuration once per round, interleaved, so that a change in the machine's load
    hits all of them alike; round 0 warms up (sessions, caches)."""
    timers = Timers(model, device)
    for r in range(repeat + 1):
        for cfg in configs:
            run_round(cfg, model, timers, frames, record=r > 0)
    return [summary(c) for c in configs]


def speed_matrix(args):
    path = resolve_weights(args.weights)
    model, meta = load_model(path, args.device)
    frames640 = load_frames()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]
    if "onnxruntime" in runtimes and (not onnxruntime_available() or args.device != "cpu"):
        print("(onnxruntime skipped: not installed, or not a CPU run)")
        runtimes.remove("onnxruntime")
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    load = busy_process() if args.load else None
    try:
        print(f"model {meta['model_id']}; device {dev_name}; load: "
              f"{'one busy-looping process' if load else 'none started by this run'}; "
              f"pixel_exact={not args.fast_synthesis}; median of {args.repeat} interleaved rounds x "
              f"{len(frames640)} real pairs")
        print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
              f"1-min load average at start {os.getloadavg()[0]:.2f}\n")
        cols = ("size", "runtime", "threads", "exact kernel", "encode ms", "decode ms", "enc fps", "dec fps",
                "g_a", "g_s", "entropy enc", "entropy dec", "rANS enc", "rANS dec", "masks enc+dec", "bytes")
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for size in sizes:
            frames = [resize(f, size) for f in frames640]
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)
                configs = []
                for runtime in runtimes:
                    backend = LearnedBackend(model=model, model_id=meta["model_id"], device=args.device,
                                             quality=1, runtime=runtime, pixel_exact=not args.fast_synthesis)
                    configs += [Config(backend, kernel) for kernel in args.kernels.split(",")]
                for cfg, (enc, dec, st, nbytes) in zip(configs, time_configs(configs, model, frames, args.repeat,
                                                                            args.device)):
                    def ms(key):
                        return f"{1e3 * st.get(key, 0.0):.0f}"
                    masks = 1e3 * (st.get(("enc", "masks"), 0.0) + st.get(("dec", "masks"), 0.0))
                    print(f"| {size[0]}x{size[1]} | {cfg.backend._runtime} | {threads} | {cfg.kernel} | {enc:.0f} | "
                          f"{dec:.0f} | {1e3 / enc:.1f} | {1e3 / dec:.1f} | {ms(('enc', 'transforms'))} | "
                          f"{ms(('dec', 'transforms'))} | {ms(('enc', 'entropy'))} | {ms(('dec', 'entropy'))} | "
                          f"{ms(('enc', 'rANS'))} | {ms(('dec', 'rANS'))} | {masks:.0f} | {nbytes} |", flush=True)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    print("\nStage columns are ms per frame: g_a (encode transforms), g_s (decode transforms), the exact "
          "entropy-parameter path without rANS, rANS (z and y streams), masks (hole filling, hole/far "
          "masks, far depth). The rest of encode/decode is padding, conversion and the container.")


def presets_table(args):
    torch.set_num_threads(int(args.threads.split(",")[-1]))
    frames = load_frames()
    print(f"untrained presets; {torch.get_num_threads()} threads; median of {args.repeat} rounds\n")
    print("| model | params (M) | MAC/pixel (k) | encode ms | decode ms | bytes/frame |")
    print("|---|---|---|---|---|---|")
    for what in args.presets.split(","):
        torch.manual_seed(0)
        model = build_model(what).eval()
        model.freeze()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        macs = count_macs(build_model(what)) / 1e3
        model = model.to(args.device)
        backend = LearnedBackend(model=model, model_id=what, device=args.device, quality=1, runtime="torch")
        enc, dec, _, nbytes = time_configs([Config(backend, "auto")], model, frames, args.repeat, args.device)[0]
        print(f"| {what} | {params:.1f} | {macs:.0f} | {enc:.0f} | {dec:.0f} | {nbytes} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="lite", help="weights file or shipped name (default lite)")
    ap.add_argument("--presets", default=None, help="time untrained presets instead (tiny,lite,paper)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--sizes", default="640x480,320x240")
    ap.add_argument("--kernels", default="auto", help="exact entropy-path kernels: auto,int8,reference")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--load", action="store_true", help="keep one core busy with another process meanwhile")
    ap.add_argument("--fast-synthesis", action="store_true", help="pixel_exact=false (multi-threaded g_s)")
    args = ap.parse_args()
    from rgbd_codec_ros.codec.learned.exact_conv import kernel_choice
    print(f"exact kernel chosen by auto on this CPU ({torch.backends.cpu.get_cpu_capability()}): "
          f"{kernel_choice()}", flush=True)
    if args.presets:
        presets_table(args)
    else:
        speed_matrix(args)


if __name__ == "__main__":
    main()
