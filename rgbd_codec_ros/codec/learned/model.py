"""The joint RGB-D compression model (Bi-CPT transforms + Bi-CEE entropy model).

``RGBDCompressionModel.forward`` is the training path. ``compress`` /
``decompress`` code real rANS streams through the exact entropy path, and
``reconstruct`` is the model's own quantised reconstruction (the same exact
path without the entropy coder), which ``decompress(compress(x))`` equals.
Weights files (export, loading, model ids) are ``weights_io.py``'s.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from compressai.ans import BufferedRansEncoder, RansDecoder

from .compressai_adapter import TABLE_BUFFERS, coder_tables
from .entropy import (MODALITIES, BiCEE, CrossModalHyperSynthesis, ExactCoder, FactorizedLatent,
                      TrainingCoder)
from .fixedpoint import ONE, exact_mode, freeze_exact
from .transforms import VARIANT_LINKS, HyperAnalysis, JointAnalysis, JointSynthesis

#: the paper's lambda table; quality "a_b" = (LAMBDAS[a] for rgb, LAMBDAS[b] for depth)
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18)


@dataclass(frozen=True)
class Preset:
    name: str
    N: int
    M: int
    groups: Tuple[int, ...]
    context_widths: Tuple[int, int]
    analysis_blocks: int = 3
    synthesis_blocks: int = 2
    qualities: Tuple[str, ...] = ("0_0", "1_1", "3_3", "5_5")
    depth_range_m: float = 10.0


PRESETS: Dict[str, Preset] = {
    # the paper's size: N=192, M=320, ELIC groups
    "paper": Preset("paper", 192, 320, (16, 16, 32, 64, 192), (224, 128),
                    qualities=("2_2", "3_3", "4_4", "5_5")),
    # trained and shipped here (2-core CPU); see the model card for the measured choice
    "lite": Preset("lite", 32, 64, (4, 4, 8, 16, 32), (48, 32), analysis_blocks=1, synthesis_blocks=1),
    # for tests only
    "tiny": Preset("tiny", 16, 32, (2, 2, 4, 8, 16), (16, 16), analysis_blocks=1, synthesis_blocks=1),
}

PAD_MULTIPLE = 64


def parse_quality(name: str) -> Tuple[int, int]:
    """'a_b' -> (a, b) lambda-table indices."""
    try:
        a, b = (int(p) for p in name.split("_"))
    except ValueError:
        raise ValueError(f"quality {name!r} is not in 'a_b' notation (e.g. '3_3')") from None
    if not (0 <= a < len(LAMBDAS) and 0 <= b < len(LAMBDAS)):
        raise ValueError(f"quality {name!r}: indices must be 0..{len(LAMBDAS) - 1}")
    return a, b


#: lowest coding quality: one trained step below the lowest trained point (extrapolated gains)
QUALITY_MIN = -1.0


class RGBDCompressionModel(nn.Module):
    def __init__(self, preset: Preset, variant: str = "joint"):
        super().__init__()
        if variant not in VARIANT_LINKS:
            raise ValueError(f"variant must be one of {sorted(VARIANT_LINKS)}, got {variant!r}")
        self.preset, self.variant = preset, variant
        N, M = preset.N, preset.M
        self.g_a = JointAnalysis(N, M, variant, preset.analysis_blocks)
        self.g_s = JointSynthesis(N, M, variant, preset.synthesis_blocks)
        self.h_a = nn.ModuleDict({m: HyperAnalysis(N, M) for m in MODALITIES})
        self.z = nn.ModuleDict({m: FactorizedLatent(N) for m in MODALITIES})
        self.h_s = CrossModalHyperSynthesis(N, M, variant)
        self.bicee = BiCEE(M, preset.groups, variant, preset.context_widths)
        # quality-conditioned gains on y (one model, several operating points)
        Q = len(preset.qualities)
        init = torch.tensor([0.5 * math.log(2.0) * (q - (Q - 1)) for q in range(Q)]).view(Q, 1)
        self.log_gain = nn.ParameterDict({m: nn.Parameter(init.repeat(1, M).clone()) for m in MODALITIES})
        self.log_inv_gain = nn.ParameterDict({m: nn.Parameter(-init.repeat(1, M).clone()) for m in MODALITIES})
        self.frozen = False
        #: decode pixels with one CPU thread: float convolutions on the CPU sum in an order
        #: that depends on the thread count, so this is what makes decoded images
        #: bit-identical whatever the caller's thread setting (latents are exact regardless)
        self.deterministic_synthesis = True

    # ---------------------------------------------------------------- properties
    @property
    def num_qualities(self) -> int:
        return len(self.preset.qualities)

    @property
    def lambdas(self) -> List[Tuple[float, float]]:
        return [tuple(LAMBDAS[i] for i in parse_quality(q)) for q in self.preset.qualities]

    @property
    def depth_range_m(self) -> float:
        return self.preset.depth_range_m

    def main_parameters(self):
        return [p for n, p in self.named_parameters() if not n.endswith(".quantiles")]

    def aux_parameters(self):
        return [p for n, p in self.named_parameters() if n.endswith(".quantiles")]

    def aux_loss(self) -> torch.Tensor:
        return sum(self.z[m].bottleneck.loss() for m in MODALITIES)

    def check_quality(self, quality: float) -> float:
        """A coding quality: a trained index 0..Q-1, a fraction between two of them (gains
        interpolated), or down to QUALITY_MIN below the lowest (gains extrapolated)."""
        q = float(quality)
        lowest = QUALITY_MIN if self.num_qualities > 1 else 0.0   # between points needs two
        if not lowest <= q <= self.num_qualities - 1:
            raise ValueError(f"quality must be {lowest:g}..{self.num_qualities - 1} "
                             f"(integers are the trained points), got {quality}")
        return q

    def _gain(self, m: str, quality, inverse=False) -> torch.Tensor:
        table = (self.log_inv_gain if inverse else self.log_gain)[m]
        if isinstance(quality, torch.Tensor):    # training: one trained index per sample
            return torch.exp(table[quality]).view(len(quality), -1, 1, 1)
        q = self.check_quality(quality)
        if self.num_qualities == 1:
            return torch.exp(table[0]).view(1, -1, 1, 1)
        # log-linear in the gains between (or below) trained points, as continuous-rate gained
        # codecs do; at a trained index t is 0 or 1 and this is that row exactly. Only the float
        # transforms see the gains, never the exact entropy path.
        i = min(max(int(math.floor(q)), 0), self.num_qualities - 2)
        t = q - i
        return torch.exp(table[i] * (1 - t) + table[i + 1] * t).view(1, -1, 1, 1)

    # ---------------------------------------------------------------- training
    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, quality: Union[int, torch.Tensor] = 0):
        y_r, y_d = self.g_a(rgb, depth)
        y = {"rgb": y_r * self._gain("rgb", quality), "depth": y_d * self._gain("depth", quality)}
        z_hat, z_lik = {}, {}
        for m in MODALITIES:
            z_hat[m], z_lik[m] = self.z[m](self.h_a[m](y[m]))
        p_r, p_d = self.h_s(z_hat["rgb"], z_hat["depth"])
        coder = TrainingCoder(self.bicee, y, noise=self.training)
        y_hat = self.bicee.run({"rgb": p_r, "depth": p_d}, coder)
        x_r, x_d = self.g_s(y_hat["rgb"] * self._gain("rgb", quality, True),
                            y_hat["depth"] * self._gain("depth", quality, True))
        return {
            "x_hat": {"rgb": x_r, "depth": x_d},
            "likelihoods": {m: {"y": coder.likelihoods[m], "z": z_lik[m]} for m in MODALITIES},
        }

    # ---------------------------------------------------------------- exact path
    def freeze(self) -> None:
        """Fix the integer entropy path and the coder tables from the current weights."""
        freeze_exact(self)
        for m in MODALITIES:
            self.z[m].fit_quantiles()
            self.z[m].bottleneck.update(force=True)
        self.bicee.gaussian.update_scale_table(self.bicee.gaussian.scale_table, force=True)
        self.frozen = True

    def _require_frozen(self):
        if not self.frozen:
            raise RuntimeError("call model.freeze() (or load exported weights) before coding")

    # ---------------------------------------------------------------- transform runtime
    @property
    def transform_runtime(self):
        """The runtime that runs g_a / g_s at coding time (runtime.py), None = the torch modules."""
        return self.__dict__.get("_transform_runtime")

    @transform_runtime.setter
    def transform_runtime(self, rt) -> None:
        self.__dict__["_transform_runtime"] = rt

    def _run_g_a(self, rgb, depth):
        rt = self.transform_runtime
        if rt is not None and rgb.device.type == "cpu":
            return rt.g_a(rgb, depth)
        return self.g_a(rgb, depth)

    @torch.no_grad()
    def _analyse(self, rgb, depth, quality: int):
        y_r, y_d = self._run_g_a(rgb, depth)
        y = {"rgb": y_r * self._gain("rgb", quality), "depth": y_d * self._gain("depth", quality)}
        z_sym, z_fixed = {}, {}
        for m in MODALITIES:
            z_sym[m], z_fixed[m] = self.z[m].quantize(self.h_a[m](y[m]))
        return y, z_sym, z_fixed

    @torch.no_grad()
    def _synthesise(self, y_fixed: Dict[str, torch.Tensor], quality: int):
        dtype = next(self.g_s.parameters()).dtype
        y_r = (y_fixed["rgb"] / ONE).to(dtype) * self._gain("rgb", quality, True)
        y_d = (y_fixed["depth"] / ONE).to(dtype) * self._gain("depth", quality, True)
        rt = self.transform_runtime
        if rt is not None and y_r.device.type == "cpu":
            x_r, x_d = rt.g_s(y_r, y_d, pixel_exact=self.deterministic_synthesis)
        else:
            with _synthesis_threads(y_r.device, self.deterministic_synthesis):
                x_r, x_d = self.g_s(y_r, y_d)
        return x_r.clamp(0, 1), x_d.clamp(0, 1)

    @torch.no_grad()
    def _entropy_path(self, z_fixed, coder):
        with exact_mode(self):
            p_r, p_d = self.h_s(z_fixed["rgb"], z_fixed["depth"])
            return self.bicee.run({"rgb": p_r, "depth": p_d}, coder)

    @torch.no_grad()
    def reconstruct(self, rgb, depth, quality: int = 0):
        """The model's own quantised reconstruction through the exact path, plus estimated bits."""
        self._require_frozen()
        y, z_sym, z_fixed = self._analyse(rgb, depth, quality)
        coder = ExactCoder(self.bicee, y=y)
        y_fixed = self._entropy_path(z_fixed, coder)
        x_r, x_d = self._synthesise(y_fixed, quality)
        bits = {m: coder.estimated_bits(m) + self.z[m].estimated_bits(z_sym[m]) for m in MODALITIES}
        return {"x_hat": {"rgb": x_r, "depth": x_d}, "estimated_bits": bits}

    @torch.no_grad()
    def compress(self, rgb, depth, quality: int = 0) -> Dict:
        """Code one padded pair (batch 1) into four rANS streams + a hash of the decoded latents."""
        self._require_frozen()
        if rgb.shape[0] != 1:
            raise ValueError("compress codes one pair at a time")
        y, z_sym, z_fixed = self._analyse(rgb, depth, quality)
        coder = ExactCoder(self.bicee, y=y)
        y_fixed = self._entropy_path(z_fixed, coder)
        streams = {}
        for m in MODALITIES:
            streams["z_" + m] = self._encode_z(m, z_sym[m])
            streams["y_" + m] = self._encode_y(coder.symbols[m], coder.indexes[m])
        bits = {m: coder.estimated_bits(m) + self.z[m].estimated_bits(z_sym[m]) for m in MODALITIES}
        return {"streams": streams, "z_shape": tuple(z_sym["rgb"].shape[2:]),
                "latent_hash": latent_hash(z_fixed, y_fixed), "estimated_bits": bits}

    @torch.no_grad()
    def decompress(self, streams: Dict[str, bytes], z_shape: Tuple[int, int], quality: int = 0,
                   expected_hash: Optional[bytes] = None):
        self._require_frozen()
        device = next(self.parameters()).device
        shape = (1, self.preset.N) + tuple(z_shape)
        z_fixed = {m: self.z[m].dequantize(self._decode_z(m, streams["z_" + m], shape)).to(device)
                   for m in MODALITIES}
        y_symbols = self.preset.M * (z_shape[0] * 4) * (z_shape[1] * 4)
        decoders = {}
        for m in MODALITIES:
            decoders[m] = RansDecoder()
            decoders[m].set_stream(rans_guard(streams["y_" + m], y_symbols))
        tables = self._gaussian_tables()

        def decode_symbols(m, idx):
            return self._decode_y_step(decoders[m], idx, tables)

        coder = ExactCoder(self.bicee, decode_symbols=decode_symbols)
        y_fixed = self._entropy_path(z_fixed, coder)
        if expected_hash is not None and latent_hash(z_fixed, y_fixed) != expected_hash:
            raise LatentMismatch(
                "decoded latents do not match the encoder's (wrong weights or a corrupted stream)")
        return self._synthesise(y_fixed, quality)

    # ---------------------------------------------------------------- rANS
    def _tables(self, name: str, tensors) -> Tuple[list, list, list]:
        """Coder tables as the Python lists compressai's rANS coder takes, converted once.

        ``.tolist()`` of the Gaussian tables costs about 1.5 ms a call, 20 calls a frame
        before; the lists are kept until a table tensor changes (another freeze, a load).
        """
        cache = self.__dict__.setdefault("_rans_tables", {})
        hit = cache.get(name)
        # the cache holds the tensors themselves, so "same object, same version" cannot be fooled
        # by a new buffer at a freed one's address
        if hit is None or len(hit[0]) != len(tensors) or any(
                a is not t or v != t._version for (a, v), t in zip(hit[0], tensors)):
            hit = cache[name] = (tuple((t, t._version) for t in tensors), tuple(t.tolist() for t in tensors))
        return hit[1]

    def _gaussian_tables(self):
        return self._tables("y", coder_tables(self.bicee.gaussian))

    def _z_tables(self, m: str):
        return self._tables("z_" + m, coder_tables(self.z[m].bottleneck))

    def _encode_y(self, symbols: List[torch.Tensor], indexes: List[torch.Tensor]) -> bytes:
        """All steps in coding order through one call: the buffered encoder only queues symbols
        until ``flush``, so this is the stream that one call per step gave, at one table
        conversion instead of twenty."""
        enc = BufferedRansEncoder()
        if symbols:
            s = torch.cat([t.reshape(-1) for t in symbols]).cpu().int().tolist()
            idx = torch.cat([t.reshape(-1) for t in indexes]).cpu()
            cdf, lengths, offsets = self._gaussian_tables()
            used, local = torch.unique(idx, return_inverse=True)   # only the rows in use (see _decode_y_step)
            rows = used.tolist()
            enc.encode_with_indexes(s, local.int().tolist(), [cdf[r] for r in rows], [lengths[r] for r in rows],
                                    [offsets[r] for r in rows])
        return enc.flush()

    @staticmethod
    def _decode_y_step(decoder, idx: torch.Tensor, tables) -> torch.Tensor:
        """One coding step's y symbols from a y stream (a method so benchmarks can time rANS).

        compressai converts every table row it is given on every call (about 1.5 ms for all 64
        rows); a step uses a subset of the scale indexes, so only those rows are passed, with the
        indexes renumbered. The decoder reads row ``idx`` of what it gets, so it decodes the same
        symbols from the same stream.
        """
        idx = idx.cpu()
        cdf, lengths, offsets = tables
        used, local = torch.unique(idx, return_inverse=True)
        if len(used) < len(cdf):
            rows = used.tolist()
            tables = ([cdf[i] for i in rows], [lengths[i] for i in rows], [offsets[i] for i in rows])
            idx = local
        return torch.tensor(decoder.decode_stream(idx.tolist(), *tables), dtype=torch.float64)

    def _encode_z(self, m: str, q: torch.Tensor) -> bytes:
        enc = BufferedRansEncoder()
        idx = self.z[m].channel_indexes(q.shape)
        enc.encode_with_indexes(q.cpu().int().flatten().tolist(), idx.flatten().int().tolist(),
                                *self._z_tables(m))
        return enc.flush()

    def _decode_z(self, m: str, data: bytes, shape) -> torch.Tensor:
        dec = RansDecoder()
        idx = self.z[m].channel_indexes(shape)
        n = int(torch.tensor(shape).prod())
        out = dec.decode_with_indexes(rans_guard(data, n), idx.flatten().int().tolist(), *self._z_tables(m))
        return torch.tensor(out, dtype=torch.float64).view(shape)

    # ---------------------------------------------------------------- weights
    def load_trainable_state(self, finished: "RGBDCompressionModel") -> None:
        """Take the float weights of a finished (frozen) model to train on from them.

        The integer entropy path and coder tables are left out: ``export_weights``
        derives them again from the trained floats.
        """
        own = self.state_dict()
        # lower bounds are constants of the architecture; files exported before format 2 hold
        # them in fp16, where 1e-9 is 0
        state = {k: v for k, v in finished.state_dict().items()
                 if k in own and own[k].shape == v.shape and not _is_constant(k)}
        missing = [k for k in own if k not in state and k.rsplit(".", 1)[-1] not in _FROZEN_ONLY
                   and not _is_constant(k)]
        if missing or finished.preset != self.preset or finished.variant != self.variant:
            raise ValueError(f"weights do not match {self.preset.name}/{self.variant}: {missing[:3]}")
        self.load_state_dict(state, strict=False)
        self.frozen = False

    def export_weights(self, path, metadata: Optional[dict] = None) -> str:
        """Write finished weights and return the model id (``weights_io.export_weights``)."""
        # imported here: weights_io builds models, so it imports this module
        from .weights_io import export_weights
        return export_weights(self, path, metadata)


def rans_guard(data: bytes, symbols: int) -> bytes:
    """The stream followed by zero words, so that decoding ``symbols`` symbols does not read
    past the end of the buffer, whatever the stream holds.

    compressai's native rANS decoder does no bounds checks: a forged or truncated stream makes
    it read (and crash) past its end. A valid stream is read exactly to its end, so the padding
    changes nothing for it. A forged one reads one 32-bit word per symbol at most, plus what its
    escape (bypass) codes ask for; an escape costs about 1/65536 of a symbol's probability mass
    in our tables, so after the stream's own words the reads stay near a word per symbol. The
    guard is two words per symbol plus twice the stream (its own escapes) plus slack. What such
    a stream decodes to is garbage, which the latent hash then refuses.
    """
    pad = 8 * int(symbols) + 2 * len(data) + 4096
    return bytes(data) + bytes(pad)


@contextlib.contextmanager
def _synthesis_threads(device: torch.device, single: bool):
    if not single or device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: buffers that only a frozen model fills (exact integer weights, coder tables)
_FROZEN_ONLY = ("w_int", "b_int", "shift") + TABLE_BUFFERS


class LatentMismatch(RuntimeError):
    pass


def latent_hash(z_fixed: Dict[str, torch.Tensor], y_fixed: Dict[str, torch.Tensor]) -> bytes:
    h = hashlib.sha256()
    for d in (z_fixed, y_fixed):
        for m in MODALITIES:
            h.update(d[m].detach().cpu().to(torch.int64).numpy().tobytes())
    return h.digest()[:8]


def build_model(preset: str = "lite", variant: str = "joint") -> RGBDCompressionModel:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    return RGBDCompressionModel(PRESETS[preset], variant)


def _is_constant(name: str) -> bool:
    """Buffers that are fixed by the architecture, never trained (compressai's LowerBound)."""
    return name.endswith(".bound")


def retired_tensors(preset: Preset, variant: str) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of tensors that weights of this model written by older code hold and that
    the model no longer has. Loaders skip exactly these names; any other unknown tensor stays
    an error.

    The ``separate`` variant used to build the Bi-CPT embedding convolutions of g_a and g_s and
    drop their output (it has no cross-modal link to feed); files and training checkpoints of
    that time hold their 24 tensors, never trained since nothing read them.
    """
    if any(VARIANT_LINKS[variant]):
        return {}
    # the shapes those layers had (3x3, N -> N/2), fixed here: they describe old files
    half = preset.N // 2
    shapes = {}
    for part in ("g_a", "g_s"):
        for i in range(3):
            for m in MODALITIES:
                layer = f"{part}.cpt.{i}.embed_{m}.0"
                shapes[layer + ".weight"] = (half, preset.N, 3, 3)
                shapes[layer + ".bias"] = (half,)
    return shapes
