"""Shared test set-up.

Importing this (pytest does so before any test module) confines DDS to this
machine and gives the whole test run its own ROS_DOMAIN_ID, in os.environ,
so rclpy in this process and every child process started with
``os.environ`` inherit it. Set RGBD_CODEC_TEST_DOMAIN_ID to pin the domain.
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rgbd_codec_ros.ros.dds_env import localhost_dds_env  # noqa: E402

_pinned = os.environ.get("RGBD_CODEC_TEST_DOMAIN_ID", "").strip()
os.environ.update(localhost_dds_env(domain_id=int(_pinned) if _pinned.isdigit() else None))

#: the real RGB-D frames, used in place (never copied into the repository)
def _find_data_dir() -> Path:
    """$RGBD_DATA_DIR, else ../shared/data/rgbd beside the checkout, else this workplace's copy."""
    candidates = [os.environ.get("RGBD_DATA_DIR", ""), REPO_ROOT / ".." / "shared" / "data" / "rgbd",
                  "/work/shared/data/rgbd"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c).resolve()
    return (REPO_ROOT / ".." / "shared" / "data" / "rgbd").resolve()


DATA_DIR = _find_data_dir()
MSG_FILE = REPO_ROOT / "msg" / "CompressedRGBD.msg"


def pytest_report_header(config):
    return (f"DDS: ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
            f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
            f"FASTDDS_DEFAULT_PROFILES_FILE={os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '(none)')}")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"test data not found at {DATA_DIR}: the tests read ../shared/data/rgbd "
                    "relative to the repository root")
    return DATA_DIR


@pytest.fixture(scope="session")
def rosbags_types():
    """A rosbags typestore (ROS 2 Kilted) that also knows rgbd_codec_ros/msg/CompressedRGBD."""
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(MSG_FILE.read_text(), "rgbd_codec_ros/msg/CompressedRGBD"))
    return store


# ---------------------------------------------------------------------------- real frames


def load_real_pairs(source: str, count: int, step: int = 1):
    """``count`` (colour RGB uint8, depth uint16) pairs of one source folder of the shared data, every
    ``step``-th in colour file-name order, read by the project's dataset-folder reader."""
    from rgbd_codec_ros.dataset_folder import list_pairs, read_pair

    pairs = sorted(list_pairs(DATA_DIR / source), key=lambda p: p.color.name)[::step][:count]
    return [read_pair(p) for p in pairs]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ---------------------------------------------------------------------------- node processes

_ns_counter = itertools.count()


def unique_namespace(tag: str) -> str:
    """A namespace of its own for each test, so topics of different tests never meet."""
    return f"/{re.sub(r'[^a-z0-9_]', '_', tag.lower())}_{os.getpid()}_{next(_ns_counter)}"


def ros_arg_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "''" if value == "" else value
    return repr(value)


class NodeProcess:
    """One of the package's nodes in a process of its own (``python -m rgbd_codec_ros.ros.<module>``)."""

    def __init__(self, module: str, log_dir: Path, namespace: str, params: Optional[Dict[str, Any]] = None,
                 extra_args: Sequence[str] = ()):
        self.module = module
        self.log_path = Path(log_dir) / f"{module}_{next(_ns_counter)}.log"
        args = [sys.executable, "-m", f"rgbd_codec_ros.ros.{module}", "--ros-args", "-r", f"__ns:={namespace}"]
        for name, value in (params or {}).items():
            args += ["-p", f"{name}:={ros_arg_value(value)}"]
        args += list(extra_args)
        self.args = args
        self._log = open(self.log_path, "wb")
        # cwd = repository root: the sources under test are imported, not an installed copy.
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                     cwd=str(REPO_ROOT), start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, pattern: str, timeout: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if not self.alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.module}: no log line matching {pattern!r} "
                             f"(exit code {self.proc.poll()}); log:\n{self.log()[-3000:]}")

    def wait_exit(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.module} did not exit within {timeout} s; log:\n{self.log()[-3000:]}")

    def stop(self, sig=signal.SIGINT, timeout: float = 30.0) -> Optional[int]:
        """Send ``sig`` and wait; kill if it does not end. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def node_processes(tmp_path):
    """Start node processes with ``start(module, namespace, params)``; all are stopped afterwards."""
    started = []

    def start(module: str, namespace: str, params: Optional[Dict[str, Any]] = None, **kw) -> NodeProcess:
        node = NodeProcess(module, tmp_path, namespace, params, **kw)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


# ---------------------------------------------------------------------------- the test's own node


@pytest.fixture(scope="session")
def rclpy_context():
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


class Probe:
    """An rclpy node in the test process, with helpers that wait for conditions while spinning."""

    def __init__(self, name: str, namespace: str):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.node = Node(name, namespace=namespace)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline - time.monotonic())))

    def spin_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return True

    def wait_matched(self, endpoint, count: int = 1, timeout: float = 120.0,
                     processes: Sequence[NodeProcess] = ()) -> None:
        """Wait until a publisher has ``count`` subscribers (or a subscription that many publishers)."""
        counter = getattr(endpoint, "get_subscription_count", None) or endpoint.get_publisher_count

        def ready():
            for proc in processes:
                if not proc.alive():
                    raise AssertionError(f"{proc.module} exited with {proc.proc.returncode}:\n{proc.log()[-3000:]}")
            return counter() >= count
        assert self.spin_until(ready, timeout), \
            f"{endpoint.topic_name}: still {counter()} matched after {timeout} s (wanted {count})"

    def destroy(self) -> None:
        self.executor.remove_node(self.node)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


@pytest.fixture
def probe_factory(rclpy_context):
    made = []

    def make(namespace: str, name: str = "test_probe") -> Probe:
        probe = Probe(name, namespace)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.destroy()


def make_image(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """An rclpy sensor_msgs/Image of ``arr`` (encoding as given, no conversion)."""
    from sensor_msgs.msg import Image

    from rgbd_codec_ros import convert

    msg = convert.fill_image(Image(), arr, encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def reliable_qos(depth: int = 100):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


# --------------------------------------------------------------------------- learned-codec fixtures
@pytest.fixture(scope="session")
def untrained_tiny_weights(tmp_path_factory) -> str:
    import torch
    from rgbd_codec_ros.codec.learned.model import build_model
    from rgbd_codec_ros.codec.learned.weights_io import export_weights
    torch.manual_seed(1234)
    model = build_model("tiny").eval()
    path = tmp_path_factory.mktemp("weights") / "tiny_untrained.pt"
    export_weights(model, str(path), {"name": "tiny-untrained"})
    return str(path)


@pytest.fixture(scope="session")
def trained_tiny_weights() -> str:
    from learned_fixtures import TRAINED_TINY
    if not TRAINED_TINY.is_file():
        pytest.fail(f"{TRAINED_TINY} is missing; see test/data/README.md to regenerate it")
    return str(TRAINED_TINY)
