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
