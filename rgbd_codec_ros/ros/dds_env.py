"""The environment that keeps DDS on this machine. No rclpy import (used before rclpy starts).

- ``FASTDDS_DEFAULT_PROFILES_FILE`` -> ``config/fastdds_localhost.xml``: the shared-memory
  transport only, so the processes open no UDP or TCP socket at all: nothing can leave the
  host (and large images travel fast). ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is then set to
  ``SYSTEM_DEFAULT``, which tells rmw_fastrtps to leave the transports of the profile alone:
  measured here, ``LOCALHOST`` makes it add UDP transports again (sockets bound to 0.0.0.0
  and to the machine's network address), even with the profile loaded.
- Without the profile file (an install that lacks config/): ``ROS_AUTOMATIC_DISCOVERY_RANGE
  =LOCALHOST``, rmw's own confinement of discovery to this host.
- A ``ROS_DOMAIN_ID`` of its own, so parallel runs never see each other.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

PROFILE_FILE_NAME = "fastdds_localhost.xml"
PACKAGE_NAME = "rgbd_codec_ros"

# Domain IDs 1..100 stay clear of 0 (everybody's default) and well inside the
# range whose DDS port numbers are valid on Linux (0..232).
DOMAIN_ID_MIN = 1
DOMAIN_ID_SPAN = 100


def find_config_file(name: str) -> Optional[Path]:
    """A file of config/: from a source checkout, or from <prefix>/share/rgbd_codec_ros/config."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "config" / name]
    for prefix in (sys.prefix, os.environ.get("AMENT_PREFIX_PATH", "")):
        for part in str(prefix).split(os.pathsep):
            if part:
                candidates.append(Path(part) / "share" / PACKAGE_NAME / "config" / name)
    for path in candidates:
        if path.is_file():
            return path
    return None


def domain_id_for(seed: int) -> int:
    """A domain ID in 1..100 derived from ``seed`` (a process id, say)."""
    return DOMAIN_ID_MIN + int(seed) % DOMAIN_ID_SPAN


def localhost_dds_env(base: Optional[Mapping[str, str]] = None, domain_id: Optional[int] = None,
                      keep_domain: bool = False) -> Dict[str, str]:
    """A copy of ``base`` (default os.environ) with the localhost DDS settings applied.

    ``domain_id`` None picks one from this process id unless ``keep_domain`` and
    ``base`` already names one.
    """
    env = dict(os.environ if base is None else base)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"  # the profile is a Fast DDS one
    profile = find_config_file(PROFILE_FILE_NAME)
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
    else:
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_STATIC_PEERS", None)  # peers elsewhere would be contacted over UDP
    if domain_id is None:
        if keep_domain and env.get("ROS_DOMAIN_ID", "").strip().isdigit():
            domain_id = int(env["ROS_DOMAIN_ID"])
        else:
            domain_id = domain_id_for(os.getpid())
    env["ROS_DOMAIN_ID"] = str(int(domain_id))
    # Python children must flush their logs line by line so tests can follow them.
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
    return env
