"""`rgbd-codec eval`: real bytes and decodes on real pairs, anchors, backends, BD-rate, plots."""
from __future__ import annotations

import json
import math

import imagecodecs
import numpy as np
import pytest
import torch

from rgbd_codec_ros.cli import main
from rgbd_codec_ros.training import datasets as ds
from rgbd_codec_ros.training import evaluate as ev

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def two_sources(data_dir):
    return [str(data_dir / "osd_kinect_pcl_mosd"), str(data_dir / "realsense_f200_apc")]


def test_anchor_evaluation_on_real_pairs(tmp_path, two_sources, capsys):
    out, plot = tmp_path / "rd.json", tmp_path / "rd.png"
    rc = main(["eval", "--data", *two_sources, "--limit", "1", "--json", str(out), "--plot", str(plot),
               "--codec", "jpeg+png16", "jpegxl+jpegxl16-lossy",
               "--quality", "jpeg+png16=30,80", "jpegxl+jpegxl16-lossy=8:6,2:1.5", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "BD-rate" in printed and "jpegxl+jpegxl16-lossy" in printed
    doc = json.loads(out.read_text())
    recs = doc["records"]
    assert len(recs) == 2 * 4
    for r in recs:
        assert set(r) == set(ev.RECORD_KEYS)
        assert r["bytes_total"] == r["bytes_rgb"] + r["bytes_depth"]
        assert r["bpp_total"] == pytest.approx(r["bytes_total"] * 8 / (r["width"] * r["height"]))
        assert r["holes_exact"] is True
        assert 20 < r["rgb_psnr_db"] < 60 and 0.5 < r["rgb_msssim"] <= 1
        assert r["encode_ms"] > 0 and r["decode_ms"] > 0
        if r["codec"] == "jpeg+png16":                       # lossless depth
            assert r["depth_rmse_mm"] == 0 and r["depth_mae_mm"] == 0 and r["depth_psnr_db"] is None
        else:
            assert r["depth_rmse_mm"] > 0 and r["depth_psnr_db"] > 30
            assert r["depth_mae_mm"] <= r["depth_rmse_mm"]
    # higher settings cost more bytes and give better colour, per image
    for codec, lo, hi in (("jpeg+png16", "30", "80"), ("jpegxl+jpegxl16-lossy", "8:6", "2:1.5")):
        for image in {r["image"] for r in recs}:
            a = next(r for r in recs if r["codec"] == codec and r["quality"] == lo and r["image"] == image)
            b = next(r for r in recs if r["codec"] == codec and r["quality"] == hi and r["image"] == image)
            assert b["bytes_rgb"] > a["bytes_rgb"] and b["rgb_psnr_db"] > a["rgb_psnr_db"]
            if codec != "jpeg+png16":
                assert b["bytes_depth"] > a["bytes_depth"] and b["depth_rmse_mm"] < a["depth_rmse_mm"]
    # the bytes are real: re-encode the first pair's colour independently
    ref = ds.discover([two_sources[0]])[0].pairs[0]
    raw = ds.load_raw(ref)
    rec = next(r for r in recs if r["codec"] == "jpeg+png16" and r["quality"] == "30"
               and r["image"] == ref.image_id)
    jpeg = imagecodecs.jpeg8_encode(raw.color, level=30)
    assert rec["bytes_rgb"] == len(jpeg)
    dec = imagecodecs.jpeg8_decode(jpeg).astype(np.float64)
    assert rec["rgb_psnr_db"] == pytest.approx(
        10 * math.log10(255 ** 2 / np.mean((dec - raw.color) ** 2)), abs=1e-6)
    assert rec["bytes_depth"] == len(imagecodecs.png_encode(raw.depth, level=6))
    assert {s["codec"] for s in doc["summary"]} == {"jpeg+png16", "jpegxl+jpegxl16-lossy"}
    assert any(r["bd_rate_percent"] is not None for r in doc["bd_rate"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10000


def test_backends_learned_and_classical(tmp_path, data_dir):
    from rgbd_codec_ros.codec.base import RGBDFrame, create_backend
    from rgbd_codec_ros.codec.learned.model import build_model
    from rgbd_codec_ros.codec.learned.weights_io import export_weights
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    export_weights(build_model("tiny"), str(weights), {"name": "tiny-test"})
    out = tmp_path / "b.json"
    src = str(data_dir / "realsense_d435_taeyoung")
    rc = main(["eval", "--data", src, "--limit", "1", "--json", str(out), "--codec", "learned", "classical",
               "--weights", str(weights), "--quality", "learned=0", "classical=50", "--quiet",
               "--threads", "1"])
    assert rc == 0
    recs = json.loads(out.read_text())["records"]
    assert [r["codec"] for r in recs] == ["learned", "classical"]
    raw = ds.load_raw(ds.discover([src])[0].pairs[0])
    for r in recs:
        assert r["holes_exact"] is True
        assert r["bytes_rgb"] > 0 and r["bytes_depth"] > 0
        assert r["bytes_rgb"] + r["bytes_depth"] <= r["bytes_total"]
    # the learned record's size is the size of a real payload of that pair
    be = create_backend("learned", weights=str(weights), quality=0)
    enc = be.encode(RGBDFrame(raw.color, raw.depth, raw.depth_scale_per_m))
    assert recs[0]["bytes_total"] == len(enc.payload)
    assert recs[1]["depth_rmse_mm"] == 0          # classical default depth coding is lossless


def test_pchip_matches_scipy_and_integrates_exactly():
    scipy_interp = pytest.importorskip("scipy.interpolate")
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 6):
        x = np.cumsum(rng.uniform(0.5, 2.0, n))
        y = np.cumsum(rng.uniform(-1.0, 2.0, n))
        xq = np.linspace(x[0], x[-1], 57)
        ref = scipy_interp.PchipInterpolator(x, y)
        np.testing.assert_allclose(ev.pchip_eval(x, y, xq), ref(xq), atol=1e-10)
        a, b = x[0] + 0.3 * (x[-1] - x[0]), x[-1] - 0.1
        assert ev.pchip_integral(x, y, a, b) == pytest.approx(float(ref.integrate(a, b)), abs=1e-10)


def test_bd_rate():
    rates = [0.1, 0.2, 0.4, 0.8]
    psnr = [30.0, 33.0, 35.5, 37.0]
    assert ev.bd_rate(rates, psnr, [r * 0.8 for r in rates], psnr) == pytest.approx(-20.0)
    assert ev.bd_rate(rates, psnr, [r * 1.5 for r in rates], psnr) == pytest.approx(50.0)
    assert ev.bd_rate(rates, psnr, rates, psnr) == pytest.approx(0.0, abs=1e-12)
    # a better curve (more dB at every rate) needs fewer bits
    assert ev.bd_rate(rates, psnr, rates, [p + 1 for p in psnr]) < 0
    assert ev.bd_rate(rates, psnr, rates, [p + 20 for p in psnr]) is None      # no overlap
    assert ev.bd_rate(rates[:1], psnr[:1], rates, psnr) is None                 # one point


@pytest.mark.parametrize("argv, message", [
    (["--codec", "jpeg"], "combine it with a depth anchor"),
    (["--codec", "nosuchcodec"], "unknown codec"),
    (["--codec", "jpeg+png16", "--quality", "avif+png16=3"], "not among --codec"),
    (["--codec", "jpeg+jpegxl16-lossy", "--quality", "50"], "COLOUR:DEPTH"),
    (["--codec", "classical", "--quality", "500"], "color_quality"),
    (["--limit", "0"], "--limit"),
])
def test_bad_eval_arguments(tmp_path, two_sources, capsys, argv, message):
    rc = main(["eval", "--data", two_sources[0], "--json", str(tmp_path / "x.json"), "--quiet"] + argv)
    assert rc == 2
    err = capsys.readouterr().err
    assert "rgbd-codec eval: error:" in err and message in err
    assert not (tmp_path / "x.json").exists()


def test_missing_data_dir(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "none"), "--json", str(tmp_path / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
