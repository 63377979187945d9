"""Codec options as one ROS parameter string: ``"key=value, key=value"``. No ROS imports.

Backends take keyword options (``create_backend(name, **options)``) whose
names differ per backend, so the nodes pass them through as one string
parameter instead of declaring every backend's options.
"""
from __future__ import annotations

from typing import Any, Dict

from rgbd_codec_ros.codec.base import CodecError


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


def parse_codec_options(text: str) -> Dict[str, Any]:
    """``"color_quality=90, depth_codec=rvl"`` -> ``{"color_quality": 90, "depth_codec": "rvl"}``.

    Values become bool (true/false), int, float, or stay strings. Raises
    CodecError naming the bad item.
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
    return options


def format_codec_options(options: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
