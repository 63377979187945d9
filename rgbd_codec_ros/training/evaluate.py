"""Rate-distortion evaluation: real bytes, real decodes, per-image records, RD curves, BD-rates.

Every pair is encoded to bytes and decoded by each codec at each setting; the records carry

    codec, quality, source, image, width, height, bytes_total, bytes_rgb, bytes_depth,
    bpp_total, rgb_psnr_db, rgb_msssim, depth_rmse_mm, depth_mae_mm, depth_psnr_db,
    holes_exact, encode_ms, decode_ms

``bytes_rgb`` / ``bytes_depth`` are null where a backend's streams are not separable. Colour
metrics are on 8-bit RGB (PSNR peak 255, MS-SSIM on [0,1], 5 scales). Depth metrics are
in metres over the pixels the *input* measured (valid pixels only; a decoded hole there counts
as 0 m), PSNR with a fixed 10 m peak (as the paper's NYUv2 figures); an exact reconstruction
gives PSNR null (infinite). ``holes_exact`` is true when the decoded holes are exactly the
input's holes.

BD-rate (Bjontegaard): log-rate interpolated as a function of quality with a monotone
piecewise-cubic Hermite (PCHIP, Fritsch-Carlson slopes) per curve, integrated exactly over the
overlapping quality interval; the mean log-rate difference gives the rate change in percent
(negative = fewer bits than the reference for the same quality).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import anchors as an
from . import datasets as ds

DEPTH_PEAK_M = 10.0
RECORD_KEYS = ("codec", "quality", "source", "image", "width", "height", "bytes_total", "bytes_rgb",
               "bytes_depth", "bpp_total", "rgb_psnr_db", "rgb_msssim", "depth_rmse_mm",
               "depth_mae_mm", "depth_psnr_db", "holes_exact", "encode_ms", "decode_ms")
DEFAULT_ANCHORS = ("jpeg+png16", "jpegxl+jpegxl16-lossy")


class EvalError(ValueError):
    """Bad evaluation arguments; the message says what to fix."""


# --------------------------------------------------------------------------- metrics
def _finite_or_none(x: Optional[float]) -> Optional[float]:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def rgb_metrics(orig: np.ndarray, dec: np.ndarray) -> Tuple[Optional[float], Optional[float]]:
    """(PSNR dB with peak 255 or None if identical, MS-SSIM) of two uint8 HxWx3 images."""
    import torch
    from .losses import ms_ssim
    if orig.shape != dec.shape:
        raise EvalError(f"decoded colour has shape {dec.shape}, input {orig.shape}")
    mse = float(np.mean((orig.astype(np.float64) - dec.astype(np.float64)) ** 2))
    p = None if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    a = torch.from_numpy(orig.astype(np.float32) / 255).permute(2, 0, 1)[None]
    b = torch.from_numpy(dec.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        m = float(ms_ssim(a, b, data_range=1.0)[0])
    return p, m


def _metres(depth: np.ndarray, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    d = depth.astype(np.float64)
    valid = np.isfinite(d) & (d > 0)
    return np.where(valid, d / scale, 0.0), valid


def depth_metrics(orig: np.ndarray, orig_scale: float, dec: np.ndarray, dec_scale: float,
                  peak_m: float = DEPTH_PEAK_M) -> Dict[str, Any]:
    if orig.shape != dec.shape:
        raise EvalError(f"decoded depth has shape {dec.shape}, input {orig.shape}")
    om, ov = _metres(orig, orig_scale)
    dm, dv = _metres(dec, dec_scale)
    out: Dict[str, Any] = {"holes_exact": bool(np.array_equal(ov, dv)),
                           "depth_rmse_mm": None, "depth_mae_mm": None, "depth_psnr_db": None}
    if ov.any():
        e = (dm - om)[ov]
        mse = float(np.mean(e ** 2))
        out["depth_rmse_mm"] = math.sqrt(mse) * 1000.0
        out["depth_mae_mm"] = float(np.mean(np.abs(e))) * 1000.0
        out["depth_psnr_db"] = None if mse == 0 else 10 * math.log10(peak_m ** 2 / mse)
    return out


# --------------------------------------------------------------------------- codecs
@dataclass
class CodecUnderTest:
    name: str
    kind: str                                   # 'anchor' | 'backend'
    settings: List[Any]
    obj: Any = None
    labels: List[str] = field(default_factory=list)
    option: str = "quality"                    # backend option that --quality values set


def _parse_options(items: Sequence[str]) -> Dict[str, Any]:
    """KEY=VALUE for every registered backend, CODEC.KEY=VALUE for one."""
    out: Dict[str, Any] = {}
    for it in items or ():
        if "=" not in it:
            raise EvalError(f"--codec-option {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        for conv in (int, float):
            try:
                out[k] = conv(v)
                break
            except ValueError:
                continue
        else:
            out[k] = v
    return out


#: the option a registered backend's --quality values set, and its default sweep
BACKEND_SWEEPS: Dict[str, Tuple[str, Optional[Tuple[Any, ...]]]] = {
    "learned": ("quality", None),                       # None: every quality of the model
    "classical": ("color_quality", (20, 40, 60, 80, 95)),
}


def _backend_quality(backend, name: str, q):
    """A --quality value for a backend: numbers as numbers; for learned also the 'a_b' names."""
    if name == "learned" and isinstance(q, str):
        names = list(getattr(getattr(getattr(backend, "model", None), "preset", None), "qualities", ()))
        if q in names:
            return names.index(q)
    return _coerce_quality(q)


def split_qualities(items: Optional[Sequence[str]], names: Sequence[str]
                    ) -> Tuple[Optional[List[str]], Dict[str, List[str]]]:
    """--quality entries: plain values for every codec, or CODEC=Q1,Q2 for one codec."""
    common: List[str] = []
    per: Dict[str, List[str]] = {}
    for it in items or ():
        if "=" in it:
            codec, qs = it.split("=", 1)
            if codec not in names:
                raise EvalError(f"--quality {it!r}: {codec!r} is not among --codec {' '.join(names)}")
            per.setdefault(codec, []).extend(q for q in qs.split(",") if q)
        else:
            common.append(it)
    return (common or None), per


def build_codecs(names: Sequence[str], quality_args: Optional[Sequence[str]], weights: Optional[str],
                 options: Dict[str, Any]) -> List[CodecUnderTest]:
    from rgbd_codec_ros.codec.base import CodecError, available_backends, create_backend
    common, per_codec = split_qualities(quality_args, names)
    out = []
    for name in names:
        qualities = per_codec.get(name, common)
        if "+" in name or name in an.COLOUR_CODECS or name in an.DEPTH_CODECS:
            try:
                pair = an.AnchorPair(name)
                settings = ([pair.parse_setting(q) for q in qualities] if qualities
                            else pair.default_settings())
            except an.AnchorError as exc:
                raise EvalError(str(exc)) from None
            out.append(CodecUnderTest(name, "anchor", settings, pair,
                                      [pair.label(s) for s in settings]))
            continue
        backends = available_backends()
        if name not in backends:
            raise EvalError(f"unknown codec {name!r}: registered backends are "
                            f"{', '.join(backends) or '(none)'}; anchors are COLOUR+DEPTH from "
                            f"{', '.join(an.anchor_names())}")
        opts = {k: v for k, v in options.items() if "." not in k}
        opts.update({k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(name + ".")})
        if name == "learned" and weights:
            from .snapshots import frozen_from_snapshot, is_snapshot
            if is_snapshot(weights):        # a training snapshot: its EMA, frozen as an export would be
                try:
                    model, model_id, _ = frozen_from_snapshot(weights)
                except Exception as exc:
                    raise EvalError(f"--weights {weights}: {exc}") from None
                opts["model"], opts["model_id"] = model, model_id
            else:
                opts["weights"] = weights
        try:
            backend = create_backend(name, **opts)
        except (CodecError, TypeError) as exc:
            raise EvalError(f"cannot create codec {name!r}: {exc}") from None
        option, sweep = BACKEND_SWEEPS.get(name, ("quality", ()))
        if qualities:
            settings = [_backend_quality(backend, name, q) for q in qualities]
        elif sweep is None:
            settings = list(range(int(backend.model.num_qualities)))
        else:
            settings = list(sweep) or [None]
        for q in settings:              # check them now, not after an hour of coding
            if q is not None:
                try:
                    backend.configure(**{option: q})
                except (CodecError, ValueError, TypeError) as exc:
                    raise EvalError(f"codec {name!r}: quality {q!r}: {exc}") from None
        out.append(CodecUnderTest(name, "backend", settings, backend, option=option))
    return out


def _coerce_quality(q):
    if isinstance(q, str):
        for conv in (int, float):
            try:
                return conv(q)
            except ValueError:
                continue
    return q


def _depth_u16(raw: ds.RawPair) -> np.ndarray:
    """The anchors' input: integer units as stored (float metres -> millimetres)."""
    if raw.depth.dtype == np.uint16:
        return raw.depth
    m, valid = raw.depth_metres()
    return np.where(valid, np.clip(np.round(m * 1000.0), 1, 65535), 0).astype(np.uint16)


def code_one(cut: CodecUnderTest, setting, raw: ds.RawPair) -> Dict[str, Any]:
    """Encode + decode one pair; returns sizes, timings, decoded arrays."""
    if cut.kind == "anchor":
        du16 = _depth_u16(raw)
        scale = raw.depth_scale_per_m if raw.depth.dtype == np.uint16 else 1000.0
        t0 = time.perf_counter()
        b_rgb, b_d = cut.obj.encode(raw.color, du16, setting)
        t1 = time.perf_counter()
        color, depth = cut.obj.decode(b_rgb, b_d)
        t2 = time.perf_counter()
        return {"quality": cut.obj.label(setting), "bytes_total": len(b_rgb) + len(b_d),
                "bytes_rgb": len(b_rgb), "bytes_depth": len(b_d), "color": color, "depth": depth,
                "depth_scale": scale, "encode_ms": (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3}
    from rgbd_codec_ros.codec.base import RGBDFrame
    backend = cut.obj
    if setting is not None:
        backend.configure(**{cut.option: setting})
    depth = raw.depth
    if depth.dtype != np.uint16:
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
    frame = RGBDFrame(raw.color, depth, raw.depth_scale_per_m)
    t0 = time.perf_counter()
    enc = backend.encode(frame)
    payload = bytes(enc.payload)
    t1 = time.perf_counter()
    dec = backend.decode(payload)
    t2 = time.perf_counter()
    color = dec.color if dec.color.ndim == 3 else np.repeat(dec.color[:, :, None], 3, axis=2)
    return {"quality": str(enc.quality or backend.quality), "bytes_total": len(payload),
            "bytes_rgb": enc.bytes_rgb, "bytes_depth": enc.bytes_depth, "color": color,
            "depth": dec.depth, "depth_scale": dec.depth_scale_per_m,
            "encode_ms": (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3}


def evaluate(pairs: Sequence[ds.PairRef], codecs: Sequence[CodecUnderTest], progress: bool = True,
             peak_m: float = DEPTH_PEAK_M) -> List[Dict[str, Any]]:
    records: List[Dict[str, Any]] = []
    total = len(pairs) * sum(len(c.settings) for c in codecs)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="code", dynamic_ncols=True, desc="eval", file=sys.stderr)
    warmed = set()
    try:
        for ref in pairs:
            raw = ds.load_raw(ref)
            H, W = raw.color.shape[:2]
            for cut in codecs:
                if cut.name not in warmed:   # first call: lazy initialisation, not timed
                    code_one(cut, cut.settings[0], raw)
                    warmed.add(cut.name)
                for setting in cut.settings:
                    r = code_one(cut, setting, raw)
                    p, m = rgb_metrics(raw.color, np.asarray(r["color"]))
                    dm = depth_metrics(raw.depth, raw.depth_scale_per_m, np.asarray(r["depth"]),
                                       r["depth_scale"], peak_m)
                    rec = {"codec": cut.name, "quality": r["quality"], "source": ref.source,
                           "image": ref.image_id, "width": W, "height": H,
                           "bytes_total": r["bytes_total"], "bytes_rgb": r["bytes_rgb"],
                           "bytes_depth": r["bytes_depth"],
                           "bpp_total": r["bytes_total"] * 8.0 / (W * H),
                           "rgb_psnr_db": p, "rgb_msssim": m, **dm,
                           "encode_ms": r["encode_ms"], "decode_ms": r["decode_ms"]}
                    records.append({k: rec[k] for k in RECORD_KEYS})
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return records


# --------------------------------------------------------------------------- summary
def _mean(vals) -> Optional[float]:
    v = [float(x) for x in vals if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else None


def summarise(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per codec and quality: means over images (bpp per modality where separable)."""
    groups: Dict[Tuple[str, str], List[Dict]] = {}
    for r in records:
        groups.setdefault((r["codec"], r["quality"]), []).append(r)
    out = []
    for (codec, q), rs in groups.items():
        def bpp(key):
            if any(r[key] is None for r in rs):
                return None
            return _mean(r[key] * 8.0 / (r["width"] * r["height"]) for r in rs)
        out.append({
            "codec": codec, "quality": q, "images": len(rs),
            "bpp_total": _mean(r["bpp_total"] for r in rs), "bpp_rgb": bpp("bytes_rgb"),
            "bpp_depth": bpp("bytes_depth"),
            "rgb_psnr_db": _mean(r["rgb_psnr_db"] for r in rs),
            "rgb_lossless": all(r["rgb_psnr_db"] is None for r in rs),
            "rgb_msssim": _mean(r["rgb_msssim"] for r in rs),
            "depth_rmse_mm": _mean(r["depth_rmse_mm"] for r in rs),
            "depth_mae_mm": _mean(r["depth_mae_mm"] for r in rs),
            "depth_psnr_db": _mean(r["depth_psnr_db"] for r in rs),
            "depth_lossless": all(r["depth_rmse_mm"] in (0.0, None) for r in rs),
            "holes_exact": all(r["holes_exact"] for r in rs),
            "encode_ms": _mean(r["encode_ms"] for r in rs),
            "decode_ms": _mean(r["decode_ms"] for r in rs)})
    out.sort(key=lambda s: (s["codec"], s["bpp_total"] or 0.0))
    return out


# --------------------------------------------------------------------------- BD-rate
def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson monotone slopes at the knots (x strictly increasing)."""
    n = len(x)
    h = np.diff(x)
    delta = np.diff(y) / h
    if n == 2:
        return np.array([delta[0], delta[0]])
    d = np.zeros(n)
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] <= 0:
            d[k] = 0.0
        else:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])

    def end(h0, h1, d0, d1):
        s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(s) != np.sign(d0):
            return 0.0
        if np.sign(d0) != np.sign(d1) and abs(s) > abs(3 * d0):
            return 3 * d0
        return s

    d[0] = end(h[0], h[1], delta[0], delta[1])
    d[-1] = end(h[-1], h[-2], delta[-1], delta[-2])
    return d


def pchip_eval(x: np.ndarray, y: np.ndarray, xq: np.ndarray) -> np.ndarray:
    d = pchip_slopes(x, y)
    k = np.clip(np.searchsorted(x, xq, side="right") - 1, 0, len(x) - 2)
    h = x[k + 1] - x[k]
    t = xq - x[k]
    delta = (y[k + 1] - y[k]) / h
    c2 = (3 * delta - 2 * d[k] - d[k + 1]) / h
    c3 = (d[k] + d[k + 1] - 2 * delta) / h ** 2
    return y[k] + d[k] * t + c2 * t ** 2 + c3 * t ** 3


def pchip_integral(x: np.ndarray, y: np.ndarray, a: float, b: float) -> float:
    """Exact integral of the PCHIP interpolant over [a, b] (inside [x0, xn])."""
    d = pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        lo, hi = max(a, x[k]), min(b, x[k + 1])
        if hi <= lo:
            continue
        h = x[k + 1] - x[k]
        delta = (y[k + 1] - y[k]) / h
        c2 = (3 * delta - 2 * d[k] - d[k + 1]) / h
        c3 = (d[k] + d[k + 1] - 2 * delta) / h ** 2

        def F(t):
            return y[k] * t + d[k] * t ** 2 / 2 + c2 * t ** 3 / 3 + c3 * t ** 4 / 4
        total += F(hi - x[k]) - F(lo - x[k])
    return total


def _curve(rates: Sequence[float], quals: Sequence[float]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(quality, log-rate) with quality strictly increasing along increasing rate, or None."""
    pts = sorted((float(r), float(q)) for r, q in zip(rates, quals)
                 if r is not None and q is not None and r > 0 and math.isfinite(q))
    xs, ys = [], []
    for r, q in pts:
        if xs and q <= xs[-1]:
            continue            # a point that buys no quality: not on the RD curve
        xs.append(q)
        ys.append(math.log(r))
    if len(xs) < 2:
        return None
    return np.array(xs), np.array(ys)


def bd_rate(ref_rates, ref_quals, test_rates, test_quals) -> Optional[float]:
    """Bjontegaard delta rate of test vs reference in percent; None without an overlap."""
    a, b = _curve(ref_rates, ref_quals), _curve(test_rates, test_quals)
    if a is None or b is None:
        return None
    lo, hi = max(a[0][0], b[0][0]), min(a[0][-1], b[0][-1])
    if hi <= lo:
        return None
    ia = pchip_integral(a[0], a[1], lo, hi)
    ib = pchip_integral(b[0], b[1], lo, hi)
    return (math.exp((ib - ia) / (hi - lo)) - 1.0) * 100.0


BD_METRICS = (("rgb_psnr_db", "bpp_total"), ("rgb_psnr_db", "bpp_rgb"), ("rgb_msssim", "bpp_rgb"),
              ("depth_psnr_db", "bpp_depth"))


def bd_table(summary: Sequence[Dict[str, Any]], pairs: Sequence[Tuple[str, str]]) -> List[Dict[str, Any]]:
    by_codec: Dict[str, List[Dict]] = {}
    for s in summary:
        by_codec.setdefault(s["codec"], []).append(s)
    rows = []
    for test, ref in pairs:
        t, r = by_codec.get(test, []), by_codec.get(ref, [])
        for metric, rate in BD_METRICS:
            v = bd_rate([x[rate] for x in r], [x[metric] for x in r],
                        [x[rate] for x in t], [x[metric] for x in t])
            rows.append({"codec": test, "reference": ref, "metric": metric, "rate": rate,
                         "bd_rate_percent": v})
    return rows


def bd_pairs(codecs: Sequence[CodecUnderTest], reference: Optional[str]) -> List[Tuple[str, str]]:
    names = [c.name for c in codecs]
    if reference:
        if reference not in names:
            raise EvalError(f"--reference {reference!r} is not among --codec {' '.join(names)}")
        return [(n, reference) for n in names if n != reference]
    anchors = [c.name for c in codecs if c.kind == "anchor"]
    others = [c.name for c in codecs if c.kind != "anchor"]
    if others and anchors:
        return [(o, a) for o in others for a in anchors]
    if len(names) > 1:
        return [(n, names[0]) for n in names[1:]]
    return []


# --------------------------------------------------------------------------- plot
def plot_rd(summary: Sequence[Dict[str, Any]], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = (("bpp_total", "rgb_psnr_db", "total bpp", "RGB PSNR (dB)"),
              ("bpp_rgb", "rgb_psnr_db", "colour bpp", "RGB PSNR (dB)"),
              ("bpp_depth", "depth_psnr_db", "depth bpp", f"depth PSNR (dB, {DEPTH_PEAK_M:g} m peak)"),
              ("bpp_depth", "depth_rmse_mm", "depth bpp", "depth RMSE (mm, valid pixels)"))
    by_codec: Dict[str, List[Dict]] = {}
    for s in summary:
        by_codec.setdefault(s["codec"], []).append(s)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    cmap = plt.get_cmap("tab10")
    colours = {c: cmap(i % 10) for i, c in enumerate(by_codec)}
    for ax, (xk, yk, xl, yl) in zip(axes.flat, panels):
        for codec, pts in by_codec.items():
            xy = sorted((p[xk], p[yk]) for p in pts if p[xk] is not None and p[yk] is not None)
            if xy:
                ax.plot([a for a, _ in xy], [b for _, b in xy], "o-", ms=3, label=codec,
                        color=colours[codec])
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes.flat[0].set_title("colour vs total rate")
    axes.flat[1].set_title("colour vs colour rate (separable codecs)")
    axes.flat[2].set_title("depth vs depth rate (lossless points omitted)")
    axes.flat[3].set_title("depth error vs depth rate")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def print_summary(summary, bd_rows, out=None) -> None:
    out = out or sys.stdout
    print(f"{'codec':<28} {'quality':>12} {'n':>4} {'bpp':>7} {'bpp_rgb':>7} {'bpp_d':>7} "
          f"{'rgbPSNR':>7} {'MSSSIM':>6} {'dRMSEmm':>8} {'dPSNR':>6} {'holes':>5} {'enc_ms':>7} "
          f"{'dec_ms':>7}", file=out)
    for s in summary:
        print(f"{s['codec']:<28} {s['quality']:>12} {s['images']:>4} {_fmt(s['bpp_total'], '.4f'):>7} "
              f"{_fmt(s['bpp_rgb'], '.4f'):>7} {_fmt(s['bpp_depth'], '.4f'):>7} "
              f"{_fmt(s['rgb_psnr_db']) if not s['rgb_lossless'] else 'inf':>7} "
              f"{_fmt(s['rgb_msssim'], '.4f'):>6} {_fmt(s['depth_rmse_mm']):>8} "
              f"{_fmt(s['depth_psnr_db']) if not s['depth_lossless'] else 'inf':>6} "
              f"{'yes' if s['holes_exact'] else 'NO':>5} {_fmt(s['encode_ms'], '.1f'):>7} "
              f"{_fmt(s['decode_ms'], '.1f'):>7}", file=out)
    if bd_rows:
        print("\nBD-rate (negative = fewer bits than the reference at equal quality):", file=out)
        for r in bd_rows:
            v = r["bd_rate_percent"]
            print(f"  {r['codec']:<28} vs {r['reference']:<28} {r['metric']:>14} / {r['rate']:<9} "
                  f"{'n/a (no overlap)' if v is None else f'{v:+.1f} %'}", file=out)


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def run_eval_cli(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be >= 1")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    for out in (args.json, args.plot):
        if out and os.path.dirname(out) and not os.path.isdir(os.path.dirname(out)):
            raise EvalError(f"output folder {os.path.dirname(out)} does not exist")
    if args.weights and not os.path.isfile(args.weights):
        raise EvalError(f"--weights {args.weights}: no such file")
    names = args.codec or (list(DEFAULT_ANCHORS) + (["learned"] if args.weights else []))
    sources = ds.discover(args.data, nyu=args.nyu_mat, tum=args.tum, sun=args.sun, max_dt=args.tum_max_dt)
    if getattr(args, "val_fraction", None):
        # the held-out frames of training's split (the same function, the same arguments)
        _, sources = ds.split_within_sources(sources, args.val_fraction, args.val_gap)
    pairs = ds.evenly_spaced([p for s in sources for p in s.pairs], args.limit)
    codecs = build_codecs(names, args.quality, args.weights, _parse_options(args.codec_option))
    pairs_for_bd = bd_pairs(codecs, args.reference)
    records = evaluate(pairs, codecs, progress=not args.quiet)
    summary = summarise(records)
    bd_rows = bd_table(summary, pairs_for_bd)
    doc = {"format": "rgbd-codec-eval/1", "data": [s.root for s in sources],
           "sources": {s.name: len([p for p in pairs if p.source == s.name]) for s in sources},
           "depth_psnr_peak_m": DEPTH_PEAK_M, "codecs": [c.name for c in codecs],
           "records": records, "summary": summary, "bd_rate": bd_rows}
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(_jsonable(doc), fh, indent=1, allow_nan=False)
    os.replace(tmp, args.json)
    print_summary(summary, bd_rows)
    print(f"\n{len(records)} records ({len(pairs)} pairs) -> {args.json}")
    if args.plot:
        plot_rd(summary, args.plot, title=f"{len(pairs)} pairs: " + ", ".join(sorted(doc["sources"])))
        print(f"RD curves -> {args.plot}")
    return 0
