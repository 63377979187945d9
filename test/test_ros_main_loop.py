"""The nodes' main loop, rgbd_codec_ros.ros.common.run_node (issue 14, item 4), in real processes.

An executor spin: a node's ``finished`` Future ends it with its result as the exit code, an
rclpy shutdown from inside the process and SIGINT / SIGTERM end it with 0, a bad start with 2,
and an exception escaping a callback (a bug: the nodes catch what bad input raises) ends it
with its traceback and 1 instead of being swallowed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS

PRELUDE = """
import sys
import rclpy
from rclpy.node import Node
from rclpy.task import Future
from rgbd_codec_ros.ros import common
"""

CASES = {
    # the player's way to stop at the end of its data: a Future the main loop waits on
    "finished": ("""
class N(Node):
    def __init__(self):
        super().__init__("main_loop_finished")
        self.finished = Future()
        self.ticks = 0
        self.create_timer(0.05, self.tick)
    def tick(self):
        self.ticks += 1
        if self.ticks == 3:
            self.get_logger().info("done after 3 ticks")
            self.finished.set_result(0)
""", 0, "done after 3 ticks"),
    "external_shutdown": ("""
class N(Node):
    def __init__(self):
        super().__init__("main_loop_shutdown")
        self.create_timer(0.1, self.tick)
    def tick(self):
        self.get_logger().info("shutting rclpy down")
        rclpy.shutdown()
""", 0, "shutting rclpy down"),
    "callback_bug": ("""
class N(Node):
    def __init__(self):
        super().__init__("main_loop_bug")
        self.create_timer(0.1, self.tick)
    def tick(self):
        raise ZeroDivisionError("a bug in a callback")
""", 1, "a callback failed; stopping the node"),
    "bad_start": ("""
class N(Node):
    def __init__(self):
        super().__init__("main_loop_bad_start")
        raise common.StartupError("rate must be positive")
""", 2, "error: rate must be positive"),
}


def _script(body: str) -> str:
    return PRELUDE + textwrap.dedent(body) + "\nsys.exit(common.run_node(N, sys.argv))\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_node_ends_with_the_right_exit_code(case):
    body, code, needle = CASES[case]
    done = subprocess.run([sys.executable, "-c", _script(body)], cwd=str(REPO_ROOT), env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == code, out
    assert needle in out, out
    if case == "callback_bug":
        assert "ZeroDivisionError: a bug in a callback" in out, out   # with its traceback
    else:
        assert "Traceback" not in out, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_node_stops_cleanly_on_signals(sig):
    body = """
class N(Node):
    def __init__(self):
        super().__init__("main_loop_signal")
        self.create_timer(0.05, self.tick)
        self.said = False
    def tick(self):
        if not self.said:
            self.said = True
            self.get_logger().info("spinning")
    def finish(self):
        print("finish called", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", _script(body)], cwd=str(REPO_ROOT), env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "spinning" in line:
                break
        assert any("spinning" in line for line in lines), "".join(lines)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "finish called" in out and "Traceback" not in out, out
