"""Finished weights files of the learned codec: writing them and building a model from one.

A weights file is ``{"state_dict": ..., "metadata": ...}`` written by ``torch.save``: the
transforms in fp16, the exact entropy path (integer weights, shifts, coder tables) as the
frozen model holds it, and metadata with the preset, the variant and ``WEIGHTS_FORMAT``.
A model is named by its id, ``name@<hash of the file's tensors>``; payloads carry that id, so
a decoder finds the weights a payload was coded with.

This module owns the format (what is stored, in which type, and how the id is derived).
Checking a file that came from elsewhere before anything is built from it is
``weights_check.py``'s job; ``load_model`` runs those checks first.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .model import RGBDCompressionModel, _is_constant, retired_tensors
from .weights_check import WeightsError, check_weights_blob, read_weights_blob

#: version 2 keeps the lower-bound constants in fp32 (version 1 stored them in fp16: 1e-9 -> 0;
#: such files still load, and the constants come from the code)
WEIGHTS_FORMAT = 2


def export_tensor(name: str, v: torch.Tensor) -> torch.Tensor:
    """Storage type of one tensor in exported weights.

    Integer weights of the exact path fit int16; their biases and shifts, the
    bottleneck medians and the gains stay exact. Every other float (transform
    weights, and the float twins of exact layers, unused once frozen) is fp16.
    """
    if name.endswith(".w_int"):
        return v.to(torch.int16)
    if name.endswith((".b_int", ".shift", ".quantiles")) or ".log_gain." in name or ".log_inv_gain." in name:
        return v
    if _is_constant(name):    # 1e-9 likelihood bound: not representable in fp16
        return v.float()
    return v.half() if v.is_floating_point() else v


def _import_tensor(name: str, v: torch.Tensor) -> torch.Tensor:
    if name.endswith(".w_int"):
        return v.to(torch.float64)
    return v.float() if v.dtype == torch.float16 else v


def exported_state(model: RGBDCompressionModel) -> Dict[str, torch.Tensor]:
    """The tensors an export of this (frozen) model writes, in their stored types."""
    return {k: export_tensor(k, v.detach().cpu()) for k, v in model.state_dict().items()}


def state_hash(state: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_id(name: str, state: Dict[str, torch.Tensor]) -> str:
    return f"{name}@{state_hash(state)[:12]}"


def export_weights(model: RGBDCompressionModel, path, metadata: Optional[dict] = None) -> str:
    """Write finished weights (transforms in fp16, entropy path exact) and return the model id.

    An unfrozen model is frozen first: the exact path and the coder tables are derived from
    its float weights here.
    """
    if not model.frozen:
        model.freeze()
    state = exported_state(model)
    meta = dict(metadata or {})
    meta.update({"preset": asdict(model.preset), "variant": model.variant, "format": WEIGHTS_FORMAT})
    torch.save({"state_dict": state, "metadata": meta}, path)
    return weights_id(meta.get("name", model.preset.name), state)


def load_model(path, device: str = "cpu") -> Tuple[RGBDCompressionModel, dict]:
    """Load exported weights; the coder tables and integer weights come from the file, not recomputed.

    The file is untrusted: it is read without running code (``weights_only``), its preset is
    checked against hard limits and every tensor's shape against the model the preset builds
    (on torch's meta device, which allocates nothing) before any real memory is taken. Any
    problem is a :class:`WeightsError` that says what is wrong.

    Tensors that older code wrote and the model no longer has (``retired_tensors``) are left
    out of the model; the id is still the hash of every tensor of the file, so payloads coded
    with such a file keep finding it.
    """
    blob = read_weights_blob(path)
    meta, state, preset, variant = check_weights_blob(blob, path)
    model = RGBDCompressionModel(preset, variant)
    retired = retired_tensors(preset, variant)
    _resize_buffers_like(model, state)
    own = model.state_dict()
    try:
        model.load_state_dict({k: _import_tensor(k, v) for k, v in state.items()
                               if not _is_constant(k) and k not in retired}, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: tensors do not fit the {preset.name}/{variant} model: "
                           f"{str(exc).splitlines()[0][:300]}") from None
    missing = [k for k in own if k not in state and not _is_constant(k)]
    if missing:
        raise WeightsError(f"{path}: weights file lacks {len(missing)} tensors of the "
                           f"{preset.name}/{variant} model, e.g. {missing[0]}")
    model.frozen = True
    meta = dict(meta)
    meta["model_id"] = weights_id(meta.get("name", preset.name), state)
    return model.to(device).eval(), meta


def _resize_buffers_like(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Coder tables and exact weights change shape when frozen; match the file's shapes."""
    for name, buf in list(model.named_buffers()):
        if name in state and state[name].shape != buf.shape:
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name) if mod_name else model
            setattr(mod, attr, torch.zeros(state[name].shape, dtype=buf.dtype))
