"""A cross-modal model started from separate weights computes what the separate model computes
(training/variant_init.py), its cross-modal paths can still learn, and `rgbd-codec train`
uses it for `--variant joint --init-weights <separate file>`.

Mutations tried by hand against these tests (each made a test fail): a Bi-CEE input map off by
one block (the other modality's hyper parameters taken for the own ones); the cross-modal
columns left at their random initialisation instead of zero; the synthesis skip left random;
hidden units zeroed on both sides (the gradient test: dead units).
"""
from __future__ import annotations

import csv

import pytest
import torch

from rgbd_codec_ros.cli import main
from rgbd_codec_ros.codec.learned.entropy import MODALITIES
from rgbd_codec_ros.codec.learned.model import build_model
from rgbd_codec_ros.codec.learned.weights_io import export_weights, load_model
from rgbd_codec_ros.training.variant_init import embed_separate

torch.set_num_threads(1)


def _trained_like_separate(seed=3):
    """A tiny separate model with weights away from their initialisation (every value matters)."""
    torch.manual_seed(seed)
    model = build_model("tiny", "separate").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _pair(seed=0, h=128, w=192):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)


@pytest.mark.parametrize("variant", ["joint", "one-way"])
def test_embedded_model_computes_the_separate_function(variant):
    sep = _trained_like_separate()
    torch.manual_seed(99)
    cross = build_model("tiny", variant).eval()
    before = {k: v.clone() for k, v in cross.state_dict().items()}
    embed_separate(cross, sep)
    rgb, depth = _pair()
    with torch.no_grad():
        a, b = sep(rgb, depth, 1), cross(rgb, depth, 1)
    for m in MODALITIES:
        assert torch.allclose(a["x_hat"][m], b["x_hat"][m], atol=2e-6, rtol=0), m
        for k in ("y", "z"):
            assert torch.allclose(a["likelihoods"][m][k], b["likelihoods"][m][k], atol=1e-9, rtol=1e-6), (m, k)
    # modules only the cross-modal model has keep their fresh values (they meet zero weights)
    after = cross.state_dict()
    esa = [k for k in after if ".esa_" in k]
    assert esa and all(torch.equal(after[k], before[k]) for k in esa)


def test_embedded_model_codes_the_same_streams_through_the_exact_path():
    sep = _trained_like_separate(5)
    cross = build_model("tiny", "joint").eval()
    embed_separate(cross, sep)
    sep.freeze()
    cross.freeze()
    rgb, depth = _pair(1)
    a, b = sep.compress(rgb, depth, 2), cross.compress(rgb, depth, 2)
    assert a["streams"] == b["streams"]
    assert a["latent_hash"] == b["latent_hash"]


def test_cross_modal_paths_get_gradients_after_the_embedding():
    """Zero only on the outgoing side: every new weight that leaves a cross-modal input or an
    extra hidden unit gets a non-zero gradient at the first step (no dead units)."""
    sep = _trained_like_separate(7)
    cross = build_model("tiny", "joint").train()
    embed_separate(cross, sep)
    rgb, depth = _pair(2)
    out = cross(rgb, depth, torch.tensor([1]))
    loss = sum(-torch.log2(out["likelihoods"][m]["y"]).sum() for m in MODALITIES) \
        + sum(((out["x_hat"][m] - x) ** 2).sum() for m, x in (("rgb", rgb), ("depth", depth)))
    loss.backward()
    N = cross.preset.N
    grads = {n: p.grad for n, p in cross.named_parameters()}
    # analysis conv: columns of the Bi-CPT transfer (zero weights) get gradient
    assert grads["g_a.rgb.1.0.weight"][:, N:].abs().sum() > 0
    assert grads["g_a.depth.2.0.weight"][:, N:].abs().sum() > 0
    # h_s: the other modality's z columns
    assert grads["h_s.branches.rgb.0.1.layer.weight"][N:].abs().sum() > 0      # deconv: (in, out)
    # Bi-CEE: the columns of extra hidden units in the 3x3 layer of a cross step
    w = sep.bicee.params[1][2][3].layer.weight.shape[1]
    assert grads["bicee.params.1.2.3.layer.weight"][:, w:].abs().sum() > 0


def test_only_separate_weights_embed():
    cross = build_model("tiny", "joint")
    with pytest.raises(ValueError, match="must be a separate model"):
        embed_separate(build_model("tiny", "separate"), cross)
    with pytest.raises(ValueError, match="presets differ"):
        embed_separate(cross, build_model("lite", "separate"))


@pytest.mark.slow
def test_train_starts_joint_from_separate_weights(tmp_path, data_dir, capsys):
    """`train --variant joint --init-weights SEPARATE`: the first step's distortion is the one
    the separate model has on the same batch (same function), and a run from scratch is far
    from it."""
    weights = tmp_path / "sep.pt"
    export_weights(_trained_like_separate(9), str(weights), {"name": "tiny-separate"})
    base = ["train", "--data", str(data_dir / "osd_kinect_pcl_mosd"), "--preset", "tiny", "--steps", "1",
            "--batch-size", "2", "--crop", "128", "--threads", "1", "--log-every", "1", "--val-every", "100",
            "--quality-sampling", "sample", "--seed", "7", "--no-progress"]

    def first_row(name, *extra):
        assert main(base + ["--checkpoint-dir", str(tmp_path / name), *extra]) == 0
        with open(tmp_path / name / "train_log.csv", newline="") as fh:
            return next(csv.DictReader(fh))

    joint = first_row("joint", "--variant", "joint", "--init-weights", str(weights))
    assert "embedded in joint: cross-modal paths start at zero weight" in capsys.readouterr().err
    separate = first_row("separate", "--variant", "separate", "--init-weights", str(weights))
    scratch = first_row("scratch", "--variant", "joint")
    for key in ("psnr_rgb", "depth_rmse_mm"):
        assert float(joint[key]) == pytest.approx(float(separate[key]), rel=1e-4), key
        assert abs(float(scratch[key]) - float(separate[key])) > 1e-2 * abs(float(separate[key])), key
    # and the exported result of such a run loads as a joint model
    out = tmp_path / "joint.pt"
    assert main(base + ["--checkpoint-dir", str(tmp_path / "joint2"), "--variant", "joint",
                        "--init-weights", str(weights), "--export", str(out)]) == 0
    assert load_model(str(out))[0].variant == "joint"
