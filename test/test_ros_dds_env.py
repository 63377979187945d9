"""DDS stays on this machine: the environment the tests, the demo and CI use opens no network socket."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import unique_namespace
from rgbd_codec_ros.ros.dds_env import PROFILE_FILE_NAME, domain_id_for, find_config_file, localhost_dds_env

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS


def test_environment_values():
    env = localhost_dds_env(base={"PATH": "/bin", "ROS_STATIC_PEERS": "10.0.0.1"}, domain_id=42)
    assert env["ROS_DOMAIN_ID"] == "42" and env["PATH"] == "/bin"
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]) == find_config_file(PROFILE_FILE_NAME)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SYSTEM_DEFAULT"  # the profile decides: SHM only
    assert "ROS_STATIC_PEERS" not in env
    assert {domain_id_for(pid) for pid in range(1000)} == set(range(1, 101))
    kept = localhost_dds_env(base={"ROS_DOMAIN_ID": "7"}, keep_domain=True)
    assert kept["ROS_DOMAIN_ID"] == "7"
    text = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).read_text()
    assert "<useBuiltinTransports>false</useBuiltinTransports>" in text and "<type>SHM</type>" in text
    # this test run itself runs under it (conftest)
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == env["FASTDDS_DEFAULT_PROFILES_FILE"]


def _inet_socket_inodes() -> set:
    inodes = set()
    for table in ("udp", "udp6", "tcp", "tcp6"):
        path = Path("/proc/net") / table
        if path.exists():
            for line in path.read_text().splitlines()[1:]:
                inodes.add(line.split()[9])
    return inodes


@pytest.mark.skipif(not Path("/proc/net/udp").exists(), reason="needs Linux /proc to list sockets")
def test_a_running_node_opens_no_network_socket(node_processes, probe_factory):
    from rgbd_codec_ros.msg import CompressedRGBD

    ns = unique_namespace("dds_env")
    probe = probe_factory(ns)
    pub = probe.node.create_publisher(CompressedRGBD, "rgbd/compressed", 10)
    decoder = node_processes("decoder_node", ns)
    probe.wait_matched(pub, processes=[decoder])  # discovery worked, over shared memory
    fd_dir = Path(f"/proc/{decoder.proc.pid}/fd")
    sockets = set()
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[8:-1])
    network = sockets & _inet_socket_inodes()
    assert not network, f"the decoder has {len(network)} UDP/TCP socket(s) open"
    assert decoder.stop() == 0
