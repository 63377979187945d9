"""Live recording and playback of serialized messages with rclpy (``bag record`` / ``bag play``).

The recorder subscribes with ``raw=True``, so it stores the CDR bytes exactly
as they arrived over DDS (nothing is deserialized or re-serialized), stamped
with the time of reception, and writes them with the same atomic bag writer
as the other bag tools (complete message definitions and RIHS01 hashes).
The player publishes stored CDR bytes as they are, at the bag's pace; only CompressedRGBD
messages recorded with an older definition (format 1) are re-serialized in the current one,
since subscribers built with it would mis-read them.

Both need the message's generated Python type support (rclpy has no dynamic
types): ``rgbd_codec_ros.msg`` after ``scripts/setup_venv.sh`` or a colcon
build, and the ``sensor_msgs`` / ``std_msgs`` wheels.
On a full ROS 2 install, ``ros2 bag record`` / ``ros2 bag play`` do the same
(see docs/bags.md).
"""
from __future__ import annotations

import importlib
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Dict, Optional, Sequence

from rgbd_codec_ros.bag import messages, msgdefs
from rgbd_codec_ros.bag.storage import AtomicBagWriter, iter_messages, open_reader, resolve_output
from rgbd_codec_ros.codec.base import CodecError


def message_class(msgtype: str):
    """The rclpy message class for ``pkg/msg/Type`` (CodecError if its type support is missing)."""
    pkg, _, name = msgdefs.ros_msgtype(msgtype).split("/")
    try:
        module = importlib.import_module(f"{pkg}.msg")
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise CodecError(
            f"no Python type support for {msgtype} here ({exc}); build/install the package that "
            "defines it (for rgbd_codec_ros: scripts/setup_venv.sh or colcon build) and source it"
        ) from exc


def writer_definition(msgtype: str):
    """(msgdef, rihs01) for a type recorded live."""
    store = msgdefs.typestore()
    if msgtype not in store.types:
        text = msgdefs._raw_definition(msgtype)
        if text is None or not msgdefs.register_from_definition(store, msgtype, text):
            raise CodecError(f"cannot find the .msg definition of {msgtype} to store in the bag")
    return msgdefs.definition_and_hash(msgtype)


@contextmanager
def _ros(node_name: str):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    ctx = Context()
    # Keep Python's own Ctrl-C handling (KeyboardInterrupt) so a recording ends cleanly.
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(node_name, context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        if ctx.ok():
            rclpy.shutdown(context=ctx)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM ends a run like Ctrl-C does: a recording closes and keeps its bag, a bag command
    removes its temporary output."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _subscription_qos(node, topic: str):
    """Reliable unless a publisher offers only best effort (what ros2 bag record does)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    infos = node.get_publishers_info_by_topic(topic)
    reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    transient = bool(infos) and all(
        i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=100,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE)


def record(out, topics: Sequence[str], *, storage: Optional[str] = None, force: bool = False,
           duration_s: Optional[float] = None, max_messages: Optional[int] = None,
           discovery_timeout_s: float = 10.0, node_name: str = "rgbd_bag_recorder",
           on_ready: Optional[Callable[[], None]] = None,
           log: Callable[[str], None] = print) -> Dict[str, int]:
    """Record ``topics`` into a new bag until Ctrl-C / SIGTERM, ``duration_s`` or ``max_messages``.

    Waits up to ``discovery_timeout_s`` for every topic to have a publisher (its
    type is taken from the graph). Returns messages recorded per topic.
    """
    if not topics:
        raise CodecError("name at least one topic to record (--topic)")
    out_path, storage, single = resolve_output(out, storage, "mcap")
    counts = {t: 0 for t in topics}
    with sigterm_as_interrupt(), _ros(node_name) as (node, executor):
        types = _wait_for_types(node, executor, topics, discovery_timeout_s)
        with AtomicBagWriter(out_path, storage=storage, force=force, single_file=single) as bag:
            subs = []
            state = {"n": 0, "done": False}
            for topic in topics:
                cls = message_class(types[topic])
                text, rihs = writer_definition(types[topic])
                conn = bag.add_connection(topic, types[topic], text, rihs)

                def on_msg(data, topic=topic, conn=conn):
                    if state["done"]:
                        return
                    bag.write(conn, time.time_ns(), data)
                    counts[topic] += 1
                    state["n"] += 1
                    if max_messages is not None and state["n"] >= max_messages:
                        state["done"] = True

                subs.append(node.create_subscription(cls, topic, on_msg,
                                                     _subscription_qos(node, topic), raw=True))
            log(f"recording {', '.join(f'{t} [{types[t]}]' for t in topics)} to {out_path}")
            if on_ready is not None:
                on_ready()
            deadline = None if duration_s is None else time.monotonic() + duration_s
            try:
                while not state["done"] and (deadline is None or time.monotonic() < deadline):
                    executor.spin_once(timeout_sec=0.05)
            except KeyboardInterrupt:
                log("stopping: closing the bag")
            for s in subs:
                node.destroy_subscription(s)
    log(f"recorded {sum(counts.values())} messages to {out_path}")
    return counts


def _wait_for_types(node, executor, topics: Sequence[str], timeout_s: float) -> Dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        graph = dict(node.get_topic_names_and_types())
        found = {t: graph[t] for t in topics if t in graph and graph[t]}
        if len(found) == len(topics):
            break
        if time.monotonic() > deadline:
            missing = [t for t in topics if t not in found]
            raise CodecError(
                f"no publisher of {', '.join(missing)} seen within {timeout_s:g} s (ROS_DOMAIN_ID "
                "and discovery settings must match the publisher's); start it first or raise "
                "--discovery-timeout")
        executor.spin_once(timeout_sec=0.1)
    types = {}
    for t, names in found.items():
        if len(names) > 1:
            raise CodecError(f"topic {t} is published with several types {names}; cannot record it")
        types[t] = msgdefs.ros_msgtype(names[0])
    return types


def play(inp, *, topics: Optional[Sequence[str]] = None, rate: float = 1.0,
         wait_for_subscribers: int = 0, discovery_timeout_s: float = 10.0,
         remap: Optional[Dict[str, str]] = None, node_name: str = "rgbd_bag_player",
         log: Callable[[str], None] = print) -> Dict[str, int]:
    """Publish a bag's stored CDR bytes at the recorded pace (``rate`` x; 0 = as fast as possible).

    ``wait_for_subscribers``: before the first message, wait until every
    publisher has at least that many subscribers (up to ``discovery_timeout_s``).
    Publishers are reliable, keep-last 100. Returns messages published per topic.
    """
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if rate < 0:
        raise CodecError(f"--rate must be >= 0, got {rate}")
    remap = dict(remap or {})
    reader = open_reader(inp)
    try:
        conns = [c for c in reader.connections if not topics or c.topic in topics]
        if topics:
            missing = sorted(set(topics) - {c.topic for c in conns})
            if missing:
                raise CodecError(f"topic(s) {', '.join(missing)} not in the bag; it has: "
                                 + ", ".join(sorted({c.topic for c in reader.connections})))
        if not conns:
            raise CodecError("the bag has no topics to play")
        counts = {c.topic: 0 for c in conns}
        # connections to re-serialize: CompressedRGBD recorded with an older definition
        upgrade = {c.id: msgdefs.read_type(c) for c in conns
                   if c.msgtype == msgdefs.COMPRESSED_RGBD
                   and msgdefs.read_type(c) != msgdefs.COMPRESSED_RGBD}
        skipped = 0
        with _ros(node_name) as (node, executor):
            pubs = {}
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            for c in conns:
                if c.topic not in pubs:
                    pubs[c.topic] = node.create_publisher(message_class(c.msgtype),
                                                          remap.get(c.topic, c.topic), qos)
            if wait_for_subscribers > 0:
                deadline = time.monotonic() + discovery_timeout_s
                while any(p.get_subscription_count() < wait_for_subscribers for p in pubs.values()):
                    if time.monotonic() > deadline:
                        lacking = [remap.get(t, t) for t, p in pubs.items()
                                   if p.get_subscription_count() < wait_for_subscribers]
                        raise CodecError(f"no subscriber on {', '.join(lacking)} within "
                                         f"{discovery_timeout_s:g} s")
                    executor.spin_once(timeout_sec=0.05)
            log(f"playing {sum(c.msgcount for c in conns)} messages from {inp}")
            t0 = wall0 = None
            for conn, t, data in iter_messages(reader, conns):
                if t0 is None:
                    t0, wall0 = t, time.monotonic()
                if rate > 0:
                    due = wall0 + (t - t0) / 1e9 / rate
                    while True:
                        left = due - time.monotonic()
                        if left <= 0:
                            break
                        executor.spin_once(timeout_sec=min(left, 0.05))
                if conn.id in upgrade:
                    try:
                        data = messages.compressed_in_current_definition(
                            data, upgrade[conn.id], counts[conn.topic])
                    except ValueError as exc:
                        skipped += 1
                        log(f"warning: {conn.topic} at t={t}: {exc}; skipped")
                        continue
                pubs[conn.topic].publish(bytes(data))
                counts[conn.topic] += 1
            for p in pubs.values():   # reliable delivery of the tail before tearing down
                p.wait_for_all_acked(Duration(seconds=5))
    finally:
        reader.close()
    log(f"published {sum(counts.values())} messages"
        + (f", {skipped} damaged older-format messages skipped" if skipped else "")
        + (f" ({len(upgrade)} topic(s) recorded with an older CompressedRGBD definition, "
           "converted to the current one)" if upgrade else ""))
    return counts
