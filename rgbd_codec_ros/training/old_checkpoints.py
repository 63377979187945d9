"""Training checkpoints and snapshots written by older code, made to fit today's model.

A model can lose tensors that older code built and never used (``model.retired_tensors``: the
Bi-CPT embeddings the ``separate`` variant used to carry). A run saved then must still resume:
those names are dropped from the saved weights, their EMA and the optimiser state, and nothing
else is touched, so every other mismatch still fails where it did.
"""
from __future__ import annotations

from typing import Dict, List

import torch.nn as nn

from rgbd_codec_ros.codec.learned.model import retired_tensors


def _main_names(names: List[str]) -> List[str]:
    """Names of the main optimiser's parameters, in its order (the trainer leaves the quantiles
    to the auxiliary one)."""
    return [n for n in names if not n.endswith(".quantiles")]


def _reindex_optimizer(opt: Dict, old_names: List[str], keep: set) -> Dict:
    """The optimiser state of ``old_names`` (the parameters in their old order) restricted to
    the names in ``keep``, renumbered in order."""
    new_index, n = {}, 0
    for i, name in enumerate(old_names):
        if name in keep:
            new_index[i] = n
            n += 1
    groups = []
    for g in opt["param_groups"]:
        g = dict(g)
        g["params"] = [new_index[i] for i in g["params"] if i in new_index]
        groups.append(g)
    state = {new_index[i]: v for i, v in opt["state"].items() if i in new_index}
    return {**opt, "state": state, "param_groups": groups}


def drop_retired(state: Dict, model: nn.Module) -> Dict:
    """A checkpoint (``model``, ``opt``, ``ema``) or snapshot (``model``, ``ema``) of ``model``'s
    preset and variant without the tensors the model no longer has. Unchanged (the same
    object) when it holds none of them."""
    retired = retired_tensors(model.preset, model.variant)
    saved = state.get("model") or {}
    if not any(k in retired for k in saved):
        return state
    out = dict(state)
    out["model"] = {k: v for k, v in saved.items() if k not in retired}
    if state.get("ema"):
        out["ema"] = {k: v for k, v in state["ema"].items() if k not in retired}
    if state.get("opt"):
        # the optimiser numbers parameters in the order the saving model registered them, which
        # is the order of its state dict (parameters and buffers, module by module)
        params = {n for n, _ in model.named_parameters()} | set(retired)
        old_main = _main_names([k for k in saved if k in params])
        out["opt"] = _reindex_optimizer(state["opt"], old_main, set(old_main) - set(retired))
    return out
