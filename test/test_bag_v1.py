"""Bags recorded with CompressedRGBD format 1 (before ``sequence`` and ``keyframe``).

Such a bag stores the format 1 definition (test/data/CompressedRGBD_v1.msg) and its RIHS01
hash; its CDR does not parse with the current definition. The bag tools must read each
connection with the definition stored in the bag. The bags here are built the way the format 1
tools wrote them: real pairs, real classical payloads of payload format 1, messages serialized
with the format 1 definition.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import load_real_pairs
from PIL import Image
from test_bag_compress import mcap_messages, run_cli
from test_bag_formats import rosidl_type_description

from rgbd_codec_ros import convert
from rgbd_codec_ros.bag import messages, msgdefs
from rgbd_codec_ros.bag.dataset import list_pairs
from rgbd_codec_ros.bag.storage import AtomicBagWriter
from rgbd_codec_ros.codec import classical, container
from rgbd_codec_ros.codec.base import RGBDFrame, create_backend

V1_MSG = Path(__file__).resolve().parent / "data" / "CompressedRGBD_v1.msg"
#: the hash the format 1 tools stored (docs/bags.md showed it in its `bag info` example)
V1_HASH = "RIHS01_d96c96fba629d48d295764cc7e815a33ac9e633cb9d8a4cf5f3f337568bac208"
TOPIC = "/rgbd/compressed"
PAIRS = 6
#: classical payload format 2 appended stream id u32, sequence u32, frame flags u8 to the header
STREAM_FIELDS = struct.calcsize("<IIB")


def v1_definition() -> str:
    """The complete ros2msg definition a format 1 bag stores: the format 1 .msg text, then the
    standard types it uses (unchanged since)."""
    current, _ = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    return V1_MSG.read_text().rstrip("\n") + "\n" + current[current.index("=" * 80):]


def v1_payload(payload: bytes) -> bytes:
    """A classical payload as format 1 wrote it: the same sections, without the stream fields."""
    _, header, sections = container.unpack(payload, classical.MAGIC, (2,))
    return container.pack(classical.MAGIC, 1, header[:-STREAM_FIELDS], sections)


def v1_typestore():
    """A typestore of its own holding CompressedRGBD format 1 under its real name."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(V1_MSG.read_text(), msgdefs.COMPRESSED_RGBD))
    return store


def small_real_pairs():
    """6 real Kinect pairs at 128x96."""
    return [(np.ascontiguousarray(c[::5, ::5]), np.ascontiguousarray(d[::5, ::5]))
            for c, d in load_real_pairs("7scenes_kinect1", PAIRS, step=7)]


@pytest.fixture(scope="module")
def v1_store():
    return v1_typestore()


@pytest.fixture(scope="module")
def pairs():
    return small_real_pairs()


def write_v1_bag(path, store, pairs, storage: str):
    """A format 1 bag as the format 1 `bag compress` wrote it (jpeg + rvl, calibration on the
    first message); returns the classical payloads written."""
    from rgbd_codec_ros.bag.dataset import camera_info

    t = store.types
    backend = create_backend("classical", color_codec="jpeg", depth_codec="rvl")
    payloads = []
    with AtomicBagWriter(path, storage=storage, single_file=True) as bag:
        conn = bag.add_connection(TOPIC, msgdefs.COMPRESSED_RGBD, v1_definition(), V1_HASH)
        for i, (color, depth) in enumerate(pairs):
            frame = RGBDFrame(color=color, depth=depth)
            encoded = backend.encode(frame)
            fields = convert.compressed_fields(encoded, frame, "rgb8", "16UC1")
            del fields["sequence"], fields["keyframe"]        # not in format 1
            fields.update(format_version=1, payload=np.frombuffer(v1_payload(encoded.payload),
                                                                  np.uint8))
            payloads.append(bytes(fields["payload"]))
            stamp = 1_700_000_000 * 10**9 + i * 33_333_333
            headers = [t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
                sec=stamp // 10**9, nanosec=stamp % 10**9 + ns), frame_id=name)
                for ns, name in ((0, "color_frame"), (2_000_000, "depth_frame"))]
            info = ([camera_info(np.array([[585.0, 0, 64], [0, 585.0, 48], [0, 0, 1]]), 128, 96,
                                 headers[0])] if i == 0 else [])
            msg = t[msgdefs.COMPRESSED_RGBD](header=headers[0], depth_header=headers[1],
                                             color_camera_info=info, depth_camera_info=[],
                                             **fields)
            bag.write(conn, stamp + 10_000_000,
                      bytes(store.serialize_cdr(msg, msgdefs.COMPRESSED_RGBD)))
    return payloads


def test_v1_definition_hash_is_what_rosidl_computes(tmp_path):
    """The saved definition is the one whose hash format 1 bags carry."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    (tmp_path / "msg").mkdir()
    shutil.copy(V1_MSG, tmp_path / "msg" / "CompressedRGBD.msg")
    with contextlib.redirect_stdout(io.StringIO()):
        desc = rosidl_type_description(tmp_path / "msg" / "CompressedRGBD.msg", tmp_path / "gen")
    assert desc["type_hashes"][0]["hash_string"] == V1_HASH
    store = get_typestore(Stores.EMPTY)
    store.register(get_types_from_msg(v1_definition(), msgdefs.COMPRESSED_RGBD))
    assert store.hash_rihs01(msgdefs.COMPRESSED_RGBD) == V1_HASH != msgdefs.compressed_rgbd_hash()


@pytest.mark.parametrize("storage, name", [("mcap", "v1.mcap"), ("sqlite3", "v1.db3")])
def test_v1_bag_info_and_decompress(tmp_path, v1_store, pairs, storage, name):
    bag = tmp_path / name
    payloads = write_v1_bag(bag, v1_store, pairs, storage)

    # the reason for all this: the current definition mis-parses format 1 CDR
    from rgbd_codec_ros.bag.storage import iter_messages, open_reader

    reader = open_reader(bag)
    try:
        conn, _, data = next(iter_messages(reader))
        assert msgdefs.read_type(conn) != msgdefs.COMPRESSED_RGBD
        try:
            wrong = messages.deserialize(data, msgdefs.COMPRESSED_RGBD)
        except ValueError:
            pass
        else:
            assert (wrong.color_width, wrong.color_encoding) != (128, "rgb8")
    finally:
        reader.close()

    rc, stdout, err = run_cli("bag", "info", bag, "--json")
    assert rc == 0, err
    [topic] = json.loads(stdout)["topics"]
    c = topic["compressed"]
    assert topic["type_hash"] == V1_HASH and c["messages"] == PAIRS and c["unreadable"] == 0
    assert c["images"] == [{"width": 128, "height": 96, "color_encoding": "rgb8",
                            "depth_encoding": "16UC1", "messages": PAIRS}]
    assert c["format_versions"] == {"1": PAIRS}
    assert (c["gop"]["keyframes"], c["gop"]["gop_length_max"], c["gop"]["with_sequence"]) == (
        PAIRS, 1, 0)
    rc, text, _ = run_cli("bag", "info", bag)
    assert "format version 1: 6 msgs" in text and "sequence: none (format 1 messages)" in text

    # decompress: every frame, as a decoder of the format 1 payloads gives it
    backend = create_backend("classical")
    expected = [backend.decode(p) for p in payloads]
    for (color, depth), frame in zip(pairs, expected):
        np.testing.assert_array_equal(frame.depth, depth)    # rvl: lossless
        assert frame.color.shape == color.shape
    out = tmp_path / "restored.mcap"
    rc, stdout, err = run_cli("bag", "decompress", bag, out, "--keep-compressed", "--no-progress")
    assert rc == 0, err
    assert stdout.startswith(f"{PAIRS} pairs decoded") and "0 skipped" in stdout
    msgs = mcap_messages(out)
    colors = [m.ros_msg for m in msgs if m.channel.topic == "/rgbd/color/image_raw"]
    depths = [m.ros_msg for m in msgs if m.channel.topic == "/rgbd/depth/image_raw"]
    infos = [m.ros_msg for m in msgs if m.channel.topic == "/rgbd/color/camera_info"]
    assert len(colors) == len(depths) == len(infos) == PAIRS
    for i, (color, depth, frame) in enumerate(zip(colors, depths, expected)):
        np.testing.assert_array_equal(np.frombuffer(bytes(color.data), np.uint8).reshape(96, 128, 3),
                                      frame.color)
        np.testing.assert_array_equal(np.frombuffer(bytes(depth.data), np.uint16).reshape(96, 128),
                                      frame.depth)
        assert (color.header.frame_id, depth.header.frame_id) == ("color_frame", "depth_frame")
        assert depth.header.stamp.nanosec - color.header.stamp.nanosec == 2_000_000
        assert infos[i].k[0] == 585.0     # the calibration of the first message, carried on
    # --keep-compressed copies the format 1 topic as it was: bytes and stored definition
    kept = [m for m in msgs if m.channel.topic == TOPIC]
    assert [bytes(m.ros_msg.payload) for m in kept] == payloads
    assert kept[0].schema.data.decode() == v1_definition()

    # --images: the same frames as PNG files
    rc, stdout, err = run_cli("bag", "decompress", bag, "--images", tmp_path / "png", "--no-progress")
    assert rc == 0, err
    for pair, frame in zip(list_pairs(tmp_path / "png"), expected):
        np.testing.assert_array_equal(np.array(Image.open(pair.color)), frame.color)
        np.testing.assert_array_equal(np.array(Image.open(pair.depth)), frame.depth)


def test_stored_definition_with_other_standard_types_stays_private():
    """A stored definition whose dependency differs (here: Header) gets private names for it
    and for every type using it; the current types are left as they are."""
    current, _ = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    header_section = "MSG: std_msgs/msg/Header\n"
    assert header_section in current
    changed = current.replace("string frame_id", "string frame_id\nuint32 extra", 1)
    assert changed.index("uint32 extra") > changed.index(header_section)
    name = msgdefs.stored_definition_type(msgdefs.COMPRESSED_RGBD, changed)
    store = msgdefs.typestore()
    assert name != msgdefs.COMPRESSED_RGBD and name in store.types
    header_type = store.fielddefs[name][1][0][1][1]
    assert header_type != "std_msgs/msg/Header" and header_type in store.types
    assert [f for f, _ in store.fielddefs["std_msgs/msg/Header"][1]] == ["stamp", "frame_id"]
    # a definition with the current layout (comments or spacing aside) is the current type
    assert msgdefs.stored_definition_type(
        msgdefs.COMPRESSED_RGBD, current.replace("# Codec", "# the codec")) == msgdefs.COMPRESSED_RGBD


def test_v1_messages_convert_to_the_current_definition(tmp_path, v1_store, pairs):
    """What `bag play` publishes for a format 1 bag: the same fields in the current layout,
    each message a keyframe numbered in order."""
    from rgbd_codec_ros.bag.storage import iter_messages, open_reader

    bag = tmp_path / "v1.mcap"
    payloads = write_v1_bag(bag, v1_store, pairs, "mcap")
    backend = create_backend("classical")
    reader = open_reader(bag)
    try:
        for i, (conn, _, data) in enumerate(iter_messages(reader)):
            stored = messages.deserialize(data, msgdefs.read_type(conn))
            now = messages.deserialize(messages.compressed_in_current_definition(
                data, msgdefs.read_type(conn), i), msgdefs.COMPRESSED_RGBD)
            assert (now.format_version, now.sequence, now.keyframe) == (1, i, True)
            assert bytes(now.payload) == payloads[i]
            for name in ("codec", "quality", "color_width", "color_height", "color_encoding",
                         "depth_encoding", "depth_scale_per_m", "depth_invalid"):
                assert getattr(now, name) == getattr(stored, name)
            assert (now.header.frame_id, now.depth_header.stamp.nanosec) == (
                stored.header.frame_id, stored.depth_header.stamp.nanosec)
            assert len(now.color_camera_info) == (1 if i == 0 else 0)
            frame, _, _ = convert.decode_compressed(now, {"classical": backend})
            np.testing.assert_array_equal(frame.depth, pairs[i][1])
    finally:
        reader.close()
