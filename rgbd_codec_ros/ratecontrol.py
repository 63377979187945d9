"""Rate control for the encoder: a bit budget per 1 s window, and link adaptation. No ROS imports.

Three parts, each usable and tested on its own (docs/ratecontrol.md has the control law):

- ``SizeModel``: an online model of a stream's frame size versus a *rung* of its setting
  ladder (cheapest rung 0 .. richest), in log bits per pixel. It starts from a prior curve and
  learns from every coded frame: the rung used moves most, its neighbours follow (content
  changes shift the whole curve), and the curve is kept non-decreasing.
- ``RateController``: picks the rungs of the next frame so that the frame fits the budget:
  the nominal share of the target for one frame interval, never more than what is left in the
  sliding 1 s window. A frame whose real size would break the window is re-coded smaller or
  skipped (``fits``/``smaller``); when even the cheapest rungs do not fit, the frame is skipped
  and the frame rate drops instead of latency growing.
- ``LinkAdapter``: lowers the target when link feedback shows loss or queuing delay rising and
  probes back up when the link clears (delay- and loss-based, in the spirit of WebRTC's
  congestion control, our own law).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

# ------------------------------------------------------------------ setting ladders

#: classical colour quality ladder (cheapest first); the prior is JPEG on a real 640x480 frame
#: (bits per pixel), measured on realsense_d4xx_visp_rbt; other colour codecs start from it and learn
COLOR_QUALITIES = (2, 5, 8, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95)
_JPEG_PRIOR = {2: 30e3, 5: 44e3, 10: 70e3, 20: 109e3, 30: 139e3, 40: 165e3, 50: 189e3, 60: 214e3,
               70: 253e3, 80: 315e3, 90: 458e3, 95: 659e3}

#: classical depth ladder (cheapest first): (depth_codec, max error floor mm, relative error);
#: error grows with distance as max(floor, rel * z); the richest rung is lossless. The prior
#: (bits per frame) is the mean of 5 realsense_d4xx_visp_rbt frames with the default coders:
#: JPEG XL lossless for the lossless rung and for the bounded quantiser's integers
DEPTH_SETTINGS = ((("rvl_lossy", 100.0, 0.2), 34e3), (("rvl_lossy", 50.0, 0.12), 39e3),
                  (("rvl_lossy", 30.0, 0.08), 49e3), (("rvl_lossy", 20.0, 0.04), 62e3),
                  (("rvl_lossy", 10.0, 0.02), 85e3), (("rvl_lossy", 5.0, 0.01), 118e3),
                  (("rvl_lossy", 2.0, 0.005), 169e3), (("rvl_lossy", 1.0, 0.002), 237e3),
                  (("rvl_lossy", 1.0, 0.0), 246e3), (("lossless", 0.0, 0.0), 340e3))

#: learned quality ladder: -1..3 in steps of 1/8 (the backend interpolates between trained points)
LEARNED_QUALITIES = tuple(-1.0 + k / 8.0 for k in range(33))

_PRIOR_PIXELS = 640 * 480


def _interp_prior(q: float, table: Dict[int, float]) -> float:
    keys = sorted(table)
    if q <= keys[0]:
        return table[keys[0]]
    for a, b in zip(keys, keys[1:]):
        if q <= b:
            t = (q - a) / (b - a)
            return math.exp((1 - t) * math.log(table[a]) + t * math.log(table[b]))
    return table[keys[-1]]


def classical_color_ladder() -> Tuple[List[Dict[str, Any]], List[float]]:
    rungs = [{"color_quality": q} for q in COLOR_QUALITIES]
    prior = [math.log(_interp_prior(q, _JPEG_PRIOR) / _PRIOR_PIXELS) for q in COLOR_QUALITIES]
    return rungs, prior


def classical_depth_ladder(lossless_codec: str = "jpegxl") -> Tuple[List[Dict[str, Any]], List[float]]:
    rungs, prior = [], []
    for (codec, err, rel), bits in DEPTH_SETTINGS:
        if codec == "lossless":
            rungs.append({"depth_codec": lossless_codec})
        else:
            rungs.append({"depth_codec": codec, "depth_max_error_mm": err, "depth_rel_error": rel})
        prior.append(math.log(bits / _PRIOR_PIXELS))
    return rungs, prior


def learned_ladder() -> Tuple[List[Dict[str, Any]], List[float]]:
    rungs = [{"quality": q} for q in LEARNED_QUALITIES]
    # a guess (colour + depth, bits per pixel): doubling every quality step; learned online
    prior = [math.log(0.12 * 2.0 ** q) for q in LEARNED_QUALITIES]
    return rungs, prior


# ------------------------------------------------------------------ the size model


class SizeModel:
    """log(bits per pixel) of one stream at each rung of its ladder, learned online.

    ``update(rung, bits, pixels)``: the error e = log(observed) - estimate moves the rung used
    by ``gain`` * e and every other rung by ``gain * spread ** distance`` * e (content that
    gets busier makes every setting dearer); then the curve is made non-decreasing again
    around the observed rung, which is trusted most.
    """

    def __init__(self, prior: Sequence[float], gain: float = 0.6, spread: float = 0.8):
        if not prior:
            raise ValueError("a ladder needs at least one rung")
        self.prior = [float(v) for v in prior]
        self.gain, self.spread = float(gain), float(spread)
        self.log_bpp = list(self.prior)
        self.observations = 0

    def __len__(self) -> int:
        return len(self.log_bpp)

    def predict(self, rung: int, pixels: int) -> float:
        """Bits of a frame of ``pixels`` pixels at ``rung``."""
        return math.exp(self.log_bpp[rung]) * pixels

    def update(self, rung: int, bits: float, pixels: int) -> None:
        if not (bits > 0 and pixels > 0 and math.isfinite(bits)):
            return
        err = math.log(bits / pixels) - self.log_bpp[rung]
        for j in range(len(self.log_bpp)):
            self.log_bpp[j] += self.gain * (self.spread ** abs(j - rung)) * err
        for j in range(rung + 1, len(self.log_bpp)):       # richer rungs cost at least as much
            self.log_bpp[j] = max(self.log_bpp[j], self.log_bpp[j - 1])
        for j in range(rung - 1, -1, -1):                  # cheaper rungs at most as much
            self.log_bpp[j] = min(self.log_bpp[j], self.log_bpp[j + 1])
        self.observations += 1

    def best_rung(self, budget_bits: float, pixels: int) -> Optional[int]:
        """The richest rung predicted to fit ``budget_bits``; None if not even rung 0 does."""
        best = None
        for j in range(len(self.log_bpp)):
            if self.predict(j, pixels) <= budget_bits:
                best = j
        return best

    def reset(self) -> None:
        self.log_bpp = list(self.prior)
        self.observations = 0


# ------------------------------------------------------------------ the window


class SlidingWindow:
    """Bits sent in the last ``seconds``: ``add(t, bits)``, ``bits(t)``."""

    def __init__(self, seconds: float = 1.0):
        self.seconds = float(seconds)
        self._items: deque = deque()
        self._sum = 0.0

    def _expire(self, now: float) -> None:
        while self._items and self._items[0][0] <= now - self.seconds:
            self._sum -= self._items.popleft()[1]
        if not self._items:
            self._sum = 0.0

    def add(self, now: float, bits: float) -> None:
        self._expire(now)
        self._items.append((now, float(bits)))
        self._sum += float(bits)

    def bits(self, now: float) -> float:
        self._expire(now)
        return max(0.0, self._sum)


# ------------------------------------------------------------------ the controller


@dataclass
class Plan:
    """Settings chosen for one frame: rung per stream, predicted bits, the budget it was made for."""
    rungs: Tuple[int, ...]
    options: Dict[str, Any]
    predicted_bits: float
    budget_bits: float
    pixels: int
    attempt: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


class RateController:
    """Chooses per-frame settings so that every 1 s window carries at most the target.

    ``streams``: one ``(rungs, prior)`` ladder per independently coded stream: two (colour,
    depth) for the classical backend, one (joint) for the learned one. ``depth_share`` is the
    depth stream's share of a frame's budget when there are two streams (what one stream leaves
    unused goes to the other). ``overhead_bits``: message bytes outside the streams (headers,
    camera infos).
    """

    #: fraction of the window's target the controller plans to fill (model error margin)
    HEADROOM = 0.95
    #: a frame may take this many times its nominal share when the window has room
    BURST = 1.5
    #: share of the window's surplus (or debt) against one nominal share taken back per frame
    GAIN = 0.3

    def __init__(self, target_kbps: float, streams: Sequence[Tuple[List[Dict[str, Any]], List[float]]],
                 depth_share: float = 0.35, window_s: float = 1.0, overhead_bits: float = 2000.0,
                 depth_only: Optional[bool] = None):
        if not 1 <= len(streams) <= 2:
            raise ValueError("one (joint) or two (colour, depth) streams")
        self.rungs = [list(r) for r, _ in streams]
        # One ladder that sets depth only (``depth_only``; by default: told from its rungs) is the
        # depth stream of a (colour, depth) message whose colour someone else keeps to its own
        # rate (a video encoder): only the depth stream's size teaches the model, and the colour
        # bits are not counted in this controller's window (its target is what colour leaves).
        if depth_only is None:
            depth_only = len(streams) == 1 and all("depth_codec" in r for r in self.rungs[0])
        self.depth_only = bool(depth_only) and len(streams) == 1
        #: bits of the last observed frame outside the controlled stream (depth_only: its colour)
        self.outside_bits = 0.0
        self.models = [SizeModel(p) for _, p in streams]
        self.depth_share = float(depth_share)
        self.window = SlidingWindow(window_s)
        self.overhead_bits = float(overhead_bits)
        self.target_kbps = float(target_kbps)
        self._last_plan_t: Optional[float] = None
        self.interval_s: Optional[float] = None     # EWMA of the time between frames offered
        self.skipped = 0
        self.recoded = 0
        self.last_rungs: Optional[Tuple[int, ...]] = None

    # -- budget
    @property
    def target_bps(self) -> float:
        return self.target_kbps * 1000.0

    def set_target(self, kbps: float) -> None:
        self.target_kbps = float(kbps)

    def cap_bits(self) -> float:
        """What one window may carry (the target times the window, less headroom)."""
        return self.target_bps * self.window.seconds * self.HEADROOM

    def min_frame_bits(self, pixels: int) -> float:
        """Predicted bits of one frame at the cheapest rungs."""
        return self.overhead_bits + sum(m.predict(0, pixels) for m in self.models)

    def min_target_kbps(self, pixels: int) -> float:
        """The smallest target at which one frame per window fits."""
        return self.min_frame_bits(pixels) / (self.window.seconds * self.HEADROOM) / 1000.0

    def _note_interval(self, now: float) -> None:
        if self._last_plan_t is not None:
            dt = min(max(now - self._last_plan_t, 1e-3), 5.0)
            self.interval_s = dt if self.interval_s is None else 0.8 * self.interval_s + 0.2 * dt
        self._last_plan_t = now

    def frame_budget(self, now: float) -> float:
        """Bits the next frame may take: its nominal share, capped by the room in the window."""
        room = self.cap_bits() - self.window.bits(now)
        interval = self.interval_s if self.interval_s is not None else 0.1
        nominal = self.target_bps * min(interval, self.window.seconds) * self.HEADROOM
        # In steady state the room left in the window is one nominal share; a part of any
        # surplus or debt is taken back per frame (smooth, no skip/burst oscillation)
        budget = nominal + self.GAIN * (room - nominal)
        # depth_only: the target moves with what colour spent (it rises when colour skipped or
        # spent little): a burst on a high target becomes a debt, and skips, when it falls back
        # (simulated: 34 of 200 frames skipped with bursts, 2 without)
        return min(room, budget, (1.0 if self.depth_only else self.BURST) * nominal)

    # -- choosing settings
    def plan(self, now: float, pixels: int) -> Optional[Plan]:
        """Settings for the frame offered at ``now``; None = skip it (not even the cheapest fits)."""
        self._note_interval(now)
        budget = self.frame_budget(now)
        cheapest = self.min_frame_bits(pixels)
        room = self.cap_bits() - self.window.bits(now)
        if budget < cheapest <= room:
            # the nominal share is less than the cheapest frame: send cheapest frames as the window
            # allows (the frame rate drops to what the budget carries)
            budget = cheapest * 1.0001
        return self._plan_for(budget, pixels, 0)

    def _plan_for(self, budget: float, pixels: int, attempt: int) -> Optional[Plan]:
        avail = budget - self.overhead_bits
        if len(self.models) == 1:
            r = self.models[0].best_rung(avail, pixels)
            if r is None:
                self.skipped += 1
                return None
            rungs = (r,)
        else:
            mc, md = self.models
            if mc.predict(0, pixels) + md.predict(0, pixels) > avail:
                self.skipped += 1
                return None
            d = md.best_rung(self.depth_share * avail, pixels)
            d = 0 if d is None else d
            c = mc.best_rung(avail - md.predict(d, pixels), pixels)
            if c is None:  # depth's share leaves colour nothing: depth steps down until colour fits
                while d > 0 and c is None:
                    d -= 1
                    c = mc.best_rung(avail - md.predict(d, pixels), pixels)
                c = 0 if c is None else c
            # what colour leaves unused (at its richest rung) goes to depth
            d2 = md.best_rung(avail - mc.predict(c, pixels), pixels)
            if d2 is not None and d2 > d:
                d = d2
            rungs = (c, d)
        options: Dict[str, Any] = {}
        for stream, r in enumerate(rungs):
            options.update(self.rungs[stream][r])
        predicted = self.overhead_bits + sum(m.predict(r, pixels) for m, r in zip(self.models, rungs))
        return Plan(rungs=rungs, options=options, predicted_bits=predicted, budget_bits=budget,
                    pixels=pixels, attempt=attempt)

    def observe(self, plan: Plan, stream_bits: Sequence[Optional[float]], total_bits: float) -> None:
        """Teach the models a coded frame's real sizes (per stream; total if not separable)."""
        self.outside_bits = 0.0
        if self.depth_only and len(stream_bits) == 2 and all(b is not None for b in stream_bits):
            colour, depth = (float(b) for b in stream_bits)
            self.outside_bits = max(colour, 0.0)
            plan.extra["outside_bits"] = self.outside_bits
            self.models[0].update(plan.rungs[0], depth, plan.pixels)
            other = total_bits - colour - depth
            if other > 0 and math.isfinite(other):
                self.overhead_bits = 0.9 * self.overhead_bits + 0.1 * other
            return
        if len(self.models) == 1 or any(b is None for b in stream_bits):
            stream_bits = [max(total_bits - self.overhead_bits, 1.0)] if len(self.models) == 1 else None
        if stream_bits is None:  # two streams but sizes unknown: scale both by the total's error
            ratio = total_bits / max(plan.predicted_bits, 1.0)
            stream_bits = [m.predict(r, plan.pixels) * ratio for m, r in zip(self.models, plan.rungs)]
        for m, r, b in zip(self.models, plan.rungs, stream_bits):
            m.update(r, float(b), plan.pixels)
        # the overhead (message fields, camera infos) is learned too, slowly
        other = total_bits - sum(stream_bits)
        if other > 0 and math.isfinite(other):
            self.overhead_bits = 0.9 * self.overhead_bits + 0.1 * other

    def fits(self, now: float, bits: float) -> bool:
        """Whether a frame of ``bits`` (the whole message) may go out now without the window
        exceeding the target (depth_only: less the last observed frame's colour)."""
        return self.window.bits(now) + bits - self.outside_bits <= self.target_bps * self.window.seconds

    def smaller(self, plan: Plan, bits: float, now: float) -> Optional[Plan]:
        """A cheaper plan after a frame came out at ``bits`` and did not fit; None = skip."""
        room = self.target_bps * self.window.seconds - self.window.bits(now)
        budget = min(plan.budget_bits, room) * 0.9
        new = self._plan_for(budget, plan.pixels, plan.attempt + 1)
        if new is None:
            return None
        if all(a >= b for a, b in zip(new.rungs, plan.rungs)):  # nothing cheaper predicted: force a step
            rungs = tuple(max(0, r - 2) for r in plan.rungs)
            if rungs == plan.rungs:
                self.skipped += 1
                return None
            options: Dict[str, Any] = {}
            for stream, r in enumerate(rungs):
                options.update(self.rungs[stream][r])
            predicted = self.overhead_bits + sum(m.predict(r, plan.pixels) for m, r in zip(self.models, rungs))
            new = Plan(rungs=rungs, options=options, predicted_bits=predicted, budget_bits=budget,
                       pixels=plan.pixels, attempt=plan.attempt + 1)
        self.recoded += 1
        return new

    def sent(self, now: float, bits: float, plan: Optional[Plan] = None) -> None:
        """A message of ``bits`` went out (depth_only: its colour, as observed, is not counted)."""
        outside = plan.extra.get("outside_bits", 0.0) if plan is not None else self.outside_bits
        self.window.add(now, max(bits - outside, 0.0))
        if plan is not None:
            self.last_rungs = plan.rungs

    def skip(self) -> None:
        self.skipped += 1

    def reset_models(self) -> None:
        for m in self.models:
            m.reset()


# ------------------------------------------------------------------ link feedback

#: keys of a link feedback report (rgbd/link_feedback), as numbers
FEEDBACK_KEYS = ("kbps", "frames", "frames_total", "last_stamp_ns", "latency_ms_p50", "latency_ms_max",
                 "loss_pct", "period_s", "last_sequence")


def parse_feedback(values: Dict[str, str]) -> Optional[Dict[str, float]]:
    """A report's key/values -> numbers, or None if it is not a usable report.

    Missing keys are absent from the result; values that are not finite numbers in a plausible
    range are treated as missing. A report without ``frames_total`` and ``last_stamp_ns``
    cannot be matched to what was sent and is refused.
    """
    limits = {"kbps": (0.0, 1e7), "frames": (0.0, 1e6), "frames_total": (0.0, 1e15),
              "last_stamp_ns": (0.0, 1e19), "latency_ms_p50": (-1e7, 1e7), "latency_ms_max": (-1e7, 1e7),
              "loss_pct": (0.0, 100.0), "period_s": (0.0, 3600.0), "last_sequence": (0.0, 4294967295.0)}
    out: Dict[str, float] = {}
    for key, (lo, hi) in limits.items():
        text = values.get(key)
        if text is None:
            continue
        try:
            v = float(text)
            if key in ("frames_total", "last_stamp_ns") and str(text).strip().isdigit():
                v = int(str(text).strip())  # exact: a float loses the last digits of a stamp in ns
        except (TypeError, ValueError):
            continue
        if math.isfinite(v) and lo <= v <= hi:
            out[key] = v
    if "frames_total" not in out or "last_stamp_ns" not in out:
        return None
    return out


class SentLog:
    """Stamps of the frames sent (last ``seconds``), to turn receiver counts into loss, and how
    long after its capture stamp each went out (the sender's own delay: encode time, CPU load)."""

    #: a sender delay outside 0..this (ns) means the stamps are not on the wall clock (sim time,
    #: synthetic stamps): it is not used
    MAX_SENDER_DELAY_NS = 10_000_000_000

    def __init__(self, seconds: float = 30.0):
        self.seconds = seconds
        self._stamps: deque = deque()
        self._delays: deque = deque()   # (stamp, sent - stamp) in ns, plausible ones only

    def add(self, stamp_ns: int, sent_ns: Optional[int] = None) -> None:
        """A frame stamped ``stamp_ns`` went out at ``sent_ns`` (default: now, wall clock)."""
        stamp_ns = int(stamp_ns)
        self._stamps.append(stamp_ns)
        delay = (time.time_ns() if sent_ns is None else int(sent_ns)) - stamp_ns
        if 0 <= delay <= self.MAX_SENDER_DELAY_NS:
            self._delays.append((stamp_ns, delay))
        limit = stamp_ns - int(self.seconds * 1e9)
        while self._stamps and self._stamps[0] < limit:
            self._stamps.popleft()
        while self._delays and self._delays[0][0] < limit:
            self._delays.popleft()

    def count_between(self, after_ns: int, upto_ns: int) -> int:
        """Frames sent with stamps in (after_ns, upto_ns]."""
        return sum(1 for s in self._stamps if after_ns < s <= upto_ns)

    def sender_delay_ms(self, after_ns: int, upto_ns: int) -> Optional[float]:
        """Median time from capture stamp to sending of the frames stamped in (after_ns, upto_ns];
        None where it is not known for most of them."""
        d = [v for s, v in self._delays if after_ns < s <= upto_ns]
        n = self.count_between(after_ns, upto_ns)
        if not d or 2 * len(d) < n:
            return None
        d.sort()
        return d[len(d) // 2] / 1e6


class LinkAdapter:
    """The encoder's effective target from link feedback (delay- and loss-based).

    Per report (see docs/ratecontrol.md):

    - loss ``p`` = 1 - frames received / frames sent in the stamp span the latest reports cover
      (at least ``LOSS_MIN_FRAMES`` frames);
    - queuing delay ``q`` = the report's median latency, less the median time its frames spent
      in the encoder (``SentLog.sender_delay_ms``: CPU load is not a link queue), - a low
      percentile of those values seen in the last ``base_window_s`` (the link's own delay;
      clock offsets cancel out);
    - **overuse** (``q > delay_hi_ms`` and not falling on two reports in a row, or
      ``p > loss_hi`` with at least ``LOSS_MIN_LOST`` frames lost): the target drops to
      ``beta`` times the smaller of itself and the received rate, at most once per
      ``hold_s`` so that the queue can drain; the rate at overuse is remembered;
    - **clear** (``q < delay_lo_ms`` and ``p < loss_lo``) for ``hold_s``: the target grows by
      ``alpha`` per second (multiplicative probing), slowed to additive steps near the rate
      where the link last overflowed, up to the configured target;
    - otherwise, or without feedback: it holds.
    """

    #: loss is measured over the latest reports that together cover at least this many frames
    LOSS_MIN_FRAMES = 8
    #: and a loss overuse needs at least this many frames lost there: on a link with 1 % random
    #: loss, one lost frame among 8-13 is 8-12 % "loss" and is not congestion (measured: it cut
    #: the target from 1000 to 200 kbit/s in 5 s at 2-3 fps); congestion drops frames in runs
    LOSS_MIN_LOST = 2

    def __init__(self, max_kbps: float, min_kbps: float = 50.0, delay_hi_ms: float = 80.0,
                 delay_lo_ms: float = 30.0, loss_hi: float = 0.08, loss_lo: float = 0.03, beta: float = 0.85,
                 alpha: float = 0.2, hold_s: float = 1.0, base_window_s: float = 20.0):
        self.max_kbps = float(max_kbps)
        self.min_kbps = float(min(min_kbps, max_kbps))
        self.delay_hi_ms, self.delay_lo_ms = delay_hi_ms, delay_lo_ms
        self.loss_hi, self.loss_lo = loss_hi, loss_lo
        self.beta, self.alpha, self.hold_s = beta, alpha, hold_s
        self.base_window_s = base_window_s
        self.kbps = float(max_kbps)
        self.state = "start"
        self.last_loss: Optional[float] = None
        self.last_queue_ms: Optional[float] = None
        self._bases: deque = deque()            # (time, median latency)
        self._last_decrease = -math.inf
        self._clear_since: Optional[float] = None
        self._last_update: Optional[float] = None
        self._overuse_kbps: Optional[float] = None
        self._prev_report: Optional[Tuple[float, float]] = None  # (frames_total, last_stamp_ns)
        self._prev_q: Optional[float] = None
        self._prev_high = False
        self._loss_items: deque = deque()  # (received, sent) per report
        self.reports = 0
        self.refused = 0
        self.last_lost = 0  # frames lost in the span of the last loss measurement
        self._sender_delay_ms: Optional[float] = None  # of the frames the last report covers

    def _base_ms(self) -> float:
        """The link's own latency: a low percentile (10 %) of recent report medians, so that one
        nonsense report does not move it."""
        values = sorted(b for _, b in self._bases)
        return values[int(0.1 * (len(values) - 1))]

    def set_limits(self, max_kbps: float, min_kbps: Optional[float] = None) -> None:
        self.max_kbps = float(max_kbps)
        if min_kbps is not None:
            self.min_kbps = float(min(min_kbps, max_kbps))
        self.kbps = min(max(self.kbps, self.min_kbps), self.max_kbps)

    def loss_from(self, report: Dict[str, float], sent: SentLog) -> Optional[float]:
        """Loss fraction since the previous report; None when it cannot be told (first, late, reset)."""
        total, last = report["frames_total"], report["last_stamp_ns"]
        prev, self._prev_report = self._prev_report, (total, last)
        self._sender_delay_ms = None
        if prev is None:
            return None
        if last < prev[1] or total < prev[0]:   # late (out of order) report, or the decoder restarted
            self._prev_report = prev if last < prev[1] else (total, last)
            return None
        n_sent = sent.count_between(int(prev[1]), int(last))
        received = total - prev[0]
        self._sender_delay_ms = sent.sender_delay_ms(int(prev[1]), int(last))
        if n_sent <= 0:
            return None
        # over the last few reports (at least LOSS_MIN_FRAMES frames): one random loss among the
        # handful of frames of one report is not congestion
        self._loss_items.append((min(received, n_sent), n_sent))
        while len(self._loss_items) > 1 and sum(n for _, n in list(self._loss_items)[1:]) >= self.LOSS_MIN_FRAMES:
            self._loss_items.popleft()
        got = sum(r for r, _ in self._loss_items)
        n = sum(n for _, n in self._loss_items)
        if n < self.LOSS_MIN_FRAMES:
            return None
        self.last_lost = n - got
        return min(1.0, max(0.0, 1.0 - got / n))

    def update(self, now: float, report: Optional[Dict[str, float]], loss: Optional[float]) -> float:
        """Take one report (None: nothing usable arrived); returns the target in force, kbit/s."""
        if report is None:
            self.refused += 1
            return self.kbps
        self.reports += 1
        dt = 0.0 if self._last_update is None else min(max(now - self._last_update, 0.0), 2.0)
        self._last_update = now
        q = None
        lat = report.get("latency_ms_p50")
        if lat is not None and self._sender_delay_ms is not None:
            # the time the frames spent in the encoder (coding, waiting for a CPU) is not the
            # link's queue: measured from when they went out, CPU load is not taken for congestion
            lat -= self._sender_delay_ms
        self._sender_delay_ms = None
        if lat is not None:
            self._bases.append((now, lat))
            while self._bases and self._bases[0][0] < now - self.base_window_s:
                self._bases.popleft()
            q = lat - self._base_ms()
        self.last_queue_ms, self.last_loss = q, loss
        # delay overuse: high and not falling, on two reports in a row (one odd report is not enough)
        high = q is not None and q > self.delay_hi_ms and (self._prev_q is None or q >= self._prev_q - 5.0)
        over_delay = high and self._prev_high
        self._prev_high = high
        self._prev_q = q
        # loss overuse: over loss_hi with at least LOSS_MIN_LOST frames lost (a loss given without
        # a count, e.g. 1.0 for a dead link, counts as it is)
        over_loss = loss is not None and loss > self.loss_hi and (
            loss >= 0.5 or self.last_lost >= self.LOSS_MIN_LOST)
        clear = (q is None or q < self.delay_lo_ms) and (loss is None or loss < self.loss_lo)
        recv = report.get("kbps")
        if over_delay or over_loss:
            self._clear_since = None
            self.state = "overuse"
            if now - self._last_decrease >= self.hold_s:
                base = self.kbps if recv is None or recv <= 0 else min(self.kbps, recv)
                self._overuse_kbps = self.kbps
                self.kbps = max(self.min_kbps, self.beta * base)
                self._last_decrease = now
        elif clear:
            if self._clear_since is None:
                self._clear_since = now
            if now - self._clear_since >= self.hold_s and now - self._last_decrease >= self.hold_s:
                self.state = "probe"
                ov = self._overuse_kbps
                if ov is not None and 0.9 * ov <= self.kbps <= 1.1 * ov:
                    step = max(0.05 * self.max_kbps, 0.1 * ov) * dt  # near the last overflow: additive
                else:
                    step = self.alpha * self.kbps * dt    # multiplicative probing
                self.kbps = min(self.max_kbps, self.kbps + step)
            else:
                self.state = "hold"
        else:
            self._clear_since = None
            self.state = "hold"
        self.kbps = min(max(self.kbps, self.min_kbps), self.max_kbps)
        return self.kbps
