"""Training loop of the joint RGB-D model: schedule, checkpoints, exact resume, DDP, logs.

Reproducibility: every random choice of step ``s`` is derived from (seed, s, rank): the training
pairs, crops and flips (``TrainCrops``), the quality index, and the torch / numpy / python
generators, which are re-seeded at the start of each step (the model's additive-noise
quantisation draws from torch's generator). A run of N steps and a run of N/2 steps resumed
for N/2 more therefore see identical batches and noise and, on the same machine and thread
count, end with identical weights. The checkpoint stores the model, both optimisers, the
schedule, the step and every rank's generator states; the states are restored on resume
(so code drawing random numbers outside the step sees the same streams), although the
per-step re-seeding alone already makes the resume exact, also with data-loader workers.

Distributed: launched by ``torchrun`` (WORLD_SIZE > 1), each rank takes its own slots of the
same global batch (``--batch-size`` is per rank), gradients of the main and auxiliary
parameters are averaged with bucketed ``all_reduce`` (gloo on CPU, nccl on CUDA), so all
ranks apply the same update. (The auxiliary quantile parameters take no part in the forward
pass, which is why the gradients are reduced by hand rather than by
``DistributedDataParallel``'s hooks.) Rank 0 writes logs, checkpoints and exports and runs
validation while the other ranks wait.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import fnmatch
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from rgbd_codec_ros.codec.learned.model import _FROZEN_ONLY

from . import datasets as ds
from .old_checkpoints import drop_retired
from .losses import RateDistortionLoss, masked_mse, psnr

CKPT_FORMAT = "rgbd-codec-train/1"
#: fp16 weights + their EMA at a step: small enough to commit, resumed with a fresh optimiser
SNAPSHOT_FORMAT = "rgbd-codec-snapshot/1"
SCHEDULES = ("step", "cosine")
LOG_FIELDS = ["step", "quality", "loss", "bpp_rgb", "bpp_depth", "bpp_total", "psnr_rgb",
              "depth_rmse_mm", "aux_loss", "grad_norm", "lr", "time"]
VAL_FIELDS = ["step", "quality", "loss", "bpp_rgb", "bpp_depth", "bpp_total", "psnr_rgb",
              "depth_rmse_mm", "depth_psnr_db", "images"]


#: buffers only a frozen model fills (the exact path, coder tables): derived again at export
_FROZEN_ONLY_BUFFERS = _FROZEN_ONLY


def _keep_fp32(name: str) -> bool:
    """Snapshot tensors that fp16 would damage: quantiles and gains steer the rate directly, and
    the likelihood / scale lower bounds (1e-9) are not representable in fp16."""
    return (name.endswith((".quantiles", ".bound")) or ".log_gain." in name
            or ".log_inv_gain." in name)


class TrainError(ValueError):
    """Bad training arguments or state; the message says what to fix."""


@dataclass
class TrainConfig:
    data: List[str] = field(default_factory=list)
    nyu_mat: List[str] = field(default_factory=list)
    tum: List[str] = field(default_factory=list)
    sun: List[str] = field(default_factory=list)
    tum_max_dt: float = 0.02
    val_source: List[str] = field(default_factory=list)
    val_fraction: Optional[float] = None
    val_gap: int = 2
    source_weight: List[str] = field(default_factory=list)
    preset: str = "lite"
    variant: str = "joint"
    steps: int = 1000
    stop_at: Optional[int] = None
    batch_size: int = 8
    crop: int = 256
    vflip: bool = False
    color_jitter: float = 0.0
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_milestones: Sequence[float] = (0.75, 0.9)
    schedule: str = "step"
    lr_final: float = 1e-5
    decay_end: float = 0.7
    warmup_steps: int = 0
    ema_decay: float = 0.0
    time_budget_s: Optional[float] = None
    snapshot: Optional[str] = None
    snapshot_every: int = 1000
    init_weights: Optional[str] = None
    clip: float = 1.0
    qualities: Optional[List[str]] = None
    quality_sampling: str = "batch"
    depth_loss: str = "paper"
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: Optional[str] = None
    log_csv: Optional[str] = None
    log_every: int = 10
    val_every: int = 500
    val_limit: int = 16
    val_mode: str = "center"
    val_crop: int = 256
    threads: Optional[int] = None
    workers: int = 0
    device: str = "cpu"
    export: Optional[str] = None
    export_name: Optional[str] = None
    progress: bool = True


# --------------------------------------------------------------------------- helpers
def _derived_seed(*ints: int) -> int:
    return int(ds.seed_for(*ints).integers(0, 2 ** 63 - 1))


def reseed_all(seed: int, step: int, rank: int) -> None:
    s = _derived_seed(seed, step, rank, 0x5EED)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)


def rng_state() -> Dict:
    # plain tuples, ints and tensors only: checkpoints load with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": random.getstate(),
          "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = st["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def lr_at(step: int, cfg: TrainConfig, warmup_from: int = 0) -> float:
    """Learning rate of ``step``: a function of the step alone (never of the clock), so a run
    split over sessions follows the same schedule. ``warmup_from`` is the step at which the
    current optimiser started (0, or the step of a resumed snapshot)."""
    if cfg.schedule == "cosine":
        # cosine from lr down to lr_final over the first decay_end of the steps, then a long
        # phase at lr_final (on CPU continuations the held-out gains came in low-lr phases)
        end = max(1.0, cfg.decay_end * cfg.steps)
        t = min(step / end, 1.0)
        lr = cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        lr = cfg.lr
        for frac in cfg.lr_milestones:
            if step >= int(round(frac * cfg.steps)):
                lr *= 0.1
    since = step - warmup_from
    if 0 <= since < cfg.warmup_steps:   # linear ramp: a fresh Adam's first updates are +-lr per weight
        lr *= (since + 1) / (cfg.warmup_steps + 1)
    return lr


def atomic_torch_save(obj, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The checkpoint named by ``ckpt_dir/latest``: a plain file name inside the folder, never a
    path that leads elsewhere (the pointer may come with a folder from elsewhere)."""
    pointer = os.path.join(ckpt_dir, "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer, errors="replace") as fh:
        name = fh.read(256).strip()
    if not name or name != os.path.basename(name) or name in (".", "..") or "\0" in name:
        raise TrainError(f"{pointer} names {name!r}, which is not a checkpoint file inside "
                         f"{ckpt_dir}; delete the pointer or fix it")
    path = os.path.join(ckpt_dir, name)
    if os.path.islink(path) and os.path.dirname(os.path.realpath(path)) != os.path.realpath(ckpt_dir):
        raise TrainError(f"{path} is a link out of {ckpt_dir}; refusing to follow it")
    return path if os.path.isfile(path) else None


def safe_torch_load(path: str, what: str):
    """``torch.load`` that never runs code from the file: tensors, numbers, strings and
    containers only (checkpoints and snapshots are written that way)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # UnpicklingError, EOFError, RuntimeError (zip), ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"cannot read {what} {path}: {first[:300]}") from None


def resolve_qualities(model, names: Optional[Sequence[str]]) -> List[int]:
    """--qualities entries: an index (0..num_qualities-1) or an 'a_b' name of the preset."""
    n = model.num_qualities
    known = list(getattr(getattr(model, "preset", None), "qualities", []) or [])
    if not names:
        return list(range(n))
    out = []
    for q in names:
        q = str(q)
        if q in known:
            out.append(known.index(q))
            continue
        try:
            i = int(q)
        except ValueError:
            raise TrainError(f"--qualities {q!r}: not an index 0..{n - 1} nor one of "
                             f"{', '.join(known)}") from None
        if not 0 <= i < n:
            raise TrainError(f"--qualities {q!r}: index must be 0..{n - 1}")
        out.append(i)
    return sorted(set(out))


def _allreduce_mean(tensors: List[torch.Tensor], world: int, bucket_bytes: int = 32 << 20) -> None:
    """Average tensors across ranks in place, in flat buckets."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
    bucket, size = [], 0

    def flush(b):
        flat = _flatten_dense_tensors(b)
        dist.all_reduce(flat)
        flat /= world
        for t, r in zip(b, _unflatten_dense_tensors(flat, b)):
            t.copy_(r)

    for t in tensors:
        bucket.append(t)
        size += t.numel() * t.element_size()
        if size >= bucket_bytes:
            flush(bucket)
            bucket, size = [], 0
    if bucket:
        flush(bucket)


def _grads(params) -> List[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


# --------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: TrainConfig, model_factory: Optional[Callable] = None):
        self.cfg = cfg
        self._validate_cfg()
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.world > 1
        if cfg.device == "cuda":
            if not torch.cuda.is_available():
                raise TrainError("--device cuda: no CUDA device is available here; use --device cpu")
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        elif cfg.device == "cpu":
            self.device = torch.device("cpu")
        else:
            raise TrainError(f"--device must be cpu or cuda, got {cfg.device!r}")
        threads = cfg.threads or (max(1, (os.cpu_count() or 1) // self.world) if self.distributed else None)
        if threads:
            torch.set_num_threads(int(threads))
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo",
                                    timeout=datetime.timedelta(hours=2))
        self.is_main = self.rank == 0

        torch.manual_seed(cfg.seed)
        if model_factory is None:
            from rgbd_codec_ros.codec.learned.model import build_model
            model_factory = build_model
        try:
            self.model = model_factory(cfg.preset, cfg.variant)
        except ValueError as exc:
            raise TrainError(str(exc)) from exc
        if cfg.init_weights:
            self._init_from_weights(cfg.init_weights)
        self.model.to(self.device)
        self.depth_range_m = float(self.model.depth_range_m)
        self.qualities = resolve_qualities(self.model, cfg.qualities)
        self.lambdas = list(self.model.lambdas)
        self.main_params = [p for p in self.model.main_parameters() if p.requires_grad]
        self.aux_params = [p for p in self.model.aux_parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.main_params, lr=cfg.lr)
        self.aux_opt = torch.optim.Adam(self.aux_params, lr=cfg.aux_lr)
        self.criterion = RateDistortionLoss(cfg.depth_loss)
        self.step = 0
        self.warmup_from = 0        # step at which the current optimiser started
        self.ema: Optional[Dict[str, torch.Tensor]] = None
        self.ema_updates = 0
        if cfg.ema_decay > 0:
            self.ema = {n: p.detach().clone() for n, p in self._named_main()}
        self._stop_reason: Optional[str] = None

        sources = ds.discover(cfg.data, nyu=cfg.nyu_mat, tum=cfg.tum, sun=cfg.sun, max_dt=cfg.tum_max_dt)
        if cfg.val_fraction:
            held = [s for s in sources if not any(fnmatch.fnmatchcase(s.name, p) for p in cfg.val_source)]
            whole = [s for s in sources if s not in held]
            self.train_sources, self.val_sources = ds.split_within_sources(held, cfg.val_fraction,
                                                                           cfg.val_gap)
            self.val_sources += whole
        else:
            self.train_sources, self.val_sources = ds.split_sources(sources, cfg.val_source)
        weights = ds.parse_source_weights(cfg.source_weight)
        self.train_pairs, self.train_probs = ds.pair_weights(self.train_sources, weights)
        self.source_weights = weights
        val_pairs = ds.evenly_spaced([p for s in self.val_sources for p in s.pairs], cfg.val_limit)
        self.val_set = ds.ValFrames(val_pairs, self.depth_range_m, cfg.val_mode, cfg.val_crop) \
            if val_pairs else None

        if self.distributed:  # identical start on every rank
            with torch.no_grad():
                for t in list(self.model.state_dict().values()):
                    if t.numel():
                        dist.broadcast(t, 0)

        self.ckpt_dir = cfg.checkpoint_dir
        if self.ckpt_dir and self.is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        self.log_csv = cfg.log_csv or (os.path.join(self.ckpt_dir, "train_log.csv") if self.ckpt_dir else None)
        self.val_csv = (os.path.splitext(self.log_csv)[0].replace("train_log", "val_log") + ".csv"
                        if self.log_csv else None)
        if self.log_csv and self.val_csv == self.log_csv:
            self.val_csv = os.path.splitext(self.log_csv)[0] + "_val.csv"
        self.rng_states_loaded = False
        if cfg.resume:
            self._resume(cfg.resume)

    # ---------------------------------------------------------------- config
    def _validate_cfg(self):
        c = self.cfg
        if c.steps < 0:
            raise TrainError("--steps must be >= 0")
        if c.stop_at is not None and c.stop_at < 1:
            raise TrainError("--stop-at must be >= 1")
        if c.batch_size < 1:
            raise TrainError("--batch-size must be >= 1")
        if c.crop % 64 or c.crop < 128:
            raise TrainError(f"--crop must be a multiple of 64 and >= 128, got {c.crop}")
        if c.val_crop % 64 or c.val_crop < 128:
            raise TrainError(f"--val-crop must be a multiple of 64 and >= 128, got {c.val_crop}")
        if c.quality_sampling not in ("batch", "sample"):
            raise TrainError("--quality-sampling must be 'batch' or 'sample'")
        if c.depth_loss not in ("paper", "mse"):
            raise TrainError("--depth-loss must be 'paper' or 'mse'")
        if c.lr <= 0 or c.aux_lr <= 0 or c.clip <= 0:
            raise TrainError("--lr, --aux-lr and --clip must be > 0")
        if c.checkpoint_every < 1 or c.log_every < 1 or c.val_every < 1:
            raise TrainError("--checkpoint-every, --log-every and --val-every must be >= 1")
        if c.resume and c.resume != "auto" and not os.path.isfile(c.resume):
            raise TrainError(f"--resume {c.resume}: no such checkpoint file")
        if c.resume == "auto" and not c.checkpoint_dir:
            raise TrainError("--resume without a path needs --checkpoint-dir")
        if c.warmup_steps < 0:
            raise TrainError("--warmup-steps must be >= 0")
        if c.init_weights and not os.path.isfile(c.init_weights):
            raise TrainError(f"--init-weights {c.init_weights}: no such weights file")
        if c.schedule not in SCHEDULES:
            raise TrainError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
        if c.lr_final <= 0 or c.lr_final > c.lr:
            raise TrainError("--lr-final must be > 0 and at most --lr")
        if not 0.0 < c.decay_end <= 1.0:
            raise TrainError("--decay-end must be in (0, 1]")
        if not 0.0 <= c.ema_decay < 1.0:
            raise TrainError("--ema-decay must be in [0, 1) (0 = no EMA)")
        if c.time_budget_s is not None and c.time_budget_s <= 0:
            raise TrainError("--time-budget must be > 0 seconds")
        if c.snapshot_every < 1:
            raise TrainError("--snapshot-every must be >= 1")
        if c.val_fraction is not None and not 0.0 < c.val_fraction < 1.0:
            raise TrainError("--val-fraction must be between 0 and 1 (exclusive)")

    def _compat_config(self) -> Dict:
        c = self.cfg
        return {"preset": c.preset, "variant": c.variant, "batch_size": c.batch_size, "crop": c.crop,
                "seed": c.seed, "qualities": self.qualities, "quality_sampling": c.quality_sampling,
                "depth_loss": c.depth_loss, "world_size": self.world, "steps": c.steps,
                "lr": c.lr, "warmup_steps": c.warmup_steps, "vflip": c.vflip,
                "color_jitter": c.color_jitter, "schedule": c.schedule, "lr_final": c.lr_final, "decay_end": c.decay_end,
                "ema_decay": c.ema_decay, "val_fraction": c.val_fraction, "val_gap": c.val_gap,
                "train_sources": [s.name for s in self.train_sources],
                "source_weights": self.source_weights}

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> Dict:
        states = [rng_state()]
        if self.distributed:
            states = [None] * self.world
            dist.all_gather_object(states, rng_state())
        return {"format": CKPT_FORMAT, "step": self.step, "config": self._compat_config(),
                "full_config": dataclasses.asdict(self.cfg),
                "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "aux_opt": self.aux_opt.state_dict(),
                "schedule": {"base_lr": self.cfg.lr, "milestones": list(self.cfg.lr_milestones),
                             "steps": self.cfg.steps, "lr": lr_at(self.step, self.cfg, self.warmup_from),
                             "warmup_from": self.warmup_from},
                "ema": self.ema, "ema_updates": self.ema_updates,
                "rng": states}

    def save_checkpoint(self) -> Optional[str]:
        if not self.ckpt_dir:
            return None
        state = self.checkpoint_state()      # collective: every rank takes part
        if not self.is_main:
            return None
        name = f"step_{self.step:08d}.pt"
        path = os.path.join(self.ckpt_dir, name)
        atomic_torch_save(state, path)
        _atomic_write_text(os.path.join(self.ckpt_dir, "latest"), name + "\n")
        old = sorted(f for f in os.listdir(self.ckpt_dir) if f.startswith("step_") and f.endswith(".pt"))
        for f in old[:-max(1, self.cfg.keep_checkpoints)]:
            try:
                os.remove(os.path.join(self.ckpt_dir, f))
            except OSError:
                pass
        return path

    def _init_from_weights(self, path: str) -> None:
        """Start from finished weights (fine-tuning); a checkpoint resumed later overrides them."""
        from rgbd_codec_ros.codec.learned.weights_io import load_model
        try:
            finished, meta = load_model(path)
        except Exception as exc:
            raise TrainError(f"--init-weights {path}: not readable as finished weights ({exc})") from exc
        embedded = finished.variant == "separate" and self.cfg.variant != "separate"
        try:
            if embedded:
                # the cross-modal model contains the separate one: start from exactly its function
                from .variant_init import embed_separate
                embed_separate(self.model, finished)
                self.model.frozen = False
            else:
                self.model.load_trainable_state(finished)
        except ValueError as exc:
            raise TrainError(f"--init-weights {path} ({meta['model_id']}) does not fit --preset "
                             f"{self.cfg.preset} --variant {self.cfg.variant}: {exc}") from exc
        if self.is_main:
            how = (f", embedded in {self.cfg.variant}: cross-modal paths start at zero weight"
                   if embedded else "")
            print(f"initialised from {meta['model_id']} ({meta.get('steps')} steps{how})", file=sys.stderr)

    def _resume(self, spec: str) -> None:
        path = spec
        if spec == "auto":
            path = latest_checkpoint(self.ckpt_dir)
            snap = self.cfg.snapshot if self.cfg.snapshot and os.path.isfile(self.cfg.snapshot) else None
            if snap is not None:
                snap_state = safe_torch_load(snap, "snapshot")
                ck_step = int(safe_torch_load(path, "checkpoint").get("step", -1)) if path else -1
                if isinstance(snap_state, dict) and snap_state.get("format") == SNAPSHOT_FORMAT and \
                        int(snap_state.get("step", -1)) > ck_step:
                    self._resume_snapshot(snap, snap_state)   # e.g. a new machine: the committed one
                    return
            if path is None:
                if self.is_main:
                    print(f"--resume: no checkpoint in {self.ckpt_dir} yet; starting from "
                          f"{'--init-weights' if self.cfg.init_weights else 'step 0'}", file=sys.stderr)
                return
        state = safe_torch_load(path, "checkpoint")
        if isinstance(state, dict) and state.get("format") == SNAPSHOT_FORMAT:
            self._resume_snapshot(path, state)
            return
        if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
            raise TrainError(f"{path} is not a training checkpoint or snapshot of this tool "
                             "(finished weights: use --init-weights)")
        saved, now = state["config"], self._compat_config()
        for key in ("preset", "variant"):
            if saved[key] != now[key]:
                raise TrainError(f"checkpoint {path} was trained with --{key} {saved[key]}, "
                                 f"not {now[key]}")
        diffs = [k for k in now if k not in ("preset", "variant") and saved.get(k) != now[k]]
        if diffs and self.is_main:
            print("warning: resuming with changed " + ", ".join(
                f"{k} ({saved.get(k)} -> {now[k]})" for k in diffs) + "; the run will not repeat the "
                "original one exactly", file=sys.stderr)
        state = drop_retired(state, self.model)     # a run saved by older code
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.aux_opt.load_state_dict(state["aux_opt"])
        self.step = int(state["step"])
        self.warmup_from = int((state.get("schedule") or {}).get("warmup_from", 0))
        if self.ema is not None:
            if state.get("ema"):
                self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
                self.ema_updates = int(state.get("ema_updates", 0))
            else:
                self.ema = {n: p.detach().clone() for n, p in self._named_main()}
        rng = state.get("rng") or []
        if len(rng) == self.world:
            set_rng_state(rng[self.rank])
            self.rng_states_loaded = True
        if self.is_main:
            print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # ---------------------------------------------------------------- EMA and snapshots
    def _named_main(self):
        return [(n, p) for n, p in self.model.named_parameters()
                if not n.endswith(".quantiles") and p.requires_grad]

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        self.ema_updates += 1
        # the usual warm-up of the decay, so an EMA started from fresh weights follows them early
        d = min(self.cfg.ema_decay, (1.0 + self.ema_updates) / (10.0 + self.ema_updates))
        for n, p in self._named_main():
            self.ema[n].mul_(d).add_(p.detach(), alpha=1.0 - d)

    @contextlib.contextmanager
    def ema_weights(self):
        """Swap the EMA into the model (validation, export), then the live weights back."""
        if self.ema is None:
            yield
            return
        live = {n: p.detach().clone() for n, p in self._named_main()}
        params = dict(self._named_main())
        with torch.no_grad():
            for n, v in self.ema.items():
                params[n].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, v in live.items():
                    params[n].copy_(v)

    def snapshot_state(self) -> Dict:
        def half(sd):
            return {k: (v.detach().cpu().half() if v.is_floating_point() and not _keep_fp32(k)
                        else v.detach().cpu()) for k, v in sd.items()}
        model = {k: v for k, v in self.model.state_dict().items()
                 if k.rsplit(".", 1)[-1] not in _FROZEN_ONLY_BUFFERS}
        return {"format": SNAPSHOT_FORMAT, "step": self.step, "config": self._compat_config(),
                "model": half(model), "ema": half(self.ema) if self.ema is not None else None,
                "ema_updates": self.ema_updates,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    def save_snapshot(self, path: Optional[str] = None) -> Optional[str]:
        path = path or self.cfg.snapshot
        if not path or not self.is_main:
            return None
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_torch_save(self.snapshot_state(), path)
        return path

    def _resume_snapshot(self, path: str, state: Dict) -> None:
        saved = state.get("config") or {}
        for key in ("preset", "variant"):
            if saved.get(key) != self._compat_config()[key]:
                raise TrainError(f"snapshot {path} was trained with --{key} {saved.get(key)}, "
                                 f"not {self._compat_config()[key]}")
        state = drop_retired(state, self.model)     # a snapshot written by older code
        own = self.model.state_dict()
        model = state.get("model") or {}
        bad = [k for k, v in model.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
        missing = [k for k in own if k not in model and k.rsplit(".", 1)[-1] not in _FROZEN_ONLY_BUFFERS
                   and not k.endswith(".bound")]
        if bad or missing:
            raise TrainError(f"snapshot {path} does not fit --preset {self.cfg.preset} --variant "
                             f"{self.cfg.variant}: {(bad + missing)[:3]}")
        with torch.no_grad():
            for k, v in model.items():
                if not k.endswith(".bound"):      # constants of the architecture, not trained
                    own[k].copy_(v.to(own[k].dtype))
        if self.ema is not None:
            ema = state.get("ema")
            names = dict(self._named_main())
            if ema and set(ema) == set(names):
                self.ema = {k: v.to(names[k].dtype).to(self.device) for k, v in ema.items()}
                self.ema_updates = int(state.get("ema_updates", 0))
            else:
                self.ema = {n: p.detach().clone() for n, p in self._named_main()}
        self.step = int(state["step"])
        self.warmup_from = self.step           # a fresh optimiser: warm up again from here
        if self.is_main:
            print(f"resumed from snapshot {path} at step {self.step} (fresh optimiser, "
                  f"{self.cfg.warmup_steps} warm-up steps)", file=sys.stderr)

    def request_stop(self, reason: str) -> None:
        """Finish the current step, then checkpoint, snapshot and return (SIGTERM, budget)."""
        self._stop_reason = reason

    # ---------------------------------------------------------------- data
    def _loader(self):
        c = self.cfg
        data = ds.TrainCrops(self.train_pairs, self.train_probs, c.crop, c.batch_size,
                             self.depth_range_m, c.seed, self.rank, self.world, True, c.vflip,
                             c.color_jitter)
        sampler = range(self.step * c.batch_size, c.steps * c.batch_size)
        return torch.utils.data.DataLoader(
            data, batch_size=c.batch_size, sampler=sampler, num_workers=c.workers,
            pin_memory=self.device.type == "cuda", drop_last=False)

    def quality_for_step(self, step: int):
        rng = ds.seed_for(self.cfg.seed, step, 0x9A11)
        if self.cfg.quality_sampling == "batch":
            return int(self.qualities[int(rng.integers(len(self.qualities)))])
        q = rng.integers(len(self.qualities), size=self.cfg.batch_size * self.world)
        mine = q[self.rank * self.cfg.batch_size:(self.rank + 1) * self.cfg.batch_size]
        return torch.tensor([self.qualities[int(i)] for i in mine], dtype=torch.long)

    # ---------------------------------------------------------------- one step
    def train_step(self, batch: Dict, step: int) -> Dict[str, float]:
        c = self.cfg
        self.model.train()
        rgb = batch["rgb"].to(self.device, non_blocking=True)
        depth = batch["depth"].to(self.device, non_blocking=True)
        valid = batch["valid"].to(self.device, non_blocking=True)
        q = self.quality_for_step(step)
        if isinstance(q, int):
            lam_r = torch.tensor(self.lambdas[q][0], device=self.device)
            lam_d = torch.tensor(self.lambdas[q][1], device=self.device)
            q_in = q
        else:
            lam_r = torch.tensor([self.lambdas[int(i)][0] for i in q], device=self.device)
            lam_d = torch.tensor([self.lambdas[int(i)][1] for i in q], device=self.device)
            q_in = q.to(self.device)
        lr = lr_at(step, c, self.warmup_from)
        for g in self.opt.param_groups:
            g["lr"] = lr

        out = self.model(rgb, depth, q_in)
        terms = self.criterion(out, rgb, depth, valid, lam_r, lam_d)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if self.distributed:
            _allreduce_mean(_grads(self.main_params), self.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.main_params, c.clip)

        aux = self.model.aux_loss()
        self.aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        if self.distributed:
            _allreduce_mean(_grads(self.aux_params), self.world)

        stats = torch.stack([terms["loss"].detach(), terms["bpp_rgb"].detach(),
                             terms["bpp_depth"].detach(), terms["psnr_rgb"].detach(),
                             terms["depth_mse_norm"].detach(), aux.detach(),
                             grad_norm.detach().to(terms["loss"].dtype)]).double()
        if self.distributed:
            dist.all_reduce(stats)
            stats /= self.world
        finite = bool(torch.isfinite(stats[:2]).all() and torch.isfinite(stats[6]))
        if finite:            # the same decision on every rank (stats are reduced)
            self.opt.step()
            self.aux_opt.step()
            self._update_ema()
        s = stats.cpu().tolist()
        return {"quality": q if isinstance(q, int) else "mixed", "loss": s[0], "bpp_rgb": s[1],
                "bpp_depth": s[2], "bpp_total": s[1] + s[2], "psnr_rgb": s[3],
                "depth_rmse_mm": math.sqrt(max(s[4], 0.0)) * self.depth_range_m * 1000.0,
                "aux_loss": s[5], "grad_norm": s[6], "lr": lr, "skipped": not finite}

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> List[Dict]:
        """Held-out rate (estimated from the likelihoods) and distortion of the EMA weights when
        there is an EMA (what gets exported), else of the live weights."""
        if self.val_set is None:
            return []
        with self.ema_weights():
            return self._validate()

    def _validate(self) -> List[Dict]:
        self.model.eval()
        rows = []
        for q in self.qualities:
            acc = {k: 0.0 for k in ("loss", "bpp_rgb", "bpp_depth", "psnr_rgb", "dmse", "dpsnr")}
            n = 0
            ndp = 0
            for i in range(len(self.val_set)):
                item = self.val_set[i]
                rgb = item["rgb"][None].to(self.device)
                depth = item["depth"][None].to(self.device)
                valid = item["valid"][None].to(self.device)
                out = self.model(rgb, depth, q)
                h, w = (int(v) for v in item["hw"])
                x_r = out["x_hat"]["rgb"][..., :h, :w]
                x_d = out["x_hat"]["depth"][..., :h, :w]
                rgb, depth, valid = rgb[..., :h, :w], depth[..., :h, :w], valid[..., :h, :w]
                crop_out = {"x_hat": {"rgb": x_r, "depth": x_d}, "likelihoods": out["likelihoods"]}
                t = self.criterion(crop_out, rgb, depth, valid, self.lambdas[q][0], self.lambdas[q][1])
                mse_c = float(((x_r.clamp(0, 1) - rgb) ** 2).mean())
                dm = float(masked_mse(x_d.clamp(0, 1), depth, valid))
                acc["loss"] += float(t["loss"])
                acc["bpp_rgb"] += float(t["bpp_rgb"])
                acc["bpp_depth"] += float(t["bpp_depth"])
                acc["psnr_rgb"] += psnr(mse_c)
                if float(valid.sum()) > 0:
                    acc["dmse"] += dm
                    acc["dpsnr"] += psnr(max(dm, 1e-12))
                    ndp += 1
                n += 1
            rows.append({"step": self.step, "quality": q, "loss": acc["loss"] / n,
                         "bpp_rgb": acc["bpp_rgb"] / n, "bpp_depth": acc["bpp_depth"] / n,
                         "bpp_total": (acc["bpp_rgb"] + acc["bpp_depth"]) / n,
                         "psnr_rgb": acc["psnr_rgb"] / n,
                         "depth_rmse_mm": math.sqrt(acc["dmse"] / max(ndp, 1)) * self.depth_range_m * 1000,
                         "depth_psnr_db": acc["dpsnr"] / max(ndp, 1), "images": n})
        self.model.train()
        return rows

    # ---------------------------------------------------------------- logs
    def _prepare_csv(self, path: str, fields: List[str], keep_upto: int) -> None:
        """Create the CSV, or keep only rows with step <= keep_upto (later ones will be redone)."""
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        rows = []
        if self.step > 0 and os.path.isfile(path):
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= keep_upto]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in fields})

    @staticmethod
    def _append_csv(path: str, fields: List[str], row: Dict) -> None:
        with open(path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writerow(
                {k: (f"{row[k]:.9g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in fields})

    # ---------------------------------------------------------------- main loop
    def fit(self) -> Dict:
        self._open_logs()
        bar = self._progress_bar()
        t0 = time.time()
        first_step = self.step
        with self._stop_on_sigterm():
            try:
                last = self._run_steps(bar, t0, first_step)
            except KeyboardInterrupt:
                if not self.distributed and self.ckpt_dir and self.step > first_step:
                    path = self.save_checkpoint()
                    print(f"interrupted: checkpoint {path} written at step {self.step}", file=sys.stderr)
                raise
            finally:
                if bar is not None:
                    bar.close()
        return self._end_of_run(first_step, last, t0)

    def _open_logs(self) -> None:
        if not (self.is_main and self.log_csv):
            return
        # train rows are numbered by the step they ran (0-based), validation rows by the
        # number of steps done before them
        self._prepare_csv(self.log_csv, LOG_FIELDS, self.step - 1)
        if self.val_csv and self.val_set is not None:
            self._prepare_csv(self.val_csv, VAL_FIELDS, self.step)

    def _progress_bar(self):
        c = self.cfg
        if not (self.is_main and c.progress):
            return None
        from tqdm import tqdm
        return tqdm(total=c.steps, initial=self.step, unit="step", dynamic_ncols=True,
                    desc=f"train {c.preset}/{c.variant}", file=sys.stderr)

    @contextlib.contextmanager
    def _stop_on_sigterm(self):
        """SIGTERM (a session ending, a job scheduler) finishes the step, then checkpoints."""
        previous_term = None
        if threading_is_main():
            previous_term = signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        try:
            yield
        finally:
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)

    def _run_steps(self, bar, t0: float, first_step: int) -> Dict:
        """Train until the last step (--steps, --stop-at) or a stop request; the last step's stats.

        Everything a step draws comes from its number (re-seeded generators, the loader's sampler
        from the current step, the schedule), which is what makes resumed and lockstep runs repeat."""
        c = self.cfg
        last = {}
        end = c.steps if c.stop_at is None else min(c.steps, c.stop_at)
        loader = iter(self._loader()) if self.step < end else iter(())
        while self.step < end and self._stop_reason is None:
            step = self.step
            reseed_all(c.seed, step, self.rank)
            batch = next(loader)
            last = self.train_step(batch, step)
            self.step = step + 1
            if self.is_main:
                self._log_train_row(step, last, bar, t0, first_step)
            self._validate_if_due(bar)
            self._save_if_due(end)
            if c.time_budget_s is not None and time.time() - t0 >= c.time_budget_s:
                self.request_stop(f"time budget of {c.time_budget_s:g} s reached")
        if self._stop_reason and self.is_main:
            print(f"stopping at step {self.step}: {self._stop_reason}", file=sys.stderr)
        return last

    def _log_train_row(self, step: int, row: Dict, bar, t0: float, first_step: int) -> None:
        c = self.cfg
        if self.log_csv and (step % c.log_every == 0 or self.step == c.steps):
            self._append_csv(self.log_csv, LOG_FIELDS, dict(row, step=step, time=time.time() - t0))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3g}", bpp=f"{row['bpp_total']:.3f}",
                            psnr=f"{row['psnr_rgb']:.2f}",
                            pairs_s=f"{c.batch_size * self.world * (self.step - first_step) / max(time.time() - t0, 1e-9):.2f}")
        if row.get("skipped"):
            print(f"warning: step {step}: non-finite loss, update skipped", file=sys.stderr)

    def _validate_if_due(self, bar) -> None:
        """Every --val-every steps and after the last: rank 0 validates while the others wait."""
        c = self.cfg
        if self.val_set is None or not (self.step % c.val_every == 0 or self.step == c.steps):
            return
        if self.is_main:
            for row in self.validate():
                if self.val_csv:
                    self._append_csv(self.val_csv, VAL_FIELDS, row)
                if bar is not None:
                    bar.write(f"val step {row['step']} q{row['quality']}: "
                              f"bpp {row['bpp_total']:.4f} rgb {row['psnr_rgb']:.2f} dB "
                              f"depth rmse {row['depth_rmse_mm']:.1f} mm")
        if self.distributed:
            dist.barrier()

    def _save_if_due(self, end: int) -> None:
        """The periodic checkpoint and snapshot (the last step's are written by ``_end_of_run``)."""
        c = self.cfg
        if self.step % c.checkpoint_every == 0 and self.step < end:
            self.save_checkpoint()
        if self.step % c.snapshot_every == 0 and self.step < end:
            self.save_snapshot()

    def _end_of_run(self, first_step: int, last: Dict, t0: float) -> Dict:
        """Final checkpoint and snapshot, the export once every step is done; the run's result."""
        c = self.cfg
        if self.step > first_step:       # the same decision on every rank (collective save)
            self.save_checkpoint()
            self.save_snapshot()
        result = {"step": self.step, "last": last, "seconds": time.time() - t0,
                  "stopped": self._stop_reason}
        if c.export and self.is_main and self.step >= c.steps:
            result["model_id"] = self.export(c.export)
        if self.distributed:
            dist.barrier()
        return result

    def export(self, path: str) -> str:
        meta = {"name": self.cfg.export_name or f"{self.cfg.preset}-{self.cfg.variant}",
                "trained_steps": self.step, "qualities": self.qualities,
                "lambdas": [list(self.lambdas[q]) for q in self.qualities],
                "depth_loss": self.cfg.depth_loss, "crop": self.cfg.crop,
                "batch_size": self.cfg.batch_size * self.world, "seed": self.cfg.seed,
                "training_data": [_source_card(s, self.source_weights) for s in self.train_sources],
                "validation_data": [_source_card(s, {}) for s in self.val_sources],
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        meta["ema_decay"] = self.cfg.ema_decay
        tmp = f"{path}.tmp.{os.getpid()}"
        with self.ema_weights():     # the EMA is what ships
            model_id = self.model.export_weights(tmp, meta)
        self.model.frozen = False    # training may go on from the live weights
        os.replace(tmp, path)
        print(f"exported {path} ({model_id})", file=sys.stderr)
        return model_id

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def threading_is_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _source_card(s: ds.Source, weights: Dict[str, float]) -> Dict:
    import fnmatch
    w = 1.0
    for pat, val in weights.items():
        if fnmatch.fnmatchcase(s.name, pat):
            w = val
    card = {"name": s.name, "format": s.kind, "pairs": len(s.pairs), "weight": w}
    for k in ("dataset", "sensor", "license_repo", "license_data", "repos"):
        if k in s.meta:
            card[k] = s.meta[k]
    return card


def run_training(cfg: TrainConfig, model_factory: Optional[Callable] = None) -> Dict:
    trainer = Trainer(cfg, model_factory)
    try:
        return trainer.fit()
    finally:
        trainer.close()
