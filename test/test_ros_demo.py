"""rgbd-demo end to end: three node processes plus the measuring subscriber, on this machine only."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS


def run_demo(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rgbd_codec_ros.ros.demo", "--domain-id", os.environ["ROS_DOMAIN_ID"], *args]
    return subprocess.run(cmd, cwd=str(REPO_ROOT), env=os.environ.copy(), capture_output=True, text=True,
                          timeout=timeout)


def test_demo_prints_live_figures_and_stops_by_itself(tmp_path):
    done = run_demo("--duration", "4", "--width", "320", "--height", "240", "--codec-options", "color_quality=80",
                    "--log-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = re.findall(r"^\[\s*\d+ s\] .*$", done.stdout, re.MULTILINE)
    assert len(lines) >= 3, done.stdout
    figures = [re.search(r"([\d.]+) fps \|\s+(\d+) kbit/s \| ratio\s+([\d.]+):1 \| RGB PSNR ([\d.]+|inf) dB \| "
                         r"depth RMSE ([\d.]+) mm \| holes exact (\d+)% \| latency (\d+) ms", line)
               for line in lines]
    measured = [f for f in figures if f]
    assert measured, done.stdout
    for f in measured:
        assert float(f.group(1)) > 0 and int(f.group(2)) > 0 and float(f.group(3)) > 1.0
        # JPEG quality 80 on the synthetic room (pixel noise included) measures about 29-30 dB
        assert f.group(4) == "inf" or float(f.group(4)) > 25.0
        assert float(f.group(5)) == 0.0 and f.group(6) == "100"  # default depth coding is lossless
    assert re.search(r"rgbd-demo: \d+ frames in 4 s; mean RGB PSNR", done.stdout), done.stdout
    # the nodes it started are gone and logged there
    for name in ("player_node", "encoder_node", "decoder_node"):
        assert (tmp_path / f"{name}.log").is_file()


def test_demo_refuses_bad_arguments():
    for args, needle in ((["--source", "/no/such/folder"], "no such folder"),
                         (["--codec-options", "quality"], "not of the form name=value"),
                         (["--rate", "0"], "--rate must be in"),
                         (["--depth-share", "1.5"], "--depth-share must be in")):
        done = run_demo(*args, timeout=120)
        assert done.returncode == 2 and needle in done.stderr, (args, done.stderr)


def test_measurer_measures_a_frame_decoded_long_after_its_originals_left_the_recent_tables(rclpy_context):
    """A slow codec's frame arrives after 100 newer originals: the originals of every coded pair
    are kept from the moment its compressed message is seen, so the late frame is measured."""
    import numpy as np
    from rclpy.node import Node

    from conftest import make_image
    from rgbd_codec_ros.msg import CompressedRGBD
    from rgbd_codec_ros.ros.demo import Measurer

    node = Node("demo_measurer_test", namespace=f"/demo_measurer_{os.getpid()}")
    try:
        m = Measurer(node)
        rng = np.random.default_rng(0)
        color = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        depth = rng.integers(300, 4000, (24, 32), dtype=np.uint16)
        depth[0, :5] = 0
        base = 1_700_000_000 * 10**9

        def stamp(i):
            return base + i * 100_000_000

        for i in range(3):
            m._on_orig_color(make_image(color, "rgb8", stamp(i), "c"))
            m._on_orig_depth(make_image(depth, "16UC1", stamp(i), "c"))
        coded = CompressedRGBD()
        coded.header.stamp.sec, coded.header.stamp.nanosec = divmod(stamp(1), 10**9)
        coded.depth_header.stamp.sec, coded.depth_header.stamp.nanosec = divmod(stamp(1), 10**9)
        coded.color_encoding, coded.depth_encoding = "rgb8", "16UC1"
        coded.color_width, coded.color_height, coded.depth_width, coded.depth_height = 32, 24, 32, 24
        m._on_compressed(coded)
        for i in range(3, 103):                       # 100 newer pairs: stamp 1 leaves the recent tables
            m._on_orig_color(make_image(color, "rgb8", stamp(i), "c"))
            m._on_orig_depth(make_image(depth, "16UC1", stamp(i), "c"))
        assert stamp(1) not in m.orig_color and stamp(1) not in m.orig_depth
        decoded_depth = depth.copy()
        decoded_depth[5, 5] += 3                      # 3 mm off at one pixel
        m._on_decoded_color(make_image(color, "rgb8", stamp(1), "c"))
        m._on_decoded_depth(make_image(decoded_depth, "16UC1", stamp(1), "c"))
        assert len(m.all_results) == 1
        _, psnr, rmse, holes_exact, latency, max_err = m.all_results[0]
        assert psnr == float("inf") and holes_exact and max_err == 3.0
        assert rmse == pytest.approx(3.0 / np.sqrt(np.count_nonzero(depth)))
        assert latency > 1.0                          # stamped in 2023: very late indeed
        # a frame whose pair was never coded nor kept is not measured
        m._on_decoded_color(make_image(color, "rgb8", stamp(0), "c"))
        m._on_decoded_depth(make_image(depth, "16UC1", stamp(0), "c"))
        assert len(m.all_results) == 1
    finally:
        node.destroy_node()
