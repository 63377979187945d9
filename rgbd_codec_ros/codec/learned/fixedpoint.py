"""Layers of the entropy-parameter path that run either in float or in exact fixed point.

Why: an entropy decoder needs bit-identical probability tables. Float convolutions
differ across devices and thread counts, so every module that produces scales and
means (hyper-synthesis, channel and local contexts, parameter nets) is built from
the layers below. In training they are ordinary float layers. After
``freeze_exact(model)`` each keeps integer weights, and in exact mode it works on
integer-valued float64 tensors at ``FRAC_BITS`` fractional bits: products and sums
of integers below 2**53 are exact in float64 whatever the summation order, and all
rescaling is by powers of two followed by ``floor``. Nothing on this path uses a
transcendental function: the gates are hard sigmoids and the leaky ReLU slope is a
power of two, in training too, so the frozen network computes what was trained.

The exact convolutions run through ``exact_conv.py``: on CPUs with a fast int8 GEMM as int8
digit GEMMs with int32 sums that cannot overflow, elsewhere (and wherever that path cannot prove
exactness) as the float64 ``F.conv2d`` reference; both give the same integers, bit for bit.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import exact_conv

#: fractional bits of activations on the exact path (value = int / 2**FRAC_BITS)
FRAC_BITS = 10
ONE = float(1 << FRAC_BITS)
#: magnitude bound of integer weights (12-bit signed)
WEIGHT_MAX = 2047
#: leaky ReLU slope of the hyper-synthesis; a power of two so it is exact
LEAKY_SLOPE = 1.0 / 64.0


class ExactModule(nn.Module):
    """A module with a float forward (training) and an exact integer forward."""

    exact: bool = False

    def forward(self, x):
        return self.forward_exact(x) if self.exact else self.forward_float(x)

    def forward_float(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_exact(self, x):  # pragma: no cover - abstract
        raise NotImplementedError


def _weight_shifts(w: torch.Tensor, out_dim: int) -> torch.Tensor:
    """Per-output-channel power-of-two exponent so that |w * 2**s| <= WEIGHT_MAX."""
    dims = [d for d in range(w.dim()) if d != out_dim]
    wmax = w.detach().abs().amax(dim=dims).double().clamp_min(1e-12)
    return torch.floor(torch.log2(WEIGHT_MAX / wmax)).clamp(-30, 40)


class _ExactConvBase(ExactModule):
    """Shared freezing logic of exact Conv2d / ConvTranspose2d."""

    out_dim = 0  # which weight dimension indexes output channels

    def _init_exact_buffers(self):
        self.register_buffer("w_int", torch.zeros(0, dtype=torch.float64), persistent=True)
        self.register_buffer("b_int", torch.zeros(0, dtype=torch.float64), persistent=True)
        self.register_buffer("shift", torch.zeros(0, dtype=torch.float64), persistent=True)

    @torch.no_grad()
    def freeze(self) -> None:
        w = self.layer.weight.detach().double().cpu()
        shift = _weight_shifts(w, self.out_dim)
        shape = [1] * w.dim()
        shape[self.out_dim] = -1
        w_int = torch.round(w * torch.pow(2.0, shift).view(shape))
        if self.layer.bias is not None:
            b = self.layer.bias.detach().double().cpu()
            b_int = torch.round(b * torch.pow(2.0, shift + FRAC_BITS))
        else:
            b_int = torch.zeros(w.shape[self.out_dim], dtype=torch.float64)
        dev = self.layer.weight.device
        self.w_int = w_int.to(dev)
        self.b_int = b_int.to(dev)
        self.shift = shift.to(dev)

    def _rescale(self, acc: torch.Tensor) -> torch.Tensor:
        # acc is the convolution's own fresh tensor: the same operations, in place
        acc.add_(self.b_int.view(1, -1, 1, 1))
        return acc.mul_(torch.pow(2.0, -self.shift).view(1, -1, 1, 1)).floor_()

    def _digits(self) -> exact_conv.WeightDigits:
        """Cache of the integer weights as int8 digits (a plain attribute: not in the state)."""
        d = self.__dict__.get("_weight_digits")
        if d is None:
            d = self.__dict__["_weight_digits"] = exact_conv.WeightDigits()
        return d

    def _bias_max(self) -> float:
        return float(self.b_int.abs().max()) if self.b_int.numel() else 0.0


class ExactConv2d(_ExactConvBase):
    def __init__(self, cin, cout, kernel, stride=1, bias=True):
        super().__init__()
        self.layer = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
        self._init_exact_buffers()

    def forward_float(self, x):
        return self.layer(x)

    def forward_exact(self, x):
        acc = exact_conv.conv2d(x, self.w_int, self._digits(), self._bias_max(),
                                self.layer.stride, self.layer.padding)
        return self._rescale(acc)

    def forward_exact_at(self, x, phases) -> torch.Tensor:
        """``forward_exact(x)`` at the positions (r0 + 2i, c0 + 2j) of each phase (r0, c0) in
        ``phases``, zeros elsewhere. Why: a checkerboard step reads its parameters at half of the
        positions, so its last convolution need not run at the others. Each phase is one
        stride-2 convolution of the zero-padded input: the same integer sums at those
        positions, so the same bits (stride-1, odd square kernels with 'same' padding only)."""
        (kh, kw), (ph, pw) = self.layer.kernel_size, self.layer.padding
        if self.layer.stride != (1, 1) or kh != kw or ph != kh // 2 or pw != kw // 2:
            raise ValueError("forward_exact_at needs a stride-1 'same' convolution")
        b, _, h, w = x.shape
        padded = F.pad(x, (pw, pw, ph, ph))
        out = x.new_zeros((b, self.w_int.shape[0], h, w))
        for r0, c0 in phases:
            if r0 >= h or c0 >= w:
                continue
            acc = exact_conv.conv2d(padded[:, :, r0:, c0:], self.w_int, self._digits(), self._bias_max(),
                                    (2, 2), (0, 0))
            out[:, :, r0::2, c0::2] = self._rescale(acc)
        return out


class ExactDeconv2d(_ExactConvBase):
    """ConvTranspose2d, stride 2, doubling the size (paper's ``deconv(k)``)."""

    out_dim = 1

    def __init__(self, cin, cout, kernel=5):
        super().__init__()
        self.layer = nn.ConvTranspose2d(cin, cout, kernel, stride=2, padding=kernel // 2,
                                        output_padding=1)
        self._init_exact_buffers()

    def forward_float(self, x):
        return self.layer(x)

    def forward_exact(self, x):
        acc = exact_conv.conv_transpose2d(x, self.w_int, self._digits(), self._bias_max(), (2, 2),
                                          self.layer.padding, self.layer.output_padding)
        return self._rescale(acc)


class ExactReLU(ExactModule):
    def forward_float(self, x):
        return F.relu(x)

    def forward_exact(self, x):
        return x.clamp_min(0)


class ExactLeakyReLU(ExactModule):
    def forward_float(self, x):
        return F.leaky_relu(x, LEAKY_SLOPE)

    def forward_exact(self, x):
        return torch.where(x < 0, torch.floor(x * LEAKY_SLOPE), x)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """clamp(x/4 + 1/2, 0, 1): a sigmoid stand-in that fixed point computes exactly."""
    return (x * 0.25 + 0.5).clamp(0.0, 1.0)


class ExactSqueezeExcite(ExactModule):
    """Squeeze-excitation (bias-free FCs) with a hard-sigmoid gate: ``x * gate(x)``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = ExactConv2d(channels, hidden, 1, bias=False)
        self.fc2 = ExactConv2d(hidden, channels, 1, bias=False)
        self.relu = ExactReLU()

    def forward_float(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * hard_sigmoid(self.fc2(self.relu(self.fc1(s))))

    def forward_exact(self, x):
        # sum of integers is exact; one correctly rounded division, then floor
        s = torch.floor(x.sum(dim=(2, 3), keepdim=True) / float(x.shape[2] * x.shape[3]))
        g = self.fc2(self.relu(self.fc1(s)))
        gate = (torch.floor(g * 0.25) + ONE / 2).clamp(0.0, ONE)
        return torch.floor(x * gate / ONE)


class ExactSequential(nn.Sequential):
    """nn.Sequential of exact modules (mode follows the children)."""


def exact_modules(root: nn.Module) -> Iterator[ExactModule]:
    for m in root.modules():
        if isinstance(m, ExactModule):
            yield m


def freeze_exact(root: nn.Module) -> None:
    """Compute the integer weights of every exact layer under ``root`` from its float weights."""
    for m in root.modules():
        if isinstance(m, _ExactConvBase):
            m.freeze()


def set_exact(root: nn.Module, exact: bool) -> None:
    for m in exact_modules(root):
        m.exact = exact


@contextlib.contextmanager
def exact_mode(root: nn.Module):
    """Run ``root``'s entropy path in exact arithmetic inside the block.

    cuDNN is switched off for the block: its FFT/Winograd algorithms do not keep
    integers exact, PyTorch's own im2col + GEMM path does.
    """
    set_exact(root, True)
    prev = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = prev
        set_exact(root, False)


def to_fixed(x: torch.Tensor) -> torch.Tensor:
    """Float tensor already on the 2**-FRAC_BITS grid -> integer-valued float64."""
    return torch.round(x.double() * ONE)


def from_fixed(x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (x / ONE).to(dtype)
