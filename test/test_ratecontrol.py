"""rgbd_codec_ros.ratecontrol without ROS: the size model, the 1 s window, the controller on a
simulated codec whose content changes, and the link adapter on a simulated link."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from rgbd_codec_ros import ratecontrol as rc

PIXELS = 640 * 480


class FakeCodec:
    """Frame sizes like a real codec: a per-rung curve times a content complexity that changes."""

    def __init__(self, color_prior, depth_prior, seed=0):
        self.cp, self.dp = color_prior, depth_prior
        self.rng = random.Random(seed)
        self.complexity = 1.0

    def set_complexity(self, c):
        self.complexity = c

    def code(self, rungs):
        noise = lambda: math.exp(self.rng.gauss(0, 0.05))  # noqa: E731
        c = math.exp(self.cp[rungs[0]]) * PIXELS * self.complexity * noise()
        d = math.exp(self.dp[rungs[1]]) * PIXELS * (0.5 + 0.5 * self.complexity) * noise()
        return c, d


def _ladders():
    return [rc.classical_color_ladder(), rc.classical_depth_ladder()]


def _run(controller, codec, seconds, fps=10.0, start=0.0, complexity=None):
    """Offer frames at fps for seconds; returns [(t, bits)] sent and the number skipped."""
    sent, skipped = [], 0
    for k in range(int(seconds * fps)):
        t = start + k / fps
        if complexity is not None:
            codec.set_complexity(complexity(t))
        plan = controller.plan(t, PIXELS)
        while plan is not None:
            c, d = codec.code(plan.rungs)
            bits = c + d + 1500
            controller.observe(plan, [c, d], bits)
            if controller.fits(t, bits):
                break
            plan = controller.smaller(plan, bits, t)
        if plan is None:
            skipped += 1
            continue
        controller.sent(t, bits, plan)
        sent.append((t, bits))
    return sent, skipped


def _windows(sent, t0, t1, step=0.05):
    ts = np.array([s[0] for s in sent])
    bs = np.array([s[1] for s in sent])
    return [bs[(ts > t - 1.0) & (ts <= t)].sum() / 1000.0 for t in np.arange(t0, t1, step)]


def test_size_model_learns_a_shifted_curve_and_stays_monotonic():
    _, prior = rc.classical_color_ladder()
    model = rc.SizeModel(prior)
    truth = [p + math.log(2.5) for p in prior]  # content 2.5x busier than the prior
    for _ in range(8):
        model.update(10, math.exp(truth[10]) * PIXELS, PIXELS)
    assert model.predict(10, PIXELS) == pytest.approx(math.exp(truth[10]) * PIXELS, rel=0.02)
    # neighbours followed the content change without being observed
    assert model.predict(12, PIXELS) / (math.exp(prior[12]) * PIXELS) > 1.8
    assert all(a <= b for a, b in zip(model.log_bpp, model.log_bpp[1:]))
    # an observation that contradicts the order pushes its neighbours along
    model.update(5, model.predict(15, PIXELS) * 1.5, PIXELS)
    assert all(a <= b for a, b in zip(model.log_bpp, model.log_bpp[1:]))
    # nonsense is ignored
    before = list(model.log_bpp)
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        model.update(3, bad, PIXELS)
    assert model.log_bpp == before


def test_sliding_window_counts_the_last_second_only():
    w = rc.SlidingWindow(1.0)
    w.add(0.0, 100)
    w.add(0.5, 50)
    assert w.bits(0.9) == 150
    assert w.bits(1.0) == 50   # the frame at 0.0 left the window (t - 1, t]
    assert w.bits(1.6) == 0


@pytest.mark.parametrize("target", [2000.0, 5000.0, 10000.0])
def test_every_window_within_budget_after_settling_while_content_changes(target):
    c_rungs, c_prior = rc.classical_color_ladder()
    d_rungs, d_prior = rc.classical_depth_ladder()
    # the codec is 1.3x dearer than the prior, and content complexity swings 0.7..1.3
    codec = FakeCodec([p + 0.26 for p in c_prior], [p + 0.1 for p in d_prior])
    ctl = rc.RateController(target, [(c_rungs, c_prior), (d_rungs, d_prior)], depth_share=0.35)
    sent, _ = _run(ctl, codec, 20.0, complexity=lambda t: 1.0 + 0.3 * math.sin(t * 0.9))
    w = _windows(sent, 3.0, 20.0)
    assert max(w) <= target * 1.0 + 1e-6          # never over the target (hard)
    assert min(w) >= target * 0.75                # and not far under it (the window is used)
    assert np.mean(w) >= target * 0.85


def test_too_small_a_target_drops_the_frame_rate_not_the_window():
    ctl = rc.RateController(150.0, _ladders(), depth_share=0.35)  # about one cheapest frame per second
    codec = FakeCodec(ctl.models[0].prior, ctl.models[1].prior)
    sent, skipped = _run(ctl, codec, 10.0)
    assert skipped > 50 and 5 <= len(sent) <= 30
    assert max(_windows(sent, 1.0, 10.0)) <= 150.0
    # what one frame needs, and the smallest target at which it fits
    assert ctl.min_target_kbps(PIXELS) * 1000 * ctl.HEADROOM >= ctl.min_frame_bits(PIXELS) * 0.999


def test_a_frame_that_would_break_the_window_is_recoded_smaller_or_skipped():
    ctl = rc.RateController(1000.0, _ladders())
    plan = ctl.plan(0.0, PIXELS)
    ctl.sent(0.0, 900e3)                   # the window is nearly full
    assert not ctl.fits(0.05, 200e3)
    smaller = ctl.smaller(plan, 200e3, 0.05)
    assert smaller is None or (smaller.rungs <= plan.rungs and smaller.rungs != plan.rungs)
    assert ctl.plan(0.1, PIXELS) is None   # not even the cheapest fits the 100 kbit left... skip


def test_depth_share_moves_bits_between_streams():
    shares = {}
    for share in (0.1, 0.6):
        ctl = rc.RateController(3000.0, _ladders(), depth_share=share)
        codec = FakeCodec(ctl.models[0].prior, ctl.models[1].prior)
        sent, _ = _run(ctl, codec, 5.0)
        shares[share] = ctl.last_rungs
    assert shares[0.6][1] > shares[0.1][1]  # a richer depth rung
    assert shares[0.6][0] < shares[0.1][0]  # and a cheaper colour rung


def test_learned_ladder_single_stream():
    ctl = rc.RateController(500.0, [rc.learned_ladder()])
    plan = ctl.plan(0.0, PIXELS)
    assert set(plan.options) == {"quality"} and -1.0 <= plan.options["quality"] <= 3.0
    ctl.observe(plan, [None, None], 300e3)
    assert ctl.models[0].observations == 1


# ------------------------------------------------------------------ link adaptation


class FakeLink:
    """A bottleneck with a 300 ms tail-drop queue and 50 ms delay, reporting like the decoder."""

    def __init__(self, kbps):
        self.kbps = kbps
        self.queue_s = 0.0
        self.total = 0
        self.last_stamp = 0

    def step(self, send_kbps, dt, stamps):
        """Send frames (stamps) at send_kbps over dt; returns a feedback report."""
        frame_bits = send_kbps * 1000 * dt / max(len(stamps), 1)
        received = 0
        for s in stamps:
            if self.queue_s * 1000 > 300:
                continue  # tail drop
            self.queue_s += frame_bits / (self.kbps * 1000)
            received += 1
            self.last_stamp = s
        self.queue_s = max(0.0, self.queue_s - dt)
        self.total += received
        return {"kbps": min(send_kbps, self.kbps), "frames": received, "frames_total": self.total,
                "last_stamp_ns": self.last_stamp, "latency_ms_p50": 50 + 1000 * self.queue_s}


def _simulate(adapter, link, sent_log, seconds, t0, capacity):
    history = []
    for k in range(int(seconds / 0.5)):
        t = t0 + k * 0.5
        link.kbps = capacity(t)
        stamps = [int((t + i * 0.1) * 1e9) for i in range(5)]
        for s in stamps:
            sent_log.add(s)
        report = link.step(adapter.kbps, 0.5, stamps)
        loss = adapter.loss_from(report, sent_log)
        adapter.update(t, report, loss)
        history.append((t, adapter.kbps, link.queue_s))
    return history


def test_adapter_backs_off_when_the_link_drops_and_probes_back_up():
    adapter = rc.LinkAdapter(1500.0, min_kbps=100.0)
    link, log = FakeLink(2000.0), rc.SentLog()
    cap = lambda t: 700.0 if 10.0 <= t < 25.0 else 2000.0  # noqa: E731
    hist = _simulate(adapter, link, log, 40.0, 0.0, cap)
    at = lambda t: [h for h in hist if h[0] <= t][-1]  # noqa: E731
    assert at(9.5)[1] == pytest.approx(1500.0)        # clear link: the full target
    assert at(15.0)[1] <= 700.0                       # within 5 s of the drop: under the link
    assert at(24.5)[2] < 0.3                          # the queue is not standing full
    assert at(30.0)[1] > 770.0                        # within 5 s of the link coming back: probing up
    assert at(39.5)[1] >= 1400.0


def test_adapter_survives_missing_late_and_nonsense_feedback():
    adapter = rc.LinkAdapter(1000.0, min_kbps=100.0)
    log = rc.SentLog()
    for bad in ({}, {"kbps": "abc"}, {"frames_total": "nan", "last_stamp_ns": "1"},
                {"frames_total": "-5", "last_stamp_ns": "10"}, {"frames_total": "1e300", "last_stamp_ns": "x"}):
        assert rc.parse_feedback(bad) is None
        assert adapter.update(0.0, rc.parse_feedback(bad), None) == 1000.0
    ok = rc.parse_feedback({"frames_total": "10", "last_stamp_ns": "2000000000", "latency_ms_p50": "inf",
                            "kbps": "-3", "loss_pct": "250"})
    assert ok == {"frames_total": 10.0, "last_stamp_ns": 2e9}  # the nonsense values are dropped
    for s in range(0, 30):
        log.add(s * 100_000_000)
    assert adapter.loss_from(ok, log) is None                 # first report: nothing to compare
    late = {"frames_total": 5.0, "last_stamp_ns": 1e9}
    assert adapter.loss_from(late, log) is None               # older than the last one: ignored
    nxt = {"frames_total": 15.0, "last_stamp_ns": 2.9e9}
    assert adapter.loss_from(nxt, log) == pytest.approx(1 - 5 / 9)
    # one absurd latency does not set the link's base delay for good
    for k in range(30):
        adapter.update(1.0 + 0.5 * k, {"frames_total": 0.0, "last_stamp_ns": 0.0,
                                       "latency_ms_p50": -50000.0 if k == 3 else 60.0}, None)
    assert adapter.kbps == pytest.approx(1000.0)


def test_depth_only_controller_beside_a_video_colour_stream():
    """The encoder's glue for video colour: the video encoder keeps colour at its own rate, a
    controller with the depth ladder only gets what colour leaves of the target. Only depth
    teaches its model and only depth fills its window, so frames are not skipped for colour's
    bits and the whole message stays within the target."""
    target, colour_kbps = 1000.0, 360.0
    d_rungs, d_prior = rc.classical_depth_ladder()
    codec = FakeCodec(d_prior, d_prior)
    ctl = rc.RateController(target * 0.6, [(d_rungs, d_prior)])
    assert ctl.depth_only
    colour_window, sent, skipped = rc.SlidingWindow(1.0), [], 0
    for k in range(200):
        t = k / 10.0
        ctl.set_target(max(0.6 * target, target - colour_window.bits(t) / 1000.0))
        plan = ctl.plan(t, PIXELS)
        if plan is None:
            skipped += 1
            continue
        colour = colour_kbps * 100.0 * (3.0 if k % 30 == 0 else 1.0)  # a keyframe every 30
        _, depth = codec.code((0, plan.rungs[0]))
        bits = colour + depth + 1500
        ctl.observe(plan, [colour, depth], bits)
        ctl.sent(t, bits, plan)
        colour_window.add(t, colour)
        sent.append((t, bits))
    assert skipped <= 2
    r = ctl.last_rungs[0]
    assert ctl.models[0].predict(r, PIXELS) == pytest.approx(math.exp(d_prior[r]) * PIXELS, rel=0.25)
    w = _windows(sent, 3.0, 20.0)
    assert max(w) <= 1.1 * target and np.mean(w) >= 0.8 * target


def _adapter_reports(adapter, log, lost, sender_delay_ms=0.0, latency_ms=lambda k: 60.0, n=40):
    """Reports every 0.5 s of 5 frames at 10 Hz; ``lost``: indices of frames that did not arrive.
    Returns the lowest target in force."""
    total, lowest = 0, adapter.kbps
    for k in range(n):
        stamps = [int((k * 0.5 + i * 0.1) * 1e9) for i in range(5)]
        for j, s in enumerate(stamps):
            log.add(s, sent_ns=s + int(sender_delay_ms(5 * k + j) * 1e6) if callable(sender_delay_ms)
                    else s + int(sender_delay_ms * 1e6))
            total += (5 * k + j) not in lost
        report = {"kbps": 900.0, "frames": 5.0, "frames_total": float(total), "last_stamp_ns": stamps[-1],
                  "latency_ms_p50": latency_ms(k)}
        lowest = min(lowest, adapter.update(k * 0.5, report, adapter.loss_from(report, log)))
    return lowest


def test_one_random_loss_is_not_congestion_two_in_a_row_are():
    assert _adapter_reports(rc.LinkAdapter(1000.0), rc.SentLog(), lost={57}) == pytest.approx(1000.0)
    assert _adapter_reports(rc.LinkAdapter(1000.0), rc.SentLog(), lost={150, 152}) < 1000.0
    assert _adapter_reports(rc.LinkAdapter(1000.0), rc.SentLog(), lost=set(range(100, 110))) < 900.0


def test_time_in_the_encoder_is_not_taken_for_a_link_queue():
    # from report 10 on the frames arrive 300 ms later than before
    late = lambda k: 60.0 + (300.0 if k >= 10 else 0.0)  # noqa: E731
    # ... because the encoder sent them 300 ms after their capture (CPU load): no overuse
    cpu = lambda f: 300.0 if f >= 50 else 0.0  # noqa: E731
    assert _adapter_reports(rc.LinkAdapter(1000.0), rc.SentLog(), set(), cpu, late) == pytest.approx(1000.0)
    # ... because they waited 300 ms in the link: overuse
    assert _adapter_reports(rc.LinkAdapter(1000.0), rc.SentLog(), set(), 0.0, late) < 900.0
    # stamps not on the wall clock (sim time, synthetic): the sender delay is not used
    log = rc.SentLog()
    log.add(5_000_000_000)
    assert log.sender_delay_ms(0, 10_000_000_000) is None
