"""The backend interface every RGB-D codec implements (classical and learned).

This module knows nothing of ROS. A backend turns one synchronized colour +
depth pair into one self-describing payload (``bytes``) and back. The ROS
nodes, the bag tools and the command line only ever talk to this interface.

Conventions (REP 118 for depth):
- ``color`` is ``uint8``, either HxWx3 RGB or HxW grey (mono).
- ``depth`` is either ``uint16`` (integer units; ``depth_scale_per_m`` units
  per metre, 1000 for millimetres; 0 = no measurement) or ``float32`` metres
  (``depth_scale_per_m`` = 1.0; NaN = no measurement; +-inf and values <= 0
  are treated as no measurement and come back as NaN).
- A decoded frame has the same shapes and dtypes as the encoded one, and its
  holes are exactly where the input's holes were.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np


class CodecError(ValueError):
    """A payload or an input that cannot be coded; the message says why."""


class MissingReference(CodecError):
    """A temporally predicted frame whose reference this decoder does not hold (it joined late,
    a frame was lost, or the stream restarted). Nothing is decoded; decoding resumes at the
    next keyframe. ``stale`` is True for a frame older than (or equal to) the last decoded one,
    a duplicate or a late reordered copy: dropping it loses nothing and needs no keyframe."""

    def __init__(self, message: str, stale: bool = False):
        super().__init__(message)
        self.stale = stale


#: Decode limits (README, "Security"). A payload's declared frame size is checked against its
#: backend's ``max_pixels`` option before any memory is allocated or native code runs; these
#: are the defaults. Classical decoding is cheap per pixel (3840x2160 covers every RGB-D camera
#: with depth registered to colour); the learned decoder costs ~1 s per 0.3 MP on 2 CPU cores,
#: so it defaults to 1920x1088 (a forged frame must not buy a minute of CPU).
DEFAULT_MAX_PIXELS = 3840 * 2160
LEARNED_DEFAULT_MAX_PIXELS = 1920 * 1088
#: no option may raise a limit above this (the containers' own u16 sizes allow 4 G pixels)
HARD_MAX_PIXELS = 1 << 26


def check_max_pixels(value) -> int:
    """A ``max_pixels`` option value, or CodecError."""
    if isinstance(value, bool):
        raise CodecError(f"max_pixels must be an integer, got {value!r}")
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        raise CodecError(f"max_pixels must be an integer, got {value!r}") from None
    if v != value and not isinstance(value, str) or not 1 <= v <= HARD_MAX_PIXELS:
        raise CodecError(f"max_pixels must be an integer in 1..{HARD_MAX_PIXELS}, got {value!r}")
    return v


def check_frame_size(width: int, height: int, max_pixels: int, what: str = "payload") -> None:
    """Refuse a declared frame size before decoding: empty, or over the pixel budget."""
    if width < 1 or height < 1:
        raise CodecError(f"{what} declares an empty frame {width}x{height}")
    if width * height > max_pixels:
        raise CodecError(f"{what} declares a {width}x{height} frame ({width * height} pixels), over "
                         f"this decoder's limit of {max_pixels} pixels (option/parameter max_pixels)")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a backend, as the backend's schema publishes it.

    The nodes declare one typed ROS parameter per entry (``<backend>.<name>``) with its
    description and range; backends check the options they are given against their schema
    (``check_options``). ``range`` bounds a number (inclusive); ``choices`` lists the allowed
    strings; ``live`` says whether a running backend takes a new value (``configure``) or only a
    new backend does; ``encode`` / ``decode`` say which side uses it.
    """
    name: str
    type: type
    default: Any
    description: str
    range: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[str, ...]] = None
    live: bool = True
    encode: bool = True
    decode: bool = False

    def allowed(self) -> str:
        """What values are allowed, in words (used in every refusal)."""
        if self.type is bool:
            return "true or false"
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.type is int:
            lo, hi = self.range if self.range is not None else (None, None)
            return "an integer" + (f" in {int(lo)}..{int(hi)}" if lo is not None else "")
        if self.type is float:
            return "a number" + (f" in [{self.range[0]:g}, {self.range[1]:g}]" if self.range is not None else "")
        return "a string"

    def check(self, value: Any) -> Any:
        """``value`` as this option's type (an integer given as 2.0 or "2" becomes 2), or CodecError
        saying what is allowed."""
        bad = CodecError(f"{self.name} must be {self.allowed()}; got {value!r}")
        if self.type is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise bad
            return bool(value)
        if self.type is str:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, float, np.number)):
                raise bad
            text = str(value)  # a path of digits parses as a number
            if self.choices is not None:
                if text.lower() not in self.choices:
                    raise bad
                return text.lower()
            return text
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.number)):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if not np.isfinite(number) or (self.type is int and not number.is_integer()):
            raise bad
        if self.range is not None and not self.range[0] <= number <= self.range[1]:
            raise bad
        return int(number) if self.type is int else number


def check_options(schema: Sequence[OptionSpec], options: Mapping[str, Any], codec: str) -> Dict[str, Any]:
    """Options checked against a schema: every name known (else CodecError listing the known
    ones), every value of its type and range. Returns the values converted to their types."""
    specs = {spec.name: spec for spec in schema}
    out: Dict[str, Any] = {}
    for key, value in options.items():
        spec = specs.get(key)
        if spec is None:
            raise CodecError(f"unknown option {key!r} for the {codec} codec (known: {', '.join(sorted(specs))})")
        out[key] = spec.check(value)
    return out


#: where the schema of a built-in backend lives: modules that import neither torch nor FFmpeg
_SCHEMA_MODULES = {
    "classical": "rgbd_codec_ros.codec.classical",
    "learned": "rgbd_codec_ros.codec.learned.schema",
}


def option_schema(name: str) -> Tuple[OptionSpec, ...]:
    """The option schema of a backend by name, without making one (nor importing torch)."""
    import importlib

    if name in _SCHEMA_MODULES:
        return tuple(importlib.import_module(_SCHEMA_MODULES[name]).OPTION_SCHEMA)
    if name not in _REGISTRY:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(available_backends())}")
    return tuple(getattr(_REGISTRY[name], "option_schema", ()))


@dataclass
class RGBDFrame:
    color: np.ndarray
    depth: np.ndarray
    depth_scale_per_m: float = 1000.0
    #: capture time in seconds, where known: temporal codecs pace their rate control by it
    stamp_s: Optional[float] = None

    def validate(self) -> None:
        """Raise CodecError if the pair is not something a backend accepts."""
        c, d = self.color, self.depth
        if not isinstance(c, np.ndarray) or not isinstance(d, np.ndarray):
            raise CodecError("colour and depth must be numpy arrays")
        if c.dtype != np.uint8 or c.ndim not in (2, 3) or (c.ndim == 3 and c.shape[2] != 3):
            raise CodecError(
                f"colour must be uint8 HxWx3 (RGB) or HxW (mono), got {c.dtype} {c.shape}")
        if d.ndim != 2 or d.dtype not in (np.uint16, np.float32):
            raise CodecError(f"depth must be HxW uint16 or float32, got {d.dtype} {d.shape}")
        if c.shape[0] == 0 or c.shape[1] == 0:
            raise CodecError("empty image")
        if c.shape[:2] != d.shape:
            raise CodecError(
                f"colour {c.shape[1]}x{c.shape[0]} and depth {d.shape[1]}x{d.shape[0]} "
                "differ in size; register depth to the colour camera first")
        if not np.isfinite(self.depth_scale_per_m) or self.depth_scale_per_m <= 0:
            raise CodecError(f"depth_scale_per_m must be > 0, got {self.depth_scale_per_m}")
        if d.dtype == np.float32 and self.depth_scale_per_m != 1.0:
            raise CodecError("float32 depth is in metres: depth_scale_per_m must be 1.0")

    @property
    def width(self) -> int:
        return int(self.color.shape[1])

    @property
    def height(self) -> int:
        return int(self.color.shape[0])

    def hole_mask(self) -> np.ndarray:
        """True where depth has no measurement."""
        d = self.depth
        if d.dtype == np.uint16:
            return d == 0
        return ~np.isfinite(d) | (d <= 0)


@dataclass
class EncodedRGBD:
    """One coded pair. ``payload`` is everything ``decode`` needs."""
    payload: bytes
    codec: str
    model_id: str
    quality: str
    bytes_rgb: Optional[int] = None     # None where the streams are not separable
    bytes_depth: Optional[int] = None
    info: Dict[str, Any] = field(default_factory=dict)
    #: False for a temporally predicted frame: it decodes only after the frames before it,
    #: back to the last keyframe (intra-only codecs: every frame is a keyframe)
    keyframe: bool = True


class CodecBackend(abc.ABC):
    """A codec. Instances are cheap to call repeatedly; options may change between calls."""

    #: registry name, written into every message / payload
    name: str = ""
    #: the options ``configure`` / the constructor take (``OptionSpec``: type, range, default, ...)
    option_schema: Tuple[OptionSpec, ...] = ()

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Identifies what a decoder needs (e.g. weights name + hash); '' if nothing."""

    @property
    @abc.abstractmethod
    def quality(self) -> str:
        """The current quality settings as a short human-readable string."""

    @abc.abstractmethod
    def configure(self, **options: Any) -> None:
        """Change options (quality, ...); raise CodecError naming a bad option."""

    @abc.abstractmethod
    def encode(self, frame: RGBDFrame) -> EncodedRGBD:
        """Code one pair. Raise CodecError for inputs it cannot code."""

    @abc.abstractmethod
    def decode(self, payload: bytes) -> RGBDFrame:
        """Decode one payload. Raise CodecError (never return a wrong image) on a bad payload.
        A temporal backend decodes its stream in order and raises MissingReference for a
        predicted frame whose reference it does not hold."""

    @property
    def temporal(self) -> bool:
        """True when the current settings code frames against earlier ones."""
        return False

    def request_keyframe(self) -> None:
        """Make the next encoded frame a keyframe (a no-op for intra-only settings)."""

    def reset_decoder(self) -> None:
        """Forget the decoding state (the next predicted frame needs a keyframe first)."""


_REGISTRY: Dict[str, Callable[..., CodecBackend]] = {}
#: built-in backends, imported only when asked for (the learned one pulls in torch, slow to import)
_BUILTIN_MODULES = {
    "classical": "rgbd_codec_ros.codec.classical",
    "learned": "rgbd_codec_ros.codec.learned.backend",
}


def register_backend(name: str, factory: Callable[..., CodecBackend]) -> None:
    _REGISTRY[name] = factory


def available_backends() -> list:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def create_backend(name: str, **options: Any) -> CodecBackend:
    """Instantiate a backend by name, e.g. ``create_backend('classical', color_quality=90)``."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        import importlib
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(available_backends())}")
    return _REGISTRY[name](**options)
