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
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_export_parser(sub)
    _add_curve_parser(sub)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train the learned RGB-D model",
                       description="Train the joint RGB-D model. Multi-process: "
                                   "torchrun --nproc_per_node N -m rgbd_codec_ros.training ARGS")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def _add_eval_parser(sub) -> None:
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
    e.add_argument("--weights", metavar="FILE",
                   help="weights for the learned backend: finished weights, or a training snapshot "
                        "(its EMA is frozen and coded as an export of it would be)")
    e.add_argument("--codec-option", nargs="+", default=[], metavar="KEY=VALUE",
                   help="options for registered backends (create_backend): KEY=VALUE for all, "
                        "CODEC.KEY=VALUE for one, e.g. classical.depth_codec=rvl_lossy")
    e.add_argument("--plot", metavar="OUT.png", help="write RD curves here")
    e.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N pairs per source, evenly spaced through it")
    e.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="code only the held-out tail of every source, as rgbd-codec train "
                        "--val-fraction F splits it (the honest held-out set of a training run)")
    e.add_argument("--val-gap", type=int, default=2, metavar="N", help="as for rgbd-codec train")
    e.add_argument("--reference", metavar="CODEC",
                   help="BD-rate reference (default: the first anchor in --codec)")
    e.add_argument("--threads", type=int, default=None, help="torch threads for learned codecs")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)


def _add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="finished weights from a training snapshot",
                       description="Freeze a snapshot's EMA (or --live weights) into the weights file "
                                   "the codec loads: fp16 transforms and the exact entropy path.")
    x.add_argument("snapshot", help="a file written by rgbd-codec train --snapshot")
    x.add_argument("out", help="weights file to write (e.g. rgbd_codec_ros/models/lite.pt)")
    x.add_argument("--name", default="", help="model name in the weights (default: preset[-variant])")
    x.add_argument("--live", action="store_true", help="export the live weights instead of the EMA")
    x.add_argument("--force", action="store_true", help="replace OUT if it exists")
    x.set_defaults(func=cmd_export)


def _add_curve_parser(sub) -> None:
    c = sub.add_parser("curve", help="held-out learning curve of training snapshots or weights",
                       description="Code the held-out frames with each snapshot (or weights file) at "
                                   "the given qualities, to real bytes, and append one CSV row per "
                                   "file and quality: the learning curve of a campaign in one command.")
    _add_data_args(c)
    c.add_argument("--weights", nargs="+", required=True, metavar="FILE",
                   help="snapshots (rgbd-codec train --snapshot) or weights files")
    c.add_argument("--csv", required=True, metavar="OUT.csv", help="rows are appended (one per file and quality)")
    c.add_argument("--val-fraction", type=float, default=0.1, metavar="F")
    c.add_argument("--val-gap", type=int, default=2, metavar="N")
    c.add_argument("--val-source", nargs="+", default=[], metavar="NAME",
                   help="sources held out whole (as in training)")
    c.add_argument("--limit", type=int, default=2, metavar="N", help="held-out pairs per source (default 2)")
    c.add_argument("--quality", nargs="+", type=float, default=[0.0, 3.0], metavar="Q")
    c.add_argument("--label", default="", help="a label for these rows (e.g. the campaign name)")
    c.add_argument("--steps", nargs="+", type=int, default=None, metavar="N",
                   help="the step to record for each file, in order (default: the step the file states; "
                        "e.g. 0 for the weights a campaign started from)")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--plot", metavar="OUT.png", help="draw the whole CSV: RGB PSNR and depth RMSE by step")
    c.set_defaults(func=cmd_curve)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    _add_data_use_args(p)
    _add_model_args(p)
    _add_optimisation_args(p)
    _add_checkpoint_args(p)


def _add_data_use_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data use")
    g.add_argument("--val-source", nargs="+", default=[], metavar="NAME",
                   help="hold these sources out for validation (names or fnmatch patterns)")
    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="hold out the last F of every source's frames (one contiguous block, in time "
                        "order) for validation instead of whole sources; --val-source sources are "
                        "then held out whole on top")
    g.add_argument("--val-gap", type=int, default=2, metavar="N",
                   help="with --val-fraction: frames just before each held-out block used by neither "
                        "side (near-duplicates of validation frames; default 2)")
    g.add_argument("--source-weight", nargs="+", default=[], metavar="NAME=W",
                   help="per-source sampling weight (default 1, per pair), e.g. 'realsense_f200_*=0.3'")
    g.add_argument("--crop", type=int, default=256, help="random crop side (multiple of 64, default 256)")
    g.add_argument("--vflip", action="store_true", help="also flip vertically (horizontal flips always)")
    g.add_argument("--color-jitter", type=float, default=0.0, metavar="S",
                   help="scale colour brightness, contrast and saturation by factors in [1-S, 1+S] "
                        "(e.g. 0.2); depth is never altered (default 0: off)")
    g.add_argument("--workers", type=int, default=0, help="data-loader worker processes")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="lite", help="model size: paper | lite | tiny (default lite)")
    m.add_argument("--variant", default="joint", help="joint | one-way | separate (default joint)")
    m.add_argument("--qualities", nargs="+", default=None, metavar="Q",
                   help="quality indices (or the preset's 'a_b' names) to train; default all")
    m.add_argument("--quality-sampling", choices=("batch", "sample"), default="batch",
                   help="draw one quality per batch (default) or per sample")
    m.add_argument("--depth-loss", choices=("paper", "mse"), default="paper",
                   help="depth distortion: paper (MS-SSIM + edge + L1) or masked mse")


def _add_optimisation_args(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=1000, help="total steps (the schedule's length)")
    o.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after this step with a checkpoint (split a run into jobs; continue "
                        "with --resume)")
    o.add_argument("--batch-size", type=int, default=8, help="per process")
    o.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate (schedule 'step': x0.1 at 75%% and 90%% of the steps)")
    o.add_argument("--schedule", choices=("step", "cosine"), default="step",
                   help="learning rate by step: 'step' (two x0.1 drops) or 'cosine' (from --lr to "
                        "--lr-final over the first --decay-end of --steps, then a long phase at "
                        "--lr-final)")
    o.add_argument("--lr-final", type=float, default=1e-5, help="cosine schedule: final rate")
    o.add_argument("--decay-end", type=float, default=0.7, metavar="FRACTION",
                   help="cosine schedule: fraction of --steps where the decay ends (default 0.7)")
    o.add_argument("--ema-decay", type=float, default=0.0, metavar="D",
                   help="keep an exponential moving average of the weights (e.g. 0.999): it is what "
                        "validation measures and what --export and snapshots write; 0 = off")
    o.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly (checkpoint, snapshot) after this much wall time; the "
                        "schedule still follows the steps")
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


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("checkpoints and logs")
    r.add_argument("--checkpoint-dir", metavar="DIR")
    r.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS")
    r.add_argument("--keep-checkpoints", type=int, default=2, metavar="N")
    r.add_argument("--snapshot", metavar="FILE",
                   help="fp16 weights + EMA at the current step, rewritten every --snapshot-every "
                        "steps and at the end (small enough to commit). With --resume, training "
                        "continues from it (fresh optimiser, --warmup-steps) when it is newer than "
                        "the latest checkpoint")
    r.add_argument("--snapshot-every", type=int, default=1000, metavar="STEPS")
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
        val_source=args.val_source, val_fraction=args.val_fraction, val_gap=args.val_gap,
        source_weight=args.source_weight, preset=args.preset,
        schedule=args.schedule, lr_final=args.lr_final, decay_end=args.decay_end,
        ema_decay=args.ema_decay, time_budget_s=args.time_budget, snapshot=args.snapshot,
        snapshot_every=args.snapshot_every,
        variant=args.variant, steps=args.steps, stop_at=args.stop_at, batch_size=args.batch_size, crop=args.crop,
        vflip=args.vflip, color_jitter=args.color_jitter, lr=args.lr, warmup_steps=args.warmup_steps, init_weights=args.init_weights,
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


def cmd_export(args) -> int:
    import os
    from rgbd_codec_ros.training.snapshots import export_snapshot
    from rgbd_codec_ros.training.trainer import TrainError
    if os.path.exists(args.out) and not args.force:
        return _fail("export", TrainError(f"{args.out} exists; pass --force to replace it"))
    if os.path.exists(args.out) and os.path.realpath(args.out) == os.path.realpath(args.snapshot):
        return _fail("export", TrainError("the output would replace the snapshot itself"))
    try:
        model_id, info = export_snapshot(args.snapshot, args.out, args.name, ema=not args.live)
    except (TrainError, OSError) as exc:
        return _fail("export", exc)
    print(f"exported {args.out} ({model_id}) from step {info['step']} ({info['weights']} weights)")
    return 0


def cmd_curve(args) -> int:
    from rgbd_codec_ros.training.curve import CurveError, run_curve
    from rgbd_codec_ros.training.datasets import DatasetError
    try:
        return run_curve(args)
    except (CurveError, DatasetError) as exc:
        return _fail("curve", exc)


def cmd_eval(args) -> int:
    from rgbd_codec_ros.training.datasets import DatasetError
    from rgbd_codec_ros.training.evaluate import EvalError, run_eval_cli
    try:
        return run_eval_cli(args)
    except (EvalError, DatasetError) as exc:
        return _fail("eval", exc)
