"""Backend options for the nodes: the ``codec_options`` shorthand string and the typed
parameters declared from each backend's option schema. No ROS imports.

Each backend publishes an option schema (``OptionSpec``: name, type, range or choices,
default, description, live or not; rgbd_codec_ros.codec.base). The nodes declare one typed
parameter per entry, named ``<backend>.<option>`` (``classical.color_quality``,
``learned.quality``), so that ``ros2 param describe`` shows each option's type and range. The
encoder also keeps ``codec_options``, ``"key=value, key=value"``, as a shorthand for the same
options (docs/ros.md, "Backend options", says which wins).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

from rgbd_codec_ros.codec.base import CodecError, OptionSpec, check_options, option_schema


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_codec_options(text: str, schema: Optional[Sequence[OptionSpec]] = None,
                        codec: str = "this") -> Dict[str, Any]:
    """``"color_quality=90, depth_codec=rvl"`` -> ``{"color_quality": 90, "depth_codec": "rvl"}``.

    Without a schema, values become bool (true/false), int, float, or stay strings. With the
    backend's schema, every name must be one of its options and every value becomes that
    option's type (``weights=123`` stays the string '123', ``depth_max_error_mm=2`` is 2.0) within
    its range. Raises CodecError naming the bad item.
    """
    options: Dict[str, Any] = {}
    for item in str(text).replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier():
            raise CodecError(f"codec option {item!r} is not of the form name=value")
        if key in options:
            raise CodecError(f"codec option {key!r} is given twice")
        options[key] = _value(value)
    if schema is not None:
        options = check_options(schema, options, codec)
    return options


def format_codec_options(options: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())


def parameter_name(codec: str, option: str) -> str:
    """The typed parameter of a backend option: ``classical.color_quality``."""
    return f"{codec}.{option}"


def typed_options(codecs: Iterable[str], side: str, owned: Iterable[str] = ()) -> Dict[str, Tuple[str, OptionSpec]]:
    """``{parameter name: (codec, OptionSpec)}`` of every schema entry one side uses
    (``side`` "encode" or "decode"), less the options the node owns as parameters of its own."""
    owned = set(owned)
    out: Dict[str, Tuple[str, OptionSpec]] = {}
    for codec in codecs:
        for spec in option_schema(codec):
            if getattr(spec, side) and spec.name not in owned:
                out[parameter_name(codec, spec.name)] = (codec, spec)
    return out


def explicit_options(values: Dict[str, Any], schema: Sequence[OptionSpec]) -> Dict[str, Any]:
    """The options among typed parameter values that say something: those off their default
    (a backend made without them gets the default anyway; '' of weights or model_path is
    'not given')."""
    defaults = {spec.name: spec.default for spec in schema}
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}
