#!/usr/bin/env python3
"""Training throughput of each model preset on this machine (pairs per second, real 256 crops).

Runs the trainer's real step (data loading, forward, RD loss, backward, gradient clip, both Adam
updates) on the shared RGB-D frames and prints figures; it asserts nothing.

    .venv/bin/python benchmarks/bench_train.py                      # tiny, lite, paper
    .venv/bin/python benchmarks/bench_train.py --presets lite --steps 5 --batch-size 8
    .venv/bin/python benchmarks/bench_train.py --device cuda --batch-size 16

The paper preset (about 150 M parameters) is slow on a small CPU: by default it gets a single
timed step at batch size 1 (``--paper-steps``), which the output says.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def bench_preset(preset: str, args) -> dict:
    import torch
    from rgbd_codec_ros.training.trainer import TrainConfig, Trainer, reseed_all

    paper = preset == "paper"
    steps = args.paper_steps if paper else args.steps
    batch = args.paper_batch_size if paper else args.batch_size
    warm = 0 if paper else args.warmup
    cfg = TrainConfig(data=args.data, preset=preset, variant=args.variant, steps=steps + warm,
                      batch_size=batch, crop=args.crop, threads=args.threads, device=args.device,
                      progress=False, workers=args.workers, lr_milestones=())
    t_build = time.perf_counter()
    tr = Trainer(cfg)
    build_s = time.perf_counter() - t_build
    params = sum(p.numel() for p in tr.model.parameters())
    loader = iter(tr._loader())

    # data alone (same crops as the steps below)
    t0 = time.perf_counter()
    batches = [next(loader) for _ in range(steps + warm)]
    data_s = (time.perf_counter() - t0) / len(batches)

    times = []
    for i, b in enumerate(batches):
        reseed_all(0, i, 0)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        tr.train_step(b, i)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    timed = times[warm:] or times
    step_s = sum(timed) / len(timed)
    tr.close()
    return {"preset": preset, "params_M": params / 1e6, "batch_size": batch, "crop": args.crop,
            "timed_steps": len(timed), "warmup_steps": warm if times[warm:] else 0,
            "step_s": step_s, "data_s_per_batch": data_s,
            "train_pairs_per_s": batch / step_s, "with_data_pairs_per_s": batch / (step_s + data_s),
            "first_step_s": times[0], "build_s": build_s, "note": "paper: reduced run" if paper else ""}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=[os.path.join(REPO, "..", "shared", "data", "rgbd")])
    p.add_argument("--presets", default="tiny,lite,paper")
    p.add_argument("--variant", default="joint")
    p.add_argument("--steps", type=int, default=3, help="timed steps per preset (not paper)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--paper-steps", type=int, default=1)
    p.add_argument("--paper-batch-size", type=int, default=1)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = p.parse_args(argv)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
            "load_avg_1m": os.getloadavg()[0]}
    print(f"# training throughput, {args.crop}x{args.crop} crops, device {host['device']}, "
          f"{host['torch_threads']} torch threads, {host['cpus']} CPUs, load {host['load_avg_1m']:.1f}")
    print(f"{'preset':<7} {'params':>8} {'batch':>5} {'steps':>5} {'s/step':>8} {'pairs/s':>8} "
          f"{'data s/batch':>12} {'pairs/s incl. data':>18}  note")
    results = []
    for preset in [s.strip() for s in args.presets.split(",") if s.strip()]:
        r = bench_preset(preset, args)
        results.append(r)
        note = r["note"]
        if preset == "paper" and r["warmup_steps"] == 0:
            note += f" (1 step at batch {r['batch_size']}, no warm-up: includes first-call overhead)"
        print(f"{preset:<7} {r['params_M']:>7.1f}M {r['batch_size']:>5} {r['timed_steps']:>5} "
              f"{r['step_s']:>8.2f} {r['train_pairs_per_s']:>8.2f} {r['data_s_per_batch']:>12.3f} "
              f"{r['with_data_pairs_per_s']:>18.2f}  {note}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"host": host, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
