"""sync.py: colour/depth stamp pairing (approximate and exact time)."""
from __future__ import annotations

import types

import numpy as np
import pytest

from rgbd_codec_ros.sync import StampPairer, stamp_to_ns

MS = 1_000_000


def _feed(pairer, events):
    """events: (stream, stamp_ns); returns the (colour, depth) stamp pairs in emit order."""
    out = []
    for stream, t in events:
        add = pairer.add_color if stream == "c" else pairer.add_depth
        for p in add(t, (stream, t)):
            assert p.color == ("c", p.color_stamp_ns) and p.depth == ("d", p.depth_stamp_ns)
            out.append((p.color_stamp_ns, p.depth_stamp_ns))
    return out


def test_stamp_to_ns():
    assert stamp_to_ns(types.SimpleNamespace(sec=3, nanosec=25)) == 3_000_000_025
    from builtin_interfaces.msg import Time
    assert stamp_to_ns(Time(sec=1, nanosec=999_999_999)) == 1_999_999_999


def test_exact_pairs_only_equal_stamps():
    p = StampPairer(exact=True, queue_size=5)
    events = [("c", 0), ("d", 0), ("c", 33 * MS), ("d", 34 * MS), ("d", 66 * MS), ("c", 66 * MS)]
    assert _feed(p, events) == [(0, 0), (66 * MS, 66 * MS)]
    assert p.dropped_color == 1 and p.dropped_depth == 1
    assert p.queued == (0, 0)


def test_approximate_pairs_within_slop_any_arrival_order():
    p = StampPairer(slop_s=0.010, queue_size=5)
    events = [("c", 0), ("d", 3 * MS), ("d", 36 * MS), ("c", 33 * MS), ("c", 66 * MS), ("d", 80 * MS)]
    assert _feed(p, events) == [(0, 3 * MS), (33 * MS, 36 * MS)]
    # 66 ms colour and 80 ms depth are 14 ms apart (> slop): colour dropped, depth waits
    assert p.dropped_color == 1 and p.queued == (0, 1)


def test_approximate_picks_nearest_partner():
    p = StampPairer(slop_s=0.020, queue_size=10)
    events = [("d", 0), ("d", 10 * MS), ("d", 18 * MS), ("c", 12 * MS)]
    assert _feed(p, events) == [(12 * MS, 10 * MS)]
    # the older depth is dropped (it can never get a better partner); the newer one stays
    assert p.dropped_depth == 1 and p.queued == (0, 1)


def test_queue_size_bounds_memory():
    p = StampPairer(slop_s=0.001, queue_size=3)
    _feed(p, [("c", i * 33 * MS) for i in range(10)])
    assert p.queued == (3, 0) and p.dropped_color == 7


def test_stamp_going_backwards_resets():
    p = StampPairer(slop_s=0.005, queue_size=5)
    assert _feed(p, [("c", 1000 * MS), ("c", 10 * MS), ("d", 1000 * MS), ("d", 11 * MS)]) == []
    assert p.resets == 2
    assert _feed(p, [("c", 44 * MS), ("d", 44 * MS)]) == [(44 * MS, 44 * MS)]


def test_configure_changes_rule():
    p = StampPairer(slop_s=0.0, queue_size=10)
    assert _feed(p, [("c", 0), ("d", 2 * MS)]) == []
    p.configure(slop_s=0.005)
    assert _feed(p, [("c", 33 * MS), ("d", 35 * MS)]) == [(33 * MS, 35 * MS)]
    p.configure(queue_size=1)
    _feed(p, [("c", 100 * MS), ("c", 133 * MS)])
    assert p.queued[0] == 1
    with pytest.raises(ValueError):
        p.configure(queue_size=0)
    with pytest.raises(ValueError):
        StampPairer(slop_s=-1.0)


def test_jittery_streams_lose_nothing():
    """Two 30 Hz streams, random per-message jitter and arrival order: every frame pairs."""
    rng = np.random.default_rng(3)
    n = 500
    base = np.arange(n) * 33_333_333
    c = base + rng.integers(-2 * MS, 2 * MS, n)
    d = base + rng.integers(-2 * MS, 2 * MS, n)
    events = [("c", int(t)) for t in c] + [("d", int(t)) for t in d]
    # arrival order: by stamp plus a random transport delay up to 15 ms, each stream in order
    arrival = np.array([t for _, t in events]) + rng.integers(0, 15 * MS, 2 * n)
    arrival[:n] = np.maximum.accumulate(arrival[:n])
    arrival[n:] = np.maximum.accumulate(arrival[n:])
    order = np.argsort(arrival, kind="stable")
    pairs = _feed(StampPairer(slop_s=0.010, queue_size=5), [events[i] for i in order])
    assert len(pairs) == n
    assert pairs == [(int(a), int(b)) for a, b in zip(c, d)]
