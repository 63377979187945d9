"""Pairing of colour and depth messages by time stamp. No ROS imports.

Used by the encoder node and reusable by the bag tools. Stamps are integer
nanoseconds (``stamp_to_ns`` reads a ``builtin_interfaces/Time``-like object).

Approximate-time rule: when an item arrives, it is paired at once with the
queued item of the other stream whose stamp is nearest, if that is within
``slop``. Anything queued that is older than a paired item can no longer be
paired with a better partner (streams are time-ordered) and is dropped. An
item also goes once the other stream has moved more than ``slop`` past it.
Pairing at arrival keeps latency at zero; with a slop below half the frame
period (the usual case: a camera stamps colour and depth within a few ms) it
is also the best pairing. Exact-time is the same rule with a slop of zero.

A stamp that goes backwards on a stream (a bag restarted, simulated time
reset) clears both queues, so stale items never pair with new ones.
"""
from __future__ import annotations

import collections
from typing import Any, Deque, List, NamedTuple, Tuple

COLOR = 0
DEPTH = 1


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (``sec``, ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Pair(NamedTuple):
    color: Any
    depth: Any
    color_stamp_ns: int
    depth_stamp_ns: int


class StampPairer:
    """Pairs colour and depth items by stamp; see the module text for the rule.

    ``add_color`` / ``add_depth`` return the pairs completed by that arrival
    (usually zero or one), oldest first. Counters ``dropped_color``,
    ``dropped_depth`` and ``resets`` say what was lost and why.
    """

    def __init__(self, slop_s: float = 0.02, queue_size: int = 10, exact: bool = False):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not exact and not slop_s >= 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop_s}")
        self.exact = bool(exact)
        self._slop_s = float(slop_s)
        self.slop_ns = 0 if exact else int(round(slop_s * 1e9))
        self.queue_size = int(queue_size)
        self._queues: Tuple[Deque[Tuple[int, Any]], Deque[Tuple[int, Any]]] = (
            collections.deque(), collections.deque())
        self._last = [None, None]  # latest stamp seen per stream
        self.dropped_color = 0
        self.dropped_depth = 0
        self.resets = 0
        self.pairs = 0

    def configure(self, slop_s: float = None, queue_size: int = None, exact: bool = None) -> None:
        """Change the rule; queued items stay and are judged by the new rule from now on."""
        if exact is not None:
            self.exact = bool(exact)
        if slop_s is not None:
            if not slop_s >= 0:
                raise ValueError(f"slop must be >= 0 seconds, got {slop_s}")
            self._slop_s = float(slop_s)
        if queue_size is not None:
            if queue_size < 1:
                raise ValueError(f"queue_size must be >= 1, got {queue_size}")
            self.queue_size = int(queue_size)
        self.slop_ns = 0 if self.exact else int(round(self._slop_s * 1e9))
        for stream in (COLOR, DEPTH):
            while len(self._queues[stream]) > self.queue_size:
                self._drop_oldest(stream)

    @property
    def queued(self) -> Tuple[int, int]:
        return len(self._queues[COLOR]), len(self._queues[DEPTH])

    def reset(self) -> None:
        """Forget everything queued (counted as drops)."""
        self.dropped_color += len(self._queues[COLOR])
        self.dropped_depth += len(self._queues[DEPTH])
        for q in self._queues:
            q.clear()
        self._last = [None, None]

    def add_color(self, stamp_ns: int, item: Any) -> List[Pair]:
        return self._add(COLOR, int(stamp_ns), item)

    def add_depth(self, stamp_ns: int, item: Any) -> List[Pair]:
        return self._add(DEPTH, int(stamp_ns), item)

    # ------------------------------------------------------------------ internals

    def _count_drop(self, stream: int, n: int = 1) -> None:
        if stream == COLOR:
            self.dropped_color += n
        else:
            self.dropped_depth += n

    def _drop_oldest(self, stream: int) -> None:
        self._queues[stream].popleft()
        self._count_drop(stream)

    def _add(self, stream: int, stamp: int, item: Any) -> List[Pair]:
        other = 1 - stream
        last = self._last[stream]
        if last is not None and stamp < last:
            self.resets += 1
            self.reset()
        self._last[stream] = stamp
        out: List[Pair] = []

        # The nearest queued partner within slop (the queue is time-ordered).
        best_idx, best_gap = -1, None
        for i, (t, _) in enumerate(self._queues[other]):
            gap = abs(t - stamp)
            if gap <= self.slop_ns and (best_gap is None or gap < best_gap):
                best_idx, best_gap = i, gap
        if best_idx >= 0:
            # Older partners can no longer find a better match than this one.
            for _ in range(best_idx):
                self._drop_oldest(other)
            t_other, other_item = self._queues[other].popleft()
            # Our own older items were not paired when they arrived, and the
            # other stream has now passed them: they stay unpaired.
            self._count_drop(stream, len(self._queues[stream]))
            self._queues[stream].clear()
            if stream == COLOR:
                out.append(Pair(item, other_item, stamp, t_other))
            else:
                out.append(Pair(other_item, item, t_other, stamp))
            self.pairs += 1
            return out

        # No partner yet: drop other-stream items this one has passed by more than slop.
        q_other = self._queues[other]
        while q_other and q_other[0][0] < stamp - self.slop_ns:
            self._drop_oldest(other)
        # Our own queued items the other stream has passed can never pair either.
        other_last = self._last[other]
        q_self = self._queues[stream]
        q_self.append((stamp, item))
        if other_last is not None:
            while q_self and q_self[0][0] < other_last - self.slop_ns:
                self._drop_oldest(stream)
        while len(q_self) > self.queue_size:
            self._drop_oldest(stream)
        return out
