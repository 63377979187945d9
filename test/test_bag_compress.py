"""bag compress / decompress / info on real bags built from real RGB-D pairs.

Bags are checked with readers that share no code with the writer: mcap-ros2-support
for .mcap, sqlite3 + mcap-ros2-support's decoder (fed the definition stored in
the bag) for .db3. Hashes are compared with what rosidl's own generator computes.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbd_codec_ros import convert
from rgbd_codec_ros.bag import msgdefs
from rgbd_codec_ros.bag.dataset import folder_to_bag, list_pairs, load_pair
from rgbd_codec_ros.cli import main as cli_main
from rgbd_codec_ros.codec.base import create_backend

REPO = Path(__file__).resolve().parents[1]
MS = 1_000_000
TOPICS = {"color": "/camera/color/image_raw", "depth": "/camera/depth/image_raw",
          "color_info": "/camera/color/camera_info", "depth_info": "/camera/depth/camera_info"}
TOPIC_ARGS = ["--color-topic", TOPICS["color"], "--depth-topic", TOPICS["depth"]]
INFO_ARGS = ["--color-info-topic", TOPICS["color_info"], "--depth-info-topic", TOPICS["depth_info"]]


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


class McapMsg:
    def __init__(self, schema, channel, message, ros_msg):
        self.schema, self.channel, self.message, self.ros_msg = schema, channel, message, ros_msg
        self.log_time_ns = message.log_time


def mcap_messages(path, topics=None):
    """Decoded messages of an .mcap in log-time order, read with mcap + mcap-ros2-support."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        return [McapMsg(*rec) for rec in reader.iter_decoded_messages(topics=topics,
                                                                      log_time_order=True)]


def mcap_rosbag2_metadata(path) -> dict:
    """The rosbag2 metadata record embedded in an .mcap, read with the mcap library."""
    import yaml
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        for rec in make_reader(f).iter_metadata():
            if rec.name == "rosbag2":
                return yaml.safe_load(rec.metadata["serialized_metadata"])
    raise AssertionError(f"{path} has no rosbag2 metadata record")


def sqlite_messages(db3: Path):
    """{topic: [(timestamp, bytes)]} and {topic: (type, hash)} straight from the .db3 tables."""
    con = sqlite3.connect(f"file:{db3}?mode=ro", uri=True)
    try:
        topics = {row[0]: row[1:] for row in con.execute(
            "SELECT id, name, type, type_description_hash FROM topics")}
        msgs = {}
        for tid, ts, data in con.execute(
                "SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp, id"):
            msgs.setdefault(topics[tid][0], []).append((ts, bytes(data)))
        defs = {row[0]: row[1:] for row in con.execute(
            "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions")}
    finally:
        con.close()
    return msgs, {name: (typ, h) for name, typ, h in topics.values()}, defs


@pytest.fixture(scope="module")
def rosidl_hash(tmp_path_factory):
    from test_bag_formats import rosidl_type_description

    with contextlib.redirect_stdout(io.StringIO()):
        desc = rosidl_type_description(REPO / "msg" / "CompressedRGBD.msg",
                                       tmp_path_factory.mktemp("rosidl"))
    return desc["type_hashes"][0]["hash_string"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory, data_dir):
    """Raw bags from real pairs: an .mcap with camera_info (Kinect, 8 pairs, depth stamped
    3 +- 1 ms after colour) and a sqlite3 bag directory in bgr8 without camera_info (OSD, 6 pairs,
    depth 2 ms before colour). Both at 320x240 to keep the tests fast."""
    d = tmp_path_factory.mktemp("bags")
    kinect = folder_to_bag(data_dir / "7scenes_kinect1", d / "raw.mcap", limit=8, start=30,
                           downscale=2, depth_offset_ns=3 * MS, jitter_ns=1 * MS)
    osd = folder_to_bag(data_dir / "osd_kinect_pcl_mosd", d / "raw_db3", limit=6, downscale=2,
                        storage="sqlite3", color_encoding="bgr8", depth_offset_ns=-2 * MS)
    return {"dir": d, "kinect": kinect, "osd": osd,
            "kinect_src": list_pairs(data_dir / "7scenes_kinect1")[30:38],
            "osd_src": list_pairs(data_dir / "osd_kinect_pcl_mosd")[:6]}


@pytest.fixture(scope="module")
def compressed_mcap(bags):
    out = bags["dir"] / "comp.mcap"
    rc, stdout, err = run_cli("bag", "compress", bags["dir"] / "raw.mcap", out, *TOPIC_ARGS,
                              *INFO_ARGS, "--drop-raw", "--no-progress")
    assert rc == 0, err
    assert "8 pairs written" in stdout
    return out


def test_compress_mcap_independent_reader(bags, compressed_mcap, rosidl_hash):
    msgs = mcap_messages(compressed_mcap)
    # --drop-raw: only the compressed topic; every pair present, in order
    assert {m.channel.topic for m in msgs} == {"/rgbd/compressed"}
    assert len(msgs) == 8
    assert all(m.schema.name == msgdefs.COMPRESSED_RGBD and m.schema.encoding == "ros2msg"
               for m in msgs)
    assert msgs[0].schema.data.decode() == msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)[0]
    # an intra codec: every message a keyframe, numbered in writing order
    assert [(m.ros_msg.format_version, m.ros_msg.sequence, m.ros_msg.keyframe) for m in msgs] == [
        (convert.FORMAT_VERSION, i, True) for i in range(8)]
    stamps = [(m.ros_msg.header.stamp.sec * 10**9 + m.ros_msg.header.stamp.nanosec,
               m.ros_msg.depth_header.stamp.sec * 10**9 + m.ros_msg.depth_header.stamp.nanosec)
              for m in msgs]
    assert stamps == [tuple(s) for s in bags["kinect"]["stamps"]]
    assert msgs[0].ros_msg.header.frame_id == "camera_color_optical_frame"
    assert msgs[0].ros_msg.depth_header.frame_id == "camera_depth_optical_frame"
    # logged when the pair completed (the later of the two arrivals), never before its stamps
    assert all(m.log_time_ns >= max(s) for m, s in zip(msgs, stamps))
    # the type hash rosbag2 readers see is rosidl's
    meta = mcap_rosbag2_metadata(compressed_mcap)
    [topic] = meta["topics_with_message_count"]
    assert topic["topic_metadata"]["type_description_hash"] == rosidl_hash
    assert topic["message_count"] == 8
    # calibration rides along the first message (and whenever it changes)
    first = msgs[0].ros_msg
    assert len(first.color_camera_info) == 1 and len(first.depth_camera_info) == 1
    assert first.color_camera_info[0].k[0] == pytest.approx(585 / 2)
    assert all(len(m.ros_msg.color_camera_info) == 0 for m in msgs[1:])

    # the payloads decode to the real pairs: depth exactly (lossless), colour close (JPEG)
    backend = create_backend("classical")
    for m, src in zip(msgs, bags["kinect_src"]):
        r = m.ros_msg
        assert (r.codec, r.color_encoding, r.depth_encoding) == ("classical", "rgb8", "16UC1")
        assert (r.color_width, r.color_height) == (320, 240)
        frame = backend.decode(bytes(r.payload))
        color, depth = load_pair(src, downscale=2)
        np.testing.assert_array_equal(frame.depth, depth)
        mse = np.mean((frame.color.astype(float) - color.astype(float)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 30


def test_compress_db3_independent_reader(bags, rosidl_hash):
    out = bags["dir"] / "comp_db3"
    rc, stdout, err = run_cli("bag", "compress", bags["dir"] / "raw_db3", out, *TOPIC_ARGS,
                              "--no-progress", "--quality", "80")
    assert rc == 0, err
    assert (out / "metadata.yaml").is_file()
    [db3] = list(out.glob("*.db3"))
    msgs, topics, defs = sqlite_messages(db3)
    assert topics["/rgbd/compressed"] == (msgdefs.COMPRESSED_RGBD, rosidl_hash)
    encoding, text = defs[msgdefs.COMPRESSED_RGBD]
    assert encoding == "ros2msg"
    assert text.startswith((REPO / "msg" / "CompressedRGBD.msg").read_text().rstrip("\n"))
    # decode with mcap-ros2-support's decoder built from the definition stored in the bag
    from mcap_ros2._dynamic import generate_dynamic

    decode = generate_dynamic(msgdefs.COMPRESSED_RGBD, text)[msgdefs.COMPRESSED_RGBD]
    decoded = [decode(data) for _, data in msgs["/rgbd/compressed"]]
    assert len(decoded) == 6
    stamps = [(d.header.stamp.sec * 10**9 + d.header.stamp.nanosec,
               d.depth_header.stamp.sec * 10**9 + d.depth_header.stamp.nanosec) for d in decoded]
    assert stamps == [tuple(s) for s in bags["osd"]["stamps"]]
    assert {d.color_encoding for d in decoded} == {"bgr8"}
    assert {d.quality for d in decoded} == {create_backend("classical", color_quality=80).quality}
    # without --drop-raw the raw topics are copied byte for byte
    raw_msgs, raw_topics, _ = sqlite_messages(bags["dir"] / "raw_db3" / "raw_db3.db3")
    for t in (TOPICS["color"], TOPICS["depth"]):
        assert msgs[t] == raw_msgs[t]
        assert topics[t] == raw_topics[t]
    # the depth survives exactly
    backend = create_backend("classical")
    for d, src in zip(decoded, bags["osd_src"]):
        _, depth = load_pair(src, downscale=2)
        np.testing.assert_array_equal(backend.decode(bytes(d.payload)).depth, depth)


@pytest.mark.parametrize("out_name", ["restored.db3", "restored_dir"])
def test_decompress_equals_codec_decode(bags, compressed_mcap, out_name):
    out = bags["dir"] / out_name
    rc, stdout, err = run_cli("bag", "decompress", compressed_mcap, out, "--no-progress")
    assert rc == 0, err
    assert "8 pairs decoded" in stdout
    from rosbags.rosbag2 import Reader

    from rgbd_codec_ros.bag.messages import deserialize

    with Reader(out) as reader:
        assert {c.topic for c in reader.connections} == set(TOPICS.values())   # original names
        restored = {}
        for conn, t, data in reader.messages():
            restored.setdefault(conn.topic, []).append((t, deserialize(data, conn.msgtype)))
    compressed = mcap_messages(compressed_mcap)
    backend = create_backend("classical")
    assert len(restored[TOPICS["color"]]) == len(restored[TOPICS["depth"]]) == 8
    for i, m in enumerate(compressed):
        frame = backend.decode(bytes(m.ros_msg.payload))
        (tc, color), (td, depth) = restored[TOPICS["color"]][i], restored[TOPICS["depth"]][i]
        (_, cinfo), (_, dinfo) = restored[TOPICS["color_info"]][i], restored[TOPICS["depth_info"]][i]
        assert tc == td == m.log_time_ns
        assert (color.encoding, depth.encoding) == ("rgb8", "16UC1")
        np.testing.assert_array_equal(convert.image_to_array(color), frame.color)
        np.testing.assert_array_equal(convert.image_to_array(depth), frame.depth)
        src_c, src_d = bags["kinect"]["stamps"][i]
        assert (color.header.stamp.sec * 10**9 + color.header.stamp.nanosec) == src_c
        assert (depth.header.stamp.sec * 10**9 + depth.header.stamp.nanosec) == src_d
        assert color.header.frame_id == "camera_color_optical_frame"
        # the latest calibration, stamped like its image
        assert (cinfo.header.stamp.sec, cinfo.header.stamp.nanosec) == (
            color.header.stamp.sec, color.header.stamp.nanosec)
        assert (dinfo.header.stamp.sec, dinfo.header.stamp.nanosec) == (
            depth.header.stamp.sec, depth.header.stamp.nanosec)
        assert cinfo.k[0] == pytest.approx(585 / 2) and cinfo.width == 320


def test_decompress_bgr8_restores_encoding_and_chosen_names(bags):
    comp = bags["dir"] / "osd_comp.mcap"
    rc, _, err = run_cli("bag", "compress", bags["dir"] / "raw_db3", comp, *TOPIC_ARGS,
                         "--drop-raw", "--no-progress", "--out-topic", "/cam/rgbd")
    assert rc == 0, err
    out = bags["dir"] / "osd_restored.mcap"
    rc, _, err = run_cli("bag", "decompress", comp, out, "--no-progress",
                         "--color-topic", "/x/color", "--depth-topic", "/x/depth")
    assert rc == 0, err
    msgs = mcap_messages(out)
    colors = [m.ros_msg for m in msgs if m.channel.topic == "/x/color"]
    depths = [m.ros_msg for m in msgs if m.channel.topic == "/x/depth"]
    assert len(colors) == len(depths) == 6
    assert {c.encoding for c in colors} == {"bgr8"}
    backend = create_backend("classical")
    for m, c in zip([m for m in mcap_messages(comp)], colors):
        frame = backend.decode(bytes(m.ros_msg.payload))
        arr = np.frombuffer(bytes(c.data), np.uint8).reshape(c.height, c.width, 3)
        np.testing.assert_array_equal(arr, frame.color[:, :, ::-1])   # RGB -> BGR


def test_decompress_images_is_a_dataset(bags, compressed_mcap):
    out = bags["dir"] / "decoded_pngs"
    rc, stdout, err = run_cli("bag", "decompress", compressed_mcap, "--images", out, "--no-progress")
    assert rc == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["depth_scale_per_m"] == 1000.0 and meta["num_pairs"] == 8
    assert meta["intrinsics"][0][0] == pytest.approx(585 / 2)
    names = sorted(p.name for p in (out / "color").iterdir())
    assert names == [f"{c:019d}.png" for c, _ in bags["kinect"]["stamps"]]
    backend = create_backend("classical")
    for m, pair in zip(mcap_messages(compressed_mcap), list_pairs(out)):
        frame = backend.decode(bytes(m.ros_msg.payload))
        color = np.array(Image.open(pair.color))
        depth = np.array(Image.open(pair.depth))
        assert depth.dtype == np.uint16
        np.testing.assert_array_equal(color, frame.color)
        np.testing.assert_array_equal(depth, frame.depth)
    # the folder is itself a dataset: it makes a bag again
    rc, _, err = run_cli("bag", "from-images", out, bags["dir"] / "again.mcap")
    assert rc == 0, err
    assert len(mcap_messages(bags["dir"] / "again.mcap", topics=[TOPICS["color"]])) == 8


def test_float_depth_round_trip(bags, data_dir):
    """32FC1 metres (NaN = no measurement) through compress, decompress and --images."""
    d = bags["dir"]
    raw = d / "float_raw"
    src = list_pairs(data_dir / "realsense_d435_taeyoung")[:4]
    folder_to_bag(data_dir / "realsense_d435_taeyoung", raw, limit=4, downscale=4,
                  depth_encoding="32FC1")
    rc, _, err = run_cli("bag", "compress", raw, d / "float_comp", *TOPIC_ARGS, "--drop-raw",
                         "--no-progress")
    assert rc == 0, err
    rc, _, err = run_cli("bag", "decompress", d / "float_comp", d / "float_back.mcap", "--no-progress")
    assert rc == 0, err
    depths = [m.ros_msg for m in mcap_messages(d / "float_back.mcap", topics=[TOPICS["depth"]])]
    assert len(depths) == 4
    for msg, pair in zip(depths, src):
        assert msg.encoding == "32FC1"
        got = np.frombuffer(bytes(msg.data), np.float32).reshape(msg.height, msg.width)
        _, mm = load_pair(pair, downscale=4)
        assert np.array_equal(np.isnan(got), mm == 0)            # holes exactly where they were
        np.testing.assert_array_equal(got[mm > 0], (mm[mm > 0] / np.float32(1000)).astype(np.float32))
    # --images writes integer units (--depth-scale, default mm): the original millimetres
    rc, _, err = run_cli("bag", "decompress", d / "float_comp", "--images", d / "float_png",
                         "--no-progress")
    assert rc == 0, err
    assert json.loads((d / "float_png" / "meta.json").read_text())["depth_scale_per_m"] == 1000.0
    for pair, src_pair in zip(list_pairs(d / "float_png"), src):
        np.testing.assert_array_equal(np.array(Image.open(pair.depth)), load_pair(src_pair, 4)[1])


def test_info_reports_codec_and_rates(bags, compressed_mcap):
    rc, stdout, err = run_cli("bag", "info", compressed_mcap, "--json")
    assert rc == 0, err
    info = json.loads(stdout)
    [topic] = info["topics"]
    assert topic["type"] == msgdefs.COMPRESSED_RGBD and topic["messages"] == 8
    c = topic["compressed"]
    default_quality = create_backend("classical").quality     # e.g. jpeg=90,depth=...
    assert c["codecs"] == [{"codec": "classical", "model_id": "", "quality": default_quality,
                            "messages": 8}]
    # rates recomputed from an independent read of sizes and stamps
    msgs = mcap_messages(compressed_mcap)
    sizes = np.array([len(m.message.data) for m in msgs], dtype=float)
    stamps = [m.ros_msg.header.stamp.sec * 10**9 + m.ros_msg.header.stamp.nanosec for m in msgs]
    period = (stamps[-1] - stamps[0]) / 1e9 / 7
    assert c["fps"] == pytest.approx(30, rel=1e-3)
    assert c["kbit_s_mean"] == pytest.approx(sizes.mean() * 8 / period / 1000, rel=1e-6)
    assert c["kbit_s_p95"] == pytest.approx(np.percentile(sizes, 95) * 8 / period / 1000, rel=1e-6)
    assert c["compression_ratio"] == pytest.approx(8 * 320 * 240 * 5 / sizes.sum(), rel=1e-6)
    # an intra stream: GOPs of one frame, no gaps
    assert c["format_versions"] == {str(convert.FORMAT_VERSION): 8}
    assert c["gop"] == {"keyframes": 8, "keyframe_share": 1.0, "gops": 8, "gop_length_mean": 1.0,
                        "gop_length_min": 1, "gop_length_max": 1, "frames_before_first_keyframe": 0,
                        "with_sequence": 8, "sequence_gaps": 0, "frames_missing": 0,
                        "sequence_steps_back": 0}
    rc, text, _ = run_cli("bag", "info", compressed_mcap)
    assert default_quality in text and "kbit/s" in text and "ratio vs raw" in text
    assert "GOP: 8 keyframes (100.0 %)" in text


def copy_bag(src, dst, edit):
    """Copy a bag message by message; ``edit(topic, index, data)`` returns new bytes, None
    (drop it), or a list of byte strings (written 1 ns apart from the original time on)."""
    from rosbags.rosbag2 import Reader, Writer

    counts = {}
    with Reader(src) as reader, Writer(dst, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=msgdefs.typestore())
                 for c in reader.connections}
        for conn, t, data in reader.messages():
            i = counts.get(conn.topic, 0)
            counts[conn.topic] = i + 1
            new = edit(conn.topic, i, bytes(data))
            for k, item in enumerate([] if new is None else new if isinstance(new, list) else [new]):
                writer.write(conns[conn.id], t + k, item)


def test_unpaired_and_too_small_slop(bags):
    d = bags["dir"]
    holey = d / "holey"
    copy_bag(d / "raw.mcap", holey,
              lambda topic, i, data: None if (topic == TOPICS["depth"] and i == 4) else data)
    rc, stdout, err = run_cli("bag", "compress", holey, d / "holey_out.mcap", *TOPIC_ARGS,
                              "--no-progress")
    assert rc == 0, err
    assert "7 pairs written" in stdout and "1 colour / 0 depth left unpaired" in stdout
    assert len(mcap_messages(d / "holey_out.mcap", topics=["/rgbd/compressed"])) == 7
    # stamps 3 +- 1 ms apart cannot pair within 0.5 ms: an error, and no output at all
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", d / "none.mcap", *TOPIC_ARGS,
                         "--slop", "0.0005", "--no-progress")
    assert rc == 2
    assert "no colour/depth pairs" in err and "--slop" in err
    assert not (d / "none.mcap").exists() and leftovers(d) == []


def test_bad_input_and_arguments(bags):
    d = bags["dir"]
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", d / "x.mcap", "--color-topic",
                         "/nope/image", "--depth-topic", TOPICS["depth"], "--no-progress")
    assert rc == 2 and "'/nope/image' is not in the bag" in err and TOPICS["color"] in err
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", d / "x.mcap", "--color-topic",
                         TOPICS["color_info"], "--depth-topic", TOPICS["depth"], "--no-progress")
    assert rc == 2 and "sensor_msgs/msg/CameraInfo, expected sensor_msgs/msg/Image" in err
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", d / "x.mcap", *TOPIC_ARGS,
                         "-O", "colour_qualty=3", "--no-progress")
    assert rc == 2 and "colour_qualty" in err
    rc, _, err = run_cli("bag", "compress", d / "nothere.mcap", d / "x.mcap", *TOPIC_ARGS)
    assert rc == 2 and "does not exist" in err
    junk = d / "junk.mcap"
    junk.write_bytes(b"this is not an mcap file at all" * 10)
    rc, _, err = run_cli("bag", "info", junk)
    assert rc == 2 and "cannot read bag" in err
    rc, _, err = run_cli("bag", "decompress", d / "raw.mcap", d / "y.mcap")
    assert rc == 2 and "no rgbd_codec_ros/msg/CompressedRGBD topic" in err
    rc, _, err = run_cli("bag", "decompress", d / "raw.mcap")
    assert rc == 2 and "--images" in err
    assert not (d / "x.mcap").exists() and not (d / "y.mcap").exists() and leftovers(d) == []


def test_refuses_to_overwrite_without_force(bags, compressed_mcap):
    d = bags["dir"]
    target = d / "existing.mcap"
    target.write_bytes(b"keep me")
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", target, *TOPIC_ARGS, "--no-progress")
    assert rc == 2 and "exists; pass --force" in err
    assert target.read_bytes() == b"keep me"
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", target, *TOPIC_ARGS, "--no-progress",
                         "--drop-raw", "--force")
    assert rc == 0, err
    assert len(mcap_messages(target, topics=["/rgbd/compressed"])) == 8
    rc, _, err = run_cli("bag", "decompress", compressed_mcap, "--images", d / "decoded_pngs")
    assert rc == 2 and "exists; pass --force" in err


def test_corrupted_messages_are_skipped_and_counted(bags, compressed_mcap):
    d = bags["dir"]
    # a truncated colour image in the raw bag
    broken_raw = d / "broken_raw"
    copy_bag(d / "raw.mcap", broken_raw,
              lambda topic, i, data: data[: len(data) // 2] if (topic == TOPICS["color"] and i == 2)
              else data)
    rc, stdout, err = run_cli("bag", "compress", broken_raw, d / "br_out.mcap", *TOPIC_ARGS,
                              "--no-progress")
    assert rc == 0, err
    assert "cannot deserialize sensor_msgs/msg/Image" in err and "skipped" in err
    assert "7 pairs written" in stdout and "1 skipped" in stdout
    rc, _, err = run_cli("bag", "compress", broken_raw, d / "br_strict.mcap", *TOPIC_ARGS,
                         "--no-progress", "--strict")
    assert rc == 2 and "--strict" in err and not (d / "br_strict.mcap").exists()

    # a damaged payload and a truncated message in the compressed bag
    def damage(topic, i, data):
        if i == 1:
            b = bytearray(data)
            b[-40] ^= 0xFF         # inside the payload: the codec's checksum catches it
            return bytes(b)
        if i == 5:
            return data[:200]
        return data

    broken = d / "broken_comp"
    copy_bag(compressed_mcap, broken, damage)
    rc, stdout, err = run_cli("bag", "decompress", broken, d / "bc_out.mcap", "--no-progress")
    assert rc == 0, err
    assert "6 pairs decoded" in stdout and "2 skipped" in stdout
    assert err.count("skipped") >= 2
    # this copy lost the custom data naming the original topics: default names under the namespace
    assert len(mcap_messages(d / "bc_out.mcap", topics=["/rgbd/color/image_raw"])) == 6
    rc, _, err = run_cli("bag", "decompress", broken, "--images", d / "bc_png", "--strict",
                         "--no-progress")
    assert rc == 2 and not (d / "bc_png").exists() and leftovers(d) == []
    rc, stdout, _ = run_cli("bag", "info", broken, "--json")
    assert json.loads(stdout)["topics"][0]["compressed"]["unreadable"] == 1


def test_interrupted_run_leaves_nothing(tmp_path, data_dir):
    """Ctrl-C in the middle of a compression: exit 130, no output, no temporary left behind."""
    raw = tmp_path / "big.mcap"
    folder_to_bag(data_dir / "realsense_d435_taeyoung", raw, limit=40)
    out = tmp_path / "out.mcap"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rgbd_codec_ros.cli import main; sys.exit(main())",
         "bag", "compress", str(raw), str(out), *TOPIC_ARGS, "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leftovers(tmp_path), "the compressor never started writing"
    time.sleep(0.3)  # let it write a few pairs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not out.exists()
    assert leftovers(tmp_path) == []
