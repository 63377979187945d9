"""The rate-distortion loss: rates from likelihoods, MS-SSIM, masking of invalid depth."""
from __future__ import annotations

import math

import pytest
import torch

from rgbd_codec_ros.training import losses as L

torch.set_num_threads(1)


def test_ms_ssim_matches_reference_implementation():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 256, 256), (1, 1, 200, 330)):
        x = torch.rand(shape, generator=g)
        y = (x + 0.08 * torch.randn(shape, generator=g)).clamp(0, 1)
        ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
        torch.testing.assert_close(L.ms_ssim(x, y), ref, atol=2e-4, rtol=0)
    assert float(L.ms_ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-5)


def test_scales_follow_crop_size():
    assert L.auto_scales(256, 256) == 5
    assert L.auto_scales(176, 300) == 5
    assert L.auto_scales(175, 300) == 4
    assert L.auto_scales(128, 128) == 4
    x = torch.rand(1, 1, 128, 128)
    assert torch.isfinite(L.ms_ssim(x, x.flip(-1))).all()


def test_rate_is_bits_per_pixel_of_each_sample():
    lk = {"y": torch.full((2, 4, 8, 8), 0.5), "z": torch.full((2, 2, 2, 2), 0.25)}
    lk["y"][1] = 0.125
    bpp = L.bits_per_pixel(lk, 64 * 64)
    assert bpp.tolist() == pytest.approx([(256 * 1 + 8 * 2) / 4096, (256 * 3 + 8 * 2) / 4096])


def _fake_out(rgb_hat, d_hat, B):
    lik = {"y": torch.full((B, 2, 4, 4), 0.5), "z": torch.full((B, 2, 1, 1), 0.5)}
    return {"x_hat": {"rgb": rgb_hat, "depth": d_hat}, "likelihoods": {"rgb": lik, "depth": dict(lik)}}


@pytest.mark.parametrize("depth_loss", ["paper", "mse"])
def test_invalid_depth_pixels_do_not_count(depth_loss):
    g = torch.Generator().manual_seed(1)
    B, H, W = 2, 128, 128
    rgb = torch.rand(B, 3, H, W, generator=g)
    depth = torch.rand(B, 1, H, W, generator=g) * 0.5 + 0.1
    valid = (torch.rand(B, 1, H, W, generator=g) > 0.4).float()
    valid[:, :, :40, :40] = 0                       # a large hole as well
    d_hat = (depth + 0.05 * torch.randn(B, 1, H, W, generator=g)).requires_grad_(True)
    crit = L.RateDistortionLoss(depth_loss)
    out = crit(_fake_out(rgb.clone(), d_hat, B), rgb, depth, valid, 0.013, 0.013)
    out["loss"].backward()
    assert float(d_hat.grad[valid.expand_as(d_hat) > 0].abs().sum()) > 0
    assert float(d_hat.grad[valid.expand_as(d_hat) == 0].abs().max()) == 0.0
    # anything at the invalid pixels (prediction or target) leaves the loss unchanged
    d_hat2 = torch.where(valid > 0, d_hat.detach(), torch.rand(B, 1, H, W, generator=g))
    depth2 = torch.where(valid > 0, depth, torch.zeros_like(depth))
    out2 = crit(_fake_out(rgb.clone(), d_hat2, B), rgb, depth2, valid, 0.013, 0.013)
    assert float(out2["loss"]) == pytest.approx(float(out["loss"].detach()), rel=1e-5)
    # and a worse prediction at valid pixels costs more
    d_hat3 = torch.where(valid > 0, d_hat.detach() + 0.05, d_hat.detach())
    out3 = crit(_fake_out(rgb.clone(), d_hat3, B), rgb, depth, valid, 0.013, 0.013)
    assert float(out3["loss"]) > float(out["loss"].detach())


def test_loss_terms_and_per_sample_lambdas():
    g = torch.Generator().manual_seed(2)
    B, H, W = 2, 128, 128
    rgb = torch.rand(B, 3, H, W, generator=g)
    rgb_hat = (rgb + 0.02 * torch.randn(B, 3, H, W, generator=g))
    depth = torch.rand(B, 1, H, W, generator=g)
    valid = torch.ones(B, 1, H, W)
    out = _fake_out(rgb_hat, depth.clone(), B)     # perfect depth: D_d = 0
    crit = L.RateDistortionLoss("mse")
    lam = torch.tensor([0.0018, 0.0483])
    t = crit(out, rgb, depth, valid, lam, lam)
    mse = ((rgb_hat - rgb) ** 2).flatten(1).mean(-1)
    rate = 2 * (32 + 2) / (H * W)                   # bits of both modalities at p = 0.5
    expect = (rate + lam * 255 ** 2 * mse).mean()
    assert float(t["loss"]) == pytest.approx(float(expect), rel=1e-5)
    assert float(t["bpp_rgb"]) == pytest.approx((32 + 2) / (H * W))
    # the paper's depth term: 0 for a perfect prediction, > 0 otherwise, D_d bounded as defined
    paper = L.RateDistortionLoss("paper")
    assert float(paper(out, rgb, depth, valid, lam, lam)["dist_depth"]) == pytest.approx(0.0, abs=1e-6)
    bad = _fake_out(rgb_hat, 1 - depth, B)
    dd = L.depth_distortion(1 - depth, depth, valid)
    assert (dd > 0).all() and (dd < 1 + 2 + 0.1 + 1e-6).all()
    assert float(paper(bad, rgb, depth, valid, lam, lam)["dist_depth"]) == pytest.approx(
        0.01 * float(dd.mean()), rel=1e-5)
    assert math.isfinite(float(t["psnr_rgb"]))


def test_fill_keeps_valid_pixels_and_fills_holes_smoothly():
    d = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 1, 64, 64).contiguous()
    valid = torch.ones_like(d)
    valid[..., 20:30, 20:30] = 0
    f = L.fill_invalid(d, valid)
    assert torch.equal(f[valid > 0], d[valid > 0])
    hole = f[..., 20:30, 20:30]
    assert float(hole.min()) >= float(d[..., 20:30, 15].min()) - 0.05
    assert float(hole.max()) <= float(d[..., 20:30, 34].max()) + 0.05
