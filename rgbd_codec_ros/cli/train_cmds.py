"""``rgbd-codec train`` and ``rgbd-codec eval`` (see docs/training.md)."""
from __future__ import annotations

import argparse
import sys


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=[], metavar="PATH",
                   help="data folders / files, format recognised by layout: color/+depth/(+meta.json), "
                        "a folder of such folders, a TUM sequence, SUN RGB-D scenes, an NYU .mat")
    g.add_argument("--nyu-mat", nargs="+", default=[], metavar="FILE",
                   help="NYU Depth v2 labeled .mat file(s)")
    g.add_argument("--tum", nargs="+", default=[], metavar="DIR", help="TUM RGB-D sequence folder(s)")
    g.add_argument("--sun", nargs="+", default=[], metavar="DIR", help="SUN RGB-D folder(s)")
    g.add_argument("--tum-max-dt", type=float, default=0.02, metavar="S",
                   help="largest rgb/depth timestamp difference to pair TUM frames (default 0.02 s)")


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train the learned RGB-D model",
                       description="Train the joint RGB-D model. Multi-process: "
                                   "torchrun --nproc_per_node N -m rgbd_codec_ros.training ARGS")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="rate-distortion evaluation of codecs on RGB-D data",
                       description="Encode every pair to real bytes, decode it, measure; JSON records, "
                                   "RD plot and BD-rates against the classical anchors.")
    _add_data_args(e)
    e.add_argument("--json", required=True, metavar="OUT.json", help="where to write the records")
    e.add_argument("--codec", nargs="+", default=None, metavar="NAME",
                   help="registered backends (learned, classical, ...) and anchors: colour "
                        "jpeg|avif|jpegxl and depth png16|jpegxl16|jpegxl16-lossy, combined as "
                        "COLOUR+DEPTH (e.g. jpeg+png16). Default: jpeg+png16 jpegxl+jpegxl16-lossy "
                        "and learned when weights are given")
    e.add_argument("--quality", nargs="+", default=None, metavar="Q",
                   help="qualities instead of the default sweeps: Q for every codec, or CODEC=Q1,Q2 "
                        "for one; anchors take COLOUR:DEPTH (e.g. 80:2.0), or COLOUR alone when the "
                        "depth codec is lossless; learned takes the model's quality names/indices")
    e.add_argument("--weights", metavar="FILE", help="weights for the learned backend")
    e.add_argument("--codec-option", nargs="+", default=[], metavar="KEY=VALUE",
                   help="options for registered backends (create_backend): KEY=VALUE for all, "
                        "CODEC.KEY=VALUE for one, e.g. classical.depth_codec=rvl_lossy")
    e.add_argument("--plot", metavar="OUT.png", help="write RD curves here")
    e.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N pairs per source, evenly spaced through it")
    e.add_argument("--reference", metavar="CODEC",
                   help="BD-rate reference (default: the first anchor in --codec)")
    e.add_argument("--threads", type=int, default=None, help="torch threads for learned codecs")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    g = p.add_argument_group("data use")
    g.add_argument("--val-source", nargs="+", default=[], metavar="NAME",
                   help="hold these sources out for validation (names or fnmatch patterns)")
    g.add_argument("--source-weight", nargs="+", default=[], metavar="NAME=W",
                   help="per-source sampling weight (default 1, per pair), e.g. 'realsense_f200_*=0.3'")
    g.add_argument("--crop", type=int, default=256, help="random crop side (multiple of 64, default 256)")
    g.add_argument("--vflip", action="store_true", help="also flip vertically (horizontal flips always)")
    g.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="lite", help="model size: paper | lite | tiny (default lite)")
    m.add_argument("--variant", default="joint", help="joint | one-way | separate (default joint)")
    m.add_argument("--qualities", nargs="+", default=None, metavar="Q",
                   help="quality indices (or the preset's 'a_b' names) to train; default all")
    m.add_argument("--quality-sampling", choices=("batch", "sample"), default="batch",
                   help="draw one quality per batch (default) or per sample")
    m.add_argument("--depth-loss", choices=("paper", "mse"), default="paper",
                   help="depth distortion: paper (MS-SSIM + edge + L1) or masked mse")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=1000, help="total steps (the schedule's length)")
    o.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after this step with a checkpoint (split a run into jobs; continue "
                        "with --resume)")
    o.add_argument("--batch-size", type=int, default=8, help="per process")
    o.add_argument("--lr", type=float, default=1e-4, help="x0.1 at 75%% and 90%% of the steps")
    o.add_argument("--warmup-steps", type=int, default=0, metavar="STEPS",
                   help="linear learning-rate warm-up (use a few hundred with --init-weights)")
    o.add_argument("--init-weights", metavar="WEIGHTS",
                   help="start from finished weights (e.g. rgbd_codec_ros/models/lite.pt) with a fresh "
                        "optimiser: fine-tuning on your data, or continuing the shipped model")
    o.add_argument("--aux-lr", type=float, default=1e-3)
    o.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int, default=None, help="torch threads per process")
    o.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    r = p.add_argument_group("checkpoints and logs")
    r.add_argument("--checkpoint-dir", metavar="DIR")
    r.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS")
    r.add_argument("--keep-checkpoints", type=int, default=2, metavar="N")
    r.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from CKPT, or without a value from the latest in --checkpoint-dir "
                        "(starts fresh when there is none)")
    r.add_argument("--log-csv", metavar="FILE", help="default: CHECKPOINT_DIR/train_log.csv")
    r.add_argument("--log-every", type=int, default=10, metavar="STEPS")
    r.add_argument("--val-every", type=int, default=500, metavar="STEPS")
    r.add_argument("--val-limit", type=int, default=16, metavar="N",
                   help="validation pairs per source (evenly spaced)")
    r.add_argument("--val-mode", choices=("center", "full"), default="center",
                   help="centre crops of --val-crop, or full frames padded to x64")
    r.add_argument("--val-crop", type=int, default=256)
    r.add_argument("--export", metavar="PATH", help="write finished fp16 weights here at the end")
    r.add_argument("--export-name", metavar="NAME", help="model name in the exported weights")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args):
    from rgbd_codec_ros.training.trainer import TrainConfig
    return TrainConfig(
        data=args.data, nyu_mat=args.nyu_mat, tum=args.tum, sun=args.sun, tum_max_dt=args.tum_max_dt,
        val_source=args.val_source, source_weight=args.source_weight, preset=args.preset,
        variant=args.variant, steps=args.steps, stop_at=args.stop_at, batch_size=args.batch_size, crop=args.crop,
        vflip=args.vflip, lr=args.lr, warmup_steps=args.warmup_steps, init_weights=args.init_weights,
        aux_lr=args.aux_lr, clip=args.clip, qualities=args.qualities,
        quality_sampling=args.quality_sampling, depth_loss=args.depth_loss, seed=args.seed,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, log_csv=args.log_csv,
        log_every=args.log_every, val_every=args.val_every, val_limit=args.val_limit,
        val_mode=args.val_mode, val_crop=args.val_crop, threads=args.threads, workers=args.workers,
        device=args.device, export=args.export, export_name=args.export_name,
        progress=not args.no_progress)


def _fail(cmd: str, exc: Exception) -> int:
    print(f"rgbd-codec {cmd}: error: {exc}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    from rgbd_codec_ros.training.datasets import DatasetError
    from rgbd_codec_ros.training.trainer import TrainError, run_training
    try:
        result = run_training(config_from_args(args))
    except (TrainError, DatasetError) as exc:
        return _fail("train", exc)
    import os
    last = result.get("last") or {}
    if last and os.environ.get("RANK", "0") == "0":
        print(f"done: step {result['step']}, loss {last['loss']:.4g}, bpp {last['bpp_total']:.4f}, "
              f"rgb {last['psnr_rgb']:.2f} dB, depth rmse {last['depth_rmse_mm']:.1f} mm, "
              f"{result['seconds']:.1f} s", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from rgbd_codec_ros.training.datasets import DatasetError
    from rgbd_codec_ros.training.evaluate import EvalError, run_eval_cli
    try:
        return run_eval_cli(args)
    except (EvalError, DatasetError) as exc:
        return _fail("eval", exc)
