"""Training snapshots (``rgbd-codec train --snapshot``) as codecs: evaluation and export.

A snapshot holds fp16 float weights and their EMA at one step, not the exact integer entropy
path; freezing derives that path from the floats exactly as ``--export`` does, so what is
measured here is what an export of the snapshot would code.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

from .trainer import SNAPSHOT_FORMAT, TrainError, safe_torch_load


def is_snapshot(path: str) -> bool:
    """True for a file written by ``rgbd-codec train --snapshot`` (cheap: reads the file once)."""
    if not os.path.isfile(path):
        return False
    try:
        state = safe_torch_load(path, "snapshot")
    except TrainError:
        return False
    return isinstance(state, dict) and state.get("format") == SNAPSHOT_FORMAT


def default_name(preset: str, variant: str) -> str:
    """The model name an export gets unless told otherwise: 'lite', 'lite-separate', ..."""
    return preset if variant == "joint" else f"{preset}-{variant}"


def frozen_from_snapshot(path: str, ema: bool = True):
    """(frozen model, model id, snapshot info) of a snapshot's EMA (or its live weights)."""
    from rgbd_codec_ros.codec.learned.model import build_model, retired_tensors
    from rgbd_codec_ros.codec.learned.weights_io import exported_state, weights_id
    state = safe_torch_load(path, "snapshot")
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise TrainError(f"{path} is not a training snapshot (rgbd-codec train --snapshot)")
    cfg = state.get("config") or {}
    try:
        model = build_model(cfg.get("preset", ""), cfg.get("variant", ""))
    except ValueError as exc:
        raise TrainError(f"snapshot {path}: {exc}") from None
    own = model.state_dict()
    weights: Dict[str, torch.Tensor] = dict(state["model"])
    if ema and state.get("ema"):
        weights.update(state["ema"])
    retired = retired_tensors(model.preset, model.variant)      # older snapshots hold them, unused
    weights = {k: v for k, v in weights.items() if k not in retired}
    bad = [k for k, v in weights.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise TrainError(f"snapshot {path} does not fit {cfg.get('preset')}/{cfg.get('variant')}: {bad[:3]}")
    with torch.no_grad():
        for k, v in weights.items():
            if not k.endswith(".bound"):
                own[k].copy_(v.to(own[k].dtype))
    model.eval()
    model.freeze()
    which = "ema" if ema and state.get("ema") else "live"
    # the id its export (with the default name) will have, so that payloads coded from the
    # snapshot decode with the exported file, and byte counts match
    model_id = weights_id(default_name(cfg.get("preset"), cfg.get("variant")), exported_state(model))
    info = {"step": int(state["step"]), "weights": which, "preset": cfg.get("preset"),
            "variant": cfg.get("variant"), "train_sources": cfg.get("train_sources"),
            "val_fraction": cfg.get("val_fraction"), "val_gap": cfg.get("val_gap")}
    return model, model_id, info


def export_snapshot(path: str, out: str, name: str = "", ema: bool = True) -> Tuple[str, dict]:
    """Finished weights (what the codec loads) from a snapshot; returns (model id, info)."""
    from rgbd_codec_ros.codec.learned.weights_io import export_weights
    model, _, info = frozen_from_snapshot(path, ema)
    meta = {"name": name or default_name(info["preset"], info["variant"]),
            "trained_steps": info["step"], "weights_source": info["weights"],
            "train_sources": info["train_sources"], "val_fraction": info["val_fraction"]}
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        model_id = export_weights(model, tmp, meta)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return model_id, info
