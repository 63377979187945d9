"""Entropy model stages: hyperprior (z), cross-modal hyper-synthesis, and Bi-CEE (y).

Each stage works in three ways, like CompressAI's latent codecs:
- training (``forward``): float arithmetic, additive-noise likelihoods, STE rounding;
- exact (``encode``/``decode`` through a coder): integer arithmetic on the
  probability path (see fixedpoint.py), symbols to and from rANS streams.
The coding order of Bi-CEE lives in one place, ``BiCEE.run``, which every mode
drives through a *step coder* that decides what "coding one step" means.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck, GaussianConditional

from .compressai_adapter import coder_tables, gaussian_likelihood
from .fixedpoint import (ONE, ExactConv2d, ExactDeconv2d, ExactLeakyReLU, ExactModule, ExactReLU,
                         ExactSequential, ExactSqueezeExcite)
from .transforms import VARIANT_LINKS

MODALITIES = ("rgb", "depth")
ANCHOR, NON_ANCHOR = "anchor", "non_anchor"
#: the four steps of a channel group, in coding order (BiCEE.run); the parameter nets of a
#: group are stored in this order (``params[g][i]``, the weights files' layout)
STEPS = ("rgb_anchor", "depth_anchor", "rgb_non_anchor", "depth_non_anchor")
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64


def scale_table() -> torch.Tensor:
    # always on the CPU: the table is data, also when a model skeleton is built on the meta device
    return torch.exp(torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS, device="cpu"))


def checkerboard(height: int, width: int, which: str, device=None) -> torch.Tensor:
    """Boolean [1,1,H,W] mask: anchors where (row + col) is odd, non-anchors where even."""
    r = torch.arange(height, device=device).view(-1, 1)
    c = torch.arange(width, device=device).view(1, -1)
    odd = ((r + c) % 2 == 1)
    return (odd if which == ANCHOR else ~odd).view(1, 1, height, width)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


# --------------------------------------------------------------------------- hyperprior
class FactorizedLatent(nn.Module):
    """z of one modality, coded with a learned factorized density (EntropyBottleneck)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bottleneck = EntropyBottleneck(channels)

    def forward(self, z):
        return self.bottleneck(z)

    def fit_quantiles(self, steps: int = 500, lr: float = 0.05) -> float:
        """Fit the bottleneck's quantiles to its density before building the coder tables.

        The auxiliary loss depends on the quantiles and the (fixed) density only, not on
        data, so this converges in a few hundred steps here; during training the
        quantiles move by about lr per step and lag far behind on short runs.
        """
        eb = self.bottleneck
        opt = torch.optim.Adam([eb.quantiles], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = eb.loss()
                loss.backward()
                opt.step()
        return float(loss.detach())

    def offsets_fixed(self) -> torch.Tensor:
        """Channel medians on the 2**-FRAC_BITS grid, as integers [1,C,1,1]."""
        med = self.bottleneck.quantiles[:, 0, 1].detach().double()
        return torch.round(med * ONE).view(1, -1, 1, 1)

    def quantize(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encoder side: (symbols int64, z_hat as fixed-point integers)."""
        off = self.offsets_fixed().to(z.device)
        q = torch.round(z.double() - off / ONE)
        return q.long(), q * ONE + off

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return q.double() * ONE + self.offsets_fixed().to(q.device)

    def channel_indexes(self, shape) -> torch.Tensor:
        b, c, h, w = shape
        return torch.arange(c).view(1, c, 1, 1).expand(b, c, h, w)

    def tables(self):
        return tuple(t.tolist() for t in coder_tables(self.bottleneck))

    def estimated_bits(self, q: torch.Tensor) -> float:
        med = self.bottleneck.quantiles[:, 0, 1].detach().view(1, -1, 1, 1)
        with torch.no_grad():
            _, lik = self.bottleneck(q.float() + med, training=False)
        return float(-torch.log2(lik).sum())


class CrossModalHyperSynthesis(nn.Module):
    """h_s: both z's -> hyper parameters P_rgb, P_depth (2M channels each, 1/16 scale)."""

    def __init__(self, N: int, M: int, variant: str = "joint"):
        super().__init__()
        r2d, d2r = VARIANT_LINKS[variant]
        self.sees_other = {"rgb": d2r, "depth": r2d}
        half = (3 * M) // 2

        def stage(cin, cout, up=True):
            layers = [ExactSqueezeExcite(cin)]
            layers += [ExactDeconv2d(cin, cout, 5), ExactLeakyReLU()] if up else [ExactConv2d(cin, cout, 3)]
            return ExactSequential(*layers)

        def branch(m):
            k = 2 if self.sees_other[m] else 1
            return nn.ModuleList([stage(k * N, M), stage(k * M, half), stage(k * half, 2 * M, up=False)])

        self.branches = nn.ModuleDict({m: branch(m) for m in MODALITIES})

    def forward(self, z_rgb, z_depth):
        x = {"rgb": z_rgb, "depth": z_depth}
        for i in range(3):
            nxt = {}
            for m in MODALITIES:
                other = "depth" if m == "rgb" else "rgb"
                inp = torch.cat([x[m], x[other]], 1) if self.sees_other[m] else x[m]
                nxt[m] = self.branches[m][i](inp)
            x = nxt
        return x["rgb"], x["depth"]


# --------------------------------------------------------------------------- Bi-CEE parts
#: checkerboard positions of a step as phases (r0, c0) of the stride-2 lattices r0 + 2i, c0 + 2j
#: (anchors: row + col odd)
CHECKERBOARD_PHASES = {ANCHOR: ((0, 1), (1, 0)), NON_ANCHOR: ((0, 0), (1, 1))}


class EntropyParameters(ExactSequential):
    """p + SE(p), 1x1 (in/6), ReLU, 3x3 (4/3 out), ReLU, 5x5 -> out = (scales, means)."""

    #: exact mode runs the last convolution only where the step codes (``at``); False runs it
    #: everywhere (the same bits where it codes: a test compares the two)
    checkerboard_only = True

    def __init__(self, cin: int, cout: int):
        hidden1 = max(cin // 6, 8)
        hidden2 = max((4 * cout) // 3, 8)
        super().__init__(
            _ResidualSE(cin),
            ExactConv2d(cin, hidden1, 1), ExactReLU(),
            ExactConv2d(hidden1, hidden2, 3), ExactReLU(),
            ExactConv2d(hidden2, cout, 5))

    def at(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """The parameters of a step that codes the ``which`` half of the checkerboard. In exact
        mode the last 5x5 convolution (a third of the entropy path's time) runs at those
        positions only and the rest is zero: the step coders read nothing else. In float mode
        (training) it is the whole output."""
        last = self[-1]
        if not (last.exact and self.checkerboard_only):
            return self(x)
        for layer in list(self)[:-1]:
            x = layer(x)
        return last.forward_exact_at(x, CHECKERBOARD_PHASES[which])


class _ResidualSE(ExactModule):
    def __init__(self, channels):
        super().__init__()
        self.se = ExactSqueezeExcite(channels)

    def forward_float(self, x):
        return x + self.se(x)

    forward_exact = forward_float


def channel_context(cin: int, cout: int, widths: Sequence[int]) -> ExactSequential:
    """CC: conv5 -> widths[0], ReLU, conv5 -> widths[1], ReLU, conv5 -> cout."""
    return ExactSequential(
        ExactConv2d(cin, widths[0], 5), ExactReLU(),
        ExactConv2d(widths[0], widths[1], 5), ExactReLU(),
        ExactConv2d(widths[1], cout, 5))


class BiCEE(nn.Module):
    """Bi-directional channel-spatial entropy model of y for both modalities.

    Uneven channel groups x checkerboard, four steps per group in the order
    rgb anchors, depth anchors, rgb non-anchors, depth non-anchors.
    """

    def __init__(self, M: int, groups: Sequence[int], variant: str = "joint",
                 context_widths: Sequence[int] = (224, 128)):
        super().__init__()
        assert sum(groups) == M, f"groups {groups} must sum to M={M}"
        self.groups = list(groups)
        self.offsets = [sum(groups[:i]) for i in range(len(groups))]
        r2d, d2r = VARIANT_LINKS[variant]
        self.r2d, self.d2r = r2d, d2r
        self.sees_other = {"rgb": d2r, "depth": r2d}

        self.channel_ctx = nn.ModuleDict({
            m: nn.ModuleList([channel_context(self.offsets[g], 2 * s, context_widths)
                              for g, s in enumerate(groups) if g > 0]) for m in MODALITIES})
        self.local_rgb_anchor = nn.ModuleList([ExactConv2d(s, 2 * s, 5) for s in groups])
        self.local_depth_anchor = nn.ModuleList([ExactConv2d(s, 2 * s, 5) for s in groups])
        self.local_rgb_full = nn.ModuleList(
            [ExactConv2d(s, 2 * s, 5) for s in groups] if r2d else [])

        params = []
        for g, s in enumerate(groups):
            base = {m: self._base_channels(m, g, M) for m in MODALITIES}
            cin = [
                base["rgb"],                                          # 1: rgb anchors
                base["depth"] + (2 * s if r2d else 0),                # 2: depth anchors
                base["rgb"] + 2 * s + (2 * s if d2r else 0),          # 3: rgb non-anchors
                base["depth"] + 2 * s + (2 * s if r2d else 0),        # 4: depth non-anchors
            ]
            params.append(nn.ModuleList([EntropyParameters(c, 2 * s) for c in cin]))
        self.params = nn.ModuleList(params)
        self.gaussian = GaussianConditional(scale_table().tolist())

    def _base_channels(self, m: str, g: int, M: int) -> int:
        k = 2 if self.sees_other[m] else 1
        return k * 2 * M + (k * 2 * self.groups[g] if g > 0 else 0)

    def _base(self, m, g, hyper, cc):
        other = "depth" if m == "rgb" else "rgb"
        parts = [hyper[m]] + ([hyper[other]] if self.sees_other[m] else [])
        if g > 0:
            parts += [cc[m]] + ([cc[other]] if self.sees_other[m] else [])
        return torch.cat(parts, 1)

    def run(self, hyper: Dict[str, torch.Tensor], coder) -> Dict[str, torch.Tensor]:
        """The one place that owns the coding order. Returns y_hat per modality.

        Per channel group g (5 groups, uneven sizes), four steps, 20 in all::

            C = [P_r, P_d] (+ channel contexts CC_r, CC_d of groups < g)
            1 rgb_anchor        <- C
            2 depth_anchor      <- [L_rgb_anchor = conv5(rgb anchors), C]
            3 rgb_non_anchor    <- [L_rgb_anchor, L_depth_anchor = conv5(depth anchors), C]
            4 depth_non_anchor  <- [L_rgb_full = conv5'(whole rgb group), L_depth_anchor, C]

        Each arrow into the other modality exists only where the variant has that link
        (``r2d``: rgb -> depth, ``d2r``: depth -> rgb); ``coder.code`` codes one step's symbols.
        """
        decoded = {m: [] for m in MODALITIES}
        for g in range(len(self.groups)):
            cc = {m: self.channel_ctx[m][g - 1](torch.cat(decoded[m], 1)) if g > 0 else None
                  for m in MODALITIES}
            base = {m: self._base(m, g, hyper, cc) for m in MODALITIES}
            net = dict(zip(STEPS, self.params[g]))

            r_anchor = coder.code("rgb", g, net["rgb_anchor"].at(base["rgb"], ANCHOR), ANCHOR)
            rgb_anchor_ctx = self.local_rgb_anchor[g](r_anchor)

            d_in = ([rgb_anchor_ctx] if self.r2d else []) + [base["depth"]]
            d_anchor = coder.code("depth", g, net["depth_anchor"].at(torch.cat(d_in, 1), ANCHOR), ANCHOR)
            depth_anchor_ctx = self.local_depth_anchor[g](d_anchor)

            r_in = [rgb_anchor_ctx] + ([depth_anchor_ctx] if self.d2r else []) + [base["rgb"]]
            r_params = net["rgb_non_anchor"].at(torch.cat(r_in, 1), NON_ANCHOR)
            r_full = r_anchor + coder.code("rgb", g, r_params, NON_ANCHOR)

            d_in = ([self.local_rgb_full[g](r_full)] if self.r2d else []) + [depth_anchor_ctx, base["depth"]]
            d_params = net["depth_non_anchor"].at(torch.cat(d_in, 1), NON_ANCHOR)
            d_full = d_anchor + coder.code("depth", g, d_params, NON_ANCHOR)

            decoded["rgb"].append(r_full)
            decoded["depth"].append(d_full)
        return {m: torch.cat(decoded[m], 1) for m in MODALITIES}

    # ---- helpers used by the step coders
    def group_slice(self, g: int) -> slice:
        return slice(self.offsets[g], self.offsets[g] + self.groups[g])

    def scale_indexes(self, scales_fixed: torch.Tensor) -> torch.Tensor:
        """Table index of each fixed-point scale, by exact integer comparison."""
        thresholds = torch.round(scale_table().double() * ONE)[:-1].to(scales_fixed.device)
        return torch.bucketize(scales_fixed.contiguous(), thresholds, right=False)


class TrainingCoder:
    """Float step coder: STE-rounded latents for the decoder, noisy likelihoods for the rate."""

    def __init__(self, model: BiCEE, y: Dict[str, torch.Tensor], noise: bool):
        self.model, self.y, self.noise = model, y, noise
        self.likelihoods = {m: torch.ones_like(y[m]) for m in MODALITIES}

    def code(self, m, g, params, which):
        scales, means = params.chunk(2, 1)
        sl = self.model.group_slice(g)
        y = self.y[m][:, sl]
        mask = checkerboard(y.shape[2], y.shape[3], which, y.device).to(y.dtype)
        y_hat = round_ste(y - means) + means
        gc = self.model.gaussian
        if self.noise:
            values = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            values = y_hat
        lik = gc.likelihood_lower_bound(gaussian_likelihood(gc, values, scales, means))
        cur = self.likelihoods[m][:, sl]
        self.likelihoods[m] = self.likelihoods[m].clone()
        self.likelihoods[m][:, sl] = cur * (1 - mask) + lik * mask
        return y_hat * mask


class ExactCoder:
    """Integer step coder shared by the encoder, the decoder and exact evaluation.

    ``y`` given: symbols are computed from it (encoder / exact forward).
    ``y`` absent: symbols come from ``decode_symbols(m, indexes)`` (decoder).
    Every step's symbols and indexes are recorded in coding order.
    """

    def __init__(self, model: BiCEE, y: Optional[Dict[str, torch.Tensor]] = None, decode_symbols=None):
        if (y is None) == (decode_symbols is None):
            raise ValueError("ExactCoder codes from latents (encoding: y) or from a stream "
                             "(decoding: decode_symbols), exactly one of them")
        self.model, self.y, self.decode_symbols = model, y, decode_symbols
        self.encoding = y is not None
        self.symbols: Dict[str, List[torch.Tensor]] = {m: [] for m in MODALITIES}
        self.indexes: Dict[str, List[torch.Tensor]] = {m: [] for m in MODALITIES}

    def code(self, m, g, params, which):
        scales, means = params.chunk(2, 1)
        b, c, h, w = means.shape
        mask = checkerboard(h, w, which, means.device).expand(b, c, h, w)
        idx = self.model.scale_indexes(scales)[mask]
        if self.encoding:
            y = self.y[m][:, self.model.group_slice(g)].double()
            q = torch.round(y - means / ONE)[mask]
        else:
            q = self.decode_symbols(m, idx).to(means.device).double()
        out = torch.zeros_like(means)
        out[mask] = q * ONE + means[mask]
        self.symbols[m].append(q.long())
        self.indexes[m].append(idx)
        return out

    def estimated_bits(self, m: str) -> float:
        """Rate the coder's tables assign to the recorded symbols (continuous estimate)."""
        if not self.symbols[m]:
            return 0.0
        q = torch.cat(self.symbols[m]).double()
        scales = scale_table().double()[torch.cat(self.indexes[m]).cpu()]
        gc = self.model.gaussian
        lik = gaussian_likelihood(gc, q.cpu(), scales).clamp_min(1e-9)
        return float(-torch.log2(lik).sum())
