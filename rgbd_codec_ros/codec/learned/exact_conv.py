"""Fast exact convolutions of the entropy-parameter path: 7-bit digits through an int8 GEMM,
where this CPU's int8 GEMM is fast.

Why: the probability path works on integers held in float64 (see fixedpoint.py), and torch
has no fast float64 convolution on the CPU (``F.conv2d`` in float64 is its generic
``_slow_conv2d_forward``, im2col + dgemm). Measured on a 2-core AMD EPYC with AVX-512 VNNI
(session 3), neither an own im2col + float64 GEMM (the same work) nor float32 with operands
split so that every partial sum stays below 2**24 wins: with 12-bit weights and activations
up to 2**16, the float32 split needs at least four products, each costing about a quarter of
the float64 one. Integer arithmetic does there: ``torch._int_mm`` (int8 x int8 -> int32,
oneDNN on the CPU) runs about 10x faster than a float64 GEMM of the same shape.

Not on every CPU. On a 2-core AMD EPYC with AVX2 only (torch's CPU capability ``AVX2``, no
VNNI; session 6) ``torch._int_mm`` is a slow generic loop: 0.65 GMAC/s, 7x slower than a
float64 GEMM of the same shape, so the digit path made a whole lite decode 5.5x slower (3.8 s
against 0.69 s for the tiny test model at 640x480) and a 128->96 5x5 layer at 30x40 took 35 s
against 59 ms. So ``auto`` measures both kernels once per process on a small probe layer
(:func:`kernel_choice`) and uses the int8 digits only where they win by a margin. Both are
exact, so the choice changes the speed and never a bit of the output.

How, and why it is exact:

- every operand is written in balanced base-128 digits, each in [-64, 63]:
  ``v = sum_i d_i * 128**i``. Weights need 2 digits (|w| <= 2047), activations as many as
  their largest magnitude needs (3 for |x| < 2**20);
- one int8 GEMM computes every digit pair's partial sums at once (weight digits stacked on
  the rows, activation digits on the columns). A digit product is at most 64*64 = 2**12 in
  magnitude and a sum has K terms, so with K < 2**19 every int32 partial sum is below 2**31:
  nothing can overflow, and integer addition is associative, so the result does not depend
  on the summation order, the blocking, the thread count or the instruction set. Digits
  stay within 7 bits so that even CPUs without VNNI (whose int8 kernels add pairs of
  u8 x s8 products in saturating int16) cannot saturate: 2 * 191 * 64 < 2**15 whichever
  operand the library shifts to unsigned;
- the digit blocks are recombined with their powers of 128 in int64 (exact) and converted
  to float64, exact because the result is an integer below 2**53 (checked, see below).

The reference (``F.conv2d`` / ``F.conv_transpose2d`` in float64) is exact when every
partial sum is below 2**53; ``max|x| * max_o sum|w[o]|`` (plus the bias) bounds them, and
is computed for every call. Within that bound both paths give the true integer sums, hence
the same bits. Outside it (never seen with trained weights, whose sums stay near 2**31),
and for anything the int8 path does not cover (other devices, more than ``MAX_DIGITS``
digits, tiny outputs, a failed self-test of the int8 kernel, a CPU where ``auto`` measured
the int8 digits slower), the reference runs, i.e.
exactly what ran before. The self-test runs once per process: extreme digit values against
an int64 product.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

#: every partial sum below this is an exactly representable integer in float64
EXACT_LIMIT = float(2 ** 53)
DIGIT_BITS = 7
BASE = 1 << DIGIT_BITS          # 128
HALF = BASE // 2                # digits in [-HALF, HALF - 1]
#: activation digits the int8 path handles (5 digits: |x| up to about 2**34)
MAX_DIGITS = 5
#: largest reduction length whose int32 digit sums cannot overflow: K * 64 * 64 < 2**31
MAX_K = (1 << 31) // (HALF * HALF) - 1
#: below this many output positions the reference kernel is as fast (squeeze-excite FCs)
MIN_POSITIONS = 16
#: below this reduction length (1x1 and narrow convolutions) splitting into digits costs more
#: than the float64 GEMM it saves (measured on the lite model: 1x1 over 256 channels is 1.0 ms
#: in float64, 5.8 ms as digits; 5x5 over 48 channels gains)
MIN_K = 512
#: kernels: "auto" (int8 digits where covered and measured faster on this CPU, else the
#: reference), "int8" (int8 digits wherever covered, whatever their speed), "reference"
#: (float64 F.conv2d)
KERNELS = ("auto", "int8", "reference")
#: the int8 digits must beat the reference by this factor on the probe to be chosen by "auto"
#: (a near tie is not worth the digit bookkeeping's extra memory)
INT8_MARGIN = 1.25

_state = threading.local()
_selftest: Optional[bool] = None
_selftest_lock = threading.Lock()
_choice: Optional[dict] = None
_choice_lock = threading.Lock()


def _kernel() -> str:
    k = getattr(_state, "kernel", None)
    if k is None:
        k = os.environ.get("RGBD_CODEC_EXACT_KERNEL", "auto")
        if k not in KERNELS:
            k = "auto"
    return k


@contextlib.contextmanager
def exact_kernel(name: str):
    """Select the exact convolution kernel inside the block (this thread): auto | int8 | reference."""
    if name not in KERNELS:
        raise ValueError(f"exact kernel must be one of {KERNELS}, got {name!r}")
    before = getattr(_state, "kernel", None)
    _state.kernel = name
    try:
        yield
    finally:
        _state.kernel = before


def digits_needed(max_abs: float) -> int:
    """Balanced base-128 digits needed for every integer of magnitude <= max_abs."""
    n, reach = 1, HALF - 1          # n digits reach (HALF - 1) * (BASE**n - 1) / (BASE - 1) both ways
    while reach < max_abs:
        n += 1
        reach = reach * BASE + HALF - 1
    return n


def digit_offset(n: int) -> int:
    """64 * (1 + 128 + ... + 128**(n-1)): v + offset is in [0, 128**n) for every v that n digits reach."""
    return HALF * ((BASE ** n - 1) // (BASE - 1))


def split_digits(x: torch.Tensor, n: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Integer-valued tensor -> int8 digits [n, *x.shape] in [-64, 63], digit i of weight 128**i.

    With u = x + offset in [0, 128**n), the digits are u's base-128 digits minus 64:
    ``x = sum_i (u_i - 64) * 128**i``. The caller picks n with ``digits_needed(max|x|)``,
    which guarantees that range.
    """
    if out is None:
        out = torch.empty((n,) + tuple(x.shape), dtype=torch.int8, device=x.device)
    itype = torch.int32 if n <= 4 else torch.int64         # 128**4 = 2**28
    u = x.to(itype) + digit_offset(n)
    for i in range(n):
        d = (u >> (DIGIT_BITS * i)) & (BASE - 1) if i else u & (BASE - 1)
        out[i].copy_(d)
        out[i].sub_(HALF)
    return out


def int8_gemm_ok() -> bool:
    """Once per process: does this machine's int8 GEMM give exact int32 sums on our digit range?"""
    global _selftest
    if _selftest is None:
        with _selftest_lock:
            if _selftest is None:
                _selftest = _run_selftest()
    return _selftest


def _run_selftest() -> bool:
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        k = 4099
        cases = []
        for lo_a, lo_b in ((-HALF, -HALF), (HALF - 1, -HALF), (HALF - 1, HALF - 1), (-HALF, HALF - 1)):
            cases.append((torch.full((24, k), lo_a, dtype=torch.int8), torch.full((k, 40), lo_b, dtype=torch.int8)))
        cases.append((torch.randint(-HALF, HALF, (37, k), generator=g, dtype=torch.int8),
                      torch.randint(-HALF, HALF, (k, 53), generator=g, dtype=torch.int8)))
        a = torch.randint(-HALF, HALF, (70, 300), generator=g, dtype=torch.int8)
        a[:, ::2] = HALF - 1                            # adjacent extreme pairs (int16 pair sums)
        b = torch.full((300, 33), -HALF, dtype=torch.int8)
        cases.append((a, b))
        for a, b in cases:
            if not torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long()):
                return False
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def kernel_choice() -> dict:
    """Once per process: which exact kernel ``auto`` uses on this CPU, and the timings behind it.

    One probe layer (5x5, 32 -> 32 channels, 16x24 positions, activations of 3 digits: the
    shape of the entropy path's context convolutions, scaled down so that the probe costs a
    few ms where int8 is fast and about 0.1 s where it is not), each kernel run once to warm
    up and then timed as the best of two. -> {"kernel": "int8" | "reference", "int8_ms",
    "reference_ms"}; "int8_ms" is None where the int8 GEMM is missing or failed its self-test.
    """
    global _choice
    if _choice is None:
        with _choice_lock:
            if _choice is None:
                _choice = _measure_choice()
    return dict(_choice)


def _measure_choice() -> dict:
    import time
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-2 ** 15, 2 ** 15, (1, 32, 16, 24), generator=g).double()
    w = torch.randint(-2047, 2048, (32, 32, 5, 5), generator=g).double()
    ref_ms = _best_ms(lambda: F.conv2d(x, w, None, 1, 2), time.perf_counter)
    if not int8_gemm_ok():
        return {"kernel": "reference", "int8_ms": None, "reference_ms": ref_ms}
    wd = WeightDigits()
    with exact_kernel("int8"):
        int8_ms = _best_ms(lambda: conv2d(x, w, wd, 0.0, (1, 1), (2, 2)), time.perf_counter)
    kernel = "int8" if int8_ms * INT8_MARGIN < ref_ms else "reference"
    return {"kernel": kernel, "int8_ms": int8_ms, "reference_ms": ref_ms}


def _best_ms(fn, clock) -> float:
    fn()                                    # warm-up (oneDNN primitives, weight digits)
    best = float("inf")
    for _ in range(2):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best * 1e3


class WeightDigits:
    """A layer's integer weights as stacked int8 digit matrices, rebuilt when the weights change."""

    def __init__(self):
        self.key = None

    def get(self, w: torch.Tensor, transposed: bool):
        # holds w itself: "same tensor object, same version" (in-place changes bump the version)
        key = (w, w._version, transposed)
        if self.key is None or self.key[0] is not w or self.key[1:] != key[1:]:
            out_dim = 1 if transposed else 0
            dims = [d for d in range(w.dim()) if d != out_dim]
            self.row_sum = float(w.abs().sum(dim=dims).max()) if w.numel() else 0.0
            self.max_abs = float(w.abs().max()) if w.numel() else 0.0
            if transposed:       # [C, O, kh, kw] -> rows (O, kh, kw), columns C
                mat = w.permute(1, 2, 3, 0).reshape(-1, w.shape[0])
            else:                # [O, C, kh, kw] -> rows O, columns (C, kh, kw)
                mat = w.reshape(w.shape[0], -1)
            self.nw = digits_needed(self.max_abs)
            self.mat = split_digits(mat, self.nw).reshape(self.nw * mat.shape[0], mat.shape[1]).contiguous()
            self.rows = mat.shape[0]
            self.key = key
        return self


def _combine(r: torch.Tensor, nw: int, rows: int, nx: int, cols: int) -> torch.Tensor:
    """int32 digit-pair sums [nw*rows, nx*cols] -> exact int64 totals [rows, cols]."""
    r = r.view(nw, rows, nx, cols).to(torch.int64)
    out = r[0, :, 0].clone()
    for i in range(nw):
        for j in range(nx):
            if i or j:
                out.add_(r[i, :, j], alpha=1 << (DIGIT_BITS * (i + j)))
    return out


def _use_int8(x: torch.Tensor, wd: WeightDigits, bias_max: float, k: int, positions: int) -> int:
    """Digits of x for the int8 path, or 0 for the reference kernel."""
    kernel = _kernel()
    if (kernel == "reference" or x.device.type != "cpu" or positions < MIN_POSITIONS
            or not MIN_K <= k <= MAX_K):
        return 0
    max_x = float(x.abs().max()) if x.numel() else 0.0
    if max_x * wd.row_sum + bias_max >= EXACT_LIMIT:   # the reference's own exactness bound
        return 0
    nx = digits_needed(max_x)
    if nx > MAX_DIGITS or wd.nw > MAX_DIGITS or not int8_gemm_ok():
        return 0
    if kernel == "auto" and kernel_choice()["kernel"] != "int8":
        return 0
    return nx


def conv2d(x: torch.Tensor, w: torch.Tensor, wd: WeightDigits, bias_max: float,
           stride: Tuple[int, int], padding: Tuple[int, int]) -> torch.Tensor:
    """Exact ``F.conv2d(x, w, None, stride, padding)`` of integer-valued float64 tensors."""
    b, c, h, wdt = x.shape
    o, ci, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wdt + 2 * pw - kw) // sw + 1
    digits = wd.get(w, transposed=False)
    nx = _use_int8(x, digits, bias_max, ci * kh * kw, b * ho * wo)
    if not nx:
        return F.conv2d(x, w, None, stride, padding)
    hp, wp = h + 2 * ph, wdt + 2 * pw
    if ph or pw:
        xd = torch.zeros((nx, b, c, hp, wp), dtype=torch.int8, device=x.device)
        split_digits(x, nx, xd[:, :, :, ph:ph + h, pw:pw + wdt])
        xd = xd.view(nx * b, c, hp, wp)
    else:
        xd = split_digits(x, nx).view(nx * b, c, h, wdt)
    # im2col on int8 digits: [C, kh, kw, nx*b, ho, wo] -> [C*kh*kw, nx*b*ho*wo]
    cols = xd.as_strided((c, kh, kw, nx * b, ho, wo),
                         (hp * wp, wp, 1, c * hp * wp, sh * wp, sw)).reshape(c * kh * kw, nx * b * ho * wo)
    r = torch._int_mm(digits.mat, cols)
    out = _combine(r, digits.nw, o, nx, b * ho * wo)
    return out.view(o, b, ho, wo).permute(1, 0, 2, 3).to(torch.float64).contiguous()


def conv_transpose2d(x: torch.Tensor, w: torch.Tensor, wd: WeightDigits, bias_max: float,
                     stride: Tuple[int, int], padding: Tuple[int, int],
                     output_padding: Tuple[int, int]) -> torch.Tensor:
    """Exact ``F.conv_transpose2d(x, w, None, stride, padding, output_padding)`` (w: [C, O, kh, kw]).

    Each input pixel's contribution to its kh x kw output window is one int8 GEMM (exact);
    ``F.fold`` then adds the overlapping windows in float64, integers within the same bound.
    """
    b, c, h, wdt = x.shape
    ci, o, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    ho = (h - 1) * sh - 2 * ph + kh + output_padding[0]
    wo = (wdt - 1) * sw - 2 * pw + kw + output_padding[1]
    digits = wd.get(w, transposed=True)
    nx = _use_int8(x, digits, bias_max, ci, b * h * wdt)
    if not nx:
        return F.conv_transpose2d(x, w, None, stride, padding, output_padding)
    xd = split_digits(x, nx).view(nx, b, c, h * wdt).permute(2, 0, 1, 3).reshape(c, nx * b * h * wdt)
    r = torch._int_mm(digits.mat, xd)
    out = _combine(r, digits.nw, o * kh * kw, nx, b * h * wdt)
    cols = out.view(o * kh * kw, b, h * wdt).permute(1, 0, 2).to(torch.float64)
    return F.fold(cols, (ho, wo), (kh, kw), padding=(ph, pw), stride=(sh, sw))
