"""Checks on a weights file before anything is built from it.

Weights come from elsewhere (a colleague, a download, a ``model_path`` folder someone else
can write to), so a file is treated like any other untrusted input:

- it is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
  containers, never code;
- its preset must be one of the known presets, or a custom one inside hard limits (a file
  that declares a giant model would otherwise take gigabytes before any check);
- the model is first built on torch's ``meta`` device, which allocates nothing, and every
  tensor of the file is compared by name and shape with it (or, for the few tensors older
  code wrote and the model no longer has, ``model.retired_tensors``, with their old shapes);
- the coder tables the rANS decoder will index are checked for the invariants that the
  native decoder assumes (lengths within their rows, CDFs that start at 0, rise strictly and
  end at 2**16), since a forged table would make it read out of bounds.

Every failure is a :class:`WeightsError` whose message names the file and what is wrong.
Writing weights files and building a model from a checked one is ``weights_io.py``'s job.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import torch

from .compressai_adapter import TABLE_BUFFERS

#: hard limits of a custom preset (the paper preset is N=192, M=320)
MAX_N = 256
MAX_M = 512
MAX_GROUPS = 16
MAX_CONTEXT_WIDTH = 512
MAX_BLOCKS = 6
MAX_QUALITIES = 16
MAX_DEPTH_RANGE_M = 1000.0
#: at most this many tensors / scalar elements in one file (the paper preset has ~150 M)
MAX_TENSORS = 20000
MAX_ELEMENTS = 400_000_000
#: a coder table row (CDF) longer than this is not something the trainer makes
MAX_CDF_LENGTH = 1 << 16
CDF_PRECISION = 16
#: file size: the paper preset in fp16 is ~300 MB
MAX_FILE_BYTES = 2 << 30

#: buffers only a frozen model fills; their shapes follow the file (checked separately below)
_FROZEN_ONLY = ("w_int", "b_int", "shift") + TABLE_BUFFERS


class WeightsError(ValueError):
    """A weights file that cannot be used; the message says which file and why."""


def read_weights_blob(path) -> Dict:
    import os
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    if size > MAX_FILE_BYTES:
        raise WeightsError(f"{path}: {size} bytes is larger than any weights file of this project "
                           f"(limit {MAX_FILE_BYTES})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # UnpicklingError, zip errors, EOFError, ...
        text = str(exc).strip().splitlines()
        why = text[0][:200] if text else type(exc).__name__
        raise WeightsError(f"{path} is not a weights file of this project (torch.load with "
                           f"weights_only refused it: {why})") from None


def _check_preset(raw, path):
    from .model import PRESETS, Preset, parse_quality
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: metadata 'preset' must be a mapping, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(Preset)}
    unknown = set(raw) - fields
    if unknown:
        raise WeightsError(f"{path}: unknown preset fields {sorted(unknown)[:5]}")
    need = {"name", "N", "M", "groups", "context_widths"}
    if not need <= set(raw):
        raise WeightsError(f"{path}: preset lacks {sorted(need - set(raw))}")
    vals = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}

    def ints(name, lo, hi, seq=False):
        v = vals.get(name)
        items = v if seq else (v,)
        if seq and (not isinstance(v, tuple) or not 1 <= len(v) <= MAX_GROUPS):
            raise WeightsError(f"{path}: preset {name} must be a list of 1..{MAX_GROUPS} integers")
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
                raise WeightsError(f"{path}: preset {name}={v!r} is outside {lo}..{hi}")

    if not isinstance(vals["name"], str) or not 0 < len(vals["name"]) <= 64:
        raise WeightsError(f"{path}: preset name must be a short string")
    ints("N", 1, MAX_N)
    ints("M", 1, MAX_M)
    ints("groups", 1, MAX_M, seq=True)
    ints("context_widths", 1, MAX_CONTEXT_WIDTH, seq=True)
    if len(vals["context_widths"]) != 2:
        raise WeightsError(f"{path}: preset context_widths must have two entries")
    if sum(vals["groups"]) != vals["M"]:
        raise WeightsError(f"{path}: preset groups {vals['groups']} do not sum to M={vals['M']}")
    for name in ("analysis_blocks", "synthesis_blocks"):
        if name in vals:
            ints(name, 0, MAX_BLOCKS)
    if "qualities" in vals:
        q = vals["qualities"]
        if not isinstance(q, tuple) or not 1 <= len(q) <= MAX_QUALITIES or \
                not all(isinstance(x, str) for x in q):
            raise WeightsError(f"{path}: preset qualities must be 1..{MAX_QUALITIES} 'a_b' names")
        for x in q:
            try:
                parse_quality(x)
            except ValueError as exc:
                raise WeightsError(f"{path}: {exc}") from None
    if "depth_range_m" in vals:
        r = vals["depth_range_m"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < float(r) <= MAX_DEPTH_RANGE_M:
            raise WeightsError(f"{path}: preset depth_range_m={r!r} is outside (0, {MAX_DEPTH_RANGE_M}]")
    preset = Preset(**vals)
    known = PRESETS.get(preset.name)
    if known is not None and known != preset:
        raise WeightsError(f"{path}: preset {preset.name!r} differs from the known preset of that "
                           f"name ({preset} vs {known})")
    return preset


def _check_tables(state: Dict[str, torch.Tensor], path) -> None:
    """rANS coder tables: what the native decoder assumes, checked up front."""
    prefixes = {k[:-len("_quantized_cdf")] for k in state if k.endswith("_quantized_cdf")}
    for pre in prefixes:
        cdf, lengths, offsets = (state.get(pre + n) for n in ("_quantized_cdf", "_cdf_length", "_offset"))
        if cdf is None or lengths is None or offsets is None:
            raise WeightsError(f"{path}: coder table {pre} is incomplete")
        if cdf.dim() != 2 or lengths.dim() != 1 or offsets.dim() != 1 or \
                not cdf.shape[0] == lengths.shape[0] == offsets.shape[0] or cdf.shape[0] < 1 or \
                not 2 <= cdf.shape[1] <= MAX_CDF_LENGTH:
            raise WeightsError(f"{path}: coder table {pre} has inconsistent shapes")
        c = cdf.to(torch.int64)
        n = lengths.to(torch.int64)
        if bool((n < 2).any()) or bool((n > cdf.shape[1]).any()):
            raise WeightsError(f"{path}: coder table {pre} has lengths outside its rows")
        if bool((offsets.to(torch.int64).abs() > MAX_CDF_LENGTH).any()):
            raise WeightsError(f"{path}: coder table {pre} has implausible offsets")
        if bool((c[:, 0] != 0).any()):
            raise WeightsError(f"{path}: coder table {pre}: a CDF does not start at 0")
        cols = torch.arange(c.shape[1]).view(1, -1)
        inside = cols < n.view(-1, 1)
        rises = (c[:, 1:] > c[:, :-1]) | ~inside[:, 1:]
        ends = c.gather(1, (n - 1).view(-1, 1)).view(-1)
        if not bool(rises.all()) or bool((ends != (1 << CDF_PRECISION)).any()):
            raise WeightsError(f"{path}: coder table {pre}: a CDF does not rise strictly to 2**16")


def check_weights_blob(blob, path) -> Tuple[dict, Dict[str, torch.Tensor], object, str]:
    """(metadata, state_dict, preset, variant) of a loaded weights blob, or WeightsError."""
    from .model import RGBDCompressionModel, retired_tensors
    from .transforms import VARIANT_LINKS
    if not isinstance(blob, dict) or not isinstance(blob.get("metadata"), dict) or \
            not isinstance(blob.get("state_dict"), dict):
        raise WeightsError(f"{path} is not a weights file of this project (expected a mapping with "
                           "'metadata' and 'state_dict'; a training checkpoint is exported with "
                           "rgbd-codec train --export)")
    meta, state = blob["metadata"], blob["state_dict"]
    if len(state) > MAX_TENSORS:
        raise WeightsError(f"{path}: {len(state)} tensors is more than any model of this project")
    total = 0
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: state_dict entries must be named tensors ({k!r})")
        total += v.numel()
    if total > MAX_ELEMENTS:
        raise WeightsError(f"{path}: {total} weights is more than any model of this project")
    variant = meta.get("variant")
    if variant not in VARIANT_LINKS:
        raise WeightsError(f"{path}: metadata variant {variant!r} is not one of {sorted(VARIANT_LINKS)}")
    preset = _check_preset(meta.get("preset"), path)
    # the structure, with no memory behind it
    with torch.device("meta"):
        skeleton = RGBDCompressionModel(preset, variant)
    own = skeleton.state_dict()
    # tensors that files of older code hold and the model no longer has: known names and shapes only
    retired = retired_tensors(preset, variant)
    for k, v in state.items():
        if k in retired:
            if tuple(v.shape) != retired[k]:
                raise WeightsError(f"{path}: retired tensor {k} has shape {tuple(v.shape)}, "
                                   f"files of the {preset.name}/{variant} model held {retired[k]}")
            continue
        if k not in own:
            raise WeightsError(f"{path}: tensor {k!r} is not part of the {preset.name}/{variant} model")
        attr = k.rsplit(".", 1)[-1]
        if attr in _FROZEN_ONLY:
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the "
                               f"{preset.name}/{variant} model needs {tuple(own[k].shape)}")
    # integer weights of the exact path: the shape of their float twin
    for k, v in state.items():
        pre, _, attr = k.rpartition(".")
        if attr == "w_int":
            twin = own.get(pre + ".layer.weight")
            if twin is None or tuple(v.shape) != tuple(twin.shape):
                raise WeightsError(f"{path}: integer weights {k} do not match their layer")
        elif attr in ("b_int", "shift"):
            twin = own.get(pre + ".layer.weight")
            out_dim = 1 if "Deconv" in type(skeleton.get_submodule(pre)).__name__ else 0
            if twin is None or tuple(v.shape) != (twin.shape[out_dim],):
                raise WeightsError(f"{path}: exact-path tensor {k} does not match its layer")
    _check_tables(state, path)
    return meta, state, preset, variant
