"""Message types for the bag tools: a rosbags typestore that knows CompressedRGBD.

rosbag2 stores, for every topic, the message type name, the complete message
definition (the type's .msg text followed by the .msg text of every type it
uses, each after a line of 80 ``=`` and a ``MSG: pkg/msg/Type`` line) and the
RIHS01 type-description hash. This module produces all three for
``rgbd_codec_ros/msg/CompressedRGBD`` without needing the generated ROS type
support, so the bag tools work on machines that have no ROS install.

Reading goes the other way: a bag recorded with an older definition of a type (e.g.
CompressedRGBD format 1, before ``sequence`` and ``keyframe``) must be deserialized with the
definition stored in the bag, since CDR carries no field names. :func:`read_type` registers such
a stored definition under a private name and returns the name to deserialize with.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from rgbd_codec_ros.codec.base import CodecError

PACKAGE = "rgbd_codec_ros"
COMPRESSED_RGBD = "rgbd_codec_ros/msg/CompressedRGBD"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"

_HERE = Path(__file__).resolve().parent
#: copy shipped inside the Python package (kept equal to msg/CompressedRGBD.msg by a test)
PACKAGED_MSG = _HERE / "CompressedRGBD.msg"
#: the package source tree's definition, when running from a checkout
SOURCE_MSG = _HERE.parents[1] / "msg" / "CompressedRGBD.msg"

_PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring",
}


def _share_dirs() -> List[Path]:
    """Install prefixes' share/ folders: AMENT_PREFIX_PATH, then this interpreter's prefix."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [sys.prefix]
    seen, out = set(), []
    for p in prefixes:
        d = Path(p) / "share"
        if d not in seen and d.is_dir():
            seen.add(d)
            out.append(d)
    return out


def find_compressed_rgbd_msg() -> Path:
    """The CompressedRGBD.msg to use: source checkout, installed share/, or the packaged copy."""
    candidates = [SOURCE_MSG] + [d / PACKAGE / "msg" / "CompressedRGBD.msg" for d in _share_dirs()]
    candidates.append(PACKAGED_MSG)
    for c in candidates:
        if c.is_file():
            return c
    raise CodecError(
        "cannot find CompressedRGBD.msg (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall rgbd_codec_ros")


def _find_msg_file(msgtype: str) -> Optional[Path]:
    pkg, _, name = msgtype.split("/")
    if msgtype == COMPRESSED_RGBD:
        return find_compressed_rgbd_msg()
    for d in _share_dirs():
        f = d / pkg / "msg" / f"{name}.msg"
        if f.is_file():
            return f
    return None


def _field_types(text: str, pkg: str) -> List[str]:
    """Message types (pkg/msg/Name) that the fields of a .msg text refer to, in order."""
    out: List[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        typ = line.split()[0]   # constants ("type NAME=value") are primitives: skipped below
        typ = re.sub(r"\[.*\]$", "", typ)
        typ = re.sub(r"<=\d+$", "", typ)   # bounded string
        if typ in _PRIMITIVES:
            continue
        if typ == "Header":
            full = "std_msgs/msg/Header"
        elif "/" in typ:
            parts = typ.split("/")
            full = f"{parts[0]}/msg/{parts[-1]}"
        else:
            full = f"{pkg}/msg/{typ}"
        if full not in out:
            out.append(full)
    return out


def _raw_definition(msgtype: str) -> Optional[str]:
    """The complete ros2msg definition from the installed .msg files, as rosbag2 records it.

    None where any .msg file in the dependency tree cannot be found.
    """
    order: List[str] = []
    texts: Dict[str, str] = {}
    todo = [msgtype]
    while todo:
        t = todo.pop(0)
        if t in texts:
            continue
        f = _find_msg_file(t)
        if f is None:
            return None
        text = f.read_text(encoding="utf-8")
        texts[t] = text
        order.append(t)
        todo.extend(_field_types(text, t.split("/")[0]))
    parts = [texts[order[0]].rstrip("\n")]
    for t in order[1:]:
        parts.append("=" * 80 + f"\nMSG: {t}\n" + texts[t].rstrip("\n"))
    return "\n".join(parts) + "\n"


@lru_cache(maxsize=1)
def _base_typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    text = find_compressed_rgbd_msg().read_text(encoding="utf-8")
    store.register(get_types_from_msg(text, COMPRESSED_RGBD))
    return store


def typestore():
    """A rosbags typestore (ROS 2 Kilted) with CompressedRGBD registered.

    Shared: callers may register further types from bags they read.
    """
    return _base_typestore()


def register_from_definition(store, msgtype: str, msgdef: str) -> bool:
    """Register a type from a bag's stored ros2msg definition; False where that is not possible."""
    if msgtype in store.types:
        return True
    if not msgdef:
        return False
    from rosbags.typesys import get_types_from_msg

    try:
        store.register(get_types_from_msg(msgdef, msgtype))
    except Exception:
        return False
    return msgtype in store.types


def read_type(conn) -> str:
    """The typestore name to deserialize a rosbags connection's messages with.

    Its own type name when the bag stores no definition or one with the layout this
    typestore knows; otherwise the definition stored in the bag, registered under a private
    name (see :func:`stored_definition_type`)."""
    from rosbags.interfaces import MessageDefinitionFormat

    if conn.msgdef.format != MessageDefinitionFormat.MSG:
        return conn.msgtype     # none stored (or IDL, which rosbag2 writes for no msg type here)
    return stored_definition_type(conn.msgtype, conn.msgdef.data)


@lru_cache(maxsize=256)
def stored_definition_type(msgtype: str, msgdef: str) -> str:
    """Register a bag's stored ros2msg definition of ``msgtype`` unless its layout is the
    known one; returns the name its messages deserialize with.

    The stored type, and every type of its definition whose layout differs from the known
    one (with the types that use those), are registered as ``<pkg>_stored_<tag>/msg/<Name>``
    (``tag``: a digest of the definition text), so they never replace the current types.
    A definition that does not parse falls back to the known type: the per-message checks
    then refuse what does not fit."""
    from rosbags.typesys import get_types_from_msg

    store = typestore()
    try:
        stored = get_types_from_msg(msgdef, msgtype)
    except Exception:
        return msgtype
    renamed = _types_to_rename(store, stored)
    if not renamed:
        return msgtype
    tag = hashlib.sha256(msgdef.encode("utf-8")).hexdigest()[:12]
    names = {}
    for name in renamed:
        pkg, _, typ = name.split("/")
        names[name] = f"{pkg}_stored_{tag}/msg/{typ}"
    private = {names[name]: (consts, [(fname, _rename_field(desc, names)) for fname, desc in fields])
               for name, (consts, fields) in stored.items() if name in renamed}
    try:
        store.register(private)
    except Exception:
        return msgtype
    return names[msgtype]


def _referenced_types(desc) -> List[str]:
    """Names of the message types a rosbags field descriptor refers to."""
    from rosbags.interfaces import Nodetype

    kind, rest = desc
    if kind == Nodetype.NAME:
        return [rest]
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        return _referenced_types(rest[0])
    return []


def _rename_field(desc, names: Dict[str, str]):
    from rosbags.interfaces import Nodetype

    kind, rest = desc
    if kind == Nodetype.NAME:
        return kind, names.get(rest, rest)
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        return kind, (_rename_field(rest[0], names), rest[1])
    return desc


def _types_to_rename(store, stored) -> List[str]:
    """The types of a parsed definition that the store does not hold with the same layout,
    and (transitively) the types that refer to them."""
    renamed = {name for name, (_, fields) in stored.items()
               if name not in store.fielddefs or store.fielddefs[name][1] != fields}
    grew = True
    while grew:
        grew = False
        for name, (_, fields) in stored.items():
            if name not in renamed and any(ref in renamed for _, desc in fields
                                           for ref in _referenced_types(desc)):
                renamed.add(name)
                grew = True
    return sorted(renamed)


@lru_cache(maxsize=None)
def definition_and_hash(msgtype: str) -> Tuple[str, str]:
    """(complete ros2msg definition text, RIHS01 hash) for a known type."""
    store = typestore()
    if msgtype not in store.types:
        raise CodecError(f"unknown message type {msgtype!r}")
    rihs = store.hash_rihs01(msgtype)
    text = _raw_definition(msgtype)
    if text is None:
        text, _ = store.generate_msgdef(msgtype, ros_version=2)
    return text, rihs


def compressed_rgbd_hash() -> str:
    return definition_and_hash(COMPRESSED_RGBD)[1]


def ros_msgtype(name: str) -> str:
    """Accept pkg/Type or pkg/msg/Type; return pkg/msg/Type."""
    parts = name.strip().split("/")
    if len(parts) == 2:
        return f"{parts[0]}/msg/{parts[1]}"
    if len(parts) == 3:
        return name.strip()
    raise CodecError(f"not a message type name: {name!r} (expected pkg/msg/Type)")


def iter_types(names: Iterable[str]) -> List[str]:
    return [ros_msgtype(n) for n in names]
