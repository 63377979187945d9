"""The learned joint RGB-D codec as a ``CodecBackend`` (name "learned")."""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..base import (LEARNED_DEFAULT_MAX_PIXELS, CodecBackend, CodecError, EncodedRGBD, RGBDFrame,
                    check_frame_size, check_max_pixels, check_options, register_backend)
from . import bitstream as bs
from .depth import (decode_far_depth, decode_mask, depth_to_metres, encode_far_depth, encode_mask, fill_holes,
                    far_step, normalise, restore_depth)
from .model import PAD_MULTIPLE, LatentMismatch, RGBDCompressionModel
from .runtime import RUNTIMES, RuntimeUnavailable, make_runtime
from .schema import MAX_THREADS, OPTION_SCHEMA
from .weights_check import WeightsError
from .weights_io import load_model

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "models")
#: the weights an encoder uses unless told otherwise: the joint model of the paper (the training
#: campaign's line started from the separate weights), which on the held-out split needs about a
#: quarter fewer bits than `lite-separate` in colour and in depth (models/lite.md, session 6);
#: `weights=lite-separate` selects the separate ablation
DEFAULT_WEIGHTS = "lite.pt"
MIN_SIZE = 128   # Bi-CPT needs ~15 px at 1/8 scale
#: a rANS stream of compressai's coder is whole 32-bit words, at least its 64-bit final state
RANS_MIN_BYTES = 8
RANS_WORD = 4


def check_threads(value) -> int:
    """The ``threads`` option (0 = leave torch's setting), or CodecError."""
    if isinstance(value, bool):
        raise CodecError(f"threads must be an integer 0..{MAX_THREADS}, got {value!r}")
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        raise CodecError(f"threads must be an integer 0..{MAX_THREADS}, got {value!r}") from None
    if not 0 <= v <= MAX_THREADS:
        raise CodecError(f"threads must be an integer 0..{MAX_THREADS} (0 = leave as is), got {value!r}")
    return v


def check_header(header: bs.LearnedFrameHeader, sections: Dict[str, bytes],
                 max_pixels: int = LEARNED_DEFAULT_MAX_PIXELS) -> None:
    """Every field of a learned frame's header against hard limits, before any memory, model
    or native code: used by ``decode`` and by ``rgbd-codec info``. CodecError says what is wrong."""
    h, w = header.height, header.width
    check_frame_size(w, h, max_pixels, "learned payload")
    if (header.padded_height, header.padded_width) != padded_size(h, w):
        raise CodecError(f"learned payload has inconsistent sizes {w}x{h} / "
                         f"{header.padded_width}x{header.padded_height}")
    if (header.z_height, header.z_width) != (header.padded_height // 64, header.padded_width // 64):
        raise CodecError("learned payload has an inconsistent latent size")
    for name in ("z_rgb", "z_depth", "y_rgb", "y_depth"):
        n = len(sections[name])
        if n < RANS_MIN_BYTES or n % RANS_WORD:
            raise CodecError(f"learned payload section {name} of {n} bytes is not a rANS stream "
                             f"(whole {RANS_WORD}-byte words, at least {RANS_MIN_BYTES})")
    if not sections["hole_mask"] or not sections["clipped_mask"]:
        raise CodecError("learned payload lacks its hole or far-pixel mask")
    if header.color_mode not in (bs.COLOR_RGB, bs.COLOR_MONO) or header.depth_type not in (bs.DEPTH_U16, bs.DEPTH_F32):
        raise CodecError("learned payload has an unknown colour mode or depth type")
    if not np.isfinite(header.depth_scale_per_m) or header.depth_scale_per_m <= 0:
        raise CodecError("learned payload has an invalid depth scale")
    if header.depth_type == bs.DEPTH_F32 and header.depth_scale_per_m != 1.0:
        raise CodecError("learned payload: float32 depth must have a scale of 1 (metres)")
    if not np.isfinite(header.quality):
        raise CodecError("learned payload has a non-finite quality")


def resolve_weights(name_or_path: Optional[str]) -> Optional[str]:
    """A weights file path, or the name of one in the package's models/ folder ('lite', 'lite-separate')."""
    if name_or_path is None or os.path.isfile(name_or_path):
        return name_or_path
    candidate = os.path.join(MODELS_DIR, name_or_path if name_or_path.endswith(".pt") else name_or_path + ".pt")
    if os.path.isfile(candidate):
        return candidate
    raise CodecError(f"model {name_or_path}: no such file, and no {os.path.basename(candidate)} in {MODELS_DIR}")


def padded_size(height: int, width: int) -> Tuple[int, int]:
    def up(v):
        return max(MIN_SIZE, -(-v // PAD_MULTIPLE) * PAD_MULTIPLE)
    return up(height), up(width)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise CodecError(f"device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CodecError("device 'cuda' requested but CUDA is not available; use device=cpu")
    return device


class LearnedBackend(CodecBackend):
    """Options: weights (the encoder's weights file; default: the shipped lite model),
    quality (a trained index 0..Q-1, or any value from -1 to Q-1 in steps of 1/256: fractions
    interpolate the quality gains between trained points, values below 0 extrapolate them to
    lower rates), device (cpu|cuda|auto), threads (CPU threads, 0 = leave as is),
    model_path (more weights the decoder may be asked for: files or folders, ':'-separated),
    pixel_exact (default true: decoded pixels bit-identical whatever the thread setting, by
    synthesising on one CPU thread; false: faster multi-threaded synthesis whose pixels may
    differ in the last bit between machines; the decoded latents are exact either way),
    max_pixels (largest frame a payload may declare, default LEARNED_DEFAULT_MAX_PIXELS:
    checked before any model runs),
    runtime (what runs the float transforms g_a / g_s: auto | torch | onnxruntime; see
    runtime.py. auto: onnxruntime for weights loaded from files on the CPU when it is installed
    and its export agrees with torch, else torch; an in-memory ``model`` stays on torch under
    auto. The entropy path is exact in every runtime, so streams decode across runtimes;
    decoded pixels across runtimes differ by at most 1 colour level and 1 depth unit or 0.1 %).

    pixel_exact per runtime: torch synthesises on one CPU thread; onnxruntime uses the
    configured threads if its multi-threaded output is bit-identical to its one-thread output
    on a probe (checked when the session is made), else one thread. Either way the pixels are
    independent of the thread count for that runtime on that machine.

    A decoder finds the weights a payload names by their id among: the encoder's
    weights, the package's models/ folder, ``model_path`` and ``$RGBD_CODEC_MODEL_PATH``.
    """

    name = "learned"
    #: the options and their ranges (schema.py: readable without importing torch)
    option_schema = OPTION_SCHEMA
    #: what ``configure`` takes on a running backend; the other options only a new backend takes
    LIVE_OPTIONS = tuple(spec.name for spec in OPTION_SCHEMA if spec.live)

    def __init__(self, weights: Optional[str] = None, quality: float = 1, device: str = "auto",
                 threads: int = 0, model: Optional[RGBDCompressionModel] = None,
                 model_id: Optional[str] = None, model_path: str = "", pixel_exact: bool = True,
                 max_pixels: int = LEARNED_DEFAULT_MAX_PIXELS, runtime: str = "auto"):
        given = dict(device=device, threads=threads, model_path=model_path, pixel_exact=pixel_exact,
                     max_pixels=max_pixels, runtime=runtime)
        if weights is not None:
            given["weights"] = weights
        check_options(OPTION_SCHEMA, given, self.name)  # names, types, ranges, before any file is read
        self._device = resolve_device(device)
        threads = check_threads(threads)
        self._max_pixels = check_max_pixels(max_pixels)
        if threads:
            torch.set_num_threads(threads)
        self._search = [p for p in str(model_path).split(os.pathsep) if p]
        self._search += [p for p in os.environ.get("RGBD_CODEC_MODEL_PATH", "").split(os.pathsep) if p]
        self._search.append(MODELS_DIR)
        self._model: Optional[RGBDCompressionModel] = None
        self._model_id = ""
        self._runtime = self._check_runtime(runtime)
        #: id(model) -> "torch-fallback" where auto could not use onnxruntime (not retried per frame)
        self._prepared: Dict[int, str] = {}
        self._in_memory = model is not None
        if model is not None:   # an in-memory frozen model (tests, evaluation during training)
            self._model, self._model_id = model.to(self._device).eval(), model_id or model.preset.name
        elif weights is not None or os.path.isfile(os.path.join(MODELS_DIR, DEFAULT_WEIGHTS)):
            self._model, self._model_id = self._load(weights or os.path.join(MODELS_DIR, DEFAULT_WEIGHTS))
        # without weights of its own the backend can still decode payloads whose weights it finds
        self._decoders: Dict[str, RGBDCompressionModel] = {}
        #: weights files seen on the search path: path -> ((mtime, size), model id or None);
        #: a payload naming an unknown id costs a stat per file, not a load of every file
        self._weights_index: Dict[str, Tuple[Tuple[float, int], Optional[str]]] = {}
        if self._model is not None:
            self._decoders[self._model_id] = self._model
        self._quality = 0.0
        self._pixel_exact = True
        self.configure(quality=quality, pixel_exact=pixel_exact)

    def _load(self, path: str):
        if not os.path.isfile(path):
            raise CodecError(f"learned-codec weights {path} not found; pass weights=PATH "
                             "(train some with 'rgbd-codec train')")
        try:
            model, meta = load_model(path, self._device)
        except WeightsError as exc:
            raise CodecError(f"cannot load learned-codec weights: {exc}") from None
        except (RuntimeError, KeyError, ValueError, TypeError, OSError) as exc:
            raise CodecError(f"cannot load learned-codec weights {path}: {exc}") from None
        return model, meta["model_id"]

    def _encoder_model(self) -> RGBDCompressionModel:
        if self._model is None:
            raise CodecError(f"no learned-codec weights to encode with: {os.path.join(MODELS_DIR, DEFAULT_WEIGHTS)} "
                             "is not installed; pass weights=PATH")
        return self._model

    # ---------------------------------------------------------------- interface
    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def quality(self) -> str:
        q = self._quality
        if self._model is None or q != int(q) or q < 0:
            return f"q={q:g}"
        return f"q={int(q)} ({self._model.preset.qualities[int(q)]})"

    @property
    def model(self) -> Optional[RGBDCompressionModel]:
        return self._model

    def configure(self, **options: Any) -> None:
        checked = check_options(OPTION_SCHEMA, options, self.name)  # names, types, ranges
        for key in checked:
            if key not in self.LIVE_OPTIONS:
                raise CodecError(f"{key} is fixed when the learned backend is made; a running one takes "
                                 f"{', '.join(self.LIVE_OPTIONS)}")
        for key, value in options.items():
            if key == "quality":
                try:
                    # on the header's 1/256 grid, so that the decoder uses the very same gains
                    q = round(float(value) * bs.QUALITY_STEPS) / bs.QUALITY_STEPS
                except (TypeError, ValueError, OverflowError):
                    raise CodecError(f"quality must be a number, got {value!r}") from None
                if self._model is not None:
                    try:
                        self._model.check_quality(q)
                    except ValueError as exc:
                        raise CodecError(f"{exc} (model {self._model_id})") from None
                self._quality = q
            elif key == "max_pixels":
                self._max_pixels = check_max_pixels(value)
            elif key == "runtime":
                self._runtime = self._check_runtime(value)
            elif key == "pixel_exact":
                if not isinstance(value, bool):
                    raise CodecError(f"pixel_exact must be true or false, got {value!r}")
                self._pixel_exact = value
                for model in self._decoders.values():
                    model.deterministic_synthesis = value
            else:
                raise CodecError(f"unknown option {key!r} for the learned codec "
                                 "(known: quality, pixel_exact, max_pixels, runtime)")

    def encode(self, frame: RGBDFrame) -> EncodedRGBD:
        frame.validate()
        model, dev = self._encoder_model(), self._device
        self._prepare(model)
        h, w = frame.height, frame.width
        ph, pw = padded_size(h, w)
        color = frame.color
        mono = color.ndim == 2
        rgb = np.repeat(color[..., None], 3, axis=2) if mono else color
        metres, valid = depth_to_metres(frame.depth, frame.depth_scale_per_m)
        norm, clipped = normalise(metres, valid, model.depth_range_m)
        norm = fill_holes(norm, valid)

        x = torch.from_numpy(rgb).to(dev).permute(2, 0, 1)[None].float() / 255.0
        d = torch.from_numpy(norm).to(dev)[None, None]
        x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        d = F.pad(d, (0, pw - w, 0, ph - h), mode="replicate")
        out = model.compress(x, d, self._quality)
        s = out["streams"]
        sections = dict(s, hole_mask=encode_mask(~valid), clipped_mask=encode_mask(clipped),
                        far_depth=encode_far_depth(metres, clipped, model.depth_range_m,
                                                   far_step(self._quality, model.num_qualities)))
        header = bs.LearnedFrameHeader(
            model_id=self._model_id, quality=self._quality, width=w, height=h, padded_width=pw,
            padded_height=ph, color_mode=bs.COLOR_MONO if mono else bs.COLOR_RGB,
            depth_type=bs.DEPTH_U16 if frame.depth.dtype == np.uint16 else bs.DEPTH_F32,
            depth_scale_per_m=float(frame.depth_scale_per_m), depth_range_m=model.depth_range_m,
            z_height=out["z_shape"][0], z_width=out["z_shape"][1], latent_hash=out["latent_hash"])
        payload = bs.pack(header, sections)
        return EncodedRGBD(
            payload=payload, codec=self.name, model_id=self._model_id, quality=self.quality,
            bytes_rgb=len(s["z_rgb"]) + len(s["y_rgb"]),
            bytes_depth=len(s["z_depth"]) + len(s["y_depth"]) + len(sections["hole_mask"])
            + len(sections["clipped_mask"]) + len(sections["far_depth"]),
            info={"estimated_bits": out["estimated_bits"], "clipped_pixels": int(clipped.sum())})

    def decode(self, payload: bytes) -> RGBDFrame:
        header, sections = bs.unpack(payload)
        check_header(header, sections, self._max_pixels)
        h, w = header.height, header.width
        zh, zw = header.z_height, header.z_width
        model = self._model_for(header.model_id)
        self._prepare(model)
        try:
            model.check_quality(header.quality)
        except ValueError:
            raise CodecError(f"learned payload quality {header.quality:g} is out of range for {header.model_id}") \
                from None
        if header.depth_range_m != np.float32(model.depth_range_m):
            raise CodecError(f"learned payload depth range {header.depth_range_m} m differs from the model's")
        holes = decode_mask(sections["hole_mask"], h, w)
        clipped = decode_mask(sections["clipped_mask"], h, w)
        far_metres = decode_far_depth(sections["far_depth"], clipped, header.depth_range_m)
        try:
            x_r, x_d = model.decompress({k: sections[k] for k in ("z_rgb", "z_depth", "y_rgb", "y_depth")},
                                        (zh, zw), header.quality, expected_hash=header.latent_hash)
        except LatentMismatch as exc:
            raise CodecError(f"learned payload does not decode: {exc}") from None
        except (RuntimeError, ValueError, OverflowError, IndexError) as exc:   # a damaged stream
            raise CodecError(f"learned payload does not decode: {exc}") from None
        rgb = (x_r[0, :, :h, :w].permute(1, 2, 0).float().cpu().numpy() * 255.0).round().astype(np.uint8)
        if header.color_mode == bs.COLOR_MONO:
            color = np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8)
        else:
            color = np.ascontiguousarray(rgb)
        norm = x_d[0, 0, :h, :w].float().cpu().numpy()
        dtype = np.uint16 if header.depth_type == bs.DEPTH_U16 else np.float32
        depth = restore_depth(norm, ~holes, clipped, dtype, header.depth_scale_per_m, header.depth_range_m,
                              far_metres)
        scale = 1.0 if dtype == np.float32 else header.depth_scale_per_m
        return RGBDFrame(color=color, depth=depth, depth_scale_per_m=scale)

    def _check_runtime(self, value) -> str:
        if value not in RUNTIMES:
            raise CodecError(f"runtime must be one of {', '.join(RUNTIMES)}, got {value!r}")
        if value == "onnxruntime":
            from .runtime import onnxruntime_available
            if not onnxruntime_available():
                raise CodecError("runtime 'onnxruntime' requested but onnxruntime is not installed "
                                 "(pip install onnxruntime), or use runtime=torch")
            if self._device != "cpu":
                raise CodecError("runtime 'onnxruntime' runs on the CPU; use device=cpu or runtime=torch")
        return value

    @property
    def runtime(self) -> str:
        """The runtime the encoder model's transforms run in now: torch or onnxruntime."""
        if self._model is None:
            return self._runtime
        self._prepare(self._model)
        return "torch" if self._model.transform_runtime is None else "onnxruntime"

    def _prepare(self, model: RGBDCompressionModel) -> None:
        """Give ``model`` the transforms of the selected runtime (exported once, then cached)."""
        want = self._runtime
        if want == "auto" and (self._in_memory and model is self._model):
            want = "torch"          # in-memory models (training, tests) stay on torch unless asked
        if want == "auto" and self._device != "cpu":
            want = "torch"
        if want == "onnxruntime" and self._device != "cpu":
            raise CodecError("runtime 'onnxruntime' runs on the CPU; use device=cpu or runtime=torch")
        if want == "torch":
            model.transform_runtime = None
            return
        current = model.transform_runtime
        if current is not None and getattr(current, "model", None) is model:
            return
        made = model.__dict__.get("_onnx_transforms")      # made before (another backend, a switch)
        if made is not None and getattr(made, "model", None) is model:
            model.transform_runtime = made
            return
        if self._prepared.get(id(model)) == "torch-fallback":
            return                  # auto already fell back to torch for this model
        try:
            rt = make_runtime(model, want)
        except RuntimeUnavailable as exc:
            raise CodecError(f"learned codec: {exc}") from None
        model.transform_runtime = rt
        if rt is None:
            self._prepared[id(model)] = "torch-fallback"
        else:
            model.__dict__["_onnx_transforms"] = rt

    def _weights_files(self):
        for entry in self._search:
            if os.path.isdir(entry):
                yield from sorted(glob.glob(os.path.join(entry, "*.pt")))
            elif os.path.isfile(entry):
                yield entry

    def _model_for(self, model_id: str) -> RGBDCompressionModel:
        if model_id in self._decoders:
            return self._decoders[model_id]
        for path in self._weights_files():
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_mtime, st.st_size)
            seen = self._weights_index.get(path)
            if seen is not None and seen[0] == key:
                continue        # unchanged since it was read: its model is loaded or unusable
            try:
                model, meta = load_model(path, self._device)
            except Exception:   # an unreadable file on the search path is not this payload's model
                self._weights_index[path] = (key, None)
                continue
            self._weights_index[path] = (key, meta["model_id"])
            model.deterministic_synthesis = self._pixel_exact
            self._decoders.setdefault(meta["model_id"], model)
            if meta["model_id"] == model_id:
                return model
        known = ", ".join(sorted(self._decoders)) or "none"
        raise CodecError(f"payload was encoded with model {model_id}, but this decoder has {known}; "
                         "give the decoder those weights (model_path or $RGBD_CODEC_MODEL_PATH)")


register_backend("learned", LearnedBackend)
