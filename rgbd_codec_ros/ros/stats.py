"""Running figures for the nodes' diagnostics and logs. No ROS imports."""
from __future__ import annotations

import time
from typing import Dict, Optional


class StreamStats:
    """Counts frames, bytes and latencies; ``window()`` gives figures since the previous call."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self.frames = 0
        self.bytes_in = 0       # raw bytes of the images that went in
        self.bytes_out = 0      # coded bytes
        self.errors = 0         # inputs refused (bad message, codec error)
        self.dropped = 0        # inputs never processed (no partner, no subscriber, ...)
        self.latency_sum_s = 0.0
        self.latency_max_s = 0.0
        self.last_frame_time: Optional[float] = None
        self._mark = self._snapshot()

    def _snapshot(self) -> Dict[str, float]:
        return {"t": self._clock(), "frames": self.frames, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "errors": self.errors, "dropped": self.dropped,
                "latency_sum_s": self.latency_sum_s}

    def add(self, bytes_in: int, bytes_out: int, latency_s: float) -> None:
        self.frames += 1
        self.bytes_in += int(bytes_in)
        self.bytes_out += int(bytes_out)
        self.latency_sum_s += latency_s
        self.latency_max_s = max(self.latency_max_s, latency_s)
        self.last_frame_time = self._clock()

    def window(self) -> Dict[str, float]:
        """Figures over the time since the last call (and totals)."""
        now = self._snapshot()
        prev, self._mark = self._mark, now
        dt = max(now["t"] - prev["t"], 1e-9)
        frames = now["frames"] - prev["frames"]
        bytes_in = now["bytes_in"] - prev["bytes_in"]
        bytes_out = now["bytes_out"] - prev["bytes_out"]
        lat = now["latency_sum_s"] - prev["latency_sum_s"]
        return {
            "seconds": dt,
            "fps": frames / dt,
            "kbit_s": bytes_out * 8 / 1000.0 / dt,
            "ratio": bytes_in / bytes_out if bytes_out else 0.0,
            "latency_ms": 1000.0 * lat / frames if frames else 0.0,
            "frames": frames,
            "errors": now["errors"] - prev["errors"],
            "dropped": now["dropped"] - prev["dropped"],
        }

    def seconds_since_last_frame(self) -> Optional[float]:
        return None if self.last_frame_time is None else self._clock() - self.last_frame_time
