"""The learned codec's float transforms (g_a, g_s) through a standard inference runtime.

``runtime`` (a backend option) is one of:

- ``torch``: the modules themselves (also the training path, and the fallback);
- ``onnxruntime``: g_a and g_s exported to ONNX once per weights and run by onnxruntime
  on the CPU;
- ``auto`` (default): onnxruntime when it is installed, the model is on the CPU and the export
  works (and agrees with torch), else torch.

Only the float transforms change runtime. The probability path (hyper-synthesis, contexts,
parameter nets) stays exact integer arithmetic in torch, so the coded stream is decoded
exactly whichever runtime encoded it; what a runtime changes is the analysis output
(hence which stream an encoder writes) and the synthesised pixels, by float rounding only.
Measured on real 640x480 pairs with the shipped weights: a payload encoded with one runtime and
decoded with the other differs from the same-runtime decode by at most 1 colour level and by
at most ``DEPTH_TOLERANCE_UNITS`` depth units (or ``DEPTH_TOLERANCE_REL`` of the value) —
the documented cross-runtime tolerance that ``test/test_learned_speed_paths.py`` checks.

ONNX files are exported here, never downloaded, into ``cache_dir()``
(``$RGBD_CODEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/rgbd_codec_ros``, else
``~/.cache/rgbd_codec_ros``) under ``onnx/``, named by a hash of the transform's own weights,
the exporter's torch version and this module's export version. A cached file is checked like
a fresh export: its outputs on a probe input must agree with torch's, else it is exported again.

Threads: a session uses ``torch.get_num_threads()`` intra-op threads (the backend's ``threads``
option sets it), one inter-op thread, and its threads do not spin while waiting (spinning
threads steal the core of whatever else runs on a robot). Sessions are kept per thread count.

Pixel exactness (``pixel_exact=true``): decoded pixels do not depend on the thread count.
With torch that is one-thread synthesis (torch's CPU convolutions sum in a thread-dependent
order). With onnxruntime, the multi-threaded session is used only if it gives bit-identical
output to a one-thread session on a probe input when the sessions are made; otherwise
synthesis uses a one-thread session. Across runtimes pixels differ within the tolerance.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime")
#: bump when the export changes (names, opset, wrappers): old cache files are then not used
EXPORT_VERSION = 1
OPSET = 17
#: a fresh or cached export must agree with torch on the probe input within this (outputs are in [0, 1]
#: for g_s and O(10) for g_a; measured differences are about 1e-5)
AGREE_ATOL = 1e-3
#: cross-runtime tolerance of decoded pixels (documented; checked by the tests)
COLOR_TOLERANCE_LEVELS = 1
DEPTH_TOLERANCE_UNITS = 1
DEPTH_TOLERANCE_REL = 1e-3


class RuntimeUnavailable(RuntimeError):
    pass


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> str:
    root = os.environ.get("RGBD_CODEC_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "rgbd_codec_ros")
    return root


def module_hash(module: nn.Module, extra: str = "") -> str:
    """Hash of a transform's weights (names, dtypes, shapes, values) and of the exporter."""
    h = hashlib.sha256()
    h.update(f"{EXPORT_VERSION}|{OPSET}|{torch.__version__}|{extra}".encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:20]


class _Pair(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, a, b):
        return self.inner(a, b)


#: part -> (input names, output names)
_PARTS = {
    "g_a": (("rgb", "depth"), ("y_rgb", "y_depth")),
    "g_s": (("y_rgb", "y_depth"), ("x_rgb", "x_depth")),
}


def _probe_inputs(model, part: str):
    g = torch.Generator().manual_seed(7)
    if part == "g_a":
        return torch.rand(1, 3, 128, 192, generator=g), torch.rand(1, 1, 128, 192, generator=g)
    M = model.preset.M
    return (torch.randn(1, M, 8, 12, generator=g) * 2, torch.randn(1, M, 8, 12, generator=g) * 2)


def _export(module: nn.Module, part: str, probe) -> bytes:
    names_in, names_out = _PARTS[part]
    dyn = {n: {2: "h_" + n, 3: "w_" + n} for n in names_in + names_out}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(input_names=list(names_in), output_names=list(names_out), dynamic_axes=dyn,
                      opset_version=OPSET)
        try:
            torch.onnx.export(_Pair(module).eval(), probe, buf, dynamo=False, **kwargs)
        except TypeError:      # a torch without the ``dynamo`` switch: the TorchScript exporter
            torch.onnx.export(_Pair(module).eval(), probe, buf, **kwargs)
    return buf.getvalue()


class OnnxTransforms:
    """onnxruntime sessions of one model's g_a and g_s (CPU)."""

    def __init__(self, model, cache: Optional[str] = None):
        if not onnxruntime_available():
            raise RuntimeUnavailable("onnxruntime is not installed")
        if next(model.parameters()).device.type != "cpu":
            raise RuntimeUnavailable("the onnxruntime transforms run on the CPU only")
        self.model = model
        self.cache = cache or cache_dir()
        self._blobs: Dict[str, bytes] = {}
        self._sessions: Dict[Tuple[str, int], object] = {}
        self._exact_threads: Dict[int, bool] = {}
        self._lock = threading.Lock()
        for part in _PARTS:            # export (or read) and check both now: errors surface here
            self._blob(part)

    # ------------------------------------------------------------------ export and cache
    def _path(self, part: str) -> str:
        module = getattr(self.model, part)
        key = module_hash(module, f"{part}|{self.model.preset.name}|{self.model.variant}")
        return os.path.join(self.cache, "onnx", f"{self.model.preset.name}-{self.model.variant}-{part}-{key}.onnx")

    def _blob(self, part: str) -> bytes:
        if part in self._blobs:
            return self._blobs[part]
        module = getattr(self.model, part)
        probe = _probe_inputs(self.model, part)
        with torch.no_grad():
            ref = module(*probe)
        path = self._path(part)
        blob = None
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    blob = f.read()
                if not self._agrees(blob, part, probe, ref):
                    log.warning("cached ONNX file %s disagrees with torch; exporting again", path)
                    blob = None
            except Exception as exc:        # unreadable or not a model: export again
                log.warning("cached ONNX file %s unusable (%s); exporting again", path, exc)
                blob = None
        if blob is None:
            blob = _export(module, part, probe)
            if not self._agrees(blob, part, probe, ref):
                raise RuntimeUnavailable(f"the ONNX export of {part} does not agree with torch")
            self._store(path, blob)
        self._blobs[part] = blob
        return blob

    @staticmethod
    def _store(path: str, blob: bytes) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)           # atomic: a concurrent reader sees all or nothing
        except OSError as exc:              # a read-only cache: keep the export in memory
            log.info("cannot write the ONNX cache %s: %s", path, exc)

    def _agrees(self, blob: bytes, part: str, probe, ref) -> bool:
        out = self._run_blob(blob, part, probe, 1)
        return all(o.shape == tuple(r.shape) and float((torch.from_numpy(o) - r).abs().max()) <= AGREE_ATOL
                   for o, r in zip(out, ref))

    # ------------------------------------------------------------------ sessions
    @staticmethod
    def _make_session(blob: bytes, threads: int):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])

    def _session(self, part: str, threads: int):
        key = (part, threads)
        s = self._sessions.get(key)
        if s is None:
            with self._lock:
                s = self._sessions.get(key)
                if s is None:
                    s = self._sessions[key] = self._make_session(self._blob(part), threads)
        return s

    def _run_blob(self, blob, part, inputs, threads):
        return self._run(self._make_session(blob, threads), part, inputs)

    @staticmethod
    def _run(session, part, inputs):
        names_in, _ = _PARTS[part]
        feed = {n: t.detach().float().contiguous().cpu().numpy() for n, t in zip(names_in, inputs)}
        return session.run(None, feed)

    def synthesis_threads(self, threads: int) -> int:
        """Threads that keep g_s's pixels independent of the thread count (pixel_exact)."""
        if threads <= 1:
            return 1
        ok = self._exact_threads.get(threads)
        if ok is None:
            probe = _probe_inputs(self.model, "g_s")
            probe = tuple(torch.nn.functional.interpolate(p, scale_factor=4, mode="nearest") for p in probe)
            one = self._run(self._session("g_s", 1), "g_s", probe)
            many = self._run(self._session("g_s", threads), "g_s", probe)
            ok = all((a == b).all() for a, b in zip(one, many))
            self._exact_threads[threads] = bool(ok)
        return threads if ok else 1

    # ------------------------------------------------------------------ the transforms
    def g_a(self, rgb: torch.Tensor, depth: torch.Tensor):
        out = self._run(self._session("g_a", torch.get_num_threads()), "g_a", (rgb, depth))
        return tuple(torch.from_numpy(o).to(rgb.dtype) for o in out)

    def g_s(self, y_r: torch.Tensor, y_d: torch.Tensor, pixel_exact: bool = True):
        threads = torch.get_num_threads()
        if pixel_exact:
            threads = self.synthesis_threads(threads)
        out = self._run(self._session("g_s", threads), "g_s", (y_r, y_d))
        return tuple(torch.from_numpy(o).to(y_r.dtype) for o in out)


def check_runtime(value) -> str:
    if value not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {value!r}")
    return value


def make_runtime(model, runtime: str, cache: Optional[str] = None) -> Optional[OnnxTransforms]:
    """The transforms object for ``runtime`` (None = torch). ``auto`` falls back to torch with a
    log line; an explicit ``onnxruntime`` that cannot run raises RuntimeUnavailable."""
    check_runtime(runtime)
    if runtime == "torch":
        return None
    try:
        return OnnxTransforms(model, cache)
    except Exception as exc:
        if runtime == "onnxruntime":
            if isinstance(exc, RuntimeUnavailable):
                raise
            raise RuntimeUnavailable(f"onnxruntime transforms unavailable: {exc}") from exc
        log.info("learned codec: transforms run in torch (onnxruntime unavailable: %s)", exc)
        return None
