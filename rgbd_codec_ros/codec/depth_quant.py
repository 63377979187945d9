"""Error-bounded depth quantisation for the lossy classical depth mode.

Depth is in integer units (``u >= 1``; 0 is a hole and never touched). A
quantiser maps ``u`` to an index and the index back to a reconstruction
``r`` with the guarantee

    |r - u| <= bound(u) = floor(max(abs_units, rel * u) - margin)

so the allowed error is a fixed floor (``abs_units``, e.g. 1 mm) that grows
linearly with distance once ``rel * u`` exceeds it (e.g. 0.2 % of the
distance: 2 mm at 1 m, 8 mm at 4 m). The step therefore grows with distance,
in the spirit of the sensors' own depth resolution.

The codebook is built greedily from 1 upwards: an interval starting at ``a``
gets the reconstruction ``r = a + bound(a)`` and extends to the largest ``b``
with ``b - r <= bound(b)``. ``bound`` never decreases and ``x - bound(x)``
never decreases, so every value in ``[a, b]`` is within its own bound of
``r``. Where ``bound`` is the constant floor, intervals have the fixed width
``2 * bound + 1`` and are computed in closed form; only the part where the
bound grows is built level by level (a few thousand levels at most for the
allowed ``rel``), once per parameter set, and cached. Encoder and decoder
build the same codebook from the parameters in the payload header: only
additions, multiplications and ``floor`` on IEEE doubles, so it is identical
on every platform.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .base import CodecError

#: smallest non-zero relative error accepted (keeps the codebook small)
MIN_REL = 5e-4
MAX_REL = 0.2


class DepthQuantiser:
    def __init__(self, abs_units: float, rel: float, margin: float, max_value: int):
        if not (math.isfinite(abs_units) and abs_units >= 0):
            raise CodecError(f"depth error floor must be >= 0, got {abs_units}")
        if not (rel == 0 or MIN_REL <= rel <= MAX_REL):
            raise CodecError(f"relative depth error must be 0 or in [{MIN_REL}, {MAX_REL}], got {rel}")
        if not (math.isfinite(margin) and 0 <= margin < 1):
            raise CodecError(f"quantiser margin must be in [0, 1), got {margin}")
        if max_value < 1 or max_value >= 1 << 32:
            raise CodecError(f"quantiser range 1..{max_value} is not supported")
        self.abs_units, self.rel, self.margin, self.max_value = abs_units, rel, margin, int(max_value)
        self.flat = max(0, self.bound(1))        # bound in the constant region
        self.width = 2 * self.flat + 1
        # end of the region where the bound is the constant floor
        if rel == 0:
            x0 = self.max_value
        else:
            x0 = min(self.max_value, int(abs_units / rel))
            while x0 > 1 and self.bound(x0) != self.flat:
                x0 -= 1
        # uniform intervals lying wholly in [1, x0]
        self.n_uniform = x0 // self.width if x0 >= 1 else 0
        if rel == 0:
            # the last, partial interval is uniform too (its reconstruction is clamped)
            self.n_uniform = -(-self.max_value // self.width)
        start = 1 + self.n_uniform * self.width
        lower, recon = [], []
        a = start
        while a <= self.max_value:
            ba = self.bound(a)
            r = min(a + ba, self.max_value)
            b = self._last_within(r)
            lower.append(a)
            recon.append(r)
            a = b + 1
        self.geo_lower = np.asarray(lower, dtype=np.int64)
        self.geo_recon = np.asarray(recon, dtype=np.int64)
        self.levels = self.n_uniform + len(lower)
        self.uniform_end = start - 1  # last value covered by the uniform part

    def bound(self, x: int) -> int:
        return max(0, int(math.floor(max(self.abs_units, self.rel * x) - self.margin + 1e-9)))

    def _last_within(self, r: int) -> int:
        """Largest x >= r (<= max_value) with x - bound(x) <= r."""
        guess = max(r + self.flat, int((r - self.margin + 1.0) / (1.0 - self.rel)) + 2)
        x = max(r, min(guess, self.max_value))
        while x > r and x - self.bound(x) > r:
            x -= 1
        while x < self.max_value and (x + 1) - self.bound(x + 1) <= r:
            x += 1
        return x

    def quantise(self, u: np.ndarray) -> np.ndarray:
        """Values 1..max_value -> indices 0..levels-1."""
        u = np.asarray(u, dtype=np.int64)
        idx = (u - 1) // self.width
        far = u > self.uniform_end
        if far.any():
            idx[far] = self.n_uniform + np.searchsorted(self.geo_lower, u[far], side="right") - 1
        return idx

    def reconstruct(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.levels):
            raise CodecError("quantised depth index out of range (corrupted payload)")
        out = np.minimum(1 + idx * self.width + self.flat, self.max_value)
        far = idx >= self.n_uniform
        if far.any():
            out[far] = self.geo_recon[idx[far] - self.n_uniform]
        return out


@lru_cache(maxsize=16)
def get_quantiser(abs_units: float, rel: float, margin: float, max_value: int) -> DepthQuantiser:
    return DepthQuantiser(float(abs_units), float(rel), float(margin), int(max_value))
