#!/usr/bin/env python3
"""Learned-codec cost per preset: parameters, MACs per pixel, encode/decode time at 640x480,
and where the time goes (transforms, entropy-parameter path, rANS).

    python benchmarks/bench_learned.py [--presets tiny,lite,paper] [--device cpu|cuda] [--repeat 3]

Speed depends on weights only through the rANS symbol counts, so untrained (frozen)
models of each preset are timed unless --weights gives a trained one.
"""
import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rgbd_codec_ros.codec.base import RGBDFrame  # noqa: E402
from rgbd_codec_ros.codec.learned import model as model_mod  # noqa: E402
from rgbd_codec_ros.codec.learned.backend import LearnedBackend  # noqa: E402
from rgbd_codec_ros.codec.learned.model import build_model, load_model  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "rgbd")


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
    """Wall time per phase, gathered by wrapping the model's phase methods."""

    def __init__(self, model, device):
        self.t = defaultdict(float)
        self.device = device
        for name, phase in (("_analyse", "transforms"), ("_synthesise", "transforms"),
                            ("_entropy_path", "entropy parameters"), ("_encode_y", "rANS"),
                            ("_encode_z", "rANS"), ("_decode_z", "rANS")):
            self._wrap(model, name, phase)

    def _wrap(self, model, name, phase):
        fn = getattr(model, name)

        def timed(*a, **k):
            if self.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.t[phase] += time.perf_counter() - t0
            return out
        setattr(model, name, timed)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,lite,paper")
    ap.add_argument("--weights", default=None, help="time this trained model instead of untrained presets")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames = load_frames()
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {dev_name}; 640x480 real pairs (padded to 640x512); median of {args.repeat} runs\n")
    print("| model | params (M) | MAC/pixel (k) | encode ms | decode ms | transforms | entropy params | rANS | bytes/frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    jobs = [("weights", args.weights)] if args.weights else [("preset", p) for p in args.presets.split(",")]
    for kind, what in jobs:
        if kind == "weights":
            model, meta = load_model(what, args.device)
            name, mid = meta["model_id"], meta["model_id"]
        else:
            torch.manual_seed(0)
            model = build_model(what).eval()
            model.freeze()
            name, mid = what, what
        params = sum(p.numel() for p in model.parameters()) / 1e6
        macs = count_macs(build_model(model.preset.name)) / 1e3
        model = model.to(args.device)
        backend = LearnedBackend(model=model, model_id=mid, device=args.device, quality=1)
        timers = Timers(model, args.device)
        enc_t, dec_t, sizes = [], [], []
        for r in range(args.repeat):
            for f in frames:
                t0 = time.perf_counter()
                e = backend.encode(f)
                t1 = time.perf_counter()
                backend.decode(e.payload)
                t2 = time.perf_counter()
                if r > 0 or args.repeat == 1:   # first round warms up
                    enc_t.append(t1 - t0)
                    dec_t.append(t2 - t1)
                    sizes.append(len(e.payload))
        total = sum(timers.t.values())
        share = {k: f"{100 * v / total:.0f}%" for k, v in timers.t.items()}
        print(f"| {name} | {params:.1f} | {macs:.0f} | {1e3 * np.median(enc_t):.0f} | {1e3 * np.median(dec_t):.0f} | "
              f"{share.get('transforms', '-')} | {share.get('entropy parameters', '-')} | {share.get('rANS', '-')} | "
              f"{int(np.mean(sizes))} |", flush=True)
    print("\nShares are of the summed encode+decode time spent in each phase (the rest is "
          "pre/post-processing: hole filling, masks, container).")


if __name__ == "__main__":
    main()
