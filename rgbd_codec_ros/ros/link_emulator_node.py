"""link_emulator_node (rgbd_link_emulator): a thin radio link between encoder and decoder.

Relays ``rgbd/compressed`` (CompressedRGBD, as serialized bytes: any message type works) from
``input_topic`` to ``output_topic`` the way a radio link with a buffer behaves:

- **bandwidth**: a token bucket of ``bandwidth_kbps`` (0 = unlimited) holding up to
  ``burst_bytes``; a message leaves the queue when the bucket holds its size;
- **queue**: FIFO; a message arriving when the queue ahead of it needs more than ``queue_ms``
  to drain is dropped (tail drop, like a radio buffer). No queue grows past that;
- **random loss**: each message that went over the air is lost with ``loss_pct`` percent;
- **delay**: ``delay_ms`` one-way, plus a random ``jitter_ms`` (uniform 0..jitter); order is kept.

Every parameter can be changed live (``ros2 param set /rgbd_link_emulator bandwidth_kbps 700``);
out-of-range values are refused, and at start-up make the node exit with an error.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any, Dict

from rclpy.node import Node

from rgbd_codec_ros.ros import common
from rgbd_codec_ros.ros.stats import StreamStats

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rgbd_codec_ros.msg import CompressedRGBD

NODE_NAME = "rgbd_link_emulator"
#: a hard bound on queued messages, whatever queue_ms says
MAX_QUEUED = 10000


def parameter_specs() -> Dict[str, tuple]:
    d = common.describe
    return {
        "input_topic": ("rgbd/compressed", d("Topic relayed (CompressedRGBD)", read_only=True)),
        "output_topic": ("link/rgbd/compressed", d("Topic the relayed messages go out on", read_only=True)),
        "bandwidth_kbps": (0.0, d("Link rate in kbit/s (token bucket); 0 = unlimited (live)",
                                  float_range=(0.0, 1.0e7))),
        "burst_bytes": (16000, d("Token bucket depth in bytes: what may go out at once after the link "
                                 "was idle (live)", int_range=(0, 100_000_000))),
        "delay_ms": (0.0, d("One-way delay in ms (live)", float_range=(0.0, 60000.0))),
        "jitter_ms": (0.0, d("Random extra delay, uniform 0..jitter_ms, order kept (live)",
                             float_range=(0.0, 10000.0))),
        "loss_pct": (0.0, d("Random loss of messages sent over the link, percent (live)",
                            float_range=(0.0, 100.0))),
        "queue_ms": (500.0, d("Tail drop: a message is dropped when the queue ahead of it takes longer "
                              "than this to drain, ms (live)", float_range=(1.0, 60000.0))),
        "seed": (0, d("Random seed of loss and jitter; 0 = from the clock", read_only=True,
                      int_range=(0, 2**31 - 1))),
        "qos": ("reliable", d("QoS of both topics", read_only=True, choices=("reliable", "best_effort"))),
        "qos_depth": (10, d("History depth of both topics", read_only=True, int_range=(1, 1000))),
        "diagnostics_period": (1.0, d("Seconds between /diagnostics messages; 0 = none", read_only=True,
                                      float_range=(0.0, 3600.0))),
        "log_period": (10.0, d("Seconds between statistics log lines; 0 = none", read_only=True,
                               float_range=(0.0, 3600.0))),
    }


class LinkModel:
    """The link's timing, without ROS: ``offer(now, size)`` -> delivery time, or a drop reason.

    Times in seconds (monotonic). The bucket is kept as the time the link is next free
    (``free_at``): a message of ``size`` bytes starts at max(now, free_at - burst time) and
    takes size * 8 / rate seconds; the queue ahead of an arriving message needs
    ``free_at - now`` to drain.
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.bandwidth_kbps = 0.0
        self.burst_bytes = 16000
        self.delay_ms = 0.0
        self.jitter_ms = 0.0
        self.loss_pct = 0.0
        self.queue_ms = 500.0
        self.free_at = 0.0
        self.last_delivery = 0.0

    def offer(self, now: float, size: int):
        """(delivery time, None) or (None, 'queue' | 'loss')."""
        rate = self.bandwidth_kbps * 1000.0 / 8.0  # bytes per second
        if rate > 0:
            backlog = max(0.0, self.free_at - now)
            if backlog * 1000.0 > self.queue_ms:
                return None, "queue"
            # free_at in the past = credit in the bucket (at most burst_bytes)
            self.free_at = max(self.free_at, now - self.burst_bytes / rate) + size / rate
            done = max(now, self.free_at)
        else:
            done = now
        if self.loss_pct > 0 and self.rng.random() * 100.0 < self.loss_pct:
            return None, "loss"
        delay = self.delay_ms / 1000.0
        if self.jitter_ms > 0:
            delay += self.rng.random() * self.jitter_ms / 1000.0
        delivery = max(done + delay, self.last_delivery)  # a link keeps order
        self.last_delivery = delivery
        return delivery, None


class LinkEmulatorNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        p = common.declare(self, parameter_specs())  # out-of-range values raise here: the node exits
        reason = common.check_choice("qos", p["qos"], ("reliable", "best_effort"))
        if reason:
            raise common.StartupError(reason)
        self._params = p
        self._link = LinkModel(random.Random(p["seed"] or time.time_ns()))
        self._apply(p)
        qos = common.qos_profile(p["qos"], p["qos_depth"])
        self._pub = self.create_publisher(CompressedRGBD, p["output_topic"], qos)
        self._sub = self.create_subscription(CompressedRGBD, p["input_topic"], self._on_message, qos, raw=True)
        if self._pub.topic_name == self._sub.topic_name:
            raise common.StartupError(f"input_topic and output_topic are both {self._pub.topic_name}: "
                                      "the link would feed itself")
        self.counts = {"in": 0, "out": 0, "drop_queue": 0, "drop_loss": 0, "bytes_out": 0}
        self._queue: deque = deque()  # (delivery time, bytes), delivery times non-decreasing
        self._cv = threading.Condition()
        self._stop = False
        self._stats = StreamStats()
        self._worker = threading.Thread(target=self._deliver, name="link-delivery", daemon=True)
        self._worker.start()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if p["diagnostics_period"] > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._diag_stats = StreamStats()
            self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        if p["log_period"] > 0:
            self._log_stats = StreamStats()
            self.create_timer(p["log_period"], self._log_statistics)
        self.get_logger().info(f"relaying {self._sub.topic_name} -> {self._pub.topic_name}: {self._describe()}")

    def _describe(self) -> str:
        lk = self._link
        bw = f"{lk.bandwidth_kbps:g} kbit/s" if lk.bandwidth_kbps > 0 else "unlimited"
        return (f"{bw}, burst {lk.burst_bytes} B, delay {lk.delay_ms:g} ms + jitter {lk.jitter_ms:g} ms, "
                f"loss {lk.loss_pct:g} %, queue {lk.queue_ms:g} ms")

    def _apply(self, values: Dict[str, Any]) -> None:
        for name in ("bandwidth_kbps", "burst_bytes", "delay_ms", "jitter_ms", "loss_pct", "queue_ms"):
            if name in values:
                setattr(self._link, name, values[name])

    def _on_set_parameters(self, params) -> Any:
        changes = {prm.name: prm.value for prm in params}  # rclpy has checked ranges and read_only
        with self._cv:
            self._apply(changes)
            self._params.update(changes)
            self._cv.notify()
        self.get_logger().info(f"link now {self._describe()}")
        return common.result(None)

    def _on_message(self, data: bytes) -> None:
        now = time.monotonic()
        self.counts["in"] += 1
        with self._cv:
            if len(self._queue) >= MAX_QUEUED:
                delivery, why = None, "queue"
            else:
                delivery, why = self._link.offer(now, len(data))
            if delivery is None:
                self.counts["drop_" + why] += 1
                for s in self._all_stats():
                    s.dropped += 1
                return
            self._queue.append((delivery, data))
            self._cv.notify()

    def _deliver(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._queue:
                    self._cv.wait()
                if self._stop:
                    return
                due = self._queue[0][0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                _, data = self._queue.popleft()
            try:
                self._pub.publish(data)
            except Exception:
                return
            self.counts["out"] += 1
            self.counts["bytes_out"] += len(data)
            for s in self._all_stats():
                s.add(len(data), len(data), 0.0)

    def _all_stats(self):
        return [s for s in (self._stats, getattr(self, "_diag_stats", None), getattr(self, "_log_stats", None))
                if s is not None]

    def _publish_diagnostics(self) -> None:
        w = self._diag_stats.window()
        values = dict(self.counts, kbit_s_out=w["kbit_s"], fps_out=w["fps"], queued=len(self._queue),
                      bandwidth_kbps=self._link.bandwidth_kbps, delay_ms=self._link.delay_ms,
                      jitter_ms=self._link.jitter_ms, loss_pct=self._link.loss_pct, queue_ms=self._link.queue_ms)
        level = DiagnosticStatus.WARN if w["dropped"] else DiagnosticStatus.OK
        text = f"{w['dropped']} message(s) dropped in the last period" if w["dropped"] else "relaying"
        self._diag_pub.publish(common.diagnostic_array(self, level, text, values, "link"))

    def _log_statistics(self) -> None:
        w = self._log_stats.window()
        c = self.counts
        self.get_logger().info(
            f"{w['frames']} messages out in {w['seconds']:.1f} s ({w['kbit_s']:.0f} kbit/s), dropped {w['dropped']}; "
            f"total in {c['in']}, out {c['out']}, tail drops {c['drop_queue']}, lost {c['drop_loss']}")

    def finish(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._worker.join(2.0)


def main(argv=None) -> int:
    return common.run_node(LinkEmulatorNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
