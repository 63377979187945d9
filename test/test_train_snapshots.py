"""The training campaign's tools in `rgbd-codec train`: step-driven cosine schedule, EMA,
fp16 snapshots that resume with a fresh optimiser, a wall-clock budget and a clean SIGTERM stop,
and validation held out within every source."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rgbd_codec_ros.cli import main
from rgbd_codec_ros.codec.learned.weights_io import load_model
from rgbd_codec_ros.training.trainer import SNAPSHOT_FORMAT, TrainConfig, lr_at

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def args(data_dir):
    return ["train", "--data", str(data_dir / "osd_kinect_pcl_mosd"), str(data_dir / "realsense_d4xx_visp_rbt"),
            "--val-fraction", "0.1", "--preset", "tiny", "--steps", "40", "--batch-size", "1",
            "--crop", "128", "--val-crop", "128", "--threads", "1", "--log-every", "1", "--val-every", "1000",
            "--val-limit", "1", "--schedule", "cosine", "--lr", "1e-3", "--lr-final", "1e-4",
            "--ema-decay", "0.9", "--seed", "3", "--no-progress"]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cosine_schedule_is_a_function_of_the_step():
    cfg = TrainConfig(steps=1000, schedule="cosine", lr=1e-4, lr_final=1e-5, decay_end=0.7, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(1000)]
    assert lrs[0] < lrs[9] < lrs[10]                               # warm-up ramp
    assert lrs[10] == pytest.approx(1e-4 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * 10 / 700))
                                    + 1e-5 * 0.5 * (1 - __import__("math").cos(__import__("math").pi * 10 / 700)))
    assert all(a >= b for a, b in zip(lrs[10:700], lrs[11:701]))  # monotone decay
    assert lrs[700] == pytest.approx(1e-5) and lrs[999] == pytest.approx(1e-5)   # long low phase
    # a resumed snapshot warms a fresh optimiser up again from its own step
    assert lr_at(800, cfg, warmup_from=800) == pytest.approx(1e-5 / 11)
    assert lr_at(810, cfg, warmup_from=800) == pytest.approx(1e-5)


@pytest.mark.slow
def test_snapshot_resume_and_ema_export(tmp_path, args):
    snap = tmp_path / "snap.pt"
    ck = tmp_path / "ck"
    export = tmp_path / "w.pt"
    common = args + ["--checkpoint-dir", str(ck), "--snapshot", str(snap), "--snapshot-every", "2"]
    assert main(common + ["--stop-at", "4"]) == 0
    state = torch.load(str(snap), weights_only=True)
    assert state["format"] == SNAPSHOT_FORMAT and state["step"] == 4
    assert state["ema"] and set(state["ema"]) <= set(state["model"])
    floats = [k for k, v in state["model"].items() if v.is_floating_point()]
    assert all(state["model"][k].dtype == torch.float16 for k in floats
               if not k.endswith((".quantiles", ".bound")) and "gain" not in k)
    assert all(state["model"][k].dtype == torch.float32 for k in floats if k.endswith(".bound"))
    # the EMA trails the live weights
    key = next(k for k in state["ema"] if k.endswith("weight"))
    assert not torch.equal(state["ema"][key], state["model"][key])

    # a new machine: no checkpoint folder, only the committed snapshot
    ck2 = tmp_path / "ck2"
    r = main(args + ["--checkpoint-dir", str(ck2), "--snapshot", str(snap), "--resume", "--warmup-steps", "3",
                     "--stop-at", "7", "--export", str(export)])
    assert r == 0
    rows = _rows(ck2 / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [4, 5, 6]             # continued at the snapshot's step
    cfg = TrainConfig(steps=40, schedule="cosine", lr=1e-3, lr_final=1e-4, warmup_steps=3)
    for r in rows:                                                  # warm-up again, from step 4
        assert float(r["lr"]) == pytest.approx(lr_at(int(r["step"]), cfg, warmup_from=4), rel=1e-6)
    assert float(rows[0]["lr"]) < float(rows[2]["lr"])
    assert not export.exists()        # --export writes only when the run reaches --steps

    # export: the EMA is what ships
    assert main(args + ["--checkpoint-dir", str(ck2), "--snapshot", str(snap), "--resume", "--steps", "8",
                        "--export", str(export)]) == 0
    final = torch.load(str(snap), weights_only=True)
    model, meta = load_model(str(export))
    shipped = model.state_dict()
    assert meta["ema_decay"] == 0.9
    for k, v in final["ema"].items():
        assert torch.equal(shipped[k].half(), v), k


@pytest.mark.slow
def test_time_budget_and_sigterm_stop_cleanly(tmp_path, args):
    ck = tmp_path / "ck"
    assert main(args + ["--checkpoint-dir", str(ck), "--snapshot", str(tmp_path / "s.pt"),
                        "--time-budget", "0.01"]) == 0
    assert (ck / "latest").read_text().strip() == "step_00000001.pt"
    assert torch.load(str(tmp_path / "s.pt"), weights_only=True)["step"] == 1

    ck2 = tmp_path / "ck2"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "rgbd_codec_ros.training"] + args[1:] +
                            ["--steps", "100000", "--checkpoint-dir", str(ck2)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (ck2 / "train_log.csv").is_file() or \
                len(_rows(ck2 / "train_log.csv")) < 2:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping at step" in err and "SIGTERM" in err
    step = int(err.split("stopping at step ")[1].split(":")[0])
    assert (ck2 / "latest").read_text().strip() == f"step_{step:08d}.pt"


def test_validation_frames_are_never_trained_on(tmp_path, data_dir):
    from rgbd_codec_ros.training.trainer import Trainer
    cfg = TrainConfig(data=[str(data_dir / "realsense_d4xx_visp_rbt"), str(data_dir / "realsense_d435_taeyoung")],
                      val_fraction=0.1, val_gap=2, val_source=["realsense_d435_taeyoung"], preset="tiny",
                      steps=1, progress=False)
    t = Trainer(cfg)
    train_ids = {(p.source, p.image_id) for p in t.train_pairs}
    val = [s for s in t.val_sources]
    assert sorted(s.name for s in val) == ["realsense_d435_taeyoung", "realsense_d4xx_visp_rbt"]
    assert all(p.source != "realsense_d435_taeyoung" for p in t.train_pairs)   # --val-source: whole
    visp_val = next(s for s in val if s.name == "realsense_d4xx_visp_rbt")
    assert len(visp_val.pairs) == 10 and not {(p.source, p.image_id) for p in visp_val.pairs} & train_ids
    assert len(t.train_pairs) == 99 - 10 - 2


@pytest.mark.slow
def test_export_and_curve_of_a_snapshot(tmp_path, args, data_dir, capsys):
    """`rgbd-codec export` freezes a snapshot's EMA into finished weights; `rgbd-codec curve`
    codes held-out frames to real bytes with either, and the two give the same rows."""
    snap = tmp_path / "snap.pt"
    assert main(args + ["--checkpoint-dir", str(tmp_path / "ck"), "--snapshot", str(snap), "--stop-at", "2"]) == 0
    out = tmp_path / "w.pt"
    assert main(["export", str(snap), str(out)]) == 0
    model, meta = load_model(str(out))
    assert meta["trained_steps"] == 2 and meta["weights_source"] == "ema"
    assert main(["export", str(snap), str(out)]) == 2                     # no silent overwrite
    assert "exists" in capsys.readouterr().err
    csv_path = tmp_path / "curve.csv"
    assert main(["curve", "--data", str(data_dir / "realsense_d4xx_visp_rbt"), "--weights", str(snap), str(out),
                 "--csv", str(csv_path), "--limit", "1", "--quality", "1", "--label", "t"]) == 0
    rows = _rows(csv_path)
    assert [r["file"] for r in rows] == ["snap.pt", "w.pt"] and all(r["step"] == "2" for r in rows)
    for k in ("bpp_total", "rgb_psnr_db", "depth_rmse_mm", "depth_rmse_4m_mm"):
        assert rows[0][k] == rows[1][k], k           # the same frozen model, the same bytes
    assert float(rows[0]["bpp_total"]) > 0 and rows[0]["holes_exact"] == "True"
    # appending keeps the curve across sessions
    assert main(["curve", "--data", str(data_dir / "realsense_d4xx_visp_rbt"), "--weights", str(out),
                 "--csv", str(csv_path), "--limit", "1", "--quality", "0"]) == 0
    assert len(_rows(csv_path)) == 3


def test_colour_jitter_never_touches_depth(data_dir):
    from rgbd_codec_ros.training import datasets as ds
    src = ds.discover([str(data_dir / "realsense_d4xx_visp_rbt")])[0]
    pairs, probs = ds.pair_weights([src], {})
    plain = ds.TrainCrops(pairs, probs, 128, 2, 10.0, seed=5)
    jit = ds.TrainCrops(pairs, probs, 128, 2, 10.0, seed=5, color_jitter=0.3)
    moved = 0
    for k in range(6):
        a, b = plain[k], jit[k]
        assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["valid"], b["valid"])
        assert (a["image"], a["source"]) == (b["image"], b["source"])
        assert float(b["rgb"].min()) >= 0 and float(b["rgb"].max()) <= 1
        moved += not torch.equal(a["rgb"], b["rgb"])
    assert moved == 6
    with pytest.raises(ds.DatasetError, match="color-jitter"):
        ds.TrainCrops(pairs, probs, 128, 2, 10.0, color_jitter=1.5)
