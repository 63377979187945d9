"""Start a cross-modal model (``joint`` or ``one-way``) from trained ``separate`` weights,
without changing what it computes.

Why: at equal training steps the separate model codes colour with far fewer bits than the
joint one trained from its own start (docs/results, campaign notes), so a joint run that starts
from scratch spends most of its CPU budget relearning the single-modality paths. The joint model
contains the separate one: every cross-modal input enters by concatenation (Bi-CPT features,
the other modality's hyper parameters and channel contexts, the Bi-CEE cross contexts). Copying
the separate weights onto the own-modality channels and giving every cross-modal input a zero
weight reproduces the separate model exactly; training then decides how much of the other
modality to use, and the comparison joint-against-separate at equal steps starts from the same
function. This is the zero-initialised side branch that makes such warm starts safe.

Layers whose widths grow in the joint model get the separate weights in the block that maps the
separate model's inputs to its outputs; everything else that leaves those outputs is zero:

- a wider *input* (a cross-modal part concatenated in): the extra input columns are zero;
- extra *hidden* units (widths derived from a wider input, e.g. ``in/6``): their incoming weights
  keep the fresh initialisation and their outgoing columns are zero. Zero on both sides would be
  a dead unit (no gradient ever reaches it);
- a skip connection that becomes a 1x1 convolution (the synthesis residual blocks): identity on
  the own channels, zero on the others;
- modules only the cross-modal model has (the Bi-CPTs, ``local_rgb_full``) keep their fresh
  initialisation: what they produce meets zero weights. (A source built by older code also held
  Bi-CPT embeddings, never trained; where present they are copied, which changes nothing.)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from rgbd_codec_ros.codec.learned.entropy import MODALITIES, STEPS
from rgbd_codec_ros.codec.learned.transforms import VARIANT_LINKS


def _conv(module: nn.Module) -> nn.Module:
    """The torch convolution inside a layer (exact layers wrap theirs as ``.layer``)."""
    inner = getattr(module, "layer", module)
    if not isinstance(inner, (nn.Conv2d, nn.ConvTranspose2d)):
        raise TypeError(f"{type(module).__name__} is not a convolution")
    return inner


def _oi(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The weight as (out, in, kh, kw); a view, so writes reach the layer."""
    return weight.transpose(0, 1) if isinstance(layer, nn.ConvTranspose2d) else weight


def _leading(n: int) -> torch.Tensor:
    return torch.arange(n)


@torch.no_grad()
def _embed_conv(dst: nn.Module, src: nn.Module, in_map: Optional[torch.Tensor] = None,
                out_map: Optional[torch.Tensor] = None) -> None:
    """dst's outputs ``out_map`` become src's outputs computed from dst inputs ``in_map``
    (src's channels, in order); dst's other inputs get zero weight into those outputs."""
    d, s = _conv(dst), _conv(src)
    wd, ws = _oi(d.weight.data, d), _oi(s.weight.data, s)
    if wd.shape[2:] != ws.shape[2:]:
        raise ValueError(f"kernel {tuple(ws.shape[2:])} does not fit {tuple(wd.shape[2:])}")
    in_map = _leading(ws.shape[1]) if in_map is None else in_map
    out_map = _leading(ws.shape[0]) if out_map is None else out_map
    if len(in_map) != ws.shape[1] or len(out_map) != ws.shape[0] or \
            int(in_map.max()) >= wd.shape[1] or int(out_map.max()) >= wd.shape[0]:
        raise ValueError(f"maps ({len(out_map)} out, {len(in_map)} in) do not fit "
                         f"{tuple(ws.shape[:2])} -> {tuple(wd.shape[:2])}")
    rows = torch.zeros((len(out_map),) + tuple(wd.shape[1:]), dtype=wd.dtype)
    rows[:, in_map] = ws.to(wd.dtype)
    wd[out_map] = rows
    if d.bias is not None:
        if s.bias is None:
            d.bias.data[out_map] = 0
        else:
            d.bias.data[out_map] = s.bias.data.to(d.bias.dtype)


@torch.no_grad()
def _identity_skip(dst: nn.Module, channels: int) -> None:
    """A 1x1 convolution that passes the first ``channels`` inputs through and drops the rest."""
    d = _conv(dst)
    d.weight.data.zero_()
    d.weight.data[torch.arange(channels), torch.arange(channels), 0, 0] = 1
    if d.bias is not None:
        d.bias.data.zero_()


def _cat_map(parts: Sequence[tuple]) -> torch.Tensor:
    """Positions in the wide input of the narrow input's channels.

    ``parts`` lists the wide input's blocks in order as (width, index in the narrow input or
    None for a block the narrow model lacks); the narrow input is the kept blocks in order.
    """
    kept, pos = [], 0
    for width, narrow_index in parts:
        if narrow_index is not None:
            kept.append((narrow_index, torch.arange(pos, pos + width)))
        pos += width
    return torch.cat([idx for _, idx in sorted(kept, key=lambda t: t[0])])


def _bicee_input_maps(M: int, groups: Sequence[int], variant: str) -> Dict[str, List[torch.Tensor]]:
    """Per step name: for each group, where the separate model's input channels sit in this
    variant's input (BiCEE.run draws the layouts)."""
    r2d, d2r = VARIANT_LINKS[variant]
    sees = {"rgb": d2r, "depth": r2d}
    maps: Dict[str, List[torch.Tensor]] = {k: [] for k in
                                           ("rgb_anchor", "depth_anchor", "rgb_non_anchor", "depth_non_anchor")}
    for g, s in enumerate(groups):
        def base(m, first):
            # [P_m, P_other?, CC_m?, CC_other?] against the separate [P_m, CC_m?]
            parts = [(2 * M, first)] + ([(2 * M, None)] if sees[m] else [])
            if g > 0:
                parts += [(2 * s, first + 1)] + ([(2 * s, None)] if sees[m] else [])
            return parts
        cross = None
        maps["rgb_anchor"].append(_cat_map(base("rgb", 0)))
        maps["depth_anchor"].append(_cat_map(([(2 * s, cross)] if r2d else []) + base("depth", 0)))
        maps["rgb_non_anchor"].append(_cat_map([(2 * s, 0)] + ([(2 * s, cross)] if d2r else [])
                                               + base("rgb", 1)))
        maps["depth_non_anchor"].append(_cat_map(([(2 * s, cross)] if r2d else []) + [(2 * s, 0)]
                                                 + base("depth", 1)))
    return maps


@torch.no_grad()
def embed_separate(target: nn.Module, source: nn.Module) -> List[str]:
    """Make ``target`` (variant joint or one-way, freshly built) compute what ``source``
    (variant separate, same preset, trained) computes. Returns the names of the tensors that
    were copied whole or embedded; raises ValueError if any source tensor found no place (an
    architecture this function does not know)."""
    if source.variant != "separate":
        raise ValueError(f"the source must be a separate model, not {source.variant}")
    if target.preset != source.preset:
        raise ValueError(f"presets differ: {source.preset.name} -> {target.preset.name}")
    from rgbd_codec_ros.codec.learned.model import _FROZEN_ONLY, _is_constant
    src_state = {k: v for k, v in source.state_dict().items()
                 if not _is_constant(k) and k.rsplit(".", 1)[-1] not in _FROZEN_ONLY}
    dst_state = target.state_dict()
    done = set()
    for k, v in src_state.items():
        if k in dst_state and dst_state[k].shape == v.shape:
            dst_state[k].copy_(v.to(dst_state[k].dtype))
            done.add(k)

    preset, variant = target.preset, target.variant
    N = preset.N
    src_mod, dst_mod = source.get_submodule, target.get_submodule

    def embed(name: str, in_map=None, out_map=None) -> None:
        _embed_conv(dst_mod(name), src_mod(name), in_map, out_map)
        prefix = name + (".layer." if hasattr(src_mod(name), "layer") else ".")
        done.update(k for k in src_state if k.startswith(prefix) and "." not in k[len(prefix):])

    for m in MODALITIES:
        for i in (1, 2, 3):
            # analysis: conv over [own features, Bi-CPT transfer]
            if src_mod(f"g_a.{m}.{i}.0").weight.shape != dst_mod(f"g_a.{m}.{i}.0").weight.shape:
                embed(f"g_a.{m}.{i}.0")
            # synthesis: ResidualBottleneck over [own features, transfer]; its skip becomes a conv
            rb = f"g_s.{m}.{i}.0"
            if isinstance(getattr(dst_mod(rb), "skip"), nn.Conv2d) and \
                    not isinstance(getattr(src_mod(rb), "skip"), nn.Conv2d):
                embed(f"{rb}.body.0")
                embed(f"{rb}.body.2")
                embed(f"{rb}.body.4")
                _identity_skip(dst_mod(f"{rb}.skip"), N)
        for i in range(3):
            # h_s stage: SE over [own, other], then a (de)convolution
            st = f"h_s.branches.{m}.{i}"
            if not target.h_s.sees_other[m]:
                continue
            layer = _conv(src_mod(f"{st}.1"))
            own = _leading(_oi(layer.weight, layer).shape[1])
            embed(f"{st}.0.fc1", own)
            embed(f"{st}.0.fc2", None, own)
            embed(f"{st}.1", own)

    maps = _bicee_input_maps(preset.M, preset.groups, variant)
    for g in range(len(preset.groups)):
        for k, step in enumerate(STEPS):
            p = f"bicee.params.{g}.{k}"
            in_map = maps[step][g]
            if len(in_map) == _conv(dst_mod(f"{p}.1")).weight.shape[1]:
                continue                                 # this step sees no other modality
            embed(f"{p}.0.se.fc1", in_map)
            embed(f"{p}.0.se.fc2", None, in_map)
            embed(f"{p}.1", in_map)
            embed(f"{p}.3")
    left = sorted(set(src_state) - done)
    if left:
        raise ValueError(f"{len(left)} tensors of the separate model found no place in the "
                         f"{variant} model, e.g. {left[:3]}")
    return sorted(done)
