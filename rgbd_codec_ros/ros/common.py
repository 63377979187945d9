"""Helpers shared by the nodes: parameters, QoS, headers, diagnostics, the main loop."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import traceback
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

QOS_CHOICES = ("sensor_data", "reliable", "best_effort")


# ------------------------------------------------------------------ parameters


def describe(description: str, *, read_only: bool = False, int_range: Optional[Sequence[int]] = None,
             float_range: Optional[Sequence[float]] = None, choices: Optional[Iterable[str]] = None,
             constraints: str = "") -> ParameterDescriptor:
    """A ParameterDescriptor; ranges are enforced by rclpy, choices by the node (listed in the text)."""
    text = constraints
    if choices is not None:
        text = (text + "; " if text else "") + "one of: " + ", ".join(choices)
    desc = ParameterDescriptor(description=description, read_only=read_only, additional_constraints=text)
    if int_range is not None:
        desc.integer_range = [IntegerRange(from_value=int(int_range[0]), to_value=int(int_range[1]), step=1)]
    if float_range is not None:
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(float_range[0]), to_value=float(float_range[1]), step=0.0)]
    return desc


def describe_option(spec: Any, *, read_only: bool = False, note: str = "",
                    value_range: Optional[Sequence[float]] = None) -> ParameterDescriptor:
    """The ParameterDescriptor of a backend option (an ``OptionSpec`` of its backend's schema):
    its description, its range (IntegerRange / FloatingPointRange, enforced by rclpy) or its
    choices (checked by the node against the schema). ``value_range`` narrows the schema's range
    where the node knows better (threads: the CPUs of this machine)."""
    rng = value_range if value_range is not None else spec.range
    text = spec.description + (f" ({note})" if note else "")
    return describe(text, read_only=read_only, choices=spec.choices,
                    int_range=rng if spec.type is int and rng is not None else None,
                    float_range=rng if spec.type is float and rng is not None else None)


def declare(node: Node, specs: Dict[str, tuple]) -> Dict[str, Any]:
    """Declare ``{name: (default, ParameterDescriptor)}``; return the values now in force."""
    for name, (default, desc) in specs.items():
        node.declare_parameter(name, default, desc)
    warn_unknown_overrides(node, specs)
    return {name: node.get_parameter(name).value for name in specs}


def warn_unknown_overrides(node: Node, known: Iterable[str]) -> None:
    """A parameter given on the command line or in a YAML file that the node does not have is
    most likely a typo: say so instead of ignoring it silently."""
    overrides = getattr(node, "_parameter_overrides", None) or {}
    known = set(known) | {"use_sim_time", "start_type_description_service"}
    for name in sorted(overrides):
        if name not in known and not name.startswith("qos_overrides."):
            node.get_logger().warning(
                f"parameter '{name}' was given but {node.get_name()} has no such parameter "
                f"(known: {', '.join(sorted(known))})")


def check_choice(name: str, value: str, choices: Sequence[str]) -> Optional[str]:
    """None if ``value`` is allowed, else the reason."""
    if value not in choices:
        return f"{name} must be one of {', '.join(choices)}; got {value!r}"
    return None


def result(reason: Optional[str]) -> SetParametersResult:
    return SetParametersResult(successful=reason is None, reason=reason or "")


# ------------------------------------------------------------------ logging


class RefusalLog:
    """Logs every refused input with its reason, up to ``burst`` lines per ``period`` seconds.

    A flood of bad messages then costs a few lines a second instead of one each,
    and the next line says how many went unlogged.
    """

    def __init__(self, logger, burst: int = 20, period: float = 5.0):
        import time

        self._logger, self._burst, self._period, self._time = logger, burst, period, time.monotonic
        self._window_start = self._time()
        self._count = 0
        self._suppressed = 0

    def __call__(self, reason: str) -> None:
        now = self._time()
        if now - self._window_start > self._period:
            self._window_start, self._count = now, 0
        if self._count >= self._burst:
            self._suppressed += 1
            return
        self._count += 1
        if self._suppressed:
            reason += f" ({self._suppressed} earlier refusals not logged)"
            self._suppressed = 0
        self._logger.warning(reason)


class NativeOutput:
    """What native code (libavif, dav1d, ...) writes to the process's stderr while a call runs.

    Codec libraries print their complaints about a damaged stream straight to file
    descriptor 2, past the node's logger and its throttle. Inside ``capture()`` that
    descriptor points at a scratch file; afterwards ``text`` holds what was written there, for
    the node's own (throttled) log line. Costs a few system calls per call. If stderr cannot
    be redirected, nothing is captured and output goes where it always went.
    """

    def __init__(self, limit: int = 2000):
        self.limit = limit
        self.text = ""
        self._fd: Optional[int] = None
        try:
            fd, path = tempfile.mkstemp(prefix="rgbd_codec_stderr_")
            os.unlink(path)
            self._fd = fd
        except OSError:
            pass

    @contextlib.contextmanager
    def capture(self):
        self.text = ""
        saved = None
        if self._fd is not None:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
                os.dup2(self._fd, 2)
            except (OSError, ValueError, AttributeError):
                if saved is not None:
                    os.close(saved)
                saved = None
        try:
            yield self
        finally:
            if saved is not None:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                self.text = self._drain()

    def _drain(self) -> str:
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if not size:
            return ""
        os.lseek(self._fd, 0, os.SEEK_SET)
        data = os.read(self._fd, min(size, self.limit))
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        return data.decode("utf-8", errors="replace")

    def summary(self) -> str:
        """The captured text as one line ('' if none)."""
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        text = "; ".join(dict.fromkeys(lines))  # repeated lines once
        return text if len(text) <= 300 else text[:297] + "..."

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------ QoS


def qos_profile(kind: str, depth: int) -> QoSProfile:
    """``sensor_data`` (best effort, volatile), ``reliable`` or ``best_effort``, keep-last ``depth``."""
    if kind == "sensor_data":
        profile = QoSProfile(depth=depth)
        profile.reliability = qos_profile_sensor_data.reliability
        profile.durability = qos_profile_sensor_data.durability
        profile.history = HistoryPolicy.KEEP_LAST
        return profile
    return QoSProfile(
        depth=depth, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
        reliability=ReliabilityPolicy.RELIABLE if kind == "reliable" else ReliabilityPolicy.BEST_EFFORT)


# ------------------------------------------------------------------ messages


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stale_age_s(node: Any, stamp: Any, max_age_s: float) -> Optional[float]:
    """The age of a capture stamp in seconds if it is over ``max_age_s`` (0 = off), else None:
    the nodes' one test for frames too old to be worth coding or publishing."""
    if max_age_s <= 0:
        return None
    age = (node.get_clock().now().nanoseconds - stamp_ns(stamp)) / 1e9
    return age if age > max_age_s else None


# ------------------------------------------------------------------ diagnostics


def key_values(values: Dict[str, Any]):
    from diagnostic_msgs.msg import KeyValue

    out = []
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        out.append(KeyValue(key=key, value=str(value)))
    return out


def diagnostic_array(node: Node, level: int, message: str, values: Dict[str, Any], component: str):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    status = DiagnosticStatus(level=level, name=f"{node.get_fully_qualified_name()}: {component}",
                              message=message, hardware_id=node.get_fully_qualified_name())
    status.values = key_values(values)
    arr = DiagnosticArray()
    arr.header.stamp = node.get_clock().now().to_msg()
    arr.status = [status]
    return arr


# ------------------------------------------------------------------ main loop


def run_node(factory: Callable[[], Node], args: Optional[Sequence[str]] = None) -> int:
    """Create a node and spin it until Ctrl-C / SIGTERM / shutdown / its work is done; clean up;
    return an exit code.

    The main loop is an executor's ``spin``, as in ros2/examples. A SingleThreadedExecutor:
    one thread runs every callback, so parameters change and a new backend is swapped in between
    two frames, never during one (the nodes rely on that). The learned backend's slow build
    needs no second executor thread: it runs on a worker thread of its own
    (codec_switch.BackgroundBuilder), which wakes this executor through a guard condition.

    A node whose work can end (the player at the end of its data) has a ``finished`` Future:
    the loop then spins until it completes, and its result is the exit code. Ctrl-C (SIGINT,
    KeyboardInterrupt), SIGTERM and an rclpy shutdown from elsewhere (ExternalShutdownException)
    end the loop cleanly with exit code 0. A node that cannot start (a bad parameter, say)
    prints why and returns 2. An exception escaping a callback is a bug (the nodes catch what
    bad input raises, log it and drop that input): as with rclpy's own spin, it ends the node,
    here with its traceback and exit code 1, so that a supervisor (launch's respawn, systemd)
    sees the failure rather than a node running on in an unknown state.
    """
    argv = list(sys.argv if args is None else args)
    rclpy.init(args=argv)
    node = None
    code = 0
    try:
        node = factory()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        if _is_parameter_error(exc):
            print(f"error: {exc}", file=sys.stderr)
        elif rclpy.ok():
            traceback.print_exc()
        code = 2 if rclpy.ok() else 0
    if node is not None:
        code = _spin(node)
        finish = getattr(node, "finish", None)
        if finish is not None:
            finish()
        node.destroy_node()
    rclpy.try_shutdown()
    return code


def _spin(node: Node) -> int:
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    finished = getattr(node, "finished", None)
    try:
        if finished is None:
            executor.spin()
        else:
            executor.spin_until_future_complete(finished)
            if finished.done():
                result = finished.result()
                return result if isinstance(result, int) else 0
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except Exception:
        if not rclpy.ok():  # shutting down: a callback raced the signal handler
            return 0
        node.get_logger().fatal("a callback failed; stopping the node:\n" + traceback.format_exc())
        return 1
    finally:
        executor.remove_node(node)
        executor.shutdown(timeout_sec=1.0)


class StartupError(RuntimeError):
    """The node cannot start; the message says what to fix."""


def _is_parameter_error(exc: Exception) -> bool:
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    return isinstance(exc, (InvalidParameterValueException, InvalidParameterTypeException))
