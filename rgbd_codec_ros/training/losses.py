"""Rate-distortion loss of the paper (TOMM 2024, section 7 of docs/design) with invalid-depth masking.

    L = R_rgb + lambda_r * 255^2 * MSE(rgb_hat, rgb)
      + R_d   + lambda_d * 255^2 * 0.01 * D_d
    D_d = clamp(0.5 * (1 - MS-SSIM(d_hat, d)), 0, 1) + edge(d_hat, d) + 0.1 * L1(d_hat, d)

R = sum(-log2 p) over y and z of one modality / (B*H*W) (bits per pixel of the input size).
Everything is computed per sample, so lambdas may differ between the samples of a batch
(``quality`` sampled per sample); the batch loss is the mean over samples.

Invalid depth (mask 0) is left out of every depth term:
- L1, MSE: means over valid pixels only;
- edge: forward differences count only where both pixels of the difference are valid;
- MS-SSIM: invalid pixels of both prediction and target are first replaced by the same fill
  (a smooth push-pull inpainting of the target's valid values, no gradient), so windows
  that straddle a hole see no artificial edge and the prediction there has no influence;
  then the SSIM / contrast-structure maps at every scale are averaged with the validity mask
  (average-pooled along with the images) as weights, so hole pixels do not count either.
  A sample without any valid pixel gets MS-SSIM 1 (no depth distortion term).
- MS-SSIM scales: 5 (weights of Wang et al. 2003) when the smaller side is >= 176 px
  (the 11x11 window must fit the coarsest scale: side / 16 >= 11); fewer scales otherwise with
  the leading weights renormalised (256 crops use all 5; 128 crops use 4).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN, _SIGMA = 11, 1.5


def _gauss(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' region only (no padding), each channel on its own.

    All maps go into the channels of one grouped convolution (much faster on CPU than a
    batch of single-channel convolutions).
    """
    B, C, H, W = x.shape
    k, n = g.numel(), B * C
    y = x.reshape(1, n, H, W)
    y = F.conv2d(y, g.view(1, 1, 1, k).expand(n, 1, 1, k), groups=n)
    y = F.conv2d(y, g.view(1, 1, k, 1).expand(n, 1, k, 1), groups=n)
    return y.reshape(B, C, y.shape[-2], y.shape[-1])


def auto_scales(h: int, w: int, win: int = _WIN, max_scales: int = 5) -> int:
    s = 1
    while s < max_scales and min(h, w) // (2 ** s) >= win:
        s += 1
    return s


def ms_ssim(x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None,
            data_range: float = 1.0, scales: Optional[int] = None,
            weights: Sequence[float] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    """Per-sample MS-SSIM [B] (channels averaged), optionally weighted by a [B,1,H,W] mask.

    Without a mask this is the usual MS-SSIM (11x11 Gaussian, sigma 1.5, K1=0.01, K2=0.03,
    2x2 average-pool between scales, negative values clipped at 0).
    """
    H, W = x.shape[-2:]
    if scales is None:
        scales = auto_scales(H, W)
    side = min(H, W)
    win = _WIN if side >= _WIN else (side if side % 2 else side - 1)
    wts = torch.tensor(weights[:scales], dtype=x.dtype, device=x.device)
    wts = wts / wts.sum()
    g = _gauss(win, _SIGMA, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    r = win // 2
    vals = []
    m = mask
    for s in range(scales):
        C = x.shape[1]
        mu_x, mu_y, exx, eyy, exy = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), g).split(C, 1)
        sxx = exx - mu_x ** 2
        syy = eyy - mu_y ** 2
        sxy = exy - mu_x * mu_y
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        if s == scales - 1:
            cs = cs * (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
        if m is None:
            v = cs.flatten(2).mean(-1)                      # [B,C]
        else:
            wm = m[..., r:m.shape[-2] - r, r:m.shape[-1] - r]
            den = wm.flatten(1).sum(-1)                      # [B]
            v = (cs * wm).flatten(2).sum(-1) / den.clamp_min(1e-8).unsqueeze(1)
            v = torch.where(den.unsqueeze(1) > 0, v, torch.ones_like(v))
        vals.append(torch.relu(v))
        if s < scales - 1:
            pad = [x.shape[-2] % 2, x.shape[-1] % 2]
            x = F.avg_pool2d(x, 2, padding=pad)
            y = F.avg_pool2d(y, 2, padding=pad)
            if m is not None:
                m = F.avg_pool2d(m, 2, padding=pad)
    stack = torch.stack(vals, 0)                            # [S,B,C]
    # clamp_min keeps the gradient of v**w finite where v == 0
    out = torch.prod(stack.clamp_min(1e-8) ** wts.view(-1, 1, 1), 0)
    return out.mean(-1)


@torch.no_grad()
def fill_invalid(d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Push-pull fill: valid pixels keep their value, holes get a smooth average of valid neighbours."""
    levels = [(d * valid, valid)]
    while min(levels[-1][0].shape[-2:]) > 1:
        x, v = levels[-1]
        levels.append((F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(v, 2, ceil_mode=True)))
    x, v = levels[-1]
    filled = torch.where(v > 0, x / v.clamp_min(1e-12), torch.zeros_like(x))
    for x, v in reversed(levels[:-1]):
        up = F.interpolate(filled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(v > 0, x / v.clamp_min(1e-12), up)
    return torch.where(valid > 0, d, filled)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of x over mask m ([B,...]); 0 where a sample has no valid pixel."""
    num = (x * m).flatten(1).sum(-1)
    den = m.flatten(1).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-8), torch.zeros_like(num))


def masked_mse(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return _masked_mean((x - y) ** 2, valid.expand_as(x))


def masked_l1(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return _masked_mean((x - y).abs(), valid.expand_as(x))


def masked_edge(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    dxx, dxy = x[..., :, 1:] - x[..., :, :-1], y[..., :, 1:] - y[..., :, :-1]
    dyx, dyy = x[..., 1:, :] - x[..., :-1, :], y[..., 1:, :] - y[..., :-1, :]
    mx = valid[..., :, 1:] * valid[..., :, :-1]
    my = valid[..., 1:, :] * valid[..., :-1, :]
    return _masked_mean((dxx - dxy).abs(), mx) + _masked_mean((dyx - dyy).abs(), my)


def depth_distortion(d_hat: torch.Tensor, d: torch.Tensor, valid: torch.Tensor,
                     scales: Optional[int] = None) -> torch.Tensor:
    """The paper's D_d per sample [B], with invalid pixels excluded (see module doc)."""
    fill = fill_invalid(d.detach(), valid)
    d_hat_f = torch.where(valid > 0, d_hat, fill)
    msssim = ms_ssim(d_hat_f, fill, mask=valid, data_range=1.0, scales=scales)
    return (torch.clamp(0.5 * (1 - msssim), 0, 1) + masked_edge(d_hat, d, valid)
            + 0.1 * masked_l1(d_hat, d, valid))


def bits_per_pixel(likelihoods: Dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Per-sample rate [B]: sum(-log2 p) over all likelihood tensors / pixels of one image."""
    total = None
    for lk in likelihoods.values():
        b = (-torch.log2(lk.clamp_min(1e-12))).flatten(1).sum(-1)
        total = b if total is None else total + b
    return total / float(num_pixels)


class RateDistortionLoss(torch.nn.Module):
    """Joint RGB-D RD loss. ``depth_loss``: 'paper' (MS-SSIM + edge + L1) or 'mse' (masked MSE)."""

    def __init__(self, depth_loss: str = "paper", ms_ssim_scales: Optional[int] = None):
        super().__init__()
        if depth_loss not in ("paper", "mse"):
            raise ValueError(f"depth loss must be 'paper' or 'mse', got {depth_loss!r}")
        self.depth_loss = depth_loss
        self.ms_ssim_scales = ms_ssim_scales

    def forward(self, out: Dict, rgb: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                lambda_rgb: torch.Tensor, lambda_depth: torch.Tensor) -> Dict[str, torch.Tensor]:
        B, _, H, W = rgb.shape
        rgb_hat, d_hat = out["x_hat"]["rgb"], out["x_hat"]["depth"]
        r_rgb = bits_per_pixel(out["likelihoods"]["rgb"], H * W)
        r_d = bits_per_pixel(out["likelihoods"]["depth"], H * W)
        mse_rgb = ((rgb_hat - rgb) ** 2).flatten(1).mean(-1)
        if self.depth_loss == "paper":
            dist_d = 0.01 * depth_distortion(d_hat, depth, valid, self.ms_ssim_scales)
        else:
            dist_d = masked_mse(d_hat, depth, valid)
        lam_r = torch.as_tensor(lambda_rgb, dtype=rgb.dtype, device=rgb.device).expand(B)
        lam_d = torch.as_tensor(lambda_depth, dtype=rgb.dtype, device=rgb.device).expand(B)
        per_sample = r_rgb + lam_r * 255 ** 2 * mse_rgb + r_d + lam_d * 255 ** 2 * dist_d
        with torch.no_grad():
            mse_c = ((rgb_hat.clamp(0, 1) - rgb) ** 2).mean()
            dmse = masked_mse(d_hat.clamp(0, 1), depth, valid)
        return {"loss": per_sample.mean(), "bpp_rgb": r_rgb.mean(), "bpp_depth": r_d.mean(),
                "mse_rgb": mse_rgb.mean(), "dist_depth": dist_d.mean(),
                "psnr_rgb": -10 * torch.log10(mse_c.clamp_min(1e-10)),
                "depth_mse_norm": dmse.mean()}


def psnr(mse: float, peak: float = 1.0) -> float:
    return float("inf") if mse <= 0 else 10 * math.log10(peak * peak / mse)
