"""Bag metadata the rest of the ROS world relies on: message definition text and RIHS01 hash."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rgbd_codec_ros.bag import msgdefs

REPO = Path(__file__).resolve().parents[1]
MSG_FILE = REPO / "msg" / "CompressedRGBD.msg"


def rosidl_type_description(msg_file: Path, workdir: Path) -> dict:
    """Run rosidl's own generators (msg -> idl -> type description JSON) on ``msg_file``."""
    from rosidl_adapter.msg import convert_msg_to_idl
    from rosidl_generator_type_description import generate_type_hash

    pkg = workdir / "pkg"
    (pkg / "msg").mkdir(parents=True)
    (pkg / "msg" / msg_file.name).write_bytes(msg_file.read_bytes())
    convert_msg_to_idl(pkg, "rgbd_codec_ros", Path("msg") / msg_file.name, workdir / "idl" / "msg")
    share = Path(sys.prefix) / "share"
    args = {
        "package_name": "rgbd_codec_ros",
        "output_dir": str(workdir / "out"),
        "idl_tuples": [f"{workdir / 'idl'}:msg/{msg_file.stem}.idl"],
        "include_paths": [f"{p}:{share / p}" for p in ("std_msgs", "sensor_msgs",
                                                       "builtin_interfaces")],
    }
    (workdir / "args.json").write_text(json.dumps(args))
    [out] = generate_type_hash(str(workdir / "args.json"))
    return json.loads(Path(out).read_text())


def test_packaged_msg_copy_matches_source():
    # the bag tools ship a copy of the .msg for installs without the ROS share/ tree
    assert msgdefs.PACKAGED_MSG.read_bytes() == MSG_FILE.read_bytes()


def test_rihs01_equals_rosidl(tmp_path, capsys):
    desc = rosidl_type_description(MSG_FILE, tmp_path)
    capsys.readouterr()  # the generators print what they write
    expected = next(h["hash_string"] for h in desc["type_hashes"]
                    if h["type_name"] == msgdefs.COMPRESSED_RGBD)
    assert expected.startswith("RIHS01_")
    assert msgdefs.compressed_rgbd_hash() == expected
    # and the standard types the tools write, against the JSON their wheels install
    for msgtype in (msgdefs.IMAGE, msgdefs.CAMERA_INFO):
        pkg, _, name = msgtype.split("/")
        shipped = json.loads((Path(sys.prefix) / "share" / pkg / "msg" / f"{name}.json").read_text())
        assert msgdefs.definition_and_hash(msgtype)[1] == shipped["type_hashes"][0]["hash_string"]


def test_rihs01_equals_installed_build():
    """The message build (scripts/setup_venv.sh) installs the type description with its hash."""
    installed = Path(sys.prefix) / "share" / "rgbd_codec_ros" / "msg" / "CompressedRGBD.json"
    if not installed.is_file():
        pytest.skip(f"message not built into {sys.prefix} (run scripts/setup_venv.sh)")
    desc = json.loads(installed.read_text())
    assert desc["type_hashes"][0]["type_name"] == msgdefs.COMPRESSED_RGBD
    assert msgdefs.compressed_rgbd_hash() == desc["type_hashes"][0]["hash_string"]


def test_definition_text_is_rosbag2_ros2msg():
    text, _ = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    # top-level definition first, verbatim, without a delimiter
    assert text.startswith(MSG_FILE.read_text().rstrip("\n") + "\n" + "=" * 80 + "\n")
    sections = text.split("=" * 80 + "\n")[1:]
    names = [s.splitlines()[0] for s in sections]
    assert all(n.startswith("MSG: ") for n in names)
    # every type CompressedRGBD uses, directly or not, exactly once
    assert sorted(names) == sorted(f"MSG: {t}" for t in (
        "std_msgs/msg/Header", "builtin_interfaces/msg/Time", "sensor_msgs/msg/CameraInfo",
        "sensor_msgs/msg/RegionOfInterest"))


def test_definition_text_parses_in_independent_decoders():
    """mcap-ros2-support (what Foxglove-style tools use) and rosbags both build decoders from it."""
    from mcap_ros2._dynamic import generate_dynamic
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    text, _ = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    decoders = generate_dynamic(msgdefs.COMPRESSED_RGBD, text)
    assert msgdefs.COMPRESSED_RGBD in decoders
    store = get_typestore(Stores.EMPTY)
    store.register(get_types_from_msg(text, msgdefs.COMPRESSED_RGBD))
    assert store.hash_rihs01(msgdefs.COMPRESSED_RGBD) == msgdefs.compressed_rgbd_hash()
