"""Analysis / synthesis transforms of the two branches and the Bi-CPT modules.

These run in float (GPU, CPU, any precision): they never feed the entropy
coder's probability tables, so small device differences only change pixels.
Shapes follow ../shared/design/paper-model.md sections 2-4.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import AttentionBlock

#: which cross-modal links a variant has: (rgb -> depth, depth -> rgb)
VARIANT_LINKS = {
    "joint": (True, True),
    "one-way": (True, False),
    "separate": (False, False),
}


def conv(cin, cout, k=5, stride=2):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin, cout, k=5):
    return nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2, output_padding=1)


class ResidualBottleneck(nn.Module):
    """x + 1x1 -> ReLU -> 3x3 -> ReLU -> 1x1 (half the input width inside); 1x1 skip if widths differ."""

    def __init__(self, cin: int, cout: Optional[int] = None):
        super().__init__()
        cout = cout or cin
        mid = max(cin // 2, 1)
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class EnhancedSpatialAttention(nn.Module):
    """ESA: a strided, pooled spatial mask (f = channels/4) multiplied onto the input."""

    def __init__(self, channels: int):
        super().__init__()
        f = max(channels // 4, 4)
        self.reduce = nn.Conv2d(channels, f, 1)
        self.down = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.pool = nn.MaxPool2d(7, stride=3)
        self.body = nn.Sequential(
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(f, f, 3, padding=1))
        self.skip = nn.Conv2d(f, f, 1)
        self.expand = nn.Conv2d(f, channels, 1)

    def forward(self, x):
        c1_ = self.reduce(x)
        c3 = self.body(self.pool(self.down(c1_)))
        c3 = F.interpolate(c3, size=x.shape[2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.expand(c3 + self.skip(c1_)))


class BiCPT(nn.Module):
    """Bi-directional cross-modal prior transfer at one scale.

    Returns the transferred features (T_rgb, T_depth); a direction the variant
    lacks returns None and that branch continues with its own feature only.
    """

    def __init__(self, channels: int, rgb_to_depth: bool = True, depth_to_rgb: bool = True):
        super().__init__()
        if not (rgb_to_depth or depth_to_rgb):
            raise ValueError("a Bi-CPT needs at least one direction (the separate variant has none)")
        half = channels // 2
        # both embeddings feed either direction's attention (the other modality and the own one)
        self.embed_rgb = nn.Sequential(nn.Conv2d(channels, half, 3, padding=1), nn.ReLU(inplace=True))
        self.embed_depth = nn.Sequential(nn.Conv2d(channels, half, 3, padding=1), nn.ReLU(inplace=True))
        self.esa_rgb = EnhancedSpatialAttention(2 * half) if depth_to_rgb else None
        self.esa_depth = EnhancedSpatialAttention(2 * half) if rgb_to_depth else None
        self.out_channels = transfer_channels(channels)

    def forward(self, f_rgb, f_depth) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        e_r, e_d = self.embed_rgb(f_rgb), self.embed_depth(f_depth)
        t_r = self.esa_rgb(torch.cat([e_r, e_d], 1)) if self.esa_rgb is not None else None
        t_d = self.esa_depth(torch.cat([e_d, e_r], 1)) if self.esa_depth is not None else None
        return t_r, t_d


def transfer_channels(channels: int) -> int:
    """Width of a Bi-CPT's transferred feature (two half-width embeddings side by side)."""
    return 2 * (channels // 2)


def _join(f, t):
    return f if t is None else torch.cat([f, t], 1)


class _TwoBranches(nn.Module):
    """Two branches of four stages with a Bi-CPT after each of the first three.

    Subclasses build ``self.rgb``, ``self.depth`` (four stages each) and ``self.cpt``: three
    Bi-CPTs, or none for a variant without cross-modal links (the branches never meet).
    """

    def forward(self, x_r, x_d):
        for i in range(3):
            x_r, x_d = self.rgb[i](x_r), self.depth[i](x_d)
            if self.cpt:
                t_r, t_d = self.cpt[i](x_r, x_d)
                x_r, x_d = _join(x_r, t_r), _join(x_d, t_d)
        return self.rgb[3](x_r), self.depth[3](x_d)


def _transfers(N: int, variant: str) -> nn.ModuleList:
    """The three Bi-CPTs of a two-branch transform; none where the variant has no link."""
    r2d, d2r = VARIANT_LINKS[variant]
    return nn.ModuleList([BiCPT(N, r2d, d2r) for _ in range(3)] if r2d or d2r else [])


class JointAnalysis(_TwoBranches):
    """g_a of both branches with Bi-CPT at 1/2, 1/4 and 1/8 scale."""

    def __init__(self, N: int, M: int, variant: str = "joint", res_blocks: int = 3):
        super().__init__()
        r2d, d2r = VARIANT_LINKS[variant]
        self.cpt = _transfers(N, variant)
        t = transfer_channels(N)
        w_r = N + (t if d2r else 0)   # width after join, rgb branch
        w_d = N + (t if r2d else 0)

        def stages(cin, w_join):
            def rbs():
                return [ResidualBottleneck(N) for _ in range(res_blocks)]
            return nn.ModuleList([
                nn.Sequential(conv(cin, N), *rbs()),
                nn.Sequential(conv(w_join, N), *rbs(), AttentionBlock(N)),
                nn.Sequential(conv(w_join, N), *rbs()),
                nn.Sequential(conv(w_join, M), AttentionBlock(M)),
            ])

        self.rgb = stages(3, w_r)
        self.depth = stages(1, w_d)


class JointSynthesis(_TwoBranches):
    """g_s of both branches with Bi-CPT at 1/8, 1/4 and 1/2 scale."""

    def __init__(self, N: int, M: int, variant: str = "joint", res_blocks: int = 2):
        super().__init__()
        r2d, d2r = VARIANT_LINKS[variant]
        self.cpt = _transfers(N, variant)
        t = transfer_channels(N)
        w_r = N + (t if d2r else 0)
        w_d = N + (t if r2d else 0)

        def stages(cout, w_join):
            def rbs():
                return [ResidualBottleneck(N) for _ in range(res_blocks)]
            return nn.ModuleList([
                nn.Sequential(AttentionBlock(M), deconv(M, N)),
                nn.Sequential(ResidualBottleneck(w_join, N), *rbs(), deconv(N, N), AttentionBlock(N)),
                nn.Sequential(ResidualBottleneck(w_join, N), *rbs(), deconv(N, N)),
                nn.Sequential(ResidualBottleneck(w_join, N), *rbs(), deconv(N, cout)),
            ])

        self.rgb = stages(3, w_r)
        self.depth = stages(1, w_d)


class HyperAnalysis(nn.Module):
    """h_a of one branch (no cross-modal link): y (M, 1/16) -> z (N, 1/64)."""

    def __init__(self, N: int, M: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(M, N, 3, padding=1), nn.ReLU(inplace=True),
            conv(N, N), nn.ReLU(inplace=True),
            conv(N, N))

    def forward(self, y):
        return self.net(y)
