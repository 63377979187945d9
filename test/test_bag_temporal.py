"""bag compress / decompress / info with temporal colour codecs (h264, hevc, av1).

Real bags of real pairs (7-Scenes, 128x96), real x264 / x265 / SVT-AV1 streams. What a
decompressed bag holds is checked with an independent reader (mcap-ros2-support) against a
plain sequential decode of the compressed messages; bags that start mid-GOP, lost a frame,
hold a damaged or a duplicated one are made by copying the compressed bag message by message.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import psnr
from PIL import Image
from test_bag_compress import (INFO_ARGS, MS, TOPIC_ARGS, TOPICS, copy_bag, leftovers, mcap_messages,
                               run_cli)

from rgbd_codec_ros.bag import messages, msgdefs
from rgbd_codec_ros.bag.dataset import folder_to_bag, list_pairs, load_pair
from rgbd_codec_ros.bag.storage import AtomicBagWriter
from rgbd_codec_ros.codec import video
from rgbd_codec_ros.codec.base import create_backend

FRAMES = 12
DOWNSCALE = 5           # 640x480 -> 128x96
SOURCE = "7scenes_kinect1"
FIRST = 30              # first pair of the source used
RESTORED = {"color": "/restored/color/image_raw", "depth": "/restored/depth/image_raw"}
RESTORED_ARGS = ["--color-topic", RESTORED["color"], "--depth-topic", RESTORED["depth"]]


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def compress(raw, out, codec: str, *args) -> str:
    rc, stdout, err = run_cli("bag", "compress", raw, out, *TOPIC_ARGS, *INFO_ARGS, "--drop-raw",
                              "--no-progress", "-O", f"color_codec={codec}", *args)
    assert rc == 0, err
    return stdout


def decompress(src, out, *args):
    """(summary, stderr) of a successful `bag decompress` to a bag or (--images) a folder."""
    target = ["--images", out] if "--images" in args else [out]
    rest = [a for a in args if a != "--images"]
    rc, stdout, err = run_cli("bag", "decompress", src, *target, *RESTORED_ARGS, *rest,
                              "--no-progress")
    assert rc == 0, err
    return stdout, err


def sequential_decode(msgs):
    """The frames a single decoder gives for the whole stream, in order (the reference)."""
    backend = create_backend("classical")
    return [backend.decode(bytes(m.ros_msg.payload)) for m in msgs]


def gop_info(path) -> dict:
    rc, stdout, err = run_cli("bag", "info", path, "--json")
    assert rc == 0, err
    return json.loads(stdout)["topics"][0]["compressed"]["gop"]


def assert_restored_bag(path, compressed, reference, indices):
    """The decompressed bag holds exactly frames ``indices`` of the stream, as decoded in order."""
    msgs = mcap_messages(path)
    colors = [m.ros_msg for m in msgs if m.channel.topic == RESTORED["color"]]
    depths = [m.ros_msg for m in msgs if m.channel.topic == RESTORED["depth"]]
    assert [stamp_ns(c.header) for c in colors] == [
        stamp_ns(compressed[i].ros_msg.header) for i in indices]
    assert len(depths) == len(indices)
    for color, depth, i in zip(colors, depths, indices):
        np.testing.assert_array_equal(
            np.frombuffer(bytes(color.data), np.uint8).reshape(color.height, color.width, 3),
            reference[i].color)
        np.testing.assert_array_equal(
            np.frombuffer(bytes(depth.data), np.uint16).reshape(depth.height, depth.width),
            reference[i].depth)


def assert_restored_images(folder, compressed, reference, indices):
    pairs = list_pairs(folder)
    assert [p.id for p in pairs] == [f"{stamp_ns(compressed[i].ros_msg.header):019d}" for i in indices]
    for pair, i in zip(pairs, indices):
        np.testing.assert_array_equal(np.array(Image.open(pair.color)), reference[i].color)
        np.testing.assert_array_equal(np.array(Image.open(pair.depth)), reference[i].depth)


@pytest.fixture(scope="module")
def raw(tmp_path_factory, data_dir):
    """12 real pairs at 128x96 as a camera driver records them (with camera_info)."""
    d = tmp_path_factory.mktemp("temporal")
    folder_to_bag(data_dir / SOURCE, d / "raw.mcap", limit=FRAMES, start=FIRST,
                  downscale=DOWNSCALE, depth_offset_ns=3 * MS, jitter_ns=1 * MS)
    return d


@pytest.fixture(scope="module")
def h264(raw):
    """The 12 pairs compressed with h264, a keyframe every 5 frames, quality 60."""
    out = raw / "h264.mcap"
    summary = compress(raw / "raw.mcap", out, "h264", "-O", "keyframe_interval=5", "--quality", "60")
    msgs = mcap_messages(out)
    return {"path": out, "summary": summary, "msgs": msgs, "reference": sequential_decode(msgs)}


def test_h264_compress_writes_gops_in_time_order(h264, data_dir):
    msgs = h264["msgs"]
    assert "12 pairs written" in h264["summary"] and "3 of them keyframes" in h264["summary"]
    assert [m.ros_msg.keyframe for m in msgs] == [i % 5 == 0 for i in range(FRAMES)]
    assert [m.ros_msg.sequence for m in msgs] == list(range(FRAMES))
    assert {m.ros_msg.format_version for m in msgs} == {2}
    assert {m.ros_msg.quality.split(",")[0] for m in msgs} == {"h264=60"}
    # coded in time order: stamps and log times rise strictly
    stamps = [stamp_ns(m.ros_msg.header) for m in msgs]
    assert stamps == sorted(set(stamps))
    assert [m.log_time_ns for m in msgs] == sorted({m.log_time_ns for m in msgs})
    # --quality reached the encoder's CRF: x264 writes its settings into the first keyframe
    crf = video.quality_to_crf(60, video.VIDEO_CODECS["h264"].crf_range)
    assert re.findall(rb"crf=(\d+)\.0", bytes(msgs[0].ros_msg.payload)) == [str(crf).encode()]
    # predicted frames are the point: much smaller than keyframes
    sizes = [len(m.ros_msg.payload) for m in msgs]
    assert max(sizes[1:5]) < sizes[0] / 2
    # and the sequential decode is a real image of the source
    for i, frame in enumerate(h264["reference"]):
        color, depth = load_pair(list_pairs(data_dir / SOURCE)[FIRST + i], downscale=DOWNSCALE)
        assert psnr(frame.color, color) > 28
        np.testing.assert_array_equal(frame.depth, depth)      # depth stays lossless


def test_h264_decompress_matches_sequential_decode(h264):
    summary, _ = decompress(h264["path"], h264["path"].parent / "h264_back.mcap")
    assert summary.startswith("12 pairs decoded") and "reference" not in summary
    assert_restored_bag(h264["path"].parent / "h264_back.mcap", h264["msgs"], h264["reference"],
                        range(FRAMES))
    summary, _ = decompress(h264["path"], h264["path"].parent / "h264_png", "--images")
    assert summary.startswith("12 pairs decoded")
    assert_restored_images(h264["path"].parent / "h264_png", h264["msgs"], h264["reference"],
                           range(FRAMES))


def test_h264_info_gop_structure(h264):
    assert gop_info(h264["path"]) == {
        "keyframes": 3, "keyframe_share": 0.25, "gops": 3, "gop_length_mean": 4.0,
        "gop_length_min": 2, "gop_length_max": 5, "frames_before_first_keyframe": 0,
        "with_sequence": 12, "sequence_gaps": 0, "frames_missing": 0, "sequence_steps_back": 0}
    rc, text, _ = run_cli("bag", "info", h264["path"])
    assert rc == 0
    assert "GOP: 3 keyframes (25.0 %), length mean 4.0 min 2 max 5; 0 frames before the first " \
           "keyframe" in text
    assert "sequence: 0 gaps (0 frames missing)" in text


def test_bag_cut_mid_gop_starts_at_the_first_keyframe(h264):
    d = h264["path"].parent
    cut = d / "cut"            # a recording that joined the stream at frame 2
    copy_bag(h264["path"], cut, lambda topic, i, data: None if i < 2 else data)
    summary, err = decompress(cut, d / "cut_back.mcap")
    assert "7 pairs decoded" in summary and "0 skipped" in summary
    assert "3 predicted frames before the first keyframe" in summary
    assert "warning" not in err          # a normal start, not damage
    assert_restored_bag(d / "cut_back.mcap", h264["msgs"], h264["reference"], range(5, FRAMES))
    # --strict accepts it: nothing was lost after the first keyframe
    summary, _ = decompress(cut, d / "cut_png", "--images", "--strict")
    assert_restored_images(d / "cut_png", h264["msgs"], h264["reference"], range(5, FRAMES))
    gop = gop_info(cut)
    assert (gop["frames_before_first_keyframe"], gop["keyframes"], gop["gop_length_min"],
            gop["gop_length_max"], gop["sequence_gaps"]) == (3, 2, 2, 5, 0)
    # no keyframe at all: nothing decodable, nothing written
    keyless = d / "keyless"
    copy_bag(h264["path"], keyless, lambda topic, i, data: None if i % 5 == 0 else data)
    rc, _, err = run_cli("bag", "decompress", keyless, d / "keyless_back.mcap", "--no-progress")
    assert rc == 2 and "9 predicted frames without a keyframe" in err
    assert not (d / "keyless_back.mcap").exists() and leftovers(d) == []


def test_frame_lost_mid_gop_skips_to_the_next_keyframe(h264):
    d = h264["path"].parent
    lossy = d / "lost_frame"   # frame 6 never reached the recorder
    copy_bag(h264["path"], lossy, lambda topic, i, data: None if i == 6 else data)
    kept = [0, 1, 2, 3, 4, 5, 10, 11]
    summary, err = decompress(lossy, d / "lost_back.mcap")
    assert "8 pairs decoded" in summary and "0 skipped" in summary
    assert "3 after lost or damaged frames, up to the next keyframe" in summary
    assert err.count("skipping to the next keyframe") == 1
    assert_restored_bag(d / "lost_back.mcap", h264["msgs"], h264["reference"], kept)
    summary, _ = decompress(lossy, d / "lost_png", "--images")
    assert_restored_images(d / "lost_png", h264["msgs"], h264["reference"], kept)
    gop = gop_info(lossy)
    assert (gop["sequence_gaps"], gop["frames_missing"], gop["gop_length_min"],
            gop["gop_length_max"]) == (1, 1, 2, 5)
    # --strict refuses frames lost mid-stream
    rc, _, err = run_cli("bag", "decompress", lossy, d / "lost_strict.mcap", "--strict",
                         "--no-progress")
    assert rc == 2 and "--strict" in err and not (d / "lost_strict.mcap").exists()


def test_damaged_predicted_frame_is_never_a_reference(h264):
    d = h264["path"].parent

    def damage(topic, i, data):
        if i != 7:
            return data
        b = bytearray(data)
        b[-40] ^= 0xFF         # inside the payload: the codec's checksum catches it
        return bytes(b)

    damaged = d / "damaged"
    copy_bag(h264["path"], damaged, damage)
    summary, _ = decompress(damaged, d / "damaged_back.mcap")
    assert "9 pairs decoded" in summary and "1 skipped" in summary
    assert "2 after lost or damaged frames" in summary
    assert_restored_bag(d / "damaged_back.mcap", h264["msgs"], h264["reference"],
                        [0, 1, 2, 3, 4, 5, 6, 10, 11])


def test_stale_duplicate_is_dropped(h264):
    d = h264["path"].parent
    doubled = d / "doubled"    # frame 3 recorded twice
    copy_bag(h264["path"], doubled, lambda topic, i, data: [data, data] if i == 3 else data)
    summary, err = decompress(doubled, d / "doubled_back.mcap")
    assert "12 pairs decoded" in summary and "1 stale duplicates dropped" in summary
    assert "reference" not in summary and "stale duplicate, dropped" in err
    assert_restored_bag(d / "doubled_back.mcap", h264["msgs"], h264["reference"], range(FRAMES))
    assert gop_info(doubled)["sequence_steps_back"] == 1


def write_raw_bag(path, frames):
    """A raw Image bag of ``frames`` [(colour, depth, stamp ns)], each pair logged 5 ms after
    its stamp, in list order (a stamp may go backwards: a restarted recording)."""
    image_def = msgdefs.definition_and_hash(msgdefs.IMAGE)
    with AtomicBagWriter(path, single_file=True) as bag:
        conns = {name: bag.add_connection(TOPICS[name], msgdefs.IMAGE, *image_def)
                 for name in ("color", "depth")}
        t_log = 0
        for color, depth, stamp in frames:
            t_log = max(stamp + 5 * MS, t_log + 33 * MS)
            for k, (name, arr, encoding) in enumerate((("depth", depth, "16UC1"),
                                                       ("color", color, "rgb8"))):
                msg = messages.image(arr, encoding, messages.header(stamp, "camera"))
                bag.write(conns[name], t_log + k, messages.serialize(msg, msgdefs.IMAGE))


@pytest.mark.parametrize("change", ["size", "stamps restart"])
def test_a_new_keyframe_where_the_stream_changes(tmp_path, data_dir, change):
    """4 pairs at 128x96, then 4 more either at 64x48 or with stamps that start over: with
    keyframes only on demand, the first pair after the change is one."""
    start = 1_700_000_000 * 10**9
    frames = []
    for i, pair in enumerate(list_pairs(data_dir / SOURCE)[FIRST:FIRST + 8]):
        later = i >= 4
        color, depth = load_pair(pair, downscale=2 * DOWNSCALE if later and change == "size"
                                 else DOWNSCALE)
        frames.append((color, depth, start + (i - 4 * (later and change != "size")) * 33 * MS))
    write_raw_bag(tmp_path / "raw.mcap", frames)
    out = tmp_path / "h264.mcap"
    rc, _, err = run_cli("bag", "compress", tmp_path / "raw.mcap", out, *TOPIC_ARGS, "--drop-raw",
                         "--no-progress", "-O", "color_codec=h264", "-O", "keyframe_interval=0")
    assert rc == 0, err
    msgs = mcap_messages(out)
    assert [m.ros_msg.keyframe for m in msgs] == [True, False, False, False] * 2
    assert [m.ros_msg.sequence for m in msgs] == list(range(8))
    assert [m.ros_msg.color_width for m in msgs] == [128] * 4 + [64 if change == "size" else 128] * 4
    summary, _ = decompress(out, tmp_path / "back.mcap")
    assert summary.startswith("8 pairs decoded") and "reference" not in summary
    assert_restored_bag(tmp_path / "back.mcap", msgs, sequential_decode(msgs), range(8))


@pytest.mark.parametrize("codec", ["hevc", "av1"])
def test_hevc_and_av1_round_trip(raw, codec, data_dir):
    out = raw / f"{codec}.mcap"
    summary = compress(raw / "raw.mcap", out, codec, "-O", "keyframe_interval=4")
    assert "3 of them keyframes" in summary
    msgs = mcap_messages(out)
    assert [m.ros_msg.keyframe for m in msgs] == [i % 4 == 0 for i in range(FRAMES)]
    reference = sequential_decode(msgs)
    summary, _ = decompress(out, raw / f"{codec}_back.mcap")
    assert summary.startswith("12 pairs decoded")
    assert_restored_bag(raw / f"{codec}_back.mcap", msgs, reference, range(FRAMES))
    color, _ = load_pair(list_pairs(data_dir / SOURCE)[FIRST + FRAMES - 1], downscale=DOWNSCALE)
    assert psnr(reference[-1].color, color) > 28
