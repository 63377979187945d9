#!/usr/bin/env python3
"""The trainer that produced the shipped weights (see rgbd_codec_ros/models/lite.md).

Written to start the 2-core CPU run early in the first session, before
``rgbd-codec train`` existed; kept so that the model card's commands reproduce
the shipped files. It uses the project's datasets and model; the loss is the
MSE form of the paper's loss (rgb and depth both MSE on [0,1], invalid depth
pixels left out), with one quality index drawn per step. Resumable (checkpoint
every 5 minutes and on SIGTERM); ``--lr`` also applies on resume. For new
training use ``rgbd-codec train`` (exact resume, DDP, the paper's depth loss).

Usage: python scripts/train_warmup.py --out runs/warmup --hours 1.5
"""
import argparse
import os
import signal
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rgbd_codec_ros.codec.learned.depth import fill_holes  # noqa: E402
from rgbd_codec_ros.codec.learned.model import build_model, load_model  # noqa: E402
from rgbd_codec_ros.training import datasets as ds  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data/rgbd"))
    ap.add_argument("--val-source", default="realsense_d435_taeyoung")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--variant", default="joint")
    ap.add_argument("--hours", type=float, default=1.5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--final-lr", type=float, default=None,
                    help="learning rate for the last --final-hours of the run (the low-lr phase)")
    ap.add_argument("--final-hours", type=float, default=0.0)
    ap.add_argument("--warmup-steps", type=int, default=300,
                    help="linear learning-rate warm-up of a fresh optimiser on --init-weights")
    ap.add_argument("--init-weights", default=None,
                    help="start from finished weights (a models/*.pt file) with a fresh optimiser; "
                         "ignored when the run already has a checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    sources = ds.discover([args.data])
    train, _ = ds.split_sources(sources, [args.val_source])
    pairs, probs = ds.pair_weights(train, {"realsense_f200_*": 0.25})
    crops = ds.TrainCrops(pairs, probs, args.crop, args.batch, 10.0, seed=args.seed)

    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if args.init_weights and not os.path.exists(ckpt_path):
        finished, meta = load_model(args.init_weights)
        model = build_model(args.preset, args.variant)
        try:
            model.load_trainable_state(finished)
        except ValueError as exc:
            sys.exit(f"--init-weights {args.init_weights} ({meta['model_id']}): {exc}")
        print(f"initialised from {meta['model_id']} ({meta.get('steps')} steps)", flush=True)
        step_offset = int(meta.get("steps") or 0)
    else:
        model = build_model(args.preset, args.variant)
        step_offset = 0
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    opt = torch.optim.Adam(model.main_parameters(), lr=args.lr)
    aux_opt = torch.optim.Adam(model.aux_parameters(), lr=1e-3)
    step = step_offset   # steps count from the initial weights' training
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        step = ck["step"]
        for group in opt.param_groups:   # --lr applies on resume too (the final low-lr phase)
            group["lr"] = args.lr
        print(f"resumed at step {step}, lr {args.lr}", flush=True)
    def save(path):
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                    "step": step}, path + ".tmp")
        os.replace(path + ".tmp", path)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))   # finish the step, save, exit
    lambdas = model.lambdas
    deadline = time.time() + args.hours * 3600
    log = open(os.path.join(args.out, "log.csv"), "a")
    t0, last_save, start_step = time.time(), time.time(), step
    final_phase = False
    skipped = 0
    # warm up only a fresh optimiser (initialised from weights), not a resumed one
    warmup_left = args.warmup_steps if step == step_offset and step_offset > 0 else 0
    def base_lr():
        return args.final_lr if final_phase else args.lr
    while time.time() < deadline and not stop:
        if args.final_lr is not None and not final_phase and deadline - time.time() < args.final_hours * 3600:
            final_phase = True
            for group in opt.param_groups:
                group["lr"] = args.final_lr
            print(f"step {step}: final phase, lr {args.final_lr}", flush=True)
        items = [crops[step * args.batch + j] for j in range(args.batch)]
        rgb = torch.stack([it["rgb"] for it in items])
        valid = torch.stack([it["valid"] for it in items])
        depth = torch.stack([torch.from_numpy(fill_holes(it["depth"][0].numpy(), it["valid"][0].numpy() > 0))[None]
                             for it in items])
        q = int(np.random.default_rng(step).integers(model.num_qualities))
        out = model(rgb, depth, q)
        n = rgb.shape[0] * rgb.shape[2] * rgb.shape[3]
        bpp = {m: sum(-torch.log2(l).sum() for l in out["likelihoods"][m].values()) / n for m in ("rgb", "depth")}
        mse_r = torch.mean((out["x_hat"]["rgb"] - rgb) ** 2)
        mse_d = torch.sum(valid * (out["x_hat"]["depth"] - depth) ** 2) / valid.sum().clamp_min(1)
        lr_, ld_ = lambdas[q]
        loss = bpp["rgb"] + bpp["depth"] + 255 ** 2 * (lr_ * mse_r + ld_ * mse_d)
        if warmup_left > 0:   # a fresh Adam on trained weights: ramp the rate up (its first steps are +-lr)
            for group in opt.param_groups:
                group["lr"] = base_lr() * (1 - warmup_left / (args.warmup_steps + 1))
            warmup_left -= 1
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.main_parameters(), 1.0)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            opt.step()
        else:   # one bad batch must not poison the weights
            skipped += 1
            print(f"step {step}: non-finite loss or gradient, update skipped ({skipped} so far)", flush=True)
        aux = model.aux_loss()
        aux_opt.zero_grad()
        aux.backward()
        if torch.isfinite(aux):
            aux_opt.step()
        step += 1
        if step % 10 == 0:
            rate = (step - start_step) / max(time.time() - t0, 1e-6)
            psnr = -10 * np.log10(max(mse_r.item(), 1e-10))
            rmse_mm = np.sqrt(max(mse_d.item(), 0)) * 10000
            print(f"step {step} q{q} loss {loss.item():.4f} bpp rgb {bpp['rgb'].item():.3f} depth {bpp['depth'].item():.3f} "
                  f"psnr {psnr:.2f} rmse_mm {rmse_mm:.1f} aux {aux.item():.1f} ({rate * 60:.0f} steps/min)", flush=True)
            log.write(f"{step},{q},{loss.item()},{bpp['rgb'].item()},{bpp['depth'].item()},{psnr},{rmse_mm}\n")
            log.flush()
        if time.time() - last_save > 300:
            save(ckpt_path)
            last_save = time.time()
        if step % 500 == 0:   # milestones, to compare runs at equal steps
            torch.save({"model": model.state_dict(), "step": step}, os.path.join(args.out, f"model_step{step}.pt"))
    save(ckpt_path)
    print(f"done at step {step}", flush=True)


if __name__ == "__main__":
    main()
