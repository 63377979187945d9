"""The ``separate`` variant builds no Bi-CPT, and what older code wrote for it still loads.

Older code built the Bi-CPT embeddings in ``separate`` too and discarded their output; weights
files, checkpoints and snapshots of that time hold those tensors (``model.retired_tensors``).
They are skipped by name and shape, nothing else: an unknown tensor is still refused.

Mutations tried by hand against these tests (each made a test fail): the loader skipping
every unknown tensor instead of the retired names; the retired shapes not checked; the
optimiser state of an old checkpoint dropped instead of renumbered; the separate variant
building its Bi-CPTs again.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from rgbd_codec_ros.codec.learned.model import build_model, retired_tensors
from rgbd_codec_ros.codec.learned.transforms import BiCPT
from rgbd_codec_ros.codec.learned.weights_check import WeightsError
from rgbd_codec_ros.codec.learned.weights_io import export_weights, load_model, weights_id
from rgbd_codec_ros.training.old_checkpoints import drop_retired

torch.set_num_threads(1)
MODELS = Path(__file__).resolve().parents[1] / "rgbd_codec_ros" / "models"


def _bicpts(model):
    return [n for n, m in model.named_modules() if isinstance(m, BiCPT)]


def test_only_cross_modal_variants_build_bi_cpt():
    assert _bicpts(build_model("tiny", "separate")) == []
    assert not any(".cpt." in k for k in build_model("tiny", "separate").state_dict())
    for variant in ("one-way", "joint"):
        assert len(_bicpts(build_model("tiny", variant))) == 6, variant
        assert retired_tensors(build_model("tiny", variant).preset, variant) == {}
    # the 12 embedding convolutions the lite separate model used to carry (issue 14)
    lite = build_model("lite", "separate")
    assert sum(torch.Size(s).numel() for s in retired_tensors(lite.preset, "separate").values()) == 55488


def test_shipped_separate_weights_hold_retired_tensors_and_keep_their_id():
    path = MODELS / "lite-separate.pt"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob["state_dict"]
    model, meta = load_model(str(path))
    retired = retired_tensors(model.preset, model.variant)
    assert retired and set(retired) <= set(state)          # written by the older code
    assert meta["model_id"] == weights_id(blob["metadata"]["name"], state)   # every tensor of the file
    assert not set(retired) & set(model.state_dict())


def _with_old_layout(path, out, extra):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["state_dict"].update(extra)
    torch.save(blob, out)
    return blob


def test_retired_tensors_are_skipped_by_name_and_shape_only(tmp_path):
    torch.manual_seed(2)
    model = build_model("tiny", "separate").eval()
    clean = tmp_path / "clean.pt"
    export_weights(model, str(clean), {"name": "t"})
    retired = retired_tensors(model.preset, "separate")
    torch.manual_seed(3)
    old = {k: torch.randn(s).half() for k, s in retired.items()}
    blob = _with_old_layout(clean, tmp_path / "old.pt", old)
    a, _ = load_model(str(clean))
    b, meta = load_model(str(tmp_path / "old.pt"))
    assert meta["model_id"] == weights_id("t", blob["state_dict"]) != load_model(str(clean))[1]["model_id"]
    rgb, depth = torch.rand(1, 3, 128, 128), torch.rand(1, 1, 128, 128)
    ca, cb = a.compress(rgb, depth, 1), b.compress(rgb, depth, 1)
    assert ca["streams"] == cb["streams"] and ca["latent_hash"] == cb["latent_hash"]

    name = next(iter(retired))
    _with_old_layout(clean, tmp_path / "bad_shape.pt", {name: torch.zeros(1, 2, 3, 3).half()})
    with pytest.raises(WeightsError, match="retired tensor"):
        load_model(str(tmp_path / "bad_shape.pt"))
    # a tensor that only the cross-modal variants have is no retired tensor of separate
    esa = "g_a.cpt.0.esa_rgb.reduce.weight"
    _with_old_layout(clean, tmp_path / "unknown.pt", {esa: torch.zeros(4, 16, 1, 1).half()})
    with pytest.raises(WeightsError, match="is not part of"):
        load_model(str(tmp_path / "unknown.pt"))


def _old_checkpoint(model, opt, ema):
    """A checkpoint as older code wrote it: the retired tensors in their place in the state (and
    so in the optimiser's numbering) before the rest of g_a and of g_s."""
    retired = retired_tensors(model.preset, model.variant)
    saved = OrderedDict()
    for k, v in model.state_dict().items():
        for part in ("g_a.", "g_s."):
            if k.startswith(part) and not any(r in saved for r in retired if r.startswith(part)):
                saved.update((r, torch.zeros(s)) for r, s in retired.items() if r.startswith(part))
        saved[k] = v.clone()
    params = {n for n, _ in model.named_parameters()} | set(retired)
    old_main = [k for k in saved if k in params and not k.endswith(".quantiles")]
    now_main = [n for n, _ in model.named_parameters() if not n.endswith(".quantiles")]
    renumber = {now_main.index(n): old_main.index(n) for n in now_main}
    old_opt = {"state": {renumber[i]: s for i, s in opt["state"].items()},
               "param_groups": [dict(g, params=list(range(len(old_main)))) for g in opt["param_groups"]]}
    old_ema = dict(ema, **{r: torch.zeros(s) for r, s in retired.items()})
    return {"model": saved, "opt": old_opt, "ema": old_ema}


def test_an_old_separate_checkpoint_resumes_with_its_optimiser_state():
    torch.manual_seed(4)
    model = build_model("tiny", "separate").train()
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    opt = torch.optim.Adam(main, lr=1e-3)
    out = model(torch.rand(2, 3, 128, 128), torch.rand(2, 1, 128, 128), torch.tensor([0, 1]))
    (out["x_hat"]["rgb"].square().mean() + out["x_hat"]["depth"].square().mean()).backward()
    opt.step()
    ema = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith(".quantiles")}
    now = {"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema}
    assert drop_retired(now, model) is now                  # nothing to drop: untouched

    fixed = drop_retired(_old_checkpoint(model, now["opt"], ema), model)
    assert list(fixed["model"]) == list(now["model"])
    assert fixed["ema"].keys() == ema.keys()
    assert fixed["opt"]["param_groups"] == now["opt"]["param_groups"]
    assert fixed["opt"]["state"].keys() == now["opt"]["state"].keys()
    for i, s in now["opt"]["state"].items():
        assert all(torch.equal(torch.as_tensor(s[k]), torch.as_tensor(fixed["opt"]["state"][i][k])) for k in s)
    fresh = build_model("tiny", "separate")
    fresh.load_state_dict(fixed["model"])                   # strict: exactly today's tensors
    torch.optim.Adam([p for n, p in fresh.named_parameters() if not n.endswith(".quantiles")]).load_state_dict(
        fixed["opt"])
