"""The paper's structure, as properties that fail when it breaks (issue 13, item 5).

Each test names the mutations it catches. The properties are dependence tests on a small
float model with random weights: perturb one input and see which outputs move. An output that
must not depend on an input has to stay bit-identical (the same float operations run on the
same values), an output that must depend on it has to change.

Mutations tried by hand against these tests (each made at least one test fail):
- checkerboard parity flipped (``checkerboard``: anchors where row+col is even);
- coding order changed (depth anchors before rgb anchors in ``BiCEE.run``);
- the joint model's cross-modal input zeroed in analysis (Bi-CPT), in synthesis, in h_s and in
  each Bi-CEE context (Lr_a into the depth anchors, Ld_a into the rgb non-anchors, Lr_full into
  the depth non-anchors, the other modality's hyper parameters and channel context);
- a Bi-CPT direction swapped (``esa_rgb`` fed ``[e_d, e_r]`` in the one-way model);
- ``separate`` leaking across modalities (any cross-modal tensor concatenated back in).
"""
from __future__ import annotations

import pytest
import torch

from rgbd_codec_ros.codec.learned.entropy import ANCHOR, MODALITIES, NON_ANCHOR, TrainingCoder, checkerboard
from rgbd_codec_ros.codec.learned.model import build_model

torch.set_num_threads(1)
H = W = 128            # y at 8x8, z at 2x2


@pytest.fixture(scope="module")
def models():
    out = {}
    for variant in ("joint", "one-way", "separate"):
        torch.manual_seed(11)
        out[variant] = build_model("tiny", variant).eval()
    return out


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, H, W, generator=g), torch.rand(1, 1, H, W, generator=g)


def _moved(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.equal(a, b)


class RecordingCoder(TrainingCoder):
    """The float step coder, recording each step's (modality, group, which) and parameters."""

    def __init__(self, model, y):
        super().__init__(model, y, noise=False)
        self.steps, self.params = [], []

    def code(self, m, g, params, which):
        self.steps.append((m, g, which))
        self.params.append(params.detach().clone())
        return super().code(m, g, params, which)


def _run_bicee(model, y, hyper):
    coder = RecordingCoder(model.bicee, y)
    model.bicee.run(hyper, coder)
    return coder


def _latents(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    M, N = model.preset.M, model.preset.N
    y = {m: 4 * torch.randn(1, M, H // 16, W // 16, generator=g) for m in MODALITIES}
    hyper = {m: torch.randn(1, 2 * M, H // 16, W // 16, generator=g) for m in MODALITIES}
    z = {m: torch.randn(1, N, H // 64, W // 64, generator=g) for m in MODALITIES}
    return y, hyper, z


# --------------------------------------------------------------------------- spatial split, order
def test_checkerboard_anchors_are_where_row_plus_col_is_odd():
    """Mutation: parity flipped."""
    a = checkerboard(4, 5, ANCHOR)[0, 0]
    n = checkerboard(4, 5, NON_ANCHOR)[0, 0]
    for r in range(4):
        for c in range(5):
            assert bool(a[r, c]) == ((r + c) % 2 == 1)
            assert bool(n[r, c]) == ((r + c) % 2 == 0)


def test_coding_order_is_the_papers_twenty_steps(models):
    """Mutation: coding order changed (e.g. depth anchors before rgb anchors)."""
    model = models["joint"]
    y, hyper, _ = _latents(model)
    steps = _run_bicee(model, y, hyper).steps
    want = [(m, g, w) for g in range(len(model.preset.groups))
            for m, w in (("rgb", ANCHOR), ("depth", ANCHOR), ("rgb", NON_ANCHOR), ("depth", NON_ANCHOR))]
    assert steps == want and len(steps) == 20


def test_each_step_sees_only_what_is_decoded_before_it(models):
    """Causality of the checkerboard: an anchor step does not depend on its own group's values;
    a non-anchor step depends on the anchors of its group and not on its non-anchors.
    Mutations: parity flipped in one place only, wrong masks, order changes."""
    model = models["joint"]
    y, hyper, _ = _latents(model)
    base = _run_bicee(model, y, hyper)
    groups = model.preset.groups
    offs = [sum(groups[:i]) for i in range(len(groups))]
    for g in (0, 2):
        sl = slice(offs[g], offs[g] + groups[g])
        for m in MODALITIES:
            for which in (ANCHOR, NON_ANCHOR):
                mask = checkerboard(H // 16, W // 16, which)
                y2 = {k: v.clone() for k, v in y.items()}
                y2[m][:, sl] = torch.where(mask, y2[m][:, sl] + 3.0, y2[m][:, sl])
                run = _run_bicee(model, y2, hyper)
                for i, step in enumerate(base.steps):
                    sm, sg, sw = step
                    if (sm, sg, sw) == (m, g, which) or i < base.steps.index((m, g, which)):
                        # the step coding these values, and every step before it: unmoved
                        assert not _moved(base.params[i], run.params[i]), (m, g, which, step)
                # the next step of the same modality and group sees the anchors
                if which == ANCHOR:
                    j = base.steps.index((m, g, NON_ANCHOR))
                    assert _moved(base.params[j], run.params[j]), (m, g)


# --------------------------------------------------------------------------- cross-modal links
def _step(coder, m, g, which):
    return coder.params[coder.steps.index((m, g, which))]


@pytest.mark.parametrize("variant", ["joint", "one-way", "separate"])
def test_bicee_contexts_cross_modalities_as_the_variant_says(models, variant):
    """Joint: depth anchors see rgb anchors (Lr_a), rgb non-anchors see depth anchors (Ld_a),
    depth non-anchors see the whole rgb group (Lr_full), and each modality sees the other's
    hyper parameters and channel context. One-way: only rgb -> depth. Separate: nothing.
    Mutations: any of these inputs zeroed; separate leaking."""
    model = models[variant]
    r2d = variant in ("joint", "one-way")
    d2r = variant == "joint"
    y, hyper, _ = _latents(model)
    base = _run_bicee(model, y, hyper)
    g = 1
    sl = slice(sum(model.preset.groups[:g]), sum(model.preset.groups[:g + 1]))
    anchors = checkerboard(H // 16, W // 16, ANCHOR)
    nonanchors = checkerboard(H // 16, W // 16, NON_ANCHOR)

    def perturbed(m, mask):
        y2 = {k: v.clone() for k, v in y.items()}
        y2[m][:, sl] = torch.where(mask, y2[m][:, sl] + 3.0, y2[m][:, sl])
        return _run_bicee(model, y2, hyper)

    rgb_anchor_moved = perturbed("rgb", anchors)
    assert _moved(_step(base, "depth", g, ANCHOR), _step(rgb_anchor_moved, "depth", g, ANCHOR)) == r2d   # Lr_a
    depth_anchor_moved = perturbed("depth", anchors)
    assert _moved(_step(base, "rgb", g, NON_ANCHOR), _step(depth_anchor_moved, "rgb", g, NON_ANCHOR)) == d2r  # Ld_a
    rgb_nonanchor_moved = perturbed("rgb", nonanchors)
    assert _moved(_step(base, "depth", g, NON_ANCHOR),
                  _step(rgb_nonanchor_moved, "depth", g, NON_ANCHOR)) == r2d                         # Lr_full
    # earlier groups of the other modality reach this group through the channel contexts: the
    # non-anchors of depth group 0 reach the rgb side only that way (Ld_a carries anchors)
    y2 = {k: v.clone() for k, v in y.items()}
    y2["depth"][:, :sl.start] = torch.where(nonanchors, y2["depth"][:, :sl.start] + 3.0, y2["depth"][:, :sl.start])
    run = _run_bicee(model, y2, hyper)
    assert _moved(_step(base, "rgb", g, ANCHOR), _step(run, "rgb", g, ANCHOR)) == d2r
    # and the base context of each modality takes the other's channel context iff linked
    cc = {m: torch.randn(1, 2 * model.preset.groups[g], H // 16, W // 16) for m in MODALITIES}
    for m, other, link in (("rgb", "depth", d2r), ("depth", "rgb", r2d)):
        cc2 = dict(cc)
        cc2[other] = cc[other] + 1.0
        assert _moved(model.bicee._base(m, g, hyper, cc), model.bicee._base(m, g, hyper, cc2)) == link
    # the other modality's hyper parameters
    for m, other, link in (("rgb", "depth", d2r), ("depth", "rgb", r2d)):
        h2 = dict(hyper)
        h2[other] = hyper[other] + 1.0
        run = _run_bicee(model, y, h2)
        assert _moved(_step(base, m, 0, ANCHOR), _step(run, m, 0, ANCHOR)) == link, (variant, m)


@pytest.mark.parametrize("variant", ["joint", "one-way", "separate"])
def test_transforms_and_hyper_synthesis_cross_modalities_as_the_variant_says(models, variant):
    """Bi-CPT in analysis and synthesis and the cross-modal h_s carry information across the
    modalities in the variant's directions only. Mutations: cross-modal input zeroed in
    analysis, synthesis or h_s; a Bi-CPT direction swapped (caught by one-way); separate leaking."""
    model = models[variant]
    r2d = variant in ("joint", "one-way")
    d2r = variant == "joint"
    rgb, depth = _inputs()
    rgb2, depth2 = _inputs(seed=1)
    with torch.no_grad():
        y_r, y_d = model.g_a(rgb, depth)
        y_r_d2, y_d_d2 = model.g_a(rgb, depth2)          # depth changed
        y_r_r2, y_d_r2 = model.g_a(rgb2, depth)          # colour changed
    assert _moved(y_r, y_r_d2) == d2r and _moved(y_d, y_d_r2) == r2d          # analysis
    assert _moved(y_d, y_d_d2) and _moved(y_r, y_r_r2)                        # own input, always

    _, _, z = _latents(model)
    with torch.no_grad():
        x_r, x_d = model.g_s(y_r, y_d)
        x_r2, _ = model.g_s(y_r, y_d + 1.0)
        _, x_d2 = model.g_s(y_r + 1.0, y_d)
        p_r, p_d = model.h_s(z["rgb"], z["depth"])
        p_r2, _ = model.h_s(z["rgb"], z["depth"] + 1.0)
        _, p_d2 = model.h_s(z["rgb"] + 1.0, z["depth"])
    assert _moved(x_r, x_r2) == d2r and _moved(x_d, x_d2) == r2d              # synthesis
    assert _moved(p_r, p_r2) == d2r and _moved(p_d, p_d2) == r2d              # h_s


def test_rgb_rate_depends_on_depth_in_joint_and_never_in_separate(models):
    """End to end through the whole forward pass: the RGB likelihoods move with the depth
    input in the joint model and are bit-identical in the separate one. (The joint model is the
    trained test model: a random one codes every latent as zero, at a likelihood of 1.)"""
    from learned_fixtures import TRAINED_TINY
    from rgbd_codec_ros.codec.learned.weights_io import load_model
    trained, _ = load_model(str(TRAINED_TINY))
    rgb, depth = _inputs()
    _, depth2 = _inputs(seed=5)
    for variant, expect in (("joint", True), ("separate", False)):
        model = trained if variant == "joint" else models[variant]
        with torch.no_grad():
            a = model(rgb, depth, 1)
            b = model(rgb, depth2, 1)
        assert _moved(a["x_hat"]["rgb"], b["x_hat"]["rgb"]) == expect
        assert _moved(a["likelihoods"]["rgb"]["y"], b["likelihoods"]["rgb"]["y"]) == expect
